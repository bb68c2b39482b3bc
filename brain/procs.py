"""Worker processes for the daemon's heavy chores (exports, bundle verification): CPU- and
I/O-bound work that must not share the daemon's GIL and scheduler slot with the control loop.

Workers are forked from a forkserver (never a fork of the threaded daemon), run at nice
WORKER_NICE or lower priority, and die with the process that started them: Linux's parent-death
signal (prctl PR_SET_PDEATHSIG) has the kernel send SIGKILL when the parent dies, SIGKILL
included, which no cleanup handler in the parent could ever do. Each worker sets it in its
initializer (its parent, the forkserver, is single-threaded); the forkserver itself watches for
the daemon going (`brain.rlds.forkserver_guard`, preloaded there only), because the kernel's
signal follows the parent *thread* and the daemon's request threads come and go.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

PR_SET_PDEATHSIG = 1
WORKER_NICE = 10  # below the control loop and the API: exports and installs run while driving
T = TypeVar("T")


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


def worker_pool(count: int, preload: Iterable[str] = (),
                max_tasks_per_child: int | None = None) -> ProcessPoolExecutor:
    """`count` niced worker processes that die with this one; `preload` modules are imported
    once in the forkserver, so each worker starts with them. `max_tasks_per_child=1` gives
    every task a fresh process (its memory back to the system when it is done)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["brain.rlds.forkserver_guard", *preload])
    return ProcessPoolExecutor(count, mp_context=ctx, initializer=_init_worker,
                               max_tasks_per_child=max_tasks_per_child)


def run_niced(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` in a worker process; its result or its exception (both pickled)."""
    with worker_pool(1) as pool:
        return pool.submit(fn, *args).result()


def _init_worker() -> None:
    die_with_parent()
    lower_priority()


def lower_priority(nice: int = WORKER_NICE) -> None:
    """Run at `nice` at least (absolute: a daemon at nice -10 must not hand its priority to its
    workers; raising the value needs no privilege)."""
    try:
        if os.getpriority(os.PRIO_PROCESS, 0) < nice:
            os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError:
        pass  # priority is a courtesy, not a requirement
