"""The semantic cache's storage contract, run against every backend: SQLite, Redis, Redis Cluster
and Redis over TLS.

Each bot replica keeps an in-process vector index: it takes the log's head with
``semantic_changes(None)``, loads everything with ``semantic_scan`` and then tails the change log.
These tests pin down what that relies on. Time moves only through the shared ManualClock; the
blocking-read tests use real threads and assert on what came back, never on how long it took.
Backend specifics (a lost Redis stream, the SQLite schema upgrade) are at the end.
"""

from __future__ import annotations

import sqlite3
import struct
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from proxy_core.clock import ManualClock
from proxy_core.errors import StoreError
from proxy_core.stores.base import SemanticChange, SemanticChanges, SemanticEntry, Store
from proxy_core.stores.sqlite import SCHEMA_VERSION, SqliteStore
from tests.redis_targets import EVERY_BACKEND, redis_target

DIMS = 8


STORES = EVERY_BACKEND  # ``store`` is every backend in turn, Redis Cluster and TLS included (conftest)


def vector(seed: int, dims: int = DIMS) -> bytes:
    """Little-endian float32 bytes, different for every seed."""
    return struct.pack(f"<{dims}f", *(seed + i / 8 for i in range(dims)))


def entry(
    store: Store,
    entry_id: str,
    *,
    context: str = "docs:v1",
    scope: str = "T01:public",
    ttl_s: float = 3600,
    answer: str | None = None,
    seed: int = 0,
) -> SemanticEntry:
    now = store.now()
    return SemanticEntry(
        entry_id=entry_id,
        scope=scope,
        context=context,
        question=f"How do I {entry_id}?",
        vector=vector(seed),
        answer=answer if answer is not None else f'{{"text": "answer to {entry_id}"}}',
        created_at=now,
        expires_at=now + ttl_s,
    )


def put(
    store: Store, *entry_ids: str, max_entries: int = 0, context: str = "docs:v1", ttl_s: float = 3600
) -> list[str]:
    """Put entries one by one; returns everything they evicted."""
    evicted: list[str] = []
    for entry_id in entry_ids:
        evicted += store.semantic_put(entry(store, entry_id, context=context, ttl_s=ttl_s), max_entries=max_entries)
    return evicted


def without_answer(e: SemanticEntry) -> SemanticEntry:
    return SemanticEntry(e.entry_id, e.scope, e.context, e.question, e.vector, "", e.created_at, e.expires_at)


def ops(changes: SemanticChanges) -> list[tuple[str, str]]:
    return [(c.op, c.entry_id) for c in changes.changes]


def ids(entries: Iterator[SemanticEntry]) -> list[str]:
    return sorted(e.entry_id for e in entries)


@pytest.fixture
def open_with_log(
    request: pytest.FixtureRequest, store: Store, clock: ManualClock
) -> Iterator[Callable[[int], Store]]:
    """Open another instance on ``store``'s data that keeps only ``retain`` change-log events."""
    backend = request.node.callspec.params["store"]
    opened: list[Store] = []

    def open_(retain: int) -> Store:
        other: Store
        if backend == "sqlite":
            other = SqliteStore(request.getfixturevalue("sqlite_path"), clock=clock, semantic_log_retain=retain)
        else:
            other = redis_target(request, backend).open(
                clock=clock, namespace=request.getfixturevalue("redis_namespace"), semantic_log_retain=retain
            )
        opened.append(other)
        return other

    yield open_
    for other in opened:
        other.close()


# -- put / get ----------------------------------------------------------------------------


def test_put_get_round_trips_exactly(store: Store) -> None:
    original = SemanticEntry(
        entry_id="e-1",
        scope="T01:C42:public",
        context="docs:v1:ünïcode",
        question="Wie setze ich mein Passwort zurück? 🔑",
        vector=struct.pack("<384f", *(i / 7 for i in range(384))) + bytes(range(256)),  # every byte value
        answer='{"text": "Use the \\"reset\\" link", "sources": ["a"], "nul": "\\u0000"}',
        created_at=store.now() + 0.123456789,
        expires_at=store.now() + 86400.5,
    )
    assert store.semantic_put(original, max_entries=0) == []
    assert store.semantic_get("e-1") == original
    assert store.semantic_get("e-1", touch=False) == original
    assert store.semantic_count() == 1


