"""On-device training: `brain train` on one core, and what it does to the running daemon.

1. Data: 16 teacher episodes of 15 s on the chicane (`brain collect --lockstep`), ~7,200
   camera frames in the recorder's store (not timed against a goal).
2. `brain train --config etc/train/pi5-donkey.json --no-gate` (300 steps x batch 8, LoRA on the
   seed policy, rehearsal) pinned to one CPU: wall time from process start to exit (imports,
   decoding the episodes, training, checkpoints, writing the candidate with its ONNX), steps/s,
   peak RSS of the process (wait4), adapter size against the base weights. Baseline in the same
   run: a process that only imports torch and peft, pinned the same way.
   Goals: <= 30 s, <= 600 MB.
3. The real daemon on the simulator at 50 Hz, camera on and the policy inferring (ARMED: the
   trainer yields while the robot drives), its control thread on CPU 0: loop lateness p99 and
   missed ticks over a quiet window, then over a window of the same length with the trainer
   training beside it on the other CPU (one long run, stopped with SIGTERM at the window's end).
   Goals: p99 +0.5 ms at most, no missed tick.

4. Learning (`--parts learning`): for each target (chicane, hairpin, the garage track file),
   3 collections (16 x 15 s teacher episodes with simulator seeds 0, 1, 2) x 5 training seeds
   (the config's `seed` 0..4), each `brain train --no-promote` with its gate: the candidate on
   the target (mean |cte|, off-track events) and on every kept track (its mean |cte| against the
   limit the gate's one rule gives for the active policy's). Prints the 5 x 3 table per target,
   then the worst case and the median, against the goals in `etc/train/pi5-donkey.json`
   (target <= gate.target_max_mean_cte with 0 off-track; kept within gate.kept_limit). About
   25 minutes on this 2-core machine (two trials side by side).

    python bench/train.py [--parts budget,daemon,learning] [--window 300] [--state DIR]
                          [--seeds 5] [--collections 3] [--targets chicane,hairpin,garage]
                          [--code CHECKOUT] [--data DIR]

`--code` runs another checkout's `brain` (its trainer, gate and configuration) under the same
bench and the same rule, which is how the "before" table of a change is made; `--data` keeps the
collections between runs (they are the same for the same seed: lockstep).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.table import Machine, Row, add_rows_argument, finish  # noqa: E402
from brain.control.model import SEED_MODEL_DIR  # noqa: E402
from brain.control_socket import ControlClient  # noqa: E402

CONFIG = ROOT / "etc" / "train" / "pi5-donkey.json"


def env_for(state: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "BRAIN_STATE_DIR": str(state), "BRAIN_LOG_LEVEL": "warning",
            "BRAIN_API_ENABLED": "0", "PYTHONPATH": str(ROOT), **extra}


def peak_rss_mb(cmd: list[str], env: dict[str, str], cpu: int) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MB) of the process itself, and its stdout."""
    p = subprocess.Popen(["taskset", "-c", str(cpu), *cmd], env=env, cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.perf_counter()
    out = p.stdout.read() if p.stdout else ""
    err = p.stderr.read() if p.stderr else ""
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{err[-3000:]}")
    return wall, usage.ru_maxrss / 1024, out


def collect(state: Path) -> float:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "brain", "collect", "--teacher", "--track",
                        "chicane", "--episodes", "16", "--seconds", "15", "--lockstep"],
                       env=env_for(state), cwd=ROOT, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"collect failed:\n{r.stderr[-3000:]}")
    return time.perf_counter() - t0


def train_once(state: Path, cpu: int) -> dict:
    shutil.rmtree(state / "train", ignore_errors=True)
    shutil.rmtree(state / "model", ignore_errors=True)
    base_wall, base_rss, _ = peak_rss_mb(
        [sys.executable, "-c", "import torch, peft"], env_for(state), cpu)
    wall, rss, out = peak_rss_mb(
        [sys.executable, "-m", "brain", "train", "--config", str(CONFIG), "--no-gate",
         "--json"], env_for(state), cpu)
    events = [json.loads(line) for line in out.splitlines()]
    data = next(e for e in events if e.get("event") == "data")
    steps = [e for e in events if "event" not in e and "loss" in e]
    first = next(e for e in events if e.get("event") == "data")["t"]
    train_s = steps[-1]["t"] - first
    cand = state / "model" / "adapters" / "candidate"
    return {"wall_s": wall, "peak_rss_mb": rss, "import_only_s": base_wall,
            "import_only_rss_mb": base_rss, "load_s": data["load_s"],
            "frames": data["train_frames"] + data["val_frames"], "train_s": train_s,
            "steps_per_s": steps[-1]["step"] / train_s, "steps": steps[-1]["step"],
            "batch": json.loads(CONFIG.read_text()).get("batch", 8), "loss_first": steps[0]["loss"],
            "loss_last": steps[-1]["loss"],
            "adapter_bytes": (cand / "adapter_model.safetensors").stat().st_size,
            "base_bytes": (SEED_MODEL_DIR / "policy.safetensors").stat().st_size}


