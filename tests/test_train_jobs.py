"""Training jobs with real processes and a real SQLite store: `brain trainer serve` workers,
`brain train start|status|list|stop|resume|logs|metrics`, a worker SIGKILLed mid-job, two
workers racing for one slot, and the continuous-learning trigger.

The episodes are recorded once by `brain collect --lockstep` (the real loop and recorder).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from brain.train.jobs import SCHEMA_VERSION, JobError, JobStore
from tests import train_support
from tests.episode_factory import noisy_jpeg, write_episode
from tests.poll import wait_until

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
TINY = {"max_steps": 200, "checkpoint_every": 50, "keep_checkpoints": 5, "log_every": 10,
        "val_fraction": 0.25, "gate": {"enabled": False}}


def env_for(state: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "BRAIN_STATE_DIR": str(state), "BRAIN_LOG_LEVEL": "warning",
            "PYTHONPATH": str(ROOT), "BRAIN_TRAIN_LEASE_TTL_S": "3", **extra}


def brain(state: Path, *args: str, timeout: float = 300, **extra: str
          ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "brain", *args], env=env_for(state, **extra),
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


class Worker:
    def __init__(self, state: Path, **extra: str) -> None:
        self.log = open(state.parent / f"worker-{time.monotonic_ns()}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-m", "brain", "trainer", "serve"],
                                     env=env_for(state, BRAIN_LOG_LEVEL="info", **extra),
                                     stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(timeout=90)
        self.log.close()
        return rc


def store_of(state: Path) -> JobStore:
    store = wait_until(lambda: JobStore.reader(state / "train"), lambda s: s is not None,
                       timeout=30, what="the job store")
    assert store is not None
    return store


def job_of(state: Path, job_id: str) -> dict[str, Any]:
    r = brain(state, "train", "status", job_id, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def wait_status(state: Path, job_id: str, statuses: tuple[str, ...], timeout: float = 180
                ) -> dict[str, Any]:
    return wait_until(lambda: job_of(state, job_id), lambda j: j["status"] in statuses,
                      timeout=timeout, interval=0.5, what=f"job {job_id} to be {statuses}")


def start_job(state: Path, config: Path, *args: str) -> str:
    r = brain(state, "train", "start", "--config", str(config), *args)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    state = tmp_path_factory.mktemp("jobs-recorded") / "state"
    r = brain(state, *train_support.RECORD)
    assert r.returncode == 0, r.stderr
    return state


def copy_state(recorded: Path, tmp_path: Path, settings: dict[str, Any] | None = None
               ) -> tuple[Path, Path]:
    return train_support.copy_state(recorded, tmp_path, TINY, settings)


# -- the store ---------------------------------------------------------------------------------

def test_the_store_is_versioned_and_readers_cannot_write(tmp_path: Path) -> None:
    assert JobStore.reader(tmp_path) is None  # no worker ever ran: nothing to read
    w = JobStore.writer(tmp_path)
    assert w.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert w.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    w.insert_job("j1", config={"max_steps": 10}, episodes=[], priority=2, origin="test")
    r = JobStore.reader(tmp_path)
    assert r is not None and r.job("j1")["status"] == "queued"
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        r.conn.execute("UPDATE jobs SET status = 'failed'")
    r.close()
    w.conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    w.close()
    with pytest.raises(JobError, match="newer"):
        JobStore.reader(tmp_path)
    with pytest.raises(JobError, match="newer"):
        JobStore.writer(tmp_path)


def test_cli_without_a_worker_queues_and_says_so(tmp_path: Path) -> None:
    state = tmp_path / "state"
    config = tmp_path / "job.json"
    config.write_text(json.dumps(TINY))
    r = brain(state, "train", "start", "--config", str(config), "--priority", "high")
    assert r.returncode == 0 and "no trainer worker is running" in r.stderr
    job_id = r.stdout.strip()
    assert job_of(state, job_id)["status"] == "submitted"
    listed = json.loads(brain(state, "train", "list", "--json").stdout)
    assert [j["id"] for j in listed] == [job_id]
    for args, message in ((["status", "nope"], "no job nope"),
                          (["stop", "nope"], "no job nope"),
                          (["metrics", job_id, "--every", "0"], "at least 1"),
                          (["list", "--limit", "0"], "1..10000")):
        r = brain(state, "train", *args)
        assert r.returncode != 0 and message in r.stderr, (args, r.stderr)
    (tmp_path / "bad.json").write_text('{"lr": "fast"}')
    r = brain(state, "train", "start", "--config", str(tmp_path / "bad.json"))
    assert r.returncode == 2 and "lr" in r.stderr


def test_episode_ids_cannot_become_trainer_options(recorded, tmp_path: Path) -> None:
    """An id such as `--no-gate` once turned the gate off: the worker put a job's ids on the
    trainer's command line. Ids now match the store's format wherever a job is made, and the
    worker hands them over in a file; a job that still holds one (a request written by an
    older version) fails naming it instead of training without its gate."""
    from pydantic import ValidationError

    from brain.service import TrainingStartArgs
    from brain.train import jobs

    state, config = copy_state(recorded, tmp_path, {"gate": {"enabled": True}})
    good = list_ids(state)[0]
    hostile = [good, "--no-gate", "--resume"]
    with pytest.raises(JobError, match="not an episode id: '--no-gate'"):
        jobs.start(state / "train", {}, "normal", hostile, "api")
    with pytest.raises(ValidationError):
        TrainingStartArgs(episodes=hostile)  # the API's and the socket's argument model
    r = brain(state, "train", "--config", str(config), "--no-gate", "--episodes", good, "-x")
    assert r.returncode == 2  # argparse: an unknown option, not an id
    req = jobs.submit(state / "train", "start", config=json.loads(config.read_text()),
                      priority="normal", episodes=hostile, origin="api")
    w = Worker(state)
    try:
        job = wait_status(state, req["job"], ("failed", "completed"))
    finally:
        w.stop()
    assert job["status"] == "failed", job
    assert "not an episode id: '--no-gate'" in json.dumps(job), job


def list_ids(state: Path) -> list[str]:
    from brain.rlds.store import list_episodes

    return [e["id"] for e in list_episodes(state / "rlds" / "episodes")]


# -- a worker ----------------------------------------------------------------------------------

def test_a_job_runs_reports_and_stops_and_resumes(recorded, tmp_path: Path) -> None:
    state, config = copy_state(recorded, tmp_path, {"max_steps": 100000,
                                                    "checkpoint_every": 100})
    w = Worker(state)
    try:
        job_id = start_job(state, config, "--priority", "critical")
        wait_status(state, job_id, ("running",))
        wait_until(lambda: job_of(state, job_id), lambda j: j["step"] >= 120, timeout=120,
                   interval=0.3, what="training progress")
        r = brain(state, "train", "stop", job_id)
        assert r.returncode == 0 and "stop requested" in r.stdout
        job = wait_status(state, job_id, ("cancelled",))
        assert job["reason"] == "stopped by request"
        steps = {c["step"] for c in job["checkpoints"]}
        assert 100 in steps and any(s > 100 for s in steps), "the stop checkpointed"
        metrics = json.loads(brain(state, "train", "metrics", job_id, "--json").stdout)
        assert metrics[0]["step"] == 10 and all(m["loss"] > 0 for m in metrics)
        every = json.loads(brain(state, "train", "metrics", job_id, "--every", "50",
                                 "--json").stdout)
        assert {m["step"] for m in every[:-1]} <= set(range(0, 100000, 50))
        log = brain(state, "train", "logs", job_id).stdout
        for line in ("queued (critical, from cli)", "training (pid", "data: ",
                     "stop requested: checkpointing", "cancelled: stopped by request"):
            assert line in log, log
        stopped_at = job["step"]
        assert brain(state, "train", "resume", job_id).returncode == 0
        wait_until(lambda: job_of(state, job_id),
                   lambda j: j["status"] == "running" and j["step"] > stopped_at, timeout=120,
                   interval=0.3, what="the resumed job to train on")
        assert "resumed from emergency_step_" in brain(state, "train", "logs", job_id).stdout
        r = brain(state, "train", "resume", job_id)
        assert r.returncode == 1 and "is running" in r.stderr
    finally:
        rc = w.stop()
    assert rc == 0
    # The worker's SIGTERM gave the job back to the queue, checkpointed.
    job = job_of(state, job_id)
    assert job["status"] == "queued" and job["resume"] is True
    store = store_of(state)
    assert not store.live_workers() and store.lease("training") is None


def test_sigkill_of_the_worker_resumes_bit_for_bit(recorded, tmp_path: Path) -> None:
    """The lease expires, the next worker resumes from the last checkpoint, and the job ends
    with the same adapter as a run never interrupted (`brain train` in a copy)."""
    reference, config = copy_state(recorded, tmp_path / "ref", {"max_steps": 400})
    r = brain(reference, "train", "--config", str(config), "--no-gate")
    assert r.returncode == 0, r.stderr
    state, config = copy_state(recorded, tmp_path / "run", {"max_steps": 400})
    w = Worker(state)
    job_id = start_job(state, config)
    wait_until(lambda: job_of(state, job_id), lambda j: any(c["step"] == 100 for c in
                                                           j.get("checkpoints") or []),
               timeout=120, interval=0.3, what="the checkpoint at step 100")
    child = int(brain(state, "train", "logs", job_id).stdout.split("training (pid ")[1]
                .split(")")[0])
    w.stop(signal.SIGKILL)
    wait_until(lambda: _alive(child), lambda alive: not alive, timeout=10, interval=0.1,
               what="the trainer to die with its worker")
    assert job_of(state, job_id)["status"] == "running"  # as the dead worker left it
    w = Worker(state)
    try:
        job = wait_status(state, job_id, ("completed",), timeout=240)
        store = store_of(state)
        for running in store.jobs("running"):  # recovery left no orphan
            lease = store.lease("training")
            assert lease is not None and lease.alive() and lease.job == running["id"]
        store.close()
    finally:
        rc = w.stop()
    assert rc == 0
    log = brain(state, "train", "logs", job_id).stdout
    assert "worker lost: requeued" in log, log
    resumed_at = int(log.split("resumed from step_")[1].split(".pt")[0])
    assert 100 <= resumed_at < 400, log
    assert job["step"] == 400
    from safetensors.numpy import load_file

    ours = load_file(str(state / "model/adapters/candidate/adapter_model.safetensors"))
    ref = load_file(str(reference / "model/adapters/candidate/adapter_model.safetensors"))
    assert ours.keys() == ref.keys()
    for key in ours:
        assert np.array_equal(ours[key], ref[key]), key


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text().split()
    return stat[2] != "Z"


def test_two_workers_run_one_job_at_a_time_in_priority_order(recorded, tmp_path: Path) -> None:
    state, config = copy_state(recorded, tmp_path, {"max_steps": 60})
    ids = {p: start_job(state, config, "--priority", p) for p in ("low", "critical", "normal")}
    workers = [Worker(state), Worker(state)]
    try:
        most_running = 0
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            store = JobStore.reader(state / "train")
            if store is not None:
                jobs = store.jobs()
                most_running = max(most_running, sum(j["status"] == "running" for j in jobs))
                store.close()
                if len(jobs) == 3 and all(j["status"] == "completed" for j in jobs):
                    break
            time.sleep(0.2)
        else:
            raise AssertionError("the three jobs did not complete")
        assert most_running == 1
        order = sorted(ids, key=lambda p: job_of(state, ids[p])["started"])
        assert order == ["critical", "normal", "low"]
        # Both still serve. A lease lapses for a moment when a heartbeat is late on a loaded
        # machine (TTL 3 s here), so wait for both to be seen alive rather than sample once.
        wait_until(lambda: _live_workers(state), lambda n: n == 2, timeout=30, interval=0.5,
                   what="both workers' leases to be alive")
    finally:
        codes = [w.stop() for w in workers]
    assert codes == [0, 0]


def _live_workers(state: Path) -> int:
    store = store_of(state)
    try:
        return len(store.live_workers())
    finally:
        store.close()


# -- continuous learning -------------------------------------------------------------------------

def collect(state: Path, n: int) -> None:
    r = brain(state, "collect", "--teacher", "--episodes", str(n), "--seconds", "4",
              "--lockstep", "--track", "oval")
    assert r.returncode == 0, r.stderr


def triggered(state: Path) -> list[dict[str, Any]]:
    store = JobStore.reader(state / "train")
    if store is None:
        return []
    try:
        return [j for j in store.jobs() if j["origin"] == "trigger"]
    finally:
        store.close()


def test_the_trigger_queues_exactly_one_job_after_16_valid_episodes(tmp_path: Path) -> None:
    state = tmp_path / "state"
    job_config = tmp_path / "job.json"
    job_config.write_text(json.dumps({**TINY, "max_steps": 20}))
    trigger = {"BRAIN_TRAIN_ENABLE_BACKGROUND": "1", "BRAIN_TRAIN_TRIGGER_POLL_S": "0.5",
               "BRAIN_TRAIN_TRIGGER_MIN_INTERVAL_S": "0",
               "BRAIN_TRAIN_JOB_CONFIG": str(job_config)}
    collect(state, 15)
    episodes = state / "rlds" / "episodes"
    write_episode(episodes, "20260101T000000Z-1d1e00", steps=400, jpeg=noisy_jpeg(),
                  throttle=0.0)  # idle: not valid for training
    w = Worker(state, **trigger)
    try:
        store = store_of(state)
        wait_until(lambda: store.conn.execute("SELECT COUNT(*) FROM episodes_seen")
                   .fetchone()[0], lambda n: n == 16, timeout=30, interval=0.2,
                   what="the episodes judged")
        time.sleep(2.0)
        assert triggered(state) == [], "15 valid episodes (and an idle one) are not enough"
        collect(state, 1)
        job = wait_until(lambda: triggered(state), lambda js: len(js) == 1, timeout=30,
                         interval=0.2, what="the triggered job")[0]
        assert len(job["episodes"]) == 16 and "20260101T000000Z-1d1e00" not in job["episodes"]
        assert job["config"]["max_steps"] == 20
        wait_status(state, job["id"], ("completed",), timeout=120)
        time.sleep(2.0)
        assert len(triggered(state)) == 1, "the same episodes never trigger twice"
        store.close()
    finally:
        rc = w.stop()
    assert rc == 0


def test_a_job_too_big_for_the_robot_is_exported_for_the_cloud(tmp_path: Path) -> None:
    state = tmp_path / "state"
    collect(state, 3)
    w = Worker(state, BRAIN_TRAIN_ENABLE_BACKGROUND="1", BRAIN_TRAIN_TRIGGER_POLL_S="0.5",
               BRAIN_TRAIN_TRIGGER_MIN_INTERVAL_S="0", BRAIN_TRAIN_TRIGGER_EPISODES="3",
               BRAIN_TRAIN_LOCAL_MAX_MINUTES="0.1")  # 300 steps at ~25/s: 12 s > 6 s
    try:
        job = wait_until(lambda: triggered(state), lambda js: len(js) == 1, timeout=60,
                         interval=0.2, what="the triggered job")[0]
    finally:
        rc = w.stop()
    assert rc == 0
    assert job["status"] == "exported-for-cloud"
    assert "train.local_max_minutes" in job["reason"]
    export = Path(job["export_path"])
    manifest = json.loads((export / "export_manifest.json").read_text())
    assert len(manifest["episodes"]) == 3
    assert json.loads((export / "training_config.json").read_text())["max_steps"] == 300
    r = brain(state, "eval", "--model", "active", "--track", "oval", "--seconds", "2")
    assert r.returncode == 0  # nothing was trained or installed: the seed still drives


def test_a_job_waits_for_the_robot_and_for_memory_and_says_why(recorded, tmp_path: Path) -> None:
    """Resource negotiation before a job starts: the robot's mode over the real control socket,
    then the memory in a fake /proc/meminfo; each reason is the job's status until it clears."""
    from tests.daemon_support import DaemonProcess

    state, config = copy_state(recorded, tmp_path, {"max_steps": 30})
    procfs = tmp_path / "proc"
    procfs.mkdir()

    def memory(available_mb: int) -> None:
        (procfs / "meminfo").write_text(f"MemTotal: 8000000 kB\nMemAvailable: "
                                        f"{available_mb * 1024} kB\n")

    memory(300)
    d = DaemonProcess(state)
    try:
        d.wait_ready()
        d.cli("mode", "manual")
        w = Worker(state, BRAIN_TRAIN_PROCFS_ROOT=str(procfs))
        try:
            job_id = start_job(state, config)
            job = wait_status(state, job_id, ("waiting",), timeout=60)
            assert job["reason"] == "waiting: robot is DRIVING (manual)"
            d.cli("mode", "idle")
            job = wait_until(lambda: job_of(state, job_id),
                             lambda j: "MB free" in (j["reason"] or ""), timeout=30,
                             interval=0.3, what="the memory reason")
            assert job["status"] == "waiting"
            assert job["reason"].startswith("waiting: 300 MB free, needs 956 MB"), job["reason"]
            memory(4000)
            wait_status(state, job_id, ("completed",), timeout=120)
        finally:
            rc = w.stop()
        assert rc == 0
    finally:
        d.stop()
