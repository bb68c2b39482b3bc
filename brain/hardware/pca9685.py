"""Steering servo and ESC on a PCA9685, through `adafruit_pca9685` over `SMBusI2C`.

What importing `adafruit_pca9685` needs (checked on x86 with adafruit-circuitpython-pca9685
3.4.22 / busdevice 5.2.17): it never imports `board`, but `adafruit_bus_device` does
`from busio import I2C` / `SPI` and `from digitalio import DigitalInOut` for type annotations
that are evaluated when its classes are defined. Without an importable `busio` the import fails
with NameError; with Blinka's real modules it runs Blinka's platform detection
(`adafruit_platformdetect.Detector`, reading /proc/cpuinfo and the device tree). None of that
is needed to drive the chip, so while importing we put typing-only stand-ins for `busio` and
`digitalio` in `sys.modules` and take them out again. No Blinka code runs; a test checks that
`board`, `busio`, `digitalio` and `adafruit_platformdetect` stay unimported.

Calibration maps a normalised action (-1..1) to a pulse width piecewise-linearly through three
points (left/centre/right, reverse/neutral/forward); inverted servos or ESCs are simply
calibrations whose end points are swapped.
"""

from __future__ import annotations

import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from brain.config import DonkeyProfile
from brain.hardware.i2c import SMBusI2C, SMBusLike, device_path
from brain.hardware.robot import DeviceNotFound, RobotError


class _AnnotationOnly:
    """Placeholder for Blinka classes that adafruit_bus_device names only in annotations."""


def _import_adafruit_pca9685() -> Any:
    stand_ins: dict[str, dict[str, type]] = {
        "busio": {"I2C": SMBusI2C, "SPI": _AnnotationOnly},
        "digitalio": {"DigitalInOut": _AnnotationOnly},
    }
    added: dict[str, types.ModuleType] = {}
    for name, attrs in stand_ins.items():
        if name not in sys.modules:  # already loaded by someone else: nothing left to avoid
            mod = types.ModuleType(name, "typing-only stand-in for Blinka's module")
            mod.__dict__.update(attrs)
            sys.modules[name] = added[name] = mod
    try:
        import adafruit_pca9685
    finally:
        for name, mod in added.items():
            if sys.modules.get(name) is mod:
                del sys.modules[name]
    return adafruit_pca9685


adafruit_pca9685 = _import_adafruit_pca9685()

OSCILLATOR_HZ = 25_000_000  # the PCA9685's internal oscillator (datasheet, typical)
MODE1, PRESCALE = 0x00, 0xFE
MODE1_SLEEP = 0x10


def prescale_for(frequency_hz: float, oscillator_hz: int = OSCILLATOR_HZ) -> int:
    """PRESCALE register value for a PWM frequency (datasheet eq. 1; 121 at 50 Hz)."""
    return int(oscillator_hz / 4096.0 / frequency_hz + 0.5) - 1


@dataclass(frozen=True)
class PulseMap:
    """Piecewise-linear map from a normalised command to a pulse width in microseconds."""

    at_minus_one: float
    at_zero: float
    at_plus_one: float

    def pulse_us(self, value: float) -> float:
        x = float(value)
        x = 0.0 if x != x else max(-1.0, min(1.0, x))  # NaN would clamp to +1: make it 0
        if x >= 0.0:
            return self.at_zero + x * (self.at_plus_one - self.at_zero)
        return self.at_zero + x * (self.at_zero - self.at_minus_one)

    def value_for(self, pulse_us: float) -> float:
        """The normalised command a pulse width stands for (the inverse of `pulse_us`)."""
        up = (pulse_us - self.at_zero) / (self.at_plus_one - self.at_zero)
        if up >= 0.0:
            return min(1.0, up)
        return max(-1.0, (pulse_us - self.at_zero) / (self.at_zero - self.at_minus_one))


def steering_map(p: DonkeyProfile) -> PulseMap:
    return PulseMap(p.steering_left_us, p.steering_center_us, p.steering_right_us)


def throttle_map(p: DonkeyProfile) -> PulseMap:
    return PulseMap(p.throttle_reverse_us, p.throttle_neutral_us, p.throttle_forward_us)


