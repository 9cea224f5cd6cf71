"""``until``: wait (bounded) for a state another thread or process reaches — a listener's progress,
a queue's length — never for time to pass. Tests that wait out a window move a ManualClock instead."""

from __future__ import annotations

import time
from collections.abc import Callable


def until(condition: Callable[[], bool], timeout_s: float = 5.0, *, every_s: float = 0.001,
          what: str = "the condition") -> None:
    """Look at ``condition`` every ``every_s`` until it holds; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every_s)
