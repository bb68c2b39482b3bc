"""Stand-ins for systemd's side of a Type=notify service, for tests.

`NotifyListener` is the NOTIFY_SOCKET: an AF_UNIX datagram socket that records every sd_notify
message with its arrival time and the sender's pid (SO_PASSCRED, as systemd uses to enforce
NotifyAccess=main).

`WatchdogSupervisor` runs a command the way systemd runs a Type=notify service with
WatchdogSec=: it waits for READY=1 within TimeoutStartSec, arms the watchdog at READY=1 (as
systemd does when the service enters start-post), declares the service hung when WatchdogSec
passes without WATCHDOG=1, sends WatchdogSignal (SIGABRT) and SIGKILL after TimeoutAbortSec,
restarts per Restart=/RestartSec= and gives up once StartLimitBurst starts happened within
StartLimitIntervalSec. Its timings are read from the real unit file (`UnitTimings.from_unit`),
scaled down for tests, so the test is tied to what ships.

Hand-written rather than using systemd itself: CI containers have no systemd as PID 1, and
nothing on PyPI emulates its service state machine.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, NamedTuple

# ---------------------------------------------------------------------------------------------
# The notify socket


class NotifyMessage(NamedTuple):
    t: float  # time.monotonic() at arrival
    fields: dict[str, str]  # KEY=VALUE assignments of the datagram
    pid: int | None  # sender pid from SCM_CREDENTIALS


_UCRED = struct.Struct("iII")  # struct ucred: pid_t pid, uid_t uid, gid_t gid


def parse_notify(payload: bytes) -> dict[str, str]:
    """sd_notify payload: newline-separated KEY=VALUE assignments (sd_notify(3))."""
    out: dict[str, str] = {}
    for line in payload.decode("utf-8", "replace").split("\n"):
        key, sep, value = line.partition("=")
        if sep and key:
            out[key] = value
    return out


class NotifyListener:
    """A NOTIFY_SOCKET in a private temp dir, recording sd_notify datagrams from a thread."""

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if directory is None:
            # sun_path is limited to 108 bytes: keep the socket under a short /tmp path.
            self._tmp = tempfile.TemporaryDirectory(prefix="notify-")
            directory = self._tmp.name
        self.path = Path(directory) / "notify.sock"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._sock.bind(str(self.path))
        self._sock.settimeout(0.1)
        self._messages: list[NotifyMessage] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, name="notify-listener", daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data, ancdata, _flags, _addr = self._sock.recvmsg(
                    65536, socket.CMSG_SPACE(_UCRED.size))
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            pid = None
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = _UCRED.unpack(payload[:_UCRED.size])[0]
            msg = NotifyMessage(time.monotonic(), parse_notify(data), pid)
            with self._cond:
                self._messages.append(msg)
                self._cond.notify_all()

    @property
    def messages(self) -> list[NotifyMessage]:
        with self._cond:
            return list(self._messages)

    def env(self, watchdog_usec: int | None = None) -> dict[str, str]:
        """Variables systemd gives the service (WATCHDOG_PID is set by WatchdogSupervisor,
        which knows the pid)."""
        out = {"NOTIFY_SOCKET": str(self.path)}
        if watchdog_usec is not None:
            out["WATCHDOG_USEC"] = str(int(watchdog_usec))
        return out

    def _matches(self, m: NotifyMessage, key: str, value: str | None, since: float | None,
                 pid: int | None) -> bool:
        return (key in m.fields and (value is None or m.fields[key] == value)
                and (since is None or m.t >= since) and (pid is None or m.pid == pid))

    def find(self, key: str, value: str | None = None, *, since: float | None = None,
             pid: int | None = None) -> list[NotifyMessage]:
        with self._cond:
            return [m for m in self._messages if self._matches(m, key, value, since, pid)]

    def wait_for(self, key: str, value: str | None = None, timeout: float = 5.0, *,
                 since: float | None = None, pid: int | None = None) -> NotifyMessage:
        """The first message carrying `key` (=`value` when given), sent at or after `since`
        by `pid` when given; waits up to `timeout` seconds, else raises TimeoutError."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for m in self._messages:
                    if self._matches(m, key, value, since, pid):
                        return m
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    want = f"{key}={value}" if value is not None else key
                    seen = [m.fields for m in self._messages[-5:]]
                    raise TimeoutError(f"no {want} on {self.path} within {timeout:g} s; "
                                       f"last messages: {seen}")
                self._cond.wait(remaining)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> NotifyListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# Reading a unit file