class DonkeyPWM:
    """The car's two PWM outputs. `set(steering, throttle)` takes normalised values."""

    def __init__(self, profile: DonkeyProfile, *,
                 smbus_factory: Callable[[int], SMBusLike] | None = None,
                 oscillator_hz: int = OSCILLATOR_HZ, sleep_on_close: bool = False) -> None:
        self.profile = profile
        self.where = f"0x{profile.pca9685_address:02x} on {device_path(profile.i2c_bus)}"
        self.steering = steering_map(profile)
        self.throttle = throttle_map(profile)
        self._smbus_factory = smbus_factory
        self._oscillator_hz = oscillator_hz
        # Default: keep sending neutral pulses after close. An ESC that loses its signal falls
        # back to its own failsafe, which differs between models; a neutral pulse does not.
        self._sleep_on_close = sleep_on_close
        self._i2c: SMBusI2C | None = None
        self._pca: Any = None
        self._period_us = 0.0
        self._last_counts: dict[int, int] = {}
        self.applied = (0.0, 0.0)  # last (steering, throttle) written, after clamping

    @property
    def period_us(self) -> float:
        return self._period_us

    def connect(self) -> None:
        p = self.profile
        kwargs = {} if self._smbus_factory is None else {"smbus_factory": self._smbus_factory}
        i2c = SMBusI2C(p.i2c_bus, **kwargs)
        try:
            if not i2c.probe(p.pca9685_address):
                raise DeviceNotFound(f"no PCA9685 answering at {self.where}")
            pca = adafruit_pca9685.PCA9685(i2c, address=p.pca9685_address,
                                           reference_clock_speed=self._oscillator_hz)
            # Sleep, write PRESCALE, wake, then RESTART with auto-increment on (the library
            # does the datasheet sequence; PRESCALE is writable only while asleep).
            pca.frequency = p.pwm_frequency_hz
            prescale = pca.prescale_reg
            want = prescale_for(p.pwm_frequency_hz, self._oscillator_hz)
            if prescale != want:
                raise RobotError(f"PCA9685 at {self.where}: PRESCALE reads {prescale} after "
                                 f"writing {want}; is this really a PCA9685?")
            self._period_us = 1e6 * (prescale + 1) * 4096 / self._oscillator_hz
        except OSError as e:
            i2c.close()
            raise RobotError(f"PCA9685 at {self.where}: I2C error during set-up: "
                             f"{e.strerror or e}") from None
        except BaseException:
            i2c.close()
            raise
        self._i2c, self._pca = i2c, pca
        self._last_counts.clear()
        self.set(0.0, 0.0)

    def counts_for(self, pulse_us: float) -> int:
        """12-bit OFF count (ON at 0) for a pulse width at the running frequency."""
        return max(1, min(4095, round(pulse_us / self._period_us * 4096)))

    def _write_channel(self, channel: int, pulse_us: float) -> None:
        counts = self.counts_for(pulse_us)
        if self._last_counts.get(channel) == counts:
            return  # unchanged: spare the bus (two 5-byte writes per tick otherwise)
        try:
            # The library's duty cycle is 16-bit and keeps its top 12 bits.
            self._pca.channels[channel].duty_cycle = counts << 4
        except OSError as e:
            self._last_counts.pop(channel, None)
            raise RobotError(f"PCA9685 at {self.where}: write to channel {channel} failed: "
                             f"{e.strerror or e}") from None
        self._last_counts[channel] = counts

    def set(self, steering: float, throttle: float) -> None:
        if self._pca is None:
            raise RobotError(f"PCA9685 at {self.where}: not connected")
        s = max(-1.0, min(1.0, steering)) if steering == steering else 0.0
        t = max(-1.0, min(1.0, throttle)) if throttle == throttle else 0.0
        self._write_channel(self.profile.throttle_channel, self.throttle.pulse_us(t))
        self._write_channel(self.profile.steering_channel, self.steering.pulse_us(s))
        self.applied = (s, t)

    def close(self) -> None:
        """Neutral, then (optionally) sleep, then release the bus. Safe to call twice."""
        if self._pca is None:
            return
        try:
            self._last_counts.clear()  # write neutral unconditionally
            self.set(0.0, 0.0)
            if self._sleep_on_close:
                # Let the ESC see a few neutral pulses before the outputs stop.
                time.sleep(3 * self._period_us / 1e6)
                self._pca.mode1_reg = self._pca.mode1_reg | MODE1_SLEEP
        except OSError as e:
            raise RobotError(f"PCA9685 at {self.where}: could not set neutral on close: "
                             f"{e.strerror or e}") from None
        finally:
            self._pca = None
            if self._i2c is not None:
                self._i2c.close()
                self._i2c = None
