"""The one way tests wait for something: poll a function until its answer satisfies them."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def wait_until(fn: Callable[[], T], accept: Callable[[T], Any] = bool, *, timeout: float = 10.0,
               interval: float = 0.01, what: str = "") -> T:
    """Call `fn` every `interval` s until `accept(answer)` holds; return that answer. After
    `timeout` s raise AssertionError naming `what` and the last answer."""
    deadline = time.monotonic() + timeout
    while True:
        answer = fn()
        if accept(answer):
            return answer
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for "
                                 f"{what or getattr(fn, '__name__', 'a condition')}; "
                                 f"last answer: {answer!r}")
        time.sleep(interval)
