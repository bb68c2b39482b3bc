"""systemd integration: READY/STATUS/STOPPING and a watchdog fed only while the loop is on time."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

import sdnotify

log = logging.getLogger(__name__)


def watchdog_interval() -> float | None:
    """Half of WATCHDOG_USEC when systemd asked this process for keep-alives, else None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2e6
    except ValueError:
        return None


class Notifier:
    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._n = sdnotify.SystemdNotifier() if self.enabled else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.watchdog_sent = 0
        self.watchdog_withheld = 0

    def send(self, msg: str) -> None:
        if self._n is not None:
            self._n.notify(msg)

    def start_watchdog(self, healthy: Callable[[], bool], status: Callable[[], str]) -> None:
        interval = watchdog_interval()
        self._thread = threading.Thread(target=self._run, args=(interval, healthy, status),
                                        name="sd-notify", daemon=True)
        self._thread.start()

    def _run(self, interval: float | None, healthy: Callable[[], bool],
             status: Callable[[], str]) -> None:
        period = min(interval or 1.0, 1.0)  # STATUS at least every second
        while not self._stop.wait(period):
            ok = healthy()
            if interval is not None:
                if ok:
                    self.send("WATCHDOG=1")
                    self.watchdog_sent += 1
                else:
                    self.watchdog_withheld += 1
                    if self.watchdog_withheld == 1 or self.watchdog_withheld % 10 == 0:
                        log.error("control loop is not on time: withholding the watchdog ping")
            if ok and self.watchdog_withheld:
                self.watchdog_withheld = 0
            self.send("STATUS=" + status())

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
