"""The training job store: SQLite in WAL mode at `<state>/train/jobs.db`.

One writer kind: the trainer worker (`brain trainer serve`). Everyone else (the CLI, the
daemon's API) opens the database read-only and asks for changes through the request spool
(`<state>/train/requests/`, one JSON file per request, written atomically), which the worker
applies in order. So a request is never lost when no worker runs (it waits in the spool), and
SQLite never sees two writer processes except the workers themselves, which serialise on
`BEGIN IMMEDIATE`.

Tables (schema version in `PRAGMA user_version`, migrated forward by the worker):

- `jobs`: id (also the trainer's run id), status, reason, priority, config (JSON), episodes
  (JSON), origin, timestamps, step/max_steps/progress, resume flag, candidate, gate (JSON),
  bundle, export_path;
- `metrics`: per logged step: loss, validation loss, learning rate, steps/s;
- `checkpoints`: step, path, sha256; `logs`: time, level, message;
- `leases`: the one-job slot (`training`) and each worker's liveness (`worker:<owner>`):
  owner, job, heartbeat, ttl. A lease whose heartbeat is older than its ttl is dead;
- `episodes_seen`: what the continuous-learning trigger has judged (valid or not) and which job
  consumed it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brain.durable import atomic_write_json
from brain.rlds.store import is_episode_id

SCHEMA_VERSION = 1
STATUSES = ("queued", "waiting", "running", "paused", "completed", "failed", "cancelled",
            "exported-for-cloud")
ACTIVE = ("queued", "waiting", "running", "paused")  # not finished
PRIORITIES = {"critical": 0, "high": 1, "normal": 2, "low": 3}
PRIORITY_NAMES = {v: k for k, v in PRIORITIES.items()}
SLOT = "training"
REQUEST_OPS = ("start", "stop", "resume")

_MIGRATIONS: list[str] = [
    # 0 -> 1
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        priority INTEGER NOT NULL,
        config TEXT NOT NULL,
        episodes TEXT NOT NULL,
        origin TEXT NOT NULL,
        created REAL NOT NULL,
        started REAL,
        finished REAL,
        step INTEGER NOT NULL DEFAULT 0,
        max_steps INTEGER NOT NULL,
        progress REAL NOT NULL DEFAULT 0,
        resume INTEGER NOT NULL DEFAULT 0,
        candidate TEXT,
        gate TEXT,
        bundle TEXT,
        export_path TEXT
    );
    CREATE INDEX jobs_queue ON jobs (status, priority, created);
    CREATE TABLE metrics (
        job TEXT NOT NULL REFERENCES jobs(id),
        step INTEGER NOT NULL,
        t REAL NOT NULL,
        loss REAL,
        val_loss REAL,
        lr REAL,
        steps_per_s REAL,
        PRIMARY KEY (job, step)
    );
    CREATE TABLE checkpoints (
        job TEXT NOT NULL REFERENCES jobs(id),
        step INTEGER NOT NULL,
        path TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        t REAL NOT NULL,
        PRIMARY KEY (job, path)
    );
    CREATE TABLE logs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        job TEXT,
        t REAL NOT NULL,
        level TEXT NOT NULL,
        message TEXT NOT NULL
    );
    CREATE INDEX logs_job ON logs (job, seq);
    CREATE TABLE leases (
        name TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        job TEXT,
        heartbeat REAL NOT NULL,
        ttl REAL NOT NULL
    );
    CREATE TABLE episodes_seen (
        id TEXT PRIMARY KEY,
        valid INTEGER NOT NULL,
        why TEXT NOT NULL,
        t REAL NOT NULL,
        consumed_by TEXT
    );
    """,
]


class JobError(RuntimeError):
    """A request that cannot be honoured (unknown job, wrong state); the message says why."""


class NoSuchJob(JobError):
    pass


def db_path(train_dir: Path) -> Path:
    return train_dir / "jobs.db"


def spool_dir(train_dir: Path) -> Path:
    return train_dir / "requests"


def new_job_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{os.urandom(2).hex()}"