def parse_unit(path: str | os.PathLike[str]) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> values (in order) of a systemd unit file. Handles comments, line
    continuations and an empty assignment resetting a list, which is all systemd.syntax(7) has
    (configparser rejects repeated keys and knows no continuations, hence by hand)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in Path(path).read_text().splitlines():
        line = pending + raw.strip() if pending else raw.strip()
        if line.endswith("\\"):
            pending = line[:-1].rstrip() + " "
            continue
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        if not sep or current is None:
            raise ValueError(f"{path}: cannot parse line {raw!r}")
        key, value = key.strip(), value.strip()
        if value == "":
            current[key] = []
        else:
            current.setdefault(key, []).append(value)
    return sections


_SPAN_UNITS = {
    "us": 1e-6, "usec": 1e-6, "ms": 1e-3, "msec": 1e-3,
    "s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0,
    "m": 60.0, "min": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "d": 86400.0, "day": 86400.0, "days": 86400.0,
    "w": 604800.0, "week": 604800.0, "weeks": 604800.0,
}


def parse_timespan(text: str) -> float:
    """systemd.time(7) span in seconds ("90", "2s", "1min 30s", "500ms"); inf for infinity."""
    text = text.strip()
    if text == "infinity":
        return float("inf")
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)  # a bare number means seconds
    total, pos = 0.0, 0
    for m in re.finditer(r"\s*(\d+(?:\.\d+)?)\s*([a-z]+)", text):
        if m.start() != pos or m.group(2) not in _SPAN_UNITS:
            raise ValueError(f"not a systemd time span: {text!r}")
        total += float(m.group(1)) * _SPAN_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or pos == 0:
        raise ValueError(f"not a systemd time span: {text!r}")
    return total


def _signal_named(name: str) -> signal.Signals:
    return signal.Signals[name if name.startswith("SIG") else "SIG" + name]


@dataclass(frozen=True)
class UnitTimings:
    """The service settings the supervisor enforces, with systemd's defaults."""

    watchdog_s: float = 0.0
    timeout_start_s: float = 90.0
    timeout_stop_s: float = 90.0
    timeout_abort_s: float = 90.0
    restart: str = "no"
    restart_s: float = 0.1
    start_limit_burst: int = 5
    start_limit_interval_s: float = 10.0
    watchdog_signal: int = signal.SIGABRT
    restart_prevent_exit_status: frozenset[int] = field(default_factory=frozenset)
    notify_access: str = "none"

    @classmethod
    def from_unit(cls, path: str | os.PathLike[str], scale: float = 1.0) -> UnitTimings:
        u = parse_unit(path)
        svc, unit = u.get("Service", {}), u.get("Unit", {})

        def last(sec: dict[str, list[str]], key: str) -> str | None:
            return sec[key][-1] if sec.get(key) else None

        def span(sec: dict[str, list[str]], key: str, default: float) -> float:
            v = last(sec, key)
            return parse_timespan(v) if v is not None else default

        t = cls()
        timeout_both = span(svc, "TimeoutSec", t.timeout_start_s)
        stop = span(svc, "TimeoutStopSec", timeout_both)
        sig = last(svc, "WatchdogSignal")
        prevent: set[int] = set()
        for item in " ".join(svc.get("RestartPreventExitStatus", [])).split():
            prevent.add(int(item) if item.isdigit() else -int(_signal_named(item)))
        t = cls(
            watchdog_s=span(svc, "WatchdogSec", 0.0),
            timeout_start_s=span(svc, "TimeoutStartSec", timeout_both),
            timeout_stop_s=stop,
            timeout_abort_s=span(svc, "TimeoutAbortSec", stop),
            restart=last(svc, "Restart") or "no",
            restart_s=span(svc, "RestartSec", t.restart_s),
            start_limit_burst=int(last(unit, "StartLimitBurst") or t.start_limit_burst),
            start_limit_interval_s=span(unit, "StartLimitIntervalSec", t.start_limit_interval_s),
            watchdog_signal=_signal_named(sig) if sig else signal.SIGABRT,
            restart_prevent_exit_status=frozenset(prevent),
            notify_access=last(svc, "NotifyAccess") or "none",
        )
        return t.scaled(scale)

    def scaled(self, k: float) -> UnitTimings:
        return replace(self, watchdog_s=self.watchdog_s * k,
                       timeout_start_s=self.timeout_start_s * k,
                       timeout_stop_s=self.timeout_stop_s * k,
                       timeout_abort_s=self.timeout_abort_s * k, restart_s=self.restart_s * k,
                       start_limit_interval_s=self.start_limit_interval_s * k)


