"""No input may unclamp the car: non-finite numbers anywhere, the e-stop latch, the deadman.

Each class tries the whole class of input, not one example: every float setting, every number
argument of every command, any limits and any action the clamp may be given.
"""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from brain.commands import LOCAL, Caller, Forbidden, Invalid, Refused
from brain.config import ConfigError, env_settings, load_config
from brain.control.modes import ModeMachine
from brain.control.safety import SafetyLimits, effective_limit
from brain.control_socket import ControlClient, ControlServer
from brain.hardware.robot import Action
from tests.api_support.client import pair, running_server
from tests.api_support.light_service import LightService
from tests.poll import wait_until

FLOAT_KEYS = sorted(var for var, (_dotted, tp) in env_settings().items() if tp is float)
NON_FINITE = ["nan", "NaN", "inf", "-inf", "Infinity", "-Infinity"]
REMOTE = Caller("api", "phone")


class TestNonFiniteNumbers:
    """A NaN or an infinity is refused wherever a number enters: settings (environment and
    TOML), command arguments over every transport, and the clamp itself."""

    def test_there_are_float_settings_to_try(self) -> None:
        assert "BRAIN_SAFETY_MAX_THROTTLE" in FLOAT_KEYS and len(FLOAT_KEYS) >= 5

    @pytest.mark.parametrize("var", FLOAT_KEYS)
    @pytest.mark.parametrize("raw", NON_FINITE)
    def test_every_float_setting_from_the_environment(self, var: str, raw: str) -> None:
        dotted = env_settings()[var][0]
        with pytest.raises(ConfigError, match=f"{dotted}.*finite"):
            load_config(env={var: raw})

    @pytest.mark.parametrize("var", FLOAT_KEYS)
    def test_every_float_setting_from_toml(self, var: str, tmp_path: Path) -> None:
        dotted = env_settings()[var][0]
        *table, key = dotted.split(".")
        for literal in ("nan", "inf", "-inf"):
            path = tmp_path / "brain.toml"
            head = f"[{'.'.join(table)}]\n" if table else ""
            path.write_text(f"{head}{key} = {literal}\n")
            with pytest.raises(ConfigError, match=f"{dotted}.*{path}"):
                load_config(path, env={})

    def test_the_repro_exits_2_naming_the_key_and_source(self, tmp_path: Path) -> None:
        for env, where in (({"BRAIN_SAFETY_MAX_THROTTLE": "nan"}, "BRAIN_SAFETY_MAX_THROTTLE"),
                           ({"BRAIN_CONTROL_SWITCH_INTERVAL_MS": "nan"}, "SWITCH_INTERVAL")):
            r = subprocess.run([sys.executable, "-m", "brain", "config", "check"],
                               capture_output=True, text=True, timeout=60,
                               env={"PATH": "/usr/bin:/bin", "BRAIN_STATE_DIR": str(tmp_path),
                                    **env})
            assert r.returncode == 2, r
            assert where in r.stderr and "Traceback" not in r.stderr
            assert r.stderr.count("\n") == 1
        toml = tmp_path / "b.toml"
        toml.write_text("[safety]\nmax_throttle = nan\n")
        r = subprocess.run([sys.executable, "-m", "brain", "--config", str(toml), "run", "--sim"],
                           capture_output=True, text=True, timeout=60,
                           env={"PATH": "/usr/bin:/bin", "BRAIN_STATE_DIR": str(tmp_path)})
        assert r.returncode == 2 and "safety.max_throttle" in r.stderr and str(toml) in r.stderr

    @given(limits=st.tuples(*[st.floats(allow_nan=True, allow_infinity=True)] * 3),
           action=st.tuples(st.floats(allow_nan=True, allow_infinity=True),
                            st.floats(allow_nan=True, allow_infinity=True)))
    @settings(max_examples=500, deadline=None)
    def test_the_clamp_is_never_more_permissive_than_finite_limits(self, limits, action):
        out = SafetyLimits(*limits).clamp(Action(*action))
        steer, forward, reverse = (effective_limit(x) for x in limits)
        assert all(0.0 <= b <= 1.0 for b in (steer, forward, reverse))
        assert math.isfinite(out.steering) and math.isfinite(out.throttle)
        assert -steer <= out.steering <= steer
        assert -reverse <= out.throttle <= forward
        for limit, bound in zip(limits, (steer, forward, reverse), strict=True):
            if not (math.isfinite(limit) and limit >= 0):
                assert bound == 0.0 or (limit == math.inf and bound == 1.0)

    def test_a_tightened_limit_never_loosens(self) -> None:
        loose = SafetyLimits(float("nan"), 0.6, 0.3).tighten(SafetyLimits(1.0, float("nan"), 1))
        assert loose.clamp(Action(1.0, 1.0)) == Action(0.0, 0.0)
        assert loose.clamp(Action(1.0, -1.0)) == Action(0.0, -0.3)

    @given(value=st.one_of(st.just(float("nan")), st.just(float("inf")),
                           st.just(float("-inf")), st.booleans(),
                           st.text(max_size=5), st.none(), st.lists(st.floats(), max_size=2)))
    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    def test_every_number_argument_of_every_command_takes_real_numbers_only(self, value):
        table = _SERVICE.service.commands
        for cmd in table:
            for name, field in cmd.args.model_fields.items():
                if field.annotation is not float:
                    continue
                args = {k: 0.5 for k, f in cmd.args.model_fields.items()
                        if f.annotation is float and f.is_required()}
                args[name] = value
                with pytest.raises(Invalid):
                    table.parse(cmd.name, args)

    def test_api_and_websocket_refuse_non_numbers(self, tmp_path: Path) -> None:
        with running_server(tmp_path / "s") as (server, svc):
            c = httpx.Client(base_url=server.url, headers=pair(server))
            c.post("/api/v1/mode", json={"mode": "manual"}).raise_for_status()
            for body in ('{"steering": NaN, "throttle": 0}', '{"steering": true, "throttle": 0}',
                         '{"steering": "0.5", "throttle": 0}',
                         '{"steering": Infinity, "throttle": 0}'):
                r = c.post("/api/v1/drive", content=body,
                           headers={"Content-Type": "application/json"})
                assert r.status_code == 422 and r.json()["kind"] == "invalid", (body, r.text)
                url = server.url.replace("http", "ws", 1) + "/api/v1/teleop"
                ticket = c.post("/api/v1/ticket").json()["ticket"]
                with connect(f"{url}?ticket={ticket}") as ws:
                    ws.send(body)
                    with pytest.raises(ConnectionClosed) as e:
                        ws.recv(timeout=2)
                    assert e.value.rcvd is not None and e.value.rcvd.code == 1007, body
            assert svc.action == (0.0, 0.0)


