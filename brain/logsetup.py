"""Logging set-up fit for journald and for a terminal.

Under systemd, stderr is a journal stream: journald stamps each line with its own time and reads a
`<N>` sd-daemon prefix as the syslog priority (sd-daemon(3)). So when `JOURNAL_STREAM` names our
stderr we print `<N>logger: message` with no timestamp; elsewhere a compact timestamped line.
Either way one event is one line: newlines inside a message or a traceback are escaped as `\\n`,
so journald (which splits on newlines) keeps a traceback in a single entry.

Hand-written rather than `systemd.journal.JournalHandler`: that needs the libsystemd bindings,
which are not on PyPI as wheels; the stderr protocol needs nothing.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR, "critical": logging.CRITICAL}

# syslog priorities from sd-daemon.h: SD_DEBUG 7, SD_INFO 6, SD_WARNING 4, SD_ERR 3, SD_CRIT 2
_PRIORITY = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4),
             (logging.INFO, 6), (logging.DEBUG, 7))


def syslog_priority(levelno: int) -> int:
    for threshold, prio in _PRIORITY:
        if levelno >= threshold:
            return prio
    return 7


def stream_is_journal(stream: TextIO, env: dict[str, str] | None = None) -> bool:
    """True when `stream` is the journal stream systemd connected (JOURNAL_STREAM=dev:inode)."""
    value = (os.environ if env is None else env).get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep or not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False  # not a real file descriptor (pytest capture, StringIO)
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def _one_line(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n")


class OneLineFormatter(logging.Formatter):
    """Formats a record (message, traceback, stack) as exactly one line."""

    def __init__(self, journal: bool) -> None:
        if journal:
            super().__init__("%(name)s: %(message)s")
        else:
            super().__init__("%(asctime)s.%(msecs)03d %(levelname).1s %(name)s: %(message)s",
                             datefmt="%Y-%m-%dT%H:%M:%S")
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        line = _one_line(super().format(record))
        if self.journal:
            return f"<{syslog_priority(record.levelno)}>{line}"
        return line


_HANDLER_FLAG = "_brain_logsetup"


def setup_logging(level: str = "info", stream: TextIO | None = None) -> logging.Handler:
    """Configure the root logger once (calling again replaces the earlier handler).

    `level` is one of debug, info, warning, error, critical; anything else raises ValueError.
    """
    try:
        levelno = LEVELS[level.lower()]
    except (KeyError, AttributeError):
        raise ValueError(f"log level {level!r} is not one of {', '.join(LEVELS)}") from None
    stream = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(stream)
    handler.setFormatter(OneLineFormatter(journal=stream_is_journal(stream)))
    setattr(handler, _HANDLER_FLAG, True)
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _HANDLER_FLAG, False):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(levelno)
    # httpx logs every request's full URL at INFO: a download URL may carry a token.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(levelno, logging.WARNING))
    logging.captureWarnings(True)
    return handler
