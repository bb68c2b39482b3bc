"""The safety state machine: which source may move the robot, and when.

    IDLE --manual--> MANUAL --arm--> ARMED --drive--> DRIVING
      ^                 |              |                |
      +------idle-------+------idle----+------idle------+
    any --estop--> ESTOP (latched) --reset--> IDLE

IDLE, ARMED and ESTOP hold the actuators neutral (ARMED still runs the policy so the first
DRIVING tick has a fresh output). MANUAL applies teleop commands that are younger than the
deadman; DRIVING applies the policy. ESTOP can only be left by an explicit reset.

Requests come from other threads (control socket, API); the loop thread reads the mode once per
tick. A lock guards transitions; reads of `mode` are a single attribute load.
"""

from __future__ import annotations

import collections
import enum
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from brain.hardware.robot import NEUTRAL, Action


class Mode(enum.Enum):
    IDLE = "idle"
    MANUAL = "manual"
    ARMED = "autonomous_armed"
    DRIVING = "autonomous_driving"
    ESTOP = "estop"

    @property
    def family(self) -> str:
        return {"idle": "IDLE", "manual": "MANUAL", "autonomous_armed": "AUTONOMOUS",
                "autonomous_driving": "AUTONOMOUS", "estop": "ESTOP"}[self.value]


class ModeError(ValueError):
    """A refused mode transition; the message says why."""


class ForbiddenReset(ModeError):
    """A remote reset of an e-stop latched on the robot or by a fault, which needs someone at
    the robot (or `safety.remote_reset_of_local_estop`)."""


# request -> (allowed source modes, target)
_TRANSITIONS: dict[str, tuple[frozenset[Mode], Mode]] = {
    "idle": (frozenset({Mode.IDLE, Mode.MANUAL, Mode.ARMED, Mode.DRIVING}), Mode.IDLE),
    "manual": (frozenset({Mode.IDLE, Mode.MANUAL, Mode.ARMED, Mode.DRIVING}), Mode.MANUAL),
    "arm": (frozenset({Mode.IDLE, Mode.MANUAL, Mode.ARMED, Mode.DRIVING}), Mode.ARMED),
    "drive": (frozenset({Mode.ARMED, Mode.DRIVING}), Mode.DRIVING),
    "estop": (frozenset(Mode), Mode.ESTOP),
    "reset": (frozenset({Mode.ESTOP}), Mode.IDLE),
}
REQUESTS = tuple(_TRANSITIONS)


@dataclass(frozen=True)
class TeleopCommand:
    action: Action
    t: float  # monotonic time received
    source: str


# Who asked: the robot's own side (control socket, CLI: its file permissions are the auth), a
# paired remote client (API), or the loop itself on a fault.
BY_ROBOT, BY_REMOTE, BY_FAULT = "local", "remote", "fault"
ESTOP_HISTORY = 50


@dataclass(frozen=True)
class EstopEvent:
    t_wall: float
    origin: str  # BY_ROBOT, BY_REMOTE or BY_FAULT
    reason: str
    latched: bool  # False: the e-stop was already latched, this one was recorded only