_SERVICE = LightService()


class TestEstopLatch:
    """The first e-stop's reason stays; every e-stop is in the history; a remote client cannot
    reset an e-stop latched on the robot or by a fault unless the owner allowed it."""

    def test_second_estop_keeps_the_first_reason_and_both_are_recorded(self) -> None:
        m = ModeMachine(0.25)
        m.request("estop", "bumper hit", origin="fault")
        m.request("estop", "operator pressed STOP", origin="remote")
        assert m.estop_reason == "bumper hit" and m.estop_origin == "fault"
        assert [(e.reason, e.latched) for e in m.estop_history] == [
            ("bumper hit", True), ("operator pressed STOP", False)]

    @pytest.mark.parametrize("latched_by", ["local", "fault"])
    def test_remote_reset_of_a_local_or_fault_latch_is_forbidden(self, latched_by) -> None:
        m = ModeMachine(0.25)
        m.request("estop", "x", origin=latched_by)
        with pytest.raises(ValueError, match="reset it on the robot"):
            m.request("reset", origin="remote")
        assert m.mode.value == "estop"
        assert m.request("reset", origin="local").value == "idle"  # at the robot: always

    def test_remote_reset_of_a_remote_latch_and_the_setting(self) -> None:
        m = ModeMachine(0.25)
        m.request("estop", "from the phone", origin="remote")
        assert m.request("reset", origin="remote").value == "idle"
        allowed = ModeMachine(0.25, remote_reset_of_local_estop=True)
        allowed.request("estop", "x", origin="local")
        assert allowed.request("reset", origin="remote").value == "idle"

    def test_through_the_service_socket_and_api(self, tmp_path: Path) -> None:
        with running_server(tmp_path / "s") as (server, svc):
            c = httpx.Client(base_url=server.url, headers=pair(server))
            svc.call("mode", mode="estop", reason="wheel stuck")  # over the socket: local
            c.post("/api/v1/mode", json={"mode": "estop", "reason": "phone"}).raise_for_status()
            r = c.post("/api/v1/mode", json={"mode": "reset"})
            assert r.status_code == 403 and r.json()["kind"] == "forbidden"
            st_ = c.get("/api/v1/status").json()
            assert st_["estop_reason"] == "wheel stuck" and st_["estop_origin"] == "local"
            assert [e["reason"] for e in st_["estop_history"]] == ["wheel stuck", "phone"]
            with pytest.raises(Forbidden):
                svc.call("mode", caller=REMOTE, mode="reset")
            assert svc.call("mode", mode="reset")["mode"] == "idle"
            # a fault latches too, and only the robot resets it
            svc.rig.loop._fault("robot write failed: test")
            wait_until(lambda: svc.mode, lambda m: m == "estop", timeout=2)
            assert c.post("/api/v1/mode", json={"mode": "reset"}).status_code == 403


