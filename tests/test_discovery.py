"""mDNS on loopback: the advertised record, its TXT keys, updates, and unregistration.

Multicast on loopback needs the MULTICAST flag on `lo`, which hosts (and this CI machine) often
lack. The host's own `lo` is never touched: as root the test runs in a thread moved into a fresh
network namespace whose `lo` is brought up with multicast on; sockets, and threads started from
that thread (uvicorn, zeroconf), live there, and the namespace goes away with them.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from brain.api.cli import main as cli_main
from brain.api.discovery import discover
from tests.api_support.client import pair, running_server
from tests.poll import wait_until

IFF_MULTICAST = 0x1000
CLONE_NEWNET = 0x40000000
LO_MULTICAST = int(Path("/sys/class/net/lo/flags").read_text(), 16) & IFF_MULTICAST != 0


def _unshare_net() -> None:
    """Move the calling thread into a new network namespace (os.unshare arrives in 3.12)."""
    if hasattr(os, "unshare"):
        os.unshare(CLONE_NEWNET)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")


def in_fresh_netns(fn: Callable[[], None]) -> None:
    """Run fn in a new thread inside a fresh network namespace with `lo` up and multicast on;
    re-raise whatever it raised. Children forked from that thread (`ip`) share its namespace."""
    failure: list[BaseException] = []

    def body() -> None:
        try:
            _unshare_net()
            subprocess.run(["ip", "link", "set", "lo", "up", "multicast", "on"], check=True,
                           capture_output=True)
            fn()
        except BaseException as e:  # handed to the test's own thread below
            failure.append(e)

    t = threading.Thread(target=body, name="fresh-netns")
    t.start()
    t.join()
    if failure:
        raise failure[0]


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


def _wait_for(pred, timeout=10.0):
    # Each browse lasts over 1 s, so the browser's second query (multicast-response, QM) goes
    # out: the answer to its first (QU) is unicast to 127.0.0.1:5353, where the kernel hands it
    # to only one of the SO_REUSEPORT sockets there, which may be the advertiser's own.
    return wait_until(lambda: discover(2.0, ["127.0.0.1"]), pred, timeout=timeout,
                      interval=0, what="discovery to match")


@pytest.mark.skipif(not LO_MULTICAST and os.geteuid() != 0,
                    reason="lo has no MULTICAST flag and a namespace with one needs root")
def test_advertise_update_and_unregister(tmp_path, capsys):
    if LO_MULTICAST and os.geteuid() != 0:
        _advertise_update_and_unregister(tmp_path, capsys)
    else:
        in_fresh_netns(lambda: _advertise_update_and_unregister(tmp_path, capsys))


def _advertise_update_and_unregister(tmp_path, capsys):
    with running_server(tmp_path, tls=True, mdns=True) as (server, svc):
        robots = _wait_for(lambda rs: any(r["id"] == svc.device_id for r in rs))
        r = next(r for r in robots if r["id"] == svc.device_id)
        assert r["name"] == "testbot" and r["port"] == server.port and r["tls"] is True
        assert r["fp"] == server.fingerprint and r["host"] == "127.0.0.1"
        assert r["instance"] == f"testbot ({svc.device_id[:6]})" and r["paired"] is False
        assert httpx.get(f"https://{r['host']}:{r['port']}/api/v1/health",
                         verify=False).json()["id"] == svc.device_id
        pair(server)
        svc.rename("zippy", model="m-42")
        _wait_for(lambda rs: any(r["name"] == "zippy" and r["model"] == "m-42" and r["paired"]
                                 for r in rs))
        assert cli_main(["discover", "--json", "--timeout", "2",
                         "--interface", "127.0.0.1"]) == 0
        assert "zippy" in capsys.readouterr().out
    time.sleep(0.5)
    assert all(r["id"] != svc.device_id for r in discover(1.5, ["127.0.0.1"]))
