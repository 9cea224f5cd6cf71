"""Penny's one exception tree.

Everything proxy_core raises on purpose is a ``PennyError``. Lower-level errors (openai, redis,
sqlite3, pydantic) are translated exactly once, at the boundary that talks to them, with
``raise Mapped(...) from exc`` so the original stays on ``__cause__``::

    PennyError
    ├── ConfigurationError        bad or missing settings, unknown model or store scheme
    ├── StoreError                the store (SQLite file, Redis) cannot be reached or failed
    ├── Refused                   Penny decided not to call upstream; nothing was charged
    │   ├── RateLimited           a per-user bucket is empty; ``retry_after`` seconds
    │   ├── BudgetExceeded        a budget would be exceeded; ``scope``, ``limit``, ``spent``, ``resets_at``
    │   ├── CircuitOpen           upstream is failing; ``retry_after`` seconds
    │   ├── RequestInFlight       the same request ID is being answered elsewhere
    │   ├── RequestInterrupted    an earlier call of this request ID died mid-call; not run again
    │   └── RequestAnswered       this request ID was answered before and its result is forgotten
    └── UpstreamError             the LLM provider failed after retries, or refused the request
        └── UpstreamRejected      the request itself is bad (400/401/403/404/422): never retried

Messages are written for the person who will read them (a Slack user or an operator) and never
contain secrets.
"""

from __future__ import annotations

import math
from typing import Literal

__all__ = [
    "BudgetExceeded",
    "CircuitOpen",
    "ConfigurationError",
    "PennyError",
    "RateLimited",
    "Refused",
    "RequestAnswered",
    "RequestInFlight",
    "RequestInterrupted",
    "StoreError",
    "UpstreamError",
    "UpstreamRejected",
]


class PennyError(Exception):
    """Base class of every error Penny raises on purpose.

    ``charged_micros``: what the failed call was charged all the same. Only a call that reached the
    provider has any (a chat completion or an embedding call), for attempts the provider accepted
    and then failed (see ``UpstreamError.accepted``): it bills them. The rest are 0, whatever the
    docstrings below say of "nothing was charged".
    """

    charged_micros: int = 0


class ConfigurationError(PennyError):
    """Settings are missing or invalid; the message names every problem."""


class StoreError(PennyError):
    """The store failed or cannot be reached. Nothing was charged.

    ``maybe_applied``: the write may have taken effect all the same (a timeout, a connection lost
    after the command went out). False when it surely did not (a refused connection, a rolled-back
    transaction): then there is nothing to undo."""

    def __init__(self, message: str, *, maybe_applied: bool = True) -> None:
        super().__init__(message)
        self.maybe_applied = maybe_applied


class Refused(PennyError):
    """Penny refused the call before it reached upstream. Nothing was charged."""


class RateLimited(Refused):
    """The caller's token bucket cannot cover this request yet."""

    def __init__(self, retry_after: float, *, limit: str = "requests") -> None:
        self.retry_after = max(0.0, retry_after)
        self.limit = limit
        super().__init__(f"Rate limit reached ({limit}); try again in {format_wait(self.retry_after)}.")


class BudgetExceeded(Refused):
    """The request does not fit in a budget. Amounts are integer micro-dollars; ``needed`` is what
    the request reserves (its worst case), when known. One whose worst case is more than the whole
    budget (:attr:`never_fits`) would be refused after the reset too: the message says so, and a
    front end says what to change."""

    def __init__(self, scope: str, limit: int, spent: int, resets_at: float, *, needed: int | None = None) -> None:
        self.scope = scope
        self.limit = limit
        self.spent = spent
        self.resets_at = resets_at
        self.needed = needed
        from proxy_core.money import format_usd

        if self.never_fits:
            assert needed is not None
            super().__init__(
                f"This request could cost up to {format_usd(needed)}, more than the whole {scope} budget of "
                f"{format_usd(limit)}: it would not fit even after the budget resets at {_utc(resets_at)}."
            )
            return
        # Refused before the call at its worst case: what is left may be short of that, not gone.
        # Not gone, the spend is rounded down, so it never reads as the whole budget ($4.999999 of $5).
        used_up = spent >= limit
        state = "is used up" if used_up else "has too little left for this request"
        super().__init__(
            f"The {scope} budget of {format_usd(limit)} {state} "
            f"({format_usd(spent, down=not used_up)} spent or reserved); it resets at {_utc(resets_at)}."
        )

    @property
    def never_fits(self) -> bool:
        """The request's worst case is more than the whole budget: no reset makes room for it."""
        return self.needed is not None and self.needed > self.limit > 0


