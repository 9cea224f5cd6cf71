"""What Penny's answers cost, read from the ledger: one user's report and the team's report.

Pure data, no Slack: the ``/cost`` command, the App Home and ``penny cost`` all render these.
Every amount is the ledger's own integer micro-dollars (``Store.usage``); periods are UTC calendar
days and months at the injected ``now``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from proxy_core.budget import BudgetLine, budget_lines
from proxy_core.limiter import Bucket
from proxy_core.settings import PennySettings
from proxy_core.spool import count_pending
from proxy_core.stores.base import BucketSpec, Store, UsageTotals

__all__ = [
    "TREND_DAYS",
    "BudgetStatus",
    "CostReport",
    "Headroom",
    "TeamReport",
    "cost_report",
    "is_admin",
    "sparkline",
    "team_report",
]

TREND_DAYS = 14
TOP_USERS = 10
_BARS = "▁▂▃▄▅▆▇█"


class _HasAdmins(Protocol):
    @property
    def admin_user_ids(self) -> Collection[str]: ...


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
    """Rate-limit room now: tokens left in the request and token buckets (None = unlimited)."""

    requests_left: float | None
    request_burst: float | None
    tokens_left: float | None
    token_burst: float | None


@dataclass(frozen=True, slots=True)
class CostReport:
    """One user's spend today and this month, budgets, rate-limit headroom and 14-day trend."""

    workspace_id: str
    user_id: str
    now: float
    day: str  # 'YYYY-MM-DD' (UTC)
    month: str  # 'YYYY-MM'
    today: UsageTotals
    this_month: UsageTotals
    user_daily: BudgetStatus
    workspace_monthly: BudgetStatus
    headroom: Headroom
    trend_days: tuple[str, ...]
    trend: tuple[int, ...]  # micro-dollars per day, oldest first

    def to_json(self) -> dict[str, Any]:
        return {
            "workspace_id": self.workspace_id,
            "user_id": self.user_id,
            "now": self.now,
            "day": self.day,
            "month": self.month,
            "today": totals_json(self.today),
            "this_month": totals_json(self.this_month),
            "user_daily_budget": self.user_daily.to_json(),
            "workspace_monthly_budget": self.workspace_monthly.to_json(),
            "headroom": asdict(self.headroom),
            "trend_days": list(self.trend_days),
            "trend": list(self.trend),
        }


@dataclass(frozen=True, slots=True)
class TeamReport:
    """The workspace's spend today and this month, its top spenders, models, budget and trend."""

    workspace_id: str
    now: float
    day: str
    month: str
    today: UsageTotals
    this_month: UsageTotals
    top_users: tuple[tuple[str, UsageTotals], ...]  # this month, by spend, highest first
    by_model: tuple[tuple[str, UsageTotals], ...]  # this month, by spend, highest first
    workspace_monthly: BudgetStatus
    trend_days: tuple[str, ...]
    trend: tuple[int, ...]
    # Paid calls whose ledger entry waits in this machine's spool for the store (see proxy_core.spool).
    pending_ledger_writes: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "workspace_id": self.workspace_id,
            "pending_ledger_writes": self.pending_ledger_writes,
            "now": self.now,
            "day": self.day,
            "month": self.month,
            "today": totals_json(self.today),
            "this_month": totals_json(self.this_month),
            "top_users": [{"user_id": u, **totals_json(t)} for u, t in self.top_users],
            "by_model": [{"model": m, **totals_json(t)} for m, t in self.by_model],
            "workspace_monthly_budget": self.workspace_monthly.to_json(),
            "trend_days": list(self.trend_days),
            "trend": list(self.trend),
        }


def totals_json(t: UsageTotals) -> dict[str, Any]:
    return {**asdict(t), "tokens": t.prompt_tokens + t.completion_tokens, "hit_rate": t.hit_rate}


