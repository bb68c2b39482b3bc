"""`SimRobot`: the simulated world behind the daemon's `Robot` interface.

Time is the control loop's: each `write()` advances the physics by exactly one tick
(1 / drive_hz), so a run is deterministic whatever the wall clock does. The camera is
phase-locked to the loop: when a frame is due on the `camera.fps` schedule, `read()` hands a
snapshot of the camera pose and its own timestamp to the camera thread, which renders it and
publishes a `Frame` stamped with exactly that timestamp. The loop thread never renders.

Lockstep (`control.lockstep`): simulated time instead. `read()` stamps tick k with
t0 + k / drive_hz, first waits until every frame consumer (recorder, policy) is done with the
newest frame, and renders a due frame itself, so the loop runs as fast as rendering allows and
every frame is seen, in the same code path as in real time.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np

from brain.config import Config, ConfigError
from brain.hardware.robot import (
    Action,
    Frame,
    FrameSlot,
    Observation,
    Robot,
    RobotError,
    RobotSpec,
)
from brain.hardware.sim.render import Camera
from brain.hardware.sim.tracks import SimParamError
from brain.hardware.sim.world import SimWorld, frame_due

log = logging.getLogger(__name__)

STATE_NAMES = ("speed", "yaw_rate", "steering_applied", "throttle_applied")


class SimRobot(Robot):
    def __init__(self, cfg: Config) -> None:
        p = cfg.profiles.sim
        try:
            self.world = SimWorld.from_profile(p)
        except SimParamError as e:
            raise ConfigError(f"profiles.sim.{e.key} (in {cfg.source}): {e.message}") from None
        self.hz = cfg.drive_hz
        self.dt = 1.0 / self.hz
        self.fps = min(cfg.camera.fps, self.hz)  # at most one frame per tick
        self.width, self.height = cfg.camera.width, cfg.camera.height
        self.spec = RobotSpec(name="sim", state_names=STATE_NAMES,
                              image_shape=(self.height, self.width, 3), camera_fps=float(self.fps),
                              free_running_camera=False)
        self._slot = FrameSlot()
        self._camera: Camera | None = None
        self._thread: threading.Thread | None = None
        self._cond = threading.Condition()
        self._request: tuple[tuple[float, float, float], float, int] | None = None
        self._stop = False
        self._connected = False
        self._tick = 0
        self._seq = 0
        self.frames_requested = 0
        self.frames_dropped = 0  # requests overwritten before the camera thread took them
        self._info: dict[str, float] = {}
        self.lockstep = bool(cfg.control.lockstep)
        self._t0 = 0.0  # simulated time of tick 0 (lockstep)
        self._wall0 = 0.0

    # -- Robot -----------------------------------------------------------------------------------

    def connect(self) -> None:
        if self._connected:
            return
        truth = self.world.reset()
        self._info = truth.as_dict()
        self._tick = 0
        # Build the raster and per-pixel rays here, once, so the first frame is not late.
        self._camera = self.world.camera(self.width, self.height)
        self._stop = False
        self._t0, self._wall0 = time.monotonic(), time.time()
        if not self.lockstep:
            self._thread = threading.Thread(target=self._camera_loop, name="sim-camera",
                                            daemon=True)
            self._thread.start()
        self._connected = True
        log.info("simulator: track %s, road %.2f m, camera %dx%d at %d fps, %d Hz",
                 self.world.track.name, self.world.track.width, self.width, self.height,
                 self.fps, self.hz)

    def read(self) -> Observation:
        if not self._connected:
            raise RobotError("simulated robot: read() before connect()")
        if self.lockstep:
            return self._read_lockstep()
        t = time.monotonic()
        if frame_due(self._tick, self.hz, self.fps):
            pose = self.world.car.camera_pose()
            with self._cond:
                if self._request is not None:
                    self.frames_dropped += 1
                self._request = (pose, t, self._seq)
                self._cond.notify()
            self._seq += 1
            self.frames_requested += 1
        self._tick += 1
        st = self.world.car.state
        state = np.array([st.speed, st.yaw_rate, st.steering, st.throttle], np.float32)
        return Observation(t=t, state=state, frame=self._slot.latest(), info=self._info)

    def _read_lockstep(self) -> Observation:
        if not self._slot.wait_acked(timeout=30.0):
            log.error("lockstep: a frame consumer did not keep up within 30 s; going on")
        t = self._t0 + self._tick * self.dt
        if frame_due(self._tick, self.hz, self.fps):
            assert self._camera is not None
            image = self._camera.render(*self.world.car.camera_pose())
            self._slot.publish(Frame(image=image, t_capture=t, seq=self._seq))
            self._seq += 1
            self.frames_requested += 1
        self._tick += 1
        st = self.world.car.state
        state = np.array([st.speed, st.yaw_rate, st.steering, st.throttle], np.float32)
        return Observation(t=t, state=state, frame=self._slot.latest(), info=self._info,
                           t_wall=self._wall0 + (t - self._t0))

    def write(self, action: Action) -> None:
        if not self._connected:
            raise RobotError("simulated robot: write() before connect()")
        before = self._info.get("progress_laps", 0.0)
        info = self.world.step(action, self.dt).as_dict()
        # The simulator's reward: metres gained along the track by this tick's action (the
        # recorder stores whatever reward the body reports; a real car reports none).
        info["reward"] = (info["progress_laps"] - before) * self.world.track.length
        self._info = info

    def neutral(self) -> None:
        """One tick with steering centred and throttle off; a no-op when not connected, so
        every exit path may call it."""
        if self._connected:
            self.write(Action(0.0, 0.0))

    def close(self) -> None:
        thread = self._thread
        if thread is not None:
            with self._cond:
                self._stop = True
                self._cond.notify()
            thread.join(timeout=5.0)
            self._thread = None
        self._connected = False

    @property
    def frames(self) -> FrameSlot:
        return self._slot

    # -- simulator extras ------------------------------------------------------------------------

    def teacher_action(self) -> Action:
        """The scripted teacher's command for the car's current state (a stand-in teleop)."""
        return self.world.teacher_action()

    def sim_params(self) -> dict[str, Any]:
        """Simulator parameters for episode metadata."""
        return {**self.world.params(), "drive_hz": self.hz, "camera_fps": self.fps,
                "camera_width": self.width, "camera_height": self.height}

    def _camera_loop(self) -> None:
        assert self._camera is not None
        camera = self._camera
        while True:
            with self._cond:
                while self._request is None and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                request, self._request = self._request, None
            assert request is not None
            (x, y, yaw), t, seq = request
            try:
                image = camera.render(x, y, yaw)
            except Exception:  # a rendering bug must not kill the camera silently
                log.exception("simulated camera failed to render frame %d", seq)
                continue
            self._slot.publish(Frame(image=image, t_capture=t, seq=seq))
