"""Configuration: loading, overrides, validation errors that name the key and file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from brain.config import Config, ConfigError, load_config, render_toml

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "brain.toml"
    p.write_text(text)
    return p


def test_defaults_without_file():
    cfg = load_config(env={})
    assert cfg.profile == "sim"
    assert cfg.drive_hz == 50
    assert cfg.safety.deadman_ms == 250
    assert cfg.source == "built-in defaults"


def test_shipped_file_is_the_documented_defaults():
    shipped = (REPO / "etc" / "brain.toml").read_text()
    assert shipped == render_toml(), "etc/brain.toml is stale: regenerate with `brain config " \
        "defaults > etc/brain.toml`"
    assert load_config(REPO / "etc" / "brain.toml", env={}) == Config()


def test_every_setting_is_documented():
    text = render_toml()
    for line_no, line in enumerate(text.splitlines()):
        if "=" in line and not line.startswith("#"):
            prev = text.splitlines()[line_no - 1]
            assert prev.startswith("#"), f"undocumented setting: {line}"


def test_file_values_and_profile_table(tmp_path):
    p = write(tmp_path, 'profile = "pi5-donkey"\n[profiles.pi5-donkey]\ndrive_hz = 30\n'
                       'i2c_bus = 3\n[safety]\nmax_throttle = 0.25\n')
    cfg = load_config(p, env={})
    assert cfg.profile == "pi5-donkey"
    assert cfg.drive_hz == 30
    assert cfg.profiles.pi5_donkey.i2c_bus == 3
    assert cfg.safety.max_throttle == 0.25
    assert cfg.source == str(p)


@pytest.mark.parametrize("text,needle", [
    ("bogus = 1\n", "bogus"),
    ("[safety]\nmax_thrott = 0.5\n", "safety.max_thrott"),
    ("[safety]\nmax_throttle = \"fast\"\n", "safety.max_throttle"),
    ("[safety]\nmax_throttle = 1.5\n", "safety.max_throttle"),
    ("[profiles.sim]\ndrive_hz = 100\n", "profiles.sim.drive_hz"),
    ("[profiles.sim]\ndrive_hz = 19\n", "profiles.sim.drive_hz"),
    ("[profiles.sim]\ndrive_hz = 50.5\n", "profiles.sim.drive_hz"),
    ("[control]\nrealtime = 1\n", "control.realtime"),
    ("profile = \"tank\"\n", "profile"),
    ("safety = 3\n", "safety"),
    ("[profiles.pi5-donkey]\nsteering_channel = 1\n", "throttle_channel"),
    ("[profiles.sim]\nroad_colour = \"red\"\n", "profiles.sim.road_colour"),
])
def test_bad_file_names_key_and_file(tmp_path, text, needle):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(p, env={})
    assert needle in str(e.value)
    assert str(p) in str(e.value)


def test_not_toml_and_missing_file(tmp_path):
    p = write(tmp_path, "this is = = not toml\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(p, env={})
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml", env={})


def test_env_overrides_and_continuon_names(tmp_path):
    p = write(tmp_path, "[safety]\nmax_throttle = 0.25\n")
    cfg = load_config(p, env={
        "BRAIN_SAFETY_MAX_THROTTLE": "0.4",
        "BRAIN_PROFILE": "pi5-donkey",
        "BRAIN_STATE_DIR": str(tmp_path / "state"),
        "BRAIN_RUNTIME_DIR": str(tmp_path / "rt"),
        "BRAIN_PROFILES_PI5_DONKEY_PCA9685_ADDRESS": "0x41",
        "CONTINUON_HEADLESS": "1",
        "CONTINUON_ENABLE_BACKGROUND_TRAINER": "0",
        "CONTINUON_EXPORT_ORIGIN": "lab-7",
        "BRAIN_TEST_HOOKS": "1",  # not a config key: ignored
    })
    assert cfg.safety.max_throttle == 0.4
    assert cfg.profile == "pi5-donkey"
    assert cfg.state_path == tmp_path / "state"
    assert cfg.socket_path == tmp_path / "rt" / "control.sock"
    assert cfg.profiles.pi5_donkey.pca9685_address == 0x41
    assert cfg.headless is True
    assert cfg.train.enable_background is False
    assert cfg.export.origin == "lab-7"


def test_runtime_dir_defaults_under_state_dir(tmp_path):
    cfg = load_config(env={"BRAIN_STATE_DIR": str(tmp_path)})
    assert cfg.socket_path == tmp_path / "run" / "control.sock"


@pytest.mark.parametrize("var,value", [
    ("BRAIN_SAFETY_MAX_THROTTLE", "lots"),
    ("BRAIN_API_PORT", "0"),
    ("CONTINUON_HEADLESS", "maybe"),
    ("CONTINUON_EXPORT_ORIGIN", "bad origin!"),
])
def test_bad_env_names_the_variable(var, value):
    with pytest.raises(ConfigError, match=var):
        load_config(env={var: value})


def test_cli_exits_2_with_one_line_and_no_traceback(tmp_path):
    p = write(tmp_path, "[safety]\nmax_throttle = 7\n")
    r = subprocess.run([sys.executable, "-m", "brain", "--config", str(p), "config", "check"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "safety.max_throttle" in r.stderr and str(p) in r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = subprocess.run([sys.executable, "-m", "brain", "run", "--sim", "--config", str(p)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "safety.max_throttle" in r.stderr
