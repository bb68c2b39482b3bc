"""The daemon under a stand-in for systemd's watchdog, with the timings of the shipped unit.

`brain run --sim` runs under `WatchdogSupervisor`, which reads WatchdogSec, Restart, RestartSec,
StartLimitBurst and StartLimitIntervalSec from systemd/brain.service (times scaled by SCALE so
the test takes seconds) and talks to the daemon over a real NOTIFY_SOCKET. Each instance is
stalled with the `debug.stall` test hook; the supervisor must see its pings stop, declare it
hung, kill it with SIGABRT, restart it after RestartSec, and give up after StartLimitBurst
starts. The harness itself is checked against scripted fake services first.
"""

from __future__ import annotations

import os
import signal
import sys
import textwrap
from pathlib import Path

import pytest

from brain.control_socket import ControlClient
from tests.harness.notify import (
    NotifyListener,
    UnitTimings,
    WatchdogSupervisor,
    parse_timespan,
    parse_unit,
)

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "brain.service"
SCALE = 0.5


# -- the harness on its own ----------------------------------------------------------------------

def test_timespans_parse_like_systemd() -> None:
    assert parse_timespan("90") == 90.0
    assert parse_timespan("2s") == 2.0
    assert parse_timespan("1min 30s") == 90.0
    assert parse_timespan("500ms") == 0.5
    assert parse_timespan("infinity") == float("inf")
    with pytest.raises(ValueError, match="not a systemd time span"):
        parse_timespan("3 fortnights")


def test_unit_parser_handles_repeats_resets_and_continuations(tmp_path: Path) -> None:
    unit = tmp_path / "x.service"
    unit.write_text(textwrap.dedent("""\
        [Unit]
        StartLimitBurst=7
        StartLimitIntervalSec=2min
        [Service]
        # a comment
        DeviceAllow=char-i2c rw
        DeviceAllow=
        DeviceAllow=char-video4linux rw
        ExecStart=/bin/true \\
            --flag
        WatchdogSec=4s
        WatchdogSignal=SIGTERM
        Restart=on-abnormal
        RestartPreventExitStatus=2 SIGUSR1
        TimeoutSec=20s
        """))
    u = parse_unit(unit)
    assert u["Service"]["DeviceAllow"] == ["char-video4linux rw"]
    assert u["Service"]["ExecStart"] == ["/bin/true --flag"]
    t = UnitTimings.from_unit(unit, scale=0.5)
    assert (t.watchdog_s, t.start_limit_burst, t.start_limit_interval_s) == (2.0, 7, 60.0)
    assert (t.timeout_start_s, t.timeout_stop_s, t.timeout_abort_s) == (10.0, 10.0, 10.0)
    assert t.watchdog_signal == signal.SIGTERM and t.restart == "on-abnormal"
    assert t.restart_prevent_exit_status == {2, -int(signal.SIGUSR1)}


FAKE_SERVICE = textwrap.dedent("""\
    import os, socket, sys, time
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.connect(os.environ["NOTIFY_SOCKET"])
    assert os.environ["WATCHDOG_PID"] == str(os.getpid())
    s.send(b"READY=1\\nSTATUS=fake")
    for _ in range(int(sys.argv[1])):  # ping, then fall silent
        time.sleep(0.05)
        s.send(b"WATCHDOG=1")
    time.sleep(60)
    """)


def test_supervisor_kills_a_silent_service_and_stops_at_the_start_limit(tmp_path: Path) -> None:
    """A scripted service pings a few times and goes quiet: hung, SIGABRT, restarts, limit."""
    script = tmp_path / "fake.py"
    script.write_text(FAKE_SERVICE)
    timings = UnitTimings(watchdog_s=0.3, timeout_start_s=5, timeout_stop_s=2,
                          timeout_abort_s=2, restart="on-failure", restart_s=0.1,
                          start_limit_burst=2, start_limit_interval_s=30, notify_access="main")
    with WatchdogSupervisor([sys.executable, str(script), "4"], timings) as sup:
        sup.wait_state("failed", timeout=20)
    assert sup.result == "start-limit-hit"
    assert sup.kinds().count("started") == 2
    assert sup.kinds().count("watchdog") == 2
    exits = [e for e in sup.events if e.kind == "exited"]
    assert all(e.detail["signal"] == signal.SIGABRT for e in exits)


