"""Shared by the training tests: what they record once per module (four 5 s teacher episodes
on the chicane, lockstep, through the real loop and recorder), and a fresh copy of that state
per test with a training configuration beside it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

# Lines of the training tests' figures against their bounds, printed at the end of the run by
# tests/conftest.py (pytest_terminal_summary).
MARGINS: list[str] = []

RECORD = ("collect", "--teacher", "--episodes", "4", "--seconds", "5", "--lockstep", "--track",
          "chicane")


def copy_state(recorded: Path, tmp_path: Path, base: dict[str, Any],
               settings: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """(a copy of the recorded state dir, a training configuration: `base` + `settings`)."""
    state = tmp_path / "state"
    shutil.copytree(recorded, state)
    config = tmp_path / "train.json"
    config.write_text(json.dumps({**base, **(settings or {})}))
    return state, config
