"""Control-loop timing on the simulator, with policy inference, under load.

For each condition the daemon's own loop (absolute deadlines, SCHED_FIFO when permitted) runs for
--seconds, then a naive `sleep(period)` loop doing the same work runs under the same condition as
the baseline. Printed per run: lateness p50/p99/max against the ideal schedule, overruns, achieved
rate and how far behind schedule the loop ended (for the naive loop, lateness is how late it
woke against its own relative sleep; its drift shows as `behind`). Both loops run 1 s before
measuring starts: start-up (first inferences, page faults) is not the steady state.

Conditions: idle (camera off), hog (a CPU-hog process; --hogs N for more), camera (simulated
camera at the configured fps with the policy driving), camera+hog (both: the issue's gate).

    python bench/loop.py --seconds 60
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.table import Machine, Row, add_rows_argument, finish  # noqa: E402
from brain.config import load_config  # noqa: E402
from brain.control.histogram import LatencyHistogram  # noqa: E402
from brain.control.rt import renice_threads  # noqa: E402
from brain.rig import Rig  # noqa: E402

P99_GOAL_MS = 1.0  # issue 2: camera + CPU hog at 50 Hz, p99 <= 1 ms, no overrun,
RATE_GOAL = 0.0005  # the achieved rate within 0.05 % of the target
WARMUP_S = 1.0  # both loops run this long before measuring


def _hog(stop: mp.synchronize.Event) -> None:  # type: ignore[name-defined]
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


class Hogs:
    def __init__(self, n: int) -> None:
        self.stop = mp.Event()
        self.procs = [mp.Process(target=_hog, args=(self.stop,), daemon=True) for _ in range(n)]

    def __enter__(self) -> Hogs:
        for p in self.procs:
            p.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for p in self.procs:
            p.join(5)


def make_rig(camera: bool, brain_settings: bool = True) -> Rig:
    """The daemon's own composition (brain.rig), driving on the seed policy."""
    cfg = load_config(env={k: v for k, v in os.environ.items() if k.startswith("BRAIN_")})
    if brain_settings:
        renice_threads(cfg.control.nice)  # as the daemon does, before its threads start
    if not camera:
        cfg.camera.fps = 1  # the sim renders one frame a second: no camera load to speak of
    rig = Rig.build(cfg)
    rig.runner.start()
    rig.runner.enabled.set()
    rig.modes.request("arm")
    rig.modes.request("drive")
    return rig


def run_brain_loop(seconds: float, camera: bool) -> dict:
    rig = make_rig(camera)
    loop = rig.loop
    sys.setswitchinterval(rig.cfg.control.switch_interval_ms / 1000)
    gc.collect()
    gc.freeze()  # as the daemon does once it is up
    loop.start()
    loop.wait_first_tick(5)
    time.sleep(WARMUP_S)  # start-up (first inferences, page faults) is not the steady state
    loop.reset_stats()
    time.sleep(seconds)
    rig.stop()
    st = loop.status()
    s = loop.stats
    ideal_ticks = (s.last_start - s.started_at) / loop.period + 1
    return {"lateness_ms": st["lateness_ms"], "duration_ms": st["duration_ms"],
            "overruns": st["overruns"],
            "missed_ticks": st["missed_ticks"], "rate_hz": st["rate_hz"], "ticks": st["ticks"],
            "behind_s": round((ideal_ticks - s.ticks) * loop.period, 4),
            "inferences": rig.runner.inferences, "thread": st["thread"]}


def run_naive_loop(seconds: float, camera: bool) -> dict:
    """What DonkeyCar and LeRobot do: work, then sleep a relative period."""
    rig = make_rig(camera, brain_settings=False)
    robot, runner, modes, limits = rig.robot, rig.runner, rig.modes, rig.loop.limits
    sys.setswitchinterval(0.005)  # interpreter default
    period = 1.0 / rig.cfg.drive_hz
    hist = LatencyHistogram()
    measuring = time.monotonic() + WARMUP_S
    t0 = measuring
    k = 0
    end = t0 + seconds
    wake_due = time.monotonic()
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if now < measuring:  # warming up, as the brain loop does
            k, t0 = 0, now
        else:
            # Its own idea of lateness: how far past the intended wake-up (sleep start +
            # period) it woke. The drift against the ideal schedule shows in `behind`.
            hist.add(now - wake_due)
        obs = robot.read()
        raw, _ = modes.select(obs.t, runner.latest(obs.t))
        robot.write(limits.clamp(raw))
        k += 1
        wake_due = time.monotonic() + period
        time.sleep(period)
    elapsed = time.monotonic() - t0
    rig.stop()
    return {"lateness_ms": hist.summary_ms(), "overruns": None, "missed_ticks": None,
            "rate_hz": round(k / elapsed, 4), "ticks": k,
            "behind_s": round(elapsed - k * period, 4), "inferences": runner.inferences}


