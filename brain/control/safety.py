"""Safety limits applied to every action before it reaches an actuator.

Whatever the limits were given (a NaN from a broken setting, a negative, an infinity), `clamp`
is never more permissive than the finite limits in [0, 1]: a limit that is not a number or is
below 0 allows nothing, one above 1 allows full scale. NaN compares false with everything, so
the effective limits are worked out once here rather than trusting min()/max() with them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from brain.hardware.robot import NEUTRAL, Action


def effective_limit(limit: float) -> float:
    """`limit` as a usable bound in [0, 1]: NaN or negative -> 0, above 1 -> 1."""
    try:
        value = float(limit)
    except (TypeError, ValueError):
        return 0.0
    return min(value, 1.0) if value >= 0.0 else 0.0  # NaN >= 0 is False


@dataclass(frozen=True)
class SafetyLimits:
    max_steering: float = 1.0
    max_throttle: float = 1.0  # forward
    max_reverse: float = 1.0
    _bounds: tuple[float, float, float] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_bounds", (effective_limit(self.max_steering),
                                             effective_limit(self.max_throttle),
                                             effective_limit(self.max_reverse)))

    def clamp(self, action: Action) -> Action:
        s, t = action.steering, action.throttle
        if not (isinstance(s, float | int) and isinstance(t, float | int)
                and math.isfinite(s) and math.isfinite(t)):
            return NEUTRAL  # a NaN from a broken policy or client never reaches a servo
        steer, forward, reverse = self._bounds
        return Action(min(max(float(s), -steer), steer), min(max(float(t), -reverse), forward))

    def tighten(self, other: SafetyLimits) -> SafetyLimits:
        """The stricter of two sets of limits (config vs. a model bundle's safety manifest)."""
        return SafetyLimits(*(min(a, b) for a, b in zip(self._bounds, other._bounds,
                                                          strict=True)))
