"""Signed bundles and the A/B slots, against the real daemon where it matters.

The vectors come from ota/make_vectors.py (reproducible: a test checks it); bundles are built
with the real `brain bundle build`; installs go through the CLI and the API upload.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from brain.ota import keys
from brain.ota.bundle import BundleError, BundleVerifier, Expectations
from brain.paths import StateLayout
from tests.ota_support import (
    SEED,
    brain,
    build,
    free_port,
    make_vectors,
    ota_daemon,
    settled,
    trusted_dir,
)
from tests.poll import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def vectors(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("vectors")
    return out, make_vectors(out)


def store_is_intact(state: Path, bundle_id: str) -> None:
    """Every file of a stored bundle hashes to its manifest (read here, not by the daemon)."""
    d = StateLayout(state).model / "store" / bundle_id
    manifest = json.loads((d / "edge_manifest.json").read_text())
    for entry in manifest["files"]:
        assert hashlib.sha256((d / entry["path"]).read_bytes()).hexdigest() == \
            entry["sha256"], f"{bundle_id}/{entry['path']}"


class TestVectors:
    def test_reproducible(self, vectors, tmp_path: Path) -> None:
        out, _cases = vectors
        make_vectors(tmp_path / "again")
        for p in sorted(out.iterdir()):
            assert (tmp_path / "again" / p.name).read_bytes() == p.read_bytes(), p.name

    def test_every_tampered_bundle_is_refused_with_its_reason(self, vectors) -> None:
        out, doc = vectors
        assert len(doc["cases"]) >= 20
        pub = keys.load_public(out / "dev.pub")
        ring = keys.Keyring({keys.key_id(pub): pub}, {})
        for name, case in sorted([(doc["valid"], {"reason": "ok"}), *doc["cases"].items()]):
            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / "store").mkdir()
                verifier = BundleVerifier(ring, Path(tmp) / "store", Path(tmp) / "staging")
                want = Expectations(profile="sim",
                                    robot_id=case.get("robot_id", doc["robot_id"]),
                                    release_floor=case.get("release_floor", 0),
                                    max_bundle_bytes=case.get("max_bundle_bytes", 512 << 20))
                try:
                    verifier.stage(out / name, want)
                    got = "ok"
                except BundleError as e:
                    got = e.reason
                assert got == case["reason"], name
                assert not list((Path(tmp) / "staging").glob("*")), "staging left behind"
                if got != "ok":
                    assert list((Path(tmp) / "store").iterdir()) == [], "refused but stored"

    def test_the_signature_verifies_with_openssl(self, tmp_path: Path) -> None:
        brain("bundle", "keygen", "--out", str(tmp_path / "k"), "--name", "pub")
        bundle = build(SEED, tmp_path / "k" / "pub.key", tmp_path / "b.bundle", "2.0.0", 1)
        subprocess.run(["tar", "xf", str(bundle), "-C", str(tmp_path), "edge_manifest.json",
                        "edge_manifest.sig"], check=True)
        r = subprocess.run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey",
                            str(tmp_path / "k" / "pub.pub"), "-rawin", "-in",
                            str(tmp_path / "edge_manifest.json"), "-sigfile",
                            str(tmp_path / "edge_manifest.sig")],
                           capture_output=True, text=True)
        assert r.returncode == 0 and "Signature Verified Successfully" in r.stdout, r
        (tmp_path / "edge_manifest.json").write_bytes(
            (tmp_path / "edge_manifest.json").read_bytes().replace(b'"2.0.0"', b'"2.0.1"'))
        r = subprocess.run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey",
                            str(tmp_path / "k" / "pub.pub"), "-rawin", "-in",
                            str(tmp_path / "edge_manifest.json"), "-sigfile",
                            str(tmp_path / "edge_manifest.sig")], capture_output=True, text=True)
        assert r.returncode != 0

    def test_key_files_and_cli_checks(self, tmp_path: Path) -> None:
        brain("bundle", "keygen", "--out", str(tmp_path), "--name", "p")
        assert (tmp_path / "p.key").stat().st_mode & 0o777 == 0o600
        assert b"BEGIN PRIVATE KEY" in (tmp_path / "p.key").read_bytes()  # PKCS#8
        assert b"BEGIN PUBLIC KEY" in (tmp_path / "p.pub").read_bytes()  # SPKI
        again = brain("bundle", "keygen", "--out", str(tmp_path), "--name", "p", check=False)
        assert again.returncode == 2 and "already exists" in again.stderr
        b = build(SEED, tmp_path / "p.key", tmp_path / "x.bundle", "1.0.0", 1)
        ok = brain("bundle", "verify", str(b), "--keys", str(tmp_path), "--json")
        assert json.loads(ok.stdout)["ok"] is True
        (tmp_path / "other").mkdir()
        bad = brain("bundle", "verify", str(b), "--keys", str(tmp_path / "other"), "--json",
                    check=False)
        assert bad.returncode == 1 and json.loads(bad.stdout)["reason"] == "unknown-key"
        seen = json.loads(brain("bundle", "inspect", str(b), "--json").stdout)
        assert [m["name"] for m in seen["members"]][:2] == ["edge_manifest.json",
                                                             "edge_manifest.sig"]


@pytest.fixture
def running(vectors, tmp_path: Path):
    """A daemon trusting the vectors' dev key, with the API on and a paired client."""
    out, _doc = vectors
    port = free_port()
    cap = str((out / "valid.bundle").stat().st_size + (1 << 20))
    d = ota_daemon(tmp_path / "state", trusted_dir(out, tmp_path / "keys"), api_port=port,
                   env={"BRAIN_OTA_MAX_BUNDLE_BYTES": cap})
    try:
        d.wait_ready()
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _answers(url + "/api/v1/health"), what="the API")
        code = json.loads(d.cli("pair", "--json").stdout)["code"]
        token = httpx.post(url + "/api/v1/pair", json={"code": code, "client_name": "t"}
                           ).json()["token"]
        with httpx.Client(base_url=url, timeout=60,
                          headers={"Authorization": f"Bearer {token}"}) as c:
            yield d, c, out
    finally:
        d.kill()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def upload(c: httpx.Client, path: Path) -> httpx.Response:
    return c.post("/api/v1/ota", content=path.read_bytes(),
                  headers={"Content-Type": "application/octet-stream"})


