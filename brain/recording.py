"""Glue between the control loop and the episode recorder.

The loop calls `sink(obs, action, source)` every tick; while an episode is open it becomes a
`StepSample` handed to the recorder (O(1), no I/O). Start/stop come from the control socket, the
API or `brain collect`, and stamp the episode metadata (robot, model, operator, simulator).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brain.hardware.robot import Action, Observation, Robot
from brain.rlds.recorder import Recorder, StepSample
from brain.rlds.store import recover

if TYPE_CHECKING:
    from brain.config import Config

log = logging.getLogger(__name__)


class EpisodeControl:
    def __init__(self, recorder: Recorder, robot: Robot, identity: dict[str, Any],
                 drive_hz: float, camera: dict[str, Any], default_operator: str = "",
                 model_id: Callable[[], str] = lambda: "none") -> None:
        self.recorder = recorder
        self.robot = robot
        self.identity = identity
        self.drive_hz = drive_hz
        self.camera = camera
        self.default_operator = default_operator
        self.model_id = model_id  # the active model's id, stamped on each new episode
        self._active = False
        self._instruction = ""

    @classmethod
    def from_config(cls, cfg: Config, robot: Robot, identity: dict[str, Any],
                    operator: str | None = None,
                    model_id: Callable[[], str] = lambda: "none") -> EpisodeControl:
        """Recover the store, then a recorder on the robot's camera as configured."""
        episodes_dir = cfg.layout.episodes
        cls.recover_store(episodes_dir)
        recorder = Recorder(episodes_dir, robot.frames, jpeg_quality=cfg.camera.jpeg_quality,
                            fsync_interval_s=cfg.recorder.fsync_interval_ms / 1000.0,
                            min_free_bytes=cfg.recorder.min_free_mb << 20,
                            max_episode_s=float(cfg.recorder.max_episode_s),
                            lockstep=cfg.control.lockstep)
        camera = {"width": cfg.camera.width, "height": cfg.camera.height, "fps": cfg.camera.fps}
        return cls(recorder, robot, identity, cfg.drive_hz, camera,
                   cfg.recorder.operator if operator is None else operator, model_id)

    @classmethod
    def recover_store(cls, episodes_dir: Path) -> list[dict[str, Any]]:
        """Start-up recovery: cut torn tails, mark never-closed episodes incomplete."""
        episodes_dir.mkdir(parents=True, exist_ok=True)
        report = recover(episodes_dir)
        for r in report:
            log.warning("recovered episode %s: %s", r.get("id"), r.get("action", r))
        return report

    def start(self, operator: str = "", language_instruction: str = "") -> str:
        sim = getattr(self.robot, "sim_params", None)
        sim_params = sim() if callable(sim) else None
        meta = {
            "robot_id": self.identity["id"], "robot_name": self.identity["name"],
            "robot_profile": self.identity["profile"], "hostname": self.identity["hostname"],
            "software_version": self.identity["version"], "model_id": self.model_id(),
            "operator": operator or self.default_operator,
            "language_instruction": language_instruction,
            "drive_hz": self.drive_hz, "camera": self.camera,
            "state_names": list(self.robot.spec.state_names),
            "action_names": list(self.robot.spec.action_names),
            "simulated": sim_params is not None, "simulator": sim_params,
        }
        self._instruction = language_instruction
        episode_id = self.recorder.start_episode(meta)
        self._active = True
        return episode_id

    def stop(self, reason: str = "stopped") -> dict[str, Any]:
        self._active = False
        return self.recorder.stop_episode(reason)

    def status(self) -> dict[str, Any]:
        return self.recorder.status()

    def close(self) -> None:
        self._active = False
        self.recorder.close()

    def sink(self, obs: Observation, action: Action, source: str) -> None:
        """Control thread, every tick."""
        if not self._active:
            return
        self.recorder.on_step(StepSample(
            t_mono=obs.t, t_wall=obs.t_wall if obs.t_wall is not None else time.time(),
            state=obs.state,
            action=(action.steering, action.throttle), reward=obs.info.get("reward", 0.0),
            discount=1.0,
            is_terminal=False, mode=source, language_instruction=self._instruction))
