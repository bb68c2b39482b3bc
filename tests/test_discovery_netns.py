"""Discovery and pairing across hosts, emulated with network namespaces (needs root).

Namespace A runs the daemon (by default the stand-in `tests.api_support.helper_server`; set
BRAIN_TEST_DAEMON_CMD to e.g. "brain run --sim --state-dir {state_dir}" with
BRAIN_API_HOST/PORT/MDNS_INTERFACES taken from the environment below, and BRAIN_TEST_PAIR_CMD
to "brain pair --json ..." to test the real daemon). Namespace B runs `brain discover`, pairs
with the code from A's control socket, checks the served certificate against the TXT `fp`, and
makes one authenticated API call over the veth link.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
DAEMON_CMD = os.environ.get(
    "BRAIN_TEST_DAEMON_CMD",
    f"{PY} -m tests.api_support.helper_server --state-dir {{state_dir}} --host {{host}} "
    "--port {port} --mdns-interfaces {host}")
PAIR_CMD = os.environ.get("BRAIN_TEST_PAIR_CMD",
                          f"{PY} -m brain.api.cli --socket {{state_dir}}/run/control.sock "
                          "pair --json")
ENV = {**os.environ, "PYTHONPATH": str(REPO)}

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


def ns(name: str, cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", name, *shlex.split(cmd)], env=ENV,
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


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


def start_daemon(name: str, state_dir: Path, host: str, port: int) -> subprocess.Popen:
    cmd = DAEMON_CMD.format(state_dir=state_dir, host=host, port=port)
    env = {**ENV, "BRAIN_API_HOST": host, "BRAIN_API_PORT": str(port),
           "BRAIN_API_MDNS_INTERFACES": host, "BRAIN_STATE_DIR": str(state_dir)}
    return subprocess.Popen(["ip", "netns", "exec", name, *shlex.split(cmd)], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def discover_in(name: str, iface: str, want: int) -> dict:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        out = ns(name, f"{PY} -m brain.api.cli discover --json --timeout 2 --interface {iface}")
        robots = [r for r in json.loads(out.stdout or "[]") if r["port"] == want]
        if robots:
            return robots[0]
    raise AssertionError(f"no robot found from {name}: {out.stderr[-500:]}")


@needs_netns
def test_discover_pair_and_call_across_veth(namespaces, tmp_path):
    a, b = namespaces
    daemon = start_daemon(a, tmp_path, "10.77.0.1", 8443)
    try:
        robot = discover_in(b, "10.77.0.2", 8443)
        assert robot["host"] == "10.77.0.1" and robot["tls"] is True and len(robot["fp"]) == 64
        assert robot["name"] and robot["id"]
        code = json.loads(ns(a, PAIR_CMD.format(state_dir=tmp_path)).stdout)["code"]
        out = ns(b, f"{PY} -c {shlex.quote(CLIENT)} 10.77.0.1 8443 {robot['fp']} {code}")
        assert out.returncode == 0, out.stderr[-2000:]
        res = json.loads(out.stdout)
        assert res["served_fp"] == robot["fp"] == res["pair_fp"]
        assert res["anon"] == 401 and res["status"] == 200 and res["mode"]
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(15)


@needs_netns
def test_discover_on_loopback_in_one_namespace(namespaces, tmp_path):
    """Development setting: bound to 127.0.0.1, advertised on loopback (lo multicast on)."""
    a, _b = namespaces
    daemon = start_daemon(a, tmp_path, "127.0.0.1", 8080)
    try:
        robot = discover_in(a, "127.0.0.1", 8080)
        assert robot["host"] == "127.0.0.1" and robot["tls"] is False
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(15)
