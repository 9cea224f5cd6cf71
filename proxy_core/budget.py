"""Budget arithmetic: periods, budget lines and the fit test. Pure; money in integer micro-dollars.

A request reserves its worst-case cost against every budget line that applies to it (the user's
day, the workspace's month, and its source's day when the source has a budget of its own). Periods
are calendar periods in UTC. A limit of 0 means no cap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Literal

__all__ = ["BudgetLine", "CallSource", "Period", "budget_lines", "fits", "period_window", "source_day_line"]

Period = Literal["day", "month"]


@dataclass(frozen=True, slots=True)
class BudgetLine:
    """One budget a request counts against: a store key, its cap and what to tell the user."""

    key: str
    limit: int  # micro-dollars; 0 = no cap
    scope: str  # "user daily" / "workspace monthly": words for the refusal message
    resets_at: float


@dataclass(frozen=True, slots=True)
class CallSource:
    """Where a call comes from besides whose it is (a ``penny proxy`` key), for the ledger's
    spend by source, with a daily budget of its own (0 = none). That budget is one more line the
    call reserves on, counting only this source's spend: it narrows the user's budgets, which
    still apply, and never widens them."""

    id: str
    daily_budget_micros: int = 0


def period_window(now: float, period: Period) -> tuple[str, float]:
    """The period containing ``now`` as (label, reset timestamp): ('2026-11-27', …) or ('2026-11', …)."""
    return _period_of_day(int(now // 86_400), period)  # every call and ledger entry asks: once a UTC day


@lru_cache(maxsize=16)
def _period_of_day(day: int, period: Period) -> tuple[str, float]:
    t = datetime.fromtimestamp(day * 86_400, UTC)
    if period == "day":
        start = t.replace(hour=0, minute=0, second=0, microsecond=0)
        return start.strftime("%Y-%m-%d"), (start + timedelta(days=1)).timestamp()
    start = t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    nxt = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return start.strftime("%Y-%m"), nxt.timestamp()


def budget_lines(
    workspace_id: str, user_id: str, now: float, *, user_daily: int, workspace_monthly: int,
    source: CallSource | None = None,
) -> list[BudgetLine]:
    """The budget lines a request from ``user_id`` in ``workspace_id`` counts against at ``now``:
    the user's day, the workspace's month, then ``source``'s day if it has a budget."""
    day, day_reset = period_window(now, "day")
    month, month_reset = period_window(now, "month")
    lines = [
        BudgetLine(f"user:{user_id}:day:{day}", user_daily, "daily", day_reset),
        BudgetLine(f"workspace:month:{month}", workspace_monthly, "workspace monthly", month_reset),
    ]
    if source is not None and source.daily_budget_micros > 0:
        lines.append(source_day_line(source, now))
    return lines


def source_day_line(source: CallSource, now: float) -> BudgetLine:
    """``source``'s own daily budget line at ``now`` (only that source's calls count on it)."""
    day, day_reset = period_window(now, "day")
    return BudgetLine(f"source:{source.id}:day:{day}", source.daily_budget_micros, f"{source.id} daily", day_reset)


def capped(lines: Sequence[BudgetLine]) -> list[BudgetLine]:
    """The lines with a cap. Only they hold reservations: an uncapped line can refuse nothing, so
    reserving on it would cost store writes and protect nothing (its spend is still counted)."""
    return [line for line in lines if line.limit > 0]


def fits(spent: int, reserved: int, amount: int, limit: int) -> bool:
    """Does ``amount`` more fit under ``limit`` given what is spent and reserved? 0 = no cap.

    Nothing more (a model priced at $0) always fits: it spends nothing, whether the line is at its
    cap or over it (a budget lowered below its spend, a charge past the worst case)."""
    return limit <= 0 or amount <= 0 or spent + reserved + amount <= limit
