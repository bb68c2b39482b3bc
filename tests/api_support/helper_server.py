"""Stand-in daemon for cross-process API tests: ApiServer + the real service over a light body +
control socket.

Run: python -m tests.api_support.helper_server --state-dir D [--host H --port P
--mdns-interfaces ADDRS --tls]. Prints "READY <url> <fingerprint>" once listening and runs
until SIGTERM/SIGINT. tests/test_discovery_netns.py runs the real daemon by default and this
stand-in with BRAIN_TEST_DAEMON_CMD=standin.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path

from brain.api.server import ApiServer
from brain.commands import LOCAL
from brain.control_socket import ControlServer
from tests.api_support.light_service import LightService


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--state-dir", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--mdns-interfaces", default="")
    p.add_argument("--tls", action="store_true")
    p.add_argument("--name", default="testbot")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    svc = LightService(Path(a.state_dir), name=a.name)
    cfg = svc.cfg
    cfg.api.host, cfg.api.port, cfg.api.tls = a.host, a.port, a.tls
    cfg.api.mdns_interfaces = a.mdns_interfaces
    server = ApiServer(svc.service, cfg)
    control = ControlServer(cfg.socket_path,
                            lambda name, args: svc.service.commands.call(name, args, LOCAL))
    control.start()
    server.start()
    print(f"READY {server.url} {server.fingerprint}", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    server.stop()
    control.stop()
    svc.close()


if __name__ == "__main__":
    main()
