"""Export episodes as a genuine RLDS dataset in TFDS layout, without TensorFlow.

Output (`out_dir`): `features.json`, `dataset_info.json`, shards
`<name>-train.tfrecord-NNNNN-of-MMMMM` (TFDS' default shard naming; one `tf.train.Example` per
episode, an episode is never split; each worker process writes its own shards, rolling over
near `shard_max_bytes`; `shardLengths` counts them exactly) and
`export_manifest.json` (origin, episodes, per-file sha256 and size, counts, validation report,
anonymisation applied). Everything is built in a temp dir beside `out_dir`, fsynced and renamed
into place, so `out_dir` either does not change or appears complete. Images are the recorded
JPEG bytes, referenced per step, never re-encoded.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import gc
import hashlib
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from crc32c import crc32c

from brain.durable import atomic_write_json, fsync_dir
from brain.procs import worker_pool
from brain.rlds import example_wire as wire
from brain.rlds.anonymize import Anonymizer
from brain.rlds.schema import (
    BOOL,
    BOUNDARY_FEATURES,
    FLOAT,
    FLOAT_OR_ZERO,
    IMAGE_FEATURE,
    NS,
    VECTOR,
    StepField,
    StepSchema,
    exported_fields,
)
from brain.rlds.store import (
    LOG_FILE,
    Episode,
    EpisodeBusy,
    EpisodeError,
    episode_dir,
    is_locked,
    list_episodes,
    load_episode,
    read_meta,
    try_lock,
)
from brain.rlds.tfds_meta import dataset_info_json, features_json, shard_name
from brain.rlds.tfrecord import OVERHEAD, mask_crc, masked_crc
from brain.rlds.validate import check_jpegs, validate_episode

MANIFEST = "export_manifest.json"
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")  # TFDS dataset names are snake_case
T = TypeVar("T")
Buffer = bytes | memoryview


class ExportError(RuntimeError):
    """The export was refused; nothing was written. The message says why."""


class ExportNoSpace(ExportError):
    """Not enough free disk for the export (checked before it starts, or hit while writing:
    then the partial output has been removed)."""


def prepare_cloud_export(episodes_dir: Path, out_dir: Path, *,
                         episode_ids: list[str] | None = None, anonymize: bool = False,
                         origin: str = "pi5", dataset_name: str = "brain_episodes",
                         shard_max_bytes: int = 256 << 20,
                         description: str = "Robot episodes recorded by brain.",
                         workers: int | None = None, isolate: bool = False,
                         reserve_bytes: int = 0, space_factor: float = 1.0) -> dict[str, Any]:
    """Validate, optionally anonymise, and export episodes; returns the manifest.

    `workers`: how many processes load, validate and write episodes (None: as many as the data
    and CPUs warrant, see _auto_workers; 1: in this process unless `isolate`). Each worker takes a
    contiguous run of the sorted episodes and writes its own shards, so the dataset's order is
    the episodes' order whatever the count. `isolate=True` keeps that work out of this process
    even for one worker (a daemon whose control loop must not share its GIL with the export).
    Free disk beside `out_dir` must hold the expected export (`space_factor` times it, for a
    caller that will copy it, e.g. into a tar) plus `reserve_bytes`, or ExportNoSpace.
    """
    episodes_dir, out_dir = Path(episodes_dir), Path(out_dir)
    if not _NAME_RE.fullmatch(dataset_name):
        raise ExportError(f"dataset name {dataset_name!r} must be snake_case (a-z, 0-9, _)")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ExportError(f"workers must be a positive integer, got {workers!r}")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ExportError(f"export directory {out_dir} is not empty; choose a new one")
    ids = _select(episodes_dir, episode_ids)
    sizes = [_log_size(episodes_dir, eid) for eid in ids]
    count = min(workers, len(ids)) if workers is not None else _auto_workers(sizes)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(out_dir.parent)
    need = int(sum(map(_expected_bytes, [episodes_dir / i for i in ids], sizes))
               * space_factor) + reserve_bytes
    free = shutil.disk_usage(out_dir.parent).free
    if free < need:
        raise ExportNoSpace(f"the export needs about {need >> 20} MiB free next to "
                            f"{out_dir} and {free >> 20} MiB are; free some space (old "
                            "exports, episodes) or export fewer episodes")
    tmp, lock_fd = _claim_temp(out_dir)
    salt = os.urandom(16) if anonymize else None  # one salt: tokens agree across workers
    chunks = [_Chunk(i, episodes_dir, part, tmp, episode_ids is None, salt, shard_max_bytes)
              for i, part in enumerate(_split(ids, sizes, count))]
    try:
        if len(chunks) == 1 and not isolate:
            results = [_export_chunk(chunks[0])]
        else:
            results = _run_in_processes(chunks)
        manifest = _assemble(results, tmp, episodes_dir=episodes_dir, anonymize=anonymize,
                             origin=origin, name=dataset_name, description=description)
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above); rename cannot replace it atomically
        os.replace(tmp, out_dir)
        fsync_dir(out_dir.parent)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ExportNoSpace(f"the disk holding {out_dir.parent} filled up during the "
                                "export; the partial export was removed. Free some space "
                                "and try again") from None
        raise
    finally:
        _release_temp(tmp, lock_fd)
    return manifest


def _expected_bytes(ep_dir: Path, log_bytes: int) -> int:
    """About what an episode adds to an export: the export holds one image per step where the
    log holds each frame once (at 30 fps and 50 Hz, 1.67 steps a frame: bench/record.py
    measured 23.4 MB of log -> 38.2 MB), plus a little metadata."""
    try:
        meta = read_meta(ep_dir)
        steps, frames = int(meta.get("steps") or 0), int(meta.get("frames") or 0)
    except (EpisodeError, TypeError, ValueError):
        steps = frames = 0
    per_frame = steps / frames if frames else 2.0
    return int(log_bytes * max(1.0, per_frame) * EXPORT_SLACK) + (64 << 10)


EXPORT_SLACK = 1.05
_TEMP = re.compile(r"^\..+\.tmp(-[0-9a-f]+)?$")


def _claim_temp(out_dir: Path) -> tuple[Path, int]:
    """A fresh scratch directory beside `out_dir`, held by a lock file beside it for as long as
    this export runs (so `clean_stale_temps` never takes a live one)."""
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.urandom(4).hex()}"
    lock_fd = try_lock(tmp.with_name(tmp.name + ".lock"))
    assert lock_fd is not None  # a fresh random name: nobody else holds it
    tmp.mkdir()
    return tmp, lock_fd


def _release_temp(tmp: Path, lock_fd: int) -> None:
    tmp.with_name(tmp.name + ".lock").unlink(missing_ok=True)
    os.close(lock_fd)


def clean_stale_temps(parent: Path) -> list[str]:
    """Remove scratch left in `parent` by exports that were killed (SIGKILL, power loss): every
    `.NAME.tmp-*` directory or `.NAME.tmp` file whose lock no live export holds. Returns the
    names removed."""
    removed: list[str] = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for path in entries:
        if not _TEMP.fullmatch(path.name):
            continue
        lock = path.with_name(path.name + ".lock")
        fd = try_lock(lock) if lock.exists() else None
        if lock.exists() and fd is None:
            continue  # a live export holds it
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path.name)
        except OSError:
            pass
        finally:
            if fd is not None:
                lock.unlink(missing_ok=True)
                os.close(fd)
    return removed


# Below this much log per worker, processes cost more than they save. Measured here (2 shared
# cores): a process's first export pays ~0.15-0.2 s to start the forkserver, and 4 x 30 s
# episodes (117 MB of log) exported in 0.24-0.35 s with 2 workers against 0.26-0.29 s with 1
# (the I/O threads already use the second core); the gain grows with more cores (a Pi 5 has 4).
_MIN_BYTES_PER_WORKER = 64 << 20


def _auto_workers(sizes: list[int]) -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(len(sizes), cpus, sum(sizes) // _MIN_BYTES_PER_WORKER))


def _log_size(episodes_dir: Path, eid: str) -> int:
    try:
        return (episodes_dir / eid / LOG_FILE).stat().st_size
    except OSError:  # missing log: the worker reports it as the episode's problem
        return 0


def _split(ids: list[str], sizes: list[int], count: int) -> list[list[str]]:
    """`ids` cut into `count` contiguous runs of about equal bytes, none empty (deterministic:
    the same episodes give the same runs, so a re-export has the same order and shards)."""
    total = sum(sizes) or 1
    parts: list[list[str]] = [[] for _ in range(count)]
    k = done = 0
    for i, (eid, size) in enumerate(zip(ids, sizes, strict=True)):
        left = len(ids) - i  # ids not placed yet, this one included
        if parts[k] and k < count - 1 and (done >= total * (k + 1) / count
                                           or left == count - 1 - k):
            k += 1
        parts[k].append(eid)
        done += size
    return [p for p in parts if p]


@dataclass(frozen=True)
class _Chunk:
    """One worker's share of an export (pickled to the worker process)."""

    index: int
    episodes_dir: Path
    ids: list[str]
    tmp: Path
    skip_empty: bool
    salt: bytes | None
    shard_max_bytes: int


