"""The real car, end to end: `brain run --profile pi5-donkey` over emulated buses.

The daemon process runs its real drivers (adafruit_pca9685 over SMBusI2C, PiCamera, the
pyserial reader); only the devices are emulated, at the lowest seam (tests/fakes/emulated_pi.py):
the register-level PCA9685 model behind the fake `smbus2.SMBus`, whose registers this test
reads from outside the process; the picamera2 stand-in, with a free-running sensor rendering
what a simulated car sees, the car being driven by the PCA9685's pulses; and a scripted serial
device on a pty played by this test. Everything is done the way a user does it: the CLI and the
HTTP API.

This is the test that catches a body whose camera never reaches the policy or the recorder
(`Robot.frames`): the policy would then never drive and episodes would have no images.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from brain.config import DonkeyProfile
from brain.hardware.pca9685 import steering_map, throttle_map
from brain.paths import StateLayout
from brain.rlds.store import load_episode
from tests.daemon_support import DaemonProcess
from tests.fakes.emulated_pi import REGISTER_FILE
from tests.poll import wait_until

pytestmark = pytest.mark.slow

PROFILE = DonkeyProfile()  # the default calibration, which the daemon also uses here
STEERING, THROTTLE = PROFILE.steering_channel, PROFILE.throttle_channel
PWM_PERIOD_US = 1e6 / PROFILE.pwm_frequency_hz


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Registers:
    """The PCA9685's registers as the emulated bus last published them."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_off(self, channel: int) -> tuple[int, int]:
        regs = self.path.read_bytes()
        base = 0x06 + 4 * channel
        return regs[base] | regs[base + 1] << 8, regs[base + 2] | regs[base + 3] << 8

    def pulse_us(self, channel: int) -> float:
        """High time in µs from the ON/OFF counts (full-on/off bits clear: a real pulse)."""
        on, off = self.on_off(channel)
        assert not (on | off) & 0x1000, f"channel {channel} flat: ON {on:#x} OFF {off:#x}"
        return ((off & 0xFFF) - (on & 0xFFF)) % 4096 * PWM_PERIOD_US / 4096

    def pulses(self) -> tuple[float, float]:
        return self.pulse_us(STEERING), self.pulse_us(THROTTLE)


