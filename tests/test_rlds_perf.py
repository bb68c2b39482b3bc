"""The export's fast paths give exactly what the plain step-by-step code gave.

Covers what the speed work in brain/rlds changed: step payloads decoded as one JSON array (with a
record-by-record fallback that must name the same bad record and cut at the same byte), length
prefixes built with numpy, column-wise step validation, and the GC pause around an export.
"""

from __future__ import annotations

import gc
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from brain.rlds import example_wire as wire
from brain.rlds.logformat import FrameRecord, PayloadError, decode, encode_frame, encode_step
from brain.rlds.store import LOG_FILE, read_log
from brain.rlds.tfrecord import OVERHEAD, RecordReader, write_record
from brain.rlds.validate import _check_steps


def _plain_read_log(ep_dir: Path) -> tuple[list, list, RecordReader]:
    """The record-by-record parse read_log replaced (kept here as the reference)."""
    steps: list[Any] = []
    frames: list[Any] = []
    with open(ep_dir / LOG_FILE, "rb") as fh:
        reader = RecordReader(fh)
        for data in reader:
            try:
                rec = decode(data)
            except PayloadError as e:
                reader.error = f"bad payload in record {reader.count - 1}: {e}"
                reader.end -= len(data) + OVERHEAD
                break
            (frames if isinstance(rec, FrameRecord) else steps).append(rec)
    return steps, frames, reader


def _step(i: int) -> bytes:
    return encode_step({"i": i, "t_mono": 1.0 + i / 50, "state": [0.5, -1.25]})


def _frame(i: int) -> bytes:
    return encode_frame(i, 1.0 + i / 30, (2, 2, 3), b"\xff\xd8jpeg%d" % i)


LOGS = {
    "clean": [_frame(0), _step(0), _step(1), _frame(1), _step(2)],
    "not json": [_frame(0), _step(0), b"S{not json", _frame(1), _step(2)],
    "not an object": [_frame(0), _step(0), b"S[1,2]", _frame(1), _step(2)],
    "unknown kind": [_frame(0), _step(0), b"Xzz", _frame(1), _step(2)],
    "short frame": [_frame(0), _step(0), b"F12", _step(2)],
    "bad step then torn tail": [_frame(0), b"S{bad", _step(1), None],
    "torn tail": [_frame(0), _step(0), None],
    "empty": [],
}


@pytest.mark.parametrize("name", sorted(LOGS))
def test_read_log_matches_record_by_record_parse(tmp_path, name):
    with open(tmp_path / LOG_FILE, "wb") as fh:
        for rec in LOGS[name]:
            if rec is None:
                fh.write(b"\x05\x00\x00")  # a record header cut short: a torn write
            else:
                write_record(fh, rec)
    steps, frames, reader, _size = read_log(tmp_path)
    want_steps, want_frames, want = _plain_read_log(tmp_path)
    assert steps == want_steps and frames == want_frames
    assert (reader.error, reader.end, reader.count, reader.torn) == \
        (want.error, want.end, want.count, want.torn)


def _plain_bytes_feature(values: list[bytes]) -> bytes:
    body = b"".join(wire._ld(1, len(v)) + v for v in values)
    return wire._ld(1, len(body)) + body


@pytest.mark.parametrize("lengths", [
    [], [0], [1, 127, 128, 16383, 16384, 2**21 - 1, 2**21], [30] * 4000,  # texts: joined
    [70_000] * 20,  # large values: left as separate buffers
])
def test_bytes_feature_matches_plain_encoding(lengths):
    rng = np.random.default_rng(len(lengths))
    values = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in lengths]
    bufs = wire.bytes_feature(values)
    assert b"".join(bufs) == _plain_bytes_feature(values)
    if sum(lengths) > 1 << 20:
        assert any(b is v for b in bufs for v in values[:1])  # the value itself, not a copy


def _steps(n: int) -> list[dict]:
    return [{"i": k, "t_mono": 1.0 + k / 50, "t_wall": 1e9 + k / 50, "state": [0.0, 1.0],
             "action": [0.0, 0.5], "reward": 0.0, "discount": 1.0, "is_terminal": False,
             "mode": "manual", "language_instruction": "", "frame": k // 2, "frame_new": True}
            for k in range(n)]


@pytest.mark.parametrize("breakage, want", [
    (lambda s: s[3].pop("mode"), "step 3: 'mode' missing or not str"),
    (lambda s: s[3].update(i=True), "step 3: 'i' missing or not int"),
    (lambda s: s[4].update(i=9), "step 4: index 9 out of sequence"),
    (lambda s: s[2].update(action=[1.0]), "step 2: action has 1 values, expected 2"),
    (lambda s: s[5].update(state=[1.0]), "step 5: state has 1 values, earlier steps 2"),
    (lambda s: s[6].update(t_mono=s[5]["t_mono"]), "step 6: monotonic timestamp does not increase"),
    (lambda s: s[7].update(frame=0), "step 7: frame reference 0 invalid (10 frames)"),
    (lambda s: s[8].update(frame=10), "step 8: frame reference 10 invalid (10 frames)"),
    # two faults: the earlier step is named, as a step-by-step scan would
    (lambda s: (s[6].update(frame=99), s[3].update(action=[])),
     "step 3: action has 0 values, expected 2"),
])
def test_check_steps_names_the_first_broken_step(breakage, want):
    steps = _steps(10)
    assert _check_steps(steps, 10) == []
    breakage(steps)
    assert _check_steps(json.loads(json.dumps(steps)), 10) == [want]


def test_wall_clock_going_back_is_reported_per_step():
    steps = _steps(10)
    steps[4]["t_wall"] -= 1.0
    assert _check_steps(steps, 10) == [
        "step 4: wall-clock timestamp went back by more than 0.5 s"]


def test_export_restores_gc_state(tmp_path):
    """An export that fails inside the GC pause (a frame that is no JPEG) leaves GC as found."""
    from brain.durable import atomic_write_json
    from brain.rlds import ExportError, prepare_cloud_export
    from brain.rlds.store import EPISODE_FILE

    ep = tmp_path / "eps" / "20260101T000000Z-abcdef"
    ep.mkdir(parents=True)
    with open(ep / LOG_FILE, "wb") as fh:
        for rec in (_frame(0), _step(0)):
            write_record(fh, rec)
    atomic_write_json(ep / EPISODE_FILE, {
        "format": 1, "id": ep.name, "status": "complete", "started_wall": 1e9,
        "metadata": {}, "steps": 1, "frames": 1})
    for enabled in (True, False):
        (gc.enable if enabled else gc.disable)()
        try:
            with pytest.raises(ExportError, match="is corrupt"):
                prepare_cloud_export(tmp_path / "eps", tmp_path / f"out-{enabled}")
            assert gc.isenabled() is enabled
        finally:
            gc.enable()
