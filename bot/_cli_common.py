"""What the ``penny`` commands of :mod:`bot.cli` and :mod:`bot.proxy.commands` share: the store a
command opens for itself, and an argument type."""

from __future__ import annotations

import argparse
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Final

from proxy_core import Gateway, PennySettings, Store

__all__ = ["one_line", "opened_store", "positive_int", "shown_on_one_line"]


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


# Bidirectional overrides and isolates: they reverse how the rest of a line reads.
_BIDI_CONTROLS: Final = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _unshowable(char: str) -> bool:
    """A character that does not show as itself on a line: C0/C1 controls (newline, escape), line and
    paragraph separators, bidi overrides."""
    return unicodedata.category(char) in ("Cc", "Zl", "Zp") or char in _BIDI_CONTROLS


def one_line(limit: int, *, blank: bool = False) -> Callable[[str], str]:
    """An argument type for text Penny stores and shows one per line (a key's user, workspace and
    name in ``penny keys list`` and ``/cost team``): stripped, at most ``limit`` characters, with no
    character that would break the line or the terminal showing it (a newline forges a line, an
    escape sequence rewrites the screen). ``blank``: an empty value is allowed."""

    def parse(value: str) -> str:
        text = value.strip() if blank else nonblank(value)
        bad = next((c for c in text if _unshowable(c)), None)
        if bad is not None:
            raise argparse.ArgumentTypeError(f"must be one line of text, without {_escaped(bad)}")
        if len(text) > limit:
            raise argparse.ArgumentTypeError(f"at most {limit} characters, not {len(text):,}")
        return text

    return parse


def shown_on_one_line(text: str) -> str:
    """``text`` with every character :func:`one_line` refuses escaped (``\\n``, ``\\x1b``): a value
    stored before it was refused still prints as one line that changes nothing on the terminal."""
    return "".join(_escaped(c) if _unshowable(c) else c for c in text)


def _escaped(char: str) -> str:
    return repr(char)[1:-1] if char.isascii() else f"\\u{ord(char):04x}"


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
