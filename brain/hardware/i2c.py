"""An I2C bus for Adafruit CircuitPython drivers, built on `smbus2`, without Blinka.

`adafruit_pca9685.PCA9685` talks to its bus through `adafruit_bus_device.I2CDevice`, which needs
only what `busio.I2C` offers: try_lock/unlock, writeto, readfrom_into, writeto_then_readfrom
(with start/end slicing) and scan. `SMBusI2C` provides exactly that on a Linux `/dev/i2c-N`
node, so neither `board` nor `busio` (and with them Blinka's board detection) is ever needed
to drive the chip. Every transfer goes through `SMBus.i2c_rdwr` with `i2c_msg` messages: plain
I2C, any length, a repeated start between write and read, no SMBus 32-byte block limit.

The SMBus class is a constructor argument: tests inject a fake bus there (the lowest seam that
still runs all of this code), the robot gets `smbus2.SMBus`.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable
from typing import Any, Protocol

from smbus2 import SMBus, i2c_msg

from brain.hardware.robot import DeviceNotFound, RobotError

# Errors a Linux I2C adapter driver reports when nobody acknowledges the address: ENXIO
# (i2c-designware, the Pi 5's RP1), EREMOTEIO (i2c-bcm2835), EIO (others).
NACK_ERRNOS = frozenset({errno.ENXIO, errno.EREMOTEIO, errno.EIO})


class SMBusLike(Protocol):
    """The part of `smbus2.SMBus` this adapter uses."""

    def i2c_rdwr(self, *i2c_msgs: i2c_msg) -> None: ...

    def close(self) -> None: ...


def device_path(bus: int) -> str:
    return f"/dev/i2c-{bus}"


def open_smbus(bus: int, smbus_factory: Callable[[int], SMBusLike] = SMBus) -> SMBusLike:
    """Open `/dev/i2c-<bus>`, turning OS errors into messages that say what to do."""
    path = device_path(bus)
    try:
        return smbus_factory(bus)
    except FileNotFoundError:
        raise DeviceNotFound(f"{path}: no such I2C bus (enable I2C: raspi-config, or "
                             f"dtparam=i2c_arm=on in /boot/firmware/config.txt)") from None
    except PermissionError:
        raise RobotError(f"{path}: permission denied; add the user to the 'i2c' group "
                         "(sudo usermod -aG i2c $USER, then log in again)") from None
    except OSError as e:
        raise RobotError(f"{path}: cannot open I2C bus: {e.strerror or e}") from None


def _span(buf: Any, start: int, end: int | None) -> memoryview:
    view = memoryview(buf).cast("B")
    return view[start:len(view) if end is None else end]


class SMBusI2C:
    """A `busio.I2C` look-alike on one Linux I2C bus (duck-typed for CircuitPython drivers)."""

    def __init__(self, bus: int, *, smbus_factory: Callable[[int], SMBusLike] = SMBus) -> None:
        self.bus = bus
        self.path = device_path(bus)
        self._smbus: SMBusLike | None = open_smbus(bus, smbus_factory)
        self._lock = threading.Lock()

    # -- busio.I2C locking ------------------------------------------------------------------
    def try_lock(self) -> bool:
        return self._lock.acquire(blocking=False)

    def unlock(self) -> None:
        self._lock.release()

    # -- transfers (raise OSError like busio does; drivers probe by catching it) -------------
    def _rdwr(self, *msgs: i2c_msg) -> None:
        if self._smbus is None:
            raise OSError(errno.EBADF, f"{self.path} is closed")
        self._smbus.i2c_rdwr(*msgs)

    def writeto(self, address: int, buffer: Any, *, start: int = 0,
                end: int | None = None) -> None:
        self._rdwr(i2c_msg.write(address, _span(buffer, start, end)))

    def readfrom_into(self, address: int, buffer: Any, *, start: int = 0,
                      end: int | None = None) -> None:
        dest = _span(buffer, start, end)
        msg = i2c_msg.read(address, len(dest))
        self._rdwr(msg)
        dest[:] = bytes(msg)

    def writeto_then_readfrom(self, address: int, out_buffer: Any, in_buffer: Any, *,
                              out_start: int = 0, out_end: int | None = None,
                              in_start: int = 0, in_end: int | None = None) -> None:
        dest = _span(in_buffer, in_start, in_end)
        # Copy the outgoing bytes first: drivers (adafruit_register) pass the same buffer in
        # and out, and the read must not be able to change what is written.
        out = i2c_msg.write(address, bytes(_span(out_buffer, out_start, out_end)))
        msg = i2c_msg.read(address, len(dest))
        self._rdwr(out, msg)  # one transaction, repeated start, no stop in between
        dest[:] = bytes(msg)

    # -- discovery ---------------------------------------------------------------------------
    def probe(self, address: int) -> bool:
        """Whether a chip acknowledges `address`. A one-byte read, not a zero-length write:
        the Pi 5's I2C controller (RP1, i2c-designware) cannot send zero-length messages."""
        try:
            self.readfrom_into(address, bytearray(1))
        except OSError as e:
            if e.errno in NACK_ERRNOS:
                return False
            raise
        return True

    def scan(self) -> list[int]:
        """7-bit addresses that answer, skipping the reserved ranges (like i2cdetect)."""
        return [a for a in range(0x03, 0x78) if self.probe(a)]

    def close(self) -> None:
        if self._smbus is not None:
            self._smbus.close()
            self._smbus = None

    def deinit(self) -> None:  # busio.I2C name
        self.close()

    def __enter__(self) -> SMBusI2C:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
