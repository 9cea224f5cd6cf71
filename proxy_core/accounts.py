"""What a user or a workspace has spent and may still spend: the read side of the cost controls.

The gateway decides with rate-limit buckets and budget lines; ``/cost``, the App Home and
``penny cost`` show them. Both build those buckets and lines here (:func:`rate_limit_specs`,
:func:`budget_lines_for`), so the report can never read another bucket than the one that refuses.
Reading takes nothing: a bucket is peeked at with a zero-cost take.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from proxy_core.budget import BudgetLine, CallSource, budget_lines, source_day_line
from proxy_core.limiter import Bucket
from proxy_core.settings import PennySettings
from proxy_core.spool import count_pending
from proxy_core.stores.base import BucketSpec, Store, UsageSummary, UsageTotals

__all__ = ["Accounts", "BudgetStatus", "Headroom", "budget_lines_for", "rate_limit_specs"]


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    """One budget line now: its cap (0 = none), what is spent and reserved, and what is left."""

    scope: str
    limit: int
    spent: int
    reserved: int
    resets_at: float

    @property
    def capped(self) -> bool:
        return self.limit > 0

    @property
    def left(self) -> int | None:
        """Micro-dollars left before the cap (never negative); None when there is no cap."""
        if not self.capped:
            return None
        return max(0, self.limit - self.spent - self.reserved)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "left": self.left}


@dataclass(frozen=True, slots=True)
class Headroom:
    """Rate-limit room now: tokens left in the request and token buckets (None = unlimited), and
    how fast each refills (the per-minute limits a reader knows from the settings)."""

    requests_left: float | None
    request_burst: float | None
    tokens_left: float | None
    token_burst: float | None
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None


def rate_limit_specs(
    settings: PennySettings, user_id: str, *, tokens: float = 0, peek: bool = False
) -> list[tuple[str, BucketSpec]]:
    """The user's rate-limit buckets, named (``requests``, ``tokens``), taking one request and
    ``tokens`` LLM tokens, or nothing with ``peek``. An unlimited bucket (rate 0) is left out."""
    limits = settings.limits_for(user_id)
    specs: list[tuple[str, BucketSpec]] = []
    if limits.requests_per_minute > 0:
        bucket = Bucket.per_minute(limits.requests_per_minute, limits.request_burst)
        specs.append(("requests", BucketSpec(f"user:{user_id}:requests", bucket, 0 if peek else 1)))
    if limits.tokens_per_minute > 0:
        bucket = Bucket.per_minute(limits.tokens_per_minute, limits.token_burst)
        specs.append(("tokens", BucketSpec(f"user:{user_id}:tokens", bucket, 0 if peek else tokens)))
    return specs


def budget_lines_for(
    settings: PennySettings, workspace_id: str, user_id: str, now: float, *, source: CallSource | None = None
) -> list[BudgetLine]:
    """The budget lines a call by ``user_id`` counts against at ``now``: their day, the workspace's
    month, and the day of ``source`` when it has a budget of its own."""
    return budget_lines(workspace_id, user_id, now, user_daily=settings.user_daily_budget_micros(user_id),
                        workspace_monthly=settings.workspace_monthly_budget_micros(), source=source)


class Accounts:
    """Read-only queries over the store, with the settings that shape limits and budgets."""

    def __init__(self, store: Store, settings: PennySettings, *, wall: Callable[[], float] = time.time) -> None:
        self.store = store
        self.settings = settings
        self._wall = wall

    def usage(self, workspace_id: str, first_day: str, last_day: str, user_id: str | None = None) -> UsageSummary:
        """Ledger totals over the UTC days ``first_day``..``last_day`` (inclusive)."""
        return self.store.usage(workspace_id, first_day, last_day, user_id)

    def spend_by_source(
        self, workspace_id: str, first_day: str, last_day: str, user_id: str | None = None
    ) -> dict[str, UsageTotals]:
        """Ledger totals over the UTC days ``first_day``..``last_day`` (inclusive) by source: ``""``
        for the front end's own calls (the Slack bot), else the source the caller named (a proxy
        key's ID). Only sources with spend in the range appear; for one user with ``user_id``."""
        return self.store.usage_by_source(workspace_id, first_day, last_day, user_id)

    def source_budget(self, workspace_id: str, source: CallSource, now: float | None = None) -> BudgetStatus:
        """``source``'s own daily budget at ``now``: its spend and reservations today. A source
        without a budget has no line (its calls count on none), so it reads uncapped and empty;
        its spend is in :meth:`spend_by_source`."""
        line = source_day_line(source, self._wall() if now is None else now)
        return self._status(workspace_id, line)

    def headroom(self, workspace_id: str, user_id: str) -> Headroom:
        """Tokens left now in the user's request and token buckets: a peek, nothing taken."""
        limits = self.settings.limits_for(user_id)
        named = rate_limit_specs(self.settings, user_id, peek=True)
        left: dict[str, float] = {}
        if named:
            decision = self.store.take_tokens(workspace_id, [spec for _, spec in named])
            left = {name: remaining for (name, _), remaining in zip(named, decision.remaining, strict=True)}
        return Headroom(
            requests_left=left.get("requests"),
            request_burst=limits.request_burst if "requests" in left else None,
            tokens_left=left.get("tokens"),
            token_burst=limits.token_burst if "tokens" in left else None,
            requests_per_minute=limits.requests_per_minute if "requests" in left else None,
            tokens_per_minute=limits.tokens_per_minute if "tokens" in left else None,
        )

    def budgets(self, workspace_id: str, user_id: str, now: float | None = None) -> tuple[BudgetStatus, BudgetStatus]:
        """The user's daily budget and the workspace's monthly budget at ``now``."""
        daily, monthly = budget_lines_for(self.settings, workspace_id, user_id, self._wall() if now is None else now)
        return self._status(workspace_id, daily), self._status(workspace_id, monthly)

    def workspace_budget(self, workspace_id: str, now: float | None = None) -> BudgetStatus:
        """The workspace's monthly budget at ``now``."""
        return self.budgets(workspace_id, "", now)[1]

    def pending_ledger_writes(self) -> int:
        """Paid calls whose ledger entry waits in this machine's spool for the store."""
        return count_pending(self.settings.spool_directory())

    def _status(self, workspace_id: str, line: BudgetLine) -> BudgetStatus:
        spent, reserved = self.store.spent(workspace_id, line)
        return BudgetStatus(line.scope, line.limit, spent, reserved, line.resets_at)