def test_missing_entry_is_none(store: Store) -> None:
    assert store.semantic_get("nope") is None
    assert store.semantic_get("nope", touch=False) is None


def test_put_replaces_an_entry_with_the_same_id(store: Store) -> None:
    store.semantic_put(entry(store, "e1", context="docs:v1", answer="old"), max_entries=0)
    replacement = entry(store, "e1", context="docs:v2", answer="new", seed=9)
    store.semantic_put(replacement, max_entries=0)

    assert store.semantic_get("e1") == replacement
    assert store.semantic_count() == 1
    assert [e.vector for e in store.semantic_scan()] == [vector(9)]
    # The prefix index follows the replacement: the old context no longer selects it.
    assert store.semantic_delete_where(context_prefix="docs:v1") == []
    assert store.semantic_delete_where(context_prefix="docs:v2") == ["e1"]


def test_entries_expire_by_the_store_clock(store: Store, clock: ManualClock) -> None:
    put(store, "short", ttl_s=60)
    put(store, "long", ttl_s=120)

    clock.advance(59.5)
    assert store.semantic_get("short") is not None
    clock.advance(0.5)  # expires_at == now: expired
    assert store.semantic_get("short") is None
    assert store.semantic_get("short", touch=False) is None
    assert ids(store.semantic_scan()) == ["long"]
    assert store.semantic_count() == 2  # still stored until deleted


# -- LRU eviction -------------------------------------------------------------------------


def test_eviction_takes_the_least_recently_used(store: Store) -> None:
    put(store, "a", "b", "c", max_entries=3)
    head = store.semantic_changes(None).cursor

    assert put(store, "d", max_entries=3) == ["a"]
    assert store.semantic_get("a") is None
    assert store.semantic_count() == 3
    assert ops(store.semantic_changes(head)) == [("put", "d"), ("delete", "a")]


def test_a_touched_entry_becomes_most_recently_used(store: Store) -> None:
    put(store, "a", "b", "c", max_entries=3)
    assert store.semantic_get("a", touch=True) is not None
    assert put(store, "d", max_entries=3) == ["b"]
    assert store.semantic_get("b", touch=True) is None  # missing: nothing to touch
    assert put(store, "e", max_entries=3) == ["c"]


def test_touch_marks_entries_used_in_order_and_skips_missing_ones(store: Store) -> None:
    put(store, "a", "b", "c", max_entries=3)
    assert store.semantic_touch(["b", "gone", "a"]) == 2
    assert put(store, "d", max_entries=3) == ["c"]
    assert put(store, "e", max_entries=3) == ["b"]
    assert store.semantic_touch([]) == 0


def test_put_marks_the_touched_entries_used_after_the_new_one(store: Store) -> None:
    put(store, "a", "b", "c", max_entries=4)
    assert store.semantic_put(entry(store, "d"), max_entries=3, touched=["a", "gone"]) == ["b"]
    assert store.semantic_put(entry(store, "e"), max_entries=3, touched=["e", "c"]) == ["d"]


def test_a_read_without_touch_keeps_the_order(store: Store) -> None:
    put(store, "a", "b", "c", max_entries=3)
    assert store.semantic_get("a", touch=False) is not None
    assert put(store, "d", max_entries=3) == ["a"]


def test_putting_an_existing_entry_again_makes_it_most_recent(store: Store) -> None:
    put(store, "a", "b", "c", max_entries=3)
    assert put(store, "a", max_entries=3) == []
    assert put(store, "d", max_entries=3) == ["b"]


def test_a_lower_cap_evicts_several_in_lru_order(store: Store) -> None:
    put(store, "a", "b", "c", "d", "e")
    store.semantic_get("b")
    head = store.semantic_changes(None).cursor

    assert put(store, "f", max_entries=2) == ["a", "c", "d", "e"]
    assert sorted(e.entry_id for e in store.semantic_scan()) == ["b", "f"]
    assert ops(store.semantic_changes(head)) == [
        ("put", "f"),
        ("delete", "a"),
        ("delete", "c"),
        ("delete", "d"),
        ("delete", "e"),
    ]


