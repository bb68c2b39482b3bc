"""The fixed-rate control loop.

Absolute deadlines: tick k is due at t0 + k*period on the monotonic clock, so timing errors never
accumulate (a relative sleep(period) loop drifts by its own execution time every tick). Each tick:
read the robot, pick the action the mode allows, clamp it, write it, hand the step to the sinks
(recorder). Lateness (wake-up minus deadline) and duration go into histograms; a tick that ends
after the next deadline is an overrun, and deadlines already missed are skipped and counted, never
silently absorbed by a burst of catch-up ticks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from brain.control.histogram import LatencyHistogram
from brain.control.modes import Mode, ModeMachine
from brain.control.rt import configure_control_thread
from brain.control.safety import SafetyLimits
from brain.hardware.robot import NEUTRAL, Action, Observation, Robot

if TYPE_CHECKING:
    from brain.config import Config

log = logging.getLogger(__name__)

# Called on the loop thread with (observation, applied action, source). Must be O(1): no I/O.
StepSink = Callable[[Observation, Action, str], None]
# Called on the loop thread before the action is chosen (e.g. a scripted teleoperator).
PreTick = Callable[[Observation], None]

MAX_WRITE_ERRORS = 3
# Camera phase lock (see ControlLoop._phase_shift): frames within the dead band count as on
# the grid; each new frame moves the grid by GAIN of its error, at most STEP.
PHASE_DEADBAND_S = 0.0005
PHASE_GAIN = 0.5
PHASE_STEP_MAX_S = 0.001


@dataclass
class LoopStats:
    ticks: int = 0
    overruns: int = 0
    missed_ticks: int = 0
    errors: int = 0
    started_at: float = 0.0  # monotonic time of the first deadline
    last_tick: float = 0.0  # monotonic time the last tick finished
    first_start: float = 0.0  # monotonic time the first tick started
    last_start: float = 0.0  # monotonic time the last tick started
    lateness: LatencyHistogram = field(default_factory=LatencyHistogram)
    duration: LatencyHistogram = field(default_factory=LatencyHistogram)


def can_phase_lock(robot: Robot, hz: float) -> bool:
    """A free-running camera whose frame period is a whole number of loop periods (25 or
    50 fps at 50 Hz) can have every frame fall on a tick; at other rates the phases cycle."""
    spec = robot.spec
    if robot.frames is None or not spec.free_running_camera or spec.camera_fps <= 0:
        return False
    ratio = hz / spec.camera_fps
    return ratio >= 1 and abs(ratio - round(ratio)) < 1e-6


class ControlLoop:
    def __init__(self, robot: Robot, modes: ModeMachine, limits: SafetyLimits, hz: float, *,
                 policy: Any = None, realtime: bool = False, rt_priority: int = 50,
                 cpu: int = -1, watchdog_margin_ticks: int = 10, spin_s: float = 0.0,
                 phase_lock: bool = False, lockstep: bool = False) -> None:
        self.robot = robot
        self.modes = modes
        self.limits = limits
        self.hz = float(hz)
        self.period = 1.0 / self.hz
        self.policy = policy  # PolicyRunner or None
        self.realtime, self.rt_priority, self.cpu = realtime, rt_priority, cpu
        self.spin_s = spin_s
        self.watchdog_margin_s = watchdog_margin_ticks * self.period
        self.stats = LoopStats()
        self.sinks: list[StepSink] = []
        self.pre_tick: list[PreTick] = []
        self.last_action: Action = NEUTRAL
        self.last_source = "idle"
        self.last_obs: Observation | None = None
        self.thread_notes: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stall_s = 0.0  # test hook: block the loop thread this long on the next tick
        self._write_errors = 0
        self.fatal: BaseException | None = None
        self.phase_lock = phase_lock
        self.lockstep = lockstep  # simulated time: no deadlines, ticks as fast as the body reads
        self._locked_seq = -1
        self.phase_shift_s = 0.0  # total the grid has moved to follow the camera
        # Lockstep tick budget (hold/advance): the loop waits before tick `_tick_limit`.
        self._budget = threading.Condition()
        self._tick_limit: int | None = None

    @classmethod
    def from_config(cls, robot: Robot, modes: ModeMachine, cfg: Config,
                    policy: Any = None) -> ControlLoop:
        """The loop as the configuration describes it (rate, limits, scheduling)."""
        s, c = cfg.safety, cfg.control
        return cls(robot, modes, SafetyLimits(s.max_steering, s.max_throttle, s.max_reverse),
                   cfg.drive_hz, policy=policy, realtime=c.realtime, rt_priority=c.rt_priority,
                   cpu=c.cpu, watchdog_margin_ticks=c.watchdog_margin_ticks,
                   spin_s=c.spin_us / 1e6, lockstep=c.lockstep,
                   phase_lock=c.camera_phase_lock and not c.lockstep
                   and can_phase_lock(robot, cfg.drive_hz))

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="control-loop", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait_first_tick(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.stats.ticks == 0 and time.monotonic() < deadline:
            if self._thread is not None and not self._thread.is_alive():
                return False
            time.sleep(0.005)
        return self.stats.ticks > 0

    def reset_stats(self) -> None:
        """Restart the histograms and overrun counters (tick counts and rate keep going)."""
        self.stats.lateness = LatencyHistogram()
        self.stats.duration = LatencyHistogram()
        self.stats.overruns = 0
        self.stats.missed_ticks = 0

    def stall(self, seconds: float) -> None:
        """Test hook: make the loop thread hang (simulates a stuck driver)."""
        self._stall_s = float(seconds)

    # -- health ------------------------------------------------------------------------------
    def on_time(self, now: float | None = None) -> bool:
        """True while the loop keeps ticking: the watchdog is fed only then."""
        now = time.monotonic() if now is None else now
        return self.running and self.stats.ticks > 0 and \
            now - self.stats.last_tick <= self.watchdog_margin_s

    def status(self) -> dict[str, Any]:
        s = self.stats
        now = time.monotonic()
        wall_elapsed = s.last_start - s.first_start if s.ticks > 1 else 0.0
        # Achieved rate over the ticks actually run: a drifting loop reads below target.
        measured = (s.ticks - 1) / wall_elapsed if wall_elapsed > 0 else 0.0
        return {
            "target_hz": self.hz,
            "rate_hz": round(measured, 4),
            "ticks": s.ticks,
            "lateness_ms": s.lateness.summary_ms(),
            "duration_ms": s.duration.summary_ms(),
            "overruns": s.overruns,
            "missed_ticks": s.missed_ticks,
            "errors": s.errors,
            "on_time": self.on_time(now),
            "action": {"steering": round(self.last_action.steering, 4),
                       "throttle": round(self.last_action.throttle, 4),
                       "source": self.last_source},
            "thread": self.thread_notes,
            "camera_phase_lock": {"on": self.phase_lock,
                                  "shift_ms": round(self.phase_shift_s * 1e3, 3)},
            "lockstep": self.lockstep,
        }

    # -- the loop ------------------------------------------------------------------------------
    def _run(self) -> None:
        if self.lockstep:
            self._run_lockstep()
            return
        self.thread_notes = configure_control_thread(self.realtime, self.rt_priority, self.cpu)
        log.info("control loop at %g Hz: %s", self.hz, "; ".join(self.thread_notes) or "default")
        period = self.period
        spin = self.spin_s
        monotonic = time.monotonic
        t0 = time.monotonic() + period
        self.stats.started_at = t0
        k = 0
        try:
            while not self._stop.is_set():
                deadline = t0 + k * period
                now = monotonic()
                if deadline - spin > now:
                    time.sleep(deadline - spin - now)
                # The last `spin` seconds are busy-waited: waking a sleeping (virtual) CPU
                # costs 0.1-3 ms here, spinning costs nothing but the spin itself.
                now = monotonic()
                while now < deadline:
                    now = monotonic()
                self.stats.lateness.add(now - deadline)
                self.stats.last_start = now
                if k == 0:
                    self.stats.first_start = now
                self._tick(now)
                if self.phase_lock:
                    shift = self._phase_shift(t0)
                    t0 += shift
                    self.phase_shift_s += shift
                end = time.monotonic()
                self.stats.duration.add(end - now)
                self.stats.ticks += 1
                self.stats.last_tick = end
                k += 1
                next_deadline = t0 + k * period
                if end > next_deadline:
                    self.stats.overruns += 1
                    behind = int((end - next_deadline) / period)
                    if behind:
                        # Deadlines wholly in the past are skipped (and counted) rather than
                        # run back to back: a burst of stale ticks helps nobody.
                        self.stats.missed_ticks += behind
                        k += behind
        except BaseException as e:  # the loop must never die silently
            self.fatal = e
            log.critical("control loop crashed: %r", e, exc_info=True)
        finally:
            self._safe_neutral()

    def _run_lockstep(self) -> None:
        """Simulated time: each tick runs as soon as the last one is done; the body stamps the
        observations (t0 + k / hz) and waits for its frame's consumers. No lateness is
        measured: there are no deadlines. Everything else is `_tick`, as in real time."""
        log.info("control loop at %g Hz in lockstep (simulated time)", self.hz)
        self.thread_notes = ["lockstep: simulated time"]
        try:
            while self._await_budget():
                start = time.monotonic()
                if self.stats.ticks == 0:
                    self.stats.first_start = self.stats.started_at = start
                self._tick(start)
                self.stats.last_start = start
                self.stats.last_tick = time.monotonic()
                with self._budget:
                    self.stats.ticks += 1
                    self._budget.notify_all()
        except BaseException as e:
            self.fatal = e
            log.critical("control loop crashed: %r", e, exc_info=True)
        finally:
            self._safe_neutral()

    def hold(self) -> None:
        """Lockstep: stop before the next tick until `advance` (before `start`: at tick 0)."""
        with self._budget:
            self._tick_limit = self.stats.ticks if self.running else 0

    def advance(self, ticks: int, timeout: float = 600.0) -> None:
        """Lockstep, held: run exactly `ticks` more ticks and return when they are done, the
        loop held again (e.g. an episode of exactly N steps). Raises RuntimeError when the loop
        dies or does not get there within `timeout` wall seconds."""
        deadline = time.monotonic() + timeout
        with self._budget:
            if self._tick_limit is None:
                raise RuntimeError("advance() needs a held lockstep loop (hold() first)")
            self._tick_limit += ticks
            self._budget.notify_all()
            while self.stats.ticks < self._tick_limit:
                if self.fatal is not None or (self._thread is not None
                                              and not self._thread.is_alive()):
                    raise RuntimeError(f"the control loop stopped: {self.fatal!r}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the loop did not reach tick {self._tick_limit} within "
                                       f"{timeout:g} s (at {self.stats.ticks})")
                self._budget.wait(0.1)

    def _await_budget(self) -> bool:
        """Lockstep: False once stopped while held."""
        with self._budget:
            while (self._tick_limit is not None and self.stats.ticks >= self._tick_limit
                   and not self._stop.is_set()):
                self._budget.notify_all()
                self._budget.wait(0.05)
        return not self._stop.is_set()

    @property
    def held(self) -> bool:
        return self._tick_limit is not None

    def _phase_shift(self, t0: float) -> float:
        """How far to move the deadline grid t0 + k * period towards the newest frame's
        capture time. A free-running camera whose frame period is a whole number of ticks
        then has every frame captured on a tick (the field plan's frame-to-step skew), instead
        of at a random phase up to half a period away."""
        obs = self.last_obs
        frame = obs.frame if obs is not None else None
        if frame is None or frame.seq == self._locked_seq:
            return 0.0
        self._locked_seq = frame.seq
        error = (((frame.t_capture - t0) / self.period + 0.5) % 1.0 - 0.5) * self.period
        if abs(error) < PHASE_DEADBAND_S:
            return 0.0
        return max(-PHASE_STEP_MAX_S, min(PHASE_STEP_MAX_S, PHASE_GAIN * error))

    def _tick(self, now: float) -> None:
        if self._stall_s:
            stall, self._stall_s = self._stall_s, 0.0
            log.warning("test hook: stalling the control loop for %.1f s", stall)
            time.sleep(stall)
        try:
            obs = self.robot.read()
        except Exception as e:
            self._fault(f"robot read failed: {e}")
            return
        self.last_obs = obs
        for hook in self.pre_tick:
            hook(obs)
        policy_action = self.policy.latest(obs.t) if self.policy is not None else None
        raw, source = self.modes.select(obs.t, policy_action, hold_s=self.period)
        action = self.limits.clamp(raw)
        try:
            self.robot.write(action)
            self._write_errors = 0
        except Exception as e:
            self._write_errors += 1
            self._fault(f"robot write failed: {e}")
            action, source = NEUTRAL, "fault"
        self.last_action, self.last_source = action, source
        for sink in self.sinks:
            try:
                sink(obs, action, source)
            except Exception:
                self.stats.errors += 1
                log.exception("step sink failed")

    def _fault(self, reason: str) -> None:
        self.stats.errors += 1
        if self.modes.mode is not Mode.ESTOP:
            log.error("%s: latching e-stop", reason)
            try:
                self.modes.estop(reason)
            except ValueError:
                pass
        self._safe_neutral()

    def _safe_neutral(self) -> None:
        try:
            self.robot.neutral()
        except Exception as e:
            log.error("could not set actuators neutral: %s", e)
        self.last_action = NEUTRAL
