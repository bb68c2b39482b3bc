"""Imported in the export's forkserver process only (a `set_forkserver_preload` module): the
forkserver dies with the process that started it (the daemon), and with it every worker still
running (each worker dies with the forkserver, see export._init_worker). Never import this
anywhere else: it would tie the importing process's life to its parent's."""

from brain.procs import die_with_parent

die_with_parent()
