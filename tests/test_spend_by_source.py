"""The ledger's source, on every store (Redis Cluster and TLS included): each entry says where the call
came from ("" for the front end's own calls, else a proxy key's ID), and a user's or the workspace's
spend splits by it over a range of days. An unsettled charge keeps its source, and so does the
settle that replaces it. An SQLite file of the previous schema gains the column, its old entries
counted as the front end's own.
"""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from proxy_core.budget import BudgetLine, CallSource, budget_lines
from proxy_core.clock import ManualClock
from proxy_core.stores.base import ClaimOwner, LedgerEntry, Store, UsageTotals
from proxy_core.stores.sqlite import SCHEMA_VERSION, SqliteStore
from tests.redis_targets import EVERY_BACKEND

WS = "T01"
DAY1 = "2026-01-01"  # ManualClock starts at 2026-01-01T00:00:00Z
DAY2 = "2026-01-02"


STORES = EVERY_BACKEND  # ``store`` is every backend in turn, Redis Cluster and TLS included (conftest)


def entry(request_id: str, *, user: str = "U1", source: str = "", cost: int = 0, day: str = DAY1,
          saved: int = 0, hit: bool = False) -> LedgerEntry:
    ts = 1_767_225_600.0 + (86_400.0 if day == DAY2 else 0.0) + 60.0
    return LedgerEntry(
        request_id=request_id, ts=ts, day=day, workspace_id=WS, user_id=user, model="gpt-4o-mini", kind="chat",
        prompt_tokens=0 if hit else 100, cached_prompt_tokens=0, completion_tokens=0 if hit else 20,
        cost_micros=cost, saved_micros=saved, cache_status="exact" if hit else "miss", latency_ms=5, attempts=1,
        source=source,
    )


def settle(store: Store, e: LedgerEntry, lines: list[BudgetLine] | None = None) -> bool:
    return store.settle(e, reservation_id=None, lines=lines or [], result=None, result_ttl_s=60)


def spend(requests: int, cost: int, *, hits: int = 0, saved: int = 0, unsettled: int = 0) -> UsageTotals:
    prompt, completion = 100 * (requests - hits - unsettled), 20 * (requests - hits - unsettled)
    return UsageTotals(requests=requests, cache_hits=hits, prompt_tokens=prompt, completion_tokens=completion,
                       cost_micros=cost, saved_micros=saved, unsettled=unsettled,
                       unsettled_micros=cost if unsettled else 0)


@pytest.fixture
def two_users(store: Store) -> Store:
    """U1 asks in Slack twice and through two keys; U2 through a key and in Slack, a day later too."""
    for e in [
        entry("s1", cost=1_000),
        entry("s2", cost=500),
        entry("proxy:key_a:1", source="key_a", cost=300),
        entry("proxy:key_b:1", source="key_b", saved=700, hit=True),
        entry("proxy:key_c:1", user="U2", source="key_c", cost=40),
        entry("proxy:key_c:2", user="U2", source="key_c", cost=5_000, day=DAY2),
        entry("s3", user="U2", cost=9, day=DAY2),
    ]:
        assert settle(store, e)
    return store


def test_a_users_spend_splits_by_source(two_users: Store) -> None:
    assert two_users.usage_by_source(WS, DAY1, DAY2, "U1") == {
        "": spend(2, 1_500),
        "key_a": spend(1, 300),
        "key_b": spend(1, 0, hits=1, saved=700),
    }
    assert two_users.usage_by_source(WS, DAY2, DAY2, "U2") == {"": spend(1, 9), "key_c": spend(1, 5_000)}


def test_the_workspaces_spend_splits_by_source_and_adds_up_to_its_usage(two_users: Store) -> None:
    by_source = two_users.usage_by_source(WS, DAY1, DAY2)
    assert by_source == {
        "": spend(3, 1_509),
        "key_a": spend(1, 300),
        "key_b": spend(1, 0, hits=1, saved=700),
        "key_c": spend(2, 5_040),
    }
    total = UsageTotals()
    for part in by_source.values():
        for name in ("requests", "cache_hits", "prompt_tokens", "completion_tokens", "cost_micros", "saved_micros"):
            setattr(total, name, getattr(total, name) + getattr(part, name))
    assert total == two_users.usage(WS, DAY1, DAY2).totals


