"""Payloads of the per-episode write-ahead log (each one TFRecord record).

Two kinds, told apart by the first byte: a frame (`F`: capture seq, capture time, shape, then the
JPEG bytes exactly as encoded, stored once) and a step (`S`: JSON, small, referencing a frame by
its ordinal among the frame records). Frames are always written before the steps that use them.
"""

from __future__ import annotations

import json
import struct
from typing import Any, NamedTuple

FRAME = ord("F")
STEP = ord("S")
_FRAME_HEAD = struct.Struct("<BqdHHB")  # kind, seq, t_capture, height, width, channels
FRAME_HEAD_SIZE = _FRAME_HEAD.size


class FrameRecord(NamedTuple):  # a tuple: built thousands of times per episode read
    seq: int
    t_capture: float
    shape: tuple[int, int, int]
    jpeg: bytes | memoryview  # read back: a view into the log, not a copy


def encode_frame(seq: int, t_capture: float, shape: tuple[int, ...], jpeg: bytes) -> bytes:
    h, w, c = shape
    return _FRAME_HEAD.pack(FRAME, seq, t_capture, h, w, c) + jpeg


def decode_frame(data: bytes | memoryview) -> FrameRecord:
    """A frame record; its JPEG is a slice of `data` (a memoryview stays a view: no copy)."""
    if len(data) < FRAME_HEAD_SIZE:
        raise PayloadError("frame record shorter than its header")
    _, seq, t_capture, h, w, c = _FRAME_HEAD.unpack_from(data)
    return FrameRecord(seq, t_capture, (h, w, c), data[FRAME_HEAD_SIZE:])


def encode_step(step: dict[str, Any]) -> bytes:
    return b"S" + json.dumps(step, separators=(",", ":")).encode()


class PayloadError(ValueError):
    """A record passed its CRC but does not hold a payload we wrote."""


def decode(data: bytes | memoryview) -> FrameRecord | dict[str, Any]:
    if not data:
        raise PayloadError("empty record")
    if data[0] == FRAME:
        return decode_frame(data)
    if data[0] == STEP:
        try:
            step = json.loads(bytes(data[1:]))
        except ValueError as e:
            raise PayloadError(f"step record is not JSON: {e}") from None
        if not isinstance(step, dict):
            raise PayloadError("step record is not an object")
        return step
    raise PayloadError(f"unknown record kind 0x{data[0]:02x}")
