"""Training checkpoints as files that cannot run code when they are loaded.

A checkpoint is torch's zip format holding tensors and plain data only (dicts, lists, tuples,
str, int, float, bool, None): numpy arrays are stored as tensors, and loading goes through
`torch.load(weights_only=True)`, whose unpickler refuses every other object. A checkpoint left
in a run directory by someone else (a shared robot, a cloud machine's disk) is therefore data,
never a program: a pickle that would call a function is refused with a `CheckpointError` before
anything runs. Shared by the robot's trainer and the cloud companion's.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brain.durable import atomic_write_bytes


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded as plain data; the message names the file."""


def save(path: Path, state: dict[str, Any]) -> None:
    """Write `state` durably (temporary file, fsync, rename), numpy arrays as tensors."""
    buf = io.BytesIO()
    torch.save({k: _plain(v) for k, v in state.items()}, buf)
    atomic_write_bytes(path, buf.getvalue(), mode=0o640)


def load(path: Path, map_location: Any = None) -> dict[str, Any]:
    try:
        state = torch.load(path, weights_only=True, map_location=map_location)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: refused: not a checkpoint of tensors and plain data "
                              f"({first})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: refused: a checkpoint is a dictionary, not "
                              f"{type(state).__name__}")
    return state


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, np.generic):
        return value.item()
    return value
