"""What Penny's answers cost, read from the ledger: one user's report and the team's report.

Pure data, no Slack: the ``/cost`` command, the App Home and ``penny cost`` all render these.
Every number comes from :class:`proxy_core.Accounts` (the gateway's own, ``gateway.accounts``, or
one over a store and settings), in the ledger's integer micro-dollars; periods are UTC calendar days
and months at the injected ``now``. Spend is split by source: the Slack bot's own calls, and each
``penny proxy`` key's (named from the :class:`~bot.proxy.keys.ProxyKey` records passed in).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from typing import Any, Protocol

from bot.proxy.keys import ProxyKey
from proxy_core import Accounts, BudgetStatus, Headroom, UsageTotals, period_window

__all__ = [
    "TREND_DAYS",
    "BudgetStatus",
    "CostReport",
    "Headroom",
    "KeySpend",
    "SourceSpend",
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
class SourceSpend:
    """What one source of a person's spend cost: the Slack bot (``source == ""``) or a proxy key
    (its ID; ``name`` and ``revoked`` from its record, if the key ring has it)."""

    source: str
    name: str
    revoked: bool
    today: UsageTotals
    this_month: UsageTotals

    @property
    def is_slack(self) -> bool:
        return self.source == ""

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source or "slack", "name": self.name, "revoked": self.revoked,
                "today": totals_json(self.today), "this_month": totals_json(self.this_month)}


@dataclass(frozen=True, slots=True)
class KeySpend:
    """One proxy key of the workspace, for admins: whose it is, its name, state and daily budget
    (None: none of its own), and what it spent today and this month."""

    key_id: str
    user_id: str
    name: str
    revoked: bool
    daily_budget_micros: int | None
    today: UsageTotals
    this_month: UsageTotals

    def to_json(self) -> dict[str, Any]:
        return {"key_id": self.key_id, "user_id": self.user_id, "name": self.name, "revoked": self.revoked,
                "daily_budget_micros": self.daily_budget_micros, "today": totals_json(self.today),
                "this_month": totals_json(self.this_month)}


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
    # This month's spend by source (Slack first, then keys by spend); empty when nothing was spent.
    sources: tuple[SourceSpend, ...] = ()

    @property
    def split_by_source(self) -> bool:
        """Worth showing the sources: some of the spend came through a proxy key (Slack only, the
        common case, stays short)."""
        return any(not s.is_slack for s in self.sources)

    def to_json(self) -> dict[str, Any]:
        return {
            "workspace_id": self.workspace_id,
            "user_id": self.user_id,
            "sources": [s.to_json() for s in self.sources],
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
    # Paid calls whose ledger entry waits in this machine's spool for the store (Accounts.pending_ledger_writes).
    pending_ledger_writes: int = 0
    # The workspace's proxy keys, revoked ones included, by user, then this month's spend.
    keys: tuple[KeySpend, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "workspace_id": self.workspace_id,
            "keys": [k.to_json() for k in self.keys],
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
    return {**asdict(t), "tokens": t.prompt_tokens + t.completion_tokens, "questions": t.questions,
            "hit_rate": t.hit_rate}


def sparkline(values: list[int] | tuple[int, ...]) -> str:
    """One bar per value, scaled to the largest (integer arithmetic); all zero → the lowest bars."""
    top = max(values, default=0)
    if top <= 0:
        return _BARS[0] * len(values)
    last = len(_BARS) - 1
    return "".join(_BARS[(max(v, 0) * last + top - 1) // top] for v in values)


def is_admin(user_id: str, settings: _HasAdmins, slack_user_info: Mapping[str, Any] | None, *,
             workspace: str = "") -> bool:
    """A Penny admin (``PENNY_ADMIN_USER_IDS``) or a Slack admin/owner (``users.info``) of
    ``workspace``. A Slack admin's flags count only at home: a person from another organisation
    (Slack Connect: ``is_stranger``, or a ``team_id`` that is neither ``workspace`` nor one of their
    Enterprise Grid workspaces) is an admin of their own organisation, not of this one's spend."""
    if user_id in settings.admin_user_ids:
        return True
    if not slack_user_info:
        return False
    user = slack_user_info.get("user", slack_user_info)
    if not isinstance(user, Mapping) or user.get("id", user_id) != user_id or user.get("is_stranger"):
        return False
    home = user.get("team_id")
    if workspace and isinstance(home, str) and home and home != workspace:
        grid = user.get("enterprise_user")
        teams = grid.get("teams") if isinstance(grid, Mapping) else None
        if not isinstance(teams, list) or workspace not in teams:
            return False
    return any(bool(user.get(flag)) for flag in ("is_admin", "is_owner", "is_primary_owner"))


