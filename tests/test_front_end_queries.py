"""What proxy_core offers a front end beside the gateway, on every store: a per-minute rate shared by
every replica (:class:`SharedRate`) and the cached answers' count and invalidation (:class:`CachedAnswers`)."""

from __future__ import annotations

from collections.abc import Callable

from proxy_core import CachedAnswers, ManualClock, SharedRate, Store
from proxy_core.stores.base import SemanticEntry


def test_a_shared_rate_allows_its_burst_then_refills_per_workspace(store: Store, clock: ManualClock) -> None:
    starts = SharedRate(store, "slack:stream_starts", per_minute=15, burst=2)
    assert [starts.take("T1").allowed for _ in range(3)] == [True, True, False]
    refused = starts.take("T1")
    assert refused.retry_after == 4.0  # one start every 60 / 15 seconds
    assert starts.take("T2").allowed  # another workspace has its own
    clock.advance(4.0)
    assert starts.take("T1").allowed
    assert not starts.take("T1").allowed


def test_a_shared_rate_is_shared_by_every_replica(store: Store, open_twin: Callable[[], Store]) -> None:
    here = SharedRate(store, "k", per_minute=60, burst=1)
    there = SharedRate(open_twin(), "k", per_minute=60, burst=1)
    assert here.take("T1").allowed
    assert not there.take("T1").allowed


def _entry(entry_id: str, context: str) -> SemanticEntry:
    return SemanticEntry(entry_id, "T:public", context, "How?", b"\0" * 16, "{}", 1.0, 4e9)


def test_cached_answers_are_counted_and_forgotten_by_context(store: Store) -> None:
    for n, context in enumerate(["docs:v1|a", "docs:v1|b", "docs:v2|a"]):
        store.semantic_put(_entry(f"e{n}", context), max_entries=0)
    cached = CachedAnswers(store)
    assert cached.count() == 3
    assert cached.forget("docs:v1|") == 2
    assert cached.count() == 1
    assert cached.forget() == 1  # "" is every answer
    assert cached.count() == 0
