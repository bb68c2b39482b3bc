"""Per-thread scheduling for the control thread: SCHED_FIFO, CPU pinning, timer slack.

Linux applies sched_setscheduler/sched_setaffinity with pid 0 to the calling *thread*, so only the
control thread is raised; everything else in the process stays SCHED_OTHER. Each step is optional
and reports what it could not do instead of failing: a robot without CAP_SYS_NICE still drives.
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)

PR_SET_TIMERSLACK = 29


def configure_control_thread(realtime: bool, priority: int, cpu: int) -> list[str]:
    """Apply what is permitted; returns human-readable notes of what was applied or refused."""
    notes: list[str] = []
    if realtime:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
            notes.append(f"SCHED_FIFO priority {priority}")
        except (PermissionError, OSError) as e:
            notes.append(f"SCHED_FIFO refused ({e.strerror or e}); running SCHED_OTHER: grant "
                         "CAP_SYS_NICE or LimitRTPRIO to remove jitter under load")
            try:  # second best: a nice boost for this thread only
                os.setpriority(os.PRIO_PROCESS, 0, -10)
                notes.append("nice -10")
            except (PermissionError, OSError):
                pass
    if cpu >= 0:
        try:
            os.sched_setaffinity(0, {cpu})
            notes.append(f"pinned to CPU {cpu}")
        except OSError as e:
            notes.append(f"CPU pinning to {cpu} refused ({e.strerror or e})")
    try:  # 1 ns timer slack: sleeps wake at the deadline, not up to 50 µs after it
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0) == 0:
            notes.append("timer slack 1 ns")
    except (OSError, AttributeError):
        pass
    return notes


def renice_threads(nice: int) -> str | None:
    """Set the calling thread's nice value; threads started afterwards inherit it. Call before
    starting threads. Returns a warning when refused, None when applied."""
    try:
        if os.getpriority(os.PRIO_PROCESS, 0) != nice:
            os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError as e:
        return (f"cannot set nice {nice} ({e.strerror or e}): ordinary processes may delay the "
                "daemon's threads; grant CAP_SYS_NICE or set Nice= in the unit")
    return None
