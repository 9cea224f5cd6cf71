"""Proxy keys: a bearer token per person, stored as its SHA-256 hash only.

A key record lives in the store's :class:`~proxy_core.BlobStore` at ``proxy-keys/<sha256 of the
key>``. Blobs, not records: :class:`~proxy_core.RecordStore` has no listing and every record
expires, while keys must be listed (``penny keys list``) and live until revoked; ``blob_scan`` over
the prefix lists them on SQLite and Redis alike. Authenticating is one ``blob_get`` by hash.
Revoking keeps the record (marked revoked) so ``penny keys list`` still shows who had it.

A ring may remember the keys it authenticated for ``cache_s`` seconds (``penny proxy`` does, see
:data:`PROXY_KEY_CACHE_S`): a burst of calls with one key then costs one store read, not one each.
A key revoked by another process (``penny keys revoke``) is refused within ``cache_s``; one revoked
through the same ring at once. Unknown keys are never remembered, so a new key works at once.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, replace

from proxy_core import BlobStore, get_logger

__all__ = ["KEY_PREFIX", "PROXY_KEY_CACHE_S", "KeyRing", "ProxyKey", "hash_key"]

KEY_PREFIX = "pk-"
_BLOB_PREFIX = "proxy-keys/"
PROXY_KEY_CACHE_S = 2.0  # how long a proxy worker trusts a key it read: the bound on a revocation
_CACHED_KEYS_MAX = 10_000


def hash_key(secret: str) -> str:
    """The stored form of a key: its SHA-256, hex. A key is 256 random bits, so no salt or
    slow hash is needed; the hash cannot be turned back into the key."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class ProxyKey:
    """Who a key belongs to and what it may do. Overrides only narrow the user's own limits:
    ``daily_budget_micros`` is the key's own budget per UTC day (a budget line counting only this
    key's calls, beside the user's, which still apply; None: none, 0: nothing may be spent), ``models``
    (empty: every priced model) limits which models it may call."""

    id: str
    user_id: str
    workspace_id: str
    name: str
    created_at: float
    daily_budget_micros: int | None = None
    models: tuple[str, ...] = ()
    revoked_at: float | None = None
    # Fields this version does not know (a newer Penny wrote the record, then was rolled back), as
    # (name, JSON) pairs: kept when the record is written again, and the key is not authenticated,
    # since one of them may narrow what it may do in a way this version cannot enforce.
    unknown: tuple[tuple[str, str], ...] = ()

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def allows_model(self, model: str) -> bool:
        return not self.models or model in self.models

    def to_json(self) -> bytes:
        record = asdict(self)
        del record["unknown"]
        record.update((name, json.loads(value)) for name, value in self.unknown)
        return json.dumps(record, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> ProxyKey:
        raw = json.loads(data)
        raw["models"] = tuple(raw.get("models") or ())
        known = {f.name for f in fields(cls)} - {"unknown"}
        unknown = tuple(sorted((name, json.dumps(raw.pop(name))) for name in list(raw) if name not in known))
        return cls(**raw, unknown=unknown)


class KeyRing:
    """Create, find, list and revoke proxy keys in a store. ``cache_s`` > 0 remembers each live key
    read for that long (measured on ``monotonic``), at most 10,000 keys."""

    def __init__(self, store: BlobStore, *, clock: Callable[[], float] = time.time, cache_s: float = 0.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._clock = clock
        self._cache_s = cache_s
        self._monotonic = monotonic
        self._cached: dict[str, tuple[float, ProxyKey]] = {}  # blob key -> (trusted until, key)
        self._cache_lock = threading.Lock()

    def create(
        self,
        *,
        user_id: str,
        workspace_id: str,
        name: str = "",
        daily_budget_micros: int | None = None,
        models: Sequence[str] = (),
    ) -> tuple[str, ProxyKey]:
        """A new key for ``user_id``: the secret (shown once, never stored) and its record."""
        if daily_budget_micros is not None and daily_budget_micros < 0:
            raise ValueError("daily budget must not be negative")
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        key = ProxyKey(id="key_" + secrets.token_hex(6), user_id=user_id, workspace_id=workspace_id, name=name,
                       created_at=self._clock(), daily_budget_micros=daily_budget_micros, models=tuple(models))
        self._store.blob_put_many({_BLOB_PREFIX + hash_key(secret): key.to_json()})
        return secret, key

    def authenticate(self, secret: str) -> ProxyKey | None:
        """The live key ``secret`` names, or None (unknown, malformed or revoked)."""
        if not secret.startswith(KEY_PREFIX):
            return None
        blob_key = _BLOB_PREFIX + hash_key(secret)
        if self._cache_s > 0:
            cached = self._cached.get(blob_key)
            if cached is not None and self._monotonic() < cached[0]:
                return cached[1]
        data = self._store.blob_get(blob_key)
        if data is None:
            return None
        key = ProxyKey.from_json(data)
        if key.revoked:
            self._forget(blob_key)
            return None
        if key.unknown:
            get_logger().warning("proxy_key_from_a_newer_version", key_id=key.id,
                                 fields=[name for name, _ in key.unknown])
            return None
        if self._cache_s > 0:
            self._remember(blob_key, key)
        return key

    def _remember(self, blob_key: str, key: ProxyKey) -> None:
        with self._cache_lock:
            self._cached.pop(blob_key, None)
            while len(self._cached) >= _CACHED_KEYS_MAX:
                del self._cached[next(iter(self._cached))]  # the longest remembered
            self._cached[blob_key] = (self._monotonic() + self._cache_s, key)

    def _forget(self, blob_key: str) -> None:
        with self._cache_lock:
            self._cached.pop(blob_key, None)

    def list(self) -> list[ProxyKey]:
        """Every key, revoked ones included, oldest first."""
        keys = [ProxyKey.from_json(data) for _, data in self._store.blob_scan(_BLOB_PREFIX)]
        return sorted(keys, key=lambda k: (k.created_at, k.id))

    def revoke(self, key_id: str) -> ProxyKey | None:
        """Revoke the key with ``key_id``, or the key itself (``pk-…``: one that leaked, whose ID
        its holder may not know); its record, or None if there is no such key. Revoking twice
        keeps the first revocation time."""
        if key_id.startswith(KEY_PREFIX):
            blob_key = _BLOB_PREFIX + hash_key(key_id)
            data = self._store.blob_get(blob_key)
            return None if data is None else self._revoked(blob_key, ProxyKey.from_json(data))
        for blob_key, data in self._store.blob_scan(_BLOB_PREFIX):
            key = ProxyKey.from_json(data)
            if key.id == key_id:
                return self._revoked(blob_key, key)
        return None

    def _revoked(self, blob_key: str, key: ProxyKey) -> ProxyKey:
        if key.revoked:
            self._forget(blob_key)
            return key
        revoked = replace(key, revoked_at=self._clock())
        self._store.blob_put_many({blob_key: revoked.to_json()})
        self._forget(blob_key)
        return revoked
