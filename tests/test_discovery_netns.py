"""Discovery and pairing across hosts, emulated with network namespaces (needs root).

Namespace A runs the real daemon (`python -m brain run --sim`; host, port, mDNS interfaces,
state dir and robot name come from the BRAIN_* environment; TLS is automatic on a non-loopback
bind). Namespace B runs `brain discover`, pairs with the code `brain pair --json` reads from A's
control socket, checks the served certificate against the TXT `fp`, and makes one authenticated
API call over the veth link. BRAIN_TEST_DAEMON_CMD=standin runs the API stand-in
(`tests.api_support.helper_server`, a fake service) instead; any other value is a command
template with {state_dir}, {host}, {port} and {name}. BRAIN_TEST_PAIR_CMD replaces the pairing
command (run in A with BRAIN_STATE_DIR set).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
NAME = "netns-car"
STANDIN_CMD = (f"{PY} -m tests.api_support.helper_server --state-dir {{state_dir}} "
               "--host {host} --port {port} --mdns-interfaces {host} --name {name}")
DAEMON_CMD = os.environ.get("BRAIN_TEST_DAEMON_CMD", f"{PY} -m brain run --sim")
if DAEMON_CMD == "standin":
    DAEMON_CMD = STANDIN_CMD
# The stand-in listens on the same control socket path, so one pairing command serves both.
PAIR_CMD = os.environ.get("BRAIN_TEST_PAIR_CMD", f"{PY} -m brain pair --json")
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
for _var in ("BRAIN_CONFIG", "RUNTIME_DIRECTORY", "STATE_DIRECTORY"):
    ENV.pop(_var, None)  # the daemon and the CLI must agree on <state dir>/run/control.sock

CLIENT = r"""
import hashlib, json, ssl, socket, sys, httpx
host, port, fp, code = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
with socket.create_connection((host, port), timeout=5) as raw, ctx.wrap_socket(raw) as t:
    served = hashlib.sha256(t.getpeercert(binary_form=True)).hexdigest()
base = f"https://{host}:{port}/api/v1"
anon = httpx.get(base + "/status", verify=False).status_code
r = httpx.post(base + "/pair", json={"code": code, "client_name": "netns"}, verify=False)
r.raise_for_status()
tok = r.json()["token"]
st = httpx.get(base + "/status", headers={"Authorization": "Bearer " + tok}, verify=False)
print(json.dumps({"served_fp": served, "pair_fp": r.json()["fingerprint"], "anon": anon,
                  "status": st.status_code, "mode": st.json().get("mode")}))
"""


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


def ns(name: str, cmd: str, timeout: float = 30,
       env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", name, *shlex.split(cmd)],
                          env={**ENV, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def _can_netns() -> bool:
    if os.geteuid() != 0:
        return False
    probe = f"brprobe{os.getpid()}"
    try:
        sh("ip", "netns", "add", probe)
        sh("ip", "netns", "del", probe)
        return True
    except (OSError, subprocess.CalledProcessError):
        return False


needs_netns = pytest.mark.skipif(not _can_netns(), reason="needs root and `ip netns`")


@pytest.fixture()
def namespaces():
    tag = str(os.getpid())
    a, b = f"brA{tag}", f"brB{tag}"
    va, vb = f"vA{tag}"[:15], f"vB{tag}"[:15]
    try:
        sh("ip", "netns", "add", a)
        sh("ip", "netns", "add", b)
        sh("ip", "link", "add", va, "type", "veth", "peer", "name", vb)
        for n, v, addr in ((a, va, "10.77.0.1/24"), (b, vb, "10.77.0.2/24")):
            sh("ip", "link", "set", v, "netns", n)
            sh("ip", "-n", n, "addr", "add", addr, "dev", v)
            sh("ip", "-n", n, "link", "set", v, "up", "multicast", "on")
            sh("ip", "-n", n, "link", "set", "lo", "up", "multicast", "on")
            sh("ip", "-n", n, "route", "add", "224.0.0.0/4", "dev", v)
        yield a, b
    finally:
        for n in (a, b):
            for pid in subprocess.run(["ip", "netns", "pids", n], capture_output=True,
                                      text=True).stdout.split():
                os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", n], capture_output=True)


class NamespacedDaemon:
    """The daemon (or the stand-in) running in a namespace, its output in a log file."""

    def __init__(self, netns: str, state_dir: Path, host: str, port: int) -> None:
        self.state_dir = state_dir
        self.env = {"BRAIN_API_HOST": host, "BRAIN_API_PORT": str(port),
                    "BRAIN_API_MDNS_INTERFACES": host, "BRAIN_API_ENABLED": "1",
                    "BRAIN_API_MDNS": "1", "BRAIN_STATE_DIR": str(state_dir),
                    "BRAIN_ROBOT_NAME": NAME}
        cmd = DAEMON_CMD.format(state_dir=state_dir, host=host, port=port, name=NAME)
        state_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = state_dir.parent / f"{state_dir.name}.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(["ip", "netns", "exec", netns, *shlex.split(cmd)],
                                         env={**ENV, **self.env}, cwd=REPO, stdout=log,
                                         stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log()}")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(20)
        assert rc == 0, f"daemon exited {rc} on SIGTERM:\n{self.log()}"


@pytest.fixture()
def daemons() -> Iterator[list[NamespacedDaemon]]:
    started: list[NamespacedDaemon] = []
    yield started
    for d in started:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(10)


def discover_in(name: str, iface: str, want: int, daemon: NamespacedDaemon) -> dict:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        daemon.check_alive()
        out = ns(name, f"{PY} -m brain discover --json --timeout 2 --interface {iface}")
        robots = [r for r in json.loads(out.stdout or "[]") if r["port"] == want]
        if robots:
            return robots[0]
    raise AssertionError(f"no robot found from {name}: {out.stderr[-500:]}\n"
                         f"daemon log:\n{daemon.log()}")


@needs_netns
def test_discover_pair_and_call_across_veth(namespaces, daemons, tmp_path):
    a, b = namespaces
    daemon = NamespacedDaemon(a, tmp_path / "state", "10.77.0.1", 8443)
    daemons.append(daemon)
    robot = discover_in(b, "10.77.0.2", 8443, daemon)
    assert robot["host"] == "10.77.0.1" and robot["tls"] is True and len(robot["fp"]) == 64
    assert robot["name"] == NAME and robot["id"] and robot["paired"] is False
    pair = ns(a, PAIR_CMD, env=daemon.env)
    assert pair.returncode == 0, pair.stderr[-2000:] + daemon.log()
    code = json.loads(pair.stdout)["code"]
    out = ns(b, f"{PY} -c {shlex.quote(CLIENT)} 10.77.0.1 8443 {robot['fp']} {code}")
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout)
    assert res["served_fp"] == robot["fp"] == res["pair_fp"]
    assert res["anon"] == 401 and res["status"] == 200 and res["mode"] == "idle"
    daemon.stop()


@needs_netns
def test_discover_on_loopback_in_one_namespace(namespaces, daemons, tmp_path):
    """Development setting: bound to 127.0.0.1, advertised on loopback (lo multicast on)."""
    a, _b = namespaces
    daemon = NamespacedDaemon(a, tmp_path / "state", "127.0.0.1", 8080)
    daemons.append(daemon)
    robot = discover_in(a, "127.0.0.1", 8080, daemon)
    assert robot["host"] == "127.0.0.1" and robot["tls"] is False and robot["name"] == NAME
    daemon.stop()
