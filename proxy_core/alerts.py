"""Budget alerts: tell admins once per period when a budget line reaches 50%, 80% and 100%.

After a billed call settles, or a call is refused by a line already all spent (a budget lowered
below what its period had spent refuses every call, so none settles to announce it),
:class:`BudgetAlerter` reads what each capped line has spent and, for every threshold it has
reached, claims ``alert:<line key>:<limit>:<threshold>`` in the store. The store's claim is "first
one wins" across threads and replicas, so exactly one caller emits each alert; the key carries the
period (the line key names the day or month), so the next period alerts afresh, and the limit, so a
budget the operator changes mid-period is announced as it fills (or, lowered, at once): its
100% is news even when the old budget's was announced.

Which thresholds a call crossed is decided from the spend *now*, not from ``now - cost``: two calls
settling at once could each read the other's spend and both conclude that neither crossed 50%.
An in-process memo of thresholds already handled keeps the store round trips to one per threshold,
line and period per replica.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from proxy_core.budget import BudgetLine, Period, period_window
from proxy_core.money import format_usd
from proxy_core.stores.base import Store

__all__ = ["THRESHOLDS", "BudgetAlert", "BudgetAlerter", "alert_text", "crossed", "reached"]

THRESHOLDS: tuple[int, ...] = (50, 80, 100)

# Dedupe claims outlive the period by a day, so a late settle near the reset cannot alert twice.
_GRACE_S = 86_400.0


def reached(spent: int, limit: int) -> list[int]:
    """The thresholds (percent) that ``spent`` has reached under ``limit``; none when uncapped."""
    if limit <= 0:
        return []
    # Integer arithmetic: spent/limit >= t/100 without a float deciding the boundary.
    return [t for t in THRESHOLDS if spent * 100 >= t * limit]


def crossed(spent_before: int, spent_after: int, limit: int) -> list[int]:
    """Thresholds newly reached going from ``spent_before`` to ``spent_after``, lowest first."""
    before = set(reached(spent_before, limit))
    return [t for t in reached(spent_after, limit) if t not in before]


@dataclass(frozen=True, slots=True)
class BudgetAlert:
    """A budget line reached ``threshold`` percent of its limit. Money in micro-dollars.

    ``user_id`` is None for a workspace line. ``scope`` is the line's ("daily", "workspace
    monthly", "<source> daily"); ``period`` names the day or month ("2026-01-01", "2026-01").
    """

    workspace_id: str
    user_id: str | None
    scope: str
    threshold: int
    spent: int
    limit: int
    resets_at: float
    period: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


class BudgetAlerter:
    """Decides which budget alerts a settled call triggers, each emitted once per period.

    Thread-safe; replicas sharing one store never emit the same alert twice.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._handled: dict[tuple[str, str, int, int], float] = {}  # (workspace, line key, limit, t) -> resets_at
        self._lock = threading.Lock()

    def after_settle(
        self, workspace_id: str, user_id: str, lines: Sequence[BudgetLine], cost: int
    ) -> list[BudgetAlert]:
        """The alerts this caller must deliver after settling ``cost`` micro-dollars on ``lines``.

        Raises StoreError if the store fails; an alert claimed before the failure is returned by
        no one (it is lost rather than sent twice).
        """
        if cost <= 0:
            return []
        return self._announce(workspace_id, user_id, lines)

    def after_refusal(self, workspace_id: str, user_id: str, line: BudgetLine) -> list[BudgetAlert]:
        """The alert a call refused by ``line`` (already all spent) must deliver: a budget lowered
        below what was spent in its period is refused at once and never settles, so its 100% is
        announced here. One alert, the highest threshold news for this limit: the lower ones are
        claimed with it, not announced three at once. Raises StoreError as :meth:`after_settle`."""
        return self._announce(workspace_id, user_id, [line])[-1:]

    def _announce(self, workspace_id: str, user_id: str, lines: Sequence[BudgetLine]) -> list[BudgetAlert]:
        """Claim each threshold the lines' spend has reached and no caller has announced yet."""
        alerts: list[BudgetAlert] = []
        for line in lines:
            if line.limit <= 0:
                continue
            pending = [t for t in THRESHOLDS if not self._is_handled(workspace_id, line, t)]
            if not pending:
                continue
            spent, _reserved = self.store.spent(workspace_id, line)
            for threshold in reached(spent, line.limit):
                if threshold not in pending:
                    continue
                alert = self._claim(workspace_id, user_id, line, threshold, spent)
                if alert is not None:
                    alerts.append(alert)
        return alerts

    def _claim(
        self, workspace_id: str, user_id: str, line: BudgetLine, threshold: int, spent: int
    ) -> BudgetAlert | None:
        dedupe_id = f"alert:{line.key}:{line.limit}:{threshold}"
        now = self.store.now()
        ttl_s = max(line.resets_at - now, 0.0) + _GRACE_S
        claim = self.store.claim_request(workspace_id, dedupe_id, ttl_s)
        # "in_flight" or "done": another caller (thread or replica) owns this alert.
        self._mark_handled(workspace_id, line, threshold, now)
        if claim.state != "claimed":
            return None
        alert = BudgetAlert(
            workspace_id=workspace_id,
            # A source's line (a proxy key's budget) is the user's too: they called with it.
            user_id=user_id if line.key.startswith(("user:", "source:")) else None,
            scope=line.scope,
            threshold=threshold,
            spent=spent,
            limit=line.limit,
            resets_at=line.resets_at,
            period=_period_label(line),
        )
        self.store.complete_request(workspace_id, dedupe_id, alert.to_json(), ttl_s)
        return alert

    def _is_handled(self, workspace_id: str, line: BudgetLine, threshold: int) -> bool:
        with self._lock:
            return (workspace_id, line.key, line.limit, threshold) in self._handled

    def _mark_handled(self, workspace_id: str, line: BudgetLine, threshold: int, now: float) -> None:
        with self._lock:
            # Past periods' entries are never asked about again: drop them as new ones arrive.
            stale = [k for k, resets_at in self._handled.items() if resets_at <= now]
            for key in stale:
                del self._handled[key]
            self._handled[(workspace_id, line.key, line.limit, threshold)] = line.resets_at