class TestOneDeadman:
    """Every transport gets the same deadman: a 5 Hz sender is never dropped in between, and
    the robot is neutral no later than 250 ms after the last command (nor much earlier)."""

    @pytest.mark.parametrize("transport", ["socket", "api", "websocket"])
    def test_five_hertz_holds_and_silence_releases_on_time(self, transport, tmp_path):
        with running_server(tmp_path / "s", deadman_ms=250) as (server, svc):
            svc.call("mode", mode="manual")
            send, close = _sender(transport, server, svc, tmp_path)
            try:
                start = time.monotonic()
                while time.monotonic() - start < 2.0:
                    send(0.3, 0.4)
                    time.sleep(0.2)
                arrived = svc.last_command_at  # when the robot got the last one
                neutral = wait_until(
                    lambda: next((t for t, _src, s, th in svc.log
                                  if t > arrived and (s, th) == (0, 0)), None),
                    lambda t: t is not None, timeout=2, interval=0.005, what="neutral")
            finally:
                close()
            first = next(t for t, _src, s, th in svc.log if (s, th) == (0.3, 0.4))
            gaps = [t for t, _src, s, th in svc.log if first < t < arrived and (s, th) == (0, 0)]
            assert not gaps, f"{transport}: neutral while commands came at 5 Hz: {gaps}"
            # The lapse is decided on the loop's own clock: on the last tick that would hold
            # the command past 250 ms. 2 ms allow for that tick waking late.
            assert 0.2 <= neutral - arrived <= 0.252, (transport, neutral - arrived)


def _sender(transport: str, server, svc: LightService, tmp_path: Path):
    """(send(steering, throttle), close) over one transport."""
    if transport == "socket":
        sock = ControlServer(tmp_path / "c.sock",
                             lambda name, args: svc.service.commands.call(name, args, LOCAL))
        sock.start()
        client = ControlClient(tmp_path / "c.sock")
        return (lambda s, t: client.call("drive", steering=s, throttle=t)), sock.stop
    c = httpx.Client(base_url=server.url, headers=pair(server))
    if transport == "api":
        return (lambda s, t: c.post("/api/v1/drive", json={"steering": s, "throttle": t})
                .raise_for_status()), c.close
    ticket = c.post("/api/v1/ticket").json()["ticket"]
    stack = contextlib.ExitStack()
    ws = stack.enter_context(connect(server.url.replace("http", "ws", 1)
                                     + f"/api/v1/teleop?ticket={ticket}"))
    return (lambda s, t: ws.send(json.dumps({"steering": s, "throttle": t}))), stack.close


def test_refusals_are_the_same_everywhere() -> None:
    with pytest.raises(Refused, match="not in manual mode"):
        _SERVICE.call("drive", steering=0.1, throttle=0.1)