def _run_in_processes(chunks: list[_Chunk]) -> list[dict[str, Any]]:
    """Each chunk in its own worker process; results in chunk order. A failing chunk's error
    is raised (the first in order when several fail) after every worker has stopped writing."""
    with worker_pool(len(chunks), preload=(__name__,)) as pool:
        futures = [pool.submit(_export_chunk, c) for c in chunks]
        try:
            return [f.result() for f in futures]
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector (process-wide) for the export's duration. Decoding
    the steps creates thousands of small dicts and lists, none of them in cycles, and the GC kept
    traversing them: pausing it took ~15 % off an export here. The previous state comes back."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _select(episodes_dir: Path, episode_ids: list[str] | None) -> list[str]:
    if episode_ids is None:
        ids = [e["id"] for e in list_episodes(episodes_dir)
               if not is_locked(episodes_dir / e["id"])]
    else:
        ids = list(dict.fromkeys(episode_ids))
        for eid in ids:
            if is_locked(episode_dir(episodes_dir, eid)):  # raises EpisodeNotFound for unknown
                raise EpisodeBusy(f"episode {eid} is being recorded; stop it first")
    if not ids:
        raise ExportError(f"no episodes to export in {episodes_dir}")
    return ids


class _ShardWriter:
    """Appends TFRecord records to one shard, each given as a list of buffers (the JPEGs are
    views into the mapped episode logs).

    Speed: the hash is an export's long pole (~1.75 GB/s with SHA-NI, slower than the whole
    write), so it starts as soon as a record exists and depends on nothing slower. The sha
    thread joins the record into blocks of about _BLOCK bytes, hashes each and hands it to the
    io thread, which takes its CRC and writes it (one thread each, shared by all shards, so
    order is kept). The caller meanwhile goes on (to check the episode, to read the next).
    Whole blocks matter: bytes.join, hashlib, crc32c and write let go of the GIL on large
    buffers, so a worker needs the GIL a few times per block instead of twice per JPEG, and the
    caller's Python no longer stalls the hash (measured on 2 cores: hashing the thousands of
    small buffers directly, next to a busy caller, took 80 ms, twice its time alone); the
    join's copy costs far less. The io thread also starts the disk writeback early (see
    _start_writeback), so the fsync at close has little left to do. Memory: the record, plus
    at most _BLOCKS_IN_FLIGHT blocks hashed but not yet written.
    """

    def __init__(self, path: Path, pool: _Workers) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        self.pool = pool
        self.sha = hashlib.sha256()
        self._room = threading.BoundedSemaphore(_BLOCKS_IN_FLIGHT)
        self._crc = 0  # running CRC of the record's data (io thread)
        self._io_error: BaseException | None = None  # first failed write (io thread)
        self._pending: Future[None] | None = None
        self.size = 0  # bytes once every submitted record is written
        self.records = 0
        self._written = self._flushed = 0

    def write(self, bufs: list[Buffer]) -> None:
        self._wait()  # raises the previous record's error, if any
        length = sum(map(len, bufs))
        self._pending = self.pool.sha.submit(self._hash_record, _header(length), bufs,
                                             _block_bounds(bufs))
        self.size += length + OVERHEAD
        self.records += 1

    def _wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def _hash_record(self, head: bytes, bufs: list[Buffer],
                     bounds: list[tuple[int, int]]) -> None:
        """(sha thread) Join, hash and pass on each block; returns once all is written."""
        self.sha.update(head)
        self._pass_on(head, is_data=False)
        for start, stop in bounds:
            block = b"".join(bufs[start:stop])
            self.sha.update(block)
            self._pass_on(block, is_data=True)
        self.sha.update(self.pool.io.submit(self._write_footer).result())

    def _pass_on(self, block: bytes, is_data: bool) -> None:
        self._room.acquire()  # released by the io thread once the block is written
        self.pool.io.submit(self._write_block, block, is_data)

    def _write_block(self, block: bytes, is_data: bool) -> None:  # io thread
        try:
            if self._io_error is None:
                if is_data:
                    self._crc = crc32c(block, self._crc)
                self._write_all(block)
        except BaseException as e:  # reported by the footer, which every record waits for
            self._io_error = e
        finally:
            self._room.release()

    def _write_footer(self) -> bytes:  # io thread, after the record's blocks
        if self._io_error is not None:
            raise self._io_error
        foot = mask_crc(self._crc).to_bytes(4, "little")
        self._crc = 0
        self._write_all(foot)
        # Start writing back the record's tail now (not at close's fsync), while the hash
        # of its last block finishes.
        _start_writeback(self.fd, self._flushed, self._written - self._flushed)
        self._flushed = self._written
        return foot

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]
        self._written += len(data)
        if self._written - self._flushed >= _WRITEBACK_CHUNK:
            _start_writeback(self.fd, self._flushed, self._written - self._flushed)
            self._flushed = self._written

    def close(self) -> dict[str, Any]:
        """Wait for the writes and the hash, fsync and close; the file's sha256 and size."""
        try:
            self._wait()
            os.fsync(self.fd)
        finally:
            self.abort()
        return {"path": self.path.name, "sha256": self.sha.hexdigest(), "bytes": self.size}

    def abort(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# Blocks of 1 MiB: the smallest that bytes.join copies without the GIL, and small enough
# that a block is still in the CPU cache when the io thread reads it after the hash (8 MiB
# blocks measured ~20 % slower here). _BLOCKS_IN_FLIGHT bounds the blocks hashed but not yet
# written.
_BLOCK = 1 << 20
_BLOCKS_IN_FLIGHT = 8


def _block_bounds(bufs: list[Buffer]) -> list[tuple[int, int]]:
    """Slices of `bufs` of about _BLOCK bytes each (a buffer is never split), computed at once
    so the sha thread runs no Python per buffer (it would wait for the GIL each time)."""
    if not bufs:
        return []
    ends = np.cumsum(np.fromiter(map(len, bufs), dtype=np.int64, count=len(bufs)))
    cuts = np.searchsorted(ends, np.arange(_BLOCK, int(ends[-1]), _BLOCK), side="left") + 1
    edges = [0, *sorted(set(cuts.tolist()) - {0, len(bufs)}), len(bufs)]
    return list(zip(edges[:-1], edges[1:], strict=True))


def _load_sync_file_range() -> Any:
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):  # not Linux/glibc: the fsync at close does it all
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return fn


