"""`model/state.json`: the single commit point of the robot's model slots (ota/SPEC.md section 5).

    model/state.json          this state (durable writes: temp, fsync, rename, fsync dir)
    model/store/<bundle-id>/  immutable bundles (read-only files and directory)
    model/staging/<txid>/     bundles being verified; anything here at start-up is removed
    model/failed/<bundle-id>.json  why a bundle failed its trial (kept for triage)

A slot is a bundle reference: {"bundle_id", "version", "release", "origin"}. Every change is a
new state with the next sequence number, written before it is acted on or acknowledged.
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brain.durable import atomic_write_json

PHASES = ("idle", "staged", "trial", "committed", "rolled_back")
HISTORY = 100


@dataclass(frozen=True)
class ModelPaths:
    root: Path

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def store(self) -> Path:
        return self.root / "store"

    @property
    def staging(self) -> Path:
        return self.root / "staging"

    @property
    def failed(self) -> Path:
        return self.root / "failed"

    @property
    def downloads(self) -> Path:
        return self.root / "downloads"

    def bundle(self, bundle_id: str) -> Path:
        return self.store / bundle_id


class StateFileError(RuntimeError):
    """state.json is unreadable; the message names it."""


def slot(manifest: dict[str, Any]) -> dict[str, Any]:
    return {"bundle_id": manifest["bundle_id"], "version": manifest["version"],
            "release": manifest["release"], "origin": manifest["origin"],
            "name": manifest.get("name", "")}


def empty_state() -> dict[str, Any]:
    return {"format": 1, "seq": 0, "phase": "idle", "active": None, "lkg": None,
            "previous": None, "candidate": None, "attempts_left": 0, "release_floor": 0,
            "last_error": None, "history": []}


class SlotState:
    """The in-memory copy of state.json; `commit(**changes)` writes before it is adopted."""

    def __init__(self, paths: ModelPaths, hook: Any = None) -> None:
        self.paths = paths
        self.hook = hook or (lambda _point: None)  # test hook: kill points
        self.doc = self._load()

    def _load(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.paths.state.read_bytes())
        except FileNotFoundError:
            return empty_state()
        except (OSError, ValueError) as e:
            raise StateFileError(f"{self.paths.state}: unreadable ({e})") from None
        if not isinstance(doc, dict) or doc.get("phase") not in PHASES:
            raise StateFileError(f"{self.paths.state}: not a slot state")
        return {**empty_state(), **doc}

    def __getitem__(self, key: str) -> Any:
        return self.doc[key]

    def snapshot(self) -> dict[str, Any]:
        return copy.deepcopy(self.doc)

    def commit(self, event: str, detail: str = "", **changes: Any) -> dict[str, Any]:
        new = {**copy.deepcopy(self.doc), **changes}
        new["seq"] = self.doc["seq"] + 1
        entry = {"seq": new["seq"], "t": time.time(), "event": event, "phase": new["phase"],
                 "bundle_id": (new.get("candidate") or new.get("active") or {}).get("bundle_id"),
                 "detail": detail}
        new["history"] = (self.doc["history"] + [entry])[-HISTORY:]
        atomic_write_json(self.paths.state, new, mode=0o640,
                          before_replace=lambda: self.hook(f"mid-state:{event}"))
        self.doc = new
        self.hook(f"after-state:{event}")
        return new


def remove_staging(paths: ModelPaths) -> list[str]:
    """Start-up: half-staged bundles are removed (a bundle reaches the store whole or not)."""
    from brain.ota.bundle import _remove_tree

    removed = []
    if paths.staging.is_dir():
        for p in paths.staging.iterdir():
            _remove_tree(p) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p.name)
    return removed


def write_failure(paths: ModelPaths, bundle_id: str, report: dict[str, Any]) -> None:
    paths.failed.mkdir(parents=True, exist_ok=True)
    atomic_write_json(paths.failed / f"{bundle_id}.json", report)
    os.chmod(paths.failed / f"{bundle_id}.json", 0o640)
