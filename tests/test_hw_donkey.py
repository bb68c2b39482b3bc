"""DonkeyRobot end to end against the emulated devices, the absent real bus, and the probes.

Emulated: the PCA9685 at register level behind a fake `smbus2.SMBus` (tests/fakes/
pca9685_model.py), the camera through a stand-in `picamera2` module (tests/fakes/
picamera2_standin.py), the serial sensor as a scripted device on a pty pair. The last tests
use this machine's real (absent) /dev/i2c-1 to check the error a user would see.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator

import pytest

from brain.config import Config
from brain.hardware import probe
from brain.hardware.donkey import DonkeyRobot
from brain.hardware.robot import Action, DeviceNotFound
from tests.fakes import picamera2_standin
from tests.fakes.pca9685_model import FakeBuses, PCA9685Model


@pytest.fixture
def pty_path() -> Iterator[tuple[int, str]]:
    master, slave = os.openpty()
    yield master, os.ttyname(slave)
    os.close(master)
    os.close(slave)


def donkey_config(serial_port: str = "", camera: str = "picamera2") -> Config:
    cfg = Config()
    cfg.profile = "pi5-donkey"
    cfg.profiles.pi5_donkey.serial_port = serial_port
    cfg.profiles.pi5_donkey.camera = camera
    cfg.camera.width, cfg.camera.height, cfg.camera.fps = 64, 48, 30
    return cfg


def test_end_to_end_against_fakes(pty_path: tuple[int, str]) -> None:
    master, port = pty_path
    model = PCA9685Model()
    module = picamera2_standin.make_module()
    robot = DonkeyRobot(donkey_config(serial_port=port),
                        smbus_factory=FakeBuses({1: {0x40: model}}), camera_loader=lambda: module)
    assert robot.spec.state_names[:2] == ("steering", "throttle")
    assert "enc_ticks" in robot.spec.state_names and "imu_gz" in robot.spec.state_names
    assert robot.spec.image_shape == (48, 64, 3)
    robot.connect()
    try:
        assert model.pulse_us(0) == pytest.approx(1500, abs=5)  # neutral on connect
        assert model.pulse_us(1) == pytest.approx(1500, abs=5)
        robot.write(Action(steering=-1.0, throttle=0.5))
        assert model.pulse_us(0) == pytest.approx(2000, abs=8)  # full left
        assert model.pulse_us(1) == pytest.approx(1750, abs=8)

        cam = picamera2_standin.Picamera2.instances[-1]
        cam.emit(time.monotonic_ns(), value=9)
        os.write(master, b"ENC 42 1000\nIMU 0 0 9.8 0 0 0.25\n")
        deadline = time.monotonic() + 5
        obs = robot.read()
        while (obs.frame is None or obs.state[-1] != 0.25) and time.monotonic() < deadline:
            time.sleep(0.01)
            obs = robot.read()
        state = dict(zip(robot.spec.state_names, obs.state.tolist(), strict=True))
        assert state["steering"] == -1.0 and state["throttle"] == 0.5
        assert state["enc_ticks"] == 42 and state["imu_az"] == pytest.approx(9.8)
        assert obs.frame is not None and obs.frame.image[0, 0, 0] == 9
        assert robot.latest_frame() is obs.frame
    finally:
        robot.close()
    assert model.pulse_us(0) == pytest.approx(1500, abs=5)  # neutral on close
    assert model.pulse_us(1) == pytest.approx(1500, abs=5)
    assert cam.closed and robot.serial is not None and robot.serial._serial is None
    robot.close()  # safe twice


def test_failed_sensor_still_leaves_neutral(tmp_path: os.PathLike[str]) -> None:
    model = PCA9685Model()
    missing = os.path.join(tmp_path, "ttyACM7")
    robot = DonkeyRobot(donkey_config(serial_port=missing, camera="none"),
                        smbus_factory=FakeBuses({1: {0x40: model}}))
    assert robot.spec.state_names[2:] and robot.camera is None
    with pytest.raises(DeviceNotFound, match=missing):
        robot.connect()
    assert model.pulse_us(1) == pytest.approx(1500, abs=5)


def test_real_missing_bus_fails_fast_naming_it() -> None:
    if os.path.exists("/dev/i2c-1"):
        pytest.skip("this machine has a real /dev/i2c-1")
    robot = DonkeyRobot(donkey_config())
    assert robot.spec.state_names == ("steering", "throttle")
    with pytest.raises(DeviceNotFound, match="/dev/i2c-1") as exc:
        robot.connect()
    assert exc.value.__cause__ is None and exc.value.__suppress_context__  # one clean line
    robot.close()


def test_probes_against_fakes_and_absent_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    model = PCA9685Model()
    buses = FakeBuses({1: {0x40: model}})
    ok, detail = probe.probe_i2c_bus(1, smbus_factory=buses)
    assert ok and "0x40" in detail
    ok, detail = probe.probe_pca9685(1, 0x40, smbus_factory=buses)
    assert ok and "PRESCALE=30" in detail and "asleep" in detail
    assert model.mode1_writes == []  # probing never writes to the chip
    ok, detail = probe.probe_pca9685(1, 0x41, smbus_factory=buses)
    assert not ok and detail == "no PCA9685 answering at 0x41 on /dev/i2c-1"
    for bus in range(200, 203):
        if not os.path.exists(f"/dev/i2c-{bus}"):
            ok, detail = probe.probe_i2c_bus(bus)
            assert not ok and f"/dev/i2c-{bus}" in detail
            ok, detail = probe.probe_pca9685(bus, 0x40)
            assert not ok and f"/dev/i2c-{bus}" in detail
            break
    assert isinstance(probe.list_serial_ports(), list)
    monkeypatch.setitem(sys.modules, "picamera2", picamera2_standin.make_module())
    assert probe.list_cameras() == ["0: imx708 /base/axi/pcie@120000/rp1/i2c@88000/imx708@1a"]
    monkeypatch.setitem(sys.modules, "picamera2", None)
    assert all(p.startswith(("/dev/video", "/dev/media")) for p in probe.list_cameras())
