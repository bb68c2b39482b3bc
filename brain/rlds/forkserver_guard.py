"""Imported in the worker forkserver only (a `set_forkserver_preload` module, see brain.procs):
the forkserver ends when the process that started it (the daemon) dies, and every worker with
it (each worker has the kernel's parent-death signal on the forkserver).

Not the parent-death signal here: the kernel ties it to the parent *thread*, and the daemon
starts the forkserver from whichever short-lived request thread first needs a worker, whose
end would kill it. A watcher thread notices the process going instead (within WATCH_S). Never
import this anywhere else: it would tie the importing process's life to its parent's."""

import os
import threading

WATCH_S = 0.25
_PARENT = os.getppid()


def _watch() -> None:
    while os.getppid() == _PARENT:
        threading.Event().wait(WATCH_S)
    os._exit(1)  # orphaned: the daemon is gone, and so is every reason to fork for it


threading.Thread(target=_watch, name="parent-watch", daemon=True).start()
