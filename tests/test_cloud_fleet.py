"""Fleet delivery: `brain-cloud serve` with a channel, three real daemons on loopback following
it (ota.channel_url), staged rollouts that advance on commits and halt (rolling the fleet back)
when a robot fails its trial; the channel document's checks on the robot; Range downloads."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from brain.ota import keys as keyfiles
from brain.ota.channel import ChannelError, bucket, verify_document
from brain.paths import StateLayout
from tests.cloud_support import env
from tests.daemon_support import DaemonProcess
from tests.ota_support import SEED, build, free_port, make_vectors, ota_daemon, trusted_dir
from tests.poll import wait_until

pytestmark = pytest.mark.slow
TOKEN = secrets.token_hex(16)


@pytest.fixture(scope="module")
def vectors(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("vectors")
    make_vectors(out)
    return out


@pytest.fixture(scope="module")
def bundle(vectors: Path) -> Path:
    return build(SEED, vectors / "dev.key", vectors / "fleet.bundle", "1.1.0", 7)


BUNDLE_ID = "test-1.1.0-r7"


class Serve:
    def __init__(self, root: Path, key: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        root.mkdir(parents=True, exist_ok=True)
        self.log_path = root / "serve.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "brain_cloud", "serve", "--root", str(root), "--key",
             str(key), "--port", str(self.port), "--token", TOKEN], env=env(),
            stdout=self.log, stderr=subprocess.STDOUT)
        wait_until(self._up, what="brain-cloud serve")

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            self.log.flush()
            raise AssertionError(f"serve exited {self.proc.returncode}: "
                                 f"{self.log_path.read_text(errors='replace')[-3000:]}")
        try:
            return httpx.get(self.url + "/api/status", headers=self.auth,
                             timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKEN}"}

    def channel(self) -> dict[str, Any]:
        st = httpx.get(self.url + "/api/status", headers=self.auth, timeout=5).json()
        return next(c for c in st["channels"] if c["channel"] == "stable")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


def robot_ids(bundle_id: str, ranges: list[tuple[int, int]]) -> list[str]:
    """Robot ids whose buckets for `bundle_id` fall in each [lo, hi) in turn."""
    out = []
    for lo, hi in ranges:
        while True:
            rid = secrets.token_hex(6)
            if lo <= bucket(rid, bundle_id) < hi:
                out.append(rid)
                break
    return out


@pytest.fixture
def fleet(request: pytest.FixtureRequest, vectors: Path, tmp_path: Path
          ) -> Iterator[tuple[Serve, list[DaemonProcess], list[str]]]:
    """serve, then three daemons following its channel. request.param: per-robot extra env."""
    extras: list[dict[str, str]] = request.param
    serve = Serve(tmp_path / "serve", vectors / "dev.key")
    keys = trusted_dir(vectors, tmp_path / "keys")
    ids = robot_ids(BUNDLE_ID, [(0, 10), (10, 25), (25, 50)])
    robots = []
    try:
        for i, (rid, extra) in enumerate(zip(ids, extras, strict=True)):
            state = tmp_path / f"robot{i}"
            layout = StateLayout(state)
            layout.identity_file.parent.mkdir(parents=True, exist_ok=True)
            layout.identity_file.write_text(json.dumps({"id": rid}))
            d = ota_daemon(state, keys, env={
                "BRAIN_OTA_CHANNEL_URL": f"{serve.url}/channels/stable/channel.json",
                "BRAIN_OTA_CHANNEL_POLL_S": "1", "BRAIN_OTA_CHANNEL_JITTER_S": "0", **extra})
            robots.append(d)
            d.wait_ready()
        wait_until(serve.channel, lambda c: len(c["robots"]) == 3, timeout=30, interval=0.3,
                   what="the three robots to report in")
        yield serve, robots, ids
    finally:
        for d in robots:
            assert d.stop() == 0, d.log()
        serve.stop()


def publish(serve: Serve, bundle: Path) -> dict[str, Any]:
    r = subprocess.run([sys.executable, "-m", "brain_cloud", "publish", str(bundle),
                        "--server", serve.url, "--token", TOKEN, "--json"], env=env(),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def active(d: DaemonProcess) -> str:
    return str(json.loads(d.cli("ota", "status", "--json").stdout)["active"]["bundle_id"])


@pytest.mark.parametrize("fleet", [[{}, {}, {}]], indirect=True)
def test_a_staged_rollout_advances_as_the_robots_in_each_stage_commit(
        fleet: tuple[Serve, list[DaemonProcess], list[str]], bundle: Path) -> None:
    serve, robots, ids = fleet
    doc = publish(serve, bundle)
    assert doc["bundle"]["id"] == BUNDLE_ID and doc["rollout"]["percent"] == 10
    final = wait_until(serve.channel, lambda c: c["state"] == "complete", timeout=120,
                       interval=0.5, what="the rollout to complete")
    assert final["percent"] == 100
    assert all(active(d) == BUNDLE_ID for d in robots)
    # Stage by stage: each robot installed only once its bucket was inside the rollout.
    history = [h["event"] for h in final["history"]]
    committed = [next(i for i, e in enumerate(history) if e.startswith(f"{rid}: {BUNDLE_ID} "
                                                                         "committed"))
                 for rid in ids]
    advanced = {p: next(i for i, e in enumerate(history) if e.endswith(f"now {p}%"))
                for p in (25, 50, 100)}
    # buckets: robot 0 in [0, 10), robot 1 in [10, 25), robot 2 in [25, 50)
    assert committed[0] < advanced[25] < committed[1] < advanced[50] < committed[2] \
        < advanced[100], history
    # The CLI shows the same, per robot.
    r = subprocess.run([sys.executable, "-m", "brain_cloud", "rollout", "status", "--server",
                        serve.url, "--token", TOKEN], env=env(), capture_output=True,
                       text=True)
    assert r.returncode == 0 and "complete" in r.stdout and r.stdout.count("committed") == 3


@pytest.mark.parametrize("fleet", [[{}, {}, {"BRAIN_SAFETY_MAX_THROTTLE": "0.02"}]],
                         indirect=True)
def test_a_failed_trial_halts_the_rollout_and_rolls_the_fleet_back(
        fleet: tuple[Serve, list[DaemonProcess], list[str]], bundle: Path) -> None:
    """The third robot's own limits are tighter than anything the policy outputs, so the new
    model leaves them in its probation there (outside-safety): its trial fails. With 1 of 3 failed
    (over the 25 % threshold) the channel halts and tells the robots to roll back; the two that
    had committed return to the factory model."""
    serve, robots, ids = fleet
    factory = active(robots[0])
    publish(serve, bundle)
    halted = wait_until(serve.channel, lambda c: c["state"] == "halted", timeout=120,
                        interval=0.5, what="the rollout to halt")
    by_id = {r["id"]: r for r in halted["robots"]}
    assert by_id[ids[2]]["result"] == "rolled_back"
    assert by_id[ids[2]]["reason"] == "outside-safety"
    wait_until(lambda: [active(d) for d in robots], lambda a: a == [factory] * 3, timeout=60,
               interval=0.5, what="the fleet back on the factory model")
    final = wait_until(serve.channel, lambda c: all(
        r["result"] == "rolled_back" for r in c["robots"]), timeout=30, interval=0.5,
        what="every robot to report its rollback")
    reasons = {r["id"]: r["reason"] for r in final["robots"]}
    assert reasons[ids[0]] == reasons[ids[1]] == "halted by the channel"
    assert any("halted" in h["event"] for h in final["history"])
    # Halted stays halted: nothing installs it again.
    st = json.loads(robots[0].cli("ota", "status", "--json").stdout)
    assert st["phase"] != "trial"


def test_the_robot_checks_the_channel_document(vectors: Path, tmp_path: Path) -> None:
    """Signature, trusted key, shape and expiry, each refused with its reason."""
    from brain_cloud.fleet import Rollout

    rollout = Rollout(tmp_path / "stable", vectors / "dev.key")
    rollout.open()
    raw = (tmp_path / "stable" / "channel.json").read_bytes()
    sig = (tmp_path / "stable" / "channel.json.sig").read_bytes()
    ring = keyfiles.Keyring.load(trusted_dir(vectors, tmp_path / "keys"))
    assert verify_document(raw, sig, ring)["seq"] == 1
    other = keyfiles.Keyring.load(tmp_path / "nothing")
    cases = [(raw, sig, other, "not a trusted publisher key"),
             (raw.replace(b'"seq": 1', b'"seq": 9'), sig, ring, "does not verify"),
             (raw, sig[:-1] + bytes([sig[-1] ^ 1]), ring, "does not verify"),
             (b"{}", sig, ring, "required property")]
    for doc, signature, keyring, expect in cases:
        with pytest.raises(ChannelError, match=expect):
            verify_document(doc, signature, keyring)
    with pytest.raises(ChannelError, match="expired"):
        verify_document(raw, sig, ring, now=4_000_000_000)


def test_serve_answers_range_requests_and_hides_its_records(vectors: Path, bundle: Path,
                                                            tmp_path: Path) -> None:
    serve = Serve(tmp_path / "serve", vectors / "dev.key")
    try:
        publish(serve, bundle)
        url = f"{serve.url}/channels/stable/bundles/{BUNDLE_ID}.bundle"
        whole = httpx.get(url).content
        assert whole == bundle.read_bytes()
        part = httpx.get(url, headers={"Range": "bytes=1000-"})
        assert part.status_code == 206 and part.content == whole[1000:]
        for hidden in ("rollout.json", "../rollout.json", "bundles/../rollout.json",
                       "bundles/%2e%2e/rollout.json"):
            r = httpx.get(f"{serve.url}/channels/stable/{hidden}", follow_redirects=True)
            assert r.status_code == 404, hidden
        assert httpx.get(serve.url + "/api/status").status_code == 401
        r = httpx.post(f"{serve.url}/channels/stable/report", json={"robot_id": "../x"})
        assert r.status_code == 422
    finally:
        serve.stop()


def test_the_serve_page_runs_a_full_cycle_and_shows_its_log_live(vectors: Path,
                                                                 tmp_path: Path) -> None:
    """Chromium on `brain-cloud serve`'s page: the Run full cycle now button starts a real
    full cycle (local provider, a robot's export), the log arrives line by line while it runs,
    and the run appears in the runs table with its verdict."""
    from tests.cloud_support import robot_export, write_config
    from tests.test_webui_chromium import CHROMIUM, FLAGS, playwright

    export = robot_export(tmp_path / "robot", episodes=3)
    config = write_config(tmp_path / "c.json", max_steps=200, log_every=10)
    serve_root = tmp_path / "serve"
    serve_root.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cycle = f"{export} --provider local --config {config} --key {vectors / 'dev.key'}"
    proc = subprocess.Popen([sys.executable, "-m", "brain_cloud", "serve", "--root",
                             str(serve_root), "--key", str(vectors / "dev.key"), "--port",
                             str(port), "--token", TOKEN, "--cycle-args", cycle], env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: _status_code(url), lambda c: c == 200, what="serve")
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
            try:
                page = browser.new_page()
                page.set_default_timeout(20_000)
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(f"{url}/#token={TOKEN}")
                page.wait_for_selector("#conn[data-value=ok]")
                page.click("#run-cycle")
                page.wait_for_selector("#cycle-state[data-value=running]")
                page.wait_for_function("document.querySelector('#cycle-log').textContent"
                                       ".includes('[train] start')")
                seen_running = page.evaluate(
                    "document.querySelector('#cycle-state').dataset.value")
                lines_then = int(page.get_attribute("#cycle-log", "data-lines") or 0)
                page.wait_for_selector("#cycle-state[data-value=succeeded]", timeout=240_000)
                log = page.inner_text("#cycle-log")
                assert seen_running == "running" and lines_then < log.count("\n"), \
                    "lines arrived while the run was going, not all at the end"
                for expected in ("[upload] done", "step 200/200", "cleaned up",
                                 "[bundle] done", "succeeded"):
                    assert expected in log, (expected, log[-2000:])
                page.wait_for_selector("#runs tbody tr[data-status=succeeded]")
                assert not errors, errors
            finally:
                browser.close()
        summary = next((serve_root / "runs").glob("*/run-summary.json"))
        s = json.loads(summary.read_text())
        assert s["status"] == "succeeded" and s["terminated"] is True
    finally:
        proc.terminate()
        proc.wait(30)


def _status_code(url: str) -> int:
    try:
        return httpx.get(url + "/api/status", headers={"Authorization": f"Bearer {TOKEN}"},
                         timeout=1).status_code
    except httpx.TransportError:
        return 0


def test_the_generated_admin_token_survives_the_command_line(tmp_path: Path) -> None:
    """The token serve prints is pasted into `--token X`; argparse takes an argument that starts
    with '-' for an option, so a generated token must never start with one (with urlsafe base64
    one in 64 did: CI once failed on exactly that)."""
    from brain_cloud.cli import build_parser
    from brain_cloud.serve import ServeConfig

    for _ in range(2000):
        token = ServeConfig(root=tmp_path, key=tmp_path / "k", public_url="http://x").token
        args = build_parser().parse_args(["publish", "b.bundle", "--server", "http://x",
                                          "--token", token])
        assert args.token == token


def test_a_document_of_another_channel_is_not_obeyed(vectors: Path, bundle: Path,
                                                     tmp_path: Path) -> None:
    """A publisher-signed document of channel `beta`, served where the robot looks for its
    `stable` one, used to be obeyed (its bundle installed) and its seq recorded, freezing the
    real channel. Now it is refused and nothing of it is kept."""
    serve = Serve(tmp_path / "serve", vectors / "dev.key")
    keys = trusted_dir(vectors, tmp_path / "keys")
    state = tmp_path / "robot"
    layout = StateLayout(state)
    layout.identity_file.parent.mkdir(parents=True, exist_ok=True)
    layout.identity_file.write_text(json.dumps({"id": robot_ids(BUNDLE_ID, [(0, 10)])[0]}))
    d = ota_daemon(state, keys, env={
        "BRAIN_OTA_CHANNEL_URL": f"{serve.url}/channels/beta/channel.json",
        "BRAIN_OTA_CHANNEL": "stable", "BRAIN_OTA_CHANNEL_POLL_S": "1",
        "BRAIN_OTA_CHANNEL_JITTER_S": "0"})
    try:
        d.wait_ready()
        before = active(d)
        r = subprocess.run([sys.executable, "-m", "brain_cloud", "publish", str(bundle),
                            "--channel", "beta", "--server", serve.url, "--token", TOKEN,
                            "--json"], env=env(), capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["channel"] == "beta"
        wait_until(d.log, lambda log: "this robot follows 'stable'" in log, timeout=30,
                   interval=0.5, what="the robot to refuse beta's document")
        assert active(d) == before != BUNDLE_ID
        kept = json.loads((layout.model / "channel.json").read_text()) \
            if (layout.model / "channel.json").exists() else {}
        assert not kept.get("seqs", {}).get("beta") and not kept.get("seq")
    finally:
        assert d.stop() == 0, d.log()
        serve.stop()


def test_publish_never_writes_outside_the_channel(vectors: Path, bundle: Path,
                                                  tmp_path: Path) -> None:
    """`publish --dir` names the file after the bundle's id, read before any signature check:
    an id of `../../escaped` wrote `escaped.bundle` beside the channel directory. A manifest
    that does not follow the schema is now refused before any path is built from it."""
    import io
    import tarfile

    from brain_cloud.push import manifest_of

    manifest = manifest_of(bundle)
    crafted = tmp_path / "crafted.bundle"
    with tarfile.open(crafted, "w") as tar:
        data = json.dumps({**manifest, "bundle_id": "../../escaped"}).encode()
        info = tarfile.TarInfo("edge_manifest.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    channel = tmp_path / "site" / "stable"
    r = subprocess.run([sys.executable, "-m", "brain_cloud", "publish", str(crafted), "--dir",
                        str(channel), "--key", str(vectors / "dev.key")], env=env(),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "bundle_id" in r.stderr, r.stderr
    assert not list(tmp_path.rglob("escaped*")), list(tmp_path.rglob("escaped*"))


def test_a_quiet_channel_is_re_signed_before_it_expires(vectors: Path, bundle: Path,
                                                         tmp_path: Path) -> None:
    """Nothing re-signed a channel document, so after a quiet week every robot refused its
    channel. The clock is moved: the document is re-signed once less than half of its
    lifetime is left, unchanged but for its seq, issue and expiry, and still verifies when
    the first one has expired."""
    from brain_cloud.fleet import DOC_LIFETIME_S, Rollout

    day = 86400.0
    now = [1_900_000_000.0]
    rollout = Rollout(tmp_path / "stable", vectors / "dev.key", clock=lambda: now[0])
    rollout.publish(bundle)
    doc_file = tmp_path / "stable" / "channel.json"
    first, first_sig = doc_file.read_bytes(), (tmp_path / "stable" / "channel.json.sig"
                                               ).read_bytes()
    ring = keyfiles.Keyring.load(trusted_dir(vectors, tmp_path / "keys"))
    now[0] += 3 * day
    assert not rollout.refresh_if_due() and doc_file.read_bytes() == first
    now[0] += 1 * day  # 4 days in: 3 of 7 left
    assert rollout.refresh_if_due()
    second = doc_file.read_bytes()
    sig = (tmp_path / "stable" / "channel.json.sig").read_bytes()
    later = now[0] + DOC_LIFETIME_S - 4 * day + day  # past the first document's expiry
    with pytest.raises(ChannelError, match="expired"):
        verify_document(first, first_sig, ring, now=later)
    doc = verify_document(second, sig, ring, now=later, channel="stable")
    old = json.loads(first)
    assert doc["seq"] == old["seq"] + 1
    assert {k: v for k, v in doc.items() if k not in ("seq", "issued", "expires")} == \
        {k: v for k, v in old.items() if k not in ("seq", "issued", "expires")}


def test_serve_re_signs_its_channels_on_its_own(vectors: Path, tmp_path: Path) -> None:
    """serve's own loop, with a 4 s document lifetime checked every 0.5 s: the document it
    serves gets a new seq, and it verifies, without anyone publishing."""
    port = free_port()
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "brain_cloud", "serve", "--root", str(tmp_path / "serve"),
         "--key", str(vectors / "dev.key"), "--port", str(port), "--token", TOKEN,
         "--doc-lifetime", "4", "--refresh-every", "0.5"], env=env(), stdout=log,
        stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/channels/stable/channel.json"
    ring = keyfiles.Keyring.load(trusted_dir(vectors, tmp_path / "keys"))

    def served() -> dict[str, Any] | None:
        try:
            raw, sig = httpx.get(url, timeout=2), httpx.get(url + ".sig", timeout=2)
        except httpx.TransportError:
            return None
        if raw.status_code != 200 or sig.status_code != 200:
            return None
        try:
            return verify_document(raw.content, sig.content, ring, channel="stable")
        except ChannelError:
            return None  # a signature and a document read across a re-signing

    try:
        first = wait_until(served, lambda d: d is not None, timeout=30, what="serve")
        assert first is not None
        again = wait_until(served, lambda d: d is not None and d["seq"] > first["seq"],
                           timeout=30, interval=0.3, what="the document to be re-signed")
        assert again is not None and again["bundle"] == first["bundle"]
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
