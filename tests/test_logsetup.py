"""Logging under journald (priority prefixes, no timestamps) and elsewhere; one line per event."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pytest

from brain.logsetup import setup_logging, stream_is_journal


@pytest.fixture(autouse=True)
def _restore_root():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _emit(stream) -> None:
    log = logging.getLogger("brain.test")
    log.info("hello\nworld")
    log.debug("hidden at info")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("it failed")


def test_journal_stream_gets_priorities_and_no_timestamps(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "journal"
    with path.open("w") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert stream_is_journal(stream)
        setup_logging("info", stream=stream)
        _emit(stream)
    lines = path.read_text().splitlines()
    assert len(lines) == 2, lines  # debug dropped, the traceback folded into its event
    assert lines[0] == "<6>brain.test: hello\\nworld"
    assert lines[1].startswith("<3>brain.test: it failed\\nTraceback (most recent call last):")
    assert lines[1].endswith("ValueError: boom")


def test_other_streams_get_compact_timestamps(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")  # some other file is the journal
    path = tmp_path / "log"
    with path.open("w") as stream:
        assert not stream_is_journal(stream)
        setup_logging("debug", stream=stream)
        setup_logging("debug", stream=stream)  # again: replaces, does not duplicate
        _emit(stream)
    lines = path.read_text().splitlines()
    assert len(lines) == 3, lines
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3} I brain\.test: hello\\nworld$",
                    lines[0])
    assert not lines[0].startswith("<")


def test_bad_level_is_named() -> None:
    with pytest.raises(ValueError, match="'loud'"):
        setup_logging("loud")