class TestDaemon:
    def test_bad_bundle_corpus_leaves_the_active_model_and_the_loop_alone(self, running,
                                                                          tmp_path) -> None:
        d, c, out = running
        doc = json.loads((out / "cases.json").read_text())
        active = c.get("/api/v1/ota").json()["active"]
        c.post("/api/v1/stats/reset").raise_for_status()
        ticks0 = c.get("/api/v1/status").json()["ticks"]
        refused = 0
        for name, case in sorted(doc["cases"].items()):
            if "release_floor" in case:
                continue  # covered below with a bundle under this robot's own floor
            r = upload(c, out / name)
            assert r.status_code in (413, 422), (name, r.status_code, r.text)
            want = case["reason"]
            got = r.json().get("reason")
            assert got == want, (name, r.json())
            refused += 1
        assert refused >= 20
        st = c.get("/api/v1/status").json()
        assert c.get("/api/v1/ota").json()["active"] == active and st["model"] == \
            active["bundle_id"]
        assert st["missed_ticks"] == 0 and st["ticks"] > ticks0 and st["on_time"]
        assert not list((StateLayout(d.state_dir).model / "staging").iterdir())
        # the floor: commit release 5, then a release 2 is refused
        assert upload(c, out / "valid.bundle").status_code == 200
        assert settled(d)["phase"] == "committed"
        old = build(SEED, out / "dev.key", tmp_path / "old.bundle", "0.9.0", 2)
        r = upload(c, old)
        assert r.status_code == 422 and r.json()["reason"] == "release-below-floor"
        cli = d.cli("ota", "install", str(old), "--json", check=False)
        assert cli.returncode == 1 and json.loads(cli.stdout)["reason"] == "release-below-floor"

    def test_install_commit_show_and_roll_back(self, running, tmp_path: Path) -> None:
        d, c, out = running
        st0 = json.loads(d.cli("ota", "status", "--json").stdout)
        assert st0["phase"] == "idle" and st0["active"]["origin"] == "factory"
        store_is_intact(d.state_dir, st0["active"]["bundle_id"])
        # CLI: waits through the trial, exits 0 once committed
        r = d.cli("ota", "install", str(out / "valid.bundle"))
        assert "committed" in r.stdout, r.stdout
        st = json.loads(d.cli("ota", "status", "--json").stdout)
        assert st["phase"] == "committed" and st["active"]["bundle_id"] == "vectors-1.2.0-r5"
        assert st["lkg"] == st["active"] and st["release_floor"] == 5
        assert st["previous"]["origin"] == "factory" and st["last_error"] is None
        store_is_intact(d.state_dir, "vectors-1.2.0-r5")
        status = d.status()
        assert status["model"] == "vectors-1.2.0-r5" and status["ota"]["phase"] == "committed"
        assert c.get("/api/v1/health").json()["id"]
        # API: a second version, uploaded
        v2 = build(SEED, out / "dev.key", tmp_path / "v2.bundle", "1.3.0", 6)
        r = upload(c, v2)
        assert r.status_code == 200 and r.json()["candidate"]["bundle_id"] == "test-1.3.0-r6"
        assert settled(d)["active"]["bundle_id"] == "test-1.3.0-r6"
        listed = {b["bundle_id"]: b["roles"] for b in c.get("/api/v1/ota/bundles").json()[
            "bundles"]}
        assert listed["test-1.3.0-r6"] == ["active", "lkg"] and "previous" in listed[
            "vectors-1.2.0-r5"]
        # rollback returns to the previous bundle, below the floor too (local is allowed)
        rb = json.loads(d.cli("ota", "rollback", "--json").stdout)
        assert rb["active"]["bundle_id"] == "vectors-1.2.0-r5" and rb["phase"] == "rolled_back"
        assert wait_until(d.status, lambda s: s["model"] == "vectors-1.2.0-r5", timeout=5)
        gc = json.loads(d.cli("ota", "gc", "--json").stdout)
        assert gc["removed"] == ["test-1.3.0-r6"]

    @pytest.mark.parametrize("how,reason", [("golden", "golden"),
                                            ("unsafe", "outside-safety")])
    def test_a_failing_trial_rolls_back_and_keeps_the_evidence(self, running, tmp_path, how,
                                                               reason) -> None:
        d, c, out = running
        model = tmp_path / "model"
        shutil.copytree(SEED, model)
        extra: tuple[str, ...] = ()
        if how == "unsafe":
            extra = ("--max-throttle", "0.01")  # the seed drives faster than that
        bundle = build(model, out / "dev.key", tmp_path / "b.bundle", "3.0.0", 9, *extra)
        if how == "golden":
            bundle = _with_wrong_golden(bundle, out / "dev.key", tmp_path)
        d.cli("mode", "arm")  # the policy runs on camera frames, outputs held neutral
        r = d.cli("ota", "install", str(bundle), "--json", check=False)
        assert r.returncode == 1
        st = json.loads(r.stdout)
        assert st["phase"] == "rolled_back" and st["last_error"]["reason"] == reason, st
        assert st["active"]["origin"] == "factory"
        assert d.status()["model"] == st["active"]["bundle_id"]
        report = StateLayout(d.state_dir).model / "failed" / "test-3.0.0-r9.json"
        assert json.loads(report.read_text())["reason"] == reason
        listed = c.get("/api/v1/ota/bundles").json()["bundles"]
        assert any(b["bundle_id"] == "test-3.0.0-r9" and b["failed"] for b in listed)

    def test_download_with_resume(self, running, tmp_path: Path) -> None:
        d, c, out = running
        data = (out / "valid.bundle").read_bytes()
        server = FlakyRangeServer(data)
        try:
            url = f"http://127.0.0.1:{server.port}/valid.bundle?token=secret"
            first = d.cli("ota", "install", url, check=False)
            assert first.returncode == 1  # the server hung up half way
            assert "secret" not in d.log()
            r = d.cli("ota", "install", url)  # resumes where it stopped
            assert "committed" in r.stdout
            assert server.ranges and server.ranges[-1].startswith("bytes=")
        finally:
            server.close()


