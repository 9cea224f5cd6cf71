"""The keyed-records capability (``RecordStore``) on every store: the Slack bot's own bookkeeping,
apart from the answer cache."""

from __future__ import annotations

from proxy_core.clock import ManualClock
from proxy_core.stores.base import Store


def test_a_record_lives_for_its_ttl_and_is_replaced_by_a_put(store: Store, clock: ManualClock) -> None:
    assert store.record_get("slack:threads", "C1/1.0") is None
    store.record_put("slack:threads", "C1/1.0", "1", ttl_s=60)
    assert store.record_get("slack:threads", "C1/1.0") == "1"
    store.record_put("slack:threads", "C1/1.0", "2", ttl_s=60)
    assert store.record_get("slack:threads", "C1/1.0") == "2"
    clock.advance(61)
    assert store.record_get("slack:threads", "C1/1.0") is None


def test_records_of_another_kind_and_the_answer_cache_are_apart(store: Store) -> None:
    store.record_put("slack:threads", "k", "thread", ttl_s=60)
    store.record_put("slack:answers", "k", "answer", ttl_s=60)
    store.cache_put("slack:threads", "k", "cached", ttl_s=60)
    assert store.record_get("slack:threads", "k") == "thread"
    assert store.record_get("slack:answers", "k") == "answer"
    store.cache_delete("slack:threads")  # clearing the cache leaves records alone
    assert store.record_get("slack:threads", "k") == "thread"


def test_expired_records_are_cleared_as_new_ones_come(store: Store, clock: ManualClock) -> None:
    for i in range(40):
        store.record_put("slack:threads", f"old{i}", "x", ttl_s=10)
    clock.advance(11)
    for i in range(3):
        store.record_put("slack:threads", f"new{i}", "y", ttl_s=10)
    assert [store.record_get("slack:threads", f"new{i}") for i in range(3)] == ["y", "y", "y"]
    assert all(store.record_get("slack:threads", f"old{i}") is None for i in range(40))