def test_max_entries_zero_means_no_cap(store: Store) -> None:
    assert put(store, *[f"e{i}" for i in range(20)], max_entries=0) == []
    assert store.semantic_count() == 20


def test_negative_max_entries_is_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="max_entries"):
        store.semantic_put(entry(store, "a"), max_entries=-1)


def test_concurrent_puts_never_exceed_the_cap(store: Store) -> None:
    def put_one(i: int) -> list[str]:
        return store.semantic_put(entry(store, f"e{i}"), max_entries=5)

    with ThreadPoolExecutor(max_workers=8) as pool:
        evicted = [entry_id for batch in pool.map(put_one, range(40)) for entry_id in batch]

    assert store.semantic_count() == 5
    assert len(evicted) == len(set(evicted)) == 35
    survivors = {e.entry_id for e in store.semantic_scan()}
    assert survivors | set(evicted) == {f"e{i}" for i in range(40)}


# -- delete -------------------------------------------------------------------------------


def test_delete_counts_and_logs_only_entries_that_existed(store: Store, clock: ManualClock) -> None:
    put(store, "a", "b")
    put(store, "stale", ttl_s=1)
    clock.advance(2)
    head = store.semantic_changes(None).cursor

    assert store.semantic_delete(["a", "missing", "a", "stale"]) == 2  # expired-but-stored counts
    assert store.semantic_delete([]) == 0
    assert store.semantic_get("a") is None
    assert store.semantic_get("b") is not None
    changes = store.semantic_changes(head).changes
    assert changes == (SemanticChange("delete", "a", "T01:public"), SemanticChange("delete", "stale", "T01:public"))


def test_delete_where_context_prefix(store: Store) -> None:
    put(store, "v1", context="docs:v1")
    put(store, "v10", context="docs:v10")
    put(store, "v2", context="docs:v2")
    put(store, "other", context="faq:v1")

    assert sorted(store.semantic_delete_where(context_prefix="docs:v1")) == ["v1", "v10"]  # a prefix, not exact
    assert store.semantic_delete_where(context_prefix="docs:v1") == []
    assert store.semantic_delete_where(context_prefix="docs:v2") == ["v2"]  # the whole context is a prefix too
    assert ids(store.semantic_scan()) == ["other"]


def test_delete_where_treats_the_prefix_literally(store: Store) -> None:
    contexts = {"pct": "a%_b", "glob": "a*[x]?", "nul": "a\0b", "plain": "a", "high": "a\U0010ffff"}
    for entry_id, context in contexts.items():
        put(store, entry_id, context=context)

    assert store.semantic_delete_where(context_prefix="a%") == ["pct"]
    assert store.semantic_delete_where(context_prefix="a*") == ["glob"]
    assert store.semantic_delete_where(context_prefix="a\0") == ["nul"]
    assert store.semantic_delete_where(context_prefix="a\U0010ffff") == ["high"]
    assert store.semantic_delete_where(context_prefix="a") == ["plain"]


def test_delete_where_empty_prefix_deletes_everything_and_logs_it(store: Store) -> None:
    for i in range(30):
        put(store, f"e{i:02}", context=f"ctx{i % 3}")
    head = store.semantic_changes(None).cursor

    deleted = store.semantic_delete_where(context_prefix="")
    assert sorted(deleted) == [f"e{i:02}" for i in range(30)]
    assert store.semantic_count() == 0
    changes = store.semantic_changes(head, limit=100).changes
    assert sorted(c.entry_id for c in changes) == sorted(deleted)
    assert {c.op for c in changes} == {"delete"}


