"""The promotion gate: whether a trained candidate may replace the active policy.

Run at the end of every `brain train` and by `brain train gate`. Checks, in order (each one's
figures go into `report.json` beside the candidate, with a short summary in `report.txt`):

1. export   the merged network exported to ONNX gives the same outputs as in torch on the
            golden inputs (max |difference| <= 1e-3);
2. latency  onnxruntime inference of one camera frame, pre-processing included, p99 within
            `gate.latency_budget_ms`;
3. val_loss the candidate's loss on the held-out episodes is below `gate.max_val_loss_ratio`
            times the active policy's (skipped when there is no validation episode);
4. target   in the simulator, closed loop for `gate.eval_seconds` on each place it was trained
            on: no off-track event and mean |cte| <= `gate.target_max_mean_cte` (places recorded
            on a real robot cannot be driven here; they rely on 3);
5. kept     on every place the active policy was trained on or carries in its rehearsal set:
            no off-track event and mean |cte| within `Gate.kept_limit` of the active policy's
            (`gate.keep_max_ratio` times it, or + `gate.keep_floor_m` where it is already under
            `gate.keep_floor_below_m`).

A candidate that passes is signed with the robot's own key as a bundle (origin `device`) and, if
`ota.allow_local_promotion` is on, installed through the running daemon's OTA path (trial, then
commit or roll back): the same checks as any bundle from the fleet.

Closed-loop results are deterministic (lockstep), so those of a model already measured are
taken from `<state>/train/eval-cache.json`, keyed by the ONNX file's hash and the run's settings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from brain.durable import atomic_write_json
from brain.train import evaluate
from brain.train.settings import TrainSettings

if TYPE_CHECKING:
    from brain.config import Config
    from brain.train.data import Samples

log = logging.getLogger(__name__)

EXPORT_TOLERANCE = 1e-3
LATENCY_RUNS = 60
REPORT_FILE, SUMMARY_FILE, BUNDLE_FILE = "report.json", "report.txt", "candidate.bundle"
PROMOTE_TIMEOUT_S = 300.0


def kept_places(model_dir: Path) -> dict[str, dict[str, str]]:
    """The places a model must keep driving, with how the simulator drives each: those it was
    trained on and those its rehearsal set holds. A real robot's place ("robot") has no
    simulator source and is left to the validation loss."""
    from brain.control.model import load_spec
    from brain.hardware.sim.tracks import LAYOUTS

    spec = load_spec(model_dir)
    training = spec.extra.get("training") or {}
    names = set(training.get("places") or [])
    names |= set(training.get("replay_places") or [])
    if training.get("track"):
        names.add(str(training["track"]))  # the seed's own record
    if spec.extra.get("replay") and not training.get("replay_places"):
        from brain.train import replay

        path = model_dir / str(spec.extra["replay"])
        if path.is_file():
            names |= set(replay.load(path).places)
    sources = {str(k): dict(v) for k, v in (training.get("place_sources") or {}).items()}
    out = {}
    for name in sorted(names):
        if name in sources:
            out[name] = sources[name]
        elif name in LAYOUTS:
            out[name] = {"track": name}
    return out


class EvalCache:
    """Closed-loop results by (model file hash, place, seconds, seed, camera and safety)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        try:
            self.data: dict[str, Any] = json.loads(path.read_text()) if path else {}
        except (OSError, ValueError):
            self.data = {}

    @staticmethod
    def key(model_dir: Path, source: dict[str, str], seconds: float, cfg: Config | None) -> str:
        from brain.control.model import load_spec

        h = hashlib.sha256()
        spec = load_spec(model_dir)
        h.update(spec.file_for("onnxruntime").read_bytes())
        if "track_file" in source:
            h.update(Path(source["track_file"]).read_bytes())
        extra = {"source": source, "seconds": seconds, "seed": evaluate.EVAL_SEED,
                 "camera": vars(cfg.camera) if cfg else None,
                 "safety": vars(cfg.safety) if cfg else None}
        h.update(json.dumps(extra, sort_keys=True, default=str).encode())
        return h.hexdigest()

    def drive_all(self, jobs: list[tuple[Path, dict[str, str]]], seconds: float,
                  cfg: Config | None, workers: int) -> list[dict[str, Any]]:
        """Results for every (model directory, place): cached ones at once, the others in
        `workers` fresh processes (lockstep runs are independent; each leaves nothing behind
        in this process, whose memory holds the trainer)."""
        from brain.procs import worker_pool

        keys = [self.key(m, src, seconds, cfg) for m, src in jobs]
        todo = {k: job for k, job in zip(keys, jobs, strict=True) if k not in self.data}
        if todo:
            with worker_pool(min(workers, len(todo)), preload=("brain.train.evaluate",),
                             max_tasks_per_child=1) as pool:
                futures = {k: pool.submit(evaluate.drive, m, seconds=seconds, base=cfg,
                                          track=src.get("track"),
                                          track_file=src.get("track_file"))
                           for k, (m, src) in todo.items()}
                for k, fut in futures.items():
                    self.data[k] = fut.result()
            if self.path is not None:
                try:
                    atomic_write_json(self.path, self.data)
                except OSError as e:
                    log.warning("cannot keep the evaluation cache %s: %s", self.path, e)
        return [{**self.data[k], "cached": k not in todo} for k in keys]


