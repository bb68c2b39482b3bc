"""Every path under the state directory, built in one place.

    <state_dir>/identity.json         the robot's stable id
    <state_dir>/rlds/episodes/<id>/   recorded episodes (brain.rlds.store)
    <state_dir>/exports/              RLDS exports made through the API
    <state_dir>/api/                  paired clients, TLS certificate and key
    <state_dir>/model/                bundles, slot state, trainer candidates
    <state_dir>/train/                training jobs, checkpoints, logs
    <state_dir>/keys/                 the device's own signing key

Nothing else spells these names: the daemon, the CLI, the recorder and the tools ask a
`StateLayout` (from `Config.layout`). `prepare()` makes the directories with explicit modes,
whatever the umask: nothing under the state dir is writable by others, and the directories that
hold secrets are the owner's alone.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

DIR_MODE = 0o750  # the brain group may read (diagnostics, exports), nobody else
SECRET_DIR_MODE = 0o700  # tokens, TLS key, signing keys


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

    def directories(self) -> dict[Path, int]:
        return {self.root: DIR_MODE, self.episodes.parent: DIR_MODE, self.episodes: DIR_MODE,
                self.exports: DIR_MODE, self.api: SECRET_DIR_MODE, self.model: DIR_MODE,
                self.train: DIR_MODE, self.keys: SECRET_DIR_MODE}

    def prepare(self) -> None:
        """Create (or correct) the directories with their modes. Raises StateDirError naming
        the path when the state dir cannot hold them (a file in the way, no space, no
        permission)."""
        for path, mode in self.directories().items():
            ensure_dir(path, mode)
        probe = self.root / ".write-probe"
        try:  # a full or read-only disk is found now, with a clear message, not mid-recording
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, b"x" * 4096)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            raise StateDirError(f"{self.root}: cannot write to the state directory: "
                                f"{e.strerror or e}") from None
        finally:
            try:
                probe.unlink()
            except OSError:
                pass


class StateDirError(OSError):
    """The state directory cannot be used; the message names the path and why."""


def ensure_dir(path: Path, mode: int) -> None:
    """`path` as a directory with exactly `mode` (mkdir's mode is filtered by the umask)."""
    try:
        path.mkdir(mode=mode, parents=True, exist_ok=True)
        if stat.S_IMODE(path.stat().st_mode) != mode:
            os.chmod(path, mode)
    except FileExistsError:
        raise StateDirError(f"{path}: exists and is not a directory") from None
    except NotADirectoryError:
        raise StateDirError(f"{path}: a file is in the way of this directory") from None
    except OSError as e:
        raise StateDirError(f"{path}: cannot create it: {e.strerror or e}") from None