def test_delete_where_expired(store: Store, clock: ManualClock) -> None:
    put(store, "ten", ttl_s=10)
    put(store, "twenty", ttl_s=20)
    put(store, "thirty", ttl_s=30)
    head = store.semantic_changes(None).cursor

    assert store.semantic_delete_where(expired=True) == []
    clock.advance(20)  # "twenty" expires exactly now
    assert sorted(store.semantic_delete_where(expired=True)) == ["ten", "twenty"]
    assert store.semantic_count() == 1
    assert sorted(ops(store.semantic_changes(head))) == [("delete", "ten"), ("delete", "twenty")]


def test_delete_where_needs_exactly_one_selector(store: Store) -> None:
    with pytest.raises(ValueError, match="either"):
        store.semantic_delete_where()
    with pytest.raises(ValueError, match="either"):
        store.semantic_delete_where(context_prefix="docs", expired=True)


# -- scan ---------------------------------------------------------------------------------


def test_scan_returns_every_live_entry_without_answers_across_batches(store: Store, clock: ManualClock) -> None:
    written = [entry(store, f"e{i:02}", seed=i, ttl_s=100) for i in range(25)]
    for e in written:
        store.semantic_put(e, max_entries=0)
    put(store, "expiring", ttl_s=50)
    clock.advance(50)

    for batch in (1, 7, 25, 1000):
        scanned = sorted(store.semantic_scan(batch=batch), key=lambda e: e.entry_id)
        assert scanned == [without_answer(e) for e in written]


def test_scan_of_an_empty_store(store: Store) -> None:
    assert list(store.semantic_scan()) == []
    with pytest.raises(ValueError, match="batch"):
        store.semantic_scan(batch=0)


def test_count(store: Store) -> None:
    assert store.semantic_count() == 0
    put(store, "a", "b", "c")
    put(store, "a")
    assert store.semantic_count() == 3
    store.semantic_delete(["b"])
    assert store.semantic_count() == 2


# -- change log ---------------------------------------------------------------------------


def test_none_returns_the_head_without_changes(store: Store) -> None:
    empty = store.semantic_changes(None)
    assert empty.changes == ()
    assert not empty.reset
    assert store.semantic_changes(empty.cursor) == SemanticChanges(empty.cursor)

    put(store, "a")
    head = store.semantic_changes(None)
    assert head.changes == ()
    assert not head.reset
    assert head.cursor != empty.cursor
    assert store.semantic_changes(head.cursor) == SemanticChanges(head.cursor)


def test_changes_after_a_cursor_come_in_order(store: Store) -> None:
    head = store.semantic_changes(None).cursor
    a = entry(store, "a", seed=1)
    store.semantic_put(a, max_entries=0)
    put(store, "b")
    store.semantic_delete(["a"])
    a2 = entry(store, "a", seed=2, context="docs:v2")
    store.semantic_put(a2, max_entries=0)
    store.semantic_delete_where(context_prefix="docs:v1")

    read = store.semantic_changes(head)
    assert not read.reset
    assert ops(read) == [("put", "a"), ("put", "b"), ("delete", "a"), ("put", "a"), ("delete", "b")]
    # A put carries the entry as it was put, without its answer.
    assert read.changes[0] == SemanticChange("put", "a", "T01:public", without_answer(a))
    assert read.changes[3].entry == without_answer(a2)
    assert read.changes[4] == SemanticChange("delete", "b", "T01:public")
    # The returned cursor is the last change: nothing more after it.
    assert store.semantic_changes(read.cursor) == SemanticChanges(read.cursor)


def test_limit_pages_through_the_changes(store: Store) -> None:
    head = store.semantic_changes(None).cursor
    put(store, *[f"e{i}" for i in range(5)])

    seen: list[str] = []
    cursor = head
    for expected in (2, 2, 1, 0):
        page = store.semantic_changes(cursor, limit=2)
        assert len(page.changes) == expected
        seen += [c.entry_id for c in page.changes]
        cursor = page.cursor
    assert seen == [f"e{i}" for i in range(5)]


def test_touching_is_not_a_change(store: Store) -> None:
    put(store, "a")
    head = store.semantic_changes(None).cursor
    store.semantic_get("a", touch=True)
    assert store.semantic_changes(head).changes == ()


