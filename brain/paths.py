"""Every path under the state directory, built in one place.

    <state_dir>/identity.json         the robot's stable id
    <state_dir>/rlds/episodes/<id>/   recorded episodes (brain.rlds.store)
    <state_dir>/exports/              RLDS exports made through the API
    <state_dir>/api/                  paired clients, TLS certificate and key
    <state_dir>/model/                bundles, slot state, trainer candidates
    <state_dir>/train/                training jobs, checkpoints, logs
    <state_dir>/keys/                 the device's own signing key

Nothing else spells these names: the daemon, the CLI, the recorder and the tools ask a
`StateLayout` (from `Config.layout`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StateLayout:
    root: Path

    @classmethod
    def at(cls, root: str | os.PathLike[str]) -> StateLayout:
        return cls(Path(root))

    @property
    def identity_file(self) -> Path:
        return self.root / "identity.json"

    @property
    def episodes(self) -> Path:
        return self.root / "rlds" / "episodes"

    @property
    def exports(self) -> Path:
        return self.root / "exports"

    @property
    def api(self) -> Path:
        return self.root / "api"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def train(self) -> Path:
        return self.root / "train"

    @property
    def keys(self) -> Path:
        return self.root / "keys"
