"""Backends for Penny's shared state, chosen by URL: ``sqlite:///path``, ``redis://host:port/db`` or
``redis+cluster://host:port[,host:port…]`` (``rediss``: TLS; see ``redis_connect``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from proxy_core.clock import Clock
from proxy_core.errors import ConfigurationError
from proxy_core.stores.base import Store

if TYPE_CHECKING:
    from proxy_core.stores.redis_connect import RedisOptions

__all__ = ["STORE_SCHEMES", "Store", "store_from_url", "unknown_scheme_message"]


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


def store_from_url(
    url: str, *, clock: Clock | None = None, timeout_s: float = 2.0, redis: RedisOptions | None = None
) -> Store:
    """Open the store named by ``url``. ``clock`` overrides the store's own clock (tests only);
    ``redis``: TLS files and replication settings for a Redis store (ignored by SQLite)."""
    factory = _SCHEMES.get(urlsplit(url).scheme)
    if factory is None:
        raise ConfigurationError(f"PENNY_STORE_URL: {unknown_scheme_message(url)}")
    return factory(url, clock, timeout_s, redis)
