"""A per-minute rate shared by every replica, for a front end's own limits (the Slack bot's
``chat.startStream`` calls): the gateway's token buckets, kept in the store under the caller's key,
so the caller never builds a bucket or a store key.

    starts = SharedRate(store, "slack:stream_starts", per_minute=15, burst=5)
    if starts.take(workspace_id).allowed: ...
"""

from __future__ import annotations

from proxy_core.limiter import Bucket
from proxy_core.stores.base import BucketSpec, LimitDecision, LimitStore

__all__ = ["LimitDecision", "SharedRate"]


class SharedRate:
    """At most ``per_minute`` a minute on average and ``burst`` at once (default: a minute's worth),
    per workspace, counted atomically at the store's clock by every replica sharing ``store``."""

    def __init__(self, store: LimitStore, key: str, *, per_minute: float, burst: float | None = None) -> None:
        self._store = store
        self._key = key
        self._bucket = Bucket.per_minute(per_minute, burst)

    def take(self, workspace_id: str, cost: float = 1) -> LimitDecision:
        """Take ``cost`` now if the rate allows it (``allowed``), else say how long until it would
        (``retry_after``). Raises :class:`~proxy_core.errors.StoreError` when the store cannot say."""
        return self._store.take_tokens(workspace_id, [BucketSpec(self._key, self._bucket, cost)])
