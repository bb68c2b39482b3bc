"""Build the robot body a configuration asks for. Driver modules are imported only when used,
so the simulator never imports smbus2/picamera2 and the Pi never renders tracks.

Test-only: `BRAIN_TEST_HARDWARE=<module>` (with `BRAIN_TEST_HOOKS=1`) runs the real pi5-donkey
drivers over emulated buses: the module's `donkey_seams(cfg)` returns what `DonkeyRobot` takes
in place of `smbus2.SMBus` and `import picamera2` (tests/fakes/emulated_pi.py). It is an
environment variable, not a configuration key, so no brain.toml can select it; it is refused
under systemd (where `INVOCATION_ID` is set) and without the test hooks, and its module lives
in the source tree's tests/, which a robot install does not have.
"""

from __future__ import annotations

import importlib
import logging
import os
from typing import TYPE_CHECKING, Any

from brain.hardware.robot import Robot

if TYPE_CHECKING:
    from brain.config import Config

log = logging.getLogger(__name__)

TEST_HARDWARE_VAR = "BRAIN_TEST_HARDWARE"


def make_robot(cfg: Config) -> Robot:
    if cfg.profile == "sim":
        from brain.hardware.sim import SimRobot

        return SimRobot(cfg)
    if cfg.profile == "pi5-donkey":
        from brain.hardware.donkey import DonkeyRobot

        return DonkeyRobot(cfg, **emulated_seams(cfg))
    raise ValueError(f"unknown robot profile {cfg.profile!r}")


def emulated_seams(cfg: Config, env: Any = None) -> dict[str, Any]:
    """The test-only device emulation, or {} (the real devices). Raises ConfigError when the
    setting is present where it must not be."""
    from brain.config import ConfigError

    env = os.environ if env is None else env
    name = env.get(TEST_HARDWARE_VAR, "")
    if not name:
        return {}
    if env.get("BRAIN_TEST_HOOKS") != "1":
        raise ConfigError(f"{TEST_HARDWARE_VAR} is a test-only setting: it needs "
                          "BRAIN_TEST_HOOKS=1 (unset it to drive the real hardware)")
    if env.get("INVOCATION_ID"):
        raise ConfigError(f"{TEST_HARDWARE_VAR} is refused under systemd: a service drives "
                          "the real hardware")
    try:
        module = importlib.import_module(name)
    except ImportError as e:
        raise ConfigError(f"{TEST_HARDWARE_VAR}={name}: cannot import it ({e}); it lives in "
                          "the source tree's tests/ and is not installed on robots") from None
    log.warning("EMULATED HARDWARE (%s=%s): the pi5-donkey drivers run over emulated buses; "
                "no real device is driven", TEST_HARDWARE_VAR, name)
    seams: dict[str, Any] = module.donkey_seams(cfg)
    return seams
