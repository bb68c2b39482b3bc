"""Safety limits applied to every action before it reaches an actuator."""

from __future__ import annotations

import math
from dataclasses import dataclass

from brain.hardware.robot import NEUTRAL, Action


@dataclass(frozen=True)
class SafetyLimits:
    max_steering: float = 1.0
    max_throttle: float = 1.0  # forward
    max_reverse: float = 1.0

    def clamp(self, action: Action) -> Action:
        s, t = action.steering, action.throttle
        if not (math.isfinite(s) and math.isfinite(t)):
            return NEUTRAL  # a NaN from a broken policy or client never reaches a servo
        s = min(max(s, -self.max_steering), self.max_steering)
        t = min(max(t, -self.max_reverse), self.max_throttle)
        return Action(s, t)

    def tighten(self, other: SafetyLimits) -> SafetyLimits:
        """The stricter of two sets of limits (config vs. a model bundle's safety manifest)."""
        return SafetyLimits(min(self.max_steering, other.max_steering),
                            min(self.max_throttle, other.max_throttle),
                            min(self.max_reverse, other.max_reverse))
