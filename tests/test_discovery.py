"""mDNS on loopback: the advertised record, its TXT keys, updates, and unregistration."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from brain.api.cli import main as cli_main
from brain.api.discovery import discover
from tests.api_support.client import pair, running_server

IFF_MULTICAST = 0x1000
LO_MULTICAST = int(Path("/sys/class/net/lo/flags").read_text(), 16) & IFF_MULTICAST != 0


def test_txt_record_and_interfaces():
    from brain.api.discovery import instance_label, interface_choice, txt_record

    txt = txt_record({"id": "abcdef0123", "name": "car", "version": "1", "model": "m"},
                     tls=True, fingerprint="ff" * 32, paired=False)
    assert set(txt) == {"id", "name", "ver", "model", "api", "tls", "fp", "paired"}
    assert txt["tls"] == "1" and txt["fp"] == "ff" * 32 and txt["paired"] == "0"
    assert txt_record({}, tls=False, fingerprint="aa", paired=True)["fp"] == ""
    assert instance_label("car", "abcdef0123") == "car (abcdef)"
    assert interface_choice("", "127.0.0.1") == ["127.0.0.1"]
    assert interface_choice("10.0.0.1, 10.0.0.2", "0.0.0.0") == ["10.0.0.1", "10.0.0.2"]


def _wait_for(pred, timeout=8.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        robots = discover(1.0, ["127.0.0.1"])
        if pred(robots):
            return robots
    raise AssertionError(f"discovery never matched; last {robots}")


@pytest.mark.skipif(not LO_MULTICAST, reason="lo has no MULTICAST flag (ip link set lo multicast "
                    "on); tests/test_discovery_netns.py covers loopback in a namespace")
def test_advertise_update_and_unregister(tmp_path, capsys):
    with running_server(tmp_path, tls=True, mdns=True) as (server, svc):
        robots = _wait_for(lambda rs: any(r["id"] == svc.device_id for r in rs))
        r = next(r for r in robots if r["id"] == svc.device_id)
        assert r["name"] == "testbot" and r["port"] == server.port and r["tls"] is True
        assert r["fp"] == server.fingerprint and r["host"] == "127.0.0.1"
        assert r["instance"] == "testbot (a1b2c3)" and r["paired"] is False
        assert httpx.get(f"https://{r['host']}:{r['port']}/api/v1/health",
                         verify=False).json()["id"] == svc.device_id
        pair(server)
        svc.rename("zippy", model="m-42")
        _wait_for(lambda rs: any(r["name"] == "zippy" and r["model"] == "m-42" and r["paired"]
                                 for r in rs))
        assert cli_main(["discover", "--json", "--timeout", "1.5",
                         "--interface", "127.0.0.1"]) == 0
        assert "zippy" in capsys.readouterr().out
    time.sleep(0.5)
    assert all(r["id"] != svc.device_id for r in discover(1.5, ["127.0.0.1"]))
