"""The Raspberry Pi 5 donkey car: servo + ESC on a PCA9685, Pi camera, optional serial sensor.

`DonkeyRobot` only composes the drivers; each of them names its own device in its errors.
Seams for tests (and for other buses): `smbus_factory` replaces `smbus2.SMBus`,
`camera_loader` replaces the lazy `import picamera2`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from brain.config import Config
from brain.hardware.i2c import SMBusLike
from brain.hardware.pca9685 import DonkeyPWM
from brain.hardware.picam import PiCamera, import_picamera2
from brain.hardware.robot import NEUTRAL, Action, FrameSlot, Observation, Robot, RobotSpec
from brain.hardware.serial_peripheral import SerialPeripheral

log = logging.getLogger(__name__)

BASE_STATE = ("steering", "throttle")  # as applied to the outputs, after clamping
SERIAL_STATE = ("enc_ticks", "enc_rate_tps", "imu_ax", "imu_ay", "imu_az",
                "imu_gx", "imu_gy", "imu_gz")


class DonkeyRobot(Robot):
    def __init__(self, cfg: Config, *, smbus_factory: Callable[[int], SMBusLike] | None = None,
                 camera_loader: Callable[[], Any] = import_picamera2,
                 sleep_pwm_on_close: bool = False) -> None:
        p = cfg.profiles.pi5_donkey
        self.cfg = cfg
        self.profile = p
        self.pwm = DonkeyPWM(p, smbus_factory=smbus_factory, sleep_on_close=sleep_pwm_on_close)
        self.slot = FrameSlot()
        self.camera: PiCamera | None = None
        if p.camera == "picamera2":
            self.camera = PiCamera(cfg.camera.width, cfg.camera.height, cfg.camera.fps,
                                   self.slot, loader=camera_loader)
        self.serial = SerialPeripheral(p.serial_port, p.serial_baud) if p.serial_port else None
        names = BASE_STATE + (SERIAL_STATE if self.serial else ())
        self.spec = RobotSpec(name="pi5-donkey", state_names=names,
                              image_shape=(cfg.camera.height, cfg.camera.width, 3),
                              camera_fps=float(cfg.camera.fps))
        self._connected = False

    def connect(self) -> None:
        """PWM first (the actuators go neutral as early as possible), then sensors."""
        try:
            self.pwm.connect()
            if self.camera is not None:
                self.camera.start()
            if self.serial is not None:
                self.serial.open()
        except BaseException:
            try:
                self.close()
            except Exception as e:  # the connect error is the one to report
                log.error("cleaning up after a failed connect: %s", e)
            raise
        self._connected = True

    def read(self) -> Observation:
        steering, throttle = self.pwm.applied
        values = [steering, throttle]
        info: dict[str, float] = {}
        if self.serial is not None:
            r = self.serial.read()
            values += [float(r.enc_ticks), r.enc_rate_tps, *r.imu]
            info["serial_bad_lines"] = float(r.bad_lines)
            info["enc_t"] = r.t_enc
            info["imu_t"] = r.t_imu
        if self.camera is not None:
            info["camera_dropped"] = float(self.camera.dropped)
            info["camera_latency_s"] = self.camera.last_latency_s
        return Observation(t=time.monotonic(), state=np.asarray(values, dtype=np.float32),
                           frame=self.latest_frame(), info=info)

    def write(self, action: Action) -> None:
        self.pwm.set(action.steering, action.throttle)

    def neutral(self) -> None:
        self.write(NEUTRAL)

    @property
    def frames(self) -> FrameSlot | None:
        return self.slot if self.camera is not None else None

    def close(self) -> None:
        """Neutral first, whatever else fails; then the sensors. Safe to call twice."""
        errors: list[BaseException] = []
        for part in (self.pwm, self.camera, self.serial):
            if part is None:
                continue
            try:
                part.stop() if isinstance(part, PiCamera) else part.close()
            except Exception as e:  # keep closing the rest; report the first failure
                log.error("closing %s: %s", type(part).__name__, e)
                errors.append(e)
        self._connected = False
        if errors:
            raise errors[0]
