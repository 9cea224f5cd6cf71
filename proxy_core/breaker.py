"""Circuit-breaker state transitions: pure functions of (state, policy, now).

::

    closed ──(a failure makes the streak rule or the ratio rule true)──▶ open
    open ──(its cooldown elapsed; the next caller becomes the single probe)──▶ half_open
    half_open ──(probe succeeds)──▶ closed, cooldown back to ``cooldown_s``
    half_open ──(probe fails)──▶ open again, cooldown doubled (at most ``max_cooldown_s``)

Outcomes are counted in the order they complete, and a success ends a failure streak. A failure
is recorded with ``pending``: the recording process's other upstream attempts still in flight,
each of which may yet succeed and break the streak. From ``closed``, a failure opens the breaker
when either rule holds:

- **streak**: ``consecutive_failures >= failure_threshold`` and ``consecutive_failures >= pending``
  — the streak outnumbers the calls that could still break it;
- **ratio**: within the ``window_s`` window, ``window_calls >= min_calls`` and
  ``window_failures >= failure_ratio * (window_calls + pending)`` — pending calls count as calls
  that have not failed.

So with one attempt at a time (``pending`` = 0) the breaker opens at the ``failure_threshold``-th
failure in a row. With N attempts in flight that all fail, it opens at about the N/2-th: those
attempts were already sent and cannot be unsent, and no retry nor new attempt goes out after it
opens. A brown-out (say 1 in 3 attempts failing fast while the rest take longer to succeed) keeps
it closed, because the successes still in flight outnumber the failures that complete first.
``pending`` is what the recording process knows: replicas sharing a store share the streak and
the window, but each weighs them only against its own calls in flight.

While a probe is in flight, other callers are refused; a probe that never reports (its process
died) stops blocking after ``probe_timeout_s``. Stores apply these transitions atomically:
``stores/sqlite.py`` in a transaction, ``stores/lua/breaker.lua`` in Redis, so every replica
sharing a store opens and closes together, and backs off together.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

__all__ = ["BreakerPolicy", "BreakerState", "Permit", "acquire", "cooldown", "record", "should_open"]

StateName = Literal["closed", "open", "half_open"]

# 2.0 ** 62 times any cooldown is far past any cap, and still a finite float (in Lua too).
_MAX_DOUBLINGS = 62


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    failure_threshold: int = 5
    failure_ratio: float = 0.5
    min_calls: int = 20
    window_s: float = 60.0
    cooldown_s: float = 30.0
    probe_timeout_s: float = 60.0
    max_cooldown_s: float = 300.0


@dataclass(frozen=True, slots=True)
class BreakerState:
    state: StateName = "closed"
    consecutive_failures: int = 0
    window_start: float = 0.0
    window_calls: int = 0
    window_failures: int = 0
    opened_at: float = 0.0
    probe_deadline: float = 0.0
    failed_probes: int = 0  # probes failed in a row since the breaker last closed


@dataclass(frozen=True, slots=True)
class Permit:
    allowed: bool
    probe: bool
    retry_after: float
    state: StateName


def cooldown(state: BreakerState, policy: BreakerPolicy) -> float:
    """Seconds the breaker stays open this time: ``cooldown_s`` doubled for each failed probe,
    at most ``max_cooldown_s`` (a cap below ``cooldown_s`` never shortens the first cooldown)."""
    doubled = policy.cooldown_s * 2.0 ** min(state.failed_probes, _MAX_DOUBLINGS)
    return min(doubled, max(policy.cooldown_s, policy.max_cooldown_s))


def should_open(policy: BreakerPolicy, *, consecutive: int, calls: int, failures: int, pending: int) -> bool:
    """The two opening rules (see the module docstring), after a failure has been counted."""
    streak = consecutive >= policy.failure_threshold and consecutive >= pending
    ratio = calls >= policy.min_calls and failures >= policy.failure_ratio * (calls + pending)
    return streak or ratio


def acquire(state: BreakerState, policy: BreakerPolicy, now: float) -> tuple[BreakerState, Permit]:
    """May a call go upstream at ``now``? Returns the new state and the answer."""
    if state.state == "closed":
        return state, Permit(True, False, 0.0, "closed")
    if state.state == "open":
        reopen = state.opened_at + cooldown(state, policy)
        if now < reopen:
            return state, Permit(False, False, reopen - now, "open")
        probing = replace(state, state="half_open", probe_deadline=now + policy.probe_timeout_s)
        return probing, Permit(True, True, 0.0, "half_open")
    # half_open: one probe at a time; a probe whose caller vanished stops counting at its deadline.
    if now < state.probe_deadline:
        return state, Permit(False, False, state.probe_deadline - now, "half_open")
    probing = replace(state, probe_deadline=now + policy.probe_timeout_s)
    return probing, Permit(True, True, 0.0, "half_open")


def record(
    state: BreakerState, policy: BreakerPolicy, now: float, *, success: bool, pending: int = 0
) -> BreakerState:
    """Fold the outcome of one upstream attempt into the state. ``pending``: the recording
    process's other attempts still in flight (only a failure in ``closed`` looks at it)."""
    if state.state == "half_open":
        if success:
            return BreakerState(window_start=now)
        return _open(now, failed_probes=state.failed_probes + 1)
    if state.state == "open":
        # A late report from a call admitted before the breaker opened changes nothing.
        return state
    if now - state.window_start >= policy.window_s:
        state = replace(state, window_start=now, window_calls=0, window_failures=0)
    calls = state.window_calls + 1
    if success:
        return replace(state, consecutive_failures=0, window_calls=calls)
    failures = state.window_failures + 1
    consecutive = state.consecutive_failures + 1
    if should_open(policy, consecutive=consecutive, calls=calls, failures=failures, pending=max(0, pending)):
        return _open(now, failed_probes=0)
    return replace(state, consecutive_failures=consecutive, window_calls=calls, window_failures=failures)


def _open(now: float, *, failed_probes: int) -> BreakerState:
    return BreakerState(state="open", opened_at=now, window_start=now, failed_probes=failed_probes)
