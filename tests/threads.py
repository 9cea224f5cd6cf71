"""Concurrency in tests: the same call on many threads at once."""

from __future__ import annotations

import threading
from collections.abc import Callable


def run_together(count: int, call: Callable[[int], None]) -> None:
    """``call(0)`` … ``call(count - 1)``, each on a thread of its own: all started, then all joined."""
    threads = [threading.Thread(target=call, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
