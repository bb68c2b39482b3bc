"""The control socket answers every request, malformed ones included, and no number of idle
connections costs a thread each, delays a command or disturbs the control loop."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest

from brain.commands import LOCAL
from brain.control_socket import ControlClient, ControlServer
from tests.api_support.light_service import LightService


@pytest.fixture
def served(tmp_path: Path):
    light = LightService(tmp_path / "state")
    server = ControlServer(tmp_path / "c.sock",
                           lambda name, args: light.service.commands.call(name, args, LOCAL),
                           read_timeout_s=2.0)
    server.start()
    try:
        yield light, server, tmp_path / "c.sock"
    finally:
        server.stop()
        light.close()


def raw(path: Path, data: bytes, half_close: bool = True) -> dict:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(data)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    return json.loads(buf)


class TestMalformedRequests:
    @pytest.mark.parametrize("data,why", [
        (b"garbage\n", "not JSON"), (b"\xff\xfe\xfd\n", "not JSON"),
        (b"[" * 2000 + b"\n", "not JSON"), (b'{"cmd": 3}\n', "malformed"),
        (b'{"cmd": "status", "args": []}\n', "args must be an object"),
        (b'{"cmd": "nope"}\n', "unknown command"),
        (b'{"cmd": "drive", "args": {"steering": NaN, "throttle": 0}}\n', "not JSON"),
        (b'{"cmd": "drive", "args": {"steering": "1", "throttle": 0}}\n', "steering"),
        (b"x" * 70_000 + b"\n", "too large"), (b'{"cmd": "status"}', None),
    ])
    def test_every_one_gets_an_error_reply(self, served, data, why) -> None:
        _light, _server, path = served
        reply = raw(path, data)
        if why is None:  # a request without its newline, then the client's EOF: still served
            assert reply["ok"] is True
            return
        assert reply["ok"] is False and why in reply["error"], reply

    def test_a_silent_client_is_answered_and_dropped(self, served) -> None:
        _light, server, path = served
        t0 = time.monotonic()
        reply = raw(path, b'{"cmd": "sta', half_close=False)
        assert "not received within" in reply["error"] and time.monotonic() - t0 < 5
        assert server.refused >= 1


class TestIdleConnectionFlood:
    def test_a_thousand_idle_connections(self, served) -> None:
        light, server, path = served
        threads_before = threading.active_count()
        ticks0 = light.rig.loop.stats.ticks
        light.rig.loop.reset_stats()
        idle = []
        for _ in range(1000):
            s = socket.socket(socket.AF_UNIX)
            s.connect(str(path))
            idle.append(s)
        try:
            time.sleep(0.5)
            assert threading.active_count() <= threads_before + 2, "a thread per connection"
            t0 = time.monotonic()
            assert ControlClient(path).call("status")["mode"] == "idle"
            assert time.monotonic() - t0 < 3.0
            st = light.rig.loop.status()
            assert st["missed_ticks"] == 0, st
            assert light.rig.loop.stats.ticks > ticks0
        finally:
            for s in idle:
                s.close()
