"""The robot's stable identity: a short id kept in the state dir, made once from random bytes.

Random rather than derived from /etc/machine-id so that a cloned SD card can be re-identified by
deleting one file, and so the id reveals nothing about the host.
"""

from __future__ import annotations

import secrets
import socket
from pathlib import Path
from typing import Any

from brain import __version__
from brain.durable import atomic_write_json, read_json
from brain.paths import StateLayout


def robot_id(state_dir: Path) -> str:
    path = StateLayout(state_dir).identity_file
    try:
        data = read_json(path)
        rid = data.get("id") if isinstance(data, dict) else None
        if isinstance(rid, str) and 8 <= len(rid) <= 32 and rid.isalnum():
            return rid
    except (FileNotFoundError, ValueError):
        pass
    rid = secrets.token_hex(6)
    state_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"id": rid})
    return rid


def describe(state_dir: Path, name: str, profile: str) -> dict[str, Any]:
    return {"id": robot_id(state_dir), "name": name, "profile": profile,
            "version": __version__, "hostname": socket.gethostname()}
