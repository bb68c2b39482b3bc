"""Helper processes that must not outlive the process that started them.

Linux's parent-death signal (prctl PR_SET_PDEATHSIG): the kernel sends SIGKILL to this process
when its parent thread exits, SIGKILL included, which no cleanup handler in the parent could
ever do. It is checked against the parent we were started by, since the parent may already
have died between our fork and the prctl call.
"""

from __future__ import annotations

import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1


def die_with_parent(expected_parent: int | None = None) -> bool:
    """Ask for SIGKILL when the parent dies; exit now if it already has. False where the
    platform has no prctl (then nothing is promised)."""
    parent = os.getppid() if expected_parent is None else expected_parent
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != parent:  # orphaned before the prctl took effect
        os._exit(1)
    return True
