"""Suite-wide settings.

With BRAIN_REQUIRE_ALL_TESTS=1 (set by .ci/run) a test that skips itself because something is
missing (a browser, root for network namespaces) fails instead: CI must not pass by not testing.
"""

from __future__ import annotations

import os

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("BRAIN_REQUIRE_ALL_TESTS") == "1" and report.skipped \
            and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"skipped, but BRAIN_REQUIRE_ALL_TESTS=1 forbids skips: {reason}"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """The learning tests' figures and how far each is from its bound, after every run (not
    only with -s): a margin that shrinks shows before it becomes a failure."""
    from tests.train_support import MARGINS

    if MARGINS:
        terminalreporter.section("training margins (figure, bound, margin to the bound)")
        for line in MARGINS:
            terminalreporter.write_line(line)
