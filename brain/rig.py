"""The robot's composition: body, safety guard, modes, active model, policy thread, control loop
and recorder, wired the one way the daemon runs them.

`Rig.build(cfg)` is used by the daemon, by `brain collect` and by the benchmarks, so the
recorded demonstrations and the measured figures come from the same stack that drives the
robot (the ActuatorGuard included). Start-up order matters for safety: the body connects
(actuators neutral) before anything can command it; `stop()` runs in reverse and always ends
with the actuators neutral.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brain.control.loop import ControlLoop
from brain.control.model import SEED_MODEL_DIR, ModelError
from brain.control.modes import ModeMachine
from brain.control.policy import ActiveModel, PolicyRunner, load_policy
from brain.hardware.factory import make_robot
from brain.hardware.robot import NEUTRAL, Action, FrameSlot, Observation, Robot
from brain.identity import describe
from brain.recording import EpisodeControl

if TYPE_CHECKING:
    from brain.config import Config

log = logging.getLogger(__name__)


class ActuatorGuard(Robot):
    """Wraps the body to remember the last command written, so shutdown can prove (and log)
    that the actuators were left neutral, and so close() always neutralises first."""

    def __init__(self, inner: Robot) -> None:
        self.inner = inner
        self.spec = inner.spec
        self.last_written: Action = NEUTRAL
        self._lock = threading.Lock()

    @property
    def frames(self) -> FrameSlot | None:
        return self.inner.frames

    def connect(self) -> None:
        self.inner.connect()
        self.last_written = NEUTRAL

    def read(self) -> Observation:
        return self.inner.read()

    def write(self, action: Action) -> None:
        self.inner.write(action)
        self.last_written = action

    def neutral(self) -> None:
        with self._lock:
            self.inner.neutral()
            self.last_written = NEUTRAL

    def close(self) -> None:
        with self._lock:
            try:
                self.inner.neutral()
                self.last_written = NEUTRAL
            finally:
                self.inner.close()

    def __getattr__(self, name: str) -> Any:  # simulator extras (teacher_action, sim_params)
        return getattr(self.inner, name)


def resolve_model_dir(cfg: Config) -> Path:
    if cfg.policy.model_dir:
        return Path(cfg.policy.model_dir)
    return SEED_MODEL_DIR


def load_configured_policy(cfg: Config, model: ActiveModel) -> bool:
    """Load the configured model into `model`; False (logged) when there is none usable."""
    model_dir = resolve_model_dir(cfg)
    try:
        policy = load_policy(str(model_dir), cfg.policy.backend, cfg.policy.threads)
    except ModelError as e:
        log.error("no policy loaded: %s (autonomous mode unavailable)", e)
        return False
    model.swap(policy)
    log.info("policy %s loaded from %s (%s)", policy.id, model_dir, cfg.policy.backend)
    return True


@dataclass
class Rig:
    cfg: Config
    robot: ActuatorGuard
    modes: ModeMachine
    model: ActiveModel
    runner: PolicyRunner
    loop: ControlLoop
    episodes: EpisodeControl
    identity: dict[str, Any]

    @classmethod
    def build(cls, cfg: Config, *, with_policy: bool = True, operator: str | None = None,
              model_id: str | None = None, robot: Robot | None = None) -> Rig:
        """Connect the body (raises RobotError, actuators neutral) and compose the rest.
        `model_id` stamps episodes with a fixed source (e.g. "teacher") instead of the model;
        `robot` replaces the configured body (tests)."""
        robot = ActuatorGuard(robot if robot is not None else make_robot(cfg))
        robot.connect()
        try:
            model = ActiveModel()
            if with_policy:
                load_configured_policy(cfg, model)
            modes = ModeMachine(cfg.safety.deadman_ms / 1000.0, has_policy=model.available,
                                remote_reset_of_local_estop=cfg.safety.remote_reset_of_local_estop)
            runner = PolicyRunner(model, robot.frames, max_age_s=cfg.safety.deadman_ms / 1000.0)
            loop = ControlLoop.from_config(robot, modes, cfg, policy=runner)
            identity = describe(cfg.state_path, cfg.robot_name, cfg.profile)
            stamp = (lambda: model_id) if model_id is not None else (lambda: model.id)
            episodes = EpisodeControl.from_config(cfg, robot, identity, operator, stamp)
            loop.sinks.append(episodes.sink)
        except BaseException:
            robot.close()
            raise
        return cls(cfg, robot, modes, model, runner, loop, episodes, identity)

    def start(self) -> bool:
        """Start the policy thread and the loop; False when the loop did not tick."""
        self.runner.start()
        self.runner.enabled.set()
        self.loop.start()
        if self.loop.held:
            return self.loop.running  # lockstep, held at tick 0 until advanced
        return self.loop.wait_first_tick(timeout=3.0)

    def stop(self) -> None:
        """Finalise an open episode while the loop still runs, then stop the loop and the
        policy, then neutral and close the body. Each step runs whatever the others do."""
        for what, step in (("the recorder", self.episodes.close), ("the loop", self.loop.stop),
                           ("the policy thread", self.runner.stop),
                           ("the robot", self.robot.close)):
            try:
                step()
            except Exception as e:
                log.error("stopping %s failed: %s", what, e)
