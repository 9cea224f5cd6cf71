"""Circuit-breaker state transitions: pure functions of (state, policy, now).

closed ──(``failure_threshold`` consecutive failures, or a failure ratio ≥ ``failure_ratio`` over
``window_s`` with at least ``min_calls`` calls)──▶ open ──(``cooldown_s`` elapsed; the next caller
becomes the single probe)──▶ half_open ──(probe succeeds)──▶ closed
                                      └──(probe fails)──▶ open again

While a probe is in flight, other callers are refused; a probe that never reports (its process
died) stops blocking after ``probe_timeout_s``. Stores apply these transitions atomically:
``stores/sqlite.py`` in a transaction, ``stores/lua/breaker.lua`` in Redis, so every replica
sharing a store opens and closes together.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

__all__ = ["BreakerPolicy", "BreakerState", "Permit", "acquire", "record"]

StateName = Literal["closed", "open", "half_open"]


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    failure_threshold: int = 5
    failure_ratio: float = 0.5
    min_calls: int = 20
    window_s: float = 60.0
    cooldown_s: float = 30.0
    probe_timeout_s: float = 60.0


@dataclass(frozen=True, slots=True)
class BreakerState:
    state: StateName = "closed"
    consecutive_failures: int = 0
    window_start: float = 0.0
    window_calls: int = 0
    window_failures: int = 0
    opened_at: float = 0.0
    probe_deadline: float = 0.0


@dataclass(frozen=True, slots=True)
class Permit:
    allowed: bool
    probe: bool
    retry_after: float
    state: StateName


def acquire(state: BreakerState, policy: BreakerPolicy, now: float) -> tuple[BreakerState, Permit]:
    """May a call go upstream at ``now``? Returns the new state and the answer."""
    if state.state == "closed":
        return state, Permit(True, False, 0.0, "closed")
    if state.state == "open":
        reopen = state.opened_at + policy.cooldown_s
        if now < reopen:
            return state, Permit(False, False, reopen - now, "open")
        probing = replace(state, state="half_open", probe_deadline=now + policy.probe_timeout_s)
        return probing, Permit(True, True, 0.0, "half_open")
    # half_open: one probe at a time; a probe whose caller vanished stops counting at its deadline.
    if now < state.probe_deadline:
        return state, Permit(False, False, state.probe_deadline - now, "half_open")
    probing = replace(state, probe_deadline=now + policy.probe_timeout_s)
    return probing, Permit(True, True, 0.0, "half_open")


def record(state: BreakerState, policy: BreakerPolicy, now: float, *, success: bool) -> BreakerState:
    """Fold the outcome of one upstream attempt into the state."""
    if state.state == "half_open":
        if success:
            return BreakerState(window_start=now)
        return _open(now)
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
    if consecutive >= policy.failure_threshold or (
        calls >= policy.min_calls and failures >= policy.failure_ratio * calls
    ):
        return _open(now)
    return replace(state, consecutive_failures=consecutive, window_calls=calls, window_failures=failures)


def _open(now: float) -> BreakerState:
    return BreakerState(state="open", opened_at=now, window_start=now)
