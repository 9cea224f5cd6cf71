"""The retry policy: pure pieces, then composed with tenacity over the fake server on a fake clock."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import tenacity

from proxy_core import breaker
from proxy_core.clock import ManualClock
from proxy_core.errors import (
    CircuitOpen,
    RateLimited,
    StoreError,
    UpstreamError,
    UpstreamRejected,
)
from proxy_core.retry import (
    RetryPolicy,
    backoff,
    build_retrying,
    call_with_retries,
    counts_against_breaker,
    is_retryable,
    next_wait,
)
from proxy_core.upstream import ChatResponse, OpenAIUpstream
from tests.fake_openai import FakeOpenAI, Fault

POLICY = RetryPolicy()
MESSAGES = [{"role": "user", "content": "What does Penny cost?"}]


def one() -> float:
    return 1.0


def half() -> float:
    return 0.5


# -- pure pieces -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "retryable"),
    [
        (UpstreamError("x", kind="status", status=429), True),
        (UpstreamError("x", kind="status", status=500), True),
        (UpstreamError("x", kind="status", status=502), True),
        (UpstreamError("x", kind="status", status=503), True),
        (UpstreamError("x", kind="status", status=504), True),
        (UpstreamError("x", kind="timeout"), True),
        (UpstreamError("x", kind="connection"), True),
        (UpstreamError("x", kind="malformed"), True),
        (UpstreamError("x", kind="status", status=408), False),
        (UpstreamError("x", kind="status", status=409), False),
        (UpstreamError("x", kind="status", status=501), False),
        (UpstreamError("x", kind="status", status=None), False),
        (UpstreamRejected("x", status=400), False),
        (UpstreamRejected("x", status=401), False),
        (UpstreamRejected("x", status=404), False),
        (UpstreamRejected("x", status=422), False),
        (UpstreamRejected("out of quota", status=429), False),
        (CircuitOpen(5.0), False),
        (RateLimited(1.0), False),
        (StoreError("down"), False),
        (TimeoutError(), False),
        (ConnectionError(), False),
        (ValueError(), False),
    ],
)
def test_is_retryable(exc: BaseException, retryable: bool) -> None:
    assert is_retryable(exc) is retryable


@pytest.mark.parametrize(
    ("exc", "counts"),
    [
        (UpstreamError("x", kind="status", status=503), True),
        (UpstreamError("x", kind="status", status=429), True),
        (UpstreamError("x", kind="timeout"), True),
        (UpstreamError("x", kind="connection"), True),
        (UpstreamError("x", kind="malformed"), True),
        (UpstreamRejected("x", status=400), False),
        (UpstreamRejected("x", status=401), False),
        (UpstreamRejected("x", status=403), False),
        (UpstreamRejected("x", status=404), False),
        (UpstreamRejected("x", status=422), False),
        (UpstreamRejected("out of quota", status=429), False),
        (CircuitOpen(5.0), False),
        (StoreError("down"), False),
        (RuntimeError(), False),
    ],
)
def test_counts_against_breaker(exc: BaseException, counts: bool) -> None:
    assert counts_against_breaker(exc) is counts


def test_backoff_is_full_jitter_exponential_and_capped() -> None:
    assert [backoff(n, POLICY, one) for n in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert [backoff(n, POLICY, half) for n in range(1, 6)] == [0.25, 0.5, 1.0, 2.0, 4.0]
    assert backoff(3, POLICY, lambda: 0.0) == 0.0
    assert backoff(10_000, POLICY, one) == POLICY.cap_s


def test_next_wait_honours_retry_after_up_to_the_cap() -> None:
    def limited(retry_after: float | None) -> UpstreamError:
        return UpstreamError("x", status=429, retry_after=retry_after)

    assert next_wait(1, limited(2.0), POLICY, lambda: 0.0) == 2.0  # never less than the hint
    assert next_wait(4, limited(0.25), POLICY, one) == 0.25  # nor backoff when a hint exists
    assert next_wait(1, limited(45.0), POLICY, one) == POLICY.max_retry_after_s
    assert next_wait(1, limited(0.0), POLICY, one) == 0.0
    assert next_wait(3, limited(None), POLICY, one) == 2.0
    assert next_wait(3, UpstreamError("x", kind="timeout"), POLICY, half) == 1.0
    assert next_wait(2, None, POLICY, one) == 1.0


# -- composed with tenacity, over the fake server ----------------------------------------------


@pytest.fixture
def upstream(fake: FakeOpenAI) -> Iterator[OpenAIUpstream]:
    up = OpenAIUpstream(api_key="sk-test-retry", base_url=fake.base_url, timeout_s=2.0)
    yield up
    up.close()


def run(
    upstream: OpenAIUpstream,
    clock: ManualClock,
    policy: RetryPolicy = POLICY,
    failures: list[tuple[int | None, int]] | None = None,
) -> tuple[ChatResponse, int]:
    def attempt() -> ChatResponse:
        return upstream.chat(model="gpt-4o-mini", messages=MESSAGES, max_tokens=50)

    def on_failure(exc: Exception) -> None:
        if failures is not None:
            assert isinstance(exc, UpstreamError)
            failures.append((exc.status, exc.attempts))

    return call_with_retries(attempt, policy, clock=clock, sleep=clock.sleep, rand=one, on_failure=on_failure)


def test_first_try_success(fake: FakeOpenAI, upstream: OpenAIUpstream, clock: ManualClock) -> None:
    response, attempts = run(upstream, clock)

    assert response.content == "Answer to: What does Penny cost?"
    assert attempts == 1
    assert clock.sleeps == []
    assert fake.count("chat") == 1


def test_retry_after_is_honoured(fake: FakeOpenAI, upstream: OpenAIUpstream, clock: ManualClock) -> None:
    fake.script(Fault.status(429, retry_after="2"), Fault.ok())

    _, attempts = run(upstream, clock)

    assert clock.sleeps == [2.0]
    assert attempts == 2
    assert fake.count("chat") == 2


def test_retry_after_ms_is_honoured(fake: FakeOpenAI, upstream: OpenAIUpstream, clock: ManualClock) -> None:
    fake.script(Fault.status(429, retry_after_ms="1500"), Fault.status(503, retry_after="3"), Fault.ok())

    _, attempts = run(upstream, clock)

    assert clock.sleeps == [1.5, 3.0]
    assert attempts == 3


def test_retry_after_is_capped(fake: FakeOpenAI, upstream: OpenAIUpstream, clock: ManualClock) -> None:
    fake.script(Fault.status(429, retry_after="3600"), Fault.ok())

    run(upstream, clock)

    assert clock.sleeps == [POLICY.max_retry_after_s]


def test_bad_request_is_not_retried(fake: FakeOpenAI, upstream: OpenAIUpstream, clock: ManualClock) -> None:
    fake.script(Fault.status(400, message="Invalid 'messages'."))
    failures: list[tuple[int | None, int]] = []

    with pytest.raises(UpstreamRejected) as info:
        run(upstream, clock, failures=failures)

    assert info.value.attempts == 1
    assert fake.count("chat") == 1
    assert clock.sleeps == []
    assert failures == [(400, 1)]


def test_two_503s_then_ok(fake: FakeOpenAI, upstream: OpenAIUpstream, clock: ManualClock) -> None:
    fake.script(Fault.status(503), Fault.status(503), Fault.ok())
    failures: list[tuple[int | None, int]] = []

    response, attempts = run(upstream, clock, failures=failures)

    assert response.content
    assert attempts == 3
    assert fake.count("chat") == 3
    assert clock.sleeps == [0.5, 1.0]  # full jitter with rand() == 1: the ceilings
    assert failures == [(503, 1), (503, 2)]  # the hook runs once per failed attempt


def test_every_retryable_fault_kind_is_retried(fake: FakeOpenAI, clock: ManualClock) -> None:
    # The timeout must leave the answering attempt ample time on a loaded machine (0.1 s did not):
    # the delayed attempt times out after 1 s, and the fake's wait ends when the fake stops.
    up = OpenAIUpstream(api_key="sk-test-retry", base_url=fake.base_url, timeout_s=1.0)
    fake.script(Fault.drop(), Fault.garbage(), Fault.delay(30.0))
    policy = RetryPolicy(max_attempts=5)

    _, attempts = run(up, clock, policy)

    assert attempts == 4
    assert fake.count("chat") == 4


def test_max_attempts_then_the_last_error_surfaces(
    fake: FakeOpenAI, upstream: OpenAIUpstream, clock: ManualClock
) -> None:
    fake.fail_all(503)
    failures: list[tuple[int | None, int]] = []

    with pytest.raises(UpstreamError) as info:
        run(upstream, clock, failures=failures)

    err = info.value
    assert type(err) is UpstreamError
    assert (err.status, err.attempts) == (503, POLICY.max_attempts)
    assert fake.count("chat") == POLICY.max_attempts
    assert clock.sleeps == [0.5, 1.0, 2.0]
    assert [n for _, n in failures] == [1, 2, 3, 4]


def test_deadline_stops_before_a_sleep_that_would_pass_it(
    fake: FakeOpenAI, upstream: OpenAIUpstream, clock: ManualClock
) -> None:
    fake.fail_all(Fault.status(429, retry_after="2"))
    policy = RetryPolicy(max_attempts=100, deadline_s=5.0)

    with pytest.raises(UpstreamError) as info:
        run(upstream, clock, policy)

    assert clock.sleeps == [2.0, 2.0]  # a third sleep would end at t+6 > t+5
    assert info.value.attempts == 3
    assert fake.count("chat") == 3


def test_deadline_counts_attempt_time_on_the_injected_clock(clock: ManualClock) -> None:
    """Each attempt 'takes' 3 s of fake time; sleeps may never end past the 10 s deadline."""
    start = clock()
    sleep_ends: list[float] = []
    attempts_made = 0

    def slow_timeout() -> None:
        nonlocal attempts_made
        attempts_made += 1
        clock.advance(3.0)
        raise UpstreamError("slow", kind="timeout")

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        sleep_ends.append(clock() - start)

    policy = RetryPolicy(max_attempts=100, deadline_s=10.0)
    with pytest.raises(UpstreamError) as info:
        call_with_retries(slow_timeout, policy, clock=clock, sleep=sleep, rand=one)

    # attempt ends 3.0, sleep 0.5 -> 3.5; ends 6.5, sleep 1 -> 7.5; ends 10.5: no time left
    assert sleep_ends == [3.5, 7.5]
    assert all(end <= policy.deadline_s for end in sleep_ends)
    assert info.value.attempts == attempts_made == 3


def test_circuit_open_from_the_attempt_stops_immediately(
    fake: FakeOpenAI, upstream: OpenAIUpstream, clock: ManualClock
) -> None:
    """The gateway's shape: breaker check, call, feed the breaker from the failure hook."""
    fake.fail_all(503)
    policy = breaker.BreakerPolicy(failure_threshold=2, cooldown_s=30.0)
    state = breaker.BreakerState(window_start=clock())
    fed: list[bool] = []

    def attempt() -> ChatResponse:
        nonlocal state
        state, permit = breaker.acquire(state, policy, clock())
        if not permit.allowed:
            raise CircuitOpen(permit.retry_after)
        return upstream.chat(model="gpt-4o-mini", messages=MESSAGES, max_tokens=50)

    def on_failure(exc: Exception) -> None:
        nonlocal state
        fed.append(counts_against_breaker(exc))
        state = breaker.record(state, policy, clock(), success=not counts_against_breaker(exc))

    with pytest.raises(CircuitOpen):
        call_with_retries(
            attempt, RetryPolicy(), clock=clock, sleep=clock.sleep, rand=one, on_failure=on_failure
        )

    assert fake.count("chat") == 2
    assert fed == [True, True]  # not called for the CircuitOpen refusal
    assert clock.sleeps == [0.5, 1.0]  # no sleep after CircuitOpen
    assert state.state == "open"


