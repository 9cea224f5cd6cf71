"""When to retry an upstream call, and how long to wait: small pure pieces composed with tenacity.

The pieces, each testable on its own:

- :func:`is_retryable` — 429, 500, 502, 503, 504, timeouts, connection failures and malformed
  responses are retried; :class:`~proxy_core.errors.UpstreamRejected`, other 4xx, and anything that
  is not an :class:`~proxy_core.errors.UpstreamError` (``CircuitOpen``, ``StoreError``, bugs) are not.
- :func:`counts_against_breaker` — the same failures signal an outage; a bad request does not.
- :func:`backoff` — exponential backoff with full jitter.
- :func:`next_wait` — the provider's ``Retry-After`` hint when it gave one (capped), else backoff.
- :func:`build_retrying` — a ``tenacity.Retrying`` that stops after ``max_attempts`` or when the
  next sleep would end past ``deadline_s`` (measured with the injected clock, from the start of the
  first attempt), and re-raises the last error.

:func:`call_with_retries` is used like this (the gateway feeds its breaker inside ``one_attempt``
instead, where it still knows the attempt is in flight)::

    result, attempts = call_with_retries(
        one_attempt,                     # () -> T: one breaker check + one HTTP call
        policy,
        clock=clock, sleep=sleep,
        on_failure=feed_breaker,         # (exc) -> None, after each failed attempt
    )

``one_attempt`` is called once per attempt with no arguments. If it raises a retryable error the
policy waits and calls it again; any other error (e.g. ``CircuitOpen`` because the breaker opened
between attempts, or ``UpstreamRejected``) stops at once and propagates unchanged. ``on_failure``
runs after every failed attempt, before the retry decision, so a breaker fed there can open and make
the next attempt raise ``CircuitOpen``; an ``UpstreamError`` it receives already carries
``attempts`` (the number of the attempt that failed). It is not called for :class:`~proxy_core.errors.Refused`
errors (nothing reached upstream) nor for ``BaseException`` that is not an ``Exception``. If
``on_failure`` itself raises, that error propagates (not retried). When attempts run out the last
``UpstreamError`` is re-raised with ``attempts`` set to the number of attempts made; on success the
result comes back with that count (1 when the first attempt succeeded).
"""

from __future__ import annotations

import functools
import random
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import tenacity

from proxy_core.clock import Clock, Sleep
from proxy_core.errors import Refused, UpstreamError, UpstreamRejected

__all__ = [
    "RETRYABLE_STATUSES",
    "RetryPolicy",
    "backoff",
    "build_retrying",
    "call_with_retries",
    "counts_against_breaker",
    "is_retryable",
    "next_wait",
]

T = TypeVar("T")

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})

Rand = Callable[[], float]
OnFailure = Callable[[Exception], None]
BeforeSleep = Callable[[tenacity.RetryCallState], None]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """At most ``max_attempts`` calls within ``deadline_s`` seconds; waits in seconds."""

    max_attempts: int = 4
    base_s: float = 0.5
    cap_s: float = 8.0
    max_retry_after_s: float = 20.0
    deadline_s: float = 60.0


def is_retryable(exc: BaseException) -> bool:
    """Could the same request succeed if sent again shortly?"""
    if not isinstance(exc, UpstreamError) or isinstance(exc, UpstreamRejected):
        return False
    if exc.kind == "status":
        return exc.status in RETRYABLE_STATUSES
    return exc.kind in ("timeout", "connection", "malformed")


def counts_against_breaker(exc: BaseException) -> bool:
    """Does this failure say the provider is unhealthy (rather than that our request was bad)?"""
    return is_retryable(exc)


def backoff(attempt: int, policy: RetryPolicy, rand: Rand) -> float:
    """Full-jitter exponential backoff after failed attempt number ``attempt`` (1-based)."""
    exponent = min(max(attempt, 1) - 1, 62)  # 2**62 * base overflows nothing and is capped anyway
    ceiling = min(policy.cap_s, policy.base_s * 2.0**exponent)
    return rand() * ceiling


