"""The one robot interface every body (simulated or real) implements.

The control loop sees only this: specs, connect/read/write/neutral/close. Drivers raise
`RobotError` subclasses with a message that names the bus, address or path that failed, so
the daemon can print one line instead of a traceback.
"""

from __future__ import annotations

import abc
import threading
import time
from dataclasses import dataclass, field

import numpy as np


class RobotError(RuntimeError):
    """A robot could not be reached or driven; the message names the device."""


class DeviceNotFound(RobotError):
    """A configured device (I2C bus, chip address, camera, serial port) is absent."""


@dataclass(frozen=True)
class Action:
    """Normalised command: steering -1 (full left) .. +1 (full right); throttle -1 .. +1."""

    steering: float = 0.0
    throttle: float = 0.0

    def as_tuple(self) -> tuple[float, float]:
        return (self.steering, self.throttle)


NEUTRAL = Action(0.0, 0.0)


@dataclass(frozen=True)
class Frame:
    """One camera image, RGB uint8 HxWx3, with its capture time on the monotonic clock."""

    image: np.ndarray
    t_capture: float  # time.monotonic() seconds at capture (exposure midpoint if known)
    seq: int  # capture sequence number; gaps mean dropped frames


@dataclass(frozen=True)
class Observation:
    """What the loop reads each tick."""

    t: float  # time.monotonic() at read (simulated time in lockstep)
    state: np.ndarray  # float32 vector described by RobotSpec.state_names
    frame: Frame | None  # latest camera frame (may be older than this tick)
    info: dict[str, float] = field(default_factory=dict)  # ground truth etc. (simulator)
    t_wall: float | None = None  # wall-clock time of `t` when it is simulated (lockstep)


@dataclass(frozen=True)
class RobotSpec:
    """Observation and action specs of a body."""

    name: str
    state_names: tuple[str, ...]
    action_names: tuple[str, ...] = ("steering", "throttle")
    image_shape: tuple[int, int, int] = (480, 640, 3)  # H, W, C of camera frames
    camera_fps: float = 30.0
    # True for a real sensor on its own clock; False where frames are taken on the loop's
    # ticks (the simulator), which leaves the loop nothing to align to.
    free_running_camera: bool = True


class Robot(abc.ABC):
    """A body the control loop can drive. All methods are called from the loop thread,
    except `latest_frame`, which any thread may call."""

    spec: RobotSpec

    @property
    @abc.abstractmethod
    def frames(self) -> FrameSlot | None:
        """Where the camera publishes frames; None only for a body without a camera.

        Abstract on purpose: the policy thread and the recorder wait on it, so a body that
        forgets to expose its camera would drive blind and record no images. Every body must
        say which it is."""

    @abc.abstractmethod
    def connect(self) -> None:
        """Open devices and bring actuators to neutral. Raises DeviceNotFound naming the device."""

    @abc.abstractmethod
    def read(self) -> Observation:
        """Latest state and camera frame. Must not block on the camera."""

    @abc.abstractmethod
    def write(self, action: Action) -> None:
        """Apply an (already clamped) action."""

    def neutral(self) -> None:
        """Bring actuators to neutral (steering centre, throttle stop)."""
        self.write(NEUTRAL)

    @abc.abstractmethod
    def close(self) -> None:
        """Neutral, then release devices. Safe to call twice and after a failed connect."""

    def latest_frame(self) -> Frame | None:
        """The newest camera frame, or None when no camera runs."""
        return self.frames.latest() if self.frames is not None else None


class FrameSlot:
    """Single-slot, latest-wins hand-off of frames from a capture thread to readers.

    Readers never wait; a writer never blocks on a reader. Swapping one reference under a lock
    is enough: frames are immutable once published.

    Lockstep (the simulator on simulated time, brain.hardware.sim): consumers that must see
    every frame (the recorder's encoder, the policy thread) `subscribe` and `ack` each frame
    when done with it, and the simulated camera `wait_acked` before the loop moves on, so
    simulated time never outruns them. In real time nobody waits for acks.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._frame: Frame | None = None
        self._cond = threading.Condition(self._lock)
        self._acked: dict[int, int] = {}  # consumer id -> newest seq it is done with
        self._next_id = 0

    def publish(self, frame: Frame) -> None:
        with self._cond:
            self._frame = frame
            self._cond.notify_all()

    def latest(self) -> Frame | None:
        with self._lock:
            return self._frame

    def wait_newer(self, seq: int, timeout: float) -> Frame | None:
        """Block until a frame with seq > `seq` is published (for consumers like the recorder)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._frame is None or self._frame.seq <= seq:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)
            return self._frame

    # -- lockstep -----------------------------------------------------------------------------
    def subscribe(self) -> int:
        """A consumer id; the frames published so far count as seen."""
        with self._cond:
            cid = self._next_id
            self._next_id += 1
            self._acked[cid] = self._frame.seq if self._frame is not None else -1
            return cid

    def unsubscribe(self, cid: int) -> None:
        with self._cond:
            self._acked.pop(cid, None)
            self._cond.notify_all()

    def ack(self, cid: int, seq: int) -> None:
        with self._cond:
            if cid in self._acked and seq > self._acked[cid]:
                self._acked[cid] = seq
                self._cond.notify_all()

    def wait_acked(self, timeout: float) -> bool:
        """Until every subscriber is done with the newest frame (False after `timeout`)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._frame is not None and any(
                    a < self._frame.seq for a in self._acked.values()):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True