def _period_label(line: BudgetLine) -> str:
    period: Period = "month" if "month" in line.scope else "day"
    return period_window(line.resets_at - 1, period)[0]


def alert_text(alert: BudgetAlert, *, mention: bool = False, who: str | None = None) -> str:
    """The message admins read, e.g. "Heads-up: U123 has used 80% of their daily budget ($0.80 of
    $1.00); it resets at 2026-01-02 00:00 UTC."

    ``mention=True`` writes the user as ``<@U123>``, which Slack shows as their name (and, in a
    channel they belong to, notifies them); ``who`` writes the user as given instead (a front end's
    own rendering of the user ID, which may be any text: a proxy key's ``--user``).
    """
    from datetime import UTC, datetime

    resets = datetime.fromtimestamp(alert.resets_at, UTC).strftime("%Y-%m-%d %H:%M UTC")
    if alert.user_id is not None:
        who, whose = (who if who is not None else f"<@{alert.user_id}>" if mention else alert.user_id), "their"
    else:
        who, whose = "The workspace", "its"
    scope = alert.scope.removeprefix("workspace ")
    # Short of the limit, the spend is rounded down: $0.999999 of $1 is not "$1.00 of $1.00".
    money = f"{format_usd(alert.spent, down=alert.spent < alert.limit)} of {format_usd(alert.limit)}"
    if alert.threshold >= 100:
        return (f"Heads-up: {who} has used all of {whose} {scope} budget ({money}); "
                f"new questions are refused (cached answers still work) until it resets at {resets}.")
    return f"Heads-up: {who} has used {alert.threshold}% of {whose} {scope} budget ({money}); it resets at {resets}."