class ModeMachine:
    def __init__(self, deadman_s: float,
                 has_policy: Callable[[], bool] = lambda: False, *,
                 remote_reset_of_local_estop: bool = False) -> None:
        self.deadman_s = deadman_s
        self.has_policy = has_policy  # asked at every arm/drive: the model can change at run time
        self.remote_reset_of_local_estop = remote_reset_of_local_estop
        self._lock = threading.Lock()
        self.mode = Mode.IDLE
        self.estop_reason = ""  # of the e-stop that latched; later ones do not overwrite it
        self.estop_origin = ""
        self.estop_history: collections.deque[EstopEvent] = collections.deque(
            maxlen=ESTOP_HISTORY)
        self._teleop: TeleopCommand | None = None
        self.transitions = 0

    def request(self, name: str, reason: str = "", origin: str = BY_ROBOT) -> Mode:
        """Apply a named transition (idle, manual, arm, drive, estop, reset) or raise ModeError.

        An e-stop keeps the reason and origin of the one that latched it; every later e-stop
        is recorded in `estop_history`. A remote client may reset only an e-stop that a remote
        client latched, unless `remote_reset_of_local_estop` is set: one latched on the robot
        (CLI) or by a fault needs someone at the robot."""
        if name not in _TRANSITIONS:
            raise ModeError(f"unknown mode request {name!r}; expected one of {', '.join(REQUESTS)}")
        allowed, target = _TRANSITIONS[name]
        with self._lock:
            current = self.mode
            if target is Mode.ESTOP:
                latched = current is not Mode.ESTOP
                self.estop_history.append(EstopEvent(time.time(), origin,
                                                     reason or "requested", latched))
                if latched:
                    self.estop_reason, self.estop_origin = reason or "requested", origin
                    self._teleop = None
                    self.transitions += 1
                    self.mode = Mode.ESTOP
                return Mode.ESTOP
            if current not in allowed:
                if current is Mode.ESTOP:
                    raise ModeError(f"e-stop is latched ({self.estop_reason or 'no reason given'})"
                                    "; send 'reset' first")
                if name == "drive":
                    raise ModeError(f"cannot drive from {current.value}: arm first")
                raise ModeError(f"cannot {name} from {current.value}")
            if (name == "reset" and origin == BY_REMOTE and self.estop_origin != BY_REMOTE
                    and not self.remote_reset_of_local_estop):
                by = "by a fault" if self.estop_origin == BY_FAULT else "on the robot"
                raise ForbiddenReset(
                    f"the e-stop was latched {by} ({self.estop_reason}); reset it on the robot "
                    "with `brain mode reset` (safety.remote_reset_of_local_estop allows a "
                    "remote reset)")
            if target in (Mode.ARMED, Mode.DRIVING) and not self.has_policy():
                raise ModeError("no policy is loaded; autonomous mode is unavailable")
            if target is Mode.IDLE and current is Mode.ESTOP:
                self.estop_reason = self.estop_origin = ""
            if target is not Mode.MANUAL:
                self._teleop = None  # a stale command must never drive after re-entering MANUAL
            if target is not current:
                self.transitions += 1
            self.mode = target
            return target

    def estop(self, reason: str, origin: str = BY_FAULT) -> None:
        self.request("estop", reason, origin)

    def teleop(self, steering: float, throttle: float, source: str, now: float) -> bool:
        """Store a teleop command (refreshing the deadman). Returns False when not in MANUAL."""
        cmd = TeleopCommand(Action(float(steering), float(throttle)), now, source)
        with self._lock:
            if self.mode is not Mode.MANUAL:
                return False
            self._teleop = cmd
            return True

    def release(self, source: str) -> None:
        """A teleop client went away: drop its command so the robot is neutral now."""
        with self._lock:
            if self._teleop is not None and self._teleop.source == source:
                self._teleop = None

    def select(self, now: float, policy_action: Action | None,
               hold_s: float = 0.0) -> tuple[Action, str]:
        """Loop thread: the (unclamped) action for this tick and where it came from.

        `hold_s` is how long the action will stay applied (the loop's period): a teleop
        command lapses on the tick that would otherwise hold it past the deadman, so the robot
        is neutral no later than `deadman_s` after the last command, on every transport."""
        mode = self.mode
        if mode is Mode.MANUAL:
            cmd = self._teleop
            if cmd is None:
                return NEUTRAL, "manual:none"
            if now + hold_s - cmd.t > self.deadman_s:
                return NEUTRAL, "manual:deadman"
            return cmd.action, "manual"
        if mode is Mode.DRIVING:
            if policy_action is None:
                return NEUTRAL, "policy:none"
            return policy_action, "policy"
        return NEUTRAL, mode.value