def test_days_outside_the_range_and_users_without_spend_show_nothing(two_users: Store) -> None:
    assert two_users.usage_by_source(WS, DAY1, DAY1, "U2") == {"key_c": spend(1, 40)}
    assert two_users.usage_by_source(WS, "2026-02-01", "2026-02-28") == {}
    assert two_users.usage_by_source(WS, DAY1, DAY2, "U9") == {}
    assert two_users.usage_by_source("T-other", DAY1, DAY2) == {}


def test_the_ledger_entry_keeps_its_source(two_users: Store) -> None:
    kept = two_users.ledger_entry(WS, "proxy:key_a:1")
    assert kept is not None and kept.source == "key_a"
    slack = two_users.ledger_entry(WS, "s1")
    assert slack is not None and slack.source == ""


def test_an_unsettled_charge_and_the_settle_replacing_it_keep_the_source(store: Store, clock: ManualClock) -> None:
    source = CallSource("key_a", daily_budget_micros=50_000)
    lines = budget_lines(WS, "U1", clock(), user_daily=0, workspace_monthly=0, source=source)
    owner = ClaimOwner("U1", "gpt-4o-mini", "chat", clock(), source="key_a")
    admission = store.admit(WS, "proxy:key_a:r1", ttl_s=30, buckets=[], lines=lines, amount=4_000, breaker=None,
                            owner=owner)
    assert admission.state == "admitted"
    clock.advance(31)
    [charged] = store.reap_interrupted()
    assert charged.source == "key_a" and charged.unsettled
    assert store.usage_by_source(WS, DAY1, DAY1, "U1") == {"key_a": spend(1, 4_000, unsettled=1)}
    assert store.spent(WS, lines[2]) == (4_000, 0)  # the key's own line was charged the worst case

    real = replace(entry("proxy:key_a:r1", source="key_a", cost=1_200), ts=clock())
    assert settle(store, real, lines)
    assert store.usage_by_source(WS, DAY1, DAY1, "U1") == {"key_a": spend(1, 1_200)}
    assert store.usage_by_source(WS, DAY1, DAY1) == {"key_a": spend(1, 1_200)}
    assert store.spent(WS, lines[2]) == (1_200, 0)


def test_an_sqlite_file_of_the_previous_schema_gains_the_source(tmp_path: Path, clock: ManualClock) -> None:
    path = tmp_path / "v4.db"
    # A version-4 file is today's schema without ledger.source; make one, with an entry in it.
    fresh = SqliteStore(path, clock=clock)
    fresh.ping()  # creates the schema
    fresh.close()
    with sqlite3.connect(path) as raw:
        raw.execute("ALTER TABLE ledger DROP COLUMN source")
        raw.execute("INSERT INTO ledger (workspace_id, request_id, ts, day, user_id, model, kind, prompt_tokens, "
                    "cached_prompt_tokens, completion_tokens, cost_micros, saved_micros, cache_status, latency_ms, "
                    "attempts, unsettled) VALUES ('T01', 'old', 1767225660.0, '2026-01-01', 'U1', 'gpt-4o-mini', "
                    "'chat', 100, 0, 20, 700, 0, 'miss', 5, 1, 0)")
        raw.execute("PRAGMA user_version = 4")
    raw.close()
    assert SCHEMA_VERSION == 5

    store = SqliteStore(path, clock=clock)
    try:
        old = store.ledger_entry(WS, "old")
        assert old is not None and old.source == "" and old.cost_micros == 700
        assert settle(store, entry("proxy:key_a:1", source="key_a", cost=300))
        assert store.usage_by_source(WS, DAY1, DAY1, "U1") == {"": spend(1, 700), "key_a": spend(1, 300)}
    finally:
        store.close()
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == 5
        columns = {row[1]: row for row in raw.execute("PRAGMA table_info(ledger)")}
        assert columns["source"][2] == "TEXT" and columns["source"][3] == 1  # NOT NULL
    raw.close()
