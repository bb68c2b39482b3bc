"""Recorder, log framing, validation and crash recovery (synthetic 50 Hz ticks, 30 fps camera
phase-locked like the simulator's; real files in a temp dir)."""

from __future__ import annotations

import io
import json
import os
import subprocess
from pathlib import Path

import pytest

from brain.hardware.robot import FrameSlot
from brain.rlds import (
    EpisodeBusy,
    EpisodeNotFound,
    Recorder,
    RecorderError,
    delete_episode,
    list_episodes,
    load_episode,
    recover,
    validate_all,
    validate_episode,
)
from brain.rlds.store import LOG_FILE
from brain.rlds.synthetic import STATE_NAMES, run_ticks, sample_images
from brain.rlds.tfrecord import RecordReader, write_record

SHAPE = (48, 64, 3)


def record(episodes: Path, n: int = 1, seconds: float = 1.0, **kw) -> list[str]:
    slot, imgs, seq, ids = FrameSlot(), sample_images(SHAPE), 0, []
    rec = Recorder(episodes, slot, min_free_bytes=1 << 20, **kw)
    seq = run_ticks(rec, slot, 0.1, images=imgs)  # camera already running, as in the daemon
    for _ in range(n):
        ids.append(rec.start_episode({"state_names": list(STATE_NAMES), "operator": "ann"}))
        seq = run_ticks(rec, slot, seconds, images=imgs, seq_start=seq)
        rec.stop_episode()
    rec.close()
    return ids


def test_tfrecord_roundtrip_torn_and_corrupt():
    buf = io.BytesIO()
    for data in (b"a", b"", b"x" * 1000):
        write_record(buf, data)
    raw = buf.getvalue()
    r = RecordReader(io.BytesIO(raw))
    assert list(r) == [b"a", b"", b"x" * 1000] and r.error is None and r.end == len(raw)
    r = RecordReader(io.BytesIO(raw[:-3]))  # torn tail: last record cut short
    assert list(r) == [b"a", b""] and r.torn and r.end == 17 + 16
    bad = bytearray(raw)
    bad[-10] ^= 0xFF
    r = RecordReader(io.BytesIO(bytes(bad)))
    assert len(list(r)) == 2 and "data CRC mismatch" in r.error and not r.torn


def test_recorded_episode_validates_ok(tmp_path):
    (eid,) = record(tmp_path)
    rep = validate_episode(tmp_path, eid)
    assert rep["status"] == "ok", rep
    assert rep["steps"] == 50 and 28 <= rep["frames"] <= 31
    assert rep["skew_p99_ms"] == 0.0  # the camera is phase-locked to the ticks
    ep = load_episode(tmp_path, eid)
    assert ep.meta["status"] == "complete" and ep.meta["image_shape"] == list(SHAPE)
    assert ep.meta["dropped_frames"] == 0 and ep.meta["dropped_steps"] == 0
    # Each JPEG stored once; steps reference frames in order and say when one is new.
    refs = [s["frame"] for s in ep.steps]
    assert refs == sorted(refs) and set(refs) == set(range(len(ep.frames)))
    assert sum(s["frame_new"] for s in ep.steps) == len(ep.frames)
    for s in ep.steps:
        fr = ep.frames[s["frame"]]
        assert fr.t_capture <= s["t_mono"] + 1e-6
        assert s["frame_skew_ms"] == pytest.approx((s["t_mono"] - fr.t_capture) * 1000)
    assert list_episodes(tmp_path)[0]["status"] == "complete"


def test_corrupted_byte_in_finished_episode_is_detected(tmp_path):
    (eid,) = record(tmp_path)
    log = tmp_path / eid / LOG_FILE
    data = bytearray(log.read_bytes())
    data[len(data) // 2] ^= 0x01
    log.write_bytes(bytes(data))
    rep = validate_all(tmp_path)[0]
    assert rep["status"] == "corrupt" and any("CRC mismatch" in r for r in rep["reasons"])
    assert recover(tmp_path) == []  # recovery never "repairs" a closed episode
    assert log.read_bytes() == bytes(data)


def test_recovery_cuts_torn_tail_and_marks_incomplete(tmp_path):
    (eid,) = record(tmp_path)
    ep_dir = tmp_path / eid
    meta = json.loads((ep_dir / "episode.json").read_text())
    meta["status"] = "recording"  # as if the recorder had been killed
    (ep_dir / "episode.json").write_text(json.dumps(meta))
    log = ep_dir / LOG_FILE
    whole = log.stat().st_size
    with open(log, "ab") as fh:
        fh.write(b"\x99" * 7)  # torn record header
    (actions,) = recover(tmp_path)
    assert actions["action"] == "marked incomplete" and actions["cut_bytes"] == 7
    assert log.stat().st_size == whole and actions["steps"] == 50
    rep = validate_episode(tmp_path, eid)
    assert rep["status"] == "incomplete" and rep["steps"] == 50
    assert "did not close normally" in rep["reasons"][0]


def test_delete_refuses_open_episode_and_unknown_id(tmp_path):
    slot = FrameSlot()
    rec = Recorder(tmp_path, slot, min_free_bytes=1 << 20)
    eid = rec.start_episode({})
    with pytest.raises(EpisodeBusy):
        delete_episode(tmp_path, eid)
    assert recover(tmp_path) == []  # a live recorder's episode is left alone
    with pytest.raises(RecorderError, match="already recording"):
        rec.start_episode({})
    rec.stop_episode()
    with pytest.raises(RecorderError, match="no episode is recording"):
        rec.stop_episode()
    with pytest.raises(EpisodeNotFound):
        delete_episode(tmp_path, "nope")
    with pytest.raises(EpisodeNotFound):
        delete_episode(tmp_path, "../etc")
    delete_episode(tmp_path, eid)
    assert list_episodes(tmp_path) == []


def test_on_step_ignored_when_not_recording(tmp_path):
    rec = Recorder(tmp_path, None, min_free_bytes=1 << 20)
    rec.on_step(object())  # type: ignore[arg-type]  # never raises on the control thread
    assert rec.status()["recording"] is False


def test_disk_guard_refuses_start(tmp_path):
    rec = Recorder(tmp_path, None, min_free_bytes=1 << 60)
    with pytest.raises(RecorderError, match="below the .* MiB minimum"):
        rec.start_episode({})
    assert list(tmp_path.iterdir()) == []  # nothing created


@pytest.fixture
def small_fs(tmp_path):
    """A 6 MiB tmpfs: a real filesystem that fills up (needs root; skipped otherwise)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs",
                                            str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_disk_guard_stops_cleanly_when_crossing(small_fs):
    import numpy as np
    rng = np.random.default_rng(1)
    noise = [rng.integers(0, 255, (240, 320, 3), dtype=np.uint8) for _ in range(4)]  # ~100 KB
    slot = FrameSlot()
    rec = Recorder(small_fs, slot, min_free_bytes=3 << 20, jpeg_quality=95)
    eid = rec.start_episode({})
    run_ticks(rec, slot, 2.5, images=noise)
    summary = rec.stop_episode()
    assert summary["status"] == "complete" and summary["end_reason"].startswith("disk_low")
    st = os.statvfs(small_fs)
    # Stopped near the 3 MiB margin; the overshoot is bounded by the 1 MiB write buffer.
    assert st.f_bavail * st.f_frsize > (3 << 20) - (3 << 19)
    assert validate_episode(small_fs, eid)["status"] in ("ok", "incomplete")
    with pytest.raises(RecorderError, match="MiB free"):
        rec.start_episode({})
