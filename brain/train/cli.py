"""`brain train`, `brain train gate` and `brain eval` (docs/training.md).

The training commands run in this CLI process, never in the daemon: torch and peft are imported
here, lazily, and only by these commands. The daemon is reached over its control socket for the
robot's mode (the resource monitor) and for promotion (ota.install).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from brain.config import Config

DEFAULT_TRAIN_CONFIG = Path("etc/train/pi5-donkey.json")


def register(subparsers: Any, make_client: Callable[[], Any]) -> None:
    from brain.config import SimProfile, schema_fields

    tracks = next(f.metadata["choices"] for n, f, _ in schema_fields(SimProfile) if n == "track")
    t = subparsers.add_parser(
        "train", help="adapt the active policy to the recorded episodes (LoRA), gate, promote",
        description="Train a LoRA adapter on the local episodes, then run the promotion gate "
                    "(and promote through OTA when ota.allow_local_promotion is on).")
    _train_options(t)
    t.set_defaults(func=cmd_train)
    tsub = t.add_subparsers(dest="train_cmd",
                            metavar="{gate,start,status,list,stop,resume,logs,metrics}")
    g = tsub.add_parser("gate", help="run the promotion gate on the current candidate")
    g.add_argument("--config", dest="train_config", type=Path, metavar="FILE",
                   help="training configuration (its `gate` block)")
    g.add_argument("--track-file", action="append", default=[], metavar="FILE",
                   help="also a target place: a track layout file (repeatable)")
    g.add_argument("--no-promote", action="store_true", help="evaluate only")
    g.add_argument("--json", action="store_true", help="the report as JSON")
    g.set_defaults(func=cmd_gate)
    from brain.train import jobs_cli

    jobs_cli.register(tsub)
    w = subparsers.add_parser("trainer", help="the background trainer worker")
    wsub = w.add_subparsers(dest="trainer_cmd", required=True)
    p = wsub.add_parser("serve", help="take queued training jobs one at a time (what "
                                      "brain-trainer.service runs)")
    p.set_defaults(func=cmd_serve)

    e = subparsers.add_parser("eval", help="drive a policy closed loop in the simulator",
                              description="Drive a policy in the simulator (lockstep, simulated "
                                          "time) and report mean and max |cross-track error|, "
                                          "off-track events and laps.")
    e.add_argument("--model", required=True, metavar="DIR|BUNDLE|active",
                   help="a model directory, a signed bundle file, or `active` (the daemon's "
                        "active bundle)")
    e.add_argument("--adapter", type=Path, metavar="DIR",
                   help="a peft adapter directory to merge into the model first")
    where = e.add_mutually_exclusive_group(required=True)
    where.add_argument("--track", choices=tracks, action="append", help="repeatable")
    where.add_argument("--track-file", action="append", metavar="FILE", help="repeatable")
    e.add_argument("--seconds", type=float, default=40.0, metavar="S",
                   help="simulated seconds per track (default 40)")
    e.add_argument("--keys", type=Path, metavar="DIR",
                   help="more trusted public keys for a bundle file")
    e.add_argument("--json", action="store_true", help="one JSON object per track")
    e.set_defaults(func=cmd_eval)


def _train_options(t: argparse.ArgumentParser) -> None:
    t.add_argument("--config", dest="train_config", type=Path, metavar="FILE",
                   help=f"training configuration (default {DEFAULT_TRAIN_CONFIG} when it "
                        "exists, else the built-in defaults)")
    t.add_argument("--resume", nargs="?", const="latest", metavar="RUN",
                   help="continue an unfinished run from its latest checkpoint "
                        "(default: the latest run)")
    t.add_argument("--episodes", nargs="+", metavar="ID", help="train on these episodes only")
    t.add_argument("--episodes-from", type=Path, metavar="FILE",
                   help="train on the episodes listed in FILE, one id a line (what the job "
                        "worker passes: ids from data never go on a command line)")
    t.add_argument("--run-id", metavar="ID", help="name of the run directory (default: the "
                                                   "time and a random suffix)")
    t.add_argument("--track-file", action="append", default=[], metavar="FILE",
                   help="also evaluate the candidate on this track file as a target "
                        "(repeatable)")
    t.add_argument("--no-gate", action="store_true", help="write the candidate, skip the gate")
    t.add_argument("--no-promote", action="store_true",
                   help="run the gate but do not promote, whatever ota.allow_local_promotion")
    t.add_argument("--json", action="store_true", help="one JSON line per event")


def _episode_ids(given: list[str] | None, listed: Path | None) -> list[str] | None:
    """The episodes to train on (None: all); ValueError names an id that is not one."""
    from brain.rlds.store import is_episode_id

    if given is None and listed is None:
        return None
    ids = list(given or [])
    if listed is not None:
        try:
            ids += [line.strip() for line in listed.read_text().splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"--episodes-from {listed}: {e}") from None
    for eid in ids:
        if not is_episode_id(eid):
            raise ValueError(f"not an episode id: {eid!r}")
    return ids


# -- output ----------------------------------------------------------------------------------------

class Progress:
    """Events as JSON lines (--json), or a progress bar with loss and ETA on a terminal, or
    plain lines otherwise."""

    def __init__(self, as_json: bool, total: int = 0) -> None:
        self.as_json = as_json
        self.bar: Any = None
        self.total = total

    def __call__(self, event: dict[str, Any]) -> None:
        if self.as_json:
            print(json.dumps({"t": round(time.time(), 3), **event}, default=str), flush=True)
            return
        if "event" not in event and "loss" in event:
            self._step(event)
            return
        text = _describe_event(event)
        if text:
            if self.bar is not None:
                self.bar.write(text)
            else:
                print(text, file=sys.stderr, flush=True)

    def _step(self, event: dict[str, Any]) -> None:
        if self.bar is None and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=event["max_steps"], unit="step", dynamic_ncols=True,
                            initial=event["step"] - 1, file=sys.stderr)
        extra = f" val {event['val_loss']:.4f}" if event.get("val_loss") is not None else ""
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss {event['loss']:.4f}{extra}", refresh=False)
            self.bar.update(event["step"] - self.bar.n)
        else:
            eta = f"{event['eta_s']:.0f} s" if event.get("eta_s") is not None else "?"
            print(f"step {event['step']}/{event['max_steps']}  loss {event['loss']:.4f}{extra}"
                  f"  {event['steps_per_s']:.1f} steps/s  ETA {eta}", file=sys.stderr,
                  flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _describe_event(e: dict[str, Any]) -> str:
    kind = e.get("event")
    if kind == "data":
        return (f"data: {e['train_frames']} training + {e['val_frames']} validation frames from "
                f"{e['used']} of {e['episodes']} episodes ({e['load_s']:.1f} s)"
                + "".join(f"\n  left out {x['id']}: {x['why']}" for x in e.get("left_out", [])))
    if kind == "run":
        return f"run {e['run']}{' (resuming)' if e['resume'] else ''}: adapting {e['base']}"
    if kind == "resumed_from":
        return f"resumed from {e['checkpoint']} (step {e['step']})"
    if kind == "candidate":
        return f"candidate written to {e['path']}"
    if kind == "checkpoint":
        return ""
    if kind == "paused":
        return f"paused at step {e['step']}: {'; '.join(e['reasons'])}"
    if kind == "resumed":
        return f"resumed at step {e['step']}"
    if kind == "emergency":
        return f"stopping at step {e['step']}: {'; '.join(e['reasons'])}"
    if kind == "gate":
        places = e.get("places") or {}
        return f"gate: {e['check']}" + "".join(f"; {k}: {', '.join(v)}"
                                                for k, v in places.items() if v)
    if kind == "promotion":
        return f"promotion: {e['bundle_id']} {e['phase']}"
    return ""


def _fail(msg: str, code: int = 1) -> int:
    print(f"brain train: {msg}", file=sys.stderr)
    return code


# -- brain train -----------------------------------------------------------------------------------

def _settings(args: argparse.Namespace) -> Any:
    from brain.train.settings import load_settings

    path = args.train_config
    if path is None and DEFAULT_TRAIN_CONFIG.is_file():
        path = DEFAULT_TRAIN_CONFIG
    return load_settings(path)


def _run_dir(cfg: Config, resume: str | None, run_id: str | None = None
             ) -> tuple[Path, bool]:
    runs = cfg.layout.train / "runs"
    if resume is None:
        if run_id is not None:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", run_id):
                raise FileNotFoundError(f"run id {run_id!r}: 1-64 of A-Z a-z 0-9 . _ -")
            if (runs / run_id / "run.json").exists():
                raise FileNotFoundError(f"run {run_id} exists; --resume {run_id} continues it")
            return runs / run_id, False
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        return runs / f"{stamp}-{os.urandom(2).hex()}", False
    if resume != "latest":
        if not (runs / resume / "run.json").is_file():
            raise FileNotFoundError(f"no run {resume} in {runs}")
        return runs / resume, True
    unfinished = []
    for run in sorted(runs.glob("*/run.json")):
        try:
            status = json.loads(run.read_text()).get("status")
        except (OSError, ValueError):
            continue
        if status != "completed":
            unfinished.append(run.parent)
    if not unfinished:
        raise FileNotFoundError(f"no unfinished run in {runs} to resume")
    return unfinished[-1], True


def _die_with_worker() -> None:
    """Started by a trainer worker (or a worker by the daemon): ask the kernel to kill this
    process when its parent dies."""
    from brain.train.worker import PARENT_ENV

    parent = os.environ.get(PARENT_ENV, "")
    if parent.isdigit():
        from brain.procs import die_with_parent

        die_with_parent(int(parent))


def job_settings(cfg: Config) -> Any:
    """The training settings of the jobs the trigger queues (train.job_config)."""
    from brain.train.settings import load_settings

    return load_settings(Path(cfg.train.job_config) if cfg.train.job_config else None)


def cmd_serve(args: argparse.Namespace) -> int:
    from brain.procs import lower_priority
    from brain.train.jobs import JobError
    from brain.train.worker import serve

    _die_with_worker()  # started by a daemon (`make run`): go with it
    lower_priority(19)  # as brain-trainer.service's Nice=19, however it was started
    try:
        return serve(args.config)
    except (JobError, OSError) as e:
        print(f"brain trainer serve: {e}", file=sys.stderr)
        return 2


def daemon_mode_reader(cfg: Config) -> Callable[[], str | None]:
    from brain.control_socket import ControlClient, ControlError

    client = ControlClient(cfg.socket_path, timeout=2.0)

    def mode() -> str | None:
        try:
            return str(client.call("mode.get")["mode"])
        except ControlError:
            return None  # no daemon (or not answering): nothing is driving through it

    return mode


def make_monitor(cfg: Config, settings: Any) -> Any:
    from brain.train.resources import ResourceMonitor

    return ResourceMonitor(cfg.state_path, sysfs_root=Path(cfg.train.sysfs_root),
                           procfs_root=Path(cfg.train.procfs_root),
                           daemon_mode=daemon_mode_reader(cfg),
                           train_while_driving=settings.train_while_driving)


def cmd_train(args: argparse.Namespace) -> int:
    if getattr(args, "train_cmd", None) == "gate":
        return cmd_gate(args)
    _die_with_worker()
    from brain.train.settings import SettingsError

    cfg = args.config
    try:
        settings = _settings(args)
        run_root, resume = _run_dir(cfg, args.resume, args.run_id)
        episode_ids = _episode_ids(args.episodes, args.episodes_from)
    except (SettingsError, FileNotFoundError, ValueError) as e:
        return _fail(str(e), 2)
    try:
        from brain.train.trainer import RunPaths, Trainer, TrainError
    except ModuleNotFoundError as e:
        return _fail(f"training needs the `train` extra ({e.name} is missing): "
                     "pip install 'brain[train]'", 2)
    from brain.train.evaluate import EvalError, active_bundle_dir

    progress = Progress(args.json)
    try:
        base_dir = active_bundle_dir(cfg)
    except EvalError as e:
        return _fail(str(e), 2)
    candidate_dir = cfg.layout.model / "adapters" / "candidate"
    trainer = Trainer(settings, RunPaths(run_root), base_dir, cfg.layout.episodes,
                      candidate_dir, monitor=make_monitor(cfg, settings),
                      episode_ids=episode_ids, on_progress=progress,
                      avoid_cpu=cfg.control.cpu)
    progress({"event": "run", "run": run_root.name, "resume": resume, "base": str(base_dir)})
    try:
        outcome = trainer.train(resume=resume)
    except TrainError as e:
        progress.close()
        return _fail(str(e), 2)
    finally:
        progress.close()
    if outcome.status != "completed":
        progress({"event": "done", "status": outcome.status, "step": outcome.step,
                  "detail": outcome.detail, "run": run_root.name})
        if not args.json:
            print(f"{outcome.status} at step {outcome.step}: {outcome.detail}; "
                  f"`brain train --resume {run_root.name}` continues", file=sys.stderr)
        return 0 if outcome.status == "interrupted" else 3
    progress({"event": "candidate", "path": str(candidate_dir), "step": outcome.step,
              "loss": outcome.history[-1]["loss"] if outcome.history else None})
    if args.no_gate or not settings.gate.enabled:
        if not args.json:
            print(f"candidate written to {candidate_dir} (gate skipped)")
        return 0
    return _gate_and_promote(cfg, settings, candidate_dir, base_dir, trainer.validation,
                             run_root.name, args, progress)


def cmd_gate(args: argparse.Namespace) -> int:
    from brain.train.settings import SettingsError

    cfg = args.config
    try:
        settings = _settings(args)
    except SettingsError as e:
        return _fail(str(e), 2)
    from brain.train.evaluate import EvalError, active_bundle_dir

    candidate_dir = cfg.layout.model / "adapters" / "candidate"
    if not (candidate_dir / "model" / "policy.json").is_file():
        return _fail(f"no candidate in {candidate_dir}; run `brain train` first", 2)
    try:
        base_dir = active_bundle_dir(cfg)
    except EvalError as e:
        return _fail(str(e), 2)
    metrics = json.loads((candidate_dir / "metrics.json").read_text())
    run_id = str(metrics.get("run_id", "manual"))
    val = _validation_of(cfg, run_id, settings)
    progress = Progress(args.json)
    return _gate_and_promote(cfg, settings, candidate_dir, base_dir, val, run_id, args,
                             progress)


def _validation_of(cfg: Config, run_id: str, settings: Any) -> Any:
    """The validation frames of a run (its held-out episodes), for the gate's loss check."""
    from brain.control.model import load_spec
    from brain.train.data import load_dataset

    run_file = cfg.layout.train / "runs" / run_id / "run.json"
    try:
        record = json.loads(run_file.read_text())
    except (OSError, ValueError):
        return None
    if not record.get("val_ids"):
        return None
    spec = load_spec(record["base"]) if Path(record["base"]).is_dir() else None
    if spec is None:
        return None
    data = load_dataset(cfg.layout.episodes, spec.input_width, spec.input_height,
                        episode_ids=record["val_ids"], val_fraction=0.0)
    return data.train  # every listed episode: they are the validation set


