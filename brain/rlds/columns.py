"""Columns of an episode's steps, built once and shared by validation and export.

Steps are read back as a list of dicts (one per 50 Hz tick); pulling one key out of every step
is most of what validating and exporting an episode do per step, so each column is extracted
once (in C: map over dict.get) and each numpy conversion is kept.
"""

from __future__ import annotations

from itertools import repeat
from typing import Any

import numpy as np


class StepColumns:
    def __init__(self, steps: list[dict[str, Any]]) -> None:
        self.steps = steps
        self._lists: dict[str, list[Any]] = {}
        self._arrays: dict[tuple[str, str], np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.steps)

    def list(self, key: str) -> list[Any]:
        """Every step's value for `key` (None where a step lacks it)."""
        col = self._lists.get(key)
        if col is None:
            col = self._lists[key] = list(map(dict.get, self.steps, repeat(key, len(self.steps))))
        return col

    def array(self, key: str, dtype: Any = None) -> np.ndarray:
        """`list(key)` as a numpy array (kept: callers must not modify it)."""
        tag = (key, np.dtype(dtype).str if dtype is not None else "")
        arr = self._arrays.get(tag)
        if arr is None:
            arr = self._arrays[tag] = np.array(self.list(key), dtype=dtype)
        return arr