def _child(kind: str, seconds: float, camera: bool, q: mp.Queue) -> None:  # type: ignore[type-arg]
    fn = run_brain_loop if kind == "brain" else run_naive_loop
    q.put(fn(seconds, camera))


def measure(kind: str, seconds: float, camera: bool) -> dict:
    # Each run in a fresh process: no state (GC, threads, scheduling) leaks between runs.
    q: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    p = mp.Process(target=_child, args=(kind, seconds, camera, q))
    p.start()
    result = q.get(timeout=seconds + 120)
    p.join(30)
    return result


def fmt(name: str, r: dict, target: float) -> str:
    lat = r["lateness_ms"]
    err = (r["rate_hz"] - target) / target * 100
    over = "-" if r["overruns"] is None else str(r["overruns"])
    return (f"  {name:<22} p50 {lat['p50']:7.3f}  p99 {lat['p99']:8.3f}  max {lat['max']:8.3f} ms"
            f"  overruns {over:>3}  rate {r['rate_hz']:8.3f} Hz ({err:+.3f} %)"
            f"  behind {r['behind_s']:+.3f} s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--conditions", default="idle,hog,camera,camera+hog")
    ap.add_argument("--hogs", type=int, default=1, help="CPU-hog processes in the hog conditions")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    add_rows_argument(ap)
    args = ap.parse_args()
    mp.set_start_method("spawn")
    machine = Machine()
    rows: list[Row] = []
    target = load_config(env={k: v for k, v in os.environ.items()
                              if k.startswith("BRAIN_")}).drive_hz
    results = {}
    print(f"control loop at {target} Hz, {args.seconds:g} s per run, {os.cpu_count()} CPUs")
    for cond in args.conditions.split(","):
        camera = "camera" in cond
        hogs = args.hogs if "hog" in cond else 0
        print(f"{cond}: camera {'on' if camera else 'off'}, {hogs} CPU-hog process(es)")
        with Hogs(hogs):
            brain = measure("brain", args.seconds, camera)
            naive = measure("naive", args.seconds, camera)
        print(fmt("brain loop", brain, target))
        print(fmt("naive sleep(period)", naive, target))
        ratio = naive["lateness_ms"]["p99"] / max(brain["lateness_ms"]["p99"], 1e-3)
        print(f"  brain tick duration p99 {brain['duration_ms']['p99']:.3f} ms, "
              f"max {brain['duration_ms']['max']:.3f} ms")
        print(f"  p99 lateness naive/brain: {ratio:.1f}x; control thread: "
              f"{'; '.join(brain['thread'])}")
        results[cond] = {"brain": brain, "naive": naive}
        rows += condition_rows(cond, brain, naive, target)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return finish(rows, args.rows, machine)


def condition_rows(cond: str, brain: dict, naive: dict, target: float) -> list[Row]:
    """The issue's gate is camera+hog; the other conditions are for scale."""
    gate = cond == "camera+hog"
    p99 = brain["lateness_ms"]["p99"]
    err = abs(brain["rate_hz"] - target) / target
    return [
        Row("loop", f"lateness p99, {cond}", p99, "ms", f"<= {P99_GOAL_MS:g} ms" if gate
            else "for scale", p99 <= P99_GOAL_MS if gate else None,
            naive["lateness_ms"]["p99"], "sleep(period) loop"),
        Row("loop", f"achieved rate, {cond}", brain["rate_hz"], "Hz",
            f"within {RATE_GOAL:.2%} of {target:g}" if gate else "for scale",
            err <= RATE_GOAL if gate else None, naive["rate_hz"], "sleep(period) loop"),
        Row("loop", f"overruns, {cond}", brain["overruns"], "", "0" if gate else "for scale",
            brain["overruns"] == 0 if gate else None),
    ]


if __name__ == "__main__":
    sys.exit(main())
