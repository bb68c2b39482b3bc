"""TFRecord framing, used both as the recorder's write-ahead log and for export shards.

A record is: uint64 length, masked CRC32C of the length, data, masked CRC32C of the data (all
little-endian). The CRC makes a torn or damaged tail detectable, so a log can be cut back to its
last whole record after a crash. CRC32C comes from google-crc32c (C, hardware-accelerated).
The framing itself is four fields; writing it by hand avoids depending on TensorFlow for it.
"""

from __future__ import annotations

import io
import mmap
import struct
from collections.abc import Iterator
from typing import BinaryIO

import google_crc32c

_LEN = struct.Struct("<Q")
_CRC = struct.Struct("<I")
_HEADER = struct.Struct("<QI")  # length, masked CRC of the length
_MASK_DELTA = 0xA282EAD8
HEADER_SIZE = _LEN.size + _CRC.size
FOOTER_SIZE = _CRC.size
OVERHEAD = HEADER_SIZE + FOOTER_SIZE
# A record larger than this is taken as a damaged length field, not an allocation request.
MAX_RECORD = 1 << 30


def mask_crc(crc: int) -> int:
    """TFRecord's CRC masking (rotate right 15, add a constant)."""
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    return mask_crc(google_crc32c.value(data))


def frame_record(data: bytes) -> tuple[bytes, bytes]:
    """Header and footer that surround `data` on disk (kept apart so data is never copied)."""
    length = _LEN.pack(len(data))
    return length + _CRC.pack(masked_crc(length)), _CRC.pack(masked_crc(data))


def write_record(fh: BinaryIO, data: bytes) -> int:
    """Append one record; returns the bytes written."""
    header, footer = frame_record(data)
    fh.write(header)
    fh.write(data)
    fh.write(footer)
    return len(data) + OVERHEAD


class RecordReader:
    """Iterates over the records of a TFRecord stream, stopping at the first bad one.

    After iteration, `end` is the offset just past the last whole, CRC-valid record and `error`
    says what was found there (None when the stream ended cleanly). `torn` is True when the
    stream simply ends inside a record, the signature of a write cut short by a crash.
    """

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self.end = 0
        self.count = 0
        self.error: str | None = None
        self.torn = False

    def __iter__(self) -> Iterator[bytes]:
        fh = self._fh
        while True:
            header = fh.read(HEADER_SIZE)
            if not header:
                return
            if len(header) < HEADER_SIZE:
                self._fail("truncated record header", torn=True)
                return
            (length,) = _LEN.unpack_from(header)
            (length_crc,) = _CRC.unpack_from(header, _LEN.size)
            if masked_crc(header[: _LEN.size]) != length_crc:
                self._fail("length CRC mismatch")
                return
            if length > MAX_RECORD:
                self._fail(f"record length {length} exceeds {MAX_RECORD}")
                return
            data = fh.read(length)
            footer = fh.read(FOOTER_SIZE)
            if len(data) < length or len(footer) < FOOTER_SIZE:
                self._fail("truncated record data", torn=True)
                return
            if masked_crc(data) != _CRC.unpack(footer)[0]:
                self._fail("data CRC mismatch")
                return
            self.end += HEADER_SIZE + length + FOOTER_SIZE
            self.count += 1
            yield data

    def _fail(self, what: str, torn: bool = False) -> None:
        self.error = f"{what} in record {self.count} at byte {self.end}"
        self.torn = torn


class BufferReader(RecordReader):
    """A RecordReader over records already in memory (bytes, or an mmap of the file): the same
    checks, `end`, `count`, `error` and `torn`, without three file reads per record."""

    def __init__(self, buf: bytes | mmap.mmap) -> None:
        super().__init__(io.BytesIO())  # the stream goes unused; only the buffer is read
        self._buf = buf

    def __iter__(self) -> Iterator[bytes]:
        for head, rest in self.split(0):
            yield head + rest if head else rest

    def split(self, head_size: int) -> Iterator[tuple[bytes, bytes]]:
        """Each record's data as (its first `head_size` bytes, the rest): two slices whose CRC
        is checked together, so a large payload behind a small header (a JPEG behind its frame
        header) is copied out once, not twice (google-crc32c takes bytes, not a memoryview)."""
        buf, size, pos = self._buf, len(self._buf), self.end
        unpack_header, unpack_crc = _HEADER.unpack_from, _CRC.unpack_from
        while pos < size:
            if size - pos < HEADER_SIZE:
                self._fail("truncated record header", torn=True)
                return
            length, length_crc = unpack_header(buf, pos)
            if masked_crc(buf[pos:pos + _LEN.size]) != length_crc:
                self._fail("length CRC mismatch")
                return
            if length > MAX_RECORD:
                self._fail(f"record length {length} exceeds {MAX_RECORD}")
                return
            start = pos + HEADER_SIZE
            stop = start + length
            if stop + FOOTER_SIZE > size:
                self._fail("truncated record data", torn=True)
                return
            cut = min(start + head_size, stop)
            head, rest = buf[start:cut], buf[cut:stop]
            crc = google_crc32c.extend(google_crc32c.value(head), rest)
            if mask_crc(crc) != unpack_crc(buf, stop)[0]:
                self._fail("data CRC mismatch")
                return
            pos = self.end = stop + FOOTER_SIZE
            self.count += 1
            yield head, rest
