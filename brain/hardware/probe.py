"""Read-only hardware probes for `brain health` and `brain validate-hardware`.

Each returns a result and never raises for a missing or unreadable device: a person debugging
a robot in the field wants every check's answer, not the first traceback. Nothing here writes
to a device (the PCA9685 probe only reads registers), so probing a running robot is safe.
"""

from __future__ import annotations

import glob
import importlib
from collections.abc import Callable

from brain.hardware.i2c import NACK_ERRNOS, SMBusI2C, SMBusLike
from brain.hardware.robot import RobotError

MODE1, PRESCALE = 0x00, 0xFE
OSCILLATOR_HZ = 25_000_000


def _open(bus: int, smbus_factory: Callable[[int], SMBusLike] | None) -> SMBusI2C:
    return SMBusI2C(bus) if smbus_factory is None else SMBusI2C(bus, smbus_factory=smbus_factory)


def probe_i2c_bus(bus: int, *, smbus_factory: Callable[[int], SMBusLike] | None = None
                  ) -> tuple[bool, str]:
    """Whether /dev/i2c-<bus> opens; the detail lists the addresses that answer."""
    try:
        with _open(bus, smbus_factory) as i2c:
            found = i2c.scan()
    except RobotError as e:
        return False, str(e)
    except OSError as e:
        return False, f"/dev/i2c-{bus}: scan failed: {e.strerror or e}"
    listed = " ".join(f"0x{a:02x}" for a in found) or "none"
    return True, f"/dev/i2c-{bus} open; devices answering: {listed}"


def probe_pca9685(bus: int, address: int, *,
                  smbus_factory: Callable[[int], SMBusLike] | None = None) -> tuple[bool, str]:
    """Whether a PCA9685 answers: MODE1 and PRESCALE read back with plausible values."""
    where = f"0x{address:02x} on /dev/i2c-{bus}"
    try:
        with _open(bus, smbus_factory) as i2c:
            if not i2c.probe(address):
                return False, f"no PCA9685 answering at {where}"
            buf = bytearray(1)
            i2c.writeto_then_readfrom(address, bytes([MODE1]), buf)
            mode1 = buf[0]
            i2c.writeto_then_readfrom(address, bytes([PRESCALE]), buf)
            prescale = buf[0]
    except RobotError as e:
        return False, str(e)
    except OSError as e:
        what = "does not answer" if e.errno in NACK_ERRNOS else f"I/O error: {e.strerror or e}"
        return False, f"PCA9685 at {where}: {what}"
    if prescale < 3:  # the chip clamps PRESCALE to >= 3; anything lower is another device
        return False, (f"device at {where} is not a PCA9685 "
                       f"(PRESCALE reads {prescale}, a PCA9685 never holds < 3)")
    freq = OSCILLATOR_HZ / 4096 / (prescale + 1)
    state = "asleep" if mode1 & 0x10 else "running"
    return True, (f"PCA9685 at {where}: MODE1=0x{mode1:02x} ({state}), "
                  f"PRESCALE={prescale} ({freq:.1f} Hz)")


def list_cameras() -> list[str]:
    """Cameras libcamera sees (via picamera2), else the V4L2/media device nodes present."""
    try:
        picamera2 = importlib.import_module("picamera2")
    except ImportError:
        return sorted(glob.glob("/dev/video*") + glob.glob("/dev/media*"))
    try:
        infos = picamera2.Picamera2.global_camera_info()
    except Exception as e:  # libcamera trouble is a finding, not a crash
        return [f"error listing cameras: {e}"]
    out = []
    for i, info in enumerate(infos):
        model = info.get("Model", "?") if isinstance(info, dict) else str(info)
        path = info.get("Id", "") if isinstance(info, dict) else ""
        out.append(f"{i}: {model} {path}".rstrip())
    return out


def list_serial_ports() -> list[str]:
    """Serial ports pyserial finds (USB adapters, the Pi's UARTs), as device paths."""
    try:
        from serial.tools import list_ports
        return sorted(p.device for p in list_ports.comports())
    except Exception:  # pyserial absent or sysfs unreadable: report none rather than fail
        return []