# -- learning: the 5 x 3 table per target ----------------------------------------------------------

TARGETS = {"chicane": ["--track", "chicane"], "hairpin": ["--track", "hairpin"],
           "garage": ["--track-file", str(ROOT / "etc" / "tracks" / "garage.toml")]}


@dataclass
class Trial:
    target: str
    collection: int
    seed: int
    target_cte: float = math.nan
    target_off: int = -1
    kept: dict = field(default_factory=dict)  # place -> (candidate, active, limit, off-track)
    passed: bool | None = None  # the gate's own verdict (of the checkout that ran)
    reasons: list = field(default_factory=list)  # why the gate refused, if it did
    train_s: float = math.nan
    error: str = ""

    @property
    def worst_kept(self) -> tuple[str, float]:
        """The kept place nearest its limit, and candidate / limit there."""
        if not self.kept:
            return "", math.nan
        place = max(self.kept, key=lambda p: self.kept[p][0] / self.kept[p][2])
        return place, self.kept[place][0] / self.kept[place][2]

    @property
    def worst_ratio(self) -> float:
        return max((c / a for c, a, _, _ in self.kept.values()), default=math.nan)

    def holds(self, gate: Any) -> bool:
        return (not self.error and self.target_off == 0
                and self.target_cte <= gate.target_max_mean_cte
                and all(off == 0 and c <= lim for c, _, lim, off in self.kept.values()))


def collection_dir(data: Path, target: str, collection: int, code: Path) -> Path:
    """The episodes of one collection, recorded once (lockstep: the same seed gives the same
    frames and actions, so a kept collection stands for a new one)."""
    state = data / f"{target}-c{collection}"
    done = state / "collected"
    if not done.exists():
        shutil.rmtree(state, ignore_errors=True)
        r = subprocess.run([sys.executable, "-m", "brain", "collect", "--teacher", "--episodes",
                            "16", "--seconds", "15", "--lockstep", *TARGETS[target]],
                           env=env_for(state, PYTHONPATH=str(code),
                                       BRAIN_PROFILES_SIM_SEED=str(collection)),
                           cwd=code, capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(f"collect {target} c{collection} failed:\n{r.stderr[-3000:]}")
        done.write_text("ok\n")
    return state


def run_trial(trial: Trial, episodes_state: Path, work: Path, config: dict, code: Path,
              gate: Any, cache: Path) -> Trial:
    """`brain train --no-promote` (trainer and gate of `code`) on one collection and seed, in
    a state directory of its own whose episodes are the collection's."""
    state = work / f"{trial.target}-c{trial.collection}-s{trial.seed}"
    shutil.rmtree(state, ignore_errors=True)
    (state / "rlds").mkdir(parents=True)
    (state / "rlds" / "episodes").symlink_to(episodes_state / "rlds" / "episodes")
    (state / "train").mkdir()
    if cache.exists():  # the active policy's drives, measured once for every trial
        shutil.copy(cache, state / "train" / "eval-cache.json")
    cfg_file = state / "train.json"
    cfg_file.write_text(json.dumps({**config, "seed": trial.seed}))
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "brain", "train", "--config", str(cfg_file),
                        "--no-promote", "--json"], env=env_for(state, PYTHONPATH=str(code)),
                       cwd=code, capture_output=True, text=True)
    events = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    report = next((e for e in events if e.get("event") == "report"), None)
    if report is None:
        trial.error = f"rc {r.returncode}: {r.stderr.strip().splitlines()[-1:]}"
        return trial
    trial.train_s = time.perf_counter() - t0
    (tgt,) = report["checks"]["target"].values()
    trial.target_cte = tgt["candidate"]["mean_abs_cte"]
    trial.target_off = tgt["candidate"]["off_track_events"]
    for place, k in report["checks"]["kept"].items():
        c, a = k["candidate"], k["active"]
        trial.kept[place] = (c["mean_abs_cte"], a["mean_abs_cte"],
                             gate.kept_limit(a["mean_abs_cte"]), c["off_track_events"])
    trial.passed = bool(report["passed"])
    trial.reasons = list(report["reasons"])
    merged = json.loads(cache.read_text()) if cache.exists() else {}
    mine = state / "train" / "eval-cache.json"
    if mine.exists():
        merged.update(json.loads(mine.read_text()))
        cache.write_text(json.dumps(merged))
    shutil.rmtree(state / "model", ignore_errors=True)  # the candidates: ~1 MB each, not needed
    return trial