class ScriptedSerialDevice:
    """A wheel encoder + IMU on the far side of a pty: ENC and IMU lines at 100 Hz."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        self.port = os.ttyname(self.slave)
        self.ticks = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.ticks += 3
            micros = int(time.monotonic() * 1e6) % (1 << 32)
            line = f"ENC {self.ticks} {micros}\nIMU 0.01 -0.02 9.81 0.0 0.0 0.12\n"
            try:
                os.write(self.master, line.encode())
            except OSError:
                return

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def car(tmp_path: Path):
    serial_dev = ScriptedSerialDevice()
    hw = tmp_path / "hw"
    port = free_port()
    d = DaemonProcess(tmp_path / "state", "--profile", "pi5-donkey", env={
        "BRAIN_TEST_HOOKS": "1", "BRAIN_TEST_HARDWARE": "tests.fakes.emulated_pi",
        "BRAIN_TEST_HW_DIR": str(hw),
        "BRAIN_PROFILES_PI5_DONKEY_SERIAL_PORT": serial_dev.port,
        # A small sensor mode: 160x120 at 25 fps, a whole number of 50 Hz ticks per frame.
        "BRAIN_CAMERA_WIDTH": "160", "BRAIN_CAMERA_HEIGHT": "120", "BRAIN_CAMERA_FPS": "25",
        "BRAIN_API_ENABLED": "1", "BRAIN_API_PORT": str(port), "BRAIN_API_MDNS": "0",
    })
    try:
        yield d, Registers(hw / REGISTER_FILE), f"http://127.0.0.1:{port}", serial_dev
    finally:
        d.kill()
        serial_dev.close()


def paired_client(d: DaemonProcess, url: str) -> httpx.Client:
    code = json.loads(d.cli("pair", "--json").stdout)["code"]
    r = httpx.post(url + "/api/v1/pair", json={"code": code, "client_name": "e2e"})
    r.raise_for_status()
    return httpx.Client(base_url=url, timeout=30,
                        headers={"Authorization": f"Bearer {r.json()['token']}"})


def near(a: float, b: float, tol: float = 8.0) -> bool:
    return abs(a - b) <= tol


def test_policy_drives_the_registers_records_and_stops_neutral(car) -> None:
    d, regs, url, serial_dev = car
    st = d.wait_ready()
    assert st["profile"] == "pi5-donkey" and st["model"] == "factory-seed-v1"
    assert "EMULATED HARDWARE" in d.log()
    neutral = (PROFILE.steering_center_us, PROFILE.throttle_neutral_us)
    assert all(near(p, n) for p, n in zip(regs.pulses(), neutral, strict=True))
    lo_s, hi_s = sorted((PROFILE.steering_left_us, PROFILE.steering_right_us))
    max_t = throttle_map(PROFILE).pulse_us(0.6)  # safety.max_throttle

    # CLI: arm, then drive. The policy, fed by the camera, moves the registers.
    d.cli("mode", "arm")
    wait_until(d.status, lambda s: s["policy"]["inferences"] > 10, timeout=20,
               what="the policy to run on camera frames")
    assert all(near(p, n) for p, n in zip(regs.pulses(), neutral, strict=True)), "ARMED moves"
    d.cli("mode", "drive")
    st = wait_until(d.status, lambda s: s["action"]["source"] == "policy"
                    and s["action"]["throttle"] > 0.05, timeout=10, what="the policy to drive")
    steer_us, throttle_us = wait_until(regs.pulses, lambda p: p[1] > neutral[1] + 10,
                                       timeout=5, what="forward throttle in the registers")
    assert lo_s <= steer_us <= hi_s
    assert PROFILE.throttle_neutral_us < throttle_us <= max_t + 8
    # The registers hold what the loop applied (the status snapshot is a tick or two older).
    applied = (steering_map(PROFILE).value_for(steer_us),
               throttle_map(PROFILE).value_for(throttle_us))
    st = d.status()
    assert abs(applied[1] - st["action"]["throttle"]) < 0.1, (applied, st["action"])
    assert st["camera_phase_lock"]["on"]

    # API: record an episode while the policy drives; it validates ok, images and serial state.
    with paired_client(d, url) as c:
        ep = c.post("/api/v1/episodes/start", json={"operator": "e2e"}).json()
        time.sleep(3.0)
        summary = c.post("/api/v1/episodes/stop").json()
        assert summary["id"] == ep["id"] and summary["frames"] > 40
        report = json.loads(d.cli("episodes", "validate", ep["id"], "--json").stdout)[0]
        assert report["status"] == "ok", report
        assert report["skew_p99_ms"] <= 5.0
        episode = load_episode(StateLayout(d.state_dir).episodes, ep["id"])
        names = episode.meta["metadata"]["state_names"]
        assert names[:2] == ["steering", "throttle"] and "enc_ticks" in names
        last = dict(zip(names, episode.steps[-1]["state"], strict=True))
        assert last["enc_ticks"] > 0 and last["imu_az"] == pytest.approx(9.81)
        assert episode.frames[0].shape == (120, 160, 3)
        assert {s["mode"] for s in episode.steps} == {"policy"}

        # E-stop over the API: neutral pulses at once, and it stays latched.
        assert c.post("/api/v1/mode", json={"mode": "estop"}).json()["mode"] == "estop"
        wait_until(regs.pulses, lambda p: near(p[0], neutral[0]) and near(p[1], neutral[1]),
                   timeout=2, what="neutral pulses after the e-stop")
        assert c.post("/api/v1/mode", json={"mode": "drive"}).status_code == 409

        # Manual over the API, then SIGTERM while a command is live: neutral in the registers.
        c.post("/api/v1/mode", json={"mode": "reset"}).raise_for_status()
        c.post("/api/v1/mode", json={"mode": "manual"}).raise_for_status()
        c.post("/api/v1/drive", json={"steering": -1.0, "throttle": 0.3}).raise_for_status()
        # The driver writes throttle, then steering (a stop lands first): wait for both.
        left = wait_until(regs.pulses, lambda p: p[1] > neutral[1] + 50
                          and near(p[0], PROFILE.steering_left_us), timeout=2,
                          what="the manual command in both channels")
        assert near(left[1], throttle_map(PROFILE).pulse_us(0.3))
        c.post("/api/v1/drive", json={"steering": -1.0, "throttle": 0.3}).raise_for_status()
        assert d.stop(signal.SIGTERM) == 0, d.log()
    assert all(near(p, n) for p, n in zip(regs.pulses(), neutral, strict=True))
    assert "actuators neutral (steering=0.000 throttle=0.000)" in d.log()


def test_emulated_hardware_is_refused_without_the_test_hooks(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path / "state", "--profile", "pi5-donkey",
                      env={"BRAIN_TEST_HARDWARE": "tests.fakes.emulated_pi",
                           "BRAIN_TEST_HOOKS": "0"})
    try:
        assert d.proc.wait(30) == 2
        assert "BRAIN_TEST_HARDWARE is a test-only setting" in d.log()
    finally:
        d.kill()
