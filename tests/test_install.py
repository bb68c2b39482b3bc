"""scripts/install.sh and uninstall.sh into a DESTDIR: the tree, the entry point the unit runs,
idempotence, and the rule that an edited /etc/brain/brain.toml is never overwritten."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.harness.install import PREFIX, dev_site_packages, run_script, staged
from tests.harness.notify import parse_unit

EXPECTED = [
    "etc/brain/brain.toml",
    "etc/default/brain",
    "etc/sysusers.d/brain.conf",
    "etc/systemd/system/brain.service",
    "etc/systemd/system/brain-trainer.service",
    "opt/brain/venv/bin/brain",
    "opt/brain/venv/bin/python",
    "opt/brain/venv/pyvenv.cfg",
    "opt/brain/share/brain/brain.toml.installed",
    "opt/brain/share/doc/brain/robot-setup.md",
]


def _tree(root: Path) -> dict[str, bytes]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and not p.is_symlink() and "/lib/python" not in rel:
            out[rel] = p.read_bytes()
    return out


def _copy(tmp_path: Path) -> Path:
    dest = tmp_path / "dest"
    shutil.copytree(staged(), dest, symlinks=True)
    return dest


def test_install_produces_the_expected_tree() -> None:
    dest = staged()
    missing = [p for p in EXPECTED if not (dest / p).exists()]
    assert not missing, f"not installed: {missing}"
    cfg = (dest / "etc/brain/brain.toml").read_text()
    assert 'profile = "sim"' in cfg  # x86_64 here: the simulator profile
    assert 'host = "0.0.0.0"' in cfg and "port = 8443" in cfg  # the robot serves the LAN
    assert (dest / "etc/brain/brain.toml").stat().st_mode & 0o777 == 0o640
    pyvenv = (dest / "opt/brain/venv/pyvenv.cfg").read_text()
    assert "include-system-site-packages = true" in pyvenv  # picamera2 from apt on the Pi
    # Nothing in the staged venv names the staging directory: it is right once copied to /.
    for p in (dest / "opt/brain/venv/bin").iterdir():
        if p.is_file() and not p.is_symlink():
            assert str(dest) not in p.read_text(errors="replace"), p


def test_unit_execstart_is_the_installed_entry_point_and_runs() -> None:
    dest = staged()
    unit = parse_unit(dest / "etc/systemd/system/brain.service")
    argv = shlex.split(unit["Service"]["ExecStart"][-1])
    assert argv[0] == f"{PREFIX}/venv/bin/brain"
    exe = dest / argv[0].lstrip("/")
    assert os.access(exe, os.X_OK)
    assert exe.read_text().splitlines()[0] == f"#!{PREFIX}/venv/bin/python"
    # Run it with the staged venv's interpreter (the shebang names the target path); the
    # dependencies, installed --no-deps here, come from the dev venv.
    py = dest / "opt/brain/venv/bin/python"
    env = {**os.environ, "PYTHONPATH": dev_site_packages()}
    run = {"env": env, "cwd": dest, "capture_output": True, "text": True, "timeout": 60}
    res = subprocess.run([str(py), str(exe), "--version"], **run, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("brain ")
    where = subprocess.run([str(py), "-c", "import brain; print(brain.__file__)"], **run,
                           check=True).stdout
    assert where.startswith(str(dest / "opt/brain/venv")), where
    res = subprocess.run([str(py), str(exe), "health", "--help"], **run, check=False)
    assert res.returncode == 0 and "--quick" in res.stdout, res.stderr


def test_install_twice_is_idempotent(tmp_path: Path) -> None:
    dest = _copy(tmp_path)
    before = _tree(dest)
    res = run_script("install.sh", dest)
    assert res.returncode == 0, res.stderr
    assert "/etc/brain/brain.toml unchanged" in res.stdout
    after = _tree(dest)
    assert sorted(after) == sorted(before)
    changed = [k for k in before if before[k] != after[k] and "__pycache__" not in k
               and not k.endswith("RECORD")]
    assert not changed, changed


def test_edited_config_survives_and_new_default_goes_beside_it(tmp_path: Path) -> None:
    dest = _copy(tmp_path)
    conf = dest / "etc/brain/brain.toml"
    edited = conf.read_text().replace('profile = "sim"', 'profile = "pi5-donkey"')
    conf.write_text(edited)
    res = run_script("install.sh", dest)
    assert res.returncode == 0, res.stderr
    assert conf.read_text() == edited
    dist = dest / "etc/brain/brain.toml.dist"
    assert dist.read_text() == (dest / "opt/brain/share/brain/brain.toml.installed").read_text()
    assert "kept your edited /etc/brain/brain.toml" in res.stdout


def test_unedited_config_follows_a_new_default(tmp_path: Path) -> None:
    """A config equal to what was installed last is replaced when the default changes."""
    dest = _copy(tmp_path)
    old = "# an older default\nprofile = \"sim\"\n"
    (dest / "etc/brain/brain.toml").write_text(old)
    (dest / "opt/brain/share/brain/brain.toml.installed").write_text(old)
    res = run_script("install.sh", dest)
    assert res.returncode == 0, res.stderr
    assert "updated /etc/brain/brain.toml" in res.stdout
    assert (dest / "etc/brain/brain.toml").read_text() != old
    assert not (dest / "etc/brain/brain.toml.dist").exists()


@pytest.mark.skipif(shutil.which("systemctl") is None, reason="systemctl not installed")
def test_enable_creates_the_continuonbrain_alias(tmp_path: Path) -> None:
    dest = _copy(tmp_path)
    res = subprocess.run(["systemctl", f"--root={dest}", "enable", "brain.service"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    alias = dest / "etc/systemd/system/continuonbrain-startup.service"
    assert alias.is_symlink() and os.readlink(alias).endswith("brain.service")
    assert (dest / "etc/systemd/system/multi-user.target.wants/brain.service").is_symlink()


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd-sysusers absent")
def test_sysusers_creates_the_user_and_its_groups(tmp_path: Path) -> None:
    dest = _copy(tmp_path)
    res = subprocess.run(["systemd-sysusers", f"--root={dest}"], capture_output=True,
                         text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    passwd = (dest / "etc/passwd").read_text()
    assert any(line.startswith("brain:") and "/var/lib/brain" in line
               for line in passwd.splitlines())
    groups = {line.split(":")[0]: line.split(":")[3]
              for line in (dest / "etc/group").read_text().splitlines()}
    for g in ("i2c", "video", "gpio", "dialout"):
        assert "brain" in groups[g].split(","), (g, groups.get(g))


def test_uninstall_keeps_data_and_edited_config_unless_purged(tmp_path: Path) -> None:
    dest = _copy(tmp_path)
    data = dest / "var/lib/brain/rlds/episode.bin"
    data.parent.mkdir(parents=True)
    data.write_bytes(b"demo")
    conf = dest / "etc/brain/brain.toml"
    conf.write_text(conf.read_text() + "\n# mine\n")
    res = run_script("uninstall.sh", dest)
    assert res.returncode == 0, res.stderr
    assert not (dest / "opt/brain").exists()
    assert not (dest / "etc/systemd/system/brain.service").exists()
    assert data.exists() and conf.exists()
    res = run_script("uninstall.sh", dest, PURGE="1")
    assert res.returncode == 0, res.stderr
    assert not data.exists() and not conf.exists()


def test_bad_profile_is_refused_before_anything_changes(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    res = run_script("install.sh", dest, ROBOT_PROFILE="pi6")
    assert res.returncode != 0
    assert "ROBOT_PROFILE=pi6" in res.stderr
    assert not dest.exists()