def test_circuit_open_on_the_first_attempt_makes_no_call(fake: FakeOpenAI, clock: ManualClock) -> None:
    calls: list[int] = []

    def attempt() -> None:
        raise CircuitOpen(12.0)

    with pytest.raises(CircuitOpen) as info:
        call_with_retries(
            attempt, POLICY, clock=clock, sleep=clock.sleep, on_failure=lambda e: calls.append(1)
        )

    assert info.value.retry_after == 12.0
    assert calls == []
    assert clock.sleeps == []
    assert fake.count() == 0


def test_other_errors_propagate_unretried(clock: ManualClock) -> None:
    seen: list[int] = []

    def attempt() -> None:
        seen.append(1)
        raise StoreError("store down")

    with pytest.raises(StoreError):
        call_with_retries(attempt, POLICY, clock=clock, sleep=clock.sleep)

    assert seen == [1]
    assert clock.sleeps == []


def test_a_failing_hook_stops_the_retries(clock: ManualClock) -> None:
    def attempt() -> None:
        raise UpstreamError("busy", status=503)

    def on_failure(exc: Exception) -> None:
        raise StoreError("cannot record the breaker outcome")

    with pytest.raises(StoreError):
        call_with_retries(attempt, POLICY, clock=clock, sleep=clock.sleep, on_failure=on_failure)

    assert clock.sleeps == []


