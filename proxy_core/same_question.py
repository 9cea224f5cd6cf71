"""One question asked by many at once is paid for once (in this process).

A cache serves a question asked again after its answer is stored, but not one asked again while the
first asker is still waiting for the model: a team pinged by the same announcement, two replicas'
users, a client that timed out and retried without an ``Idempotency-Key`` (the ``openai`` SDK sends
none). Each of those was a miss, and each paid. :class:`SameQuestion` lets the first miss of a
question (its cache scope and normalised text: what an exact hit needs) ask the model; the misses
of it that arrive meanwhile wait for that answer and are served it as a cache hit. If the first
fails, or its answer may not be cached (cut short, empty), each waiter asks for itself.

Per process, no store round trip: another worker or replica asking the same question at the same
moment still pays once more (and then both answers are cached, the later one kept).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["Asking", "SameQuestion"]

T = TypeVar("T")


@dataclass(slots=True)
class Asking(Generic[T]):
    """A question being asked: ``answer`` once it is known and may be served again (None: failed,
    or not cacheable)."""

    done: threading.Event = field(default_factory=threading.Event)
    answer: T | None = None
    waiting: int = 0


class SameQuestion(Generic[T]):
    """The questions being asked in this process, by key."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._asking: dict[str, Asking[T]] = {}

    def ask(self, key: str) -> Asking[T] | None:
        """None: nobody is asking ``key``, and the caller now is (it must :meth:`answered`).
        Otherwise the asking to wait for (:meth:`wait`)."""
        with self._lock:
            asking = self._asking.get(key)
            if asking is None:
                self._asking[key] = Asking()
                return None
            asking.waiting += 1
            return asking

    def answered(self, key: str, answer: T | None) -> None:
        """The asker of ``key`` is done: ``answer`` (None: it failed, or may not be served again)
        goes to whoever waits."""
        with self._lock:
            asking = self._asking.pop(key)
        asking.answer = answer
        asking.done.set()

    def wait(self, asking: Asking[T], timeout_s: float) -> T | None:
        """The answer, once the asker is done (None: none to share, or not within ``timeout_s``)."""
        try:
            asking.done.wait(timeout_s)
            return asking.answer if asking.done.is_set() else None
        finally:
            with self._lock:
                asking.waiting -= 1

    def waiting(self) -> int:
        """Callers waiting for another's answer now (for tests and metrics)."""
        with self._lock:
            return sum(asking.waiting for asking in self._asking.values())
