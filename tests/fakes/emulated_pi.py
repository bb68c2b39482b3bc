"""The pi5-donkey's devices, emulated inside a real `brain run --profile pi5-donkey` process.

Selected by the test-only environment `BRAIN_TEST_HARDWARE=tests.fakes.emulated_pi` (with
`BRAIN_TEST_HOOKS=1`; see brain/hardware/factory.py), so the daemon runs its real drivers
over emulated buses, each at the lowest seam there is:

- I2C: the register-level PCA9685 model (pca9685_model.py) behind the fake `smbus2.SMBus`, at
  the configured bus and address. After every bus transaction the model's 256 registers are
  published (atomically) to `$BRAIN_TEST_HW_DIR/pca9685.regs`, which is what a logic analyser
  on the bus would let a test see from outside the process.
- Camera: the picamera2 stand-in, whose sensor runs on its own clock at the configured frame
  rate and renders what the simulator's car sees. That car is driven by the pulses on the
  PCA9685's steering and throttle channels (decoded with the profile's calibration), so the
  policy's outputs move the car whose camera it reads: the loop is closed through the
  registers.
- Serial: nothing here: the test opens a pty pair, sets `profiles.pi5-donkey.serial_port` to
  its slave side and plays the scripted device on the master side.

Never on a robot: this module lives in the source tree's tests/, which is not installed.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from brain.config import Config
from brain.hardware.pca9685 import steering_map, throttle_map
from brain.hardware.robot import Action
from brain.hardware.sim.world import SimWorld
from tests.fakes import picamera2_standin
from tests.fakes.pca9685_model import FakeBuses, FakeSMBus, PCA9685Model

REGISTER_FILE = "pca9685.regs"


def hw_dir() -> Path:
    path = Path(os.environ.get("BRAIN_TEST_HW_DIR") or ".")
    path.mkdir(parents=True, exist_ok=True)
    return path


class MirroredBus(FakeSMBus):
    """A fake bus whose devices' registers are published to a file after every transfer."""

    def __init__(self, bus: int, devices: dict[int, PCA9685Model], mirror: Path,
                 lock: threading.Lock) -> None:
        super().__init__(bus, devices)
        self.mirror = mirror
        self.lock = lock  # the camera thread reads the model too

    def i2c_rdwr(self, *msgs: Any) -> None:
        with self.lock:
            super().i2c_rdwr(*msgs)
            model = next(iter(self.devices.values()))
            tmp = self.mirror.with_suffix(".tmp")
            tmp.write_bytes(bytes(model.regs))
            os.replace(tmp, self.mirror)


class SimulatedSensorCamera(picamera2_standin.Picamera2):
    """The stand-in camera with a free-running sensor: frames every 1/fps on CLOCK_MONOTONIC,
    rendered from the simulated car, which the PCA9685's pulses drive between frames."""

    cfg: Config
    model: PCA9685Model
    bus_lock: threading.Lock

    def start(self) -> None:
        super().start()
        assert self.config is not None
        w, h = self.config["main"]["size"]
        period_us = self.config["controls"]["FrameDurationLimits"][0]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sensor, args=(w, h, period_us / 1e6),
                                        name="emulated-sensor", daemon=True)
        self._thread.start()

    def _action(self) -> Action:
        p = self.cfg.profiles.pi5_donkey
        with self.bus_lock:
            steer_us = self.model.pulse_us(p.steering_channel)
            throttle_us = self.model.pulse_us(p.throttle_channel)
        if steer_us is None or throttle_us is None:
            return Action()  # outputs off: the car rolls to a stop
        return Action(steering_map(p).value_for(steer_us), throttle_map(p).value_for(throttle_us))

    def _sensor(self, width: int, height: int, period: float) -> None:
        world = SimWorld.from_profile(self.cfg.profiles.sim)
        world.reset()
        camera = world.camera(width, height)
        next_t = time.monotonic()
        while not self._stop.is_set():
            next_t += period
            self._stop.wait(max(0.0, next_t - time.monotonic()))
            world.step(self._action(), period)
            car = world.car.state
            image = camera.render(car.x, car.y, car.yaw)
            exposure_us = 5000
            # SensorTimestamp is the start of readout: the exposure ended just before it.
            ts = time.monotonic_ns()
            self.emit(ts, exposure_us=exposure_us, image=image)

    def stop(self) -> None:
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
            self._thread.join(timeout=5)
        super().stop()


def donkey_seams(cfg: Config) -> dict[str, Any]:
    """What DonkeyRobot takes in place of `smbus2.SMBus` and `import picamera2`."""
    p = cfg.profiles.pi5_donkey
    model = PCA9685Model()
    mirror = hw_dir() / REGISTER_FILE
    lock = threading.Lock()

    def open_bus(bus: int) -> MirroredBus:
        handle = FakeBuses({p.i2c_bus: {p.pca9685_address: model}})(bus)  # ENOENT if wrong
        return MirroredBus(handle.bus, handle.devices, mirror, lock)

    camera_cls = type("Picamera2", (SimulatedSensorCamera,),
                      {"cfg": cfg, "model": model, "bus_lock": lock})
    module = picamera2_standin.make_module()
    module.Picamera2 = camera_cls  # type: ignore[attr-defined]
    return {"smbus_factory": open_bus, "camera_loader": lambda: module}