def submit(train_dir: Path, op: str, **fields: Any) -> dict[str, Any]:
    """Queue a request for the worker (start, stop, resume). Returns it. For `start`, the job id
    is chosen here, so the caller can print it at once."""
    if op not in REQUEST_OPS:
        raise JobError(f"unknown request {op!r}")
    request = {"op": op, "t": time.time(), **fields}
    if op == "start":
        request.setdefault("job", new_job_id())
    spool = spool_dir(train_dir)
    spool.mkdir(parents=True, exist_ok=True)
    name = f"{time.time_ns():020d}-{os.urandom(3).hex()}.json"
    atomic_write_json(spool / name, request, mode=0o640)
    return request


def pending_requests(train_dir: Path, *, claimed: bool = False
                     ) -> list[tuple[Path, dict[str, Any]]]:
    """Requests in the spool, oldest first; with `claimed`, also those a worker is applying
    right now (renamed `.claimed` until its store has the result)."""
    out = []
    spool = spool_dir(train_dir)
    names = ("*.json", "*.json.claimed") if claimed else ("*.json",)
    found = [p for n in names for p in spool.glob(n)] if spool.is_dir() else []
    for path in sorted(found, key=lambda p: p.name):
        try:
            out.append((path, json.loads(path.read_text())))
        except (OSError, ValueError):
            continue  # being written (atomic rename makes this rare) or junk: left for later
    return out


@dataclass
class Lease:
    name: str
    owner: str
    job: str | None
    heartbeat: float
    ttl: float

    def alive(self, now: float | None = None) -> bool:
        return (now if now is not None else time.time()) - self.heartbeat <= self.ttl