def test_another_instance_sees_the_changes_and_the_entries(store: Store, open_twin: Callable[[], Store]) -> None:
    replica = open_twin()
    cursor = replica.semantic_changes(None).cursor
    assert list(replica.semantic_scan()) == []

    written = entry(store, "a")
    store.semantic_put(written, max_entries=0)
    store.semantic_delete(["never-there"])

    read = replica.semantic_changes(cursor)
    assert read.changes == (SemanticChange("put", "a", "T01:public", without_answer(written)),)
    assert replica.semantic_get("a") == written
    assert list(replica.semantic_scan()) == [without_answer(written)]


def test_a_replica_index_converges_through_scan_and_log(store: Store, open_twin: Callable[[], Store]) -> None:
    """The bot's start-up sequence: head, scan, then tail, while another replica keeps writing."""
    put(store, "a", "b", "c")
    replica = open_twin()
    cursor = replica.semantic_changes(None).cursor
    put(store, "d")  # lands between the head and the scan: seen by both, applied twice, harmlessly
    index = {e.entry_id: e for e in replica.semantic_scan(batch=2)}
    store.semantic_delete(["a"])
    put(store, "e", "f", max_entries=3)  # evicts b, then c

    read = replica.semantic_changes(cursor)
    for change in read.changes:
        if change.op == "put":
            assert change.entry is not None
            index[change.entry_id] = change.entry
        else:
            index.pop(change.entry_id, None)
    assert sorted(index) == ids(store.semantic_scan()) == ["d", "e", "f"]


def test_a_write_says_where_its_events_went_in_the_log(store: Store) -> None:
    """A follower at ``logged_after`` that moves to ``logged_through`` has stepped over exactly this
    write's put and evictions: reading from there gives nothing of it."""
    put(store, "a", "b")
    head = store.semantic_changes(None).cursor
    written = store.semantic_write(entry(store, "c"), max_entries=2)
    assert written.evicted == ["a"]
    assert written.logged_after == head
    read = store.semantic_changes(head)
    assert ops(read) == [("put", "c"), ("delete", "a")]
    assert read.cursor == written.logged_through
    assert store.semantic_changes(written.logged_through).changes == ()


def test_a_write_after_another_replicas_starts_where_that_one_ended(
    store: Store, open_twin: Callable[[], Store]
) -> None:
    other = open_twin()
    put(store, "a")
    mine = store.semantic_write(entry(store, "b"), max_entries=0)
    theirs = other.semantic_write(entry(other, "b", seed=1), max_entries=0)  # overwrites our key
    assert theirs.logged_after == mine.logged_through
    assert ops(store.semantic_changes(mine.logged_through)) == [("put", "b")]
    again = store.semantic_write(entry(store, "c"), max_entries=0)
    assert again.logged_after == theirs.logged_through


def blocked_until(wait: Callable[[], object], change: Callable[[], object]) -> None:
    """Start ``wait`` (a blocking read) on a thread of its own, make ``change`` once it is about to
    block, and check that the read has returned."""
    about_to_wait = threading.Event()

    def tail() -> None:
        about_to_wait.set()
        wait()

    reader = threading.Thread(target=tail)
    reader.start()
    assert about_to_wait.wait(5)
    change()
    reader.join(15)
    assert not reader.is_alive()


def test_a_wait_returns_once_a_change_follows_the_cursor(store: Store, open_twin: Callable[[], Store]) -> None:
    writer = open_twin()
    cursor = store.semantic_changes(None).cursor
    blocked_until(lambda: store.semantic_wait(cursor, 10), lambda: put(writer, "a"))
    store.semantic_wait(cursor, 10)  # an event already follows: no wait at all
    store.semantic_wait(store.semantic_changes(cursor).cursor, 0.05)  # nothing new: returns after the time


def test_a_blocking_read_wakes_for_a_change_from_another_replica(
    store: Store, open_twin: Callable[[], Store]
) -> None:
    writer = open_twin()
    cursor = store.semantic_changes(None).cursor
    got: list[SemanticChanges] = []
    blocked_until(lambda: got.append(store.semantic_changes(cursor, block_s=10)), lambda: put(writer, "a"))
    assert ops(got[0]) == [("put", "a")]