def _gate_and_promote(cfg: Config, settings: Any, candidate_dir: Path, base_dir: Path,
                      val: Any, run_id: str, args: argparse.Namespace,
                      progress: Progress) -> int:
    from brain.control.model import load_spec
    from brain.hardware.sim.tracks import SimParamError, load_track_file
    from brain.train import gate
    from brain.train.evaluate import EvalError

    training = load_spec(candidate_dir / "model").extra.get("training") or {}
    sources = training.get("place_sources") or {}
    places = {p: dict(sources[p]) for p in training.get("places") or [] if p in sources}
    for path in args.track_file:
        try:
            name = load_track_file(path).name
        except SimParamError as e:
            return _fail(e.message, 2)
        places[name] = {"track_file": str(Path(path).resolve())}
    try:
        report = gate.run_gate(settings, candidate_dir, base_dir, cfg=cfg, val=val,
                               places=places, cache_path=cfg.layout.train / "eval-cache.json",
                               on_progress=progress)
    except EvalError as e:
        return _fail(f"the gate could not run: {e}", 1)
    if report["passed"]:
        report["promotion"] = _promote(cfg, settings, candidate_dir, run_id, progress,
                                       args.no_promote)
        gate.write_report(candidate_dir, report)
    if args.json:
        progress({"event": "report", **report})
    else:
        print(gate.summary(report))
    if not report["passed"]:
        return 1
    return 0 if report["promotion"]["status"] in ("committed", "skipped", "disabled") else 1


