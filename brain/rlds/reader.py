"""Reading an RLDS export back (`brain episodes export`, `prepare_cloud_export`): verify it
against its manifest, then iterate over its episodes. Used by the cloud companion (tools/), so
the robot's writer and the companion's reader live side by side in one package.

Each record is a `tf.train.Example` (one per episode, see export.py). It is parsed with the
protobuf runtime (upb), not by hand: the message classes are built at import time from a
descriptor of tensorflow/core/example/{example,feature}.proto (field numbers and types only),
so no TensorFlow is needed. Writing stays hand-made for speed (example_wire.py); reading is not
on the robot's hot path, and a second, independent implementation is what makes the writer's
tests mean something.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from brain.durable import sha256_file
from brain.rlds.schema import IMAGE_FEATURE
from brain.rlds.tfrecord import RecordReader

MANIFEST = "export_manifest.json"


class ExportReadError(ValueError):
    """The export is missing, damaged or not what its manifest says; the message says which."""


def _example_class() -> Any:
    """`tensorflow.Example` (proto3) from field numbers alone."""
    f = descriptor_pb2.FileDescriptorProto(name="brain_rlds_example.proto",
                                           package="tensorflow", syntax="proto3")
    T = descriptor_pb2.FieldDescriptorProto
    REP, OPT = T.LABEL_REPEATED, T.LABEL_OPTIONAL

    def message(name: str, *fields: tuple[str, int, int, int, str]) -> None:
        m = f.message_type.add(name=name)
        for fname, number, ftype, label, type_name in fields:
            m.field.add(name=fname, number=number, type=ftype, label=label,
                        type_name=type_name or None)

    message("BytesList", ("value", 1, T.TYPE_BYTES, REP, ""))
    message("FloatList", ("value", 1, T.TYPE_FLOAT, REP, ""))
    message("Int64List", ("value", 1, T.TYPE_INT64, REP, ""))
    feature = f.message_type.add(name="Feature")
    feature.oneof_decl.add(name="kind")
    for fname, number, tname in (("bytes_list", 1, ".tensorflow.BytesList"),
                                 ("float_list", 2, ".tensorflow.FloatList"),
                                 ("int64_list", 3, ".tensorflow.Int64List")):
        feature.field.add(name=fname, number=number, type=T.TYPE_MESSAGE, label=OPT,
                          type_name=tname, oneof_index=0)
    features = f.message_type.add(name="Features")
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=T.TYPE_STRING, label=OPT)
    entry.field.add(name="value", number=2, type=T.TYPE_MESSAGE, label=OPT,
                    type_name=".tensorflow.Feature")
    features.field.add(name="feature", number=1, type=T.TYPE_MESSAGE, label=REP,
                       type_name=".tensorflow.Features.FeatureEntry")
    message("Example", ("features", 1, T.TYPE_MESSAGE, OPT, ".tensorflow.Features"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.Example"))


Example = _example_class()


@dataclass
class ExportedEpisode:
    """One episode of an export, columns as numpy arrays (steps in order)."""
    id: str
    shard: str
    metadata: dict[str, Any]  # the episode_metadata texts (metadata_json decoded)
    actions: np.ndarray  # steps x action dims, float32
    images: list[bytes]  # one JPEG per step (steps share a frame until frame_new)
    frame_new: np.ndarray  # bool per step: the first step to show its frame
    columns: dict[str, Any]  # every other step feature, by its RLDS name

    def __len__(self) -> int:
        return len(self.actions)


def read_manifest(export_dir: Path) -> dict[str, Any]:
    path = Path(export_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ExportReadError(f"{export_dir}: no {MANIFEST}; not an export made by brain "
                              "(`brain episodes export --format rlds`)") from None
    except (OSError, ValueError) as e:
        raise ExportReadError(f"{path}: unreadable: {e}") from None
    kind = manifest.get("kind") if isinstance(manifest, dict) else None
    if kind != "rlds-tfds" or manifest.get("format") != 1:
        raise ExportReadError(f"{path}: not an RLDS export manifest of format 1 "
                              f"(kind {kind!r})")
    for key in ("files", "episodes", "counts"):
        if not isinstance(manifest.get(key), list if key != "counts" else dict):
            raise ExportReadError(f"{path}: field {key!r} is missing or of the wrong type")
    return manifest


def verify_export(export_dir: Path) -> dict[str, Any]:
    """Every file the manifest lists has its size and sha256, the metadata files parse, and
    the counts add up; returns the manifest. Nothing beyond the manifest's files is read."""
    export_dir = Path(export_dir)
    manifest = read_manifest(export_dir)
    for entry in manifest["files"]:
        name = entry.get("path", "")
        if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
            raise ExportReadError(f"{MANIFEST}: bad file name {name!r}")
        path = export_dir / name
        if not path.is_file():
            raise ExportReadError(f"{path}: listed in {MANIFEST} but missing")
        size = path.stat().st_size
        if size != entry.get("bytes"):
            raise ExportReadError(f"{path}: {size} bytes, the manifest says {entry.get('bytes')}")
        if sha256_file(path) != entry.get("sha256"):
            raise ExportReadError(f"{path}: sha256 differs from the manifest (damaged or "
                                  "changed after export)")
    for meta in ("features.json", "dataset_info.json"):
        try:
            json.loads((export_dir / meta).read_text())
        except (OSError, ValueError) as e:
            raise ExportReadError(f"{export_dir / meta}: {e}") from None
    episodes = manifest["episodes"]
    counts = manifest["counts"]
    if counts.get("episodes") != len(episodes) or \
            counts.get("steps") != sum(int(e.get("steps", 0)) for e in episodes):
        raise ExportReadError(f"{MANIFEST}: counts do not add up to its episode list")
    return manifest


