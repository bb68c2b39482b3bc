"""`brain trainer serve`: the background trainer (what brain-trainer.service runs).

A loop that, twice a second:

1. applies the requests in the spool (start, stop, resume) to the job store;
2. recovers: a job marked running whose worker's lease has expired (the worker was killed) goes
   back to the queue, to resume from its last checkpoint;
3. with continuous learning on (`train.enable_background`), queues a job once
   `train.trigger_episodes` new valid episodes have arrived, or hands them to the cloud when the
   job would be too big for the robot (`train.local_max_minutes`, `train.local_max_data_mb`);
4. takes the highest-priority queued job under the one-job lease (`leases.training`, renewed
   every second, dead after `train.lease_ttl_s`), once resources allow (the robot not driving,
   memory for the job plus headroom for the daemon, disk), and runs `brain train --json` on it in
   a child process that dies with the worker;
5. turns the child's JSON events into the store's metrics, checkpoints, logs and status.

Stop = SIGTERM to the child (it writes an emergency checkpoint), then `cancelled`; resume =
back to the queue, continuing from the newest checkpoint. Every state change is committed
(synchronous=FULL) before it is reported anywhere.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brain.durable import sha256_file
from brain.train.jobs import (
    PRIORITIES,
    SLOT,
    JobError,
    JobStore,
    pending_requests,
    spool_dir,
)

if TYPE_CHECKING:
    from brain.config import Config

log = logging.getLogger(__name__)

POLL_S = 0.5
HEARTBEAT_S = 1.0
WAIT_RECHECK_S = 5.0
DEFAULT_STEPS_PER_S = 25.0  # before any job has measured it here
PARENT_ENV = "BRAIN_TRAINER_PARENT"
BAD_REQUEST_S = 10.0  # a request file that does not read as JSON for this long is set aside


def job_config_dir(cfg: Config) -> Path:
    return cfg.layout.train / "jobs"


class Running:
    """The child `brain train` of the job being trained, and its events."""

    def __init__(self, job_id: str, proc: subprocess.Popen[str]) -> None:
        self.job_id = job_id
        self.proc = proc
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.stderr_tail: list[str] = []
        self.stop_reason: str | None = None  # "cancel" or "shutdown" once asked to stop
        self.report: dict[str, Any] | None = None
        self.done: dict[str, Any] | None = None
        self.last_emergency: list[str] = []
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.events.put(json.loads(line))
            except ValueError:
                self.stderr_tail = (self.stderr_tail + [line.rstrip()])[-20:]

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_tail = (self.stderr_tail + [line.rstrip()])[-20:]


class Worker:
    def __init__(self, cfg: Config, owner: str | None = None) -> None:
        self.cfg = cfg
        self.train_dir = cfg.layout.train
        self.store = JobStore.writer(self.train_dir)
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}"
        self.ttl = float(cfg.train.lease_ttl_s)
        self.running: Running | None = None
        self._stop = threading.Event()
        self._last_beat = 0.0
        self._last_trigger_check = 0.0
        self._waiting_since: dict[str, float] = {}

    # -- the loop ----------------------------------------------------------------------------------
    def serve(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._stop.set())
        self.store.log(None, "info", f"worker {self.owner} started")
        log.info("trainer worker %s serving %s", self.owner, self.store.path)
        try:
            while not self._stop.is_set():
                self.step()
                self._stop.wait(POLL_S)
        finally:
            self.shutdown()
        return 0

    def step(self) -> None:
        now = time.time()
        if now - self._last_beat >= HEARTBEAT_S:
            self._beat(now)
        self._apply_requests()
        self._recover()
        if self.running is not None:
            self._pump()
        if self.cfg.train.enable_background and \
                now - self._last_trigger_check >= self.cfg.train.trigger_poll_s:
            self._last_trigger_check = now
            self._check_trigger()
        if self.running is None:
            self._maybe_start()

    def _beat(self, now: float) -> None:
        self._last_beat = now
        self.store.heartbeat(f"worker:{self.owner}", self.owner, self.ttl,
                             self.running.job_id if self.running else None)
        if self.running is not None:
            self.store.heartbeat(SLOT, self.owner, self.ttl, self.running.job_id)

    def shutdown(self) -> None:
        """Stop the child (it checkpoints), give the job back to the queue, drop the leases."""
        r = self.running
        if r is not None:
            r.stop_reason = r.stop_reason or "shutdown"
            self._signal_child(r)
            try:
                r.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                r.proc.kill()
                r.proc.wait()
            self._pump()
        self.store.release(SLOT, self.owner)
        self.store.release(f"worker:{self.owner}", self.owner)
        self.store.log(None, "info", f"worker {self.owner} stopped")

    # -- requests ----------------------------------------------------------------------------------
    def _apply_requests(self) -> None:
        for path, req in pending_requests(self.train_dir):
            op, job_id = req.get("op"), str(req.get("job", ""))
            if op == "stop" and self._running_elsewhere(job_id):
                continue  # its worker applies it
            try:
                claimed = path.with_name(f"{path.name}.claimed")
                os.rename(path, claimed)
            except FileNotFoundError:
                continue  # another worker took it
            try:
                if op == "start":
                    self._start_request(req)
                elif op == "stop":
                    self._stop_request(job_id)
                elif op == "resume":
                    self._resume_request(job_id)
            except JobError as e:
                self.store.log(job_id or None, "error", f"{op} refused: {e}")
            finally:
                claimed.unlink(missing_ok=True)

    def _requests_in_flight(self) -> bool:
        """Whether requests wait in the spool or are being applied by a worker. A claim left by
        a worker that died holding it goes back to the spool after the lease time."""
        spool = spool_dir(self.train_dir)
        pending = False
        for path in spool.glob("*.json*") if spool.is_dir() else []:
            if path.name.endswith(".bad"):
                continue
            if path.name.endswith(".json") and _unreadable_for(path) > BAD_REQUEST_S:
                path.rename(path.with_name(path.name + ".bad"))  # kept for a person to read
                self.store.log(None, "error", f"ignored an unreadable request {path.name}")
                continue
            if path.name.endswith(".claimed"):
                try:
                    age = time.time() - path.stat().st_mtime
                except FileNotFoundError:
                    continue
                if age > self.ttl:
                    try:
                        os.rename(path, path.with_name(path.name.removesuffix(".claimed")))
                    except FileNotFoundError:
                        continue
            pending = True
        return pending

    def _running_elsewhere(self, job_id: str) -> bool:
        lease = self.store.lease(SLOT)
        return (lease is not None and lease.job == job_id and lease.owner != self.owner
                and lease.alive())

    def _start_request(self, req: dict[str, Any]) -> None:
        from brain.train.settings import TrainSettings

        job_id = str(req["job"])
        try:
            self.store.job(job_id)
            return  # applied already (a worker died after committing, before unlinking)
        except JobError:
            pass
        priority = PRIORITIES.get(str(req.get("priority", "normal")), PRIORITIES["normal"])
        episodes = [str(e) for e in req.get("episodes") or []]
        try:
            settings = TrainSettings.model_validate(req.get("config") or {})
        except ValueError as e:
            self.store.insert_job(job_id, config=req.get("config") or {}, episodes=episodes,
                                  priority=priority, origin=str(req.get("origin", "cli")),
                                  status="failed", reason=f"invalid configuration: {e}")
            return
        self.store.insert_job(job_id, config=settings.model_dump(mode="json"),
                              episodes=episodes, priority=priority,
                              origin=str(req.get("origin", "cli")))
        self.store.log(job_id, "info", f"queued ({req.get('priority', 'normal')}, from "
                                       f"{req.get('origin', 'cli')})")

    def _stop_request(self, job_id: str) -> None:
        job = self.store.job(job_id)
        if self.running is not None and self.running.job_id == job_id:
            self.running.stop_reason = "cancel"
            self._signal_child(self.running)
            self.store.log(job_id, "info", "stop requested: checkpointing")
        elif job["status"] in ("queued", "waiting", "paused", "running"):
            self.store.update_job(job_id, status="cancelled", reason="stopped by request",
                                  finished=time.time())
            self.store.log(job_id, "info", "cancelled")
        else:
            raise JobError(f"job {job_id} is {job['status']}; nothing to stop")

    def _resume_request(self, job_id: str) -> None:
        job = self.store.job(job_id)
        if job["status"] not in ("cancelled", "failed", "paused", "waiting"):
            raise JobError(f"job {job_id} is {job['status']}; only a cancelled, failed, "
                           "paused or waiting job resumes")
        resumable = bool(self._checkpoints_of(job_id))
        self.store.update_job(job_id, status="queued", resume=int(resumable),
                              reason="resume requested", finished=None)
        self.store.log(job_id, "info", "queued to resume" + ("" if resumable else
                                                             " (no checkpoint: from the start)"))

    def _checkpoints_of(self, job_id: str) -> list[Path]:
        return sorted((self.train_dir / "runs" / job_id / "checkpoints").glob("*.pt"))

    # -- recovery ----------------------------------------------------------------------------------
    def _recover(self) -> None:
        """Jobs marked running or paused whose worker is gone go back to the queue."""
        lease = self.store.lease(SLOT)
        mine = self.running.job_id if self.running else None
        for job in self.store.jobs(limit=1000):
            if job["status"] not in ("running", "paused") or job["id"] == mine:
                continue
            if lease is not None and lease.job == job["id"] and lease.alive():
                continue
            if lease is not None and lease.job == job["id"]:
                self.store.release(SLOT, lease.owner)
            resumable = bool(self._checkpoints_of(job["id"]))
            self.store.update_job(job["id"], status="queued", resume=int(resumable),
                                  reason=f"its worker was lost (lease expired); resuming from "
                                         f"{'its last checkpoint' if resumable else 'the start'}")
            self.store.log(job["id"], "warning", "worker lost: requeued")

    # -- starting ----------------------------------------------------------------------------------
    def _maybe_start(self) -> None:
        if self._requests_in_flight():
            return  # a request not yet applied may be a job of higher priority
        job = self.store.next_job()
        if job is None:
            return
        if job["status"] == "waiting" and \
                time.time() - self._waiting_since.get(job["id"], 0.0) < WAIT_RECHECK_S:
            return
        why = self.negotiate(job)
        if why is not None:
            self._waiting_since[job["id"]] = time.time()
            if job["status"] != "waiting" or job["reason"] != why:
                self.store.update_job(job["id"], status="waiting", reason=why)
                self.store.log(job["id"], "info", why)
            return
        if not self.store.try_acquire(SLOT, self.owner, self.ttl, job["id"]):
            return  # another worker is training
        self._launch(job)

    def negotiate(self, job: dict[str, Any]) -> str | None:
        """None when the job may start now, else why it waits."""
        from brain.train.cli import make_monitor
        from brain.train.settings import TrainSettings

        t = self.cfg.train
        settings = TrainSettings.model_validate(job["config"])
        monitor = make_monitor(self.cfg, settings)
        reading = monitor.sample()
        mode = reading.values.get("robot_mode")
        if mode in ("manual", "autonomous_driving") and not settings.train_while_driving:
            return f"waiting: robot is DRIVING ({mode})"
        available = _available_mb(Path(t.procfs_root))
        need = t.job_memory_mb + t.memory_headroom_mb
        if available is not None and available < need:
            return (f"waiting: {available:.0f} MB free, needs {need} MB ({t.job_memory_mb} for "
                    f"the job + {t.memory_headroom_mb} kept for the daemon)")
        from brain.train.resources import Level

        if reading.level >= Level.CRITICAL:
            return "waiting: " + "; ".join(r for r in reading.reasons
                                           if not r.startswith("WARNING"))
        return None

    def _launch(self, job: dict[str, Any]) -> None:
        job_id = job["id"]
        config = job_config_dir(self.cfg) / f"{job_id}.json"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(json.dumps(job["config"], indent=2))
        cmd = [sys.executable, "-m", "brain"]
        if self.cfg.source not in ("built-in defaults", ""):
            cmd += ["--config", self.cfg.source]
        cmd += ["train", "--json", "--no-promote", "--config", str(config)]
        if job["resume"] and self._checkpoints_of(job_id):
            cmd += ["--resume", job_id]
        else:
            shutil.rmtree(self.train_dir / "runs" / job_id, ignore_errors=True)
            cmd += ["--run-id", job_id]
            if job["episodes"]:  # in a file: data never becomes a command-line option
                listed = config.with_suffix(".episodes")
                listed.write_text("".join(f"{e}\n" for e in job["episodes"]))
                cmd += ["--episodes-from", str(listed)]
        # The child asks the kernel to kill it when this worker dies (PR_SET_PDEATHSIG, first
        # thing in `brain train`): a SIGKILLed worker must not leave a trainer running beside
        # the one its successor resumes.
        env = {**os.environ, PARENT_ENV: str(os.getpid())}
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env, close_fds=True)
        self.running = Running(job_id, proc)
        self.store.update_job(job_id, status="running", started=time.time(), reason="",
                              resume=0)
        self.store.heartbeat(SLOT, self.owner, self.ttl, job_id)
        self.store.log(job_id, "info", f"training (pid {proc.pid}"
                                       f"{', resuming' if '--resume' in cmd else ''})")

    @staticmethod
    def _signal_child(r: Running) -> None:
        if r.proc.poll() is None:
            try:
                r.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass

    # -- the child's events ------------------------------------------------------------------------
    def _pump(self) -> None:
        r = self.running
        assert r is not None
        while True:
            try:
                event = r.events.get_nowait()
            except queue.Empty:
                break
            self._on_event(r, event)
        if r.proc.poll() is not None and r.events.empty():
            time.sleep(0.05)  # the readers finish the pipes
            while not r.events.empty():
                self._on_event(r, r.events.get_nowait())
            self._finish(r)

    def _on_event(self, r: Running, e: dict[str, Any]) -> None:
        job_id, kind = r.job_id, e.get("event")
        if kind is None and "loss" in e:
            self.store.add_metric(job_id, e)
        elif kind == "checkpoint":
            path = Path(e["path"])
            if path.is_file():
                self.store.add_checkpoint(job_id, int(e["step"]), str(path), sha256_file(path))
        elif kind == "paused":
            self.store.update_job(job_id, status="paused", reason="; ".join(e["reasons"]))
            self.store.log(job_id, "warning", f"paused at step {e['step']}: "
                                              f"{'; '.join(e['reasons'])}")
        elif kind == "resumed":
            self.store.update_job(job_id, status="running", reason="")
            self.store.log(job_id, "info", f"resumed at step {e['step']}")
        elif kind == "emergency":
            r.last_emergency = list(e["reasons"])
            self.store.log(job_id, "error", f"stopping: {'; '.join(e['reasons'])}")
        elif kind == "data":
            left = "".join(f"; left out {x['id']}: {x['why']}" for x in e.get("left_out", []))
            self.store.log(job_id, "info", f"data: {e['train_frames']} training + "
                                           f"{e['val_frames']} validation frames from "
                                           f"{e['used']} of {e['episodes']} episodes{left}")
        elif kind == "resumed_from":
            self.store.log(job_id, "info", f"resumed from {e['checkpoint']}")
        elif kind == "candidate":
            self.store.update_job(job_id, candidate=e["path"])
            self.store.log(job_id, "info", f"candidate written at step {e['step']}")
        elif kind == "gate":
            self.store.log(job_id, "info", f"gate: {e['check']}")
        elif kind == "report":
            r.report = e
        elif kind == "done":
            r.done = e

    def _finish(self, r: Running) -> None:
        rc = r.proc.returncode
        job_id = r.job_id
        now = time.time()
        fields: dict[str, Any]
        if r.stop_reason == "shutdown" and rc in (0, 3):
            fields = {"status": "queued", "resume": 1,
                      "reason": "the worker stopped; resumes from its checkpoint"}
        elif r.stop_reason == "cancel" and rc == 0 and r.report is None:
            fields = {"status": "cancelled", "reason": "stopped by request", "finished": now}
        elif rc in (0, 1) and r.report is not None:
            fields = {"status": "completed", "finished": now, "progress": 1.0,
                      "gate": _gate_summary(r.report),
                      "reason": "gate passed" if r.report["passed"] else
                      "gate refused: " + "; ".join(r.report["reasons"])}
            bundle = self._keep_bundle(job_id, r.report)
            if bundle:
                fields["bundle"] = bundle
        elif rc == 0:
            fields = {"status": "completed", "finished": now, "progress": 1.0,
                      "reason": "candidate written (no gate)"}
        elif rc == 3:
            fields = {"status": "waiting", "resume": 1,
                      "reason": "stopped by the resource monitor: "
                                + "; ".join(r.last_emergency or ["EMERGENCY"])}
        else:
            tail = " | ".join(line for line in r.stderr_tail[-3:] if line.strip())
            what = f"signal {-rc}" if rc < 0 else f"exit {rc}"
            fields = {"status": "failed", "finished": now,
                      "reason": f"the trainer failed ({what}): {tail or 'no message'}"}
        self.store.update_job(job_id, **fields)
        self.store.log(job_id, "info" if fields["status"] != "failed" else "error",
                       f"{fields['status']}: {fields['reason']}")
        self.store.release(SLOT, self.owner)
        self.running = None

    def _keep_bundle(self, job_id: str, report: dict[str, Any]) -> str | None:
        """The gate's signed bundle, copied beside the job's run (the candidate directory is
        shared by every job: the next one replaces it)."""
        bundle = (report.get("promotion") or {}).get("bundle")
        if not bundle or not Path(bundle).is_file():
            return None
        dest = self.train_dir / "runs" / job_id / "candidate.bundle"
        shutil.copyfile(bundle, dest)
        return str(dest)

    # -- continuous learning -----------------------------------------------------------------------
    def _check_trigger(self) -> None:
        from brain.train.trigger import Trigger

        Trigger(self.cfg, self.store).check()


def _gate_summary(report: dict[str, Any]) -> dict[str, Any]:
    """What the store keeps of a gate report (the full one stays beside the candidate)."""
    checks = report.get("checks", {})
    places = {kind: {p: {"candidate": r["candidate"]["mean_abs_cte"],
                         "active": r["active"]["mean_abs_cte"],
                         "off_track": r["candidate"]["off_track_events"], "ok": r["ok"]}
                     for p, r in checks.get(kind, {}).items()}
              for kind in ("target", "kept")}
    return {"passed": report["passed"], "reasons": report["reasons"],
            "candidate": report["candidate"], "active": report["active"], **places,
            "val_loss": checks.get("val_loss"), "latency": checks.get("latency"),
            "promotion": report.get("promotion")}


def _unreadable_for(path: Path) -> float:
    """How long a request file has been there unreadable (0 when it reads as JSON)."""
    try:
        json.loads(path.read_text())
        return 0.0
    except FileNotFoundError:
        return 0.0
    except (OSError, ValueError):
        try:
            return time.time() - path.stat().st_mtime
        except OSError:
            return 0.0


def _available_mb(procfs: Path) -> float | None:
    try:
        for line in (procfs / "meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def serve(cfg: Config) -> int:
    return Worker(cfg).serve()
