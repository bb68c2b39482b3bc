"""`brain collect --teacher` end to end: the real loop, simulator, teacher and recorder, then the
episodes CLI validating and exporting what was recorded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def brain(state: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "BRAIN_STATE_DIR": str(state)}
    return subprocess.run([sys.executable, "-m", "brain", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_collect_validate_export(tmp_path):
    state = tmp_path / "state"
    r = brain(state, "collect", "--teacher", "--episodes", "2", "--seconds", "2",
              "--track", "chicane")
    assert r.returncode == 0, r.stderr
    assert "episode 2/2" in r.stdout
    r = brain(state, "episodes", "validate", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    reports = json.loads(r.stdout)
    assert len(reports) == 2
    for rep in reports:
        assert rep["status"] == "ok", rep
    r = brain(state, "episodes", "list", "--json")
    episodes = json.loads(r.stdout)
    assert all(e["steps"] >= 90 for e in episodes), episodes  # ~100 steps at 50 Hz for 2 s
    shown = json.loads(brain(state, "episodes", "show", episodes[0]["id"], "--json").stdout)
    meta = json.dumps(shown)
    assert "chicane" in meta and "teacher" in meta
    out = tmp_path / "export"
    r = brain(state, "episodes", "export", "--format", "rlds", "--anonymize", "--out", str(out))
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "export_manifest.json").read_text())
    assert manifest["origin"] == "pi5"
    assert len(manifest["episodes"]) == 2
    assert "teacher" not in (out / "export_manifest.json").read_text().replace(
        "tools/", ""), "the operator name must be anonymised"
    # exporting again into the now non-empty directory is refused and changes nothing
    before = sorted(p.name for p in out.iterdir())
    r = brain(state, "episodes", "export", "--format", "rlds", "--out", str(out))
    assert r.returncode != 0 and "not empty" in r.stderr
    assert sorted(p.name for p in out.iterdir()) == before


def test_collect_refuses_real_robot_profile(tmp_path):
    r = brain(tmp_path, "--config", "/dev/null", "collect", "--teacher", "--episodes", "1")
    assert r.returncode == 0 or r.returncode == 2  # /dev/null is an empty, valid config
    env_r = subprocess.run([sys.executable, "-m", "brain", "collect", "--teacher"],
                           env={**os.environ, "BRAIN_STATE_DIR": str(tmp_path),
                                "BRAIN_PROFILE": "pi5-donkey"},
                           capture_output=True, text=True, timeout=60)
    assert env_r.returncode == 2 and "simulator" in env_r.stderr
