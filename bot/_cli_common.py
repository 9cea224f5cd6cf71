"""What the ``penny`` commands of :mod:`bot.cli` and :mod:`bot.proxy.commands` share: the store a
command opens for itself, and an argument type."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

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


def port(value: str) -> int:
    """``--port N``: 0 (any free port) to 65535 (argparse turns a refusal into exit 2)."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a port number, not {value!r}") from None
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"a port from 0 to 65535, not {value}")
    return number


def nonblank(value: str) -> str:
    """A value that must say something (a Slack user ID, …)."""
    if not value.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return value.strip()


MAX_WORKERS: Final = 64  # one per core is the rule; more is a typo that would fork until memory runs out


def positive_int(value: str) -> int:
    """``--workers N``: a whole number from 1 to :data:`MAX_WORKERS` (argparse turns a refusal into exit 2)."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a whole number, not {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    if number > MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"at most {MAX_WORKERS} (one per core), not {value}")
    return number
