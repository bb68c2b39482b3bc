"""RLDS export: TFDS interop without TensorFlow, manifest, anonymisation, refusals.

TFDS (installed without TensorFlow) is the reference: its own FeaturesDict serialises the same
episode data and both results are parsed with the tf.train.Example protobuf class TFDS ships.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest

from brain.hardware.robot import FrameSlot
from brain.rlds import (
    EpisodeNotFound,
    ExportError,
    Recorder,
    load_episode,
    prepare_cloud_export,
)
from brain.rlds.store import LOG_FILE
from brain.rlds.synthetic import STATE_NAMES, run_ticks, sample_images
from brain.rlds.tfrecord import RecordReader

tfds = pytest.importorskip("tensorflow_datasets")
from google.protobuf import json_format  # noqa: E402
from tensorflow_datasets.proto import tf_example_pb2  # noqa: E402

SHAPE = (48, 64, 3)
META = {"state_names": list(STATE_NAMES), "operator": "Ann Example", "robot_id": "r-7",
        "hostname": "donkey-01.local", "note": "wifi 10.0.0.12 mac 02:42:ac:11:00:02, S/N 8F3A21",
        "simulator": {"track": "oval"}}


@pytest.fixture(scope="module")
def episodes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eps")
    slot, imgs = FrameSlot(), sample_images(SHAPE)
    rec = Recorder(root, slot, min_free_bytes=1 << 20)
    seq = run_ticks(rec, slot, 0.1, images=imgs)
    for _ in range(2):
        rec.start_episode(META)
        seq = run_ticks(rec, slot, 0.6, images=imgs, seq_start=seq)
        rec.stop_episode()
    return root


def _tfds_reference(features, ep) -> dict:
    steps = ep.steps
    n = len(steps)
    ex = {
        "steps": {
            "observation": {"image": [io.BytesIO(ep.frames[s["frame"]].jpeg) for s in steps],
                            "state": np.array([s["state"] for s in steps], np.float32)},
            "action": np.array([s["action"] for s in steps], np.float32),
            "reward": np.array([s["reward"] for s in steps], np.float32),
            "discount": np.array([s["discount"] for s in steps], np.float32),
            "is_first": np.arange(n) == 0, "is_last": np.arange(n) == n - 1,
            "is_terminal": np.array([s["is_terminal"] for s in steps]),
            "timestamp_ns": np.array([round(s["t_wall"] * 1e9) for s in steps], np.int64),
            "monotonic_ns": np.array([round(s["t_mono"] * 1e9) for s in steps], np.int64),
            "frame_skew_ms": np.array([s["frame_skew_ms"] for s in steps], np.float32),
            "frame_new": np.array([s["frame_new"] for s in steps]),
            "language_instruction": [s["language_instruction"] for s in steps],
            "mode": [s["mode"] for s in steps],
        },
        "episode_metadata": {
            "episode_id": ep.id, "robot_id": "r-7", "robot_profile": "", "model_id": "",
            "operator": "Ann Example", "status": "ok", "state_names": ",".join(STATE_NAMES),
            "simulator": json.dumps({"track": "oval"}),
            "metadata_json": json.dumps(ep.meta["metadata"], sort_keys=True),
            "start_time_ns": round(ep.meta["started_wall"] * 1e9),
            "end_time_ns": round(ep.meta["ended_wall"] * 1e9),
        },
    }
    return features.serialize_example(ex)


def test_export_parses_equal_to_tfds_serialisation(episodes, tmp_path):
    out = tmp_path / "ds"
    manifest = prepare_cloud_export(episodes, out, origin="pi5")
    names = sorted(os.listdir(out))
    assert names == ["brain_episodes-train.tfrecord-00000-of-00001", "dataset_info.json",
                     "export_manifest.json", "features.json"]
    builder = tfds.builder_from_directory(str(out))  # TFDS accepts our metadata
    assert builder.info.splits["train"].shard_lengths == [2]
    features = builder.info.features
    # features.json is exactly what TFDS writes for the same FeaturesDict.
    ours = json.loads((out / "features.json").read_text())
    assert json_format.MessageToDict(features.to_proto()) == ours
    with open(out / names[0], "rb") as fh:
        records = list(RecordReader(fh))
    assert len(records) == 2
    for rec, entry in zip(records, manifest["episodes"], strict=True):
        ep = load_episode(episodes, entry["id"])
        got, want = tf_example_pb2.Example(), tf_example_pb2.Example()
        got.ParseFromString(rec)
        want.ParseFromString(_tfds_reference(features, ep))
        assert got == want
        imgs = got.features.feature["steps/observation/image"].bytes_list.value
        assert len(imgs) == len(ep.steps) and imgs[0] == ep.frames[0].jpeg  # copied, not re-encoded
    # The manifest covers every file by sha256 and size, and carries the origin and report.
    assert manifest["origin"] == "pi5" and manifest["counts"]["episodes"] == 2
    assert [r["status"] for r in manifest["validation"]] == ["ok", "ok"]
    for f in manifest["files"]:
        data = (out / f["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == f["sha256"] and len(data) == f["bytes"]
    assert json.loads((out / "export_manifest.json").read_text()) == manifest


def test_anonymize_hashes_identity_everywhere(episodes, tmp_path):
    out = tmp_path / "anon"
    manifest = prepare_cloud_export(episodes, out, anonymize=True, origin="lab")
    blob = b"".join(p.read_bytes() for p in out.iterdir())
    for secret in (b"Ann Example", b"donkey-01", b"10.0.0.12", b"02:42:ac:11:00:02", b"8F3A21"):
        assert secret not in blob, secret
    touched = {(t["field"].split(".", 1)[1], t["action"]) for t in
               manifest["anonymization"]["touched"]}
    assert ("metadata.operator", "hashed") in touched
    assert ("metadata.hostname", "hashed") in touched
    assert {"hashed 1 ipv4 in text", "hashed 1 mac in text", "hashed 1 serial in text"} <= {
        a for f, a in touched if f == "metadata.note"}
    assert manifest["anonymization"]["applied"] and manifest["origin"] == "lab"
    assert b"r-7" in blob  # the robot id is not personal and stays


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_bad_input_changes_nothing(episodes, tmp_path):
    before = _snapshot(episodes)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("keep")
    with pytest.raises(ExportError, match="not empty"):
        prepare_cloud_export(episodes, busy)
    with pytest.raises(EpisodeNotFound, match="no episode 'nope'"):
        prepare_cloud_export(episodes, tmp_path / "a", episode_ids=["nope"])
    assert sorted(os.listdir(tmp_path)) == ["busy"] and (busy / "x").read_text() == "keep"
    assert _snapshot(episodes) == before


def test_corrupt_episode_refused(episodes, tmp_path):
    import shutil
    root = tmp_path / "eps"
    shutil.copytree(episodes, root)
    eid = sorted(os.listdir(root))[1]
    log = root / eid / LOG_FILE
    data = bytearray(log.read_bytes())
    data[-40] ^= 0x10
    log.write_bytes(bytes(data))
    with pytest.raises(ExportError, match=f"episode {eid} is corrupt .*CRC mismatch"):
        prepare_cloud_export(root, tmp_path / "out")
    assert not any(p.name.startswith((".out", "out")) for p in tmp_path.iterdir())
    ok = sorted(os.listdir(root))[0]
    m = prepare_cloud_export(root, tmp_path / "out", episode_ids=[ok])
    assert [e["id"] for e in m["episodes"]] == [ok]
