"""The shipped units: `systemd-analyze verify` with the paths the install uses (a staged
DESTDIR as --root, so ExecStart must resolve to the installed entry point), the exposure
targets of `systemd-analyze security --offline=true`, and the settings the daemon relies on."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.harness.install import REPO, staged
from tests.harness.notify import parse_unit

UNITS = {"brain.service": 2.5, "brain-trainer.service": 3.0}
needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze not installed (apt-get install systemd)")


def _verify_root(tmp_path: Path) -> Path:
    """The staged install plus what verify resolves against: the host's unit directory (for
    multi-user.target and friends) and /bin/sh (the trainer's ExecCondition)."""
    root = tmp_path / "root"
    shutil.copytree(staged(), root, symlinks=True)
    (root / "usr/lib/systemd").mkdir(parents=True)
    for d in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")):
        if d.is_dir():
            shutil.copytree(d, root / "usr/lib/systemd/system", symlinks=True)
            break
    (root / "bin").mkdir()
    shutil.copy("/bin/sh", root / "bin/sh")
    return root


def _verify(root: Path, unit: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", "verify", f"--root={root}",
                           f"/etc/systemd/system/{unit}"],
                          capture_output=True, text=True, timeout=120, check=False)


@needs_analyze
@pytest.mark.parametrize("unit", sorted(UNITS))
def test_verify_passes_with_installed_paths(tmp_path: Path, unit: str) -> None:
    res = _verify(_verify_root(tmp_path), unit)
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip() == "", res.stderr  # not even a warning (unknown keys warn)


@needs_analyze
def test_verify_fails_when_the_entry_point_is_missing(tmp_path: Path) -> None:
    root = _verify_root(tmp_path)
    (root / "opt/brain/venv/bin/brain").unlink()
    res = _verify(root, "brain.service")
    assert res.returncode != 0
    assert "/opt/brain/venv/bin/brain" in res.stderr


@needs_analyze
@pytest.mark.parametrize("unit,limit", sorted(UNITS.items()))
def test_security_exposure_within_target(unit: str, limit: float) -> None:
    res = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager",
                          str(REPO / "systemd" / unit)],
                         capture_output=True, text=True, timeout=120, check=False)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", res.stdout + res.stderr)
    assert m, res.stdout + res.stderr
    assert float(m.group(1)) <= limit, res.stdout


def test_brain_service_reaches_its_devices_and_network() -> None:
    svc = parse_unit(REPO / "systemd/brain.service")["Service"]
    allowed = {v.split()[0] for v in svc["DeviceAllow"]}
    for group in ("char-i2c", "char-video4linux", "char-media", "char-dma_heap",
                  "char-gpiochip", "char-ttyAMA", "char-ttyUSB", "char-ttyACM"):
        assert group in allowed, group
    assert svc["DevicePolicy"] == ["closed"]
    families = set(" ".join(svc["RestrictAddressFamilies"]).split())
    assert families == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
    assert set(svc["SupplementaryGroups"][0].split()) == {"i2c", "video", "gpio", "dialout"}
    assert svc["Type"] == ["notify"] and svc["NotifyAccess"] == ["main"]
    assert svc["RestrictRealtime"] == ["no"] and int(svc["LimitRTPRIO"][0]) >= 50
    assert "CONTINUON_HEADLESS=1" in svc["Environment"]
    assert "CONTINUON_ENABLE_BACKGROUND_TRAINER=0" in svc["Environment"]
    install = parse_unit(REPO / "systemd/brain.service")["Install"]
    assert install["Alias"] == ["continuonbrain-startup.service"]


def test_trainer_keeps_off_the_control_cpu_and_runs_only_when_enabled() -> None:
    svc = parse_unit(REPO / "systemd/brain-trainer.service")["Service"]
    assert svc["Nice"] == ["19"] and svc["IOSchedulingClass"] == ["idle"]
    assert "3" not in svc["AllowedCPUs"][0].split("-")[-1:]  # CPU 3 is the control loop's
    assert "RuntimeDirectory" not in svc  # would delete the daemon's /run/brain on stop
    gate = svc["ExecCondition"][0]
    argv = ["/bin/sh", "-c", gate.split("-c ", 1)[1].strip("'")]
    for value, code in (("0", 1), ("", 1), ("1", 0), ("true", 0)):
        res = subprocess.run(argv, env={"CONTINUON_ENABLE_BACKGROUND_TRAINER": value},
                             check=False)
        assert res.returncode == code, value