def sparkline(values: list[int] | tuple[int, ...]) -> str:
    """One bar per value, scaled to the largest (integer arithmetic); all zero → the lowest bars."""
    top = max(values, default=0)
    if top <= 0:
        return _BARS[0] * len(values)
    last = len(_BARS) - 1
    return "".join(_BARS[(max(v, 0) * last + top - 1) // top] for v in values)


def is_admin(user_id: str, settings: _HasAdmins, slack_user_info: Mapping[str, Any] | None) -> bool:
    """A Penny admin (``PENNY_ADMIN_USER_IDS``) or a Slack workspace admin/owner (``users.info``)."""
    if user_id in settings.admin_user_ids:
        return True
    if not slack_user_info:
        return False
    user = slack_user_info.get("user", slack_user_info)
    if not isinstance(user, Mapping) or user.get("id", user_id) != user_id:
        return False
    return any(bool(user.get(flag)) for flag in ("is_admin", "is_owner", "is_primary_owner"))


def cost_report(store: Store, settings: PennySettings, workspace_id: str, user_id: str, now: float) -> CostReport:
    """``user_id``'s report at ``now`` (UTC periods), every number from the ledger and the store."""
    today, first_of_month, trend_days = _days(now)
    day_usage = store.usage(workspace_id, today, today, user_id).totals
    month_usage = store.usage(workspace_id, first_of_month, today, user_id).totals
    trend = _trend(store, workspace_id, trend_days, user_id)
    daily_line, monthly_line = budget_lines(
        workspace_id,
        user_id,
        now,
        user_daily=settings.user_daily_budget_micros(user_id),
        workspace_monthly=settings.workspace_monthly_budget_micros(),
    )
    return CostReport(
        workspace_id=workspace_id,
        user_id=user_id,
        now=now,
        day=today,
        month=first_of_month[:7],
        today=day_usage,
        this_month=month_usage,
        user_daily=_status(store, workspace_id, daily_line),
        workspace_monthly=_status(store, workspace_id, monthly_line),
        headroom=headroom(store, settings, workspace_id, user_id),
        trend_days=trend_days,
        trend=trend,
    )


def team_report(
    store: Store, settings: PennySettings, workspace_id: str, now: float, *, top: int = TOP_USERS
) -> TeamReport:
    """The workspace's report at ``now``: totals, top ``top`` users and models by this month's spend."""
    today, first_of_month, trend_days = _days(now)
    day_usage = store.usage(workspace_id, today, today).totals
    month = store.usage(workspace_id, first_of_month, today)
    trend = _trend(store, workspace_id, trend_days, None)
    _, monthly_line = budget_lines(
        workspace_id, "", now, user_daily=0, workspace_monthly=settings.workspace_monthly_budget_micros()
    )
    return TeamReport(
        workspace_id=workspace_id,
        now=now,
        day=today,
        month=first_of_month[:7],
        today=day_usage,
        this_month=month.totals,
        top_users=_by_spend(month.by_user)[:top],
        by_model=_by_spend(month.by_model),
        workspace_monthly=_status(store, workspace_id, monthly_line),
        trend_days=trend_days,
        trend=trend,
        pending_ledger_writes=count_pending(settings.spool_directory()),
    )


def headroom(store: Store, settings: PennySettings, workspace_id: str, user_id: str) -> Headroom:
    """Tokens left now in the user's request and token buckets: a zero-cost peek, nothing taken."""
    limits = settings.limits_for(user_id)
    specs: list[BucketSpec] = []
    if limits.requests_per_minute > 0:
        specs.append(BucketSpec(f"user:{user_id}:requests",
                                Bucket.per_minute(limits.requests_per_minute, limits.request_burst), 0))
    if limits.tokens_per_minute > 0:
        specs.append(BucketSpec(f"user:{user_id}:tokens",
                                Bucket.per_minute(limits.tokens_per_minute, limits.token_burst), 0))
    remaining = list(store.take_tokens(workspace_id, specs).remaining) if specs else []
    requests_left = remaining.pop(0) if limits.requests_per_minute > 0 else None
    tokens_left = remaining.pop(0) if limits.tokens_per_minute > 0 else None
    return Headroom(
        requests_left=requests_left,
        request_burst=limits.request_burst if limits.requests_per_minute > 0 else None,
        tokens_left=tokens_left,
        token_burst=limits.token_burst if limits.tokens_per_minute > 0 else None,
    )


def _days(now: float) -> tuple[str, str, tuple[str, ...]]:
    today = datetime.fromtimestamp(now, UTC).date()
    trend = tuple((today - timedelta(days=back)).isoformat() for back in range(TREND_DAYS - 1, -1, -1))
    return today.isoformat(), today.replace(day=1).isoformat(), trend


def _trend(store: Store, workspace_id: str, days: tuple[str, ...], user_id: str | None) -> tuple[int, ...]:
    by_day = store.usage(workspace_id, days[0], days[-1], user_id).by_day
    return tuple(by_day[d].cost_micros if d in by_day else 0 for d in days)


def _status(store: Store, workspace_id: str, line: BudgetLine) -> BudgetStatus:
    spent, reserved = store.spent(workspace_id, line)
    return BudgetStatus(line.scope, line.limit, spent, reserved, line.resets_at)


def _by_spend(groups: Mapping[str, UsageTotals]) -> tuple[tuple[str, UsageTotals], ...]:
    return tuple(sorted(groups.items(), key=lambda kv: (-kv[1].cost_micros, -kv[1].requests, kv[0])))
