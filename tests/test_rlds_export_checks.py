"""Export's late checks: the log CRCs and JPEG headers are checked while the record is being
hashed and written, not before (see brain/rlds/export.py). These tests damage real recorded
episodes on disk in every way the late checks must catch, and check that the export refuses
with the same reasons `validate` gives and publishes nothing; and that the whole-log CRC the
recorder and recovery store is right and, when it is wrong, never decides on its own.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from crc32c import crc32c

from brain.hardware.robot import FrameSlot
from brain.rlds import ExportError, Recorder, prepare_cloud_export, recover, validate_episode
from brain.rlds.logformat import FRAME_HEAD_SIZE
from brain.rlds.store import EPISODE_FILE, LOG_FILE, load_episode
from brain.rlds.synthetic import STATE_NAMES, run_ticks, sample_images
from brain.rlds.tfrecord import BufferReader, RecordReader, write_record

SHAPE = (48, 64, 3)


def _record(root: Path) -> str:
    slot, imgs = FrameSlot(), sample_images(SHAPE)
    rec = Recorder(root, slot, min_free_bytes=1 << 20)
    seq = run_ticks(rec, slot, 0.1, images=imgs)
    eid = rec.start_episode({"state_names": list(STATE_NAMES)})
    run_ticks(rec, slot, 0.5, images=imgs, seq_start=seq)
    rec.stop_episode()
    rec.close()
    return eid


def _meta(root: Path, eid: str) -> dict:
    return json.loads((root / eid / EPISODE_FILE).read_text())


def _refused(root: Path, out: Path, eid: str) -> str:
    with pytest.raises(ExportError, match=f"episode {eid} is corrupt") as err:
        prepare_cloud_export(root, out)
    assert not out.exists() and not any(p.name.startswith(".out") for p in out.parent.iterdir())
    return str(err.value)


def test_recorder_stores_the_whole_log_crc(tmp_path):
    eid = _record(tmp_path)
    data = (tmp_path / eid / LOG_FILE).read_bytes()
    meta = _meta(tmp_path, eid)
    assert meta["log_bytes"] == len(data) and meta["log_crc32c"] == crc32c(data)
    ep = load_episode(tmp_path, eid, defer_crcs=True)
    assert ep.whole_log_crc == crc32c(data) and ep.verify_log() is None


def test_recovery_stores_the_whole_log_crc_of_the_cut_log(tmp_path):
    eid = _record(tmp_path)
    meta = _meta(tmp_path, eid)
    meta["status"] = "recording"  # as if killed: recovery must cut the torn tail
    del meta["log_crc32c"]
    (tmp_path / eid / EPISODE_FILE).write_text(json.dumps(meta))
    with open(tmp_path / eid / LOG_FILE, "ab") as fh:
        fh.write(b"\x30\x00\x00")  # a torn record header
    recover(tmp_path)
    data = (tmp_path / eid / LOG_FILE).read_bytes()
    assert _meta(tmp_path, eid)["log_crc32c"] == crc32c(data)
    assert load_episode(tmp_path, eid, defer_crcs=True).verify_log() is None


@pytest.mark.parametrize("where", ["jpeg", "step"])
def test_damage_caught_late_refuses_the_export(tmp_path, where):
    """A flipped byte in a JPEG, or in a step's JSON such that it still parses (a digit): only
    the late CRC check can see either; the export must refuse and name the bad record."""
    root = tmp_path / "eps"
    eid = _record(root)
    log = root / eid / LOG_FILE
    data = bytearray(log.read_bytes())
    records = list(RecordReader(io.BytesIO(bytes(data))))
    kind = b"F" if where == "jpeg" else b"S"
    n, rec = next((n, r) for n, r in enumerate(records) if r[:1] == kind and n > 3)
    start = sum(len(r) + 16 for r in records[:n]) + 12
    if where == "jpeg":
        at = start + FRAME_HEAD_SIZE + len(rec) // 2
        data[at] ^= 0x01
    else:
        at = start + rec.index(b'"reward":') + len(b'"reward":')
        assert chr(data[at]).isdigit()
        data[at] = ord("7") if data[at] != ord("7") else ord("3")
        json.loads(bytes(data[start + 1:start + len(rec)]))  # still valid JSON
    log.write_bytes(bytes(data))
    why = _refused(root, tmp_path / "out", eid)
    assert f"data CRC mismatch in record {n} " in why
    assert validate_episode(root, eid)["status"] == "corrupt"


def test_damaged_length_field_refuses_the_export(tmp_path):
    """A record length that points elsewhere: the deferred walk misreads the log; the export
    must still refuse with validate's reason, not crash or export garbage."""
    root = tmp_path / "eps"
    eid = _record(root)
    log = root / eid / LOG_FILE
    data = bytearray(log.read_bytes())
    first = int.from_bytes(data[:8], "little")
    data[0:8] = (first + 16).to_bytes(8, "little")  # swallows the next record's header
    log.write_bytes(bytes(data))
    why = _refused(root, tmp_path / "out", eid)
    assert "length CRC mismatch in record 0" in why


