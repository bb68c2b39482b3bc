"""Kinematic bicycle model of a donkey car, stepped with an explicit dt.

The reference point is the rear axle, so the path radius at a steady wheel angle delta is
exactly wheelbase / tan(delta). Steering and speed follow their commands through first-order
lags (servo and ESC/motor), integrated exactly for a step of any length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from brain.hardware.robot import Action


@dataclass(frozen=True)
class CarParams:
    wheelbase_m: float = 0.25
    max_wheel_angle_rad: float = math.radians(25.0)
    max_speed_mps: float = 2.0  # speed at throttle 1 (reverse mirrors it)
    speed_tau_s: float = 0.3  # motor/ESC lag
    steer_tau_s: float = 0.05  # servo lag
    camera_forward_m: float = 0.15  # camera position ahead of the rear axle


@dataclass
class CarState:
    x: float = 0.0
    y: float = 0.0
    yaw: float = 0.0  # rad, counter-clockwise from +x
    speed: float = 0.0  # m/s along the heading, negative in reverse
    steering: float = 0.0  # applied steering, -1 (full left) .. +1 (full right)
    throttle: float = 0.0  # last commanded throttle, -1 .. 1
    yaw_rate: float = 0.0  # rad/s over the last step


def _clip(v: float) -> float:
    return -1.0 if v < -1.0 else 1.0 if v > 1.0 else v


class Car:
    """Plain floats on purpose: a step costs microseconds, cheap enough for the loop thread."""

    def __init__(self, params: CarParams | None = None, state: CarState | None = None) -> None:
        self.params = params or CarParams()
        self.state = state or CarState()

    def wheel_angle(self, steering: float) -> float:
        """Steering +1 (right) turns clockwise, i.e. a negative angle in the CCW convention."""
        return -_clip(steering) * self.params.max_wheel_angle_rad

    def step(self, action: Action, dt: float) -> CarState:
        if not dt > 0.0:
            raise ValueError(f"dt must be positive, got {dt!r}")
        p, s = self.params, self.state
        steer_cmd, throttle = _clip(action.steering), _clip(action.throttle)
        s.steering += (steer_cmd - s.steering) * (1.0 - math.exp(-dt / p.steer_tau_s))
        s.speed += (throttle * p.max_speed_mps - s.speed) * (1.0 - math.exp(-dt / p.speed_tau_s))
        s.throttle = throttle
        # Exact arc for the step (speed and wheel angle held over dt).
        omega = s.speed * math.tan(self.wheel_angle(s.steering)) / p.wheelbase_m
        if abs(omega) > 1e-9:
            yaw1 = s.yaw + omega * dt
            r = s.speed / omega
            s.x += r * (math.sin(yaw1) - math.sin(s.yaw))
            s.y -= r * (math.cos(yaw1) - math.cos(s.yaw))
            s.yaw = (yaw1 + math.pi) % (2 * math.pi) - math.pi
        else:
            s.x += s.speed * dt * math.cos(s.yaw)
            s.y += s.speed * dt * math.sin(s.yaw)
        s.yaw_rate = omega
        return s

    def camera_pose(self) -> tuple[float, float, float]:
        """(x, y, yaw) of the camera, a cheap snapshot for the renderer."""
        s, f = self.state, self.params.camera_forward_m
        return (s.x + f * math.cos(s.yaw), s.y + f * math.sin(s.yaw), s.yaw)