def test_before_sleep_sees_each_retry(fake: FakeOpenAI, upstream: OpenAIUpstream, clock: ManualClock) -> None:
    fake.script(Fault.status(503), Fault.status(429, retry_after="1"), Fault.ok())
    seen: list[tuple[int, float]] = []

    def before_sleep(state: tenacity.RetryCallState) -> None:
        seen.append((state.attempt_number, state.upcoming_sleep))

    def attempt() -> ChatResponse:
        return upstream.chat(model="gpt-4o-mini", messages=MESSAGES, max_tokens=50)

    call_with_retries(attempt, POLICY, clock=clock, sleep=clock.sleep, rand=one, before_sleep=before_sleep)

    assert seen == [(1, 0.5), (2, 1.0)]


def test_one_retrying_object_gives_each_call_its_own_deadline(clock: ManualClock) -> None:
    retrying = build_retrying(
        RetryPolicy(max_attempts=100, deadline_s=5.0), clock=clock, sleep=clock.sleep, rand=one
    )

    def busy() -> None:
        raise UpstreamError("busy", status=429, retry_after=2.0)

    for _ in range(2):
        clock.sleeps.clear()
        with pytest.raises(UpstreamError):
            retrying(busy)
        clock.advance(100.0)  # a later call must not inherit the first call's start
        assert clock.sleeps == [2.0, 2.0]


def test_build_retrying_reraises_the_upstream_error(clock: ManualClock) -> None:
    retrying = build_retrying(RetryPolicy(max_attempts=2), clock=clock, sleep=clock.sleep, rand=one)

    def failing() -> None:
        raise UpstreamError("busy", kind="connection")

    with pytest.raises(UpstreamError, match="busy"):
        retrying(failing)

    assert clock.sleeps == [0.5]