def run_gate(settings: TrainSettings, candidate_dir: Path, active_dir: Path, *,
             cfg: Config | None, val: Samples | None = None,
             places: dict[str, dict[str, str]] | None = None,
             cache_path: Path | None = None,
             on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run checks 1-5 on `candidate_dir/model` against `active_dir`; write and return the
    report. `places`: where the candidate was trained (default: from its policy.json)."""
    from brain.control.model import load_spec

    g = settings.gate
    say = on_progress or (lambda _e: None)
    model_dir = candidate_dir / "model"
    spec = load_spec(model_dir)
    if places is None:
        training = spec.extra.get("training") or {}
        sources = training.get("place_sources") or {}
        places = {p: dict(sources[p]) for p in training.get("places") or [] if p in sources}
    kept = {p: s for p, s in kept_places(active_dir).items() if p not in places}
    report: dict[str, Any] = {"candidate": spec.id, "active": load_spec(active_dir).id,
                              "active_dir": str(active_dir), "created": time.time(),
                              "settings": g.model_dump(mode="json"), "checks": {},
                              "reasons": []}
    checks, reasons = report["checks"], report["reasons"]

    say({"event": "gate", "check": "export"})
    checks["export"] = _export_check(model_dir)
    if not checks["export"]["ok"]:
        reasons.append(f"export: ONNX differs from torch by {checks['export']['max_abs_diff']}")
    say({"event": "gate", "check": "latency"})
    checks["latency"] = _latency_check(model_dir, g.latency_budget_ms)
    if not checks["latency"]["ok"]:
        reasons.append(f"latency: p99 {checks['latency']['p99_ms']} ms over the budget "
                       f"{g.latency_budget_ms} ms")
    checks["val_loss"] = _val_loss_check(model_dir, active_dir, val, settings)
    if not checks["val_loss"]["ok"]:
        reasons.append(f"val_loss: {checks['val_loss']['candidate']} is "
                       f"{checks['val_loss']['ratio']}x the active policy's")
    cache = EvalCache(cache_path)
    checks["target"], checks["kept"] = {}, {}
    say({"event": "gate", "check": "closed loop",
         "places": {"target": sorted(places), "kept": sorted(kept)}})
    every = [*places.items(), *kept.items()]
    jobs = [(d, src) for _, src in every for d in (model_dir, active_dir)]
    results = iter(cache.drive_all(jobs, g.eval_seconds, cfg, g.eval_workers))
    for place, _src in places.items():
        cand, act = next(results), next(results)
        ok = g.target_ok(cand)
        checks["target"][place] = {"candidate": cand, "active": act, "ok": ok}
        if not ok:
            reasons.append(f"target {place}: mean |cte| {cand['mean_abs_cte']:.4f} m "
                           f"(limit {g.target_max_mean_cte}), {cand['off_track_events']} "
                           "off-track events")
    for place, _src in kept.items():
        cand, act = next(results), next(results)
        ratio = cand["mean_abs_cte"] / max(act["mean_abs_cte"], 1e-9)
        limit = g.kept_limit(act["mean_abs_cte"])
        ok = g.kept_ok(cand, act)
        checks["kept"][place] = {"candidate": cand, "active": act, "ratio": round(ratio, 3),
                                 "limit": round(limit, 5), "ok": ok}
        if not ok:
            reasons.append(f"kept {place}: mean |cte| {cand['mean_abs_cte']:.4f} m vs the "
                           f"active {act['mean_abs_cte']:.4f} m (x{ratio:.2f}; limit "
                           f"{limit:.4f} m), {cand['off_track_events']} off-track events")
    if not places:
        report["notes"] = ["no place the simulator can drive was trained on: the target "
                           "check rests on the validation loss"]
    report["passed"] = not reasons
    write_report(candidate_dir, report)
    return report


def _export_check(model_dir: Path) -> dict[str, Any]:
    import torch

    from brain.control.model import load_spec
    from brain.control.policy import load_policy
    from brain.ota.bundle import golden_inputs
    from brain.train.trainer import load_base

    spec = load_spec(model_dir)
    net = load_base(model_dir)
    policy = load_policy(str(model_dir))
    inputs = golden_inputs(8, spec.input_width, spec.input_height, seed=7)
    diffs = []
    with torch.no_grad():
        for x in inputs:
            want = net(torch.from_numpy(x)).numpy().reshape(-1)
            got = np.asarray(policy.backend.run(x), np.float32).reshape(-1)
            diffs.append(float(np.max(np.abs(want - got))))
    worst = max(diffs)
    return {"max_abs_diff": float(f"{worst:.3g}"), "tolerance": EXPORT_TOLERANCE,
            "ok": worst <= EXPORT_TOLERANCE}


def _latency_check(model_dir: Path, budget_ms: float) -> dict[str, Any]:
    """One camera-sized frame through pre-processing and inference, as the policy thread."""
    from brain.control.policy import load_policy

    policy = load_policy(str(model_dir))
    frame = np.random.default_rng(0).integers(0, 255, (480, 640, 3), np.uint8)
    for _ in range(5):
        policy.act(frame)
    times = []
    for _ in range(LATENCY_RUNS):
        t0 = time.perf_counter()
        policy.act(frame)
        times.append((time.perf_counter() - t0) * 1e3)
    p50, p99 = (float(np.percentile(times, q)) for q in (50, 99))
    return {"p50_ms": round(p50, 3), "p99_ms": round(p99, 3), "budget_ms": budget_ms,
            "ok": p99 <= budget_ms}


def _val_loss_check(model_dir: Path, active_dir: Path, val: Samples | None,
                    settings: TrainSettings) -> dict[str, Any]:
    from brain.train.trainer import val_loss_of

    if val is None or not len(val):
        return {"ok": True, "skipped": "no validation episodes"}
    cand = val_loss_of(model_dir, val, settings.loss_weights)
    act = val_loss_of(active_dir, val, settings.loss_weights)
    assert cand is not None and act is not None
    ratio = cand / max(act, 1e-12)
    return {"candidate": cand, "active": act, "ratio": round(ratio, 4),
            "max_ratio": settings.gate.max_val_loss_ratio,
            "ok": ratio < settings.gate.max_val_loss_ratio}


def write_report(candidate_dir: Path, report: dict[str, Any]) -> None:
    atomic_write_json(candidate_dir / REPORT_FILE, report)
    (candidate_dir / SUMMARY_FILE).write_text(summary(report) + "\n")


def summary(report: dict[str, Any]) -> str:
    """The report in a few lines for a person."""
    c = report["checks"]
    verdict = "PASSED" if report["passed"] else "REFUSED"
    lines = [f"gate: {verdict}  candidate {report['candidate']}  vs active {report['active']}"]
    if "export" in c:
        lines.append(f"  export    ONNX vs torch max |diff| {c['export']['max_abs_diff']:g}")
    if "latency" in c:
        lat = c["latency"]
        lines.append(f"  latency   p50 {lat['p50_ms']:.2f} ms  p99 {lat['p99_ms']:.2f} ms  "
                     f"(budget {lat['budget_ms']:g} ms)")
    v = c.get("val_loss", {})
    if "skipped" in v:
        lines.append(f"  val loss  skipped: {v['skipped']}")
    elif v:
        lines.append(f"  val loss  {v['candidate']:.5f} vs active {v['active']:.5f} "
                     f"(x{v['ratio']:.2f})")
    for kind in ("target", "kept"):
        for place, r in c.get(kind, {}).items():
            cand, act = r["candidate"], r["active"]
            lines.append(f"  {kind:<6}    {place:<16} mean|cte| {act['mean_abs_cte']:.4f} -> "
                         f"{cand['mean_abs_cte']:.4f} m  off-track {act['off_track_events']}"
                         f" -> {cand['off_track_events']}  {'ok' if r['ok'] else 'FAIL'}")
    for reason in report["reasons"]:
        lines.append(f"  refused: {reason}")
    promo = report.get("promotion")
    if promo:
        lines.append(f"  promotion {promo['status']}: {promo.get('detail', '')}".rstrip(": "))
    return "\n".join(lines)


# -- promotion -------------------------------------------------------------------------------------

def build_local_bundle(cfg: Config, settings: TrainSettings, candidate_dir: Path,
                       run_id: str) -> tuple[Path, dict[str, Any]]:
    """The candidate as a bundle signed with the robot's own key (origin `device`), meant for
    this robot only."""
    from brain.control.model import load_spec
    from brain.identity import robot_id
    from brain.ota import keys
    from brain.ota.bundle import BuildOptions, build_bundle

    model_dir = candidate_dir / "model"
    spec = load_spec(model_dir)
    s = cfg.safety
    opts = BuildOptions(version=spec.version, release=int(time.time()), name="local",
                        bundle_id=f"local-{run_id}".lower(), origin="device",
                        profiles=(cfg.profile,), max_steering=s.max_steering,
                        max_throttle=s.max_throttle, max_reverse=s.max_reverse,
                        latency_budget_ms=settings.gate.latency_budget_ms,
                        golden_count=settings.gate.golden_count,
                        targets=(robot_id(cfg.state_path),),
                        description=f"trained on this robot (run {run_id}, {spec.id})")
    out = candidate_dir / BUNDLE_FILE
    manifest = build_bundle(model_dir, keys.device_key(cfg.layout.keys), opts, out)
    return out, manifest


def promote(cfg: Config, bundle: Path, bundle_id: str,
            on_progress: Callable[[dict[str, Any]], None] | None = None,
            timeout: float = PROMOTE_TIMEOUT_S) -> dict[str, Any]:
    """Install the bundle through the running daemon (ota.install), and wait for its trial to
    end. Returns {"status": committed|rolled_back|refused|no_daemon|timeout, "detail"}."""
    from brain.control_socket import ControlClient, ControlError, DaemonNotRunning

    say = on_progress or (lambda _e: None)
    client = ControlClient(cfg.socket_path, timeout=60.0)
    try:
        client.call("ota.install", source=str(bundle))
    except DaemonNotRunning as e:
        return {"status": "no_daemon", "detail": f"{e}; install it later with `brain ota "
                f"install {bundle}`"}
    except ControlError as e:
        reason = e.fields.get("reason") or e.kind
        return {"status": "refused", "detail": f"{reason}: {e}"}
    say({"event": "promotion", "phase": "trial", "bundle_id": bundle_id})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            st = client.call("ota.status")
        except ControlError as e:
            return {"status": "lost", "detail": f"the daemon went away during the trial: {e}"}
        if st["phase"] in ("committed", "rolled_back", "idle"):
            active = (st.get("active") or {}).get("bundle_id")
            if st["phase"] == "committed" and active == bundle_id:
                return {"status": "committed", "detail": f"{bundle_id} is the active policy"}
            err = st.get("last_error") or {}
            return {"status": "rolled_back",
                    "detail": f"{err.get('reason')}: {err.get('detail')}"}
        time.sleep(0.2)
    return {"status": "timeout", "detail": f"the trial did not end within {timeout:g} s"}
