"""Time as a parameter.

Every time-dependent object takes a ``clock`` (seconds as float) and, where it waits, a ``sleep``.
In-process state uses a monotonic clock; state shared through a store uses the store's clock
(wall time for SQLite, the server's ``TIME`` for Redis). Tests pass a :class:`ManualClock`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["Clock", "ManualClock", "Sleep", "monotonic", "wall"]

Clock = Callable[[], float]
Sleep = Callable[[float], None]

monotonic: Clock = time.monotonic
wall: Clock = time.time


class ManualClock:
    """A clock that moves only when told to; its ``sleep`` advances it and records the delay."""

    def __init__(self, start: float = 1_767_225_600.0) -> None:  # 2026-01-01T00:00:00Z
        self._now = start
        self._lock = threading.Lock()
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds

    def set(self, now: float) -> None:
        with self._lock:
            self._now = now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(seconds)
