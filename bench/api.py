"""Does the API disturb the control loop? Loop lateness p99 at 50 Hz with no clients vs. with
a loopback load (one teleop WebSocket at 50 Hz, one MJPEG viewer, 100 /status requests/s),
plus /status latency p50/p99. Both phases run in one invocation; the ratio is what counts.

Default: the real daemon on the simulator (manual mode, camera on, policy armed-ready), its
loop histograms reset over the control socket at the start of each phase; the load runs in a
separate process. `--in-process`: a bare 50 Hz loop thread beside ApiServer and the
real service over a light test body.

    python bench/api.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.table import Machine, Row, add_rows_argument, finish  # noqa: E402
from brain.control.histogram import LatencyHistogram  # noqa: E402


def loop_thread(hz: float, stop: threading.Event, hist_ref: list[LatencyHistogram],
                realtime: bool) -> None:
    if realtime:  # as the daemon's control thread does when permitted
        try:
            os.sched_setscheduler(threading.get_native_id(), os.SCHED_FIFO, os.sched_param(50))
        except OSError as e:
            print(f"loop thread stays SCHED_OTHER: {e}", file=sys.stderr)
    period = 1.0 / hz
    next_t = time.monotonic() + period
    while not stop.is_set():
        delay = next_t - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        hist_ref[0].add(time.monotonic() - next_t)
        next_t += period


def load(url: str, token: str, seconds: float, out: mp.Queue) -> None:
    import httpx
    from websockets.sync.client import connect

    h = {"Authorization": f"Bearer {token}"}
    stop = threading.Event()
    lat: list[float] = []
    frames = [0]

    def teleop() -> None:
        t = httpx.post(url + "/api/v1/ticket", headers=h, verify=False).json()["ticket"]
        ws_url = url.replace("http", "ws", 1) + f"/api/v1/teleop?ticket={t}"
        with connect(ws_url, additional_headers=h) as ws:
            nxt = time.monotonic()
            while not stop.is_set():
                ws.send('{"steering": 0.1, "throttle": 0.2}')
                nxt += 0.02
                time.sleep(max(0.0, nxt - time.monotonic()))

    def mjpeg() -> None:
        with httpx.stream("GET", url + "/api/v1/camera.mjpeg", headers=h, verify=False,
                          timeout=10) as r:
            for chunk in r.iter_bytes():
                frames[0] += chunk.count(b"--frame")
                if stop.is_set():
                    return

    def status() -> None:
        with httpx.Client(base_url=url, headers=h, verify=False) as c:
            nxt = time.monotonic()
            while not stop.is_set():
                t0 = time.perf_counter()
                c.get("/api/v1/status").raise_for_status()
                lat.append(time.perf_counter() - t0)
                nxt += 0.01
                time.sleep(max(0.0, nxt - time.monotonic()))

    threads = [threading.Thread(target=f, daemon=True) for f in (teleop, mjpeg, status)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    lat.sort()

    def pct(q: float) -> float:
        return round(lat[min(len(lat) - 1, int(q / 100 * len(lat)))] * 1e3, 3) if lat else 0.0

    out.put({"status_requests": len(lat), "status_rps": round(len(lat) / seconds, 1),
             "status_p50_ms": pct(50), "status_p99_ms": pct(99), "mjpeg_frames": frames[0]})


def run_load(url: str, token: str, seconds: float) -> dict:
    q: mp.Queue = mp.get_context("spawn").Queue()
    p = mp.get_context("spawn").Process(target=load, args=(url, token, seconds, q))
    p.start()
    res = q.get(timeout=seconds + 30)
    p.join(10)
    return res


def in_process(seconds: float, realtime: bool) -> dict:
    from brain.api.server import ApiServer
    from tests.api_support.light_service import LightService

    sys.setswitchinterval(0.0005)  # as the daemon does (control.switch_interval_ms)
    svc = LightService(Path(tempfile.mkdtemp(prefix="bench-api-")))
    cfg = svc.cfg
    cfg.api.port, cfg.api.mdns = 0, False
    server = ApiServer(svc.service, cfg)
    server.start()
    token = server.pairing.pair(server.pairing.new_code()["code"], "bench", "local")
    hist = [LatencyHistogram()]
    stop = threading.Event()
    t = threading.Thread(target=loop_thread, args=(50.0, stop, hist, realtime),
                         daemon=True)
    t.start()
    try:
        time.sleep(seconds)
        base = hist[0].summary_ms()
        hist[0] = LatencyHistogram()
        client = run_load(server.url, token, seconds)
        loaded = hist[0].summary_ms()
    finally:
        stop.set()
        server.stop()
        svc.close()
    return {"baseline_lateness_ms": base, "loaded_lateness_ms": loaded, **client}


def with_daemon(args: argparse.Namespace) -> dict:
    """The real daemon (`brain run --sim` by default) in a fresh state dir; the loop's
    histograms are reset over the control socket at the start of each phase."""
    import httpx

    from brain.control_socket import ControlClient

    state = Path(tempfile.mkdtemp(prefix="bench-api-"))
    env = {**os.environ, "BRAIN_STATE_DIR": str(state), "BRAIN_API_PORT": str(args.port),
           "BRAIN_API_MDNS": "0"}
    url = f"http://127.0.0.1:{args.port}"
    proc = subprocess.Popen(shlex.split(args.daemon_cmd), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    client = ControlClient(state / "run" / "control.sock")
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(url + "/api/v1/health", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the daemon did not come up") from None
                time.sleep(0.5)
        code = client.call("pair")["code"]
        token = httpx.post(url + "/api/v1/pair",
                           json={"code": code, "client_name": "bench"}).json()["token"]
        client.call("mode", mode="manual")
        time.sleep(2.0)  # settle: start-up allocations are not part of either phase
        client.call("stats.reset")
        time.sleep(args.seconds)
        base = client.call("status")
        client.call("stats.reset")
        load_res = run_load(url, token, args.seconds)
        loaded = client.call("status")
    finally:
        proc.terminate()
        proc.wait(30)
    return {"baseline_lateness_ms": base["lateness_ms"], "loaded_lateness_ms":
            loaded["lateness_ms"], "baseline_overruns": base["overruns"],
            "loaded_overruns": loaded["overruns"], "control_thread": base.get("thread"),
            **load_res}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    ap.add_argument("--daemon-cmd", default=f"{sys.executable} -m brain run --sim",
                    help="the daemon to measure (default: the simulator daemon)")
    ap.add_argument("--port", type=int, default=18080, help="API port for the daemon")
    ap.add_argument("--in-process", action="store_true",
                    help="measure a bare loop thread beside ApiServer + a light service instead")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-realtime", action="store_true",
                    help="keep the loop thread SCHED_OTHER (in-process mode)")
    add_rows_argument(ap)
    args = ap.parse_args()
    machine = Machine()
    res = in_process(args.seconds, not args.no_realtime) if args.in_process else with_daemon(args)
    b, lo = res["baseline_lateness_ms"]["p99"], res["loaded_lateness_ms"]["p99"]
    res["added_p99_ms"] = round(lo - b, 3)
    res["ratio_p99"] = round(lo / b, 2) if b else None
    res["goal_added_p99_le_0_5_ms"] = res["added_p99_ms"] <= 0.5
    if args.json:
        print(json.dumps(res))
    else:
        for k, v in res.items():
            print(f"{k:28} {v}")
    where = "bare loop beside the API" if args.in_process else "the daemon"
    rows = [
        Row("api", f"loop lateness p99 under API load ({where})", lo, "ms",
            "<= baseline + 0.5 ms", lo - b <= 0.5, b, "no clients"),
        Row("api", f"/status latency p99 at {res['status_rps']:g} req/s beside teleop + MJPEG",
            res["status_p99_ms"], "ms", "for scale", None),
    ]
    return finish(rows, args.rows, machine, sys.stderr if args.json else None)


if __name__ == "__main__":
    sys.exit(main())