def cost_report(
    accounts: Accounts, workspace_id: str, user_id: str, now: float, keys: Iterable[ProxyKey] = ()
) -> CostReport:
    """``user_id``'s report at ``now`` (UTC periods), every number from the ledger and the store.
    ``keys`` name the proxy keys among the sources (only the user's own spend is read)."""
    today, first_of_month, trend_days = _days(now)
    daily, monthly = accounts.budgets(workspace_id, user_id, now)
    return CostReport(
        workspace_id=workspace_id,
        user_id=user_id,
        now=now,
        day=today,
        month=first_of_month[:7],
        today=accounts.usage(workspace_id, today, today, user_id).totals,
        this_month=accounts.usage(workspace_id, first_of_month, today, user_id).totals,
        user_daily=daily,
        workspace_monthly=monthly,
        headroom=accounts.headroom(workspace_id, user_id),
        trend_days=trend_days,
        trend=_trend(accounts, workspace_id, trend_days, user_id),
        sources=_sources(accounts, workspace_id, user_id, today, first_of_month, keys),
    )


def team_report(
    accounts: Accounts, workspace_id: str, now: float, *, top: int = TOP_USERS, keys: Iterable[ProxyKey] = ()
) -> TeamReport:
    """The workspace's report at ``now``: totals, top ``top`` users and models by this month's spend,
    and each of the workspace's proxy ``keys`` with its spend."""
    today, first_of_month, trend_days = _days(now)
    month = accounts.usage(workspace_id, first_of_month, today)
    return TeamReport(
        workspace_id=workspace_id,
        now=now,
        day=today,
        month=first_of_month[:7],
        today=accounts.usage(workspace_id, today, today).totals,
        this_month=month.totals,
        top_users=_by_spend(month.by_user)[:top],
        by_model=_by_spend(month.by_model),
        workspace_monthly=accounts.workspace_budget(workspace_id, now),
        trend_days=trend_days,
        trend=_trend(accounts, workspace_id, trend_days, None),
        pending_ledger_writes=accounts.pending_ledger_writes(),
        keys=_key_spend(accounts, workspace_id, today, first_of_month, keys),
    )


def _sources(
    accounts: Accounts, workspace_id: str, user_id: str, today: str, first_of_month: str, keys: Iterable[ProxyKey]
) -> tuple[SourceSpend, ...]:
    month = accounts.spend_by_source(workspace_id, first_of_month, today, user_id)
    if not month:
        return ()
    day = accounts.spend_by_source(workspace_id, today, today, user_id)
    known = {k.id: k for k in keys}
    sources = [
        SourceSpend(source, known[source].name if source in known else "",
                    source in known and known[source].revoked, day.get(source, UsageTotals()), totals)
        for source, totals in month.items()
    ]
    return tuple(sorted(sources, key=lambda s: (not s.is_slack, -s.this_month.cost_micros, s.source)))


def _key_spend(
    accounts: Accounts, workspace_id: str, today: str, first_of_month: str, keys: Iterable[ProxyKey]
) -> tuple[KeySpend, ...]:
    ours = [k for k in keys if k.workspace_id == workspace_id]
    if not ours:
        return ()
    day = accounts.spend_by_source(workspace_id, today, today)
    month = accounts.spend_by_source(workspace_id, first_of_month, today)
    spends = [
        KeySpend(k.id, k.user_id, k.name, k.revoked, k.daily_budget_micros, day.get(k.id, UsageTotals()),
                 month.get(k.id, UsageTotals()))
        for k in ours
    ]
    return tuple(sorted(spends, key=lambda k: (k.user_id, -k.this_month.cost_micros, k.key_id)))


def _days(now: float) -> tuple[str, str, tuple[str, ...]]:
    # The budget lines' day (floored), not a datetime's, which rounds the last instant of a day
    # up to the next one: the report's day must be the one its budgets and ledger entries are on.
    today = date.fromisoformat(period_window(now, "day")[0])
    trend = tuple((today - timedelta(days=back)).isoformat() for back in range(TREND_DAYS - 1, -1, -1))
    return today.isoformat(), today.replace(day=1).isoformat(), trend


def _trend(accounts: Accounts, workspace_id: str, days: tuple[str, ...], user_id: str | None) -> tuple[int, ...]:
    by_day = accounts.usage(workspace_id, days[0], days[-1], user_id).by_day
    return tuple(by_day[d].cost_micros if d in by_day else 0 for d in days)


def _by_spend(groups: Mapping[str, UsageTotals]) -> tuple[tuple[str, UsageTotals], ...]:
    return tuple(sorted(groups.items(), key=lambda kv: (-kv[1].cost_micros, -kv[1].requests, kv[0])))
