"""The control loop against a recording robot double (the loop's own seam: the Robot interface).

The simulator and real drivers have their own tests; here the body only records what the loop
wrote so the loop's behaviour (ordering, clamping, overrun accounting, neutral on exit) can be
checked exactly.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from brain.control.histogram import LatencyHistogram
from brain.control.loop import ControlLoop
from brain.control.modes import Mode, ModeMachine
from brain.control.safety import SafetyLimits
from brain.hardware.robot import NEUTRAL, Action, Observation, Robot, RobotSpec


class RecordingRobot(Robot):
    spec = RobotSpec(name="double", state_names=("x",))

    def __init__(self, fail_writes_after: int | None = None) -> None:
        self.writes: list[Action] = []
        self.neutral_calls = 0
        self.fail_writes_after = fail_writes_after
        self.lock = threading.Lock()

    def connect(self) -> None: ...

    def read(self) -> Observation:
        return Observation(t=time.monotonic(), state=np.zeros(1, np.float32), frame=None)

    def write(self, action: Action) -> None:
        if self.fail_writes_after is not None and len(self.writes) >= self.fail_writes_after:
            raise OSError("I2C write to 0x40 on /dev/i2c-1 failed: remote I/O error")
        with self.lock:
            self.writes.append(action)

    def neutral(self) -> None:
        self.neutral_calls += 1
        with self.lock:
            self.writes.append(NEUTRAL)

    def close(self) -> None: ...


def run_for(loop: ControlLoop, seconds: float) -> None:
    loop.start()
    assert loop.wait_first_tick(2.0)
    time.sleep(seconds)
    loop.stop()


def test_ticks_at_rate_with_absolute_deadlines():
    robot = RecordingRobot()
    loop = ControlLoop(robot, ModeMachine(0.25), SafetyLimits(), hz=50)
    run_for(loop, 1.0)
    st = loop.status()
    # ~50 ticks in a second; generous bounds: this checks counting, not machine speed
    assert 35 <= st["ticks"] <= 60
    assert st["lateness_ms"]["p50"] >= 0.0
    assert loop.stats.lateness.count == st["ticks"]
    assert st["rate_hz"] > 0


def test_manual_command_is_clamped_before_the_robot():
    robot = RecordingRobot()
    modes = ModeMachine(0.25)
    loop = ControlLoop(robot, modes, SafetyLimits(0.5, 0.3, 0.1), hz=50)
    modes.request("manual")
    loop.start()
    assert loop.wait_first_tick(2.0)
    for _ in range(10):
        modes.teleop(1.0, 1.0, "test", time.monotonic())
        time.sleep(0.02)
    loop.stop()
    assert Action(0.5, 0.3) in robot.writes
    assert all(abs(a.steering) <= 0.5 and -0.1 <= a.throttle <= 0.3 for a in robot.writes)


def test_deadman_brings_neutral_when_commands_stop():
    robot = RecordingRobot()
    modes = ModeMachine(0.25)
    loop = ControlLoop(robot, modes, SafetyLimits(), hz=50)
    modes.request("manual")
    loop.start()
    assert loop.wait_first_tick(2.0)
    modes.teleop(0.4, 0.4, "test", time.monotonic())
    time.sleep(0.1)
    assert loop.last_action == Action(0.4, 0.4)
    time.sleep(0.35)  # silence past the 250 ms deadman
    assert loop.last_action == NEUTRAL and loop.last_source == "manual:deadman"
    loop.stop()


def test_stall_counts_overrun_and_missed_ticks_and_watchdog_health():
    robot = RecordingRobot()
    loop = ControlLoop(robot, ModeMachine(0.25), SafetyLimits(), hz=50, watchdog_margin_ticks=5)
    tick_times: list[float] = []
    loop.sinks.append(lambda obs, action, source: tick_times.append(obs.t))
    loop.start()
    assert loop.wait_first_tick(2.0)
    time.sleep(0.2)
    assert loop.on_time()
    loop.stall(0.5)
    time.sleep(0.3)
    assert not loop.on_time(), "a stalled loop must not look healthy"
    time.sleep(0.5)
    assert loop.on_time()
    loop.stop()
    st = loop.status()
    assert st["overruns"] >= 1
    assert st["missed_ticks"] >= 20  # ~25 deadlines fell inside the 0.5 s stall
    # Missed deadlines are skipped, not caught up: a catch-up loop would run the ~25 missed
    # ticks back to back, i.e. a long run of intervals far shorter than the period.
    gaps = [b - a for a, b in zip(tick_times, tick_times[1:], strict=False)]
    burst = max_run = 0
    for g in gaps:
        burst = burst + 1 if g < loop.period / 4 else 0
        max_run = max(max_run, burst)
    assert max_run < 5, f"{max_run} ticks ran back to back after the stall"
    assert st["duration_ms"]["max"] >= 450


def test_write_failure_latches_estop_and_goes_neutral():
    robot = RecordingRobot(fail_writes_after=5)
    modes = ModeMachine(0.25)
    loop = ControlLoop(robot, modes, SafetyLimits(), hz=50)
    run_for(loop, 0.3)
    assert modes.mode is Mode.ESTOP
    assert "I2C write" in modes.estop_reason
    assert robot.neutral_calls >= 1


def test_stop_leaves_neutral():
    robot = RecordingRobot()
    modes = ModeMachine(0.25)
    loop = ControlLoop(robot, modes, SafetyLimits(), hz=50)
    modes.request("manual")
    loop.start()
    loop.wait_first_tick(2.0)
    modes.teleop(0.3, 0.3, "t", time.monotonic())
    time.sleep(0.05)
    loop.stop()
    assert robot.writes[-1] == NEUTRAL


def test_sink_errors_are_counted_not_fatal():
    robot = RecordingRobot()
    loop = ControlLoop(robot, ModeMachine(0.25), SafetyLimits(), hz=50)
    calls = []

    def bad_sink(obs, action, source):
        calls.append(source)
        raise RuntimeError("boom")

    loop.sinks.append(bad_sink)
    run_for(loop, 0.2)
    assert loop.fatal is None
    assert loop.stats.errors == len(calls) > 0


def test_histogram_percentiles_exact_to_bin():
    h = LatencyHistogram()
    for v in np.linspace(0, 0.01, 1001):  # 0..10 ms uniformly
        h.add(float(v))
    assert abs(h.percentile(50) - 0.005) <= 2e-5
    assert abs(h.percentile(99) - 0.0099) <= 2e-5
    h.add(1.5)  # beyond the span: overflow bin, exact max
    assert h.max == 1.5 and h.percentile(100) == 1.5
    assert h.summary_ms()["max"] == 1500.0
    h.reset()
    assert h.count == 0 and h.percentile(99) == 0.0