def learning(args: argparse.Namespace, tmp: Path) -> list[Row]:
    from brain.train.settings import load_settings

    code = (args.code or ROOT).resolve()
    config_path = args.config or code / "etc" / "train" / "pi5-donkey.json"
    config = json.loads(config_path.read_text())
    gate = load_settings(CONFIG).gate  # the rule: always this checkout's
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    data = args.data or tmp / "collections"
    work = tmp / "trials"
    cache = tmp / "eval-cache.json"
    print(f"learning: {len(targets)} targets x {args.collections} collections x {args.seeds} "
          f"seeds, {config_path} run by {code}; goals: target mean|cte| <= "
          f"{gate.target_max_mean_cte} m with 0 off-track, kept within "
          f"{gate.keep_max_ratio}x the active policy (+{gate.keep_floor_m * 1000:g} mm under "
          f"{gate.keep_floor_below_m * 100:g} cm)", flush=True)
    trials: list[Trial] = []
    t0 = time.perf_counter()
    for target in targets:
        dirs = {c: collection_dir(data, target, c, code) for c in range(args.collections)}
        todo = [Trial(target, c, s) for c in range(args.collections) for s in range(args.seeds)]
        # The first trial alone, so the active policy's drives are cached for the others.
        done = [run_trial(todo[0], dirs[0], work, config, code, gate, cache)]
        with ThreadPoolExecutor(args.jobs) as pool:
            done += list(pool.map(run_trial, todo[1:], [dirs[t.collection] for t in todo[1:]],
                                  *([x] * (len(todo) - 1) for x in (work, config, code, gate,
                                                                     cache))))
        print_target_table(target, done, gate, args.seeds, args.collections)
        trials += done
    print(f"  {len(trials)} trials in {time.perf_counter() - t0:.0f} s", flush=True)
    rows = []
    for target in targets:
        mine = [t for t in trials if t.target == target]
        good = [t for t in mine if not t.error]
        worst_cte = max((t.target_cte for t in good), default=math.nan)
        worst_off = max((t.target_off for t in good), default=-1)
        worst_kept = max((t.worst_kept[1] for t in good), default=math.nan)
        held = len(good) == len(mine) and all(t.holds(gate) for t in mine)
        rows += [
            Row("train", f"learning {target}: worst target mean|cte| over {len(mine)} trials",
                worst_cte, "m", f"<= {gate.target_max_mean_cte} m, 0 off-track",
                worst_cte <= gate.target_max_mean_cte and worst_off == 0),
            Row("train", f"learning {target}: worst kept mean|cte| / its limit", worst_kept, "",
                "<= 1", worst_kept <= 1),
            Row("train", f"learning {target}: trials that hold every goal",
                sum(t.holds(gate) for t in mine), f"of {len(mine)}", "all", held),
        ]
    return rows


