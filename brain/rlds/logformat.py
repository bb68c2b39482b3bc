"""Payloads of the per-episode write-ahead log (each one TFRecord record).

Two kinds, told apart by the first byte: a frame (`F`: capture seq, capture time, shape, then the
JPEG bytes exactly as encoded, stored once) and a step (`S`: JSON, small, referencing a frame by
its ordinal among the frame records). Frames are always written before the steps that use them.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

FRAME = ord("F")
STEP = ord("S")
_FRAME_HEAD = struct.Struct("<BqdHHB")  # kind, seq, t_capture, height, width, channels
FRAME_HEAD_SIZE = _FRAME_HEAD.size


@dataclass(frozen=True)
class FrameRecord:
    seq: int
    t_capture: float
    shape: tuple[int, int, int]
    jpeg: bytes


def encode_frame(seq: int, t_capture: float, shape: tuple[int, ...], jpeg: bytes) -> bytes:
    h, w, c = shape
    return _FRAME_HEAD.pack(FRAME, seq, t_capture, h, w, c) + jpeg


def decode_frame(head: bytes, jpeg: bytes) -> FrameRecord:
    """A frame record given as its header bytes and the JPEG after them (kept apart so the
    JPEG is not copied again)."""
    if len(head) < FRAME_HEAD_SIZE:
        raise PayloadError("frame record shorter than its header")
    _, seq, t_capture, h, w, c = _FRAME_HEAD.unpack(head)
    return FrameRecord(seq, t_capture, (h, w, c), jpeg)


def encode_step(step: dict[str, Any]) -> bytes:
    return b"S" + json.dumps(step, separators=(",", ":")).encode()


class PayloadError(ValueError):
    """A record passed its CRC but does not hold a payload we wrote."""


def decode(data: bytes) -> FrameRecord | dict[str, Any]:
    if not data:
        raise PayloadError("empty record")
    if data[0] == FRAME:
        return decode_frame(data[:FRAME_HEAD_SIZE], data[FRAME_HEAD_SIZE:])
    if data[0] == STEP:
        try:
            step = json.loads(data[1:])
        except ValueError as e:
            raise PayloadError(f"step record is not JSON: {e}") from None
        if not isinstance(step, dict):
            raise PayloadError("step record is not an object")
        return step
    raise PayloadError(f"unknown record kind 0x{data[0]:02x}")