def _promote(cfg: Config, settings: Any, candidate_dir: Path, run_id: str,
             progress: Progress, skip: bool) -> dict[str, Any]:
    """Sign the candidate as a bundle (always, once it passed), then install it through the
    daemon unless told not to or local promotion is off."""
    from brain.train import gate

    bundle, manifest = gate.build_local_bundle(cfg, settings, candidate_dir, run_id)
    if skip:
        return {"status": "skipped", "bundle": str(bundle), "bundle_id": manifest["bundle_id"],
                "detail": f"--no-promote; the signed bundle is {bundle}"}
    if not cfg.ota.allow_local_promotion:
        return {"status": "disabled", "bundle": str(bundle),
                "detail": f"ota.allow_local_promotion is off; the signed bundle is {bundle}"}
    result = gate.promote(cfg, bundle, manifest["bundle_id"], progress)
    return {**result, "bundle": str(bundle), "bundle_id": manifest["bundle_id"]}


# -- brain eval ------------------------------------------------------------------------------------

def cmd_eval(args: argparse.Namespace) -> int:
    from brain.train.evaluate import EvalError, drive, model_directory, summary_line

    cfg = args.config
    places = [{"track": t} for t in args.track or []] + \
        [{"track_file": str(Path(f).resolve())} for f in args.track_file or []]
    results = []
    try:
        with model_directory(args.model, adapter=args.adapter, cfg=cfg,
                             keys_dir=args.keys) as model_dir:
            for place in places:
                r = drive(model_dir, seconds=args.seconds, **place)
                results.append(r)
                print(json.dumps(r) if args.json else summary_line(r), flush=True)
    except EvalError as e:
        print(f"brain eval: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        print(f"brain eval: --adapter needs the `train` extra ({e.name} is missing)",
              file=sys.stderr)
        return 2
    return 0
