"""Owned claims, shared by every store: what a claim made by ``Store.admit(owner=...)`` keeps, and
the unsettled charge it becomes when its call is never settled (``Store.reap_interrupted``).

The owner is kept as JSON text beside the claim: who the call is for, the reserved amount, and
every budget line it counts against (capped or not, as ``[key, limit, resets_at]``), so a reaper in
any process can charge it without knowing how the gateway built it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from proxy_core.budget import BudgetLine, period_window
from proxy_core.stores.base import ClaimOwner, LedgerEntry

__all__ = ["owned_by", "owner_json", "reserved_amount", "unsettled_charge"]


def owner_json(owner: ClaimOwner, amount: int, lines: Sequence[BudgetLine]) -> str:
    return json.dumps({
        "user_id": owner.user_id, "model": owner.model, "kind": owner.kind, "amount": int(amount),
        "lines": [[line.key, line.limit, line.resets_at] for line in lines], "started_at": owner.started_at,
        "source": owner.source, "call": owner.call_id,
    })


def owned_by(owner: str | None, call_id: str) -> bool:
    """Whether a claim's owner JSON (None: a plain claim) is the admission ``call_id``'s."""
    if owner is None:
        return False
    try:
        held = json.loads(owner)
    except ValueError:
        return False
    return isinstance(held, dict) and held.get("call") == call_id


def reserved_amount(owner: str) -> int:
    """The amount an owned claim's owner JSON says its admission reserves (what it is reaped at)."""
    return int(json.loads(owner)["amount"])


def unsettled_charge(workspace_id: str, request_id: str, owner: str) -> tuple[LedgerEntry, list[BudgetLine]]:
    """The unsettled ledger entry (at the reserved amount, dated when the call started) and the
    budget lines of an owned claim."""
    held = json.loads(owner)
    started = float(held["started_at"])
    entry = LedgerEntry(
        request_id=request_id, ts=started, day=period_window(started, "day")[0],
        workspace_id=workspace_id, user_id=str(held["user_id"]), model=str(held["model"]), kind=held["kind"],
        prompt_tokens=0, cached_prompt_tokens=0, completion_tokens=0, cost_micros=int(held["amount"]),
        saved_micros=0, cache_status="miss" if held["kind"] == "chat" else "bypass", latency_ms=0, attempts=0,
        unsettled=True, source=str(held.get("source", "")),
    )
    lines = [BudgetLine(str(key), int(limit), "", float(resets_at)) for key, limit, resets_at in held["lines"]]
    return entry, lines