def test_a_blocking_read_does_not_hold_up_the_same_store_on_other_threads(store: Store) -> None:
    """The writer uses the very store the reader is blocked in: if it waited on the reader, the
    reader would time out empty-handed instead of returning the write."""
    cursor = store.semantic_changes(None).cursor
    about_to_wait = threading.Event()
    got: list[SemanticChanges] = []

    def tail() -> None:
        about_to_wait.set()
        got.append(store.semantic_changes(cursor, block_s=10))

    reader = threading.Thread(target=tail)
    reader.start()
    assert about_to_wait.wait(5)
    put(store, "a")
    assert store.semantic_count() == 1
    reader.join(15)
    assert not reader.is_alive()
    assert ops(got[0]) == [("put", "a")]


def test_block_zero_does_not_wait(store: Store) -> None:
    cursor = store.semantic_changes(None).cursor
    got: list[SemanticChanges] = []
    reader = threading.Thread(target=lambda: got.append(store.semantic_changes(cursor, block_s=0)))
    reader.start()
    reader.join(5)  # a BLOCK 0 (forever) would hang here
    assert not reader.is_alive()
    assert got == [SemanticChanges(cursor)]


def test_a_blocking_read_with_nothing_new_returns_the_same_cursor(store: Store) -> None:
    put(store, "a")
    cursor = store.semantic_changes(None).cursor
    assert store.semantic_changes(cursor, block_s=0.1) == SemanticChanges(cursor)


def test_a_trimmed_log_resets_a_stale_cursor(store: Store, open_with_log: Callable[[int], Store]) -> None:
    small = open_with_log(10)
    put(small, "first")
    stale = small.semantic_changes(None).cursor
    # Redis trims whole stream nodes (MAXLEN ~, 100 events each), so write well past two of them.
    put(small, *[f"e{i}" for i in range(250)])
    fresh = small.semantic_changes(None).cursor
    put(small, "late")

    reset = small.semantic_changes(stale)
    assert reset.reset
    assert reset.changes == ()
    # The reset cursor is the head: reload with a scan, then continue from it.
    assert len(list(small.semantic_scan())) == 252
    assert small.semantic_changes(reset.cursor) == SemanticChanges(reset.cursor)

    recent = small.semantic_changes(fresh)
    assert not recent.reset
    assert ops(recent) == [("put", "late")]


def test_a_cursor_from_beyond_the_head_resets(store: Store) -> None:
    put(store, "a")
    cursor = store.semantic_changes(None).cursor
    if "/" in cursor:  # Redis: "<log epoch>/<stream id>"
        epoch, stream_id = cursor.split("/")
        future = f"{epoch}/{int(stream_id.split('-')[0]) + 10**6}-0"
    else:
        future = str(int(cursor) + 10**6)
    assert store.semantic_changes(future).reset


@pytest.mark.parametrize("cursor", ["", "abc", "1-x", "-1", "1.5"])
def test_a_malformed_cursor_is_refused(store: Store, cursor: str) -> None:
    with pytest.raises(ValueError, match="cursor"):
        store.semantic_changes(cursor)


# -- unreachable backends -----------------------------------------------------------------

SEMANTIC_OPERATIONS: dict[str, Callable[[Store], object]] = {
    "put": lambda s: s.semantic_put(entry_at(0.0, "a"), max_entries=10),
    "get": lambda s: s.semantic_get("a"),
    "touch": lambda s: s.semantic_touch(["a"]),
    "delete": lambda s: s.semantic_delete(["a"]),
    "delete_where": lambda s: s.semantic_delete_where(expired=True),
    "scan": lambda s: list(s.semantic_scan()),
    "changes": lambda s: s.semantic_changes(None),
    "wait": lambda s: s.semantic_wait("0", 0.01) if isinstance(s, SqliteStore) else s.semantic_wait("/0-0", 0.01),
    "count": lambda s: s.semantic_count(),
}


def entry_at(now: float, entry_id: str) -> SemanticEntry:
    return SemanticEntry(entry_id, "s", "c", "q", vector(0), "{}", now, now + 60)


