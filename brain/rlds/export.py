"""Export episodes as a genuine RLDS dataset in TFDS layout, without TensorFlow.

Output (`out_dir`): `features.json`, `dataset_info.json`, shards
`<name>-train.tfrecord-NNNNN-of-MMMMM` (TFDS' default shard naming; one `tf.train.Example` per
episode, an episode is never split, shards roll over near `shard_max_bytes`) and
`export_manifest.json` (origin, episodes, per-file sha256 and size, counts, validation report,
anonymisation applied). Everything is built in a temp dir beside `out_dir`, fsynced and renamed
into place, so `out_dir` either does not change or appears complete. Images are the recorded
JPEG bytes, referenced per step, never re-encoded.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np

from brain.durable import atomic_write_json, fsync_dir
from brain.rlds import example_wire as wire
from brain.rlds.anonymize import Anonymizer
from brain.rlds.store import (
    Episode,
    EpisodeBusy,
    episode_dir,
    is_locked,
    list_episodes,
    load_episode,
)
from brain.rlds.tfds_meta import dataset_info_json, features_json, shard_name
from brain.rlds.tfrecord import OVERHEAD, mask_crc
from brain.rlds.validate import validate_episode

MANIFEST = "export_manifest.json"
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")  # TFDS dataset names are snake_case
_IOV_BATCH = 512  # below IOV_MAX (1024 on Linux)


class ExportError(RuntimeError):
    """The export was refused; nothing was written. The message says why."""


def prepare_cloud_export(episodes_dir: Path, out_dir: Path, *,
                         episode_ids: list[str] | None = None, anonymize: bool = False,
                         origin: str = "pi5", dataset_name: str = "brain_episodes",
                         shard_max_bytes: int = 256 << 20,
                         description: str = "Robot episodes recorded by brain.") -> dict[str, Any]:
    """Validate, optionally anonymise, and export episodes; returns the manifest."""
    episodes_dir, out_dir = Path(episodes_dir), Path(out_dir)
    if not _NAME_RE.match(dataset_name):
        raise ExportError(f"dataset name {dataset_name!r} must be snake_case (a-z, 0-9, _)")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ExportError(f"export directory {out_dir} is not empty; choose a new one")
    ids = _select(episodes_dir, episode_ids)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.urandom(4).hex()}"
    tmp.mkdir()
    try:
        manifest = _build(episodes_dir, ids, tmp, skip_empty=episode_ids is None,
                          anonymize=anonymize, origin=origin,
                          name=dataset_name, shard_max_bytes=shard_max_bytes,
                          description=description)
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above); rename cannot replace it atomically
        os.replace(tmp, out_dir)
        fsync_dir(out_dir.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


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
    """Writes TFRecord records from buffer lists with writev. The sha256 runs on a worker
    thread (hashlib releases the GIL on large buffers) so hashing overlaps the writes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        self.sha = hashlib.sha256()
        self._hasher = ThreadPoolExecutor(max_workers=1)  # one worker: updates stay in order
        self._hashing: list[Future[None]] = []
        self.size = 0
        self.records = 0

    def write(self, bufs: list[bytes]) -> None:
        length = sum(len(b) for b in bufs)
        crc = 0
        for b in bufs:
            crc = google_crc32c.extend(crc, b)
        header = _header(length)
        footer = mask_crc(crc).to_bytes(4, "little")
        everything = [header, *bufs, footer]
        for i in range(0, len(everything), _IOV_BATCH):
            batch = everything[i:i + _IOV_BATCH]
            want = sum(len(b) for b in batch)
            done = os.writev(self.fd, batch)
            if done != want:  # short write (rare): finish this batch plainly
                rest = b"".join(batch)[done:]
                while rest:
                    rest = rest[os.write(self.fd, rest):]
            self._hashing.append(self._hasher.submit(self._hash, batch))
        self.size += length + OVERHEAD
        self.records += 1

    def _hash(self, batch: list[bytes]) -> None:
        for b in batch:
            self.sha.update(b)

    def close(self) -> dict[str, Any]:
        os.fsync(self.fd)
        os.close(self.fd)
        for f in self._hashing:
            f.result()
        self._hasher.shutdown()
        return {"path": self.path.name, "sha256": self.sha.hexdigest(), "bytes": self.size}


def _header(length: int) -> bytes:
    n = length.to_bytes(8, "little")
    return n + mask_crc(google_crc32c.value(n)).to_bytes(4, "little")