def _with_wrong_golden(bundle: Path, key: Path, tmp: Path) -> Path:
    """Re-package with golden outputs that the model does not produce, correctly signed."""
    import numpy as np

    from brain.ota.bundle import BuildOptions, build_manifest, read_golden, write_golden

    work = tmp / "wrong"
    work.mkdir()
    subprocess.run(["tar", "xf", str(bundle), "-C", str(work)], check=True)
    manifest = json.loads((work / "edge_manifest.json").read_text())
    inputs, outputs = read_golden(work / "golden.f32", 4, 80, 60)
    write_golden(work / "golden.f32", inputs, outputs + np.float32(0.5))
    for name in ("edge_manifest.json", "edge_manifest.sig"):
        (work / name).unlink()
    opts = BuildOptions(version=manifest["version"], release=manifest["release"], name="test")
    private = keys.load_private(key)
    doc = build_manifest(work, opts, keys.key_id(private.public_key()))
    raw = json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"
    (work / "edge_manifest.json").write_bytes(raw)
    (work / "edge_manifest.sig").write_bytes(keys.sign(private, raw))
    out = tmp / "wrong.bundle"
    subprocess.run(["tar", "cf", str(out), "-C", str(work), "edge_manifest.json",
                    "edge_manifest.sig", *[e["path"] for e in doc["files"]]], check=True)
    return out


