"""Token-bucket arithmetic: pure functions of state and time.

A bucket holds up to ``burst`` tokens and refills at ``rate`` tokens per second. A request that
costs ``cost`` passes when every bucket it draws from holds at least that many tokens; then all
of them are debited together, or none is. When it does not pass, ``retry_after`` is the exact time
until the emptiest bucket will have refilled enough — computed from the state, not a window length.

Stores apply this atomically: ``stores/sqlite.py`` calls :func:`take` inside a write transaction;
``stores/lua/take_tokens.lua`` is the same arithmetic for Redis.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Bucket", "BucketState", "TakeResult", "refill", "take"]


@dataclass(frozen=True, slots=True)
class Bucket:
    """A refill ``rate`` (tokens/second) and a capacity ``burst``."""

    rate: float
    burst: float

    @classmethod
    def per_minute(cls, per_minute: float, burst: float | None = None) -> Bucket:
        """A bucket allowing ``per_minute`` on average and ``burst`` at once (default: one minute's worth)."""
        return cls(rate=per_minute / 60.0, burst=float(burst if burst is not None else per_minute))


@dataclass(frozen=True, slots=True)
class BucketState:
    tokens: float
    updated: float


@dataclass(frozen=True, slots=True)
class TakeResult:
    allowed: bool
    states: tuple[BucketState, ...]
    retry_after: float
    remaining: tuple[float, ...]
    blocking: int | None  # index of the bucket that refused, if any


def refill(state: BucketState | None, bucket: Bucket, now: float) -> BucketState:
    """The bucket's state at ``now``. A bucket never seen before is full; time never runs backwards."""
    if state is None:
        return BucketState(bucket.burst, now)
    elapsed = max(0.0, now - state.updated)
    return BucketState(min(bucket.burst, state.tokens + elapsed * bucket.rate), max(now, state.updated))


def take(
    buckets: Sequence[Bucket],
    states: Sequence[BucketState | None],
    costs: Sequence[float],
    now: float,
) -> TakeResult:
    """Debit ``costs`` from all ``buckets`` at ``now``, all or nothing.

    A cost larger than a bucket's capacity is capped at the capacity: such a request needs a full
    bucket, so it can always pass eventually instead of being refused forever.
    """
    current = [refill(s, b, now) for b, s in zip(buckets, states, strict=True)]
    retry_after = 0.0
    blocking: int | None = None
    for i, (bucket, state, cost) in enumerate(zip(buckets, current, costs, strict=True)):
        need = min(cost, bucket.burst)
        if state.tokens < need:
            wait = _whole_ms((need - state.tokens) / bucket.rate) if bucket.rate > 0 else float("inf")
            if wait > retry_after:
                retry_after, blocking = wait, i
    if blocking is not None:
        return TakeResult(False, tuple(current), retry_after, tuple(s.tokens for s in current), blocking)
    after = tuple(
        BucketState(s.tokens - min(c, b.burst), s.updated)
        for b, s, c in zip(buckets, current, costs, strict=True)
    )
    return TakeResult(True, after, 0.0, tuple(s.tokens for s in after), None)


def _whole_ms(seconds: float) -> float:
    """``seconds`` rounded up to a whole millisecond. A shortfall of a few millionths of a token
    (float rounding at epoch-second times) would otherwise say to wait nanoseconds, which do not
    move an epoch clock: the caller would be refused again at the same instant. The 1e-6 keeps
    float noise (4200.0000000000002 ms) from adding a millisecond; ``_request.lua`` does the same."""
    return math.ceil(seconds * 1000 - 1e-6) / 1000