# ---------------------------------------------------------------------------------------------
# The supervisor

# Signals that count as a clean exit for Restart=on-failure (systemd.service(5)).
CLEAN_SIGNALS = {signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE}


class Event(NamedTuple):
    t: float
    kind: str  # started, ready, watchdog, timeout, exited, restart-scheduled, start-limit-hit,
    #            stopped, failed
    detail: dict[str, object]


class WatchdogSupervisor:
    """Supervise `argv` like systemd supervises a Type=notify service with the given timings.

    Runs in a thread after `start()`. `events` records what happened; `state` is one of
    activating, active, deactivating, auto-restart, failed, inactive. `result` is systemd's
    service result (success, exit-code, signal, timeout, watchdog, start-limit-hit).
    """

    def __init__(self, argv: Sequence[str], timings: UnitTimings,
                 env: Mapping[str, str] | None = None,
                 listener: NotifyListener | None = None,
                 output: IO[bytes] | None = None) -> None:
        self.argv = list(argv)
        self.timings = timings
        self._own_listener = listener is None
        self.listener = listener or NotifyListener()
        self.base_env = dict(os.environ if env is None else env)
        self.output = output
        self.events: list[Event] = []
        self.state = "inactive"
        self.result = "success"
        self.pid: int | None = None
        self._starts: list[float] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    # -- observation -----------------------------------------------------------------------
    def _event(self, kind: str, **detail: object) -> None:
        with self._cond:
            self.events.append(Event(time.monotonic(), kind, detail))
            self._cond.notify_all()

    def _set_state(self, state: str) -> None:
        with self._cond:
            self.state = state
            self._cond.notify_all()

    def kinds(self) -> list[str]:
        with self._cond:
            return [e.kind for e in self.events]

    def wait_event(self, kind: str, count: int = 1, timeout: float = 30.0) -> Event:
        """Wait until `kind` has happened `count` times; returns that occurrence."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                hits = [e for e in self.events if e.kind == kind]
                if len(hits) >= count:
                    return hits[count - 1]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{kind} #{count} did not happen within {timeout:g} s; "
                                       f"events: {[e.kind for e in self.events]}")
                self._cond.wait(remaining)

    def wait_state(self, *states: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.state not in states:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"state {self.state}, not {states}, after {timeout:g} s;"
                                       f" events: {[e.kind for e in self.events]}")
                self._cond.wait(remaining)
            return self.state

    # -- control -----------------------------------------------------------------------------
    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="watchdog-supervisor",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Like `systemctl stop`: SIGTERM, SIGKILL after TimeoutStopSec, no restart."""
        self._stop.set()
        if self._thread is not None:
            limit = timeout if timeout is not None else self.timings.timeout_stop_s + 5
            self._thread.join(limit)
        if self._own_listener:
            self.listener.close()

    def __enter__(self) -> WatchdogSupervisor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the state machine -------------------------------------------------------------------
    def _start_allowed(self, now: float) -> bool:
        # systemd's start rate limit: at most StartLimitBurst starts per interval.
        window = [t for t in self._starts if now - t < self.timings.start_limit_interval_s]
        self._starts = window
        return len(window) < self.timings.start_limit_burst

    def _spawn(self) -> subprocess.Popen[bytes]:
        env = dict(self.base_env)
        env.update(self.listener.env(
            int(self.timings.watchdog_s * 1e6) if self.timings.watchdog_s else None))
        # systemd sets WATCHDOG_PID to the main pid; only the child knows it before exec.
        argv = ["/bin/sh", "-c", 'WATCHDOG_PID=$$; export WATCHDOG_PID; exec "$@"', "sh",
                *self.argv]
        return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                stdout=self.output or subprocess.DEVNULL,
                                stderr=subprocess.STDOUT if self.output else subprocess.DEVNULL,
                                start_new_session=True)  # a process group stands in for a cgroup

    def _signal(self, sig: int) -> None:
        if self._proc is not None and self._proc.poll() is None:
            try:
                os.killpg(self._proc.pid, sig)
            except ProcessLookupError:
                pass

    def _kill(self, first: int, grace: float) -> None:
        proc = self._proc
        assert proc is not None
        self._signal(first)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            self._event("sigkill", pid=self.pid)
            self._signal(signal.SIGKILL)
            proc.wait()
        self._signal(signal.SIGKILL)  # leftovers in the group, like KillMode=control-group

    def _should_restart(self, result: str, code: int | None, sig: int | None) -> bool:
        t = self.timings
        if code is not None and code in t.restart_prevent_exit_status:
            return False
        if sig is not None and -sig in t.restart_prevent_exit_status:
            return False
        clean = (code == 0) or (sig in CLEAN_SIGNALS and result not in ("watchdog", "timeout"))
        return {
            "no": False,
            "always": True,
            "on-success": clean,
            "on-failure": not clean,
            "on-abnormal": result in ("signal", "timeout", "watchdog") and not clean,
            "on-watchdog": result == "watchdog",
            "on-abort": result == "signal" and not clean,
        }.get(t.restart, False)

    def _run(self) -> None:
        t = self.timings
        while True:
            now = time.monotonic()
            if not self._start_allowed(now):
                self.result = "start-limit-hit"
                self._event("start-limit-hit", starts=len(self._starts))
                self._set_state("failed")
                return
            self._starts.append(now)
            self._proc = proc = self._spawn()
            self.pid = proc.pid
            spawned = time.monotonic()
            self._event("started", pid=proc.pid)
            self._set_state("activating")
            result, code, sig = self._supervise(proc, spawned)
            self._event("exited", pid=proc.pid, code=code, signal=sig, result=result)
            if result == "stopped":
                self.result = "success"
                self._set_state("inactive")
                return
            self.result = result
            if not self._should_restart(result, code, sig):
                self._set_state("failed" if result != "success" else "inactive")
                self._event("failed" if result != "success" else "stopped", result=result)
                return
            self._set_state("auto-restart")
            self._event("restart-scheduled", after_s=t.restart_s)
            if self._stop.wait(t.restart_s):
                self._set_state("inactive")
                return

    def _supervise(self, proc: subprocess.Popen[bytes],
                   spawned: float) -> tuple[str, int | None, int | None]:
        """Watch one process until it exits; returns (result, exit code, signal)."""
        t = self.timings
        seen = 0
        ready = False
        last_ping: float | None = None  # watchdog armed only once READY=1 arrives
        watchdog_s = t.watchdog_s
        result: str | None = None
        while True:
            rc = proc.poll()
            if rc is not None:
                code, sig = (rc, None) if rc >= 0 else (None, -rc)
                if result is None:
                    result = ("success" if code == 0 else "exit-code") if sig is None else (
                        "success" if sig in CLEAN_SIGNALS else "signal")
                return result, code, sig
            msgs = self.listener.messages
            for m in msgs[seen:]:
                if t.notify_access == "main" and m.pid != proc.pid:
                    continue  # systemd drops messages from other pids under NotifyAccess=main
                f = m.fields
                if f.get("READY") == "1" and not ready:
                    ready = True
                    last_ping = m.t
                    self._event("ready", pid=proc.pid, after_s=m.t - spawned)
                    self._set_state("active")
                if "WATCHDOG_USEC" in f:
                    watchdog_s = int(f["WATCHDOG_USEC"]) / 1e6
                if f.get("WATCHDOG") == "1":
                    last_ping = m.t
                if f.get("WATCHDOG") == "trigger":
                    last_ping = float("-inf")
                if f.get("STOPPING") == "1":
                    self._set_state("deactivating")
            seen = len(msgs)
            now = time.monotonic()
            if self._stop.is_set():
                self._set_state("deactivating")
                self._kill(signal.SIGTERM, t.timeout_stop_s)
                return "stopped", proc.returncode, None
            if not ready and now - spawned > t.timeout_start_s:
                self._event("timeout", pid=proc.pid, after_s=now - spawned)
                self._set_state("deactivating")
                self._kill(signal.SIGTERM, t.timeout_stop_s)
                result = "timeout"
                continue
            if watchdog_s and last_ping is not None and now - last_ping > watchdog_s:
                self._event("watchdog", pid=proc.pid, silent_s=now - last_ping)
                self._set_state("deactivating")
                self._kill(t.watchdog_signal, t.timeout_abort_s)
                result = "watchdog"
                last_ping = None
                continue
            time.sleep(0.01)
