"""brain health / validate-hardware / diag bundle.

Hardware is reached through `brain.hardware.probe` (monkeypatched at that seam for the
"present" cases; called for real for the "absent" cases: this machine has no /dev/i2c-1).
sysfs and vcgencmd are replaced by files in tmp_path and a scripted runner.
"""

from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest

from brain.cli import main
from brain.config import load_config
from brain.control_socket import DaemonNotRunning
from brain.diag import health, validate_hw
from brain.diag.bundle import REDACTED, collect, redact, write_bundle
from brain.hardware.robot import Action, Frame, Observation, Robot, RobotSpec

NO_I2C = not Path("/dev/i2c-1").exists()


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("BRAIN_PROFILE", "BRAIN_CONFIG", "JOURNAL_STREAM", "LOGS_DIRECTORY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("BRAIN_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setattr("brain.config.SYSTEM_CONFIG", tmp_path / "absent.toml")
    return tmp_path


class FakeClient:
    def __init__(self, status: dict | None = None) -> None:
        self.status = status

    def ask(self) -> dict:
        return self.call("status")

    def call(self, cmd: str, **args: object) -> dict:
        if self.status is None:
            raise DaemonNotRunning("no brain daemon is running (no answer on /x.sock)")
        return {**self.status, **({"histogram": {"lateness_us": {"1": 5}}} if args else {})}


ON_TIME = {"mode": "armed", "target_hz": 50, "rate_hz": 49.99, "ticks": 5000,
           "lateness_ms": {"p50": 0.1, "p99": 0.3, "max": 1.0}, "overruns": 0,
           "model": "seed", "uptime_s": 100}


# -- individual checks ----------------------------------------------------------------------------

def _thermal(root: Path, milli: int) -> Path:
    z = root / "thermal_zone0"
    z.mkdir(parents=True)
    (z / "temp").write_text(f"{milli}\n")
    (z / "type").write_text("cpu-thermal\n")
    return root


def test_temperature_levels(tmp_path: Path) -> None:
    assert health.check_cpu_temperature(_thermal(tmp_path / "a", 48000)).status == "ok"
    hot = health.check_cpu_temperature(_thermal(tmp_path / "b", 86500))
    assert hot.status == "fail" and "86.5 °C" in hot.detail
    assert health.check_cpu_temperature(tmp_path / "none").status == "warn"


@pytest.mark.parametrize("answer,status,word", [
    ("throttled=0x0", "ok", "never"),
    ("throttled=0x50000", "warn", "since boot under-voltage"),
    ("throttled=0x4", "warn", "now throttled"),
    ("throttled=0x50005", "fail", "under-voltage now"),
])
def test_throttling_bits(answer: str, status: str, word: str) -> None:
    def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
        assert argv == ["vcgencmd", "get_throttled"]
        return subprocess.CompletedProcess(argv, 0, answer + "\n", "")

    c = health.check_throttling(run=run, which=lambda _n: "/usr/bin/vcgencmd")
    assert (c.status, word in c.detail) == (status, True), c


def test_clock_sync_sources(tmp_path: Path) -> None:
    flag = tmp_path / "synchronized"
    flag.touch()
    assert health.check_clock(flag).status == "ok"
    c = health.check_clock(tmp_path / "nope", kernel=lambda: (False, "state 5"))
    assert c.status == "warn" and "not synchronised" in c.detail
    synced, detail = health.kernel_clock_synced()  # the real adjtimex call
    assert isinstance(synced, bool) and "kernel clock state" in detail


def test_daemon_check_judges_the_loop(env: Path) -> None:
    sim = load_config()
    assert health.check_daemon(sim, FakeClient(ON_TIME).ask).status == "ok"
    slow = health.check_daemon(sim, FakeClient({**ON_TIME, "rate_hz": 40.0}).ask)
    assert slow.status == "fail" and "not on time" in slow.detail
    late = health.check_daemon(sim, FakeClient({**ON_TIME, "overruns": 3}).ask)
    assert late.status == "warn"
    assert health.check_daemon(sim, FakeClient(None).ask).status == "warn"  # dev machine
    robot = load_config(overrides={"profile": "pi5-donkey"})
    assert health.check_daemon(robot, FakeClient(None).ask).status == "fail"  # a robot must run it


def test_hardware_checks_through_the_probe_seam(env: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import brain.hardware.probe as probe

    cfg = load_config(overrides={"profile": "pi5-donkey",
                                 "profiles.pi5-donkey.pca9685_address": 0x41})
    seen = {}

    def fake_pca(bus: int, address: int) -> tuple[bool, str]:
        seen["pca"] = (bus, address)
        return True, "PCA9685 at 0x41 on /dev/i2c-1: PRESCALE=121"

    monkeypatch.setattr(probe, "probe_pca9685", fake_pca)
    monkeypatch.setattr(probe, "list_cameras", lambda: ["0: imx708 /base/axi/rp1"])
    monkeypatch.setattr(probe, "list_serial_ports", lambda: ["/dev/ttyAMA0"])
    assert health.check_pca9685(cfg).status == "ok" and seen["pca"] == (1, 0x41)
    assert health.check_camera(cfg).detail == "0: imx708 /base/axi/rp1"
    monkeypatch.setattr(probe, "list_cameras", lambda: [])
    assert health.check_camera(cfg).status == "fail"
    cfg.profiles.pi5_donkey.serial_port = "/dev/ttyUSB7"
    bad = health.check_serial(cfg)
    assert bad.status == "fail" and "/dev/ttyUSB7" in bad.detail and "/dev/ttyAMA0" in bad.detail


# -- the commands ---------------------------------------------------------------------------------

def test_health_json_on_sim_passes(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["health", "--quick", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True
    names = [c["name"] for c in doc["checks"]]
    assert names == ["cpu_temperature", "throttling", "memory", "disk", "clock_sync", "i2c_bus",
                     "pca9685", "camera", "serial", "daemon"]
    assert all(set(c) == {"name", "status", "detail"} for c in doc["checks"])


@pytest.mark.skipif(not NO_I2C, reason="this machine has /dev/i2c-1")
def test_health_on_pi5_profile_without_hardware_fails_naming_devices(
        env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("BRAIN_PROFILE", "pi5-donkey")
    assert main(["health", "--quick", "--json"]) == 1
    out = capsys.readouterr()
    doc = json.loads(out.out)
    by = {c["name"]: c for c in doc["checks"]}
    assert doc["ok"] is False
    assert by["i2c_bus"]["status"] == "fail" and "/dev/i2c-1" in by["i2c_bus"]["detail"]
    assert by["pca9685"]["status"] == "fail"
    assert "Traceback" not in out.err


def test_validate_hardware_sim_passes_and_logs(env: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    log = env / "v.json"
    assert main(["validate-hardware", "--profile", "sim", "--log-json", str(log),
                 "--duration", "1"]) == 0
    doc = json.loads(log.read_text())
    assert doc["ok"] is True and doc["profile"] == "sim"
    skew = doc["measurements"]["skew"]
    assert skew["frames"] > 5 and len(skew["per_frame"]) == skew["frames"]
    assert skew["skew_ms"] <= validate_hw.SKEW_LIMIT_MS
    assert "gate passed" in capsys.readouterr().out


@pytest.mark.skipif(not NO_I2C, reason="this machine has /dev/i2c-1")
def test_validate_hardware_pi5_fails_cleanly(env: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    log = env / "v.json"
    assert main(["validate-hardware", "--profile", "pi5-donkey", "--log-json", str(log)]) == 1
    out = capsys.readouterr()
    doc = json.loads(log.read_text())
    failed = {g["name"]: g["detail"] for g in doc["gate"] if g["status"] == "fail"}
    assert {"camera", "pca9685", "timestamp_skew"} <= set(failed)
    assert "/dev/i2c-1" in failed["pca9685"] and "/dev/i2c-1" in failed["timestamp_skew"]
    assert "Traceback" not in out.err


class ClockedRobot(Robot):
    """Frames stamped `offset` seconds off the loop clock (a camera on another clock)."""

    spec = RobotSpec(name="clocked", state_names=("x",), camera_fps=50.0)

    def __init__(self, offset: float) -> None:
        self.offset, self.seq = offset, 0

    @property
    def frames(self) -> None:
        return None  # frames arrive with each observation here

    def connect(self) -> None: ...

    def read(self) -> Observation:
        import time

        t = time.monotonic()
        self.seq += 1
        frame = Frame(np.zeros((2, 2, 3), np.uint8), t + self.offset, self.seq)
        return Observation(t=t, state=np.zeros(1, np.float32), frame=frame)

    def write(self, action: Action) -> None: ...

    def close(self) -> None: ...


@pytest.mark.parametrize("offset,status", [(0.0, "ok"), (0.02, "fail"), (-3.0, "fail")])
def test_skew_gate_catches_a_camera_on_another_clock(offset: float, status: str) -> None:
    m = validate_hw.measure_skew(ClockedRobot(offset), hz=50, duration_s=0.3)
    assert validate_hw._skew_check(m, 50.0).status == status, m["skew_ms"]


# -- bundle ---------------------------------------------------------------------------------------

def test_redact_hides_secret_values_only() -> None:
    doc = {"api": {"token": "abc", "tls_key": "", "port": 8443},
           "list": [{"Password": "pw"}], "name": "robot"}
    assert redact(doc) == {"api": {"token": REDACTED, "tls_key": "", "port": 8443},
                           "list": [{"Password": REDACTED}], "name": "robot"}


def test_bundle_has_everything_support_needs(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    logs = env / "logs"
    logs.mkdir()
    (logs / "brain.log").write_text("line one\nline two\n")
    monkeypatch.setenv("LOGS_DIRECTORY", str(logs))
    cfg = load_config()
    members = collect(cfg, FakeClient(ON_TIME), journal_reader=lambda: None)
    out = env / "diag.tar.gz"
    write_bundle(members, out)
    with tarfile.open(out) as tar:
        names = {m.name for m in tar.getmembers()}
        assert {f"diag/{n}" for n in ("versions.json", "config.json", "health.json",
                                      "status.json", "logs/brain.log", "manifest.json")} <= names
        status = json.load(tar.extractfile("diag/status.json"))
        versions = json.load(tar.extractfile("diag/versions.json"))
    assert "histogram" in status
    assert "numpy" in {k.lower() for k in versions["packages"]}
    assert out.stat().st_mode & 0o777 == 0o600


def test_bundle_cli_without_daemon_notes_what_is_missing(
        env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("brain.diag.bundle.journal", lambda: "-- journal line\n")
    out = env / "b.tgz"
    assert main(["diag", "bundle", "--out", str(out)]) == 0
    assert "status.json" in capsys.readouterr().out  # noted as not collected
    with tarfile.open(out) as tar:
        manifest = json.load(tar.extractfile("b/manifest.json"))
    assert "status.json" in manifest["not_collected"]
    assert "logs/journal-brain.txt" in manifest["members"]
