"""An optional serial peripheral (wheel encoder, IMU) speaking a line protocol, via pyserial.

Lines, ASCII, one per sample, ending in "\\n" (a "\\r" before it is ignored):

    ENC <ticks:int> <micros:int>        cumulative encoder ticks, device clock in µs (uint32)
    IMU <ax> <ay> <az> <gx> <gy> <gz>   m/s² and rad/s, decimal numbers

Anything else (noise on the line at start-up, a wrong baud rate, a truncated line) is counted
in `bad_lines` and skipped: the reader thread never dies of its input. The latest values are
kept with their arrival time on `time.monotonic()`; `read()` returns a consistent copy.
"""

from __future__ import annotations

import errno
import logging
import math
import threading
import time
from dataclasses import dataclass, replace

import serial

from brain.hardware.robot import DeviceNotFound, RobotError

log = logging.getLogger(__name__)

MAX_LINE = 256  # longer than any valid line: a stream without newlines is garbage
MICROS_WRAP = 1 << 32  # Arduino-style micros() is a uint32


@dataclass(frozen=True)
class PeripheralReading:
    enc_ticks: int = 0
    enc_rate_tps: float = 0.0  # ticks per second between the last two ENC lines
    t_enc: float = -1.0  # time.monotonic() of the last ENC line; -1 = none yet
    imu: tuple[float, float, float, float, float, float] = (0.0,) * 6
    t_imu: float = -1.0
    good_lines: int = 0
    bad_lines: int = 0


def _parse_floats(fields: list[str], n: int) -> tuple[float, ...] | None:
    if len(fields) != n:
        return None
    try:
        values = tuple(float(f) for f in fields)
    except ValueError:
        return None
    return values if all(math.isfinite(v) for v in values) else None


def _parse_ints(fields: list[str], n: int) -> tuple[int, ...] | None:
    if len(fields) != n:
        return None
    try:
        return tuple(int(f, 10) for f in fields)
    except ValueError:
        return None


class SerialPeripheral:
    """Opens `port` and parses its lines on a background thread."""

    def __init__(self, port: str, baud: int = 115200, *, read_timeout_s: float = 0.1) -> None:
        self.port = port
        self.baud = baud
        self._timeout = read_timeout_s
        self._serial: serial.Serial | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._reading = PeripheralReading()
        self._last_enc_micros: int | None = None

    def open(self) -> None:
        try:
            self._serial = serial.Serial(self.port, self.baud, timeout=self._timeout)
        except serial.SerialException as e:
            code = getattr(e, "errno", None)
            if code in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
                raise DeviceNotFound(f"{self.port}: no such serial port") from None
            if code == errno.EACCES:
                raise RobotError(f"{self.port}: permission denied; add the user to the "
                                 "'dialout' group (sudo usermod -aG dialout $USER)") from None
            raise RobotError(f"{self.port}: cannot open serial port: {e}") from None
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="serial-peripheral",
                                        daemon=True)
        self._thread.start()

    def read(self) -> PeripheralReading:
        with self._lock:
            return self._reading

    def _run(self) -> None:
        assert self._serial is not None
        pending = bytearray()
        while not self._stop.is_set():
            try:
                chunk = self._serial.read(max(1, self._serial.in_waiting))
            except (serial.SerialException, OSError, TypeError) as e:
                # TypeError: pyserial's reader can hit a closed fd during close(); either
                # way the device is gone. Stop quietly if we are closing, else log it.
                if not self._stop.is_set():
                    log.error("%s: serial read failed: %s", self.port, e)
                    self._stop.wait(0.5)
                continue
            if not chunk:
                continue
            pending += chunk
            *lines, rest = pending.split(b"\n")
            pending = bytearray(rest)
            for line in lines:
                self.handle_line(line, time.monotonic())
            if len(pending) > MAX_LINE:
                self._count_bad()
                pending.clear()

    def _count_bad(self) -> None:
        with self._lock:
            self._reading = replace(self._reading, bad_lines=self._reading.bad_lines + 1)

    def handle_line(self, raw: bytes | bytearray, now: float) -> bool:
        """Parse one line (without its newline); returns whether it was valid."""
        try:
            fields = raw.decode("ascii").strip().split()
        except UnicodeDecodeError:
            fields = []
        if not fields:
            if raw.strip():
                self._count_bad()
                return False
            return True  # blank line: not data, not an error
        kind, args = fields[0], fields[1:]
        with self._lock:
            r = self._reading
            if kind == "ENC" and (ints := _parse_ints(args, 2)) is not None:
                ticks, micros = ints
                rate = r.enc_rate_tps
                if self._last_enc_micros is not None:
                    dt_us = (micros - self._last_enc_micros) % MICROS_WRAP
                    if dt_us > 0:
                        rate = (ticks - r.enc_ticks) * 1e6 / dt_us
                self._last_enc_micros = micros
                self._reading = replace(r, enc_ticks=ticks, enc_rate_tps=rate, t_enc=now,
                                        good_lines=r.good_lines + 1)
                return True
            if kind == "IMU" and (floats := _parse_floats(args, 6)) is not None:
                imu = (floats[0], floats[1], floats[2], floats[3], floats[4], floats[5])
                self._reading = replace(r, imu=imu, t_imu=now, good_lines=r.good_lines + 1)
                return True
            self._reading = replace(r, bad_lines=r.bad_lines + 1)
            return False

    def close(self) -> None:
        """Stop the reader and close the port. Safe to call twice."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._timeout + 2.0)
            self._thread = None
        if self._serial is not None:
            self._serial.close()
            self._serial = None
