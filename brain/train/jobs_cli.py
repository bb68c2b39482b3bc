"""`brain train start|status|list|stop|resume|logs|metrics`: training jobs from the command line.

Reads the job store read-only and asks the worker for changes through the request spool
(brain.train.jobs), so these commands work whether or not a worker runs, and never import
torch.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from brain.train import jobs
from brain.train.jobs import (
    ACTIVE,
    PRIORITIES,
    STATUSES,
    JobError,
    JobStore,
    NoSuchJob,
    pending_requests,
)

FOLLOW_POLL_S = 0.5


def register(tsub: Any) -> None:
    p = tsub.add_parser("start", help="queue a training job; prints its id at once")
    p.add_argument("--config", dest="train_config", type=Path, metavar="FILE",
                   help="training configuration (default: built-in, the field plan's)")
    p.add_argument("--priority", choices=tuple(PRIORITIES), default="normal")
    p.add_argument("--episodes", nargs="+", metavar="ID", help="these episodes only")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_start)
    p = tsub.add_parser("status", help="one job: status, progress, loss, checkpoints, gate")
    p.add_argument("job")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
    p = tsub.add_parser("list", help="the jobs, newest first")
    p.add_argument("--status", choices=STATUSES)
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)
    for name, help_ in (("stop", "stop a job (a running one checkpoints first)"),
                        ("resume", "queue a cancelled, failed or waiting job again; it "
                                   "continues from its last checkpoint")):
        p = tsub.add_parser(name, help=help_)
        p.add_argument("job")
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=lambda a, n=name: cmd_request(a, n))
    p = tsub.add_parser("logs", help="a job's log")
    p.add_argument("job")
    p.add_argument("--follow", "-f", action="store_true", help="until the job ends")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_logs)
    p = tsub.add_parser("metrics", help="a job's loss, validation loss, learning rate, steps/s")
    p.add_argument("job")
    p.add_argument("--every", type=int, default=1, metavar="N", help="every N-th step")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_metrics)


def _fail(msg: str, code: int = 1) -> int:
    print(f"brain train: {msg}", file=sys.stderr)
    return code


def _out(args: argparse.Namespace, obj: Any, text: str) -> None:
    print(json.dumps(obj, indent=2, default=str) if args.json else text)


def _reader(args: argparse.Namespace) -> JobStore | None:
    return JobStore.reader(args.config.layout.train)


def cmd_start(args: argparse.Namespace) -> int:
    from brain.train.settings import SettingsError, load_settings

    try:
        settings = load_settings(args.train_config)
    except SettingsError as e:
        return _fail(str(e), 2)
    out = jobs.start(args.config.layout.train, settings.model_dump(mode="json"), args.priority,
                     args.episodes or [], "cli")
    _out(args, out, out["job"])
    if out["note"] and not args.json:
        print(f"note: {out['note']}", file=sys.stderr)
    return 0


def _describe(job: dict[str, Any], checkpoints: list[dict[str, Any]],
              last: dict[str, Any] | None) -> str:
    lines = [f"{job['id']}  {job['status']}" + (f": {job['reason']}" if job["reason"] else ""),
             f"  priority {job['priority']}, from {job['origin']}, "
             f"{len(job['episodes']) or 'all'} episodes",
             f"  step {job['step']}/{job['max_steps']} ({job['progress'] * 100:.0f} %)"]
    if last is not None:
        val = f", val {last['val_loss']:.4f}" if last.get("val_loss") is not None else ""
        lines.append(f"  loss {last['loss']:.4f}{val}, {last['steps_per_s'] or 0:.1f} steps/s")
    if checkpoints:
        lines.append(f"  checkpoints: {len(checkpoints)}, last at step {checkpoints[-1]['step']}")
    gate = job.get("gate")
    if gate:
        lines.append(f"  gate: {'passed' if gate['passed'] else 'refused'}"
                     + "".join(f"\n    {r}" for r in gate["reasons"]))
        for kind in ("target", "kept"):
            for place, r in (gate.get(kind) or {}).items():
                lines.append(f"    {kind:<6} {place:<16} {r['active']:.4f} -> "
                             f"{r['candidate']:.4f} m {'ok' if r['ok'] else 'FAIL'}")
    if job.get("bundle"):
        lines.append(f"  bundle: {job['bundle']}")
    if job.get("export_path"):
        lines.append(f"  exported for the cloud: {job['export_path']}")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    try:
        job = jobs.describe(args.config.layout.train, args.job)
    except JobError as e:
        return _fail(str(e))
    if job["status"] == "submitted":
        note = job.get("note")
        _out(args, job, f"{args.job}  submitted: the worker has not taken it yet"
             + (f"\n  note: {note}" if note else ""))
        return 0
    _out(args, job, _describe(job, job["checkpoints"], job["last_metric"]))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= 10000:
        return _fail("--limit must be 1..10000", 2)
    # The spool before the store: a request applied in between shows once, from the store.
    pending = [r for _, r in pending_requests(args.config.layout.train, claimed=True)
               if r.get("op") == "start" and args.status in (None, "queued")]
    store = _reader(args)
    jobs = store.jobs(args.status, args.limit) if store is not None else []
    if store is not None:
        store.close()
    pending = [r for r in pending if r.get("job") not in {j["id"] for j in jobs}]
    rows = [{"id": r["job"], "status": "submitted", "priority": r.get("priority", "normal"),
             "step": 0, "max_steps": r.get("config", {}).get("max_steps", 0), "reason": ""}
            for r in pending] + jobs
    text = "\n".join(f"{j['id']:<22} {j['status']:<18} {j['priority']:<8} "
                     f"{j['step']:>6}/{j['max_steps']:<6} {j.get('reason') or ''}"
                     for j in rows) or "no training jobs"
    _out(args, rows, text)
    return 0


def cmd_request(args: argparse.Namespace, op: str) -> int:
    try:
        out = jobs.request(args.config.layout.train, op, args.job)
    except JobError as e:
        return _fail(str(e))
    _out(args, out, f"{args.job}: {op} requested")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    after = 0
    while True:
        store = _reader(args)
        if store is None:
            return _fail(f"no job {args.job}")
        try:
            job = store.job(args.job)
            rows = store.logs(args.job, after)
        except NoSuchJob as e:
            store.close()
            return _fail(str(e))
        store.close()
        for row in rows:
            after = row["seq"]
            stamp = time.strftime("%H:%M:%S", time.localtime(row["t"]))
            print(json.dumps(row) if args.json else f"{stamp} {row['level']:<7} "
                                                     f"{row['message']}", flush=True)
        if not args.follow or (job["status"] not in ACTIVE and not rows):
            return 0
        time.sleep(FOLLOW_POLL_S)


def cmd_metrics(args: argparse.Namespace) -> int:
    if args.every < 1:
        return _fail("--every must be at least 1", 2)
    store = _reader(args)
    if store is None:
        return _fail(f"no job {args.job}")
    try:
        store.job(args.job)
        rows = store.metrics(args.job, args.every)
    except NoSuchJob as e:
        return _fail(str(e))
    finally:
        store.close()

    def fmt(v: float | None, spec: str) -> str:
        return format(v, spec) if v is not None else "-"

    text = "\n".join(f"{m['step']:>6}  loss {fmt(m['loss'], '.5f')}  val "
                     f"{fmt(m['val_loss'], '.5f')}  lr {fmt(m['lr'], '.2e')}  "
                     f"{fmt(m['steps_per_s'], '.1f')} steps/s" for m in rows) or "no metrics yet"
    _out(args, rows, text)
    return 0
