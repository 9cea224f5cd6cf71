"""A process's upstream attempts in flight: the evidence a failure streak is weighed against.

The breaker (``proxy_core.breaker``) opens on a streak only when it outnumbers the calls that could
still break it with a success. Those are the attempts this process has sent whose outcome the
breaker has not been told yet; :class:`InFlight` counts them. Failures are reported one at a time,
each with the others still unreported, so N attempts that all fail report N-1, N-2, … 0 exactly,
whatever order their answers come back in. In process and store-free: a replica knows only its
own calls.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

__all__ = ["Attempt", "InFlight"]

T = TypeVar("T")


class InFlight:
    """Thread-safe count of attempts sent and not yet reported."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards the count
        self._reporting = threading.Lock()  # one failure reported at a time
        self._count = 0

    @property
    def count(self) -> int:
        with self._lock:
            return self._count

    @contextmanager
    def attempt(self) -> Iterator[Attempt]:
        """Count one attempt for the duration of the block (or until it reports a failure)."""
        with self._lock:
            self._count += 1
        handle = Attempt(self)
        try:
            yield handle
        finally:
            handle._finish()


class Attempt:
    """One counted attempt; see :meth:`InFlight.attempt`."""

    def __init__(self, flight: InFlight) -> None:
        self._flight = flight
        self._finished = False

    def report_failure(self, record: Callable[[int], T]) -> T:
        """Call ``record(pending)`` with the other attempts still unreported, then stop counting
        this one. Reports are serialised, so no two failures count each other as pending."""
        flight = self._flight
        with flight._reporting:
            with flight._lock:
                pending = flight._count - 1
            try:
                return record(pending)
            finally:
                self._finish()

    def _finish(self) -> None:
        with self._flight._lock:
            if not self._finished:
                self._finished = True
                self._flight._count -= 1
