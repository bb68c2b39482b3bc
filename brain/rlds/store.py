"""Episode directories on disk: naming, locking, listing, loading, deleting, crash recovery.

Layout: `<episodes_dir>/<episode_id>/` holding `episode.json` (metadata, replaced atomically),
`steps.tfrecord` (the append-only log) and, while a recorder holds it, `recording.lock` (flock).
An episode is created under a dot-name and renamed into place, so a half-created one is never
listed; recovery removes those leftovers.
"""

from __future__ import annotations

import fcntl
import functools
import mmap
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from brain.durable import atomic_write_json, fsync_dir, read_json
from brain.rlds.columns import StepColumns
from brain.rlds.logformat import FRAME, STEP, FrameRecord, PayloadError, decode, decode_frame
from brain.rlds.tfrecord import OVERHEAD, BufferReader, RecordReader

EPISODE_FILE = "episode.json"
LOG_FILE = "steps.tfrecord"
LOCK_FILE = "recording.lock"
FORMAT_VERSION = 1
# Status values in episode.json: "recording" (open), "complete", "incomplete" (recovered).
_CLOSED = ("complete", "incomplete")  # a closed episode's files never change again
# What an episode id may be (the recorder's ids match it): never a leading "-" or ".", so an id
# can neither be taken for a command-line option nor name a hidden or parent directory.
EPISODE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
_ID_RE = re.compile(EPISODE_ID_PATTERN)


def is_episode_id(value: object) -> bool:
    return isinstance(value, str) and bool(_ID_RE.fullmatch(value)) and ".." not in value


class EpisodeError(RuntimeError):
    """An episode operation was refused; the message names the episode and why."""


class EpisodeNotFound(EpisodeError):
    pass


class EpisodeBusy(EpisodeError):
    pass


def new_episode_id(t_wall: float | None = None) -> str:
    t = time.gmtime(time.time() if t_wall is None else t_wall)
    return time.strftime("%Y%m%dT%H%M%SZ", t) + "-" + os.urandom(3).hex()


def episode_dir(episodes_dir: Path, episode_id: str) -> Path:
    """The directory of an existing episode; EpisodeNotFound names the id otherwise."""
    if not is_episode_id(episode_id):
        raise EpisodeNotFound(f"invalid episode id {episode_id!r}")
    path = Path(episodes_dir) / episode_id
    if not (path / EPISODE_FILE).is_file():
        raise EpisodeNotFound(f"no episode {episode_id!r} in {episodes_dir}")
    return path


