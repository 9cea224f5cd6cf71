"""Backends for Penny's shared state, chosen by URL: ``sqlite:///path``, ``redis://host:port/db`` or
``redis+cluster://host:port[,host:port…]`` (``rediss``: TLS; see ``redis_connect``).

A SQLite store is a file Penny creates on first use. A command that only reads the store opens it
with ``create=False``: a mistyped path is then refused, naming it, instead of becoming a new empty
store whose reports say nothing was ever spent."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from proxy_core.clock import Clock
from proxy_core.errors import ConfigurationError
from proxy_core.stores.base import Store

if TYPE_CHECKING:
    from proxy_core.stores.redis_connect import RedisOptions

__all__ = ["STORE_SCHEMES", "Store", "missing_store", "store_from_url", "unknown_scheme_message"]


def _sqlite(url: str, clock: Clock | None, timeout_s: float, redis: RedisOptions | None) -> Store:
    from proxy_core.stores.sqlite import SqliteStore

    return SqliteStore.from_url(url, clock=clock, timeout_s=timeout_s)


def _redis(url: str, clock: Clock | None, timeout_s: float, redis: RedisOptions | None) -> Store:
    from proxy_core.stores.redis import RedisStore

    return RedisStore.from_url(url, clock=clock, timeout_s=timeout_s, options=redis)


_SCHEMES: dict[str, Callable[[str, Clock | None, float, RedisOptions | None], Store]] = {
    "sqlite": _sqlite,
    "redis": _redis,
    "rediss": _redis,
    "unix": _redis,
    "redis+cluster": _redis,
    "rediss+cluster": _redis,
}


STORE_SCHEMES = tuple(_SCHEMES)


def unknown_scheme_message(url: str) -> str | None:
    """Why ``url`` names no known store, or None. The URL itself is not echoed: it may carry a password."""
    scheme = urlsplit(url).scheme
    if scheme in _SCHEMES:
        return None
    known = ", ".join(f"{s}://" for s in _SCHEMES)
    return f"unknown store scheme {scheme!r}; use one of {known}"


def missing_store(url: str) -> str | None:
    """The absolute path of the SQLite file ``url`` names when it does not exist yet (a store never
    created, or a mistyped path); None when it exists, or for Redis, which Penny does not create."""
    if urlsplit(url).scheme != "sqlite":
        return None
    from proxy_core.stores.sqlite import SqliteStore

    path = os.path.abspath(SqliteStore.path_of_url(url))
    return None if os.path.exists(path) else path


def store_from_url(
    url: str, *, clock: Clock | None = None, timeout_s: float = 2.0, redis: RedisOptions | None = None,
    create: bool = True,
) -> Store:
    """Open the store named by ``url``. ``clock`` overrides the store's own clock (tests only);
    ``redis``: TLS files and replication settings for a Redis store (ignored by SQLite);
    ``create=False``: a SQLite file that does not exist is a ConfigurationError, and is not created."""
    factory = _SCHEMES.get(urlsplit(url).scheme)
    if factory is None:
        raise ConfigurationError(f"PENNY_STORE_URL: {unknown_scheme_message(url)}")
    missing = None if create else missing_store(url)
    if missing is not None:
        raise ConfigurationError(
            f"PENNY_STORE_URL: there is no store at {missing} (the file does not exist). Check the path for a "
            "typo; Penny creates the store on its first penny run, penny proxy or penny index, and commands "
            "that only read it never do.")
    return factory(url, clock, timeout_s, redis)
