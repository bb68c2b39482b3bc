"""One command surface: the same command table answers the same through the control socket
and the HTTP API.

Two identical services (the real RobotService over the light test body) get the same script of
commands, one over its control socket, one over its API; every answer must match: the same
result (ids and clocks aside), or the same refusal (kind and message). A command that gains an
HTTP binding without a line in the script fails the coverage check.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from brain.api.server import ApiServer
from brain.commands import ERRORS, LOCAL
from brain.control_socket import ControlClient, ControlError, ControlServer
from tests.api_support.client import pair
from tests.api_support.light_service import LightService

# (command, args). Covers every command with an HTTP binding (checked below).
SCRIPT: list[tuple[str, dict[str, Any]]] = [
    ("status", {}),
    ("drive", {"steering": 0.2, "throttle": 0.1}),  # refused: not in manual
    ("mode", {"mode": "drive"}),  # refused: arm first
    ("mode", {"mode": "arm"}),
    ("mode", {"mode": "drive"}),
    ("mode", {"mode": "manual"}),
    ("drive", {"steering": 0.2, "throttle": 0.1}),
    ("drive", {"steering": "0.2", "throttle": 0.1}),  # invalid: a string is not a number
    ("drive", {"steering": True, "throttle": 0.1}),  # invalid: nor is a boolean
    ("drive", {"steering": 1.5, "throttle": 0.1}),  # invalid: out of range
    ("mode", {"mode": "estop", "reason": "parity"}),
    ("mode", {"mode": "manual"}),  # refused: latched
    ("mode", {"mode": "reset"}),
    ("mode", {"mode": "fly"}),  # invalid
    ("mode.get", {}),
    ("episodes.stop", {}),  # refused: nothing recording
    ("episodes.start", {"operator": "ann", "language_instruction": "lap"}),
    ("episodes.start", {}),  # refused: already recording
    ("episodes.status", {}),
    ("episodes.stop", {}),
    ("episodes.list", {}),
    ("episodes.delete", {"id": "nope"}),  # not found
    ("episodes.export", {"ids": ["nope"]}),  # not found
    ("exports.list", {}),
    ("exports.delete", {"name": "rlds-20260101T000000Z.tar"}),  # not found
    ("stats.reset", {}),
    ("diagnostics", {}),
    ("ota.status", {}),
    ("ota.list", {}),
    ("ota.install", {"source": "/etc/hostname"}),  # invalid over the API, not a bundle locally
    ("ota.install", {"source": "http://127.0.0.1:9/none.bundle"}),  # refused: unreachable
    ("ota.rollback", {}),  # refused: nothing committed before
    ("ota.commit", {}),  # refused: no trial
    ("ota.gc", {}),
    ("training.list", {}),
    ("training.start", {"config": {"max_steps": 0}}),  # invalid: out of range
    ("training.start", {"priority": "urgent"}),  # invalid: not a priority
    ("training.get", {"id": "nope"}),  # not found
    ("training.metrics", {"id": "nope"}),  # not found
    ("training.logs", {"id": "nope"}),  # not found
    ("training.stop", {"id": "nope"}),  # not found
    ("training.resume", {"id": "nope"}),  # not found
    ("training.promote", {"id": "nope"}),  # forbidden: local promotion is off
    ("sim.teach", {"seconds": 1.0}),  # refused: not in manual mode
]
# Where the transports rightly differ: a path on the robot is for local callers only.
EXPECTED_DIFFERENCES = {("ota.install", "/etc/hostname"): ("rejected", "invalid")}
# Values that differ between two runs whatever the transport: clocks, counters, ids.
VOLATILE = re.compile(r"^(uptime_s|ticks|rate_hz|lateness_ms|duration_ms|pid|robot_id|id|"
                      r"started_wall|ended_wall|duration_s|t|resources|steps|frames|bytes|"
                      r"steps_handed|log_bytes|unused_frames|dropped_frames|dropped_steps|"
                      r"inferences|last_infer_ms|on_time|missed_ticks|overruns|detail|"
                      r"last_episode|episodes|action|camera_phase_lock|end_reason|history|events|seq|"
                      r"ota|generation)$")


EPISODE_ID = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{6}")


def normalise(value: Any) -> Any:
    if isinstance(value, str):
        return EPISODE_ID.sub("<episode>", value)
    if isinstance(value, dict):
        return {k: ("<volatile>" if VOLATILE.match(k) else normalise(v))
                for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [normalise(v) for v in value]
    return value


def over_socket(client: ControlClient, name: str, args: dict[str, Any]) -> tuple[str, Any]:
    try:
        return "ok", client.call(name, **args)
    except ControlError as e:
        return e.kind, str(e) if e.kind != "invalid" else None


def over_http(c: httpx.Client, name: str, args: dict[str, Any], binding: tuple[str, str]
              ) -> tuple[str, Any]:
    method, path = binding
    args = dict(args)
    for key in re.findall(r"{(\w+)}", path):
        path = path.replace("{" + key + "}", str(args.pop(key)))
    if method == "GET":
        r = c.request(method, "/api/v1" + path, params=args)
    else:
        r = c.request(method, "/api/v1" + path, json=args)
    if r.status_code == 200:
        return "ok", r.json()
    kind = next((k for k, e in ERRORS.items() if e.http_status == r.status_code), "?")
    return kind, r.json()["detail"] if kind != "invalid" else None


@pytest.fixture
def two_services(tmp_path: Path):
    a = LightService(tmp_path / "a", with_ota=True)
    b = LightService(tmp_path / "b", with_ota=True)
    sock = ControlServer(a.cfg.socket_path,
                         lambda name, args: a.service.commands.call(name, args, LOCAL))
    sock.start()
    b.cfg.api.port, b.cfg.api.mdns = 0, False
    api = ApiServer(b.service, b.cfg)
    api.start()
    try:
        with httpx.Client(base_url=api.url, headers=pair(api), timeout=30) as c:
            yield a, ControlClient(a.cfg.socket_path, timeout=30), b, c
    finally:
        api.stop()
        sock.stop()
        a.close()
        b.close()


def test_the_script_covers_every_http_command(two_services) -> None:
    a, _client, _b, _c = two_services
    bound = {cmd.name for cmd in a.service.commands if cmd.http is not None}
    assert bound == {name for name, _ in SCRIPT}
    socket_only = {cmd.name for cmd in a.service.commands if cmd.http is None}
    assert socket_only == {"pair", "pair.list", "pair.revoke", "debug.stall"}


def test_socket_and_api_answer_alike(two_services) -> None:
    a, client, b, c = two_services
    for name, args in SCRIPT:
        if name == "episodes.stop" and a.rig.episodes.status()["recording"]:
            time.sleep(0.3)  # the same few steps on both sides
        binding = a.service.commands.get(name).http
        assert binding is not None
        got_socket = over_socket(client, name, args)
        got_http = over_http(c, name, args, binding)
        differ = EXPECTED_DIFFERENCES.get((name, args.get("source")))
        if differ is not None:
            assert (got_socket[0], got_http[0]) == differ, (name, got_socket, got_http)
            continue
        assert got_socket[0] == got_http[0], (name, args, got_socket, got_http)
        assert normalise(got_socket[1]) == normalise(got_http[1]), (name, args)
        assert a.mode == b.mode, (name, args)
    assert a.rig.modes.estop_reason == b.rig.modes.estop_reason == ""
    assert len(a.call("episodes.list")["episodes"]) == 1
    assert len(b.call("episodes.list")["episodes"]) == 1
