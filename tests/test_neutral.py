"""`brain neutral` (systemd's ExecStopPost=): after the daemon died with the ESC driving, the
outputs go back to neutral. The PCA9685 is the register-level model behind a fake SMBus."""

from __future__ import annotations

import argparse

from brain.config import load_config
from brain.control_socket import ControlClient
from brain.hardware.pca9685 import DonkeyPWM
from brain.neutral import cmd_neutral
from tests.fakes.pca9685_model import FakeBuses, PCA9685Model


def test_neutral_after_a_killed_daemon_left_the_esc_driving(tmp_path):
    cfg = load_config(env={"BRAIN_PROFILE": "pi5-donkey", "BRAIN_STATE_DIR": str(tmp_path)})
    model = PCA9685Model()
    buses = FakeBuses({1: {0x40: model}})
    driving = DonkeyPWM(cfg.profiles.pi5_donkey, smbus_factory=buses)
    driving.connect()
    driving.set(0.8, 0.7)  # then the daemon is SIGKILLed: nothing resets the chip
    p = cfg.profiles.pi5_donkey
    assert abs(model.pulse_us(p.throttle_channel) - 1850) < 10
    args = argparse.Namespace(config=cfg, force=False)
    rc = cmd_neutral(args, lambda *_: ControlClient(cfg.socket_path), smbus_factory=buses)
    assert rc == 0
    assert abs(model.pulse_us(p.throttle_channel) - p.throttle_neutral_us) < 10
    assert abs(model.pulse_us(p.steering_channel) - p.steering_center_us) < 10
    assert model.any_output_running(), "neutral pulses keep the ESC armed and still"


def test_neutral_names_the_missing_bus(tmp_path, capsys):
    cfg = load_config(env={"BRAIN_PROFILE": "pi5-donkey", "BRAIN_STATE_DIR": str(tmp_path)})
    args = argparse.Namespace(config=cfg, force=False)
    rc = cmd_neutral(args, lambda *_: ControlClient(cfg.socket_path),
                     smbus_factory=FakeBuses({}))
    assert rc == 1
    assert "/dev/i2c-1" in capsys.readouterr().err