_sync_file_range = _load_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2
_WRITEBACK_CHUNK = 4 << 20


def _start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Ask the kernel to start writing this range to disk now, without waiting (Linux
    sync_file_range, which the os module does not wrap; databases use it the same way). The
    disk then works while we hash and write the rest, instead of all at the final fsync, which
    stays the durability guarantee: this call only schedules, and its failure changes nothing."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, nbytes, _SYNC_FILE_RANGE_WRITE)


class _Workers:
    """The export's two I/O threads (see _ShardWriter); leaving the with-block waits for both."""

    def __enter__(self) -> _Workers:
        self.io = ThreadPoolExecutor(1, thread_name_prefix="rlds-export-io")
        self.sha = ThreadPoolExecutor(1, thread_name_prefix="rlds-export-sha")
        return self

    def __exit__(self, *exc: object) -> None:
        self.io.shutdown(wait=True)
        self.sha.shutdown(wait=True)


def _header(length: int) -> bytes:
    n = length.to_bytes(8, "little")
    return n + masked_crc(n).to_bytes(4, "little")


def _export_chunk(chunk: _Chunk) -> dict[str, Any]:
    """Load, validate and serialise a run of episodes into this chunk's own shards (fsynced,
    hashed); returns what the manifest needs. Runs in a worker process or in the caller."""
    shards: list[_ShardWriter] = []
    try:
        with _Workers() as pool, _gc_paused():
            return _write_chunk(chunk, pool, shards)
    finally:  # the with-block waited for the I/O threads, so no write can race these closes
        for sh in shards:
            sh.abort()


