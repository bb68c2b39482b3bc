"""RLDS export across worker processes: the same dataset as one process, shard lengths exact,
errors from any worker, the daemon's export kept out of its own process.

Episodes are recorded by the real Recorder (synthetic camera and ticks, small frames); workers
are real forkserver processes.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest

import brain.rlds.export as export
from brain.commands import NotFound, Refused
from brain.hardware.robot import FrameSlot
from brain.paths import StateLayout
from brain.procs import WORKER_NICE, run_niced
from brain.rlds import ExportError, Recorder, load_episode, prepare_cloud_export
from brain.rlds.store import LOG_FILE
from brain.rlds.synthetic import STATE_NAMES, run_ticks, sample_images
from brain.rlds.tfrecord import RecordReader
from tests.api_support.light_service import LightService

SHAPE = (24, 32, 3)
EPISODES = 5


@pytest.fixture(scope="module")
def episodes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eps")
    slot, imgs = FrameSlot(), sample_images(SHAPE)
    rec = Recorder(root, slot, min_free_bytes=1 << 20)
    seq = run_ticks(rec, slot, 0.05, images=imgs)
    for n in range(EPISODES):
        rec.start_episode({"state_names": list(STATE_NAMES), "operator": f"op-{n % 2}",
                           "hostname": "donkey-01.local"})
        seq = run_ticks(rec, slot, 0.3, images=imgs, seq_start=seq)
        rec.stop_episode()
    return root


def _records(out: Path) -> tuple[list[str], list[list[bytes]]]:
    """Shard names in order and the records of each."""
    names = sorted(p.name for p in out.iterdir() if ".tfrecord-" in p.name)
    shards = []
    for name in names:
        with open(out / name, "rb") as fh:
            reader = RecordReader(fh)
            shards.append(list(reader))
            assert reader.error is None
    return names, shards


@pytest.mark.parametrize("workers", [2, 3, EPISODES])
def test_workers_write_the_same_dataset_as_one_process(episodes, tmp_path, workers):
    one = prepare_cloud_export(episodes, tmp_path / "one", workers=1)
    many = prepare_cloud_export(episodes, tmp_path / "many", workers=workers)
    names1, shards1 = _records(tmp_path / "one")
    names, shards = _records(tmp_path / "many")
    # Same episodes, same order, byte-identical examples; only their grouping into shards differs.
    assert [r for s in shards for r in s] == [r for s in shards1 for r in s]
    assert len(shards) == workers and len(shards1) == 1
    assert names == [f"brain_episodes-train.tfrecord-{i:05d}-of-{workers:05d}"
                     for i in range(workers)]
    info = json.loads((tmp_path / "many" / "dataset_info.json").read_text())
    assert info["splits"][0]["shardLengths"] == [str(len(s)) for s in shards]
    assert int(info["splits"][0]["numBytes"]) == sum(
        (tmp_path / "many" / n).stat().st_size for n in names)
    assert [e["id"] for e in many["episodes"]] == sorted(os.listdir(episodes))
    assert [(e["id"], e["steps"]) for e in many["episodes"]] == \
        [(e["id"], e["steps"]) for e in one["episodes"]]
    for e in many["episodes"]:  # each entry names the shard that holds it
        with open(tmp_path / "many" / e["shard"], "rb") as fh:
            assert any(e["id"].encode() in rec for rec in RecordReader(fh))
    assert many["validation"] == one["validation"] and many["counts"]["steps"] == \
        one["counts"]["steps"] and many["counts"]["shards"] == workers
    for f in many["files"]:
        assert (tmp_path / "many" / f["path"]).stat().st_size == f["bytes"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_anonymisation_agrees_across_workers(episodes, tmp_path):
    """One salt per export: the same operator hashes to the same token in every worker."""
    m = prepare_cloud_export(episodes, tmp_path / "anon", workers=EPISODES, anonymize=True)
    blob = b"".join(p.read_bytes() for p in (tmp_path / "anon").iterdir())
    assert b"op-0" not in blob and b"donkey-01" not in blob
    _names, shards = _records(tmp_path / "anon")
    by_operator: dict[str, set[str]] = {}
    for (rec,), entry in zip(shards, m["episodes"], strict=True):  # one episode per shard
        meta = rec[rec.index(b'{"hostname"'):]
        token = json.loads(meta[:meta.index(b"}") + 1])["operator"]
        operator = load_episode(episodes, entry["id"]).meta["metadata"]["operator"]
        by_operator.setdefault(operator, set()).add(token)
    assert sorted(map(len, by_operator.values())) == [1, 1], by_operator
    assert len(set.union(*by_operator.values())) == 2
    assert sum(t["field"].endswith("metadata.operator") for t in
               m["anonymization"]["touched"]) == EPISODES


def test_split_is_contiguous_balanced_and_never_empty():
    ids = [f"e{i}" for i in range(6)]
    assert export._split(ids, [10] * 6, 3) == [["e0", "e1"], ["e2", "e3"], ["e4", "e5"]]
    assert export._split(ids, [100, 1, 1, 1, 1, 1], 2) == [["e0"], ["e1", "e2", "e3", "e4", "e5"]]
    assert export._split(ids[:3], [0, 0, 0], 3) == [["e0"], ["e1"], ["e2"]]
    assert export._split(ids, [1, 1, 1, 1, 1, 100], 3) == [["e0", "e1", "e2", "e3"], ["e4"],
                                                            ["e5"]]


def test_auto_workers_by_bytes_and_episodes(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3})
    big = export._MIN_BYTES_PER_WORKER
    assert export._auto_workers([1000, 1000]) == 1  # small: not worth a process
    assert export._auto_workers([big] * 3) == 3
    assert export._auto_workers([10 * big]) == 1  # one episode is never split
    assert export._auto_workers([big] * 9) == 4  # no more than the CPUs


def test_corrupt_episode_in_a_later_worker_fails_the_export(episodes, tmp_path):
    import shutil
    root = tmp_path / "eps"
    shutil.copytree(episodes, root)
    eid = sorted(os.listdir(root))[-1]
    data = bytearray((root / eid / LOG_FILE).read_bytes())
    data[-40] ^= 0x10
    (root / eid / LOG_FILE).write_bytes(bytes(data))
    with pytest.raises(ExportError, match=f"episode {eid} is corrupt .*CRC mismatch"):
        prepare_cloud_export(root, tmp_path / "out", workers=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eps"]  # no output, no temp dir


def test_bad_worker_count_refused(episodes, tmp_path):
    for bad in (0, -1, 1.5):
        with pytest.raises(ExportError, match="workers must be a positive integer"):
            prepare_cloud_export(episodes, tmp_path / "x", workers=bad)
    assert not list(tmp_path.iterdir())


def _broken_load(*_a, **_k):
    raise RuntimeError("validated in the calling process")


def test_isolate_runs_the_work_in_another_process(episodes, tmp_path, monkeypatch):
    """A validator broken in this process only: the in-process export trips on it, the isolated
    one does not (its worker imported the module afresh)."""
    monkeypatch.setattr(export, "validate_episode", _broken_load)
    with pytest.raises(RuntimeError, match="calling process"):
        prepare_cloud_export(episodes, tmp_path / "here", workers=1)
    m = prepare_cloud_export(episodes, tmp_path / "there", workers=1, isolate=True)
    assert m["counts"]["episodes"] == EPISODES and m["counts"]["shards"] == 1


def test_workers_run_niced():
    assert run_niced(os.getpriority, os.PRIO_PROCESS, 0) >= WORKER_NICE


def test_daemon_export_returns_an_archive_and_maps_errors(episodes, tmp_path, monkeypatch):
    root = StateLayout(tmp_path / "state").episodes
    root.parent.mkdir(parents=True)
    os.symlink(episodes, root)
    light = LightService(tmp_path / "state")
    light.cfg.export.origin = "lab-3"
    try:
        monkeypatch.setattr(export, "validate_episode", _broken_load)  # the work is elsewhere
        ids = sorted(os.listdir(episodes))[:2]
        done = light.call("episodes.export", ids=ids, anonymize=True)
        archive = tmp_path / "state" / "exports" / done["name"]
        assert archive.suffix == ".tar" and done["size"] == archive.stat().st_size
        assert sorted(os.listdir(archive.parent)) == [archive.name]  # directory, temp file gone
        with tarfile.open(archive) as tar:
            manifest = json.load(tar.extractfile(f"{archive.stem}/export_manifest.json"))
        assert manifest["origin"] == "lab-3" and [e["id"] for e in manifest["episodes"]] == ids
        assert manifest["anonymization"]["applied"]
        with pytest.raises(NotFound, match="nope"):
            light.call("episodes.export", ids=["nope"], anonymize=False)
        ep = load_episode(episodes, ids[0])
        assert ep.steps  # a real episode, refused only because its log is damaged below
        os.unlink(root)
        shutil.copytree(episodes, root)
        data = bytearray((root / ids[0] / LOG_FILE).read_bytes())
        data[-40] ^= 0x10
        (root / ids[0] / LOG_FILE).write_bytes(bytes(data))
        with pytest.raises(Refused, match="corrupt"):
            light.call("episodes.export", ids=[ids[0]], anonymize=False)
        assert sorted(os.listdir(archive.parent)) == [archive.name]
    finally:
        light.close()


def _stream(damage: str) -> bytes:
    import io

    from brain.rlds.tfrecord import write_record
    fh = io.BytesIO()
    for n in range(3):
        write_record(fh, b"record %d " % n * (n + 1))
    data = bytearray(fh.getvalue())
    if damage == "data crc":
        data[30] ^= 1
    elif damage == "length crc":
        data[8] ^= 1
    elif damage == "huge length":
        data[7] = 0x7F
    elif damage == "torn data":
        del data[-3:]
    elif damage == "torn header":
        data += b"\x05\x00"
    return bytes(data)


@pytest.mark.parametrize("damage", ["none", "data crc", "length crc", "huge length",
                                    "torn data", "torn header"])
def test_buffer_reader_matches_stream_reader(damage):
    """The in-memory reader export loads logs with finds what the stream reader finds."""
    import io

    from brain.rlds.tfrecord import BufferReader
    data = _stream(damage)
    a, b = RecordReader(io.BytesIO(data)), BufferReader(data)
    assert list(a) == list(b)
    assert (a.error, a.end, a.count, a.torn) == (b.error, b.end, b.count, b.torn)
    assert (a.error is None) == (damage == "none")
