"""`brain episodes …` handlers: exit codes, one-line errors, and the daemon round trip for
start/stop through a real ControlServer on a unix socket."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pytest

from brain.commands import LOCAL
from brain.control_socket import ControlClient, ControlServer
from brain.rlds.cli import register
from brain.rlds.store import LOG_FILE
from tests.api_support.light_service import LightService


def run_cli(argv: list[str], episodes: Path, sock: Path | None = None) -> int:
    parser = argparse.ArgumentParser(prog="brain")
    register(parser.add_subparsers(dest="cmd"), lambda: ControlClient(sock or "/nonexistent"))
    args = parser.parse_args(argv)
    args.episodes_dir, args.export_origin = episodes, "pi5-test"
    return args.func(args)


@pytest.fixture
def daemon(tmp_path):
    """The real service (over a light body) behind a control socket, as the daemon has it."""
    light = LightService(tmp_path / "state")
    server = ControlServer(light.cfg.socket_path,
                           lambda name, args: light.service.commands.call(name, args, LOCAL))
    server.start()
    yield light.cfg.layout.episodes, light.cfg.socket_path
    server.stop()
    light.close()


def test_start_stop_list_validate_export(daemon, tmp_path, capsys):
    episodes, sock = daemon
    assert run_cli(["episodes", "start", "--operator", "ann"], episodes, sock) == 0
    eid = capsys.readouterr().out.strip()
    time.sleep(0.5)
    assert run_cli(["episodes", "stop", "--json"], episodes, sock) == 0
    assert json.loads(capsys.readouterr().out)["id"] == eid
    assert run_cli(["episodes", "stop"], episodes, sock) == 1
    assert "no episode is recording" in capsys.readouterr().err
    assert run_cli(["episodes", "list", "--json"], episodes) == 0
    assert [e["id"] for e in json.loads(capsys.readouterr().out)] == [eid]
    assert run_cli(["episodes", "validate", "--json"], episodes) == 0
    assert json.loads(capsys.readouterr().out)[0]["status"] == "ok"
    out = tmp_path / "export"
    assert run_cli(["episodes", "export", "--format", "rlds", "--out", str(out), "--anonymize",
                    "--json"], episodes) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["origin"] == "pi5-test" and manifest["anonymization"]["applied"]
    assert run_cli(["episodes", "export", "--out", str(out)], episodes) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and err.count("\n") == 1

    log = episodes / eid / LOG_FILE
    data = bytearray(log.read_bytes())
    data[100] ^= 0xFF
    log.write_bytes(bytes(data))
    assert run_cli(["episodes", "validate"], episodes) == 1
    assert "corrupt" in capsys.readouterr().out
    assert run_cli(["episodes", "show", "nope"], episodes) == 2
    assert run_cli(["episodes", "delete", eid, "nope"], episodes) == 2
    assert (episodes / eid).is_dir()  # an unknown id in the list deletes nothing
    assert run_cli(["episodes", "delete", eid], episodes) == 0
    assert not (episodes / eid).exists()


def test_start_without_daemon_is_one_line(tmp_path, capsys):
    assert run_cli(["episodes", "start"], tmp_path) == 1
    err = capsys.readouterr().err
    assert "no brain daemon is running" in err and err.count("\n") == 1