def _write_chunk(chunk: _Chunk, pool: _Workers, shards: list[_ShardWriter]) -> dict[str, Any]:
    anon = Anonymizer(chunk.salt) if chunk.salt is not None else None
    reports, entries, skipped = [], [], []
    spec: tuple[int, tuple[int, int, int] | None] | None = None
    spec_from = ""
    for eid in chunk.ids:
        # The log's CRCs and the JPEG headers are checked while the record is being built
        # (the whole-file CRC, one call without the GIL, on the io thread) or while it is hashed
        # and written (below), not before: the hash is an export's long pole and can only start
        # once the record exists. Nothing is published unless every check passes.
        ep = load_episode(chunk.episodes_dir, eid, defer_crcs=True)
        # The log's verdict (None: whole): one GIL-free call, started now on the io thread, when
        # the whole-log CRC applies; else the per-record check, run when asked.
        log_problem = (pool.io.submit(ep.verify_log).result if ep.whole_log_crc is not None
                       else ep.verify_log)
        try:
            report = validate_episode(chunk.episodes_dir, eid, ep, jpegs=False)
            if report["status"] == "corrupt":
                raise _corrupt(chunk.episodes_dir, eid, report["reasons"])
            reports.append(report)
            if report["steps"] == 0 and chunk.skip_empty:  # e.g. killed right after it started
                skipped.append({"id": eid, "reason": "no steps"})
                continue
            if report["steps"] == 0:
                raise ExportError(f"episode {eid} has no steps; leave it out with --episodes")
            episode_spec = _spec(ep)
            if spec is None:
                spec, spec_from = episode_spec, eid
            elif spec != episode_spec:
                raise _spec_error(eid, episode_spec, spec_from, spec)
            bufs, trimmed = _episode_example(ep, report["status"], episode_spec[1] is not None,
                                             anon)
        except Exception:  # with CRCs unchecked, damage can surface as anything: check first
            problem = log_problem()
            if problem is not None:
                raise _corrupt(chunk.episodes_dir, eid, [f"log: {problem}"]) from None
            raise
        if not shards or shards[-1].size >= chunk.shard_max_bytes:
            path = chunk.tmp / f".part-{chunk.index:05d}-{len(shards):05d}"
            shards.append(_ShardWriter(path, pool))
        shards[-1].write(bufs)
        late = log_problem()
        problems = [f"log: {late}"] if late is not None else check_jpegs(ep.meta, ep.frames)
        if problems:  # the shard is unpublished scratch: raising discards it
            raise _corrupt(chunk.episodes_dir, eid, problems)
        entries.append({"id": eid, "status": report["status"], "steps": report["steps"] - trimmed,
                        "frames": report["frames"], "trimmed_leading_steps": trimmed,
                        "shard": len(shards) - 1})
        del ep, bufs
    files = [{**sh.close(), "records": sh.records} for sh in shards]
    return {"reports": reports, "entries": entries, "skipped": skipped, "spec": spec,
            "spec_from": spec_from, "shards": files,
            "touched": anon.touched if anon is not None else []}


