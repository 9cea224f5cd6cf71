"""The store contract, run against every backend: SQLite, Redis, Redis Cluster and Redis over TLS.

Time moves only through the shared ManualClock. Concurrency tests use real threads: what they test
is the backend's atomicity, not the pure policies (those are in test_policies.py). SQLite-only
details (URL parsing, schema version, file locking, several processes) are at the end.
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from proxy_core import breaker
from proxy_core.breaker import BreakerPolicy, BreakerState
from proxy_core.budget import BudgetLine, budget_lines
from proxy_core.clock import ManualClock
from proxy_core.errors import ConfigurationError, StoreError
from proxy_core.limiter import Bucket
from proxy_core.stores import store_from_url
from proxy_core.stores.base import (
    Admission,
    BreakerRef,
    BucketSpec,
    BudgetDecision,
    CacheStatus,
    Claim,
    Kind,
    LedgerEntry,
    Record,
    Store,
    UsageSummary,
    UsageTotals,
)
from proxy_core.stores.sqlite import SCHEMA_VERSION, SqliteStore
from tests.budgeting import reserve
from tests.redis_targets import EVERY_BACKEND

WS = "T01"
OTHER_WS = "T02"
DAY1 = "2026-01-01"  # ManualClock starts at 2026-01-01T00:00:00Z
DAY2 = "2026-01-02"


STORES = EVERY_BACKEND  # ``store`` is every backend in turn, Redis Cluster and TLS included (conftest)


def run_threads(n: int, work: Callable[[int], object]) -> list[object]:
    """Run ``work(i)`` on ``n`` real threads released together; re-raise the first failure."""
    barrier = threading.Barrier(n)

    def start(i: int) -> object:
        barrier.wait()
        return work(i)

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(start, range(n)))


# -- idempotency --------------------------------------------------------------------------


def test_first_claim_owns_the_request_and_others_see_it_in_flight(store: Store) -> None:
    assert store.claim_request(WS, "r1", ttl_s=60) == Claim("claimed")
    assert store.claim_request(WS, "r1", ttl_s=60) == Claim("in_flight")


def test_completed_request_returns_its_result_until_it_expires(store: Store, clock: ManualClock) -> None:
    store.claim_request(WS, "r1", ttl_s=60)
    store.complete_request(WS, "r1", '{"answer": 42}', ttl_s=600)

    clock.advance(599)
    assert store.claim_request(WS, "r1", ttl_s=60) == Claim("done", '{"answer": 42}')
    clock.advance(2)
    assert store.claim_request(WS, "r1", ttl_s=60) == Claim("claimed")


def test_claim_of_a_crashed_owner_expires(store: Store, clock: ManualClock) -> None:
    store.claim_request(WS, "r1", ttl_s=30)
    clock.advance(29)
    assert store.claim_request(WS, "r1", ttl_s=30).state == "in_flight"
    clock.advance(2)
    assert store.claim_request(WS, "r1", ttl_s=30).state == "claimed"


def test_completing_a_request_stores_its_records_in_the_same_step(store: Store, clock: ManualClock) -> None:
    store.claim_request(WS, "ev1", ttl_s=60)
    store.complete_request(WS, "ev1", '{"handled": true}', ttl_s=600,
                           records=[Record("threads", "T:C:1", "1", 60), Record("answers", "T:C:2", "{}", 30)])
    assert store.claim_request(WS, "ev1", ttl_s=60) == Claim("done", '{"handled": true}')
    assert store.record_get("threads", "T:C:1") == "1"
    assert store.record_get("answers", "T:C:2") == "{}"
    assert store.cache_get("threads", "T:C:1") is None  # records, not the answer cache
    clock.advance(31)
    assert store.record_get("answers", "T:C:2") is None
    assert store.record_get("threads", "T:C:1") == "1"


def test_record_add_stores_only_where_no_live_record_is(store: Store, clock: ManualClock) -> None:
    assert store.record_add("idem", "k", "busy:a", ttl_s=30) is None
    assert store.record_get("idem", "k") == "busy:a"
    assert store.record_add("idem", "k", "busy:b", ttl_s=30) == "busy:a"  # held: left as it was
    assert store.record_get("idem", "k") == "busy:a"
    assert store.record_add("other", "k", "x", ttl_s=30) is None  # kinds are apart
    clock.advance(31)  # expired: free again
    assert store.record_add("idem", "k", "busy:b", ttl_s=30) is None
    assert store.record_get("idem", "k") == "busy:b"


def test_concurrent_record_adds_store_exactly_once(store: Store) -> None:
    held = run_threads(20, lambda i: store.record_add("idem", "race", f"v{i}", ttl_s=60))
    winners = [i for i, h in enumerate(held) if h is None]
    assert len(winners) == 1
    assert set(held) == {None, f"v{winners[0]}"}
    assert store.record_get("idem", "race") == f"v{winners[0]}"


def test_record_drop_deletes_only_the_value_it_is_given(store: Store, clock: ManualClock) -> None:
    store.record_add("idem", "k", "busy:a", ttl_s=30)
    assert store.record_drop("idem", "k", "busy:b") is False  # someone else's claim stays
    assert store.record_get("idem", "k") == "busy:a"
    assert store.record_drop("idem", "k", "busy:a") is True
    assert store.record_get("idem", "k") is None
    assert store.record_drop("idem", "k", "busy:a") is False
    store.record_put("idem", "k", "done", ttl_s=30)
    assert store.record_drop("idem", "k", "busy:a") is False  # replaced since: left alone
    assert store.record_add("idem", "k", "busy:c", ttl_s=30) == "done"


def test_release_lets_a_retry_claim_again(store: Store) -> None:
    store.claim_request(WS, "r1", ttl_s=60)
    store.release_request(WS, "r1")
    assert store.claim_request(WS, "r1", ttl_s=60).state == "claimed"


def test_claims_are_scoped_by_workspace(store: Store) -> None:
    store.claim_request(WS, "r1", ttl_s=60)
    store.complete_request(WS, "r1", "{}", ttl_s=60)
    assert store.claim_request(OTHER_WS, "r1", ttl_s=60).state == "claimed"
    assert store.claim_request(WS, "r2", ttl_s=60).state == "claimed"


def test_only_one_of_many_concurrent_claims_wins(store: Store) -> None:
    claims = run_threads(20, lambda _: store.claim_request(WS, "r1", ttl_s=60))
    assert [c for c in claims if isinstance(c, Claim) and c.state == "claimed"] == [Claim("claimed")]


# -- rate limiting ------------------------------------------------------------------------

# Rates are powers of two so the refill arithmetic is exact in floating point.
REQUESTS = Bucket(rate=1.0, burst=5.0)
TOKENS = Bucket(rate=0.25, burst=2.0)


def both(cost_requests: float = 1, cost_tokens: float = 1, user: str = "U1") -> list[BucketSpec]:
    return [
        BucketSpec(f"user:{user}:requests", REQUESTS, cost_requests),
        BucketSpec(f"user:{user}:tokens", TOKENS, cost_tokens),
    ]


def test_take_debits_every_bucket(store: Store) -> None:
    decision = store.take_tokens(WS, both())
    assert decision.allowed
    assert decision.retry_after == 0
    assert decision.blocking is None
    assert decision.remaining == pytest.approx((4.0, 1.0))


def test_take_is_all_or_nothing(store: Store) -> None:
    store.take_tokens(WS, both())
    store.take_tokens(WS, both())

    refused = store.take_tokens(WS, both())
    assert not refused.allowed
    assert refused.blocking == 1
    assert refused.retry_after == pytest.approx(4.0)  # 1 token at 0.25/s
    assert refused.remaining == pytest.approx((3.0, 0.0))
    # The requests bucket had room, but was not debited because the tokens bucket refused.
    assert store.take_tokens(WS, both(0, 0)).remaining == pytest.approx((3.0, 0.0))


def test_retry_after_is_exact_and_refill_follows_the_clock(store: Store, clock: ManualClock) -> None:
    store.take_tokens(WS, both(cost_tokens=2))
    clock.advance(1)
    refused = store.take_tokens(WS, both(cost_tokens=1))
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(3.0)  # has 0.25, needs 1, at 0.25/s
    assert refused.remaining == pytest.approx((5.0, 0.25))  # requests bucket refilled to its burst

    clock.advance(3)
    allowed = store.take_tokens(WS, both(cost_tokens=1))
    assert allowed.allowed
    assert allowed.remaining == pytest.approx((4.0, 0.0))


def test_buckets_never_fill_beyond_their_burst(store: Store, clock: ManualClock) -> None:
    store.take_tokens(WS, both())
    clock.advance(3600)
    assert store.take_tokens(WS, both(0, 0)).remaining == pytest.approx((5.0, 2.0))


def test_cost_zero_only_peeks(store: Store) -> None:
    store.take_tokens(WS, both(cost_requests=2, cost_tokens=0))
    for _ in range(3):
        peek = store.take_tokens(WS, both(0, 0))
        assert peek.allowed
        assert peek.remaining == pytest.approx((3.0, 2.0))
    assert store.take_tokens(WS, both(cost_requests=3, cost_tokens=0)).allowed
    assert not store.take_tokens(WS, both(cost_requests=1, cost_tokens=0)).allowed


def test_cost_above_burst_needs_a_full_bucket(store: Store, clock: ManualClock) -> None:
    big = [BucketSpec("user:U1:tokens", TOKENS, 100)]
    assert store.take_tokens(WS, big).allowed
    refused = store.take_tokens(WS, big)
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(8.0)  # the whole burst of 2 at 0.25/s
    clock.advance(8)
    assert store.take_tokens(WS, big).allowed


def test_buckets_are_isolated_by_workspace_and_key(store: Store) -> None:
    store.take_tokens(WS, both(cost_tokens=2, user="U1"))
    assert not store.take_tokens(WS, both(user="U1")).allowed
    assert store.take_tokens(WS, both(user="U2")).remaining == pytest.approx((4.0, 1.0))
    assert store.take_tokens(OTHER_WS, both(user="U1")).remaining == pytest.approx((4.0, 1.0))


def test_concurrent_takes_never_overdraw(store: Store) -> None:
    spec = [BucketSpec("user:U1:requests", Bucket(rate=1 / 1024, burst=20.0), 1)]
    decisions = run_threads(50, lambda _: store.take_tokens(WS, spec).allowed)
    assert decisions.count(True) == 20


# -- budgets ------------------------------------------------------------------------------


def lines_for(store: Store, *, user_daily: int, workspace_monthly: int, user: str = "U1") -> list[BudgetLine]:
    return budget_lines(WS, user, store.now(), user_daily=user_daily, workspace_monthly=workspace_monthly)


def ledger_entry(
    request_id: str,
    *,
    workspace_id: str = WS,
    user_id: str = "U1",
    model: str = "gpt-4o-mini",
    day: str = DAY1,
    kind: Kind = "chat",
    cache_status: CacheStatus = "miss",
    prompt_tokens: int = 0,
    cached_prompt_tokens: int = 0,
    completion_tokens: int = 0,
    cost_micros: int = 0,
    saved_micros: int = 0,
) -> LedgerEntry:
    midnight = {"2025-12-31": -86_400.0, DAY1: 0.0, DAY2: 86_400.0, "2026-01-03": 172_800.0}[day]
    return LedgerEntry(
        request_id=request_id,
        ts=1_767_225_600.0 + midnight + 3_723.25,
        day=day,
        workspace_id=workspace_id,
        user_id=user_id,
        model=model,
        kind=kind,
        prompt_tokens=prompt_tokens,
        cached_prompt_tokens=cached_prompt_tokens,
        completion_tokens=completion_tokens,
        cost_micros=cost_micros,
        saved_micros=saved_micros,
        cache_status=cache_status,
        latency_ms=812,
        attempts=1,
    )


def settle(store: Store, entry: LedgerEntry, lines: list[BudgetLine], reservation_id: str | None = None) -> bool:
    return store.settle(entry, reservation_id=reservation_id, lines=lines, result=None, result_ttl_s=60)


def test_reservation_counts_on_every_line(store: Store) -> None:
    lines = lines_for(store, user_daily=1_000, workspace_monthly=10_000)
    assert reserve(store, WS, "res1", lines, 300, ttl_s=60) == BudgetDecision(True)
    assert [store.spent(WS, line) for line in lines] == [(0, 300), (0, 300)]


def test_refusal_names_the_first_failing_line_and_writes_nothing(store: Store) -> None:
    lines = lines_for(store, user_daily=1_000, workspace_monthly=500)
    assert reserve(store, WS, "res1", lines, 400, ttl_s=60).ok

    refused = reserve(store, WS, "res2", lines, 200, ttl_s=60)
    assert refused == BudgetDecision(False, lines[1], spent=0, reserved=400)
    assert [store.spent(WS, line) for line in lines] == [(0, 400), (0, 400)]

    tight_user = lines_for(store, user_daily=300, workspace_monthly=500)
    assert reserve(store, WS, "res3", tight_user, 301, ttl_s=60) == BudgetDecision(
        False, tight_user[0], spent=0, reserved=400
    )


def test_refusal_reports_spent_and_reserved_separately(store: Store) -> None:
    lines = lines_for(store, user_daily=1_000, workspace_monthly=0)
    settle(store, ledger_entry("done1", cost_micros=250), lines)
    assert reserve(store, WS, "res1", lines, 600, ttl_s=60).ok

    assert reserve(store, WS, "res2", lines, 151, ttl_s=60) == BudgetDecision(False, lines[0], spent=250, reserved=600)
    assert reserve(store, WS, "res3", lines, 150, ttl_s=60).ok  # exactly at the cap fits


def test_a_call_that_costs_nothing_fits_even_over_a_lowered_budget(store: Store) -> None:
    # $900 spent, then the operator lowers the day to $500: a model priced at $0 costs nothing, so
    # it fits, as it did when the spend was exactly at the cap; a micro-dollar more does not.
    spent = lines_for(store, user_daily=1_000, workspace_monthly=0)
    settle(store, ledger_entry("done1", cost_micros=900), spent)
    lowered = lines_for(store, user_daily=500, workspace_monthly=0)
    assert reserve(store, WS, "free", lowered, 0, ttl_s=60).ok
    assert admit(store, "free-call", lowered, 0).state == "admitted"
    assert reserve(store, WS, "paid", lowered, 1, ttl_s=60) == BudgetDecision(False, lowered[0], spent=900,
                                                                              reserved=0)


def test_uncapped_lines_hold_no_reservation_but_count_what_is_spent(store: Store) -> None:
    lines = lines_for(store, user_daily=2_000, workspace_monthly=0)  # a capped day, an uncapped month
    assert reserve(store, WS, "res1", lines, 1_500, ttl_s=60).ok
    assert [store.spent(WS, line) for line in lines] == [(0, 1_500), (0, 0)]  # nothing to protect on the month
    assert settle(store, ledger_entry("res1", cost_micros=400), lines, reservation_id="res1")
    assert [store.spent(WS, line) for line in lines] == [(400, 0), (400, 0)]
    store.release(WS, "res1", lines)  # nothing left to release, on either line
    assert [store.spent(WS, line) for line in lines] == [(400, 0), (400, 0)]


def test_reservations_of_a_crashed_process_expire(store: Store, clock: ManualClock) -> None:
    lines = lines_for(store, user_daily=1_000, workspace_monthly=0)
    reserve(store, WS, "res1", lines, 800, ttl_s=30)
    assert not reserve(store, WS, "res2", lines, 300, ttl_s=30).ok

    clock.advance(31)
    assert store.spent(WS, lines[0]) == (0, 0)
    assert reserve(store, WS, "res2", lines, 300, ttl_s=30).ok
    assert store.spent(WS, lines[0]) == (0, 300)


def test_release_drops_a_reservation(store: Store) -> None:
    lines = lines_for(store, user_daily=1_000, workspace_monthly=0)
    reserve(store, WS, "res1", lines, 1_000, ttl_s=60)
    store.release(WS, "res1", lines)
    assert store.spent(WS, lines[0]) == (0, 0)
    assert reserve(store, WS, "res2", lines, 1_000, ttl_s=60).ok


def test_budgets_are_scoped_by_workspace(store: Store) -> None:
    lines = lines_for(store, user_daily=1_000, workspace_monthly=0)
    reserve(store, WS, "res1", lines, 1_000, ttl_s=60)
    assert reserve(store, OTHER_WS, "res1", lines, 1_000, ttl_s=60).ok
    assert store.spent(OTHER_WS, lines[0]) == (0, 1_000)


def test_settle_spends_once_and_completes_the_request(store: Store) -> None:
    lines = lines_for(store, user_daily=1_000, workspace_monthly=5_000)
    reserve(store, WS, "req1", lines, 500, ttl_s=60)
    entry = ledger_entry("req1", cost_micros=320, prompt_tokens=1_200, completion_tokens=80)

    assert store.settle(entry, reservation_id="req1", lines=lines, result='{"text": "hi"}', result_ttl_s=600)
    assert [store.spent(WS, line) for line in lines] == [(320, 0), (320, 0)]
    assert store.ledger_entry(WS, "req1") == entry
    assert store.claim_request(WS, "req1", ttl_s=60) == Claim("done", '{"text": "hi"}')

    again = store.settle(entry, reservation_id="req1", lines=lines, result='{"text": "hi"}', result_ttl_s=600)
    assert again is False
    assert [store.spent(WS, line) for line in lines] == [(320, 0), (320, 0)]
    assert store.usage(WS, DAY1, DAY1).totals.requests == 1


def test_settle_without_reservation_or_result(store: Store) -> None:
    lines = lines_for(store, user_daily=1_000, workspace_monthly=0)
    assert settle(store, ledger_entry("req1", cost_micros=70), lines)
    assert settle(store, ledger_entry("req2", cost_micros=30), lines)
    assert store.spent(WS, lines[0]) == (100, 0)
    assert store.claim_request(WS, "req1", ttl_s=60).state == "claimed"  # no result was recorded


def test_concurrent_reservations_never_exceed_the_cap(store: Store) -> None:
    lines = lines_for(store, user_daily=0, workspace_monthly=100)
    decisions = run_threads(50, lambda i: reserve(store, WS, f"res{i}", lines, 10, ttl_s=60).ok)
    assert decisions.count(True) == 10
    assert store.spent(WS, lines[1]) == (0, 100)
    assert store.spent(WS, lines[0]) == (0, 0)  # uncapped: nothing reserved there


def test_concurrent_settles_of_one_request_count_once(store: Store) -> None:
    lines = lines_for(store, user_daily=0, workspace_monthly=0)
    entry = ledger_entry("req1", cost_micros=999)
    written = run_threads(20, lambda _: settle(store, entry, lines))
    assert written.count(True) == 1
    assert store.spent(WS, lines[0]) == (999, 0)


def test_record_hit_claims_settles_and_completes_in_one_step(store: Store) -> None:
    entry = ledger_entry("hit1", cost_micros=0, saved_micros=120, cache_status="exact")
    assert store.record_hit(entry, result='{"text": "cached"}', result_ttl_s=600) == Claim("claimed")
    assert store.ledger_entry(WS, "hit1") == entry
    assert store.claim_request(WS, "hit1", ttl_s=60) == Claim("done", '{"text": "cached"}')
    # The same request again is a replay: nothing more is written.
    assert store.record_hit(entry, result='{"text": "other"}', result_ttl_s=600) == Claim("done", '{"text": "cached"}')
    assert store.usage(WS, DAY1, DAY1).totals.requests == 1


def test_record_hit_leaves_a_request_held_by_someone_else_alone(store: Store) -> None:
    store.claim_request(WS, "busy", ttl_s=60)
    entry = ledger_entry("busy", cost_micros=0, saved_micros=5, cache_status="exact")
    assert store.record_hit(entry, result="{}", result_ttl_s=600) == Claim("in_flight")
    assert store.ledger_entry(WS, "busy") is None


def test_record_hit_of_an_expired_result_does_not_count_twice(store: Store, clock: ManualClock) -> None:
    entry = ledger_entry("hit1", cost_micros=0, saved_micros=7, cache_status="exact")
    store.record_hit(entry, result="{}", result_ttl_s=10)
    clock.advance(11)  # the recorded result is gone, the ledger entry stays
    assert store.record_hit(entry, result="{}", result_ttl_s=10) == Claim("claimed")
    assert store.usage(WS, DAY1, DAY1).totals.requests == 1


def test_concurrent_record_hits_of_one_request_write_once(store: Store) -> None:
    entry = ledger_entry("hit1", cost_micros=0, saved_micros=9, cache_status="exact")
    claims = run_threads(20, lambda i: store.record_hit(entry, result=f'"{i}"', result_ttl_s=600))
    assert [c.state for c in claims if isinstance(c, Claim)].count("claimed") == 1
    assert store.usage(WS, DAY1, DAY1).totals.saved_micros == 9


# -- admission: claim, limits, budget and breaker in one step -------------------------------

ADMIT_POLICY = BreakerPolicy(failure_threshold=2, failure_ratio=0.5, min_calls=20, window_s=60, cooldown_s=30)
OPENAI = BreakerRef("openai", ADMIT_POLICY)


def admit(
    store: Store, request_id: str, lines: list[BudgetLine], amount: int, *, rate: float = 1.0, burst: float = 2,
    breaker: BreakerRef | None = OPENAI, ttl_s: float = 60,
) -> Admission:
    buckets = [BucketSpec("user:U1:requests", Bucket(rate=rate, burst=burst), 1)]
    return store.admit(WS, request_id, ttl_s=ttl_s, buckets=buckets, lines=lines, amount=amount, breaker=breaker)


def test_admit_claims_takes_and_reserves(store: Store) -> None:
    lines = lines_for(store, user_daily=1_000, workspace_monthly=0)
    admitted = admit(store, "r1", lines, 300)
    assert admitted.state == "admitted"
    assert admitted.limit is not None and admitted.limit.remaining == (1.0,)
    assert admitted.permit is not None and (admitted.permit.allowed, admitted.permit.state) == (True, "closed")
    assert store.claim_request(WS, "r1", ttl_s=60) == Claim("in_flight")
    assert store.spent(WS, lines[0]) == (0, 300)

    entry = ledger_entry("r1", cost_micros=120)
    assert store.settle(entry, reservation_id="r1", lines=lines, result='"ok"', result_ttl_s=600,
                        breaker=BreakerRef("openai", ADMIT_POLICY))
    assert store.spent(WS, lines[0]) == (120, 0)
    assert admit(store, "r1", lines, 300) == Admission("done", result='"ok"')


def test_admit_of_a_held_request_takes_nothing(store: Store) -> None:
    lines = lines_for(store, user_daily=1_000, workspace_monthly=0)
    assert admit(store, "r1", lines, 300).state == "admitted"
    assert admit(store, "r1", lines, 300) == Admission("in_flight")
    assert store.take_tokens(WS, [BucketSpec("user:U1:requests", Bucket(rate=1.0, burst=2), 0)]).remaining == (1.0,)
    assert store.spent(WS, lines[0]) == (0, 300)


def test_admit_refused_by_the_limiter_holds_nothing(store: Store) -> None:
    lines = lines_for(store, user_daily=1_000, workspace_monthly=0)
    assert admit(store, "r1", lines, 10).state == "admitted"
    assert admit(store, "r2", lines, 10).state == "admitted"
    refused = admit(store, "r3", lines, 10)
    assert refused.state == "rate_limited"
    assert refused.limit is not None and refused.limit.retry_after == pytest.approx(1.0)
    assert store.claim_request(WS, "r3", ttl_s=60) == Claim("claimed")  # no claim was left behind
    assert store.spent(WS, lines[0]) == (0, 20)


def test_admit_refused_by_the_budget_takes_no_tokens(store: Store) -> None:
    lines = lines_for(store, user_daily=100, workspace_monthly=0)
    refused = admit(store, "r1", lines, 101)
    assert refused == Admission("over_budget", budget=BudgetDecision(False, lines[0], spent=0, reserved=0))
    assert store.take_tokens(WS, [BucketSpec("user:U1:requests", Bucket(rate=1.0, burst=2), 0)]).remaining == (2.0,)
    assert store.claim_request(WS, "r1", ttl_s=60) == Claim("claimed")


def test_admit_refused_by_an_open_breaker_holds_only_the_tokens(store: Store, clock: ManualClock) -> None:
    lines = lines_for(store, user_daily=1_000, workspace_monthly=0)
    fail(store, 2, policy=ADMIT_POLICY)
    refused = admit(store, "r1", lines, 300, burst=5)
    assert refused.state == "circuit_open"
    assert refused.permit is not None and refused.permit.retry_after == pytest.approx(30)
    assert store.spent(WS, lines[0]) == (0, 0)
    assert store.claim_request(WS, "r1", ttl_s=60) == Claim("claimed")
    peek = store.take_tokens(WS, [BucketSpec("user:U1:requests", Bucket(rate=1.0, burst=5), 0)])
    assert peek.remaining == (4.0,)


def test_admit_after_the_cooldown_takes_the_single_probe(store: Store, clock: ManualClock) -> None:
    lines = lines_for(store, user_daily=1_000, workspace_monthly=0)
    fail(store, 2, policy=ADMIT_POLICY)
    clock.advance(30)
    probe = admit(store, "r1", lines, 1, burst=5)
    assert probe.state == "admitted"
    assert probe.permit is not None and (probe.permit.probe, probe.permit.state) == (True, "half_open")
    other = admit(store, "r2", lines, 1, burst=5)
    assert other.state == "circuit_open"
    assert store.spent(WS, lines[0]) == (0, 1)  # only the probe holds a reservation


def test_admit_without_buckets_lines_or_breaker(store: Store) -> None:
    admitted = store.admit(WS, "r1", ttl_s=60, buckets=[], lines=[], amount=5, breaker=None)
    assert admitted == Admission("admitted")
    assert store.claim_request(WS, "r1", ttl_s=60) == Claim("in_flight")


def test_admission_ttl_frees_a_crashed_request(store: Store, clock: ManualClock) -> None:
    lines = lines_for(store, user_daily=100, workspace_monthly=0)
    assert admit(store, "r1", lines, 100, ttl_s=30).state == "admitted"
    assert admit(store, "r2", lines, 1, ttl_s=30).state == "over_budget"
    clock.advance(31)
    assert admit(store, "r1", lines, 100, ttl_s=30).state == "admitted"


def test_concurrent_admits_never_exceed_the_budget_or_claim_twice(store: Store) -> None:
    lines = lines_for(store, user_daily=0, workspace_monthly=100)
    outcomes = run_threads(
        40, lambda i: admit(store, f"r{i % 20}", lines, 10, rate=0, burst=1_000).state
    )
    assert outcomes.count("admitted") == 10
    assert store.spent(WS, lines[1]) == (0, 100)


def test_settle_records_a_success_on_the_breaker(store: Store) -> None:
    fail(store, 1, policy=ADMIT_POLICY)
    assert store.breaker_state("openai").consecutive_failures == 1
    settle_with = store.settle(ledger_entry("ok1", cost_micros=1), reservation_id=None, lines=[], result=None,
                               result_ttl_s=60, breaker=BreakerRef("openai", ADMIT_POLICY))
    assert settle_with
    state = store.breaker_state("openai")
    assert (state.consecutive_failures, state.window_calls) == (0, 2)


# -- circuit breaker ----------------------------------------------------------------------

POLICY = BreakerPolicy(failure_threshold=5, failure_ratio=0.5, min_calls=20, window_s=60, cooldown_s=30)


def fail(store: Store, times: int, name: str = "openai", policy: BreakerPolicy = POLICY) -> BreakerState:
    state = store.breaker_state(name)
    for _ in range(times):
        state = store.breaker_record(name, policy, success=False)
    return state


def test_breaker_starts_closed(store: Store) -> None:
    assert store.breaker_state("openai") == BreakerState()
    permit = store.breaker_acquire("openai", POLICY)
    assert (permit.allowed, permit.probe, permit.state) == (True, False, "closed")


def test_breaker_opens_after_five_consecutive_failures(store: Store, clock: ManualClock) -> None:
    assert fail(store, 4).state == "closed"
    assert store.breaker_acquire("openai", POLICY).allowed

    opened = fail(store, 1)
    assert opened.state == "open"
    assert opened.opened_at == clock()
    assert store.breaker_state("openai") == opened

    refused = store.breaker_acquire("openai", POLICY)
    assert (refused.allowed, refused.state) == (False, "open")
    assert refused.retry_after == pytest.approx(30)
    clock.advance(10)
    assert store.breaker_acquire("openai", POLICY).retry_after == pytest.approx(20)


def test_a_success_resets_the_consecutive_count(store: Store) -> None:
    fail(store, 4)
    store.breaker_record("openai", POLICY, success=True)
    assert fail(store, 4).state == "closed"


def test_after_cooldown_a_single_probe_goes_through(store: Store, clock: ManualClock) -> None:
    fail(store, 5)
    clock.advance(30)
    probe = store.breaker_acquire("openai", POLICY)
    assert (probe.allowed, probe.probe, probe.state) == (True, True, "half_open")

    other = store.breaker_acquire("openai", POLICY)
    assert (other.allowed, other.state) == (False, "half_open")
    assert other.retry_after == pytest.approx(POLICY.probe_timeout_s)


def test_probe_success_closes_the_breaker(store: Store, clock: ManualClock) -> None:
    fail(store, 5)
    clock.advance(30)
    store.breaker_acquire("openai", POLICY)
    assert store.breaker_record("openai", POLICY, success=True).state == "closed"
    permit = store.breaker_acquire("openai", POLICY)
    assert (permit.allowed, permit.probe) == (True, False)


def test_each_failed_probe_reopens_for_twice_the_cooldown_up_to_the_cap(
    store: Store, open_twin: Callable[[], Store], clock: ManualClock
) -> None:
    policy = replace(POLICY, max_cooldown_s=100)
    twin = open_twin()  # another replica sees the same backoff
    fail(store, 5, policy=policy)
    waits = []
    for failed_probes in range(1, 5):
        wait = store.breaker_acquire("openai", policy).retry_after
        waits.append(wait)
        clock.advance(wait)
        assert store.breaker_acquire("openai", policy).probe
        reopened = store.breaker_record("openai", policy, success=False)
        assert (reopened.state, reopened.opened_at, reopened.failed_probes) == ("open", clock(), failed_probes)
        assert twin.breaker_state("openai") == reopened
    assert waits == [30, 60, 100, 100]
    assert twin.breaker_acquire("openai", policy).retry_after == 100
    # A successful probe closes it and resets the backoff for everyone.
    clock.advance(100)
    assert twin.breaker_acquire("openai", policy).probe
    assert twin.breaker_record("openai", policy, success=True) == BreakerState(window_start=clock())
    fail(store, 5, policy=policy)
    assert twin.breaker_acquire("openai", policy).retry_after == 30


def test_a_streak_is_weighed_against_the_callers_attempts_in_flight(store: Store) -> None:
    for pending in (49, 48, 47, 46, 45):
        state = store.breaker_record("openai", POLICY, success=False, pending=pending)
    assert (state.state, state.consecutive_failures) == ("closed", 5)  # 5 failures, 45 calls may still succeed
    for pending in range(44, 25, -1):
        state = store.breaker_record("openai", POLICY, success=False, pending=pending)
        assert state.state == "closed"
    # The 25th failure in a row is as many as the 25 still in flight (and half of all 50).
    assert store.breaker_record("openai", POLICY, success=False, pending=25).state == "open"


def test_calls_in_flight_count_as_not_failed_in_the_ratio(store: Store) -> None:
    policy = BreakerPolicy(failure_threshold=100, failure_ratio=0.5, min_calls=10, window_s=60)
    for _ in range(4):
        store.breaker_record("openai", policy, success=True)
        store.breaker_record("openai", policy, success=False)
    store.breaker_record("openai", policy, success=True)
    assert store.breaker_record("openai", policy, success=False, pending=1).state == "closed"  # 5 of 10 + 1
    assert store.breaker_record("openai", policy, success=False, pending=0).state == "open"  # 6 of 11


@pytest.mark.parametrize("seed", range(4))
def test_the_store_makes_the_pure_functions_decisions(store: Store, clock: ManualClock, seed: int) -> None:
    """The same random walk through acquire / record (with pending) / time, applied by the store
    (SQLite in Python, Redis in Lua) and by ``proxy_core.breaker`` directly, gives the same permits
    and the same state after every step."""
    rng = random.Random(seed)
    policy = BreakerPolicy(failure_threshold=3, failure_ratio=0.5, min_calls=6, window_s=20, cooldown_s=4,
                           probe_timeout_s=7, max_cooldown_s=20)
    expected = BreakerState()
    seen: set[tuple[str, int]] = set()
    for step in range(400):
        now = clock()
        roll = rng.random()
        if roll < 0.3:
            expected, want = breaker.acquire(expected, policy, now)
            got = store.breaker_acquire("openai", policy)
            assert (got.allowed, got.probe, got.state) == (want.allowed, want.probe, want.state), step
            assert got.retry_after == pytest.approx(want.retry_after), step
        elif roll < 0.8:
            success, pending = rng.random() < 0.4, rng.choice((0, 0, 1, 2, 4, 8))
            expected = breaker.record(expected, policy, now, success=success, pending=pending)
            assert store.breaker_record("openai", policy, success=success, pending=pending) == expected, step
        else:
            clock.advance(rng.choice((0.5, 1.0, 3.0, 4.0, 9.0)))
        assert store.breaker_state("openai") == expected, step
        seen.add((expected.state, min(expected.failed_probes, 2)))
    # The walk went through every state, and backed off more than once.
    assert {("closed", 0), ("open", 0), ("half_open", 0), ("open", 2)} <= seen


def test_a_vanished_probe_stops_blocking_after_its_timeout(store: Store, clock: ManualClock) -> None:
    fail(store, 5)
    clock.advance(30)
    store.breaker_acquire("openai", POLICY)
    clock.advance(POLICY.probe_timeout_s)
    assert store.breaker_acquire("openai", POLICY).probe


def test_breaker_trips_on_failure_ratio(store: Store) -> None:
    policy = BreakerPolicy(failure_threshold=100, failure_ratio=0.5, min_calls=10, window_s=60)
    for _ in range(4):
        store.breaker_record("openai", policy, success=True)
        store.breaker_record("openai", policy, success=False)
    store.breaker_record("openai", policy, success=True)
    assert store.breaker_state("openai").state == "closed"  # 4 failures in 9 calls, under min_calls
    assert store.breaker_record("openai", policy, success=False).state == "open"  # 5 of 10


def test_breakers_are_isolated_by_name(store: Store) -> None:
    fail(store, 5, name="openai")
    assert store.breaker_state("anthropic") == BreakerState()
    assert store.breaker_acquire("anthropic", POLICY).allowed


def test_two_store_instances_share_one_breaker(
    store: Store, open_twin: Callable[[], Store], clock: ManualClock
) -> None:
    twin = open_twin()
    fail(store, 5)
    assert twin.breaker_state("openai").state == "open"
    assert not twin.breaker_acquire("openai", POLICY).allowed

    clock.advance(30)
    assert twin.breaker_acquire("openai", POLICY).probe
    assert not store.breaker_acquire("openai", POLICY).allowed  # one probe across replicas
    twin.breaker_record("openai", POLICY, success=True)
    assert store.breaker_state("openai").state == "closed"


def test_concurrent_acquires_admit_one_probe(store: Store, clock: ManualClock) -> None:
    fail(store, 5)
    clock.advance(30)
    permits = run_threads(20, lambda _: store.breaker_acquire("openai", POLICY).probe)
    assert permits.count(True) == 1


# -- exact cache --------------------------------------------------------------------------


def test_cache_miss_put_hit_overwrite(store: Store) -> None:
    assert store.cache_get("answers", "k1") is None
    store.cache_put("answers", "k1", '{"v": 1}', ttl_s=60)
    assert store.cache_get("answers", "k1") == '{"v": 1}'
    store.cache_put("answers", "k1", '{"v": 2}', ttl_s=60)
    assert store.cache_get("answers", "k1") == '{"v": 2}'


def test_cache_entries_expire(store: Store, clock: ManualClock) -> None:
    store.cache_put("answers", "k1", "v", ttl_s=60)
    clock.advance(59)
    assert store.cache_get("answers", "k1") == "v"
    clock.advance(2)
    assert store.cache_get("answers", "k1") is None


def test_cache_delete_one_key(store: Store) -> None:
    store.cache_put("answers", "k1", "v1", ttl_s=60)
    store.cache_put("answers", "k2", "v2", ttl_s=60)
    assert store.cache_delete("answers", "k1") == 1
    assert store.cache_get("answers", "k1") is None
    assert store.cache_get("answers", "k2") == "v2"
    assert store.cache_delete("answers", "k1") == 0


def test_cache_delete_a_whole_scope(store: Store) -> None:
    store.cache_put("answers", "k1", "v1", ttl_s=60)
    store.cache_put("answers", "k2", "v2", ttl_s=60)
    store.cache_put("embeddings", "k1", "e1", ttl_s=60)
    assert store.cache_delete("answers") == 2
    assert store.cache_get("answers", "k2") is None
    assert store.cache_get("embeddings", "k1") == "e1"
    assert store.cache_delete("answers") == 0


def test_a_cache_put_stores_its_records_in_the_same_step(store: Store, clock: ManualClock) -> None:
    store.cache_put("answers", "k1", "v1", ttl_s=60, records=[Record("cache:where", "e1", "answers/k1", 60)])
    assert store.cache_get("answers", "k1") == "v1"
    assert store.record_get("cache:where", "e1") == "answers/k1"
    assert store.cache_get("cache:where", "e1") is None  # a record, not an answer
    clock.advance(61)
    assert store.record_get("cache:where", "e1") is None


def test_cache_drop_deletes_only_the_value_it_is_given(store: Store, clock: ManualClock) -> None:
    store.cache_put("answers", "k1", "old", ttl_s=60)
    store.cache_put("answers", "k1", "new", ttl_s=60)
    assert store.cache_drop("answers", "k1", "old") is False  # replaced since: the newer one stays
    assert store.cache_get("answers", "k1") == "new"
    assert store.cache_drop("answers", "k1", "new") is True
    assert store.cache_get("answers", "k1") is None
    assert store.cache_drop("answers", "k1", "new") is False
    store.cache_put("answers", "k2", "v", ttl_s=60)
    clock.advance(61)
    assert store.cache_drop("answers", "k2", "v") is False  # expired: already gone to a caller


def test_cache_clear_and_count_span_every_scope_and_leave_records(store: Store) -> None:
    assert store.cache_count() == 0
    store.cache_put("s1", "k1", "v", ttl_s=60, records=[Record("cache:where", "e1", "s1/k1", 60)])
    store.cache_put("s2", "k2", "v", ttl_s=60)
    store.cache_put("s2", "k3", "v", ttl_s=60)
    assert store.cache_count() == 3
    assert store.cache_clear() == 3
    assert store.cache_count() == 0
    assert store.cache_get("s1", "k1") is None and store.cache_get("s2", "k2") is None
    assert store.record_get("cache:where", "e1") == "s1/k1"  # records are not answers


def test_cache_scopes_are_isolated(store: Store) -> None:
    store.cache_put("T01:answers", "k", "one", ttl_s=60)
    store.cache_put("T02:answers", "k", "two", ttl_s=60)
    assert store.cache_get("T01:answers", "k") == "one"
    assert store.cache_get("T02:answers", "k") == "two"


# -- ledger -------------------------------------------------------------------------------


def test_ledger_entry_round_trips_exactly(store: Store) -> None:
    entry = ledger_entry(
        "req1",
        kind="embedding",
        cache_status="semantic",
        prompt_tokens=123,
        cached_prompt_tokens=64,
        completion_tokens=7,
        cost_micros=1_234_567,
        saved_micros=89,
    )
    settle(store, entry, [])
    assert store.ledger_entry(WS, "req1") == entry
    assert store.ledger_entry(WS, "nope") is None
    assert store.ledger_entry(OTHER_WS, "req1") is None


def totals(requests: int, hits: int, prompt: int, cached: int, completion: int, cost: int, saved: int, *,
           embeddings: int = 0) -> UsageTotals:
    return UsageTotals(requests, hits, prompt, cached, completion, cost, saved, embeddings=embeddings)


@pytest.fixture
def team_month(store: Store) -> Store:
    """Five entries in range for WS, one a day before it and one in another workspace."""
    for entry in [
        ledger_entry("e1", prompt_tokens=100, completion_tokens=50, cost_micros=1_000),
        ledger_entry("e2", cache_status="exact", saved_micros=900),
        ledger_entry("e3", user_id="U2", model="gpt-4o", cache_status="semantic", cost_micros=20, saved_micros=5_000),
        ledger_entry(
            "e4",
            user_id="U2",
            model="gpt-4o",
            day=DAY2,
            prompt_tokens=400,
            cached_prompt_tokens=200,
            completion_tokens=100,
            cost_micros=3_000,
        ),
        ledger_entry(
            "e5",
            model="text-embedding-3-small",
            kind="embedding",
            day=DAY2,
            cache_status="bypass",
            prompt_tokens=30,
            cost_micros=1,
        ),
        ledger_entry("e6", day="2025-12-31", prompt_tokens=9, cost_micros=7_777),
        ledger_entry("e7", workspace_id=OTHER_WS, prompt_tokens=9, cost_micros=5_555),
    ]:
        assert settle(store, entry, [])
    return store


def test_usage_adds_up_by_user_model_and_day(team_month: Store) -> None:
    usage = team_month.usage(WS, DAY1, DAY2)
    assert usage == UsageSummary(
        totals=totals(5, 2, 530, 200, 150, 4_021, 5_900, embeddings=1),
        by_user={
            "U1": totals(3, 1, 130, 0, 50, 1_001, 900, embeddings=1),
            "U2": totals(2, 1, 400, 200, 100, 3_020, 5_000),
        },
        by_model={
            "gpt-4o-mini": totals(2, 1, 100, 0, 50, 1_000, 900),
            "gpt-4o": totals(2, 1, 400, 200, 100, 3_020, 5_000),
            "text-embedding-3-small": totals(1, 0, 30, 0, 0, 1, 0, embeddings=1),
        },
        by_day={
            DAY1: totals(3, 2, 100, 0, 50, 1_020, 5_900),
            DAY2: totals(2, 0, 430, 200, 100, 3_001, 0, embeddings=1),
        },
    )
    assert usage.totals.questions == 4 and usage.totals.hit_rate == pytest.approx(0.5)  # of questions, not calls


def test_usage_for_one_user(team_month: Store) -> None:
    usage = team_month.usage(WS, DAY1, DAY2, user_id="U2")
    assert usage.totals == totals(2, 1, 400, 200, 100, 3_020, 5_000)
    assert set(usage.by_user) == {"U2"}
    assert set(usage.by_model) == {"gpt-4o"}


def test_usage_day_range_is_inclusive(team_month: Store) -> None:
    assert set(team_month.usage(WS, DAY2, DAY2).by_day) == {DAY2}
    assert team_month.usage(WS, "2025-12-31", DAY1).totals.cost_micros == 7_777 + 1_020
    assert team_month.usage(WS, "2026-02-01", "2026-02-28") == UsageSummary()
    assert team_month.usage(OTHER_WS, DAY1, DAY2).totals.cost_micros == 5_555


# -- durability ---------------------------------------------------------------------------


def test_state_survives_closing_and_reopening(store: Store, open_twin: Callable[[], Store], clock: ManualClock) -> None:
    lines = lines_for(store, user_daily=1_000, workspace_monthly=0)
    reserve(store, WS, "res1", lines, 100, ttl_s=600)
    store.claim_request(WS, "req1", ttl_s=600)
    settle(store, ledger_entry("req0", cost_micros=400), lines)
    store.complete_request(WS, "req0", '{"ok": true}', ttl_s=600)
    store.take_tokens(WS, both(cost_tokens=2))
    fail(store, 5)
    store.cache_put("answers", "k", "v", ttl_s=600)
    store.close()

    again = open_twin()
    assert again.spent(WS, lines[0]) == (400, 100)
    assert again.claim_request(WS, "req1", ttl_s=600).state == "in_flight"
    assert again.claim_request(WS, "req0", ttl_s=600) == Claim("done", '{"ok": true}')
    assert again.usage(WS, DAY1, DAY1).totals.cost_micros == 400
    assert again.take_tokens(WS, both(0, 0)).remaining == pytest.approx((4.0, 0.0))
    assert again.breaker_state("openai").state == "open"
    assert again.cache_get("answers", "k") == "v"


# -- unreachable backends -----------------------------------------------------------------

SECRET = "s3cret-pw"

OPERATIONS: dict[str, Callable[[Store], object]] = {
    "ping": lambda s: s.ping(),
    "claim": lambda s: s.claim_request(WS, "r1", 60),
    "take": lambda s: s.take_tokens(WS, both()),
    "settle": lambda s: settle(s, ledger_entry("r1"), []),
    "admit": lambda s: s.admit(WS, "r1", ttl_s=60, buckets=both(), lines=[], amount=1, breaker=OPENAI),
    "record_hit": lambda s: s.record_hit(ledger_entry("r1"), result="{}", result_ttl_s=60),
    "settle_breaker": lambda s: s.settle(ledger_entry("r1"), reservation_id=None, lines=[], result=None,
                                         result_ttl_s=60, breaker=OPENAI),
    "spent": lambda s: s.spent(WS, BudgetLine("k", 0, "daily", 0.0)),
    "breaker": lambda s: s.breaker_acquire("openai", POLICY),
    "cache": lambda s: s.cache_get("answers", "k"),
    "usage": lambda s: s.usage(WS, DAY1, DAY2),
}


def open_unreachable(backend: str, tmp_path: Path) -> Store:
    if backend == "sqlite":
        blocker = tmp_path / "not-a-directory"
        blocker.write_text("a file where the store's directory should be")
        return SqliteStore(blocker / "penny.db", timeout_s=0.5)
    from proxy_core.stores.redis import RedisStore

    if backend == "redis_cluster":
        return RedisStore.from_url(f"redis+cluster://penny:{SECRET}@127.0.0.1:1,127.0.0.1:2", timeout_s=0.5)
    return RedisStore.from_url(f"redis://:{SECRET}@127.0.0.1:1/0", timeout_s=0.5)


@pytest.mark.parametrize("operation", list(OPERATIONS))
@pytest.mark.parametrize("backend", ["sqlite", "redis", "redis_cluster"])
def test_unreachable_backend_raises_store_error_quickly(backend: str, operation: str, tmp_path: Path) -> None:
    started = time.monotonic()

    def attempt() -> None:
        # Opening may already fail (a client that connects eagerly); either way it is a StoreError.
        unreachable = open_unreachable(backend, tmp_path)
        try:
            OPERATIONS[operation](unreachable)
        finally:
            unreachable.close()

    with pytest.raises(StoreError) as raised:
        attempt()

    assert time.monotonic() - started < 5
    message = str(raised.value)
    assert message
    assert SECRET not in message
    assert "Traceback" not in message


# -- SQLite specifics ---------------------------------------------------------------------


def test_sqlite_creates_directory_and_file_on_first_use(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "penny.db"
    store = SqliteStore(path)
    assert not path.parent.exists()
    store.ping()
    store.close()
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    raw.close()


def test_sqlite_uses_the_wall_clock_by_default(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "penny.db")
    assert abs(store.now() - time.time()) < 5
    store.close()


def test_sqlite_from_url_relative_and_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = SqliteStore.from_url("sqlite:///data/penny.db")
    assert relative.path == Path("data/penny.db")
    relative.ping()
    relative.close()
    assert (tmp_path / "data" / "penny.db").exists()

    absolute = store_from_url(f"sqlite:///{tmp_path}/abs.db")
    assert isinstance(absolute, SqliteStore)
    assert absolute.path == tmp_path / "abs.db"
    absolute.close()


@pytest.mark.parametrize(
    "url", ["sqlite://", "sqlite:///", "sqlite:///:memory:", "sqlite://host/penny.db", "sqlite:///data/"]
)
def test_sqlite_url_without_a_file_path_is_a_configuration_error(url: str) -> None:
    with pytest.raises(ConfigurationError, match="sqlite"):
        SqliteStore.from_url(url)


def test_sqlite_a_breaker_from_before_the_backoff_is_read_and_backs_off(tmp_path: Path, clock: ManualClock) -> None:
    # A file whose breakers table predates failed_probes: the column is added, old rows read as 0.
    path = tmp_path / "penny.db"
    raw = sqlite3.connect(path)
    raw.execute(
        "CREATE TABLE breakers (name TEXT PRIMARY KEY, state TEXT NOT NULL CHECK (state IN ('closed', 'open', "
        "'half_open')), consecutive_failures INTEGER NOT NULL, window_start REAL NOT NULL, window_calls INTEGER "
        "NOT NULL, window_failures INTEGER NOT NULL, opened_at REAL NOT NULL, probe_deadline REAL NOT NULL) "
        "WITHOUT ROWID"
    )
    raw.execute("INSERT INTO breakers VALUES ('openai', 'open', 0, ?, 0, 0, ?, 0)", (clock(), clock()))
    raw.commit()
    raw.close()
    store = SqliteStore(path, clock=clock)
    try:
        assert store.breaker_state("openai") == BreakerState(state="open", window_start=clock(), opened_at=clock())
        clock.advance(30)
        assert store.breaker_acquire("openai", POLICY).probe
        assert store.breaker_record("openai", POLICY, success=False).failed_probes == 1
        assert store.breaker_acquire("openai", POLICY).retry_after == 60
    finally:
        store.close()


def test_sqlite_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "penny.db"
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA user_version = 99")
    raw.close()
    store = SqliteStore(path)
    with pytest.raises(StoreError, match="newer"):
        store.ping()
    store.close()


def test_sqlite_reopening_keeps_the_schema_and_data(tmp_path: Path, clock: ManualClock) -> None:
    for expected in (1, 2, 3):
        store = SqliteStore(tmp_path / "penny.db", clock=clock)
        assert settle(store, ledger_entry(f"r{expected}"), [])
        assert store.usage(WS, DAY1, DAY1).totals.requests == expected
        store.close()


def test_sqlite_a_locked_file_is_a_store_error_after_the_timeout(tmp_path: Path) -> None:
    path = tmp_path / "penny.db"
    store = SqliteStore(path, timeout_s=0.2)
    store.ping()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        with pytest.raises(StoreError, match="locked"):
            store.cache_put("answers", "k", "v", ttl_s=60)
        assert 0.15 < time.monotonic() - started < 3
        assert store.cache_get("answers", "k") is None  # readers are not blocked by the writer (WAL)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    store.cache_put("answers", "k", "v", ttl_s=60)
    store.close()


def test_sqlite_writers_queueing_behind_many_others_wait_their_turn(tmp_path: Path) -> None:
    # 40 threads each hold the writer lock briefly; the queue lasts longer than the timeout, but
    # it keeps moving, so nobody fails (the timeout is for a writer that holds it that long).
    store = SqliteStore(tmp_path / "penny.db", timeout_s=0.2)
    store.ping()
    original = store._translate

    def slow_translate(action: str) -> Any:
        time.sleep(0.02)  # a writer busy inside its transaction (under load: waiting for the GIL)
        return original(action)

    store._translate = slow_translate  # type: ignore[method-assign]
    try:
        results = run_threads(40, lambda i: store.claim_request(WS, f"r{i}", ttl_s=60).state)
        assert results == ["claimed"] * 40
    finally:
        store.close()


def test_sqlite_a_writer_stuck_in_this_process_fails_the_others_after_the_timeout(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "penny.db", timeout_s=0.2)
    store.ping()
    release = threading.Event()
    holding = threading.Event()

    def stuck() -> None:
        with store._write("hold the lock"):
            holding.set()
            release.wait(5)

    holder = threading.Thread(target=stuck)
    holder.start()
    try:
        holding.wait(5)
        started = time.monotonic()
        with pytest.raises(StoreError, match=r"more than 0\.2s"):
            store.claim_request(WS, "r1", ttl_s=60)
        assert 0.15 < time.monotonic() - started < 3
    finally:
        release.set()
        holder.join()
        store.close()


def test_sqlite_a_closed_store_raises_store_error(sqlite_store: SqliteStore) -> None:
    sqlite_store.ping()
    sqlite_store.close()
    with pytest.raises(StoreError, match="closed"):
        sqlite_store.ping()


JAN_1 = 1_767_225_600.0


def _reserve_in_a_process(path: str, worker: int) -> int:
    store = SqliteStore(path, clock=lambda: JAN_1, timeout_s=10)
    lines = budget_lines(WS, "U1", JAN_1, user_daily=0, workspace_monthly=500)
    granted = sum(reserve(store, WS, f"w{worker}-{i}", lines, 10, ttl_s=600).ok for i in range(30))
    store.close()
    return granted


@pytest.mark.slow
def test_sqlite_reservations_from_several_processes_never_exceed_the_cap(tmp_path: Path) -> None:
    import multiprocessing

    path = tmp_path / "penny.db"
    SqliteStore(path).ping()
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        granted = pool.starmap(_reserve_in_a_process, [(str(path), worker) for worker in range(4)])
    assert sum(granted) == 50
    store = SqliteStore(path, clock=lambda: JAN_1)
    lines = budget_lines(WS, "U1", JAN_1, user_daily=0, workspace_monthly=500)
    assert store.spent(WS, lines[1]) == (0, 500)
    store.close()
