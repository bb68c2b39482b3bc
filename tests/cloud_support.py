"""Shared by the brain-cloud tests: a real robot export and the CLI as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SMALL = {"max_steps": 60, "batch": 16, "checkpoint_every": 20, "log_every": 10}


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tools'}",
            "BRAIN_LOG_LEVEL": "warning", **extra}


def cloud(*args: str, timeout: float = 300, check: bool = True,
          **extra: str) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "brain_cloud", *args], env=env(**extra),
                       capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"brain-cloud {' '.join(args)} -> {r.returncode}:\n{r.stdout}\n"
                             f"{r.stderr}")
    return r


def robot_export(root: Path, episodes: int = 4) -> Path:
    """Episodes recorded by the real loop and recorder (the teacher driving, lockstep), then
    exported by the robot's own `brain episodes export` into `root/export`."""
    state = root / "robot-state"
    base = {"BRAIN_STATE_DIR": str(state)}
    for args in (["collect", "--teacher", "--episodes", str(episodes), "--seconds", "3",
                  "--lockstep", "--track", "oval"],
                 ["episodes", "export", "--out", str(root / "export")]):
        r = subprocess.run([sys.executable, "-m", "brain", *args], env=env(**base),
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
    return root / "export"


def write_config(path: Path, **overrides: object) -> Path:
    path.write_text(json.dumps({**SMALL, **overrides}))
    return path