def iter_episodes(export_dir: Path, manifest: dict[str, Any] | None = None
                  ) -> Iterator[ExportedEpisode]:
    """The export's episodes in order, parsed. Pass the manifest `verify_export` returned to
    read exactly what was verified."""
    export_dir = Path(export_dir)
    manifest = manifest or read_manifest(export_dir)
    by_shard: dict[str, list[dict[str, Any]]] = {}
    for e in manifest["episodes"]:
        by_shard.setdefault(e["shard"], []).append(e)
    for shard, entries in by_shard.items():
        with open(export_dir / shard, "rb") as fh:
            reader = RecordReader(fh)
            records = list(reader)
        if reader.error or len(records) != len(entries):
            raise ExportReadError(f"{export_dir / shard}: {reader.error or 'record count'} "
                                  f"({len(records)} records, {len(entries)} episodes listed)")
        for entry, record in zip(entries, records, strict=True):
            yield _episode(record, entry, shard)


def _values(feature: Any) -> Any:
    kind = feature.WhichOneof("kind")
    return getattr(feature, kind).value if kind else []


def _episode(record: bytes, entry: dict[str, Any], shard: str) -> ExportedEpisode:
    ex = Example()
    try:
        ex.ParseFromString(record)
    except Exception as e:  # protobuf's DecodeError
        raise ExportReadError(f"{shard}: episode {entry.get('id')}: not an Example: {e}") from None
    feats = ex.features.feature
    steps = {k[len("steps/"):]: _values(v) for k, v in feats.items() if k.startswith("steps/")}
    meta = {k[len("episode_metadata/"):]: _values(v)
            for k, v in feats.items() if k.startswith("episode_metadata/")}
    metadata = {k: (v[0].decode() if v and isinstance(v[0], bytes) else (v[0] if v else None))
                for k, v in meta.items()}
    user = metadata.pop("metadata_json", None)
    if isinstance(user, str) and user:
        metadata["metadata"] = json.loads(user)
    eid = metadata.get("episode_id") or entry.get("id", "?")
    n = len(steps.get("is_first", []))
    if not n or "action" not in steps or IMAGE_FEATURE not in steps:
        raise ExportReadError(f"{shard}: episode {eid}: no steps with actions and images")
    actions = np.asarray(steps.pop("action"), np.float32)
    if actions.size % n:
        raise ExportReadError(f"{shard}: episode {eid}: {actions.size} action values for "
                              f"{n} steps")
    images = list(steps.pop(IMAGE_FEATURE))
    frame_new = np.asarray(steps.pop("frame_new", [1] * n), bool)
    if len(images) != n or len(frame_new) != n:
        raise ExportReadError(f"{shard}: episode {eid}: {len(images)} images, "
                              f"{len(frame_new)} frame flags for {n} steps")
    return ExportedEpisode(id=eid, shard=shard, metadata=metadata,
                           actions=actions.reshape(n, -1), images=images, frame_new=frame_new,
                           columns={k: list(v) for k, v in steps.items()})
