"""The real service object (`brain.service.RobotService`) over a light test body.

Everything behind the API is the daemon's own: the `Rig` (real ModeMachine, ControlLoop,
ActiveModel, PolicyRunner, recorder) and the `RobotService` that owns every command. Only the
body is small: `LightBody` answers the Robot interface with a 64x48 camera that publishes a
frame every 5th tick, so API tests run in milliseconds without the simulator's renderer.

`LightService` starts it and records every change of the action the loop applied, with its time
on the loop's clock (time.monotonic), so tests can measure link-loss-to-neutral behaviourally.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from brain.api.pairing import Pairing
from brain.commands import LOCAL, Caller
from brain.config import Config
from brain.hardware.robot import Action, Frame, FrameSlot, Observation, Robot, RobotSpec
from brain.ota.manager import OtaManager
from brain.rig import Rig
from brain.service import RobotService

SHAPE = (48, 64, 3)


class LightBody(Robot):
    spec = RobotSpec(name="light", state_names=("steering", "throttle"), image_shape=SHAPE,
                     camera_fps=10.0)

    def __init__(self) -> None:
        self.slot = FrameSlot()
        self.applied = Action()
        self.ticks = 0

    @property
    def frames(self) -> FrameSlot:
        return self.slot

    def connect(self) -> None: ...

    def read(self) -> Observation:
        t = time.monotonic()
        if self.ticks % 5 == 0:
            image = np.full(SHAPE, self.ticks % 255, dtype=np.uint8)
            self.slot.publish(Frame(image=image, t_capture=t, seq=self.ticks // 5))
        self.ticks += 1
        state = np.array(self.applied.as_tuple(), dtype=np.float32)
        return Observation(t=t, state=state, frame=self.slot.latest())

    def write(self, action: Action) -> None:
        self.applied = action

    def close(self) -> None: ...


class SteadyPolicy:
    """A policy stand-in: steers a little left at a walking pace, whatever it sees."""

    id = "steady-0"

    def act(self, image: np.ndarray) -> Action:
        return Action(-0.1, 0.2)


class LightService:
    """A started RobotService over LightBody; `close()` stops it."""

    def __init__(self, state_dir: Path | None = None, name: str = "testbot",
                 deadman_ms: int = 250, with_ota: bool = False) -> None:
        self.state_dir = Path(state_dir or tempfile.mkdtemp(prefix="brain-light-"))
        cfg = Config(robot_name=name, state_dir=str(self.state_dir))
        cfg.safety.deadman_ms = deadman_ms
        cfg.recorder.min_free_mb = 16
        cfg.control.spin_us = 0
        self.cfg = cfg
        self.rig = Rig.build(cfg, with_policy=False, robot=LightBody())
        if with_ota:  # the daemon's OTA manager: the factory bundle (the seed) drives
            cfg.ota.trusted_keys_dir = ""
            cfg.layout.prepare()
            self.ota: OtaManager | None = OtaManager(cfg, self.rig.model, self.rig.loop,
                                                     self.rig.runner, self.rig.identity["id"])
            self.ota.start()
        else:
            self.ota = None
            self.rig.model.swap(SteadyPolicy())  # type: ignore[arg-type]
        self.service = RobotService(cfg, self.rig, Pairing(cfg.layout.api, 300), ota=self.ota)
        self.log: list[tuple[float, str, float, float]] = []  # (t, source, steering, throttle)
        self.teleop_count = 0
        self.last_command_at = float("-inf")
        self._last = (Action(), "")
        self.rig.loop.sinks.append(self._on_tick)
        teleop = self.service.teleop

        def counted(steering: float, throttle: float, client: str) -> None:
            self.teleop_count += 1
            t = time.monotonic()  # just before the command is stored: a conservative origin
            teleop(steering, throttle, client)
            self.last_command_at = t

        self.service.teleop = counted  # type: ignore[method-assign]
        assert self.rig.start()

    def _on_tick(self, obs: Observation, action: Action, source: str) -> None:
        if action != self._last[0]:
            self.log.append((obs.t, source, action.steering, action.throttle))
        self._last = (action, source)

    # -- what tests read ----------------------------------------------------------------------
    @property
    def device_id(self) -> str:
        return self.rig.identity["id"]

    @property
    def mode(self) -> str:
        return self.rig.modes.mode.value

    @property
    def action(self) -> tuple[float, float]:
        return self.rig.loop.last_action.as_tuple()

    def call(self, command: str, caller: Caller = LOCAL, **args: Any) -> Any:
        return self.service.commands.call(command, args, caller)

    def rename(self, name: str, model: str | None = None) -> None:
        """Change what identity() reports: a new robot name (announced by hand), and a model
        swapped in as an OTA install does it (announced by the model holder itself)."""
        self.rig.identity["name"] = name
        self.service.changed()
        if model is not None:
            self.rig.model.swap(SimpleNamespace(id=model))  # type: ignore[arg-type]

    def close(self) -> None:
        self.rig.stop()