Spec = tuple[int, tuple[int, int, int] | None]  # state size, image shape (None: no camera)


def _corrupt(episodes_dir: Path, eid: str, found: list[str]) -> ExportError:
    """The refusal of a damaged episode, naming what validation finds when it reads the
    episode with every check up front (`brain episodes validate` gives the same reasons)."""
    report = validate_episode(episodes_dir, eid)
    reasons = report["reasons"] if report["status"] == "corrupt" else found
    return ExportError(f"episode {eid} is corrupt ({'; '.join(reasons)}); "
                       "leave it out with --episodes or delete it")


def _spec(ep: Episode) -> Spec:
    return len(ep.steps[0]["state"]), (ep.frames[0].shape if ep.frames else None)


def _spec_error(eid: str, spec: Spec, other: str, other_spec: Spec) -> ExportError:
    return ExportError(f"episode {eid} has state size {spec[0]} and image shape {spec[1]}, "
                       f"but {other} has {other_spec[0]} and {other_spec[1]}; "
                       "export them separately")


def _assemble(results: list[dict[str, Any]], tmp: Path, *, episodes_dir: Path, anonymize: bool,
              origin: str, name: str, description: str) -> dict[str, Any]:
    """Name the workers' shards in order, write the TFDS metadata and the manifest."""
    spec: Spec | None = None
    spec_from = ""
    for r in results:
        if r["spec"] is None:
            continue
        if spec is None:
            spec, spec_from = tuple(r["spec"]), r["spec_from"]  # type: ignore[assignment]
        elif tuple(r["spec"]) != spec:
            raise _spec_error(r["spec_from"], tuple(r["spec"]), spec_from, spec)  # type: ignore
    if spec is None:
        raise ExportError(f"no episode with steps to export in {episodes_dir}")
    shards = [sh for r in results for sh in r["shards"]]
    files = []
    for i, sh in enumerate(shards):
        final = shard_name(name, i, len(shards))
        os.rename(tmp / sh["path"], tmp / final)
        files.append({"path": final, "sha256": sh["sha256"], "bytes": sh["bytes"]})
    entries, first = [], 0
    for r in results:  # each worker numbered its shards from 0
        for e in r["entries"]:
            entries.append({**e, "shard": files[first + e["shard"]]["path"]})
        first += len(r["shards"])
    # After the shards' fsync, not during their writes: on ext4 the fsync of even a small file
    # commits the journal and so waits for every pending write (measured: 30-160 ms, not 1).
    lengths = [sh["records"] for sh in shards]
    meta_files = {
        "features.json": features_json(StepSchema(spec[0], spec[1])),
        "dataset_info.json": dataset_info_json(name, lengths, sum(f["bytes"] for f in files),
                                               description),
    }
    for fname, obj in meta_files.items():
        data = json.dumps(obj, indent=4, sort_keys=True).encode()
        _write_synced(tmp / fname, data)
        files.append({"path": fname, "sha256": hashlib.sha256(data).hexdigest(),
                      "bytes": len(data)})
    manifest = {
        "format": 1, "kind": "rlds-tfds", "origin": origin, "dataset_name": name,
        "created_wall": time.time(), "episodes": entries, "files": files,
        "counts": {"episodes": len(entries), "steps": sum(e["steps"] for e in entries),
                   "frames": sum(e["frames"] for e in entries), "shards": len(shards),
                   "bytes": sum(f["bytes"] for f in files)},
        "validation": [rep for r in results for rep in r["reports"]],
        "skipped": [s for r in results for s in r["skipped"]],
        "anonymization": {"applied": anonymize,
                          "touched": [t for r in results for t in r["touched"]]},
    }
    atomic_write_json(tmp / MANIFEST, manifest)
    return manifest


