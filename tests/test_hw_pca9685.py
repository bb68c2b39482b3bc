"""PCA9685 servo/ESC driver, run against a register-level PCA9685 model on a fake I2C bus.

The fake replaces `smbus2.SMBus` (the lowest seam below our adapter): the real
`adafruit_pca9685` and `adafruit_bus_device` code runs unchanged, our `SMBusI2C` builds real
`smbus2.i2c_msg` transactions, and the model interprets them byte by byte as the chip would
(register pointer, auto-increment, sleep-only PRESCALE, RESTART). Only the kernel ioctl and the
wires are not exercised.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from brain.config import DonkeyProfile
from brain.hardware.i2c import SMBusI2C
from brain.hardware.pca9685 import DonkeyPWM, PulseMap, prescale_for
from brain.hardware.robot import DeviceNotFound, RobotError
from tests.fakes.pca9685_model import AI, RESTART, SLEEP, FakeBuses, PCA9685Model

STEER, THROT = 0, 1


def make(profile: DonkeyProfile | None = None, **kw: object
         ) -> tuple[DonkeyPWM, PCA9685Model, FakeBuses]:
    model = PCA9685Model()
    buses = FakeBuses({1: {0x40: model}})
    pwm = DonkeyPWM(profile or DonkeyProfile(), smbus_factory=buses, **kw)  # type: ignore[arg-type]
    return pwm, model, buses


def test_prescale_121_at_50hz_written_in_sleep_then_restarted() -> None:
    pwm, model, _ = make()
    pwm.connect()
    assert prescale_for(50) == 121
    assert model.regs[0xFE] == 121
    assert model.prescale_rejected == 0  # never written while awake
    # The sequence the datasheet asks for: sleep, (PRESCALE), wake, RESTART with AI.
    sleep_at = next(i for i, v in enumerate(model.mode1_writes) if v & SLEEP)
    after = model.mode1_writes[sleep_at + 1:]
    assert after[0] & SLEEP == 0
    assert after[-1] & (RESTART | AI) == (RESTART | AI)
    assert not model.asleep
    assert model.regs[0x00] & AI
    assert model.regs[0x00] & RESTART == 0  # writing 1 cleared it


def test_model_rejects_prescale_while_awake() -> None:
    """The model must catch a driver that writes PRESCALE without sleeping first."""
    model = PCA9685Model()
    model.write(bytes([0x00, 0x00]))  # wake
    model.write(bytes([0xFE, 121]))
    assert model.regs[0xFE] == 30 and model.prescale_rejected == 1


def test_other_frequency() -> None:
    pwm, model, _ = make(DonkeyProfile(pwm_frequency_hz=60))
    pwm.connect()
    assert model.regs[0xFE] == prescale_for(60) == 101


def test_neutral_on_connect_registers() -> None:
    pwm, model, _ = make()
    pwm.connect()
    # 1500 µs at 50 Hz (prescale 121 -> 50.03 Hz, period 19988.5 µs) = 307.4 -> 307 counts.
    for ch in (STEER, THROT):
        assert model.on_off(ch) == (0, 307)
        assert model.pulse_us(ch) == pytest.approx(1500, abs=5)
    assert model.on_off(2) == (0, 0x1000)  # untouched channels stay full off


@pytest.mark.parametrize("pulse_us,counts", [(1000, 205), (1500, 307), (2000, 410)])
def test_on_off_registers_for_pulse_widths(pulse_us: int, counts: int) -> None:
    pwm, model, _ = make(DonkeyProfile(steering_left_us=pulse_us + 1 if pulse_us < 2000
                                       else 2500, steering_center_us=pulse_us,
                                       steering_right_us=pulse_us - 1))
    pwm.connect()
    assert model.on_off(STEER) == (0, counts)
    assert pwm.counts_for(pulse_us) == counts


def test_calibration_mapping_and_clamping() -> None:
    pwm, model, _ = make()
    pwm.connect()
    cases = [((-1, 0), 2000, 1500), ((1, 0), 1000, 1500), ((0.5, 0), 1250, 1500),
             ((-0.5, 0), 1750, 1500), ((0, 1), 1500, 2000), ((0, -1), 1500, 1000),
             ((0, 0.25), 1500, 1625), ((3, -7), 1000, 1000), ((float("nan"), 0), 1500, 1500)]
    for (s, t), steer_us, throt_us in cases:
        pwm.set(s, t)
        assert model.pulse_us(STEER) == pytest.approx(steer_us, abs=8), (s, t)
        assert model.pulse_us(THROT) == pytest.approx(throt_us, abs=8), (s, t)
    assert pwm.applied == (0.0, 0.0)


def test_asymmetric_calibration_is_piecewise() -> None:
    m = PulseMap(1100, 1520, 1800)  # reverse travel longer than forward
    assert m.pulse_us(-1) == 1100 and m.pulse_us(0) == 1520 and m.pulse_us(1) == 1800
    assert m.pulse_us(0.5) == pytest.approx(1660)
    assert m.pulse_us(-0.5) == pytest.approx(1310)


def test_inverted_steering_calibration() -> None:
    pwm, model, _ = make(DonkeyProfile(steering_left_us=1000, steering_right_us=2000))
    pwm.connect()
    pwm.set(-1, 0)
    assert model.pulse_us(STEER) == pytest.approx(1000, abs=8)


def test_close_leaves_neutral_and_releases_bus() -> None:
    pwm, model, buses = make()
    pwm.connect()
    pwm.set(0.8, 0.6)
    pwm.close()
    assert model.pulse_us(STEER) == pytest.approx(1500, abs=5)
    assert model.pulse_us(THROT) == pytest.approx(1500, abs=5)
    assert not model.asleep  # default: keep sending neutral
    assert buses.opened[-1].closed
    pwm.close()  # twice is fine
    with pytest.raises(RobotError, match="not connected"):
        pwm.set(0, 0)


def test_close_with_sleep_goes_neutral_first() -> None:
    pwm, model, _ = make(sleep_on_close=True)
    pwm.connect()
    pwm.set(0, 1)
    pwm.close()
    assert model.asleep
    throttle_pulses = [us for kind, ch, us in model.history if ch == THROT]
    assert throttle_pulses[-1] == pytest.approx(1500, abs=5)  # last pulse before sleep
    assert model.regs[0x00] & RESTART  # asleep with outputs configured: RESTART flagged


def test_missing_bus_names_device() -> None:
    pwm, _, _ = make(DonkeyProfile(i2c_bus=7))
    with pytest.raises(DeviceNotFound, match="/dev/i2c-7"):
        pwm.connect()


def test_missing_address_names_bus_and_address() -> None:
    pwm, _, buses = make(DonkeyProfile(pca9685_address=0x41))
    with pytest.raises(DeviceNotFound, match="no PCA9685 answering at 0x41 on /dev/i2c-1"):
        pwm.connect()
    assert buses.opened[-1].closed


def test_permission_denied_names_group() -> None:
    buses = FakeBuses({1: {}}, denied=frozenset({1}))
    with pytest.raises(RobotError, match=r"/dev/i2c-1.*'i2c' group"):
        SMBusI2C(1, smbus_factory=buses)


def test_adapter_slicing_and_long_transfers() -> None:
    model = PCA9685Model()
    model.write(bytes([0x00, AI]))
    buses = FakeBuses({1: {0x40: model}})
    i2c = SMBusI2C(1, smbus_factory=buses)
    payload = bytearray(b"\xff\x06" + bytes(range(1, 41)) + b"\xee")
    i2c.writeto(0x40, payload, start=1, end=42)  # 40 data bytes: beyond SMBus's 32
    assert bytes(model.regs[0x06:0x2E]) == bytes(range(1, 41))
    buf = bytearray(44)
    i2c.writeto_then_readfrom(0x40, b"\x00\x06", buf, out_start=1, in_start=2, in_end=42)
    assert bytes(buf[2:42]) == bytes(range(1, 41)) and buf[:2] == b"\0\0" and buf[42:] == b"\0\0"
    assert buses.opened[-1].transactions[-2:] == ["w", "wr"]  # register read: repeated start
    assert i2c.scan() == [0x40]
    assert i2c.try_lock() and not i2c.try_lock()
    i2c.unlock()


def test_import_does_not_load_blinka() -> None:
    code = ("import sys, brain.hardware.pca9685, brain.hardware.donkey;"
            "bad = [m for m in ('board', 'busio', 'digitalio', 'adafruit_platformdetect',"
            " 'adafruit_blinka', 'picamera2') if m in sys.modules];"
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
