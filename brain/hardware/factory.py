"""Build the robot body a configuration asks for. Driver modules are imported only when used,
so the simulator never imports smbus2/picamera2 and the Pi never renders tracks."""

from __future__ import annotations

from typing import TYPE_CHECKING

from brain.hardware.robot import Robot

if TYPE_CHECKING:
    from brain.config import Config


def make_robot(cfg: Config) -> Robot:
    if cfg.profile == "sim":
        from brain.hardware.sim import SimRobot

        return SimRobot(cfg)
    if cfg.profile == "pi5-donkey":
        from brain.hardware.donkey import DonkeyRobot

        return DonkeyRobot(cfg)
    raise ValueError(f"unknown robot profile {cfg.profile!r}")