def print_target_table(target: str, trials: list[Trial], gate: Any, seeds: int,
                       collections: int) -> None:
    """One line per seed, one column per collection: target mean|cte| (off-track events) and
    the kept place nearest its limit (candidate / limit), then the worst case and median."""
    by = {(t.collection, t.seed): t for t in trials}
    print(f"\n  target {target}: target mean|cte| m (off-track) / worst kept: cand/limit place "
          "(cand/active)")
    print("    seed " + "".join(f"  {'collection ' + str(c):<40}" for c in range(collections)))
    for s in range(seeds):
        cells = []
        for c in range(collections):
            t = by[(c, s)]
            if t.error:
                cells.append(f"  {'ERROR ' + t.error:<40.40}")
                continue
            place, margin = t.worst_kept
            mark = "" if t.holds(gate) else " !"
            cells.append(f"  {t.target_cte:.4f} ({t.target_off}) / {margin:.3f} "
                         f"{place[:10]:<10} ({t.kept[place][0] / t.kept[place][1]:.2f}){mark:<2}"
                         if place else f"  {t.target_cte:.4f} ({t.target_off}){mark:<30}")
        print(f"    {s:>4}" + "".join(cells))
    good = [t for t in trials if not t.error]
    if not good:
        return
    ctes = [t.target_cte for t in good]
    margins = [t.worst_kept[1] for t in good]
    ratios = [t.worst_ratio for t in good]
    print(f"    worst: target {max(ctes):.4f} m (goal <= {gate.target_max_mean_cte}), off-track "
          f"{max(t.target_off for t in good)}, kept cand/limit {max(margins):.3f} (goal <= 1), "
          f"cand/active {max(ratios):.3f}")
    print(f"    median: target {statistics.median(ctes):.4f} m, kept cand/limit "
          f"{statistics.median(margins):.3f}, cand/active {statistics.median(ratios):.3f}; "
          f"{sum(t.holds(gate) for t in trials)}/{len(trials)} trials hold every goal; "
          f"{sum(bool(t.passed) for t in good)} passed their own gate", flush=True)
    for t in good:
        kept = ", ".join(f"{p} {c:.4f}/{a:.4f}" for p, (c, a, _, _) in sorted(t.kept.items()))
        print(f"      c{t.collection} s{t.seed}: {t.target} {t.target_cte:.4f}; kept "
              f"cand/active {kept}" + "".join(f"\n        gate refused: {r}" for r in t.reasons))


class Daemon:
    def __init__(self, state: Path) -> None:
        self.env = env_for(state, BRAIN_CONTROL_CPU="0", BRAIN_LOG_LEVEL="info")
        self.log = open(state.parent / "daemon.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-m", "brain", "run", "--sim"],
                                     env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                     cwd=ROOT)
        self.client = ControlClient(state / "run" / "control.sock", timeout=30)
        for _ in range(300):
            try:
                if self.client.call("status")["ticks"] > 0:
                    break
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.1)

    def window(self, seconds: float) -> dict:
        self.client.call("stats.reset")
        missed0 = self.client.call("status")["missed_ticks"]
        time.sleep(seconds)
        st = self.client.call("status")
        return {"p99_ms": st["lateness_ms"]["p99"], "max_ms": st["lateness_ms"]["max"],
                "missed": st["missed_ticks"] - missed0, "overruns": st["overruns"],
                "inferences": st["policy"]["inferences"], "mode": st["mode"]}

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