def try_lock(path: Path) -> int | None:
    """Open and exclusively flock `path`; the fd, or None when another holder has it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def is_locked(ep_dir: Path) -> bool:
    lock = ep_dir / LOCK_FILE
    if not lock.exists():
        return False
    fd = try_lock(lock)
    if fd is None:
        return True
    os.close(fd)
    return False


def read_meta(ep_dir: Path) -> dict[str, Any]:
    try:
        meta = read_json(ep_dir / EPISODE_FILE)
    except (OSError, ValueError) as e:
        raise EpisodeError(f"episode {ep_dir.name}: unreadable {EPISODE_FILE}: {e}") from None
    if not isinstance(meta, dict):
        raise EpisodeError(f"episode {ep_dir.name}: {EPISODE_FILE} is not an object")
    return meta


def list_episodes(episodes_dir: Path) -> list[dict[str, Any]]:
    """One summary per episode, oldest first (ids sort by start time)."""
    root = Path(episodes_dir)
    if not root.is_dir():
        return []
    out: list[dict[str, Any]] = []
    for d in sorted(root.iterdir()):
        if d.name.startswith(".") or not (d / EPISODE_FILE).is_file():
            continue
        try:
            meta = read_meta(d)
        except EpisodeError as e:
            out.append({"id": d.name, "status": "unreadable", "error": str(e)})
            continue
        status = meta.get("status")
        if status == "recording" and not is_locked(d):
            status = "recording (not closed; run recovery)"
        out.append({
            "id": d.name, "status": status, "steps": meta.get("steps"),
            "frames": meta.get("frames"), "started_wall": meta.get("started_wall"),
            "duration_s": meta.get("duration_s"), "end_reason": meta.get("end_reason"),
            "bytes": _size(d / LOG_FILE),
        })
    return out


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


@dataclass
class Episode:
    """An episode read back from disk. `log_error` is None when every record was whole."""

    id: str
    path: Path
    meta: dict[str, Any]
    steps: list[dict[str, Any]] = field(default_factory=list)
    frames: list[FrameRecord] = field(default_factory=list)
    log_error: str | None = None
    log_torn: bool = False
    log_end: int = 0
    log_size: int = 0
    unverified: BufferReader | None = None  # loaded with defer_crcs: call verify_log()

    @functools.cached_property
    def columns(self) -> StepColumns:
        return StepColumns(self.steps)

    @property
    def whole_log_crc(self) -> int | None:
        """The CRC32C of the whole log from episode.json, when it covers exactly this file."""
        crc = self.meta.get("log_crc32c")
        if type(crc) is int and self.meta.get("log_bytes") == self.log_size == self.log_end:
            return crc
        return None

    def verify_log(self) -> str | None:
        """For an episode loaded with `defer_crcs`: check the CRCs skipped then; the first
        failure, or None when the log is whole (also None when nothing was deferred).

        Fast path: the whole-file CRC the recorder (or recovery) stored in episode.json, one
        GIL-free call, proves every byte is as written. When it is absent, does not cover
        exactly this file, or does not match, each record's CRC decides (and names the bad one).
        """
        if self.unverified is None:
            return None
        if self.whole_log_crc is not None and self.unverified.whole_crc() == self.whole_log_crc:
            self.unverified = None
            return None
        problem = self.unverified.check_deferred()
        if problem is None:
            self.unverified = None
        return problem


def read_log(ep_dir: Path, *, mapped: bool = False, defer_crcs: bool = False
             ) -> tuple[list[dict[str, Any]], list[FrameRecord], BufferReader, int]:
    """Parse the log up to its first bad record (the reader says where and why).

    Frames' JPEGs are memoryviews into one buffer holding the log, never copied record by record.
    `mapped=True` maps the file instead of reading it: nothing is copied at all (reading 45 MB
    into fresh memory cost ~25 ms here, the mapping ~0), so an export's output is written and
    hashed straight from the page cache. Only for a log nobody truncates while the views live,
    i.e. a closed episode: recovery cuts only never-closed logs and a recorder appends only to
    the open one it locks. (A read error under a mapping is a SIGBUS, not an OSError; exports
    that must survive one run in a worker process, as the daemon's do.)

    Step payloads (JSON) are decoded all at once, as one joined array, with orjson (3000 steps:
    5 ms, against 14 ms for one json.loads and 27 ms one by one); parsing is most of an export's
    reading. Only when that fails are they decoded one by one with json, which also takes what
    orjson refuses (NaN), to name the first bad record.

    `defer_crcs`: see BufferReader; the reader returned holds the check for later.
    """
    frames: list[FrameRecord] = []
    frame_at: list[int] = []  # record index of each frame
    raw: list[memoryview] = []  # step payloads
    raw_at: list[int] = []  # record index of each step payload
    raw_end: list[int] = []  # and the offset just past it
    with open(ep_dir / LOG_FILE, "rb", buffering=0) as fh:
        size = os.fstat(fh.fileno()).st_size
        if mapped and size:
            buf: bytes | mmap.mmap = mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_READ)
        else:
            buf = fh.read()
    reader = BufferReader(buf, defer_crcs=defer_crcs)
    # The loop runs once per record (thousands per episode): plain appends, no tuples.
    for index, data in enumerate(reader):
        if not data or data[0] != FRAME:
            raw.append(data)  # a step (small), or a bad payload for decode() to name
            raw_at.append(index)
            raw_end.append(reader.end)
            continue
        try:
            frames.append(decode_frame(data))
            frame_at.append(index)
        except PayloadError as e:
            _cut(reader, index, reader.end - len(data) - OVERHEAD, e)
            break
    steps = _decode_steps(raw)
    if steps is None:  # some payload is bad: find the first, as a record-by-record parse would
        steps = []
        for data, index, end in zip(raw, raw_at, raw_end, strict=True):
            try:
                rec = decode(data)
            except PayloadError as e:
                _cut(reader, index, end - len(data) - OVERHEAD, e)
                frames = [f for f, at in zip(frames, frame_at, strict=True) if at < index]
                break
            steps.append(rec)  # type: ignore[arg-type]  # not "F": never a FrameRecord
    return steps, frames, reader, size


_OPEN, _CLOSE = ord("{"), ord("}")


def _decode_steps(raw: list[memoryview]) -> list[dict[str, Any]] | None:
    """All step payloads in one orjson.loads; None unless every one is a complete JSON object.
    (The payloads are the recorder's own json.dumps output, each guarded by its CRC.)"""
    # Indexing, not slicing: no object per payload (this runs 50 times a second of recording).
    if not all(len(d) > 2 and d[0] == STEP and d[1] == _OPEN and d[-1] == _CLOSE for d in raw):
        return None
    try:
        steps = orjson.loads(b"[" + b",".join([d[1:] for d in raw]) + b"]")
    except orjson.JSONDecodeError:
        return None
    if len(steps) != len(raw) or not all(type(st) is dict for st in steps):
        return None
    return steps


def _cut(reader: RecordReader, index: int, offset: int, e: PayloadError) -> None:
    """Treat the log as ending before record `index` (whose payload is bad)."""
    reader.error = f"bad payload in record {index}: {e}"
    reader.end = offset
    reader.count = index + 1
    reader.torn = False  # whatever came after it does not matter


def load_episode(episodes_dir: Path, episode_id: str, *, defer_crcs: bool = False) -> Episode:
    """An episode read back. `defer_crcs=True` (closed episodes only; others are checked now)
    leaves the log's CRCs to `Episode.verify_log()`: until it returns None, the data may be
    damaged and any anomaly must be taken as a reason to reload without it."""
    d = episode_dir(episodes_dir, episode_id)
    meta = read_meta(d)
    closed = meta.get("status") in _CLOSED
    defer_crcs = defer_crcs and closed
    try:
        steps, frames, reader, size = read_log(d, mapped=closed, defer_crcs=defer_crcs)
    except FileNotFoundError:
        return Episode(episode_id, d, meta, log_error=f"{LOG_FILE} is missing")
    return Episode(episode_id, d, meta, steps, frames, reader.error, reader.torn,
                   reader.end, size, reader if defer_crcs else None)


def delete_episode(episodes_dir: Path, episode_id: str) -> None:
    """Remove a closed episode; refuses one a recorder holds."""
    d = episode_dir(episodes_dir, episode_id)
    fd = try_lock(d / LOCK_FILE)
    if fd is None:
        raise EpisodeBusy(f"episode {episode_id} is being recorded; stop it first")
    try:
        # Rename first so a crash mid-delete leaves a dot-dir recovery removes, not half an episode.
        doomed = d.parent / f".deleting-{episode_id}"
        os.replace(d, doomed)
        fsync_dir(d.parent)
    finally:
        os.close(fd)
    shutil.rmtree(doomed)


def recover(episodes_dir: Path) -> list[dict[str, Any]]:
    """Bring every episode to a consistent state after a crash; returns what was done.

    A never-closed episode (status "recording", lock not held) has its log cut back to the last
    whole record and is marked "incomplete" with the durable steps counted. Leftover dot-dirs
    (half-created or half-deleted episodes) and temp files are removed. Closed episodes are never
    modified: damage in them is for `validate` to report, not for recovery to hide.
    """
    root = Path(episodes_dir)
    actions: list[dict[str, Any]] = []
    if not root.is_dir():
        return actions
    for d in sorted(root.iterdir()):
        if not d.is_dir():
            continue
        if d.name.startswith("."):
            if d.name.startswith((".new-", ".deleting-")) and not is_locked(d):
                shutil.rmtree(d, ignore_errors=True)
                actions.append({"id": d.name, "action": "removed leftover directory"})
            continue
        for tmp in d.glob(f".{EPISODE_FILE}.*.tmp"):
            tmp.unlink(missing_ok=True)
        try:
            meta = read_meta(d)
        except EpisodeError:
            continue
        if meta.get("status") != "recording":
            continue
        fd = try_lock(d / LOCK_FILE)
        if fd is None:
            continue  # a live recorder holds it
        try:
            actions.append(_recover_one(d, meta))
        finally:
            os.close(fd)
        (d / LOCK_FILE).unlink(missing_ok=True)
    return actions


def _recover_one(d: Path, meta: dict[str, Any]) -> dict[str, Any]:
    log = d / LOG_FILE
    if not log.exists():
        log.touch()
    steps, frames, reader, size = read_log(d)
    cut = size - reader.end
    if cut:
        with open(log, "r+b") as fh:
            fh.truncate(reader.end)
            os.fsync(fh.fileno())
    meta.update(status="incomplete", end_reason="recovered: recorder never closed the episode",
                steps=len(steps), frames=len(frames), log_bytes=reader.end,
                log_crc32c=reader.whole_crc(reader.end),
                recovered_wall=time.time(), recovery_cut_bytes=cut,
                recovery_cut_reason=reader.error)
    if steps:
        meta["ended_wall"] = steps[-1]["t_wall"]
        meta["duration_s"] = steps[-1]["t_mono"] - steps[0]["t_mono"]
    if frames and not meta.get("image_shape"):
        meta["image_shape"] = list(frames[0].shape)
    atomic_write_json(d / EPISODE_FILE, meta)
    return {"id": d.name, "action": "marked incomplete", "steps": len(steps),
            "frames": len(frames), "cut_bytes": cut, "cut_reason": reader.error}
