"""What the ``penny`` commands of :mod:`bot.cli` and :mod:`bot.proxy.commands` share: the store a
command opens for itself, the workspace it works in, and argument types."""

from __future__ import annotations

import argparse
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final, Literal

from bot.workspaces import served_workspaces
from proxy_core import Gateway, PennySettings, Store, get_logger, has_lone_surrogate, missing_store

__all__ = [
    "LOCAL_WORKSPACE",
    "NOT_UTF8",
    "UsageError",
    "WorkspaceChoice",
    "announce_new_store",
    "chosen_workspace",
    "one_line",
    "opened_store",
    "positive_int",
    "shown_on_one_line",
    "text",
]

# The workspace of the terminal's own calls (penny ask, the terminal chat), and of everything on a
# store no Slack bot has run on.
LOCAL_WORKSPACE: Final = "local"

_log = get_logger()


class UsageError(Exception):
    """The command line leaves out something Penny will not guess; ``penny`` prints the message and
    exits 2, as for a bad argument."""


@contextmanager
def opened_store(settings: PennySettings, gateway: Gateway | None = None, *, create: bool = False) -> Iterator[Store]:
    """The store one command works on, closed when the command is done: ``gateway``'s own store
    when the command runs through a gateway (closing the gateway closes it), else the configured one.
    Only a command that writes what a team starts from (``create``) may create a SQLite store; for
    the others a store that does not exist is a mistyped path, refused with its name."""
    if gateway is not None:
        try:
            yield gateway.store
        finally:
            gateway.close()
        return
    store = settings.open_store(create=create)
    try:
        yield store
    finally:
        store.close()


@dataclass(frozen=True, slots=True)
class WorkspaceChoice:
    """The workspace a command works in, and why: ``given`` (``--workspace``), ``served`` (the one
    Penny's Slack app serves, recorded in the store; ``name`` is its name) or ``local``."""

    id: str
    why: Literal["given", "served", "local"]
    name: str = ""


def chosen_workspace(store: Store, given: str | None, *, terminal_user: bool = False) -> WorkspaceChoice:
    """The workspace for a command's ``--workspace`` (None: not given). What is given always wins;
    the terminal user's own numbers (``terminal_user``: a ``cli:…`` user) are ``local``, where their
    ``penny ask`` calls are; else the one Slack workspace Penny's app serves on this store, where its
    ledger, budgets and ``/cost`` are (:mod:`bot.workspaces`); ``local`` when it serves none
    (Penny never ran in Slack on this store). Several, or an org-wide install, raise
    :class:`UsageError`: whose spend to show or bill is the user's to say."""
    if given is not None:
        return WorkspaceChoice(given, "given")
    if terminal_user:
        return WorkspaceChoice(LOCAL_WORKSPACE, "local")
    served = served_workspaces(store)
    if not served:
        return WorkspaceChoice(LOCAL_WORKSPACE, "local")
    if len(served) == 1 and not served[0].org_wide:
        return WorkspaceChoice(served[0].id, "served", served[0].name)
    if len(served) == 1:
        org = served[0]
        raise UsageError(
            f"Penny's Slack app is installed across the organization {_named(org.id, org.name)}, whose spend is "
            "kept under each of its workspaces' IDs: say which with --workspace T… (the workspace's team ID)")
    listed = ", ".join(_named(w.id, w.name) for w in served)
    raise UsageError(f"Penny's Slack app serves several workspaces on this store: {listed}. Say which with "
                     f"--workspace, e.g. --workspace {served[-1].id}")


def _named(workspace_id: str, name: str) -> str:
    return f"{workspace_id} ({name})" if name else workspace_id


def announce_new_store(settings: PennySettings) -> None:
    """Before a server (``penny run``, ``penny proxy``) opens its store: when it is a SQLite file that
    does not exist yet, log one line, so that a typo in a service's PENNY_STORE_URL shows in its log
    rather than only as reports of nothing spent."""
    path = missing_store(settings.store_url)
    if path is not None:
        _log.warning("store_created", path=path,
                     note="a new, empty store; if Penny has run before, PENNY_STORE_URL names the wrong file")


def port(value: str) -> int:
    """``--port N``: 0 (any free port) to 65535 (argparse turns a refusal into exit 2)."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a port number, not {value!r}") from None
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"a port from 0 to 65535, not {value}")
    return number


NOT_UTF8: Final = ("is not UTF-8 text (the shell passed bytes in another encoding: check the terminal's locale, "
                   "e.g. LANG=C.UTF-8)")


def text(value: str) -> str:
    """An argument Penny stores, looks up or sends on as text (a question, a user ID, a cache
    context): refused when it carries bytes that are not UTF-8. Python hands such argv bytes over as
    lone surrogates, which no store, hash or JSON body can encode: each command failed on
    them with a traceback, or stored a user ID no Slack user has."""
    if has_lone_surrogate(value):
        raise argparse.ArgumentTypeError(NOT_UTF8)
    return value


def nonblank(value: str) -> str:
    """A value that must say something (a Slack user ID, …)."""
    if not text(value).strip():
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
        line = text(value).strip() if blank else nonblank(value)
        bad = next((c for c in line if _unshowable(c)), None)
        if bad is not None:
            raise argparse.ArgumentTypeError(f"must be one line of text, without {_escaped(bad)}")
        if len(line) > limit:
            raise argparse.ArgumentTypeError(f"at most {limit} characters, not {len(line):,}")
        return line

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