@pytest.mark.parametrize("operation", list(SEMANTIC_OPERATIONS))
@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_an_unreachable_backend_raises_store_error(backend: str, operation: str, tmp_path: Path) -> None:
    secret = "s3cret-pw"
    unreachable: Store
    if backend == "sqlite":
        blocker = tmp_path / "not-a-directory"
        blocker.write_text("a file where the store's directory should be")
        unreachable = SqliteStore(blocker / "penny.db", timeout_s=0.5)
    else:
        from proxy_core.stores.redis import RedisStore

        unreachable = RedisStore.from_url(f"redis://:{secret}@127.0.0.1:1/0", timeout_s=0.5)
    try:
        with pytest.raises(StoreError) as raised:
            SEMANTIC_OPERATIONS[operation](unreachable)
    finally:
        unreachable.close()
    assert secret not in str(raised.value)


# -- Redis specifics ----------------------------------------------------------------------


@pytest.mark.redis
def test_redis_a_lost_log_resets_cursors(redis_store: Store, redis_url: str, redis_namespace: str) -> None:
    import redis

    put(redis_store, "a")
    cursor = redis_store.semantic_changes(None).cursor
    raw = redis.Redis.from_url(redis_url)
    try:
        raw.delete(f"{redis_namespace}:{{sem}}:log")  # e.g. an operator's mistake
        assert redis_store.semantic_changes(cursor).reset
        put(redis_store, "b")  # a new log starts after the lost one
        assert redis_store.semantic_changes(cursor).reset
    finally:
        raw.close()


@pytest.mark.redis
def test_redis_a_flushed_store_resets_cursors(redis_store: Store) -> None:
    from proxy_core.stores.redis import RedisStore

    assert isinstance(redis_store, RedisStore)
    put(redis_store, "a")
    cursor = redis_store.semantic_changes(None).cursor
    redis_store.delete_namespace()
    put(redis_store, "b")
    read = redis_store.semantic_changes(cursor)
    assert read.reset
    assert ids(redis_store.semantic_scan()) == ["b"]
    assert redis_store.semantic_changes(read.cursor) == SemanticChanges(read.cursor)


@pytest.mark.redis
def test_redis_keys_share_one_hash_tag(redis_store: Store, redis_url: str, redis_namespace: str) -> None:
    import redis

    put(redis_store, "a", context="docs")
    raw = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        keys = sorted(raw.scan_iter(match=f"{redis_namespace}:*"))
    finally:
        raw.close()
    assert keys
    assert all(key.startswith(f"{redis_namespace}:{{sem}}:") for key in keys)


# -- SQLite specifics ---------------------------------------------------------------------

_VERSION_1_CACHE = """
CREATE TABLE cache (
    scope      TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (scope, key)
) WITHOUT ROWID
"""


def test_sqlite_a_version_1_file_upgrades(tmp_path: Path, clock: ManualClock) -> None:
    path = tmp_path / "penny.db"
    raw = sqlite3.connect(path)
    raw.execute(_VERSION_1_CACHE)
    raw.execute("INSERT INTO cache VALUES ('answers', 'k', 'v', ?)", (clock() + 600,))
    raw.execute("PRAGMA user_version = 1")
    raw.commit()
    raw.close()

    store = SqliteStore(path, clock=clock)
    assert store.cache_get("answers", "k") == "v"
    put(store, "a")
    assert ids(store.semantic_scan()) == ["a"]
    store.close()
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
    raw.close()

    reopened = SqliteStore(path, clock=clock)  # an up-to-date file opens as it is
    assert reopened.semantic_count() == 1
    reopened.close()


def test_sqlite_log_keeps_only_the_retained_events(tmp_path: Path, clock: ManualClock) -> None:
    store = SqliteStore(tmp_path / "penny.db", clock=clock, semantic_log_retain=3)
    put(store, *[f"e{i}" for i in range(10)])
    store.close()
    with sqlite3.connect(tmp_path / "penny.db") as raw:
        assert [r[0] for r in raw.execute("SELECT entry_id FROM semantic_log ORDER BY id")] == ["e7", "e8", "e9"]
    raw.close()
