"""The daemon end to end on the simulated robot, under a NOTIFY_SOCKET harness that plays
systemd's part (READY/WATCHDOG/STATUS/STOPPING datagrams)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from tests.daemon_support import DaemonProcess
from tests.harness.notify import NotifyListener

STATUS_FIELDS = {"mode", "target_hz", "rate_hz", "ticks", "lateness_ms", "overruns", "model",
                 "uptime_s"}


@pytest.fixture
def listener():
    with NotifyListener() as n:
        yield n


def test_notify_lifecycle_watchdog_stall_and_sigterm(tmp_path, listener):
    d = DaemonProcess(tmp_path / "state", "--sim",
                      env={**listener.env(watchdog_usec=1_000_000), "BRAIN_TEST_HOOKS": "1"})
    try:
        listener.wait_for("READY", "1", timeout=30)  # how fast: bench/startup.py
        st = d.status()
        assert STATUS_FIELDS <= set(st), st
        assert set(st["lateness_ms"]) >= {"p50", "p99", "max"}
        assert st["target_hz"] == 50 and st["ticks"] > 0
        # WATCHDOG=1 keeps coming (every WATCHDOG_USEC/2 = 0.5 s) while the loop runs
        t0 = time.monotonic()
        time.sleep(2.0)
        pings = listener.find("WATCHDOG", "1", since=t0)
        assert len(pings) >= 3, pings
        assert listener.find("STATUS", since=t0), "STATUS= lines expected"
        assert "mode=idle" in listener.find("STATUS", since=t0)[-1].fields["STATUS"]
        # stall the loop: the pings must stop while it hangs, and resume after
        d.cli("debug", "stall", "--seconds", "3")
        time.sleep(0.8)
        t_stall = time.monotonic()
        time.sleep(1.6)
        assert not listener.find("WATCHDOG", "1", since=t_stall), \
            "WATCHDOG=1 sent while the control loop was stalled"
        listener.wait_for("WATCHDOG", "1", since=time.monotonic(), timeout=5)
        # drive, then SIGTERM while a command is live: orderly stop, neutral, exit 0
        d.cli("mode", "manual")
        d.cli("drive", "--steering", "0.3", "--throttle", "0.4", "--hold", "0.5")
        d.cli("drive", "--steering", "0.3", "--throttle", "0.4")
        t_term = time.monotonic()
        rc = d.stop(signal.SIGTERM)
        assert rc == 0, d.log()
        listener.wait_for("STOPPING", "1", since=t_term, timeout=5)
        assert "actuators neutral (steering=0.000 throttle=0.000)" in d.log()
        assert not (tmp_path / "state" / "run" / "control.sock").exists()
    finally:
        d.kill()


def test_headless_boot_is_armed_with_seed_policy_and_still(tmp_path):
    d = DaemonProcess(tmp_path / "state", "--sim", env={"CONTINUON_HEADLESS": "1"})
    try:
        d.wait_ready()
        time.sleep(1.0)
        st = d.status()
        assert st["mode"] == "autonomous_armed"
        assert st["model"] == "factory-seed-v1"
        assert st["action"] == {"steering": 0.0, "throttle": 0.0, "source": "autonomous_armed"}
        assert st["policy"]["inferences"] > 0, "ARMED runs the policy with outputs held neutral"
        # and 'drive' makes the policy's output reach the actuators
        d.cli("mode", "drive")
        time.sleep(0.5)
        st = d.status()
        assert st["mode"] == "autonomous_driving" and st["action"]["source"] == "policy"
        assert st["action"]["throttle"] > 0
        d.cli("mode", "estop")
        r = d.cli("mode", "drive", check=False)
        assert r.returncode == 1 and "latched" in r.stderr
        assert d.stop() == 0
    finally:
        d.kill()


def test_status_without_daemon_is_a_clear_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "brain", "status"], capture_output=True, text=True,
                       env={"BRAIN_STATE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
                       timeout=60)
    assert r.returncode == 1
    assert "no brain daemon is running" in r.stderr and "Traceback" not in r.stderr


def test_pi5_donkey_profile_fails_fast_naming_the_bus(tmp_path):
    r = subprocess.run([sys.executable, "-m", "brain", "run", "--profile", "pi5-donkey"],
                       capture_output=True, text=True, timeout=60,
                       env={"BRAIN_STATE_DIR": str(tmp_path), "BRAIN_API_ENABLED": "0",
                            "PATH": "/usr/bin:/bin"})
    assert r.returncode == 1, r.stderr
    assert "/dev/i2c-1" in r.stderr
    assert "Traceback" not in r.stderr
