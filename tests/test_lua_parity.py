"""The same arithmetic written twice must decide the same: token buckets and budget reservations
are pure Python (``limiter.py``, ``budget.py``) and are restated in Lua for Redis
(``stores/lua/_request.lua``) and applied by SQLite in Python. Hypothesis drives every store and
the pure functions with the same random sequences and asserts the same decisions.

(The breaker has its own random walk in ``test_store_contract.py``.)
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy_core import budget, limiter
from proxy_core.budget import BudgetLine
from proxy_core.clock import ManualClock
from proxy_core.limiter import Bucket, BucketState
from proxy_core.stores.base import BucketSpec, LedgerEntry, Store

# Each example works on fresh keys: the store (a function-scoped fixture) is shared by examples.
_fresh = itertools.count()
_RUNS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

BUCKETS = (Bucket(rate=2.0, burst=5.0), Bucket(rate=50.0, burst=300.0))


@dataclass(frozen=True)
class Take:
    wait_s: float
    costs: tuple[float, float]


takes = st.lists(
    st.builds(
        Take,
        wait_s=st.sampled_from((0.0, 0.0, 0.1, 0.5, 1.0, 2.5, 10.0)),
        costs=st.tuples(st.sampled_from((0.0, 1.0, 2.0, 7.0)), st.sampled_from((0.0, 10.0, 90.0, 400.0))),
    ),
    min_size=1,
    max_size=30,
)


@_RUNS
@given(sequence=takes)
def test_buckets_decide_alike_in_python_and_in_the_store(store: Store, clock: ManualClock,
                                                         sequence: list[Take]) -> None:
    n = next(_fresh)
    keys = (f"user:U{n}:requests", f"user:U{n}:tokens")
    states: list[BucketState | None] = [None, None]
    for step in sequence:
        clock.advance(step.wait_s)
        want = limiter.take(BUCKETS, states, step.costs, clock())
        if want.allowed and any(c > 0 for c in step.costs):
            states = list(want.states)
        specs = [BucketSpec(key, bucket, cost) for key, bucket, cost in zip(keys, BUCKETS, step.costs, strict=True)]
        got = store.take_tokens("T1", specs)
        assert (got.allowed, got.blocking) == (want.allowed, want.blocking), step
        assert got.retry_after == pytest.approx(want.retry_after), step
        assert got.remaining == pytest.approx(want.remaining), step


@dataclass(frozen=True)
class Move:
    op: str  # "admit", "settle" (the oldest held reservation) or "release" (the newest)
    amount: int
    cost: int


moves = st.lists(
    st.builds(Move, op=st.sampled_from(("admit", "admit", "settle", "release")),
              amount=st.integers(min_value=1, max_value=400), cost=st.integers(min_value=0, max_value=400)),
    min_size=1,
    max_size=25,
)


@_RUNS
@given(sequence=moves, user_cap=st.sampled_from((0, 500, 1_000)), workspace_cap=st.sampled_from((0, 800, 2_000)))
def test_budgets_decide_alike_in_python_and_in_the_store(store: Store, clock: ManualClock, sequence: list[Move],
                                                         user_cap: int, workspace_cap: int) -> None:
    n = next(_fresh)
    lines = [BudgetLine(f"user:U{n}:day:x", user_cap, "daily", clock() + 86_400),
             BudgetLine(f"workspace:{n}:month:x", workspace_cap, "workspace monthly", clock() + 86_400)]
    spent = [0, 0]
    outstanding: list[tuple[str, int]] = []  # (reservation id, amount), oldest first
    for i, move in enumerate(sequence):
        if move.op == "admit":
            refusing = next((j for j, line in enumerate(lines)
                             if not budget.fits(spent[j], sum(a for _, a in outstanding) if line.limit else 0,
                                                move.amount, line.limit)), None)
            admission = store.admit("T1", f"r{n}-{i}", ttl_s=60, buckets=[], lines=lines, amount=move.amount,
                                    breaker=None)
            if refusing is None:
                assert admission.state == "admitted", (i, move)
                outstanding.append((f"r{n}-{i}", move.amount))
            else:
                assert admission.state == "over_budget", (i, move)
                assert admission.budget is not None and admission.budget.line == lines[refusing]
        elif move.op == "settle" and outstanding:
            request_id, _ = outstanding.pop(0)
            entry = _entry(request_id, move.cost, clock())
            assert store.settle(entry, reservation_id=request_id, lines=lines, result=None, result_ttl_s=60)
            spent = [s + move.cost for s in spent]
        elif move.op == "release" and outstanding:
            request_id, _ = outstanding.pop()
            store.release("T1", request_id, lines)
            store.release_request("T1", request_id)
        reserved = sum(a for _, a in outstanding)
        for j, line in enumerate(lines):
            assert store.spent("T1", line) == (spent[j], reserved if line.limit else 0), (i, move, line.key)


def _entry(request_id: str, cost: int, now: float) -> LedgerEntry:
    return LedgerEntry(
        request_id=request_id, ts=now, day=budget.period_window(now, "day")[0], workspace_id="T1", user_id="U",
        model="m", kind="chat", prompt_tokens=0, cached_prompt_tokens=0, completion_tokens=0, cost_micros=cost,
        saved_micros=0, cache_status="miss", latency_ms=0, attempts=1,
    )
