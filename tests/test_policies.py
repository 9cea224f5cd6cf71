"""The pure policies (token bucket, circuit breaker, budget arithmetic) as plain functions."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from proxy_core.breaker import BreakerPolicy, BreakerState, Permit, acquire, cooldown, record, should_open
from proxy_core.budget import BudgetLine, budget_lines, fits, period_window
from proxy_core.limiter import Bucket, BucketState, refill, take

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


# -- limiter ------------------------------------------------------------------------------

FAST = Bucket(rate=1.0, burst=4.0)
SLOW = Bucket(rate=0.5, burst=2.0)


def test_per_minute_spreads_the_rate_and_defaults_burst_to_a_minute() -> None:
    assert Bucket.per_minute(120) == Bucket(rate=2.0, burst=120.0)
    assert Bucket.per_minute(60, burst=5) == Bucket(rate=1.0, burst=5.0)


def test_a_new_bucket_is_full() -> None:
    assert refill(None, FAST, T0) == BucketState(4.0, T0)


def test_refill_adds_rate_times_elapsed_up_to_burst() -> None:
    assert refill(BucketState(1.0, T0), FAST, T0 + 2) == BucketState(3.0, T0 + 2)
    assert refill(BucketState(1.0, T0), FAST, T0 + 100) == BucketState(4.0, T0 + 100)


def test_refill_never_runs_time_backwards() -> None:
    assert refill(BucketState(1.0, T0), FAST, T0 - 10) == BucketState(1.0, T0)


def test_take_debits_all_buckets() -> None:
    result = take([FAST, SLOW], [None, None], [1, 2], T0)
    assert result.allowed
    assert result.remaining == (3.0, 0.0)
    assert result.states == (BucketState(3.0, T0), BucketState(0.0, T0))
    assert (result.retry_after, result.blocking) == (0.0, None)


def test_take_refuses_all_when_one_bucket_is_short() -> None:
    states = [BucketState(4.0, T0), BucketState(0.5, T0)]
    result = take([FAST, SLOW], states, [1, 1], T0)
    assert not result.allowed
    assert result.blocking == 1
    assert result.retry_after == 1.0  # 0.5 missing at 0.5/s
    assert result.states == tuple(states)  # nothing debited


def test_retry_after_names_the_bucket_that_needs_longest() -> None:
    states = [BucketState(0.0, T0), BucketState(1.5, T0)]
    result = take([FAST, SLOW], states, [3, 2], T0)
    # FAST needs 3 s for 3 tokens; SLOW needs 1 s for 0.5 tokens.
    assert (result.blocking, result.retry_after) == (0, 3.0)


def test_cost_above_burst_is_capped_so_it_can_pass_eventually() -> None:
    assert take([SLOW], [None], [10], T0).remaining == (0.0,)
    refused = take([SLOW], [BucketState(0.0, T0)], [10], T0)
    assert refused.retry_after == 4.0  # a full bucket: 2 tokens at 0.5/s


def test_a_bucket_that_never_refills_waits_forever() -> None:
    result = take([Bucket(rate=0, burst=1)], [BucketState(0.0, T0)], [1], T0)
    assert not result.allowed
    assert math.isinf(result.retry_after)


def test_cost_zero_always_passes_and_debits_nothing() -> None:
    result = take([FAST], [BucketState(0.0, T0)], [0], T0 + 1)
    assert result.allowed
    assert result.remaining == (1.0,)


def test_take_requires_matching_lengths() -> None:
    with pytest.raises(ValueError):
        take([FAST, SLOW], [None], [1, 1], T0)


# -- breaker ------------------------------------------------------------------------------

POLICY = BreakerPolicy(failure_threshold=3, failure_ratio=0.5, min_calls=6, window_s=60, cooldown_s=30)


def run(state: BreakerState, outcomes: str, now: float = T0) -> BreakerState:
    """Fold outcomes written as 'S' (success) and 'F' (failure) into ``state`` at ``now``."""
    for outcome in outcomes:
        state = record(state, POLICY, now, success=outcome == "S")
    return state


def test_closed_breaker_lets_calls_through_unchanged() -> None:
    state = BreakerState()
    assert acquire(state, POLICY, T0) == (state, Permit(True, False, 0.0, "closed"))


def test_consecutive_failures_open_the_breaker() -> None:
    assert run(BreakerState(), "FF").state == "closed"
    assert run(BreakerState(), "FFF", now=T0 + 5) == BreakerState(state="open", opened_at=T0 + 5, window_start=T0 + 5)


def test_a_success_resets_the_consecutive_count() -> None:
    state = run(BreakerState(window_start=T0), "FFSFF")
    assert state.state == "closed"
    assert (state.consecutive_failures, state.window_calls, state.window_failures) == (2, 5, 4)


def test_failure_ratio_needs_min_calls() -> None:
    state = run(BreakerState(window_start=T0), "SFSFS")
    assert state.state == "closed"  # 2 of 5 calls failed: too few calls to judge
    assert run(state, "F").state == "open"  # 3 of 6 ≥ 0.5


def test_the_ratio_window_starts_afresh() -> None:
    state = run(BreakerState(window_start=T0), "SFSFS")
    later = record(state, POLICY, T0 + 60, success=False)
    assert (later.window_start, later.window_calls, later.window_failures) == (T0 + 60, 1, 1)
    assert later.state == "closed"


def test_open_breaker_refuses_until_cooldown_then_admits_a_probe() -> None:
    opened = run(BreakerState(), "FFF")
    assert acquire(opened, POLICY, T0 + 10) == (opened, Permit(False, False, 20.0, "open"))

    probing, permit = acquire(opened, POLICY, T0 + 30)
    assert permit == Permit(True, True, 0.0, "half_open")
    assert (probing.state, probing.probe_deadline) == ("half_open", T0 + 30 + POLICY.probe_timeout_s)


def test_only_one_probe_until_its_deadline() -> None:
    probing, _ = acquire(run(BreakerState(), "FFF"), POLICY, T0 + 30)
    assert acquire(probing, POLICY, T0 + 40) == (probing, Permit(False, False, 50.0, "half_open"))

    deadline = probing.probe_deadline
    again, permit = acquire(probing, POLICY, deadline)
    assert permit.probe
    assert again.probe_deadline == deadline + POLICY.probe_timeout_s


def test_probe_outcome_closes_or_reopens() -> None:
    probing, _ = acquire(run(BreakerState(), "FFF"), POLICY, T0 + 30)
    assert record(probing, POLICY, T0 + 31, success=True) == BreakerState(window_start=T0 + 31)
    assert record(probing, POLICY, T0 + 31, success=False) == BreakerState(
        state="open", opened_at=T0 + 31, window_start=T0 + 31, failed_probes=1
    )


def test_each_failed_probe_doubles_the_cooldown_up_to_the_cap() -> None:
    policy = BreakerPolicy(failure_threshold=1, cooldown_s=30, max_cooldown_s=300)
    state, now = record(BreakerState(), policy, T0, success=False), T0
    waits = []
    for _ in range(6):
        waits.append(cooldown(state, policy))
        assert acquire(state, policy, now + 1)[1] == Permit(False, False, waits[-1] - 1, "open")
        now += waits[-1]
        state, permit = acquire(state, policy, now)
        assert permit.probe
        state = record(state, policy, now, success=False)
    assert waits == [30, 60, 120, 240, 300, 300]
    assert state.failed_probes == 6
    # A successful probe closes the breaker and forgets the backoff: the next opening waits 30 s.
    state, _ = acquire(state, policy, now + 300)
    closed = record(state, policy, now + 300, success=True)
    assert closed == BreakerState(window_start=now + 300)
    assert cooldown(record(closed, policy, now + 301, success=False), policy) == 30


def test_the_cooldown_cap_never_shortens_the_first_cooldown_nor_overflows() -> None:
    assert cooldown(BreakerState(failed_probes=3), BreakerPolicy(cooldown_s=30, max_cooldown_s=10)) == 30
    assert cooldown(BreakerState(failed_probes=10_000), BreakerPolicy(cooldown_s=30, max_cooldown_s=300)) == 300


# Penny's defaults: 5 in a row, or half of at least 20 calls in a minute.
DEFAULT = BreakerPolicy()


@pytest.mark.parametrize(
    ("consecutive", "pending", "opens"),
    [(4, 0, False), (5, 0, True), (5, 5, True), (5, 6, False), (17, 33, False), (25, 25, True), (26, 24, True)],
)
def test_a_streak_opens_only_when_it_outnumbers_the_calls_still_in_flight(
    consecutive: int, pending: int, opens: bool
) -> None:
    streak_only = replace(DEFAULT, min_calls=1_000)
    state = BreakerState(consecutive_failures=consecutive - 1, window_start=T0, window_calls=consecutive - 1,
                         window_failures=consecutive - 1)
    after = record(state, streak_only, T0, success=False, pending=pending)
    assert after.state == ("open" if opens else "closed")
    assert should_open(streak_only, consecutive=consecutive, calls=consecutive, failures=consecutive,
                       pending=pending) is opens


def test_calls_in_flight_count_as_not_failed_in_the_ratio() -> None:
    ratio_only = replace(DEFAULT, failure_threshold=1_000)
    # 10 failures in 20 calls: half, so it opens, unless one more call is still in flight.
    state = BreakerState(window_start=T0, window_calls=19, window_failures=9)
    assert record(state, ratio_only, T0, success=False).state == "open"
    assert record(state, ratio_only, T0, success=False, pending=1).state == "closed"
    assert not should_open(ratio_only, consecutive=1, calls=19, failures=19, pending=0)  # under min_calls
    assert should_open(ratio_only, consecutive=1, calls=20, failures=15, pending=10)  # 15 ≥ 0.5 × 30


def completions(outcomes: str, in_flight: int, policy: BreakerPolicy = DEFAULT) -> tuple[BreakerState, int]:
    """Record ``outcomes`` ('S'/'F') in completion order for ``in_flight`` attempts sent at once:
    each one's ``pending`` is the others not yet recorded. Returns the state and the number of
    outcomes recorded when it opened (0: it never did)."""
    state = BreakerState(window_start=T0)
    for done, outcome in enumerate(outcomes, start=1):
        state = record(state, policy, T0, success=outcome == "S", pending=in_flight - done)
        if state.state == "open":
            return state, done
    return state, 0


def test_a_brownout_with_fast_failures_first_stays_closed() -> None:
    # 50 questions in flight, 1 in 3 failing fast: the 17 failures complete before any success.
    state, opened_at = completions("F" * 17 + "S" * 33, in_flight=50)
    assert opened_at == 0 and state.state == "closed"
    assert (state.window_calls, state.window_failures, state.consecutive_failures) == (50, 17, 0)
    # The retries of the 17 (their own 1 in 3 failing) keep it closed too.
    assert completions("F" * 6 + "S" * 11, in_flight=17)[1] == 0


def test_an_outage_opens_at_the_threshold_one_call_at_a_time_and_at_half_of_those_in_flight() -> None:
    one_by_one = BreakerState()
    for _ in range(4):
        one_by_one = record(one_by_one, DEFAULT, T0, success=False)
    assert one_by_one.state == "closed"
    assert record(one_by_one, DEFAULT, T0, success=False).state == "open"  # the fifth in a row
    assert completions("F" * 50, in_flight=50)[1] == 25
    assert completions("F" * 8, in_flight=8)[1] == 5  # the threshold still applies


# -- budget -------------------------------------------------------------------------------


def test_day_window() -> None:
    assert period_window(ts("2026-11-27T23:59:59"), "day") == ("2026-11-27", ts("2026-11-28T00:00:00"))
    assert period_window(ts("2026-11-28T00:00:00"), "day") == ("2026-11-28", ts("2026-11-29T00:00:00"))


def test_month_window_including_the_year_end() -> None:
    assert period_window(ts("2026-02-14T12:00:00"), "month") == ("2026-02", ts("2026-03-01T00:00:00"))
    assert period_window(ts("2026-12-31T23:00:00"), "month") == ("2026-12", ts("2027-01-01T00:00:00"))


def test_budget_lines_for_a_user_and_the_workspace() -> None:
    now = ts("2026-03-15T10:00:00")
    assert budget_lines("T1", "U7", now, user_daily=500_000, workspace_monthly=50_000_000) == [
        BudgetLine("user:U7:day:2026-03-15", 500_000, "daily", ts("2026-03-16T00:00:00")),
        BudgetLine("workspace:month:2026-03", 50_000_000, "workspace monthly", ts("2026-04-01T00:00:00")),
    ]


@pytest.mark.parametrize(
    ("spent", "reserved", "amount", "limit", "expected"),
    [
        (0, 0, 100, 100, True),  # exactly at the cap fits
        (50, 40, 11, 100, False),
        (50, 40, 10, 100, True),
        (10**15, 10**15, 10**15, 0, True),  # 0 = no cap
        (1_000, 0, 0, 500, True),  # nothing more to spend fits a budget lowered below its spend
        (1_000, 0, 1, 500, False),
    ],
)
def test_fits(spent: int, reserved: int, amount: int, limit: int, expected: bool) -> None:
    assert fits(spent, reserved, amount, limit) is expected


def test_a_wait_is_rounded_up_to_a_whole_millisecond_so_the_clock_can_reach_it() -> None:
    from proxy_core import limiter

    bucket = limiter.Bucket(rate=10.0, burst=10.0)
    now = 1_767_225_600.123456
    short = limiter.BucketState(tokens=1.0 - 6e-8, updated=now)  # a few millionths short of one token
    decision = limiter.take([bucket], [short], [1.0], now)
    assert not decision.allowed and decision.retry_after == 0.001
    exact = limiter.take([limiter.Bucket(rate=1 / 6, burst=10.0)], [limiter.BucketState(0.3, now)], [1.0], now)
    assert exact.retry_after == 4.2  # float noise does not add a millisecond