def beside_the_daemon(state: Path, window: float) -> tuple[dict, dict, int]:
    d = Daemon(state)
    try:
        d.client.call("mode", mode="arm")
        time.sleep(2.0)
        quiet = d.window(window)
        long_run = state.parent / "long.json"
        long_run.write_text(json.dumps({**json.loads(CONFIG.read_text()),
                                        "max_steps": 1_000_000, "checkpoint_every": 500}))
        trainer = subprocess.Popen(
            [sys.executable, "-m", "brain", "train", "--config", str(long_run), "--no-gate",
             "--json"], env={**d.env, "BRAIN_LOG_LEVEL": "warning"}, cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert trainer.stdout is not None
        for line in trainer.stdout:  # the window starts once it trains
            if '"loss"' in line:
                break
        busy = d.window(window)
        trainer.terminate()
        out = trainer.communicate(timeout=60)[0]
        steps = [json.loads(x)["step"] for x in out.splitlines() if '"loss"' in x]
        return quiet, busy, max(steps, default=0)
    finally:
        d.stop()


def budget(state: Path, train_cpu: int) -> list[Row]:
    r = train_once(state, train_cpu)
    good = r["wall_s"] <= 30 and r["peak_rss_mb"] <= 600
    print(f"  brain train ({r['steps']} x {r['batch']}): {r['wall_s']:.1f} s wall on one CPU "
          f"(goal <= 30), peak RSS {r['peak_rss_mb']:.0f} MB (goal <= 600): "
          f"{'holds' if good else 'MISSED'}")
    print(f"    baseline in this run: importing torch + peft alone {r['import_only_s']:.1f} s, "
          f"{r['import_only_rss_mb']:.0f} MB")
    print(f"    {r['frames']} frames decoded in {r['load_s']:.1f} s; {r['steps']} steps in "
          f"{r['train_s']:.1f} s = {r['steps_per_s']:.1f} steps/s (checkpoints and "
          f"validation included); loss {r['loss_first']:.4f} -> {r['loss_last']:.4f}")
    print(f"    adapter {r['adapter_bytes'] / 1024:.0f} KiB against the base's "
          f"{r['base_bytes'] / 1024:.0f} KiB ({r['adapter_bytes'] / r['base_bytes']:.1%})")
    return [
        Row("train", f"brain train, {r['steps']} steps x batch {r['batch']} on one CPU: wall "
            "time", r["wall_s"], "s", "<= 30 s", r["wall_s"] <= 30, r["import_only_s"],
            "import torch + peft"),
        Row("train", "brain train: peak RSS", r["peak_rss_mb"], "MB", "<= 600 MB",
            r["peak_rss_mb"] <= 600, r["import_only_rss_mb"], "import torch + peft"),
    ]


def daemon(state: Path, window: float) -> list[Row]:
    quiet, busy, steps = beside_the_daemon(state, window)
    added = busy["p99_ms"] - quiet["p99_ms"]
    good = added <= 0.5 and busy["missed"] == 0
    print(f"  daemon at 50 Hz, camera on, policy inferring ({quiet['mode']}), "
          f"{window:.0f} s windows:")
    print(f"    without the trainer: p99 {quiet['p99_ms']:.3f} ms, max "
          f"{quiet['max_ms']:.3f} ms, missed {quiet['missed']}")
    print(f"    with the trainer ({steps} steps trained): p99 {busy['p99_ms']:.3f} ms, max "
          f"{busy['max_ms']:.3f} ms, missed {busy['missed']}; +{added:.3f} ms "
          f"(goal <= +0.5, 0 missed): {'holds' if good else 'MISSED'}")
    return [
        Row("train", f"loop lateness p99 with the trainer beside it ({window:.0f} s)",
            busy["p99_ms"], "ms", "<= baseline + 0.5 ms", added <= 0.5, quiet["p99_ms"],
            "no trainer"),
        Row("train", "missed ticks with the trainer beside it", busy["missed"], "", "0",
            busy["missed"] == 0),
    ]


PARTS = ("budget", "daemon", "learning")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default=",".join(PARTS),
                    help=f"comma-separated subset of {','.join(PARTS)} (default: all)")
    ap.add_argument("--window", type=float, default=300.0,
                    help="seconds of each daemon window (default 300: 5 minutes)")
    ap.add_argument("--state", type=Path, help="reuse the episodes in this state directory")
    ap.add_argument("--seeds", type=int, default=5, help="training seeds per collection (5)")
    ap.add_argument("--collections", type=int, default=3, help="collections per target (3)")
    ap.add_argument("--targets", default=",".join(TARGETS),
                    help=f"comma-separated subset of {','.join(TARGETS)}")
    ap.add_argument("--jobs", type=int, default=2, help="learning trials side by side (2)")
    ap.add_argument("--code", type=Path,
                    help="run this checkout's brain in the learning part (a before table)")
    ap.add_argument("--data", type=Path, help="keep the learning part's collections here")
    ap.add_argument("--config", type=Path,
                    help="training configuration of the learning part (default: the code's "
                         "etc/train/pi5-donkey.json)")
    add_rows_argument(ap)
    args = ap.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    bad = [p for p in parts if p not in PARTS] + \
        [t for t in args.targets.split(",") if t.strip() and t.strip() not in TARGETS]
    if bad or not parts:
        ap.error(f"unknown part or target: {', '.join(bad) or '(none)'}")
    machine = Machine()
    cpus = sorted(os.sched_getaffinity(0))
    train_cpu = cpus[-1]
    print(f"training bench: {len(cpus)} CPUs, load average {os.getloadavg()[0]:.2f}; the "
          f"trainer pinned to CPU {train_cpu}")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        state = args.state or Path(tmp) / "state"
        if args.state is None and {"budget", "daemon"} & set(parts):
            took = collect(state)
            print(f"  data: 16 x 15 s teacher episodes on the chicane recorded in {took:.1f} s "
                  "(lockstep)")
        if "budget" in parts:
            rows += budget(state, train_cpu)
        if "daemon" in parts:
            rows += daemon(state, args.window)
        if "learning" in parts:
            rows += learning(args, Path(tmp))
    return finish(rows, args.rows, machine)


if __name__ == "__main__":
    sys.exit(main())