def _write_synced(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _episode_example(ep: Episode, status: str, with_image: bool,
                     anon: Anonymizer | None) -> tuple[wire.Buffers, int]:
    cols = ep.columns  # shared with validation, which has already built most of them
    trimmed = 0
    if with_image:  # steps before the first camera frame have no image to export
        framed = cols.array("frame") >= 0
        trimmed = int(np.argmax(framed)) if framed.any() else len(cols)
    n = len(cols) - trimmed
    if not n:
        raise ExportError(f"episode {ep.id} has no step with a camera frame")
    user = ep.meta.get("metadata", {})
    if anon is not None:
        user = anon.scrub(user, f"{ep.id}.metadata")

    def col(key: str) -> list[Any]:
        values = cols.list(key)
        return values[trimmed:] if trimmed else values

    def arr(key: str, dtype: Any) -> np.ndarray:
        return cols.array(key, dtype)[trimmed:]

    def encode(f: StepField) -> wire.Buffers:
        if f.encoding == VECTOR:
            return wire.float_feature(arr(f.key, np.float32).reshape(-1))
        if f.encoding == FLOAT:
            return wire.float_feature(col(f.key))
        if f.encoding == FLOAT_OR_ZERO:
            return wire.float_feature([0.0 if v is None else v for v in col(f.key)])
        if f.encoding == NS:
            return wire.int64_feature(_ns(arr(f.key, np.float64)))
        if f.encoding == BOOL:
            return wire.int64_feature(arr(f.key, np.int64))
        texts = col(f.key)
        if f.free_text and anon is not None:
            cache: dict[str, str] = {}
            texts = [cache.setdefault(t, anon.scrub(t, f"{ep.id}.steps.{f.key}")) for t in texts]
        return wire.bytes_feature(list(map(str.encode, texts)))

    first, last = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    first[0], last[-1] = 1, 1
    feats: dict[str, wire.Buffers] = {f"steps/{f.feature}": encode(f) for f in exported_fields()}
    for name, flags in zip(BOUNDARY_FEATURES, (first, last), strict=True):
        feats[f"steps/{name}"] = wire.int64_feature(flags)
    if with_image:
        jpegs = [f.jpeg for f in ep.frames]
        feats[f"steps/{IMAGE_FEATURE}"] = wire.bytes_feature(
            list(map(jpegs.__getitem__, col("frame"))))
    t_wall = col("t_wall")
    sim = user.get("simulator")
    episode_text = {
        "episode_id": ep.id, "robot_id": str(user.get("robot_id", "")),
        "robot_profile": str(user.get("robot_profile", "")),
        "model_id": str(user.get("model_id", "")), "operator": str(user.get("operator", "")),
        "status": status, "state_names": ",".join(map(str, user.get("state_names", []))),
        "simulator": json.dumps(sim, sort_keys=True) if sim else "",
        "metadata_json": json.dumps(user, sort_keys=True, default=str),
    }
    for key, value in episode_text.items():
        feats[f"episode_metadata/{key}"] = wire.bytes_feature([value.encode()])
    feats["episode_metadata/start_time_ns"] = wire.int64_feature(
        [round(ep.meta.get("started_wall", t_wall[0]) * 1e9)])
    feats["episode_metadata/end_time_ns"] = wire.int64_feature(
        [round((ep.meta.get("ended_wall") or t_wall[-1]) * 1e9)])
    return wire.example(feats), trimmed


def _ns(seconds: np.ndarray) -> np.ndarray:
    """round(t * 1e9) for each t, vectorised (rint rounds half to even, as round() does)."""
    return np.rint(seconds * 1e9).astype(np.int64)