class FlakyRangeServer:
    """Serves one file over HTTP with Range support; the first full request is cut off half
    way (a dropped link), so a client must resume."""

    def __init__(self, data: bytes) -> None:
        self.data, self.ranges, self.cut = data, [], False
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None: ...

            def do_GET(self) -> None:  # noqa: N802
                rng = self.headers.get("Range")
                start = 0
                if rng:
                    outer.ranges.append(rng)
                    start = int(rng.split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range",
                                     f"bytes {start}-{len(outer.data) - 1}/{len(outer.data)}")
                else:
                    self.send_response(200)
                body = outer.data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not outer.cut and not rng:
                    outer.cut = True
                    self.wfile.write(body[:len(body) // 2])
                    self.wfile.flush()
                    self.connection.close()
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()



def test_status_line_follows_the_active_bundle(vectors, tmp_path: Path) -> None:
    """systemd's STATUS= (and with it `systemctl status`) names the bundle that drives."""
    from tests.harness.notify import NotifyListener

    out, _doc = vectors
    with NotifyListener() as listener:
        d = ota_daemon(tmp_path / "state", trusted_dir(out, tmp_path / "keys"),
                       env=listener.env())
        try:
            d.wait_ready()
            listener.wait_for("STATUS", timeout=10)
            assert "model=factory-seed-v1" in listener.find("STATUS")[-1].fields["STATUS"]
            d.cli("ota", "install", str(out / "valid.bundle"))
            wait_until(lambda: listener.find("STATUS")[-1].fields["STATUS"],
                       lambda line: "model=vectors-1.2.0-r5" in line, timeout=10)
        finally:
            d.stop()


def test_gc_waits_for_a_running_install(tmp_path: Path) -> None:
    """`ota.gc` removes what the state does not name; while an install holds the OTA lock the
    bundle it stages is in the store before the state names it, so gc must not run then."""
    from brain.ota.manager import OtaError
    from tests.api_support.light_service import LightService

    svc = LightService(tmp_path / "state", with_ota=True)
    try:
        ota = svc.ota
        assert ota is not None
        staging = ota.paths.store / "being-staged"  # what an install writes before its commit
        staging.mkdir()
        held = threading.Event()
        release = threading.Event()

        def install_in_progress() -> None:
            with ota._installing:  # as install() holds it, verification to staged commit
                held.set()
                release.wait(10)

        t = threading.Thread(target=install_in_progress)
        t.start()
        held.wait(5)
        with pytest.raises(OtaError, match="an install is running"):
            ota.gc()
        assert staging.is_dir()
        # A rollback never waits behind an install's verification (it only takes the short
        # state lock): here it answers at once that there is nothing to roll back to.
        with pytest.raises(OtaError, match="nothing to roll back to"):
            ota.rollback()
        release.set()
        t.join(5)
        assert "being-staged" in ota.gc()["removed"]
    finally:
        svc.close()


PAX_BOMB_CHILD = r'''
import io, sys, tarfile, tempfile
from pathlib import Path
from brain.ota import keys
from brain.ota.bundle import BundleError, BundleVerifier, Expectations

run = b"1" * int(sys.argv[2])  # digits where a pax record's length should end
pax = tarfile.TarInfo("././@PaxHeader")
pax.type, pax.size = tarfile.XHDTYPE, len(run)
manifest = tarfile.TarInfo("edge_manifest.json")
manifest.size = 2
data = (pax.tobuf(format=tarfile.USTAR_FORMAT) + run + b"\0" * (-len(run) % 512)
        + manifest.tobuf(format=tarfile.USTAR_FORMAT) + b"{}" + b"\0" * 510 + b"\0" * 1024)
bundle = Path(sys.argv[1])
bundle.write_bytes(data)
pub = keys.load_public(Path(sys.argv[3]))
verifier = BundleVerifier(keys.Keyring({keys.key_id(pub): pub}, {}), bundle.parent / "store",
                          bundle.parent / "staging")
try:
    verifier.stage(bundle, Expectations(profile="sim", robot_id="r", release_floor=0,
                                        max_bundle_bytes=64 << 20))
except BundleError as e:
    print("refused", e.reason, e.detail)
'''


def test_a_pax_bomb_is_refused_before_tarfile_reads_it(vectors, tmp_path: Path) -> None:
    """CVE-2024-6232: tarfile's pax parsing is quadratic in a record's length on Python
    3.11.7, and it ran before the signature was checked (32,000 digits cost ~1 s, 400,000 cost
    minutes, with OTA locked meanwhile). The signed head is now read from two plain ustar
    headers by hand, so the bomb is refused at its first header."""
    import sys

    out, _doc = vectors
    (tmp_path / "store").mkdir()
    r = subprocess.run([sys.executable, "-c", PAX_BOMB_CHILD, str(tmp_path / "bomb.bundle"),
                        "400000", str(out / "dev.pub")], capture_output=True, text=True,
                       timeout=60, cwd=Path(__file__).resolve().parent.parent)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("refused unexpected-member"), r.stdout


class Scripted(http.server.ThreadingHTTPServer):
    """Answers every GET with (status, headers, body) from `answer(path)`; notes each path."""

    def __init__(self, answer: Any) -> None:
        self.paths: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None: ...

            def do_GET(self) -> None:  # noqa: N802
                outer.paths.append(self.path)
                status, headers, body = answer(self.path)
                self.send_response(status)
                for k, v in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def close(self) -> None:
        self.shutdown()
        self.server_close()


def test_url_installs_stay_on_their_origin_say_nothing_of_the_network_and_leave_nothing(
        tmp_path: Path) -> None:
    """A paired client's URL install once followed redirects to any host and port, told an
    open port from a closed one by its error text, and left every download on the disk."""
    import re

    from brain.commands import LOCAL, CommandError
    from tests.api_support.light_service import LightService

    inner = Scripted(lambda path: (200, {}, b"secret internal page"))
    outer = Scripted(lambda path: (302, {"Location": f"{inner.url}/admin"}, b"")
                     if path == "/hop" else (404, {}, b"no") if path == "/missing" else
                     (200, {}, b"not a bundle at all" * 100))
    closed = Scripted(lambda path: (200, {}, b""))
    closed_url = closed.url
    closed.close()
    svc = LightService(tmp_path / "state", with_ota=True)
    try:
        def install(url: str) -> str:
            with pytest.raises(CommandError) as e:
                svc.service.commands.call("ota.install", {"source": url}, LOCAL)
            return str(e.value)

        said = install(f"{outer.url}/hop")
        assert inner.paths == [], "followed a redirect to another origin"
        texts = {re.sub(r"from \S+;", "from URL;", text) for text in (
            said, install(f"{outer.url}/missing"), install(f"{closed_url}/x.bundle"))}
        assert len(texts) == 1, texts  # 404, a closed port, a foreign redirect: the same words
        rejected = install(f"{outer.url}/junk.bundle")  # downloaded, then refused
        assert "not-a-bundle" in rejected or "bundle" in rejected
        downloads = svc.cfg.layout.model / "downloads"
        assert not [p for p in downloads.iterdir() if p.suffix == ".bundle"]
        ota = svc.ota
        assert ota is not None
        with ota.transfer():  # an upload in progress: a second transfer waits its turn
            assert "another bundle upload or download" in install(f"{outer.url}/junk.bundle")
    finally:
        svc.close()
        inner.close()
        outer.close()
