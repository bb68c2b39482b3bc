"""Scripted teacher: pure pursuit on the centreline with curvature-limited speed.

It reads privileged state (pose, speed, the track) and is cheap enough to call every control tick,
so it can stand in for a human teleoperator and label demonstrations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from brain.hardware.robot import Action
from brain.hardware.sim.car import CarParams, CarState
from brain.hardware.sim.tracks import Track


@dataclass(frozen=True)
class TeacherParams:
    cruise_mps: float = 1.0  # speed on straights
    lateral_accel: float = 0.8  # speed limit in curves: v = sqrt(a / curvature)
    min_speed_mps: float = 0.5
    # Lookahead: min + gain * speed. Pure pursuit is exact on an arc and cuts corners where the
    # curvature changes, by more the farther it looks. At 0.35 m + 0.35 s the teacher itself
    # drove the garage track at 0.020 m mean |cte| and the chicane at 0.016 m, so no policy
    # learning from it could meet the 0.02 m learning goal with a margin; at 0.25 m + 0.25 s
    # it drives them at 0.008 and 0.007 m, and stays stable with its actions held for a camera
    # frame and delayed by up to two ticks, as a policy's are (docs/training.md).
    lookahead_min_m: float = 0.25
    lookahead_gain_s: float = 0.25
    lookahead_max_m: float = 1.0
    brake_horizon_s: float = 0.9  # look this far (at current speed) ahead for curves
    brake_margin_m: float = 0.5


class Teacher:
    def __init__(self, track: Track, car: CarParams, params: TeacherParams | None = None) -> None:
        self.track, self.car, self.params = track, car, params or TeacherParams()
        p = self.params
        # Speed the road allows at each sample, precomputed once.
        with np.errstate(divide="ignore"):
            limit = np.sqrt(p.lateral_accel / np.abs(track.curvature))
        limit = np.clip(limit, p.min_speed_mps, p.cruise_mps)
        self._speed_limit = np.concatenate([limit, limit])  # slice ahead without wrapping

    def action(self, state: CarState, index: int) -> Action:
        """The teacher's command for `state`; `index` is the car's nearest centreline sample."""
        p, tr = self.params, self.track
        n = len(tr.xy)
        speed = max(state.speed, 0.0)
        lookahead = min(p.lookahead_max_m, p.lookahead_min_m + p.lookahead_gain_s * speed)
        target = tr.xy[(index + round(lookahead / tr.ds)) % n]
        dx, dy = float(target[0]) - state.x, float(target[1]) - state.y
        c, s = math.cos(state.yaw), math.sin(state.yaw)
        ahead, left = dx * c + dy * s, -dx * s + dy * c
        dist2 = max(ahead * ahead + left * left, 1e-6)
        # Pure pursuit: the arc through the target has curvature 2 * left / dist^2.
        wheel = math.atan(self.car.wheelbase_m * 2.0 * left / dist2)
        steering = -wheel / self.car.max_wheel_angle_rad  # left turn is negative steering
        window = min(n, round((p.brake_margin_m + speed * p.brake_horizon_s) / tr.ds))
        v = float(self._speed_limit[index % n: index % n + window + 1].min())
        return Action(max(-1.0, min(1.0, steering)), min(1.0, v / self.car.max_speed_mps))
