"""`brain-cloud full-cycle` against real parts: a real OpenSSH server on loopback in three
behaviours (tests/harness/sshd.py), a local server that answers like RunPod's GraphQL API
(tests/fakes/runpod_api.py) with its "pods" reached through that sshd, and the real daemon taking
the bundle over its API (TLS, pinned fingerprint, paired token).

What cannot be had here is a rented GPU: the "machine" is this one, reached over SSH, and the
training runs on its CPU. Everything the orchestrator does to a machine goes through the same
commands it would send to a real one.
"""

from __future__ import annotations

import json
import pwd
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from brain.api.tls import fingerprint_pem
from tests.cloud_support import cloud, env, robot_export, write_config
from tests.daemon_support import DaemonProcess
from tests.fakes.runpod_api import FakeRunPod
from tests.harness import sshd as sshd_harness
from tests.poll import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.root]
KEY = "rp_test_" + secrets.token_hex(12)


def require_sshd() -> None:
    if not sshd_harness.available():
        pytest.skip("needs root and Debian's openssh-server (sshd, ssh, ssh-keygen)")


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return robot_export(tmp_path_factory.mktemp("cloud-cycle"), episodes=3)


@pytest.fixture(scope="module")
def publisher(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    keys = tmp_path_factory.mktemp("keys")
    subprocess.run([sys.executable, "-m", "brain", "bundle", "keygen", "--out", str(keys),
                    "--name", "publisher"], check=True, env=env(), capture_output=True)
    trusted = keys / "trusted"
    trusted.mkdir()
    (trusted / "publisher.pub").write_bytes((keys / "publisher.pub").read_bytes())
    return {"key": keys / "publisher.key", "trusted": trusted}


@pytest.fixture
def sshd(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sshd_harness.Sshd]:
    require_sshd()
    server = sshd_harness.Sshd(tmp_path / "sshd", getattr(request, "param", "gateway"))
    yield server
    server.stop()


def ssh_args(server: sshd_harness.Sshd, *, host: bool = True) -> list[str]:
    args = ["--ssh-identity", str(server.client_key), "--remote-python", sys.executable,
            "--remote-root", str(server.root / "remote")]
    for o in server.options:
        args += ["--ssh-option", o]
    if host:
        args += ["--ssh-host", f"root@127.0.0.1:{server.port}"]
    return args


def summary_of(runs: Path) -> dict[str, Any]:
    found = list(runs.glob("*/run-summary.json"))
    assert len(found) == 1, found
    return json.loads(found[0].read_text())


@contextmanager
def paired_robot(tmp_path: Path, publisher: dict[str, Path]
                 ) -> Iterator[tuple[DaemonProcess, str, dict[str, str]]]:
    """A daemon on loopback with TLS that trusts the publisher key, and brain-cloud paired with
    it (token and pinned fingerprint in a config home of the test's own). Yields the daemon,
    its URL and the environment brain-cloud needs to find the pairing."""
    port = sshd_harness.free_port()
    d = DaemonProcess(tmp_path / "robot", "--sim", env={
        "BRAIN_API_ENABLED": "1", "BRAIN_API_HOST": "127.0.0.1", "BRAIN_API_PORT": str(port),
        "BRAIN_API_MDNS": "0", "BRAIN_API_TLS": "1", "BRAIN_ROBOT_NAME": "cloud-car",
        "BRAIN_OTA_TRUSTED_KEYS_DIR": str(publisher["trusted"]), "BRAIN_OTA_PROBATION_S": "1"})
    url = f"https://127.0.0.1:{port}"
    config = {"XDG_CONFIG_HOME": str(tmp_path / "config")}
    try:
        d.wait_ready()
        wait_until(lambda: _up(url), what="the API")
        # `brain pair` gives the fingerprint to pin beside the code (what a user pairing by
        # URL, without mDNS, reads off the robot); it is the served certificate's
        served = fingerprint_pem((tmp_path / "robot" / "api" / "tls-cert.pem").read_bytes())
        assert f"TLS fingerprint {served}" in d.cli("pair").stdout
        paired = json.loads(d.cli("pair", "--json").stdout)  # a new code replaces that one
        fp = paired["tls_fingerprint"]
        assert fp == served
        cloud("pair", "cloud-car", "--code", paired["code"], "--url", url, "--fingerprint", fp,
              **config)
        yield d, url, config
    finally:
        assert d.stop() == 0, d.log()


@pytest.mark.parametrize("sshd,expected_mode", [("plain", "stream"), ("gateway", "stream"),
                                                ("pty-only", "pty")], indirect=["sshd"])
def test_full_cycle_over_ssh_in_every_gateway_behaviour(sshd: sshd_harness.Sshd,
                                                        expected_mode: str, export: Path,
                                                        publisher: dict[str, Path],
                                                        tmp_path: Path) -> None:
    """In gateway mode (RunPod's basic gateway: no scp, no sftp) the bundle also goes to a
    running daemon, which commits it."""
    runs = tmp_path / "runs"
    args = ["full-cycle", str(export), "--provider", "ssh", "--runs", str(runs), "--config",
            str(write_config(tmp_path / "c.json")), "--key", str(publisher["key"]),
            *ssh_args(sshd), "--json"]
    if sshd.mode != "gateway":
        r = cloud(*args)
    else:
        with paired_robot(tmp_path, publisher) as (d, url, config):
            r = cloud(*args, "--push", "cloud-car", "--push-url", url, **config)
            s = summary_of(runs)
            assert s["push"]["final"] == "committed"
            assert d.status()["model"] == s["bundle"]["id"]
    s = summary_of(runs)
    assert json.loads(r.stdout)["run_id"] == s["run_id"]
    assert s["status"] == "succeeded" and s["error"] is None
    assert s["connection_mode"] == expected_mode
    assert s["provider"] == "ssh" and s["remote_user"] == "root"
    assert s["upload"]["verified"] and s["download"]["verified"]
    assert s["exit_codes"] == {"train": 0} and s["training_success"] is True
    assert s["terminated"] is True and s["samples"]["episodes"] == 3
    assert not Path(s["paths"]["remote_workdir"]).exists()  # the machine was cleaned
    for stage in ("prepare", "provision", "wait", "upload", "train", "download", "verify",
                  "terminate", "export", "bundle", "total"):
        assert stage in s["timings_s"], stage
    log = Path(s["paths"]["log"]).read_text()
    assert "step 60/60" in log  # the remote training's progress reached the run's log live
    bundle = Path(s["paths"]["bundle"])
    v = subprocess.run([sys.executable, "-m", "brain", "bundle", "verify", "--keys",
                        str(publisher["trusted"]), str(bundle)], env=env(),
                       capture_output=True, text=True)
    assert v.returncode == 0, v.stderr


@pytest.fixture
def gateway_user() -> Iterator[str]:
    """RunPod's gateway logs in as the pod's `podHostId`: a user of that name (an alias of
    root, whose key the loopback sshd accepts) exists for the test's duration."""
    require_sshd()
    name = "pod" + secrets.token_hex(4)
    subprocess.run(["useradd", "-o", "-u", "0", "-g", "0", "-M", "-d", "/root", "-s",
                    "/bin/bash", "-p", "*", name], check=True, capture_output=True)
    try:
        pwd.getpwnam(name)
        yield name
    finally:
        subprocess.run(["userdel", "-f", name], check=False, capture_output=True)


def runpod_args(fake: FakeRunPod, server: sshd_harness.Sshd) -> list[str]:
    return ["--provider", "runpod", "--runpod-api-url", fake.url, "--runpod-gateway",
            f"127.0.0.1:{server.port}", *ssh_args(server, host=False)]


@pytest.mark.parametrize("sshd", ["pty-only"], indirect=True)
def test_runpod_cycle_through_its_gateway_and_the_daemon_commits_the_bundle(
        sshd: sshd_harness.Sshd, gateway_user: str, export: Path, publisher: dict[str, Path],
        tmp_path: Path) -> None:
    """COMMUNITY has no capacity (HTTP 200 + errors), SECURE does; the pod boots with a null
    runtime for two polls and has no public port 22, so the gateway (podHostId@gateway) that
    insists on a PTY is the way in. The bundle then goes to a running daemon over TLS."""
    fake = FakeRunPod(KEY, capacity=("SECURE",), boot_polls=2, host_id=gateway_user)
    try:
        with paired_robot(tmp_path, publisher) as (d, url, config):
            runs = tmp_path / "runs"
            r = cloud("full-cycle", str(export), *runpod_args(fake, sshd), "--runs", str(runs),
                      "--config", str(write_config(tmp_path / "c.json")), "--key",
                      str(publisher["key"]), "--push", "cloud-car", "--push-url", url,
                      RUNPOD_API_KEY=KEY, **config)
            s = summary_of(runs)
            assert s["status"] == "succeeded", s["error"]
            assert [c["cloud"] for c in fake.calls if c["op"] == "deploy"] == ["COMMUNITY",
                                                                               "SECURE"]
            assert s["machine_details"]["cloud_type"] == "SECURE"
            assert s["machine_details"]["ssh_route"] == "gateway"
            assert s["connection_mode"] == "pty" and s["remote_user"] == gateway_user
            assert s["terminated"] is True and fake.terminated == [s["machine_id"]]
            assert fake.alive() == []
            assert s["push"]["final"] == "committed"
            assert [st["phase"] for st in s["push"]["states"]][-1] == "committed"
            assert d.status()["model"] == s["bundle"]["id"]
            # The API key went to the API and nowhere else.
            assert all(k == f"Bearer {KEY}" for k in fake.seen_keys)
            for f in (runs / s["run_id"]).rglob("*"):
                if f.is_file() and f.suffix in (".json", ".log"):
                    assert KEY not in f.read_text(errors="replace"), f
            assert KEY not in r.stdout + r.stderr
            # Another certificate than the pinned one never gets the token.
            robots = Path(config["XDG_CONFIG_HOME"]) / "brain-cloud" / "robots.json"
            doc = json.loads(robots.read_text())
            doc[next(iter(doc))]["fingerprint"] = "0" * 64
            robots.write_text(json.dumps(doc))
            r = cloud("push", s["paths"]["bundle"], "--robot", "cloud-car", "--url", url,
                      check=False, **config)
            assert r.returncode == 1 and "not the pinned" in r.stderr, r.stderr
    finally:
        fake.stop()


def _live_members(group: int) -> list[int]:
    """Processes of process group `group` that are not zombies."""
    live = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            live.append(int(stat.parent.name))
    return live


def _up(url: str) -> bool:
    try:
        return httpx.get(url + "/api/v1/health", verify=False, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.parametrize("stage", ["provision", "upload", "train", "download", "verify"])
def test_a_failure_at_any_stage_still_terminates_and_writes_the_summary(
        stage: str, export: Path, tmp_path: Path) -> None:
    require_sshd()
    server = sshd_harness.Sshd(tmp_path / "sshd", "plain")
    fake = FakeRunPod(KEY, capacity=("COMMUNITY", "SECURE"), boot_polls=0,
                      public_ssh=("127.0.0.1", server.port))
    runs = tmp_path / "runs"
    try:
        r = cloud("full-cycle", str(export), *runpod_args(fake, server), "--runs", str(runs),
                  "--config", str(write_config(tmp_path / "c.json", max_steps=20)),
                  check=False, RUNPOD_API_KEY=KEY, BRAIN_CLOUD_INJECT_FAULT=stage)
    finally:
        fake.stop()
        server.stop()
    assert r.returncode == 1, r.stderr
    s = summary_of(runs)
    assert s["status"] == "failed" and s["failed_stage"] == stage
    assert "injected fault" in s["error"] and f"{stage} failed" in r.stderr
    assert s["terminated"] is True
    assert fake.alive() == []
    if stage == "provision":
        assert fake.pods == {}  # nothing was rented
    else:
        assert fake.terminated == [s["machine_id"]]
        assert s["machine_details"]["ssh_route"] == "direct"
    assert s["training_success"] is False
    assert Path(s["paths"]["log"]).read_text().count(f"[{stage}] FAILED") == 1


def test_no_capacity_anywhere_and_a_budget_too_small_fail_early(export: Path,
                                                                tmp_path: Path) -> None:
    fake = FakeRunPod(KEY, capacity=())
    try:
        r = cloud("full-cycle", str(export), "--provider", "runpod", "--runpod-api-url",
                  fake.url, "--runs", str(tmp_path / "a"), check=False, RUNPOD_API_KEY=KEY)
        assert r.returncode == 1
        s = summary_of(tmp_path / "a")
        assert s["failed_stage"] == "provision" and "no capacity" in s["error"]
        assert s["terminated"] is True and fake.pods == {}
        r = cloud("full-cycle", str(export), "--provider", "runpod", "--runpod-api-url",
                  fake.url, "--runs", str(tmp_path / "b"), "--budget-usd", "0.01",
                  check=False, RUNPOD_API_KEY=KEY)
        s = summary_of(tmp_path / "b")
        assert s["failed_stage"] == "prepare" and "over the budget" in s["error"]
        assert s["cost_usd"]["estimate"] > 0.01 and len(fake.calls) == 2  # from run a only
        r = cloud("full-cycle", str(export), "--provider", "runpod", "--runpod-api-url",
                  fake.url, "--runs", str(tmp_path / "c"), check=False, RUNPOD_API_KEY="")
        s = summary_of(tmp_path / "c")
        assert "RUNPOD_API_KEY" in s["error"]
    finally:
        fake.stop()


def test_failover_from_runpod_to_ssh(export: Path, tmp_path: Path) -> None:
    require_sshd()
    server = sshd_harness.Sshd(tmp_path / "sshd", "gateway")
    fake = FakeRunPod(KEY, capacity=())
    runs = tmp_path / "runs"
    try:
        cloud("full-cycle", str(export), "--provider", "runpod", "--provider", "ssh",
              "--runpod-api-url", fake.url, *ssh_args(server), "--runs", str(runs),
              "--config", str(write_config(tmp_path / "c.json", max_steps=20)),
              RUNPOD_API_KEY=KEY)
    finally:
        fake.stop()
        server.stop()
    s = summary_of(runs)
    assert s["providers_tried"] == ["runpod", "ssh"] and s["provider"] == "ssh"
    assert s["status"] == "succeeded"


@pytest.mark.parametrize("mode", ["gateway", "pty-only"])
def test_sigterm_of_the_orchestrator_terminates_the_machine_and_the_training(
        mode: str, export: Path, tmp_path: Path) -> None:
    """Both ways in: a gateway whose shell is dash (its `kill` takes no `--`), and a PTY
    session (interactive, so the training's setsid forks)."""
    require_sshd()
    server = sshd_harness.Sshd(tmp_path / "sshd", mode)
    fake = FakeRunPod(KEY, capacity=("SECURE",), boot_polls=1,
                      public_ssh=("127.0.0.1", server.port))
    runs = tmp_path / "runs"
    proc = subprocess.Popen(
        [sys.executable, "-m", "brain_cloud", "full-cycle", str(export),
         *runpod_args(fake, server), "--runs", str(runs), "--config",
         str(write_config(tmp_path / "c.json", max_steps=100_000))],
        env=env(RUNPOD_API_KEY=KEY), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        log = wait_until(lambda: next(iter(runs.glob("*/run.log")), None),
                         lambda p: p is not None and "step 20/" in p.read_text(),
                         timeout=120, interval=0.2, what="training under way")
        s = summary_of(runs)
        pid_file = Path(s["paths"]["remote_workdir"]) / "train.pid"
        group = int(pid_file.read_text())
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        fake.stop()
        server.stop()
    assert proc.returncode == 128 + signal.SIGTERM, err
    s = summary_of(runs)
    assert s["status"] == "interrupted" and s["failed_stage"] == "train"
    assert "SIGTERM" in s["error"] and s["terminated"] is True
    assert fake.terminated == [s["machine_id"]] and fake.alive() == []
    assert _live_members(group) == []  # the remote training's process group is gone
    assert "[train] FAILED" in log.read_text()