def next_wait(attempt: int, exc: BaseException | None, policy: RetryPolicy, rand: Rand) -> float:
    """Seconds to wait before the next attempt: the provider's hint, capped, or else backoff."""
    retry_after = exc.retry_after if isinstance(exc, UpstreamError) else None
    if retry_after is not None:
        return max(0.0, min(retry_after, policy.max_retry_after_s))
    return backoff(attempt, policy, rand)


class _AttemptsAndDeadline:
    """tenacity ``stop``: out of attempts, or the coming sleep would end past the deadline.

    The deadline counts from the start of the first attempt on the injected clock; ``mark_start``
    is installed as tenacity's ``before`` hook. Starts are kept per call state, so one ``Retrying``
    may serve several calls (also concurrently).
    """

    def __init__(self, policy: RetryPolicy, clock: Clock) -> None:
        self._policy = policy
        self._clock = clock
        self._starts: weakref.WeakKeyDictionary[tenacity.RetryCallState, float] = weakref.WeakKeyDictionary()

    def mark_start(self, retry_state: tenacity.RetryCallState) -> None:
        if retry_state.attempt_number == 1:
            self._starts[retry_state] = self._clock()

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        if retry_state.attempt_number >= self._policy.max_attempts:
            return True
        now = self._clock()
        start = self._starts.get(retry_state, now)
        # tenacity computes ``upcoming_sleep`` (wait) before it asks ``stop``.
        return now + retry_state.upcoming_sleep > start + self._policy.deadline_s


def build_retrying(
    policy: RetryPolicy,
    *,
    clock: Clock,
    sleep: Sleep,
    rand: Rand = random.random,
    before_sleep: BeforeSleep | None = None,
) -> tenacity.Retrying:
    """A ``Retrying`` for upstream calls under ``policy``; re-raises the last error when it gives up."""
    stop = _AttemptsAndDeadline(policy, clock)

    def wait(retry_state: tenacity.RetryCallState) -> float:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None and outcome.failed else None
        return next_wait(retry_state.attempt_number, exc, policy, rand)

    return tenacity.Retrying(
        stop=stop,
        wait=wait,
        retry=tenacity.retry_if_exception(is_retryable),
        sleep=sleep,
        before=stop.mark_start,
        before_sleep=before_sleep,
        reraise=True,
    )


def call_with_retries(
    fn: Callable[[], T],
    policy: RetryPolicy,
    *,
    clock: Clock,
    sleep: Sleep,
    rand: Rand = random.random,
    on_failure: OnFailure | None = None,
    before_sleep: BeforeSleep | None = None,
) -> tuple[T, int]:
    """Call ``fn`` until it succeeds or the policy gives up; return ``(result, attempts)``.

    See the module docstring for the contract of ``fn`` and ``on_failure``.
    """
    attempts = 0

    def attempt() -> T:
        nonlocal attempts
        attempts += 1
        try:
            return fn()
        except Refused:
            raise
        except Exception as exc:
            if isinstance(exc, UpstreamError):
                exc.attempts = attempts
            if on_failure is not None:
                on_failure(exc)
            raise

    result = _shared_retrying(policy, clock, sleep, rand, before_sleep)(attempt)
    return result, attempts


@functools.lru_cache(maxsize=32)
def _shared_retrying(
    policy: RetryPolicy, clock: Clock, sleep: Sleep, rand: Rand, before_sleep: BeforeSleep | None
) -> tenacity.Retrying:
    """One ``Retrying`` per caller's set-up, shared by its calls (tenacity keeps each call's state
    per thread, and :class:`_AttemptsAndDeadline` per call): building one per call cost a
    successful upstream call 13–16 µs of retry machinery instead of 9."""
    return build_retrying(policy, clock=clock, sleep=sleep, rand=rand, before_sleep=before_sleep)
