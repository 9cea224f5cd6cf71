"""What the ``penny`` commands of :mod:`bot.cli` and :mod:`bot.proxy.commands` share: the store a
command opens for itself, and an argument type."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager

from proxy_core import Gateway, PennySettings, Store

__all__ = ["opened_store", "positive_int"]


@contextmanager
def opened_store(settings: PennySettings, gateway: Gateway | None = None) -> Iterator[Store]:
    """The store one command works on, closed when the command is done: ``gateway``'s own store
    when the command runs through a gateway (closing the gateway closes it), else the configured one."""
    if gateway is not None:
        try:
            yield gateway.store
        finally:
            gateway.close()
        return
    store = settings.open_store()
    try:
        yield store
    finally:
        store.close()


def positive_int(value: str) -> int:
    """``--workers N``: a whole number of at least 1 (argparse turns a refusal into exit 2)."""
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return number
