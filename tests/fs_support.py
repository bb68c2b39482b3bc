"""A real small filesystem for disk-full tests: a tmpfs mounted on a test directory (root).

The kernel answers ENOSPC exactly as a full SD card does, so nothing is patched: the code under
test meets the real error from the real syscalls.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def small_fs(path: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of `size` (e.g. "8m") on `path` for the block; skips without root."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
                   check=True, capture_output=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def fill(directory: Path, leave: int = 0) -> Path:
    """Fill the filesystem holding `directory` up to `leave` bytes free; returns the filler
    file (delete it to free the space again)."""
    filler = directory / ".filler"
    with open(filler, "ab") as fh:
        chunk = b"\0" * (1 << 16)
        while True:
            free = os.statvfs(directory).f_bavail * os.statvfs(directory).f_frsize
            want = free - leave
            if want <= 0:
                break
            try:
                fh.write(chunk[:min(len(chunk), want)])
                fh.flush()
            except OSError:
                break
    return filler
