"""Reserving budget in tests: the one way a store reserves is ``admit`` (claim, rate limit,
reservation, breaker in one step); with no buckets and no breaker it is a plain reservation."""

from __future__ import annotations

from collections.abc import Sequence

from proxy_core.budget import BudgetLine
from proxy_core.stores.base import BudgetDecision, Store


def reserve(store: Store, workspace_id: str, request_id: str, lines: Sequence[BudgetLine], amount: int,
            ttl_s: float) -> BudgetDecision:
    """Claim ``request_id`` and reserve ``amount`` on ``lines``: ``BudgetDecision(True)`` or the refusal."""
    admission = store.admit(workspace_id, request_id, ttl_s=ttl_s, buckets=[], lines=lines, amount=amount,
                            breaker=None)
    if admission.state == "admitted":
        return BudgetDecision(True)
    assert admission.state == "over_budget" and admission.budget is not None, admission.state
    return admission.budget
