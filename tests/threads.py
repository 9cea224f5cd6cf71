"""Concurrency in tests: the same call on many threads at once."""

from __future__ import annotations

import threading
from collections.abc import Callable


def run_together(count: int, call: Callable[[int], None]) -> None:
    """``call(0)`` … ``call(count - 1)``, each on a thread of its own: all started, then all joined.

    An exception in any call (a failed assertion included) is raised here, in the test's own thread,
    once every thread has ended: a thread's exception would otherwise be only a warning."""
    failures: list[BaseException] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        try:
            call(i)
        except BaseException as exc:
            with lock:
                failures.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
