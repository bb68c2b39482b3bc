"""Safety state machine: transitions, latched e-stop, deadman, clamping."""

from __future__ import annotations

import math

import pytest

from brain.control.modes import Mode, ModeError, ModeMachine
from brain.control.safety import SafetyLimits
from brain.hardware.robot import NEUTRAL, Action


def machine(policy=True):
    return ModeMachine(deadman_s=0.25, has_policy=lambda: policy)


def test_starts_idle_and_neutral():
    m = machine()
    assert m.mode is Mode.IDLE
    assert m.select(0.0, Action(1, 1)) == (NEUTRAL, "idle")


def test_manual_applies_teleop_until_deadman():
    m = machine()
    m.request("manual")
    assert m.teleop(0.5, 0.3, "phone", now=10.0)
    assert m.select(10.1, None)[0] == Action(0.5, 0.3)
    assert m.select(10.249, None)[0] == Action(0.5, 0.3)
    action, source = m.select(10.251, None)
    assert action == NEUTRAL and source == "manual:deadman"
    assert m.teleop(-0.2, 0.1, "phone", now=10.3)  # a fresh command re-arms it
    assert m.select(10.35, None)[0] == Action(-0.2, 0.1)


def test_teleop_ignored_outside_manual():
    m = machine()
    assert not m.teleop(0.5, 0.5, "phone", now=1.0)
    m.request("arm")
    assert not m.teleop(0.5, 0.5, "phone", now=1.0)
    assert m.select(1.0, None)[0] == NEUTRAL


def test_release_drops_only_that_client():
    m = machine()
    m.request("manual")
    m.teleop(0.5, 0.5, "phone", now=1.0)
    m.release("laptop")
    assert m.select(1.01, None)[0] == Action(0.5, 0.5)
    m.release("phone")
    assert m.select(1.02, None)[0] == NEUTRAL


def test_armed_holds_neutral_driving_applies_policy():
    m = machine()
    m.request("arm")
    assert m.mode is Mode.ARMED
    assert m.select(1.0, Action(0.3, 0.4))[0] == NEUTRAL
    m.request("drive")
    assert m.select(1.0, Action(0.3, 0.4)) == (Action(0.3, 0.4), "policy")
    assert m.select(1.0, None)[0] == NEUTRAL  # no fresh policy output: neutral


def test_drive_requires_arm_and_policy():
    m = machine()
    with pytest.raises(ModeError, match="arm first"):
        m.request("drive")
    m2 = machine(policy=False)
    with pytest.raises(ModeError, match="no policy"):
        m2.request("arm")
    assert m2.mode is Mode.IDLE


def test_estop_latches_until_reset():
    m = machine()
    m.request("manual")
    m.teleop(1.0, 1.0, "phone", now=1.0)
    m.request("estop", reason="button")
    assert m.mode is Mode.ESTOP
    assert m.select(1.01, Action(1, 1))[0] == NEUTRAL
    for req in ("idle", "manual", "arm", "drive"):
        with pytest.raises(ModeError, match="latched"):
            m.request(req)
        assert m.mode is Mode.ESTOP
    assert not m.teleop(1.0, 1.0, "phone", now=1.1)
    m.request("reset")
    assert m.mode is Mode.IDLE
    m.request("manual")
    # the command from before the e-stop must not come back
    assert m.select(1.12, None)[0] == NEUTRAL


def test_reset_only_from_estop_and_unknown_request():
    m = machine()
    with pytest.raises(ModeError):
        m.request("reset")
    with pytest.raises(ModeError, match="unknown"):
        m.request("warp")


@pytest.mark.parametrize("raw,expected", [
    (Action(2.0, 2.0), Action(0.8, 0.5)),
    (Action(-2.0, -2.0), Action(-0.8, -0.2)),
    (Action(0.1, 0.1), Action(0.1, 0.1)),
    (Action(math.nan, 0.3), NEUTRAL),
    (Action(0.2, math.inf), NEUTRAL),
])
def test_clamp(raw, expected):
    limits = SafetyLimits(max_steering=0.8, max_throttle=0.5, max_reverse=0.2)
    assert limits.clamp(raw) == expected


def test_tighten_takes_the_stricter():
    a = SafetyLimits(1.0, 0.6, 0.3).tighten(SafetyLimits(0.5, 0.8, 0.1))
    assert a == SafetyLimits(0.5, 0.6, 0.1)