class JobStore:
    """The database. `JobStore.reader(dir)` for everyone, `JobStore.writer(dir)` for workers."""

    def __init__(self, conn: sqlite3.Connection, path: Path, writable: bool) -> None:
        self.conn = conn
        self.path = path
        self.writable = writable

    @classmethod
    def writer(cls, train_dir: Path) -> JobStore:
        train_dir.mkdir(parents=True, exist_ok=True)
        path = db_path(train_dir)
        conn = sqlite3.connect(path, timeout=30.0, isolation_level=None,
                               check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")  # a state change is acknowledged once durable
        conn.execute("PRAGMA foreign_keys=ON")
        store = cls(conn, path, True)
        store._migrate()
        os.chmod(path, 0o640)
        return store

    @classmethod
    def reader(cls, train_dir: Path) -> JobStore | None:
        """Read-only; None when no worker has ever created the database."""
        path = db_path(train_dir)
        if not path.is_file():
            return None
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10.0,
                               isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:  # a worker is creating it right now
            conn.close()
            return None
        if version > SCHEMA_VERSION:
            conn.close()
            raise JobError(f"{path}: schema {version} is newer than this brain's "
                           f"({SCHEMA_VERSION}); upgrade brain")
        return cls(conn, path, False)

    def close(self) -> None:
        self.conn.close()

    def _migrate(self) -> None:
        with self.transaction():
            version = self.conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise JobError(f"{self.path}: schema {version} is newer than this brain's "
                               f"({SCHEMA_VERSION}); upgrade brain")
            for target in range(version, SCHEMA_VERSION):
                for statement in _MIGRATIONS[target].split(";"):
                    if statement.strip():
                        self.conn.execute(statement)
                self.conn.execute(f"PRAGMA user_version = {target + 1}")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE: the write lock up front, so workers never deadlock upgrading."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # -- reading ---------------------------------------------------------------------------------
    def job(self, job_id: str) -> dict[str, Any]:
        row = self.conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NoSuchJob(f"no job {job_id}")
        return _job_dict(row)

    def jobs(self, status: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        if status is not None:
            rows = self.conn.execute("SELECT * FROM jobs WHERE status = ? ORDER BY created DESC "
                                     "LIMIT ?", (status, limit))
        else:
            rows = self.conn.execute("SELECT * FROM jobs ORDER BY created DESC LIMIT ?",
                                     (limit,))
        return [_job_dict(r) for r in rows]

    def next_job(self) -> dict[str, Any] | None:
        """The job to run next: the highest priority, then the oldest, of queued and waiting."""
        row = self.conn.execute(
            "SELECT * FROM jobs WHERE status IN ('queued', 'waiting') "
            "ORDER BY priority, created LIMIT 1").fetchone()
        return _job_dict(row) if row is not None else None

    def metrics(self, job_id: str, every: int = 1, after_step: int = -1) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT step, t, loss, val_loss, lr, steps_per_s FROM metrics WHERE job = ? AND "
            "step > ? ORDER BY step", (job_id, after_step))
        out = [dict(r) for r in rows]
        return [m for m in out if m["step"] % every == 0 or m is out[-1]] if every > 1 else out

    def checkpoints(self, job_id: str) -> list[dict[str, Any]]:
        rows = self.conn.execute("SELECT step, path, sha256, t FROM checkpoints WHERE job = ? "
                                 "ORDER BY step", (job_id,))
        return [dict(r) for r in rows]

    def logs(self, job_id: str | None, after: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        if job_id is None:
            rows = self.conn.execute("SELECT * FROM logs WHERE seq > ? ORDER BY seq LIMIT ?",
                                     (after, limit))
        else:
            rows = self.conn.execute("SELECT * FROM logs WHERE job = ? AND seq > ? ORDER BY seq "
                                     "LIMIT ?", (job_id, after, limit))
        return [dict(r) for r in rows]

    def lease(self, name: str) -> Lease | None:
        row = self.conn.execute("SELECT * FROM leases WHERE name = ?", (name,)).fetchone()
        return Lease(**dict(row)) if row is not None else None

    def live_workers(self, now: float | None = None) -> list[Lease]:
        rows = self.conn.execute("SELECT * FROM leases WHERE name LIKE 'worker:%'")
        return [lease for lease in (Lease(**dict(r)) for r in rows) if lease.alive(now)]

    # -- writing (workers only) --------------------------------------------------------------------
    def insert_job(self, job_id: str, *, config: dict[str, Any], episodes: list[str],
                   priority: int, origin: str, status: str = "queued", reason: str = "",
                   export_path: str | None = None) -> dict[str, Any]:
        with self.transaction() as c:
            c.execute("INSERT INTO jobs (id, status, reason, priority, config, episodes, origin, "
                      "created, max_steps, export_path) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      (job_id, status, reason, priority, json.dumps(config),
                       json.dumps(episodes), origin, time.time(),
                       int(config.get("max_steps", 300)), export_path))
        return self.job(job_id)

    def update_job(self, job_id: str, **fields: Any) -> None:
        if not fields:
            return
        for key in ("gate", "config", "episodes"):
            if key in fields and not isinstance(fields[key], str | None):
                fields[key] = json.dumps(fields[key])
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self.transaction() as c:
            c.execute(f"UPDATE jobs SET {cols} WHERE id = ?", (*fields.values(), job_id))

    def add_metric(self, job_id: str, event: dict[str, Any]) -> None:
        step = int(event["step"])
        progress = step / max(1, int(event.get("max_steps") or 1))
        with self.transaction() as c:
            c.execute("INSERT OR REPLACE INTO metrics VALUES (?, ?, ?, ?, ?, ?, ?)",
                      (job_id, step, event.get("t", time.time()), event.get("loss"),
                       event.get("val_loss"), event.get("lr"), event.get("steps_per_s")))
            c.execute("UPDATE jobs SET step = ?, progress = ? WHERE id = ?",
                      (step, round(progress, 4), job_id))

    def add_checkpoint(self, job_id: str, step: int, path: str, sha256: str) -> None:
        with self.transaction() as c:
            c.execute("INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?, ?, ?)",
                      (job_id, step, path, sha256, time.time()))

    def log(self, job_id: str | None, level: str, message: str) -> None:
        with self.transaction() as c:
            c.execute("INSERT INTO logs (job, t, level, message) VALUES (?, ?, ?, ?)",
                      (job_id, time.time(), level, message))

    def heartbeat(self, name: str, owner: str, ttl: float, job: str | None = None) -> None:
        with self.transaction() as c:
            c.execute("INSERT INTO leases VALUES (?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE "
                      "SET owner = excluded.owner, job = excluded.job, "
                      "heartbeat = excluded.heartbeat, ttl = excluded.ttl",
                      (name, owner, job, time.time(), ttl))

    def try_acquire(self, name: str, owner: str, ttl: float, job: str | None) -> bool:
        """Take the lease if it is free, dead or already ours (atomically)."""
        now = time.time()
        with self.transaction() as c:
            row = c.execute("SELECT * FROM leases WHERE name = ?", (name,)).fetchone()
            if row is not None and row["owner"] != owner and Lease(**dict(row)).alive(now):
                return False
            c.execute("INSERT OR REPLACE INTO leases VALUES (?, ?, ?, ?, ?)",
                      (name, owner, job, now, ttl))
        return True

    def release(self, name: str, owner: str) -> None:
        with self.transaction() as c:
            c.execute("DELETE FROM leases WHERE name = ? AND owner = ?", (name, owner))


# -- what the CLI and the API share ----------------------------------------------------------------

def describe(train_dir: Path, job_id: str) -> dict[str, Any]:
    """A job with its checkpoints and newest metric; a request the worker has not applied yet
    reads as `submitted`. NoSuchJob otherwise."""
    # The store, then the spool (claimed requests included), then the store again: a worker
    # writes the job before it deletes the claimed request, so one of the three sees it.
    for attempt in range(2):
        store = JobStore.reader(train_dir)
        try:
            if store is not None:
                try:
                    job = store.job(job_id)
                    metrics = store.metrics(job_id)
                    return {**job, "checkpoints": store.checkpoints(job_id),
                            "last_metric": metrics[-1] if metrics else None}
                except NoSuchJob:
                    pass
            if attempt == 0:
                for _, req in pending_requests(train_dir, claimed=True):
                    if req.get("op") == "start" and req.get("job") == job_id:
                        return {"id": job_id, "status": "submitted",
                                "priority": req.get("priority"), "note": worker_note(store)}
        finally:
            if store is not None:
                store.close()
    raise NoSuchJob(f"no job {job_id}")


def worker_note(store: JobStore | None) -> str | None:
    """Why a queued job will not start soon, when no worker is alive."""
    if store is None or not store.live_workers():
        return ("no trainer worker is running: the job waits until one does (`brain trainer "
                "serve`, or `systemctl start brain-trainer` on the robot)")
    return None


def request(train_dir: Path, op: str, job_id: str) -> dict[str, Any]:
    """Ask the worker to stop or resume a job, after checking that it makes sense now."""
    job = describe(train_dir, job_id)
    status = job["status"]
    if op == "stop" and status not in (*ACTIVE, "submitted"):
        raise JobError(f"job {job_id} is {status}; nothing to stop")
    if op == "resume" and status not in ("cancelled", "failed", "paused", "waiting"):
        raise JobError(f"job {job_id} is {status}; only a cancelled, failed, paused or "
                       "waiting job resumes")
    submit(train_dir, op, job=job_id)
    return {"job": job_id, "requested": op}


def start(train_dir: Path, config: dict[str, Any], priority: str, episodes: list[str],
          origin: str) -> dict[str, Any]:
    """Queue a job (the configuration already validated); its id at once."""
    if priority not in PRIORITIES:
        raise JobError(f"priority {priority!r}: one of {', '.join(PRIORITIES)}")
    bad = [e for e in episodes if not is_episode_id(e)]
    if bad:
        raise JobError(f"not an episode id: {bad[0]!r} (letters, digits, '_', '.', '-'; "
                       "never a leading '-' or '.')")
    req = submit(train_dir, "start", config=config, priority=priority, episodes=episodes,
                 origin=origin)
    store = JobStore.reader(train_dir)
    try:
        note = worker_note(store)
    finally:
        if store is not None:
            store.close()
    return {"job": req["job"], "status": "submitted", "note": note}


def _job_dict(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    d["config"] = json.loads(d["config"])
    d["episodes"] = json.loads(d["episodes"])
    d["gate"] = json.loads(d["gate"]) if d.get("gate") else None
    d["priority"] = PRIORITY_NAMES.get(d["priority"], str(d["priority"]))
    d["resume"] = bool(d["resume"])
    return d