def test_supervisor_does_not_restart_a_clean_exit(tmp_path: Path) -> None:
    timings = UnitTimings(timeout_start_s=5, restart="on-failure", restart_s=0.1)
    argv = [sys.executable, "-c", "import os,socket; s=socket.socket(socket.AF_UNIX, "
            "socket.SOCK_DGRAM); s.connect(os.environ['NOTIFY_SOCKET']); s.send(b'READY=1')"]
    with WatchdogSupervisor(argv, timings) as sup:
        sup.wait_state("inactive", "failed", timeout=10)
        sup.wait_event("exited", timeout=5)
    assert sup.result == "success" and sup.kinds().count("started") == 1


def test_notify_access_main_ignores_other_senders() -> None:
    """Under NotifyAccess=main a READY=1 from another process (here: us) does not count."""
    timings = UnitTimings(timeout_start_s=0.5, timeout_stop_s=1, restart="no",
                          notify_access="main")
    with NotifyListener() as listener:
        sup = WatchdogSupervisor([sys.executable, "-c", "import time; time.sleep(30)"], timings,
                                 listener=listener)
        sup.start()
        sup.wait_event("started", timeout=5)
        import socket
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(b"READY=1", str(listener.path))
        sup.wait_state("failed", timeout=10)
        sup.stop()
    assert sup.result == "timeout" and "ready" not in sup.kinds()


# -- the real daemon under the real unit's timings ----------------------------------------------

@pytest.mark.slow
def test_daemon_declared_hung_when_loop_stalls_and_restart_budget_respected(
        tmp_path: Path) -> None:
    timings = UnitTimings.from_unit(UNIT, scale=SCALE)
    assert timings.watchdog_s > 0 and timings.restart == "on-failure"
    assert timings.notify_access == "main"
    run_dir = tmp_path / "run"
    env = {**os.environ, "BRAIN_STATE_DIR": str(tmp_path / "state"),
           "BRAIN_RUNTIME_DIR": str(run_dir), "BRAIN_TEST_HOOKS": "1",
           "BRAIN_API_ENABLED": "0", "BRAIN_LOG_LEVEL": "info"}
    argv = [sys.executable, "-m", "brain", "run", "--sim"]
    log_path = tmp_path / "daemon.log"
    with log_path.open("wb") as out:
        sup = WatchdogSupervisor(argv, timings, env=env, output=out)
        sup.start()
        try:
            for i in range(1, timings.start_limit_burst + 1):
                ready = sup.wait_event("ready", count=i, timeout=timings.timeout_start_s + 5)
                pid = ready.detail["pid"]
                # While the loop runs on time, the watchdog is fed.
                sup.listener.wait_for("WATCHDOG", "1", since=ready.t, pid=pid,
                                      timeout=timings.watchdog_s * 2)
                ControlClient(run_dir / "control.sock", timeout=5).call(
                    "debug.stall", seconds=timings.watchdog_s * 5)
                hung = sup.wait_event("watchdog", count=i, timeout=timings.watchdog_s * 4)
                assert hung.detail["pid"] == pid
                gone = sup.wait_event("exited", count=i, timeout=timings.timeout_abort_s + 5)
                assert gone.detail["signal"] in (signal.SIGABRT, signal.SIGKILL)
                assert gone.detail["result"] == "watchdog"
            sup.wait_state("failed", timeout=timings.restart_s + 10)
        finally:
            sup.stop()
    diag = f"events {sup.kinds()}; daemon log tail: {log_path.read_text()[-2000:]}"
    assert sup.result == "start-limit-hit", diag
    assert sup.kinds().count("started") == timings.start_limit_burst, diag
    assert sup.kinds().count("watchdog") == timings.start_limit_burst, diag
    # Each restart waited RestartSec after the previous instance died.
    starts = [e.t for e in sup.events if e.kind == "started"]
    exits = [e.t for e in sup.events if e.kind == "exited"]
    for died, restarted in zip(exits, starts[1:], strict=False):
        assert restarted - died >= timings.restart_s * 0.99, diag
