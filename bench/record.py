"""Recording cost and export throughput (issue 3's benchmark), each against a baseline run here.

Recording: the real pieces `brain collect` uses (simulator at the configured 640x480@30 camera and
50 Hz loop, the teacher driving in MANUAL, `ControlLoop`, `Recorder` behind `EpisodeControl`)
run for --seconds twice, each in a fresh process: once without an episode open (baseline) and
once recording (one episode, or --episodes back to back as `brain collect` records them).
Printed: the recorder's CPU seconds per recorded second, dropped frames, bytes per second, and
the loop's lateness p99 in both runs.

How recorder CPU is measured: the recorder's threads (`rlds-writer`, `rlds-frames`) exit when the
episode stops, taking their /proc/self/task entries with them, so the exact figure is the
process's CPU time over the episode minus that of every thread alive throughout it (control
loop, simulated camera, main); the per-thread split is sampled from /proc every 0.2 s by thread
name and misses only the last sample interval. The control thread's extra cost is its CPU per
tick while recording minus the same in the baseline run.

Export: the recorded episode(s) are exported with `prepare_cloud_export` --repeat times,
interleaved with the baseline, `cp -r` of the export's own files ("the same bytes"), followed by
`sync` of those files and their directory, because the export fsyncs what it publishes: fsync is
in both. Also printed, for scale: cp without sync, and cp + sync of the episode logs the export
reads. Page cache is warm for all of them (the data was just written or read).

Against the tub (the issue-15 comparison): the recorder and a DonkeyCar-style tub writer
(`bench/tub_baseline.py`) record the *same* frames in the same invocation. First the simulator
runs once more (the teacher driving, nothing recording) while --capture-frames camera frames and
the loop's steps are kept; then each writer, in a fresh process per round (--rounds, the two
interleaved), gets those frames replayed at their captured times (30 fps, looping) and the steps
at 50 Hz, for --replay-seconds. Its CPU is measured as above: the process's CPU over the episode
minus that of the threads alive throughout (the replay threads, main). Nothing else runs in a
replay process, so this is the cleaner figure of the two.

    python bench/record.py [--seconds 60] [--episodes 1] [--repeat 5] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.table import Machine, Row, add_rows_argument, finish  # noqa: E402
from brain.collect import teacher_rig  # noqa: E402
from brain.config import load_config  # noqa: E402
from brain.rlds import prepare_cloud_export  # noqa: E402
from brain.rlds.validate import validate_episode  # noqa: E402

RECORDER_THREADS = ("rlds-writer", "rlds-frames")
WARMUP_S = 2.0
SAMPLE_S = 0.2
_TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu(native_id: int) -> float | None:
    """CPU seconds (user + system) of one thread of this process; None once it has exited."""
    try:
        stat = Path(f"/proc/self/task/{native_id}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # the name may hold spaces: skip past it
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14, 15)


def live_threads() -> dict[str, float]:
    out: dict[str, float] = {}
    for t in threading.enumerate():
        cpu = thread_cpu(t.native_id) if t.native_id is not None else None
        if cpu is not None:
            out[f"{t.name}#{t.native_id}"] = cpu
    return out


def run_once(record: bool, seconds: float, state_dir: str, episodes: int = 1) -> dict[str, Any]:
    """One run, wired as `brain collect --teacher` wires it (brain/collect.py)."""
    env = {k: v for k, v in os.environ.items() if k.startswith("BRAIN_")}
    cfg = load_config(env=env, overrides={"state_dir": state_dir})
    rig = teacher_rig(cfg, "bench")
    robot, loop, control = rig.robot, rig.loop, rig.episodes
    episodes_dir = control.recorder.episodes_dir
    rig.modes.request("manual")
    rig.start()
    summaries: list[dict[str, Any]] = []
    sampled: dict[tuple[str, int], float] = {}  # (thread name, native id): CPU seconds
    try:
        if not loop.wait_first_tick(5.0):
            raise RuntimeError("the control loop did not start")
        time.sleep(WARMUP_S)  # camera delivering, caches warm
        loop.reset_stats()
        ticks0 = loop.stats.ticks
        before = live_threads()
        sim_dropped0 = getattr(robot, "frames_dropped", 0)  # the simulator's own skips
        cpu0 = time.process_time()
        for _ in range(episodes if record else 1):  # back to back, as `brain collect` does
            if record:
                control.start("bench", "follow the track")
            end = time.monotonic() + seconds / (episodes if record else 1)
            while time.monotonic() < end:
                time.sleep(SAMPLE_S)
                for t in threading.enumerate():
                    if t.name in RECORDER_THREADS and t.native_id is not None:
                        cpu = thread_cpu(t.native_id)
                        if cpu is not None:
                            sampled[(t.name, t.native_id)] = cpu
            if record:
                summaries.append(control.stop("completed"))
        cpu1 = time.process_time()
        after = live_threads()
        sim_dropped = getattr(robot, "frames_dropped", 0) - sim_dropped0
        status = loop.status()
        ticks = loop.stats.ticks - ticks0
    finally:
        rig.stop()
    # Threads alive from before the episode to after it: everything else (the recorder's) is
    # the process total minus these.
    steady = {k: after[k] - before[k] for k in before.keys() & after.keys()}
    control_cpu = sum(v for k, v in steady.items() if k.startswith("control-loop#"))
    return {
        "record": record, "seconds": seconds, "ticks": ticks, "status": status,
        "process_cpu_s": cpu1 - cpu0, "steady_threads_cpu_s": steady,
        "recorder_cpu_s": (cpu1 - cpu0) - sum(steady.values()) if record else 0.0,
        "recorder_threads_sampled_s": {name: sum(v for (n, _), v in sampled.items() if n == name)
                                       for name in RECORDER_THREADS},
        "control_cpu_per_tick_ms":
            control_cpu / max(ticks, 1) * 1e3,
        "summary": _combine(summaries), "episodes": len(summaries),
        "episodes_dir": str(episodes_dir), "sim_dropped_frames": sim_dropped,
    }


def _combine(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """One summary for back-to-back episodes: counts added up, every status listed."""
    if not summaries:
        return {}
    out: dict[str, Any] = {k: sum(s.get(k) or 0 for s in summaries) for k in (
        "steps", "frames", "dropped_frames", "unused_frames", "dropped_steps", "log_bytes",
        "duration_s")}
    statuses = sorted({str(s.get("status")) for s in summaries})
    out["status"] = statuses[0] if len(statuses) == 1 else statuses
    return out


def _call(q: Any, fn: Any, *args: Any) -> None:
    try:
        q.put(fn(*args))
    except BaseException as e:  # report it to the parent instead of hanging it
        q.put({"error": f"{type(e).__name__}: {e}"})
        raise


def in_child(fn: Any, args: tuple[Any, ...], timeout: float) -> dict[str, Any]:
    """`fn(*args)` in a fresh process: no threads, GC state or caches carried from one run to
    the next."""
    q: Any = mp.Queue()
    p = mp.Process(target=_call, args=(q, fn, *args))
    p.start()
    result = q.get(timeout=timeout)
    p.join(30)
    if "error" in result:
        raise SystemExit(f"bench/record.py: run failed: {result['error']}")
    return dict(result)


def measure(record: bool, seconds: float, state_dir: str, episodes: int = 1) -> dict[str, Any]:
    return in_child(run_once, (record, seconds, state_dir, episodes), seconds + 120)


# -- the same frames for the recorder and the tub ---------------------------------------------

def capture(n_frames: int, state_dir: str, out: str) -> dict[str, Any]:
    """Run the teacher rig (nothing recording) and keep `n_frames` camera frames and the steps
    of the same span, saved under `out` for the replays."""
    import numpy as np

    env = {k: v for k, v in os.environ.items() if k.startswith("BRAIN_")}
    cfg = load_config(env=env, overrides={"state_dir": state_dir})
    rig = teacher_rig(cfg, "bench")
    steps: list[tuple[float, Any, tuple[float, float], float]] = []
    keep = threading.Event()

    def sink(obs: Any, action: Any, source: str) -> None:
        if keep.is_set():
            steps.append((obs.t, obs.state.copy(), (action.steering, action.throttle),
                          float(obs.info.get("reward", 0.0))))

    rig.loop.sinks.append(sink)
    rig.modes.request("manual")
    rig.start()
    frames, times = [], []
    try:
        if not rig.loop.wait_first_tick(5.0) or rig.robot.frames is None:
            raise RuntimeError("the control loop or the camera did not start")
        time.sleep(WARMUP_S)
        last = -1
        keep.set()
        while len(frames) < n_frames:
            f = rig.robot.frames.wait_newer(last, 1.0)
            if f is None:
                raise RuntimeError("the simulated camera stopped delivering frames")
            last = f.seq
            frames.append(f.image)
            times.append(f.t_capture)
        keep.clear()
    finally:
        rig.stop()
    stack = np.stack(frames)
    np.save(Path(out) / "frames.npy", stack)
    t0 = times[0]
    np.savez(Path(out) / "steps.npz", t=np.array([s[0] - t0 for s in steps]),
             state=np.stack([s[1] for s in steps]), action=np.array([s[2] for s in steps]),
             reward=np.array([s[3] for s in steps]), frame_t=np.array(times) - t0)
    import hashlib

    return {"frames": len(frames), "steps": len(steps), "shape": list(stack.shape[1:]),
            "span_s": times[-1] - t0, "sha256": hashlib.sha256(stack.tobytes()).hexdigest()}


def encode_probe_ms(frames: Any, n: int = 20) -> float:
    """This machine's speed right now: the median CPU time of one JPEG encode (quality 75,
    4:2:0, as recorded) over `n` of the captured frames. On this shared VM it drifts by up to
    half from minute to minute, and every CPU-seconds figure drifts with it."""
    import simplejpeg

    times = []
    for img in frames[:n]:
        t = time.thread_time()
        simplejpeg.encode_jpeg(img, 75, colorspace="RGB", colorsubsampling="420")
        times.append(time.thread_time() - t)
    return statistics.median(times) * 1e3


def replay_once(kind: str, seconds: float, capture_dir: str, out_dir: str) -> dict[str, Any]:
    """One writer (`recorder` or `tub`) fed the captured frames and steps in real time."""
    import numpy as np

    from bench.tub_baseline import TubWriter
    from brain.hardware.robot import Frame, FrameSlot
    from brain.rlds.recorder import Recorder, StepSample

    frames = np.load(Path(capture_dir) / "frames.npy")
    data = np.load(Path(capture_dir) / "steps.npz")
    step_t, frame_t = data["t"], data["frame_t"]
    span = float(frame_t[-1]) + float(np.median(np.diff(frame_t)))  # one loop of the capture
    states, actions, rewards = data["state"], data["action"], data["reward"]
    env = {k: v for k, v in os.environ.items() if k.startswith("BRAIN_")}
    cfg = load_config(env=env, overrides={"state_dir": out_dir})
    slot = FrameSlot()
    stop = threading.Event()
    published = [0]

    def camera() -> None:
        t0, seq = time.monotonic(), 0
        while not stop.is_set():
            i = seq % len(frames)
            due = t0 + (seq // len(frames)) * span + float(frame_t[i])
            time.sleep(max(0.0, due - time.monotonic()))
            slot.publish(Frame(frames[i], time.monotonic(), seq))
            published[0] = seq = seq + 1

    writer: Any
    if kind == "recorder":
        writer = Recorder(Path(out_dir) / "episodes", slot, jpeg_quality=cfg.camera.jpeg_quality,
                          fsync_interval_s=cfg.recorder.fsync_interval_ms / 1000.0)
    else:
        writer = TubWriter(Path(out_dir) / "tub", slot, quality=cfg.camera.jpeg_quality)

    def steps() -> None:
        t0, k = time.monotonic(), 0
        while not stop.is_set():
            time.sleep(max(0.0, t0 + k / cfg.drive_hz - time.monotonic()))
            j = k % len(step_t)
            writer.on_step(StepSample(
                t_mono=time.monotonic(), t_wall=time.time(), state=states[j],
                action=(float(actions[j][0]), float(actions[j][1])), reward=float(rewards[j]),
                discount=1.0, is_terminal=False, mode="manual",
                language_instruction="follow the track"))
            k += 1

    threads = [threading.Thread(target=camera, name="replay-camera", daemon=True),
               threading.Thread(target=steps, name="replay-steps", daemon=True)]
    for t in threads:
        t.start()
    try:
        time.sleep(WARMUP_S)
        probe = encode_probe_ms(frames)
        before, cpu0, seq0 = live_threads(), time.process_time(), published[0]
        if kind == "recorder":
            writer.start_episode({"operator": "bench", "drive_hz": cfg.drive_hz})
        else:
            writer.start({"operator": "bench", "drive_hz": cfg.drive_hz})
        time.sleep(seconds)
        summary = writer.stop_episode("completed") if kind == "recorder" else writer.stop()
        cpu1, after, seq1 = time.process_time(), live_threads(), published[0]
        probe = (probe + encode_probe_ms(frames)) / 2
    finally:
        stop.set()
        for t in threads:
            t.join(5)
    steady = sum(after[k] - before[k] for k in before.keys() & after.keys())
    written = summary.get("frames", 0)
    return {"kind": kind, "seconds": seconds, "cpu_s": (cpu1 - cpu0) - steady,
            "encode_probe_ms": probe,
            "frames_published": seq1 - seq0, "frames_written": written,
            "bytes": summary.get("log_bytes", summary.get("bytes", 0)),
            "steps": summary.get("steps", summary.get("records", 0))}


def against_tub(scratch: Path, n_frames: int, seconds: float, rounds: int) -> dict[str, Any]:
    cap_dir = scratch / "capture"
    cap_dir.mkdir()
    cap = in_child(capture, (n_frames, str(scratch / "capture-state"), str(cap_dir)),
                   n_frames / 10 + 120)
    runs: dict[str, list[dict[str, Any]]] = {"recorder": [], "tub": []}
    for r in range(rounds):
        for kind in ("recorder", "tub"):  # interleaved: this machine is shared and noisy
            out = scratch / f"replay-{kind}-{r}"
            runs[kind].append(in_child(replay_once, (kind, seconds, str(cap_dir), str(out)),
                                       seconds + 120))
            shutil.rmtree(out)
    shutil.rmtree(cap_dir)
    return {"capture": cap, **runs}


def report_tub(t: dict[str, Any]) -> None:
    cap = t["capture"]
    print(f"the same frames: {cap['frames']} frames {cap['shape']} ({cap['span_s']:.1f} s of "
          f"camera, sha256 {cap['sha256'][:16]}…) and {cap['steps']} steps, replayed to each "
          f"writer in real time:")
    for kind in ("recorder", "tub"):
        for r in t[kind]:
            per_frame = r["cpu_s"] / max(r["frames_published"], 1) * 1e3
            print(f"  {kind:8} {r['cpu_s'] / r['seconds']:.4f} CPU-s per recorded second = "
                  f"{per_frame:.2f} ms per camera frame = {per_frame / r['encode_probe_ms']:.2f} "
                  f"bare JPEG encodes (one took {r['encode_probe_ms']:.2f} ms in this run); "
                  f"{r['frames_written']} of {r['frames_published']} frames written, "
                  f"{r['steps']} steps, {r['bytes'] / r['seconds'] / 1e6:.2f} MB/s")


def _timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t


def copy_baseline(src: Path, dst: Path, sync: bool) -> float:
    """`cp -r src dst`, then (sync=True) `sync` its files and directory: fsync, like export."""
    t = _timed(["cp", "-r", str(src), str(dst)])
    if sync:
        t += _timed(["sync", *map(str, sorted(dst.rglob("*"))), str(dst)])
    shutil.rmtree(dst)
    return t


def bench_export(episodes_dir: Path, scratch: Path, repeat: int) -> dict[str, Any]:
    t_export, t_cp_sync, t_cp, t_src_sync = [], [], [], []
    manifest: dict[str, Any] = {}
    for r in range(repeat):  # interleaved: this machine is shared and noisy
        out = scratch / f"export{r}"
        t = time.perf_counter()
        manifest = prepare_cloud_export(episodes_dir, out)
        t_export.append(time.perf_counter() - t)
        t_cp_sync.append(copy_baseline(out, scratch / "copy", sync=True))
        t_cp.append(copy_baseline(out, scratch / "copy", sync=False))
        t_src_sync.append(copy_baseline(episodes_dir, scratch / "copy", sync=True))
        shutil.rmtree(out)
    return {"export_bytes": manifest["counts"]["bytes"], "episodes": manifest["counts"],
            "source_bytes": sum(p.stat().st_size for p in episodes_dir.rglob("*")
                                if p.is_file()),
            "t_export": t_export, "t_cp_sync": t_cp_sync, "t_cp": t_cp,
            "t_src_sync": t_src_sync}


def _spread(values: list[float]) -> str:
    return f"min {min(values):.3f}, max {max(values):.3f}"


def report_record(base: dict[str, Any], rec: dict[str, Any]) -> None:
    s, secs = rec["summary"], rec["seconds"]
    dur = s.get("duration_s") or secs
    lb, lr = base["status"]["lateness_ms"], rec["status"]["lateness_ms"]
    cam = rec["steady_threads_cpu_s"]
    sim = rec["sim_dropped_frames"]
    print(f"recording {secs:g} s in {rec['episodes']} episode(s): {s.get('steps')} steps, "
          f"{s.get('frames')} frames recorded, "
          f"{s.get('dropped_frames')} dropped ({sim} of them never rendered by the simulator's "
          f"camera, so {s.get('dropped_frames', 0) - sim} by the recorder), "
          f"{s.get('unused_frames')} superseded before a step used them, "
          f"{s.get('dropped_steps')} steps dropped; status {s.get('status')}")
    print(f"  recorder CPU: {rec['recorder_cpu_s']:.3f} s = "
          f"{rec['recorder_cpu_s'] / dur:.4f} CPU-s per recorded second (target <= 0.035); "
          "sampled per thread: " + ", ".join(
              f"{k} {v:.2f} s" for k, v in sorted(rec["recorder_threads_sampled_s"].items())))
    extra = rec["control_cpu_per_tick_ms"] - base["control_cpu_per_tick_ms"]
    print(f"  control thread CPU per tick: {rec['control_cpu_per_tick_ms']:.3f} ms recording, "
          f"{base['control_cpu_per_tick_ms']:.3f} ms baseline ({extra:+.3f} ms; "
          f"{extra * rec['ticks'] / dur / 1e3:+.4f} CPU-s per recorded second)")
    print(f"  bytes: {s.get('log_bytes', 0) / 1e6:.1f} MB = "
          f"{s.get('log_bytes', 0) / dur / 1e6:.2f} MB/s")
    print("  not the recorder (same in both runs): " + ", ".join(
        f"{k.split('#')[0]} {v:.2f} s" for k, v in sorted(cam.items())))
    print(f"  loop lateness p99: {lr['p99']:.3f} ms recording vs {lb['p99']:.3f} ms baseline "
          f"({lr['p99'] - lb['p99']:+.3f} ms, target <= +0.5); p50 {lr['p50']:.3f} vs "
          f"{lb['p50']:.3f}, max {lr['max']:.3f} vs {lb['max']:.3f} ms; overruns "
          f"{rec['status']['overruns']} vs {base['status']['overruns']}; rate "
          f"{rec['status']['rate_hz']:.3f} vs {base['status']['rate_hz']:.3f} Hz")
    print(f"  control thread: {'; '.join(rec['status'].get('thread', []))}")


def report_export(e: dict[str, Any]) -> None:
    n, mb, src = len(e["t_export"]), e["export_bytes"] / 1e6, e["source_bytes"] / 1e6
    med = {k: statistics.median(e[k]) for k in ("t_export", "t_cp_sync", "t_cp", "t_src_sync")}
    ratios = [c / x for c, x in zip(e["t_cp_sync"], e["t_export"], strict=True)]
    print(f"export ({e['episodes']['episodes']} episode(s), {e['episodes']['steps']} steps): "
          f"reads {src:.1f} MB of episode logs, writes {mb:.1f} MB (one image per step)")
    print(f"  export (validate, CRCs, sha256, fsync, atomic publish): {med['t_export']:.3f} s = "
          f"{mb / med['t_export']:.0f} MB/s  [{_spread(e['t_export'])}]")
    print(f"  baseline cp -r + sync of the export's bytes: {med['t_cp_sync']:.3f} s = "
          f"{mb / med['t_cp_sync']:.0f} MB/s  [{_spread(e['t_cp_sync'])}]")
    print(f"  ratio export/cp (same bytes, fsync in both; median of {n}): "
          f"{med['t_cp_sync'] / med['t_export']:.2f} (target >= 0.50); per run: "
          f"{[round(r, 2) for r in ratios]}")
    print(f"  for scale: cp -r without sync {med['t_cp']:.3f} s = {mb / med['t_cp']:.0f} MB/s "
          f"(ratio {med['t_cp'] / med['t_export']:.2f}); cp -r + sync of the episode logs "
          f"{med['t_src_sync']:.3f} s = {src / med['t_src_sync']:.0f} MB/s (ratio "
          f"{med['t_src_sync'] / med['t_export']:.2f})")


def rows_of(base: dict[str, Any], rec: dict[str, Any], exp: dict[str, Any],
            tub: dict[str, Any]) -> list[Row]:
    def per_s(runs: list[dict[str, Any]]) -> float:
        return statistics.median(r["cpu_s"] / r["seconds"] for r in runs)

    def encodes(runs: list[dict[str, Any]]) -> float:  # speed-independent: see encode_probe_ms
        return statistics.median(r["cpu_s"] / max(r["frames_published"], 1) * 1e3
                                 / r["encode_probe_ms"] for r in runs)

    ours, theirs = per_s(tub["recorder"]), per_s(tub["tub"])
    s = rec["summary"]
    dur = s.get("duration_s") or rec["seconds"]
    by_recorder = (s.get("dropped_frames") or 0) - rec["sim_dropped_frames"]
    lb, lr = base["status"]["lateness_ms"]["p99"], rec["status"]["lateness_ms"]["p99"]
    med_exp = statistics.median(exp["t_export"])
    med_cp = statistics.median(exp["t_cp_sync"])
    mb = exp["export_bytes"] / 1e6
    return [
        Row("record", "recorder CPU per recorded s, 640x480@30 + 50 Hz, the same frames "
            f"(median of {len(tub['recorder'])})", ours, "CPU-s/s", "ratio <= 0.80",
            ours <= 0.8 * theirs, theirs, "DonkeyCar-style tub"),
        Row("record", "the same, per camera frame in bare JPEG encodes (machine speed out)",
            encodes(tub["recorder"]), "encodes", "for scale", None, encodes(tub["tub"]),
            "DonkeyCar-style tub"),
        Row("record", "recorder CPU per recorded s, live simulator", rec["recorder_cpu_s"] / dur,
            "CPU-s/s", "<= 0.035", rec["recorder_cpu_s"] / dur <= 0.035),
        Row("record", "frames dropped by the recorder, live", by_recorder, "", "0",
            by_recorder == 0),
        Row("record", "loop lateness p99 while recording, live", lr, "ms",
            "<= baseline + 0.5 ms", lr - lb <= 0.5, lb, "not recording"),
        Row("record", "export throughput (validate, CRCs, sha256, fsync)", mb / med_exp, "MB/s",
            "ratio >= 0.50", med_cp / med_exp >= 0.5, mb / med_cp, "cp -r + sync"),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="recording length (default 60)")
    ap.add_argument("--episodes", type=int, default=1,
                    help="split the recording into this many back-to-back episodes, as "
                         "`brain collect` records them (default 1: one episode of --seconds)")
    ap.add_argument("--repeat", type=int, default=5, help="export/cp rounds (default 5)")
    ap.add_argument("--rounds", type=int, default=2,
                    help="replay rounds of recorder and tub on the same frames (default 2)")
    ap.add_argument("--replay-seconds", type=float, default=20.0,
                    help="length of each replay (default 20)")
    ap.add_argument("--capture-frames", type=int, default=300,
                    help="camera frames kept for the replays (default 300: 10 s, 276 MB)")
    ap.add_argument("--dir", help="scratch directory (default: a temp dir on the same disk "
                                  "as the system temp dir)")
    ap.add_argument("--json", metavar="PATH", help="also write the raw results as JSON")
    add_rows_argument(ap)
    args = ap.parse_args()
    if args.seconds <= 0 or args.repeat < 1 or args.episodes < 1 or args.rounds < 1 \
            or args.replay_seconds <= 0 or args.capture_frames < 2:
        ap.error("--seconds and --replay-seconds must be > 0, --repeat, --episodes and "
                 "--rounds >= 1, --capture-frames >= 2")
    mp.set_start_method("spawn")
    machine = Machine()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-record-") as tmp:
        scratch = Path(tmp)
        state = scratch / "state"
        print(f"recording bench: {args.seconds:g} s per live run, {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.2f}")
        base = measure(False, args.seconds, str(state))
        rec = measure(True, args.seconds, str(state), args.episodes)
        report_record(base, rec)
        episodes_dir = Path(rec["episodes_dir"])
        for eid in sorted(p.name for p in episodes_dir.iterdir() if not p.name.startswith(".")):
            v = validate_episode(episodes_dir, eid)
            print(f"  validate {eid}: {v['status']} {v['reasons']}; rate {v.get('rate_hz')} Hz, "
                  f"skew p99 {v.get('skew_p99_ms')} ms, {v.get('frames')} frames")
        exp = bench_export(episodes_dir, scratch, args.repeat)
        report_export(exp)
        tub = against_tub(scratch, args.capture_frames, args.replay_seconds, args.rounds)
        report_tub(tub)
        if args.json:
            Path(args.json).write_text(json.dumps(
                {"baseline": base, "recording": rec, "export": exp, "against_tub": tub},
                indent=2, default=str))
    return finish(rows_of(base, rec, exp, tub), args.rows, machine)


if __name__ == "__main__":
    sys.exit(main())
