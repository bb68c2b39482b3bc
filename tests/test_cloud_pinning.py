"""The companion never hands a robot's token (or a pairing code) to anything but the robot:
not to a LAN host that advertises the robot's id over mDNS with `tls=0`, not to a plain-HTTP
URL, and pairing pins only a fingerprint the owner read on the robot.

mDNS is replaced at its seam (`brain.api.discovery.discover`, which returns the records a
browse found): the records are the attacker's, the catcher is a real HTTP server on loopback
that writes down every request and header it gets."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from brain_cloud import push as companion
from brain_cloud.push import PushError

TOKEN = "secret-robot-token"
PIN = "ab" * 32


class Catcher(http.server.ThreadingHTTPServer):
    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(min(length, 1 << 20)) if length else b""
                outer.seen.append({"path": self.path, "headers": dict(self.headers),
                                   "body": body[:200]})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(json.dumps({"id": "robot1", "token": "x",
                                             "fingerprint": PIN}).encode())

            do_GET = do_POST = _any  # noqa: N815

            def log_message(self, *_args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)


@pytest.fixture
def catcher() -> Iterator[Catcher]:
    c = Catcher()
    t = threading.Thread(target=c.serve_forever, daemon=True)
    t.start()
    try:
        yield c
    finally:
        c.shutdown()
        c.server_close()


@pytest.fixture
def paired(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """robot1, paired earlier with a pinned certificate (the robot itself is not up)."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    entry = {"id": "robot1", "name": "car", "url": "https://127.0.0.1:9", "token": TOKEN,
             "fingerprint": PIN, "paired": 0.0}
    companion.save_robot(entry)
    return entry


def spoof_mdns(monkeypatch: pytest.MonkeyPatch, port: int) -> None:
    """A LAN host advertising robot1 with TLS off, at the catcher's address."""
    from brain.api import discovery

    record = {"id": "robot1", "name": "car", "instance": "car._brain._tcp.local.",
              "host": "127.0.0.1", "port": port, "tls": False, "fp": "cd" * 32}
    monkeypatch.setattr(discovery, "discover", lambda timeout=3.0: [record])


def tokens_seen(c: Catcher) -> list[str]:
    return [r["headers"].get("Authorization", "") for r in c.seen
            if TOKEN in r["headers"].get("Authorization", "")]


def test_a_spoofed_mdns_record_never_gets_the_token(paired, catcher, monkeypatch,
                                                    tmp_path: Path) -> None:
    spoof_mdns(monkeypatch, catcher.server_address[1])
    robot = companion.resolve("robot1")
    assert robot["url"].startswith("https://")  # mDNS gives an address, never the scheme
    # The record's address does not present the pin, so the last known address is kept; the
    # robot is not up there: the push fails (PushError or a connection error), tokenless.
    with pytest.raises((PushError, OSError)):
        with companion.pinned_client(robot["url"], robot["fingerprint"], robot["token"]) as c:
            c.get("/api/v1/ota")
    assert tokens_seen(catcher) == []


def test_plain_http_never_carries_a_pinned_robot_s_token(paired, catcher) -> None:
    url = f"http://127.0.0.1:{catcher.server_address[1]}"
    for allow in (False, True):
        with pytest.raises(PushError, match="pinned certificate"):
            companion.pinned_client(url, PIN, TOKEN, allow_plain_http=allow)
    assert catcher.seen == []
    # Unpinned, plain HTTP needs the flag, and then only on loopback.
    with pytest.raises(PushError, match="allow-plain-http"):
        companion.pinned_client(url, "", TOKEN)
    with pytest.raises(PushError, match="loopback"):
        companion.pinned_client("http://192.0.2.7:8080", "", TOKEN, allow_plain_http=True)


def test_pairing_pins_only_what_the_owner_read_on_the_robot(catcher, monkeypatch,
                                                            tmp_path: Path) -> None:
    """Pairing from mDNS alone used to pin the record's `fp` and send the code wherever the
    record pointed; now it needs the fingerprint from `brain pair`, and sends nothing first."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    spoof_mdns(monkeypatch, catcher.server_address[1])
    with pytest.raises(PushError, match="--fingerprint"):
        companion.pair("robot1", "123456", log=lambda _m: None)
    assert catcher.seen == []
    with pytest.raises(PushError, match="fingerprint"):
        companion.pair("robot1", "123456", fingerprint="ab12", log=lambda _m: None)
    assert catcher.seen == [] and not companion.load_robots()