class CircuitOpen(Refused):
    """The breaker is open: upstream has been failing, so Penny fails fast."""

    def __init__(self, retry_after: float) -> None:
        self.retry_after = max(0.0, retry_after)
        super().__init__(
            f"The LLM provider is having trouble; Penny is pausing calls for "
            f"{format_wait(self.retry_after)}."
        )


class RequestInFlight(Refused):
    """Another worker is answering the same request ID right now."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        super().__init__(f"Request {request_id} is already being answered.")


class RequestInterrupted(Refused):
    """An earlier call of this request ID was admitted and never settled (its process died while
    the provider was answering). It is charged at its reserved worst case until its real cost
    arrives, and is not called upstream again under the same ID: that could pay twice for one
    request. Ask again under a new request ID."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        super().__init__(
            f"Request {request_id} was interrupted while the provider was answering it, so it is not run "
            "again under the same ID (that could pay twice); ask again."
        )


class RequestAnswered(Refused):
    """This request ID was answered (and paid for) before, and its result is no longer kept (a
    result is replayed for ``idempotency_ttl_s``; the ledger entry is kept for good). It is not
    called upstream again under the same ID: the ledger has one entry per request ID, so a second
    paid call under it could not be recorded. Ask again under a new request ID."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        super().__init__(
            f"Request {request_id} was answered before and its answer is no longer kept, so it is not run "
            "again under the same ID (that call could not be recorded); ask again under a new ID."
        )


UpstreamKind = Literal["status", "timeout", "connection", "malformed"]


class UpstreamError(PennyError):
    """The provider failed (after retries). Nothing was charged for it, except the attempts the
    provider had accepted (``accepted``).

    ``kind`` says how: an HTTP ``status``, a ``timeout``, a ``connection`` failure, or a
    ``malformed`` response. ``retry_after`` is the provider's hint (Retry-After or
    retry-after-ms), in seconds, when it gave one. ``attempts`` is how many calls were made.
    ``accepted``: the provider had taken the whole request in when the attempt failed: its answer
    had begun (a 200, then a stream that broke off or a body Penny could not use), or the request
    was sent and no answer came (a read timeout, a connection dropped after the request went out).
    The provider bills such an attempt (it processed the prompt, and may still be writing the
    answer), so the gateway charges it: the prompt (a chat completion's messages, an embedding
    call's inputs) plus ``streamed``, estimated. A status answer (429, 5xx, 4xx) is not billed,
    nor is a request that was never wholly sent (a refused connection, a connect timeout): those
    are False.
    ``streamed``: the answer's text a streamed attempt had sent before it broke off ("" for none).
    """

    def __init__(
        self,
        message: str,
        *,
        kind: UpstreamKind = "status",
        status: int | None = None,
        retry_after: float | None = None,
        attempts: int = 1,
        accepted: bool = False,
        streamed: str = "",
    ) -> None:
        self.kind = kind
        self.status = status
        self.retry_after = retry_after
        self.attempts = attempts
        self.accepted = accepted
        self.streamed = streamed
        super().__init__(message)


class UpstreamRejected(UpstreamError):
    """The provider rejected the request itself (400/401/403/404/422); retrying cannot help."""


def format_wait(seconds: float) -> str:
    """Say a wait the way a person would: '12s', '3 min', '2 h'."""
    if seconds < 60:
        return f"{max(1, math.ceil(seconds))}s"
    if seconds < 3600:
        return f"{math.ceil(seconds / 60)} min"
    return f"{math.ceil(seconds / 3600)} h"


def _utc(ts: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")