def test_jpeg_that_does_not_decode_refuses_the_export(tmp_path):
    """Intact CRCs, but a frame whose bytes are not a JPEG (as a recorder bug would write):
    the late JPEG check refuses it."""
    root = tmp_path / "eps"
    eid = _record(root)
    log = root / eid / LOG_FILE
    records = list(RecordReader(io.BytesIO(log.read_bytes())))
    n = max(i for i, r in enumerate(records) if r[:1] == b"F")
    records[n] = records[n][:FRAME_HEAD_SIZE] + b"not a jpeg" * 50
    buf = io.BytesIO()
    for r in records:
        write_record(buf, r)
    log.write_bytes(buf.getvalue())
    meta = _meta(root, eid)
    meta.update(log_bytes=len(buf.getvalue()), log_crc32c=crc32c(buf.getvalue()))
    (root / eid / EPISODE_FILE).write_text(json.dumps(meta))
    why = _refused(root, tmp_path / "out", eid)
    assert "JPEG header does not decode" in why


def test_a_wrong_whole_log_crc_does_not_decide(tmp_path):
    """The whole-log CRC only ever proves a log whole; when it disagrees, the per-record CRCs
    decide (an edited episode.json must not make a sound episode unexportable)."""
    root = tmp_path / "eps"
    eid = _record(root)
    meta = _meta(root, eid)
    meta["log_crc32c"] ^= 1
    (root / eid / EPISODE_FILE).write_text(json.dumps(meta))
    manifest = prepare_cloud_export(root, tmp_path / "out")
    assert [e["id"] for e in manifest["episodes"]] == [eid]


def test_deferred_walk_finds_what_the_checking_walk_finds(tmp_path):
    """Over every single-byte flip of a small log: a deferred walk plus check_deferred() reports
    a problem exactly when the checking walk does (the words may differ; where the walk stops
    early, the structural error is the same)."""
    buf = io.BytesIO()
    for n in range(4):
        write_record(buf, b"record %d " % n * (n + 2))
    clean = buf.getvalue()
    for at in range(len(clean)):
        data = bytearray(clean)
        data[at] ^= 0x04
        checking = BufferReader(bytes(data))
        list(checking)
        deferred = BufferReader(bytes(data), defer_crcs=True)
        list(deferred)
        late = deferred.error or deferred.check_deferred()
        assert (checking.error is None) == (late is None), (at, checking.error, late)


def test_whole_crc_covers_exactly_the_file(tmp_path):
    eid = _record(tmp_path)
    with open(tmp_path / eid / LOG_FILE, "ab") as fh:
        fh.write(os.urandom(3))  # bytes the recorder never wrote: the stored CRC does not apply
    ep = load_episode(tmp_path, eid, defer_crcs=True)
    assert ep.whole_log_crc is None