def _build(episodes_dir: Path, ids: list[str], tmp: Path, *, skip_empty: bool,
           anonymize: bool, origin: str,
           name: str, shard_max_bytes: int, description: str) -> dict[str, Any]:
    anon = Anonymizer(os.urandom(16)) if anonymize else None
    shards: list[_ShardWriter] = []
    reports, entries, skipped = [], [], []
    spec: tuple[int, tuple[int, int, int] | None] | None = None
    spec_from = ""
    for eid in ids:
        ep = load_episode(episodes_dir, eid)
        report = validate_episode(episodes_dir, eid, ep)
        reports.append(report)
        if report["status"] == "corrupt":
            raise ExportError(f"episode {eid} is corrupt ({'; '.join(report['reasons'])}); "
                              "leave it out with --episodes or delete it")
        if report["steps"] == 0 and skip_empty:  # e.g. killed right after it started
            skipped.append({"id": eid, "reason": "no steps"})
            continue
        if report["steps"] == 0:
            raise ExportError(f"episode {eid} has no steps; leave it out with --episodes")
        state_dim = len(ep.steps[0]["state"])
        image_shape = tuple(ep.frames[0].shape) if ep.frames else None
        if spec is None:
            spec, spec_from = (state_dim, image_shape), eid
        elif spec != (state_dim, image_shape):
            raise ExportError(f"episode {eid} has state size {state_dim} and image shape "
                              f"{image_shape}, but {spec_from} has {spec[0]} and {spec[1]}; "
                              "export them separately")
        if not shards or shards[-1].size >= shard_max_bytes:
            shards.append(_ShardWriter(tmp / f"shard-{len(shards):05d}"))
        bufs, trimmed = _episode_example(ep, report["status"], image_shape is not None, anon)
        shards[-1].write(bufs)
        entries.append({"id": eid, "status": report["status"], "steps": report["steps"] - trimmed,
                        "frames": report["frames"], "trimmed_leading_steps": trimmed,
                        "shard": len(shards) - 1})
        del ep, bufs
    if spec is None:
        raise ExportError(f"no episode with steps to export in {episodes_dir}")
    files = []
    for i, sh in enumerate(shards):
        info = sh.close()
        final = shard_name(name, i, len(shards))
        os.rename(sh.path, tmp / final)
        files.append({**info, "path": final})
    for e in entries:
        e["shard"] = files[e["shard"]]["path"]
    lengths = [sh.records for sh in shards]
    meta_files = {
        "features.json": features_json(spec[0], spec[1]),
        "dataset_info.json": dataset_info_json(name, lengths, sum(f["bytes"] for f in files),
                                               description),
    }
    for fname, obj in meta_files.items():
        data = json.dumps(obj, indent=4, sort_keys=True).encode()
        (tmp / fname).write_bytes(data)
        with open(tmp / fname, "rb") as fh:
            os.fsync(fh.fileno())
        files.append({"path": fname, "sha256": hashlib.sha256(data).hexdigest(),
                      "bytes": len(data)})
    manifest = {
        "format": 1, "kind": "rlds-tfds", "origin": origin, "dataset_name": name,
        "created_wall": time.time(), "episodes": entries, "files": files,
        "counts": {"episodes": len(entries), "steps": sum(e["steps"] for e in entries),
                   "frames": sum(e["frames"] for e in entries), "shards": len(shards),
                   "bytes": sum(f["bytes"] for f in files)},
        "validation": reports, "skipped": skipped,
        "anonymization": {"applied": anonymize,
                          "touched": anon.touched if anon is not None else []},
    }
    atomic_write_json(tmp / MANIFEST, manifest)
    return manifest


def _episode_example(ep: Episode, status: str, with_image: bool,
                     anon: Anonymizer | None) -> tuple[list[bytes], int]:
    steps = ep.steps
    trimmed = 0
    if with_image:  # steps before the first camera frame have no image to export
        while trimmed < len(steps) and steps[trimmed]["frame"] < 0:
            trimmed += 1
        steps = steps[trimmed:]
    if not steps:
        raise ExportError(f"episode {ep.id} has no step with a camera frame")
    n = len(steps)
    user = ep.meta.get("metadata", {})
    if anon is not None:
        user = anon.scrub(user, f"{ep.id}.metadata")
    texts = {
        "language_instruction": [s["language_instruction"] for s in steps],
        "mode": [s["mode"] for s in steps],
    }
    if anon is not None:
        cache: dict[str, str] = {}
        texts["language_instruction"] = [
            cache.setdefault(t, anon.scrub(t, f"{ep.id}.steps.language_instruction"))
            for t in texts["language_instruction"]]
    flags = np.zeros(n, dtype=np.int64)
    first, last = flags.copy(), flags.copy()
    first[0], last[-1] = 1, 1
    skew = [s["frame_skew_ms"] if s["frame_skew_ms"] is not None else 0.0 for s in steps]
    feats: dict[str, list[bytes]] = {
        "steps/action": wire.float_feature(np.array([s["action"] for s in steps], np.float32)),
        "steps/observation/state": wire.float_feature(
            np.array([s["state"] for s in steps], np.float32).reshape(-1)),
        "steps/reward": wire.float_feature([s["reward"] for s in steps]),
        "steps/discount": wire.float_feature([s["discount"] for s in steps]),
        "steps/is_first": wire.int64_feature(first),
        "steps/is_last": wire.int64_feature(last),
        "steps/is_terminal": wire.int64_feature([int(s["is_terminal"]) for s in steps]),
        "steps/timestamp_ns": wire.int64_feature([round(s["t_wall"] * 1e9) for s in steps]),
        "steps/monotonic_ns": wire.int64_feature([round(s["t_mono"] * 1e9) for s in steps]),
        "steps/frame_skew_ms": wire.float_feature(skew),
        "steps/frame_new": wire.int64_feature([int(s["frame_new"]) for s in steps]),
        "steps/language_instruction": wire.bytes_feature([t.encode() for t in
                                                          texts["language_instruction"]]),
        "steps/mode": wire.bytes_feature([t.encode() for t in texts["mode"]]),
    }
    if with_image:
        feats["steps/observation/image"] = wire.bytes_feature(
            [ep.frames[s["frame"]].jpeg for s in steps])
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
        [round(ep.meta.get("started_wall", steps[0]["t_wall"]) * 1e9)])
    feats["episode_metadata/end_time_ns"] = wire.int64_feature(
        [round((ep.meta.get("ended_wall") or steps[-1]["t_wall"]) * 1e9)])
    return wire.example(feats), trimmed
