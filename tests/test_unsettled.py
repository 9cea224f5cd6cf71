"""Owned claims and unsettled charges, on every store (Redis Cluster and TLS included): a call
admitted and never settled (its process died mid-call) is charged at its reserved worst case,
budgets never count less than may have been spent, a late real settle replaces the charge, and the
request ID is never run again.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

from proxy_core.budget import BudgetLine, budget_lines
from proxy_core.clock import ManualClock
from proxy_core.stores.base import REAP_GRACE_S, ClaimOwner, LedgerEntry, Store
from proxy_core.stores.sqlite import SCHEMA_VERSION, SqliteStore
from tests.redis_targets import EVERY_BACKEND

WS = "T01"
TTL = 90.0
AMOUNT = 3_000


STORES = EVERY_BACKEND  # ``store`` is every backend in turn, Redis Cluster and TLS included (conftest)


def lines_at(now: float, *, user_daily: int = 10_000, workspace_monthly: int = 0) -> list[BudgetLine]:
    # The workspace line is uncapped by default: it holds no reservation, yet is charged.
    return budget_lines(WS, "U1", now, user_daily=user_daily, workspace_monthly=workspace_monthly)


def admit(store: Store, clock: ManualClock, request_id: str, lines: list[BudgetLine], *, owned: bool = True) -> str:
    owner = ClaimOwner("U1", "gpt-4.1-mini", "chat", clock()) if owned else None
    admission = store.admit(WS, request_id, ttl_s=TTL, buckets=[], lines=lines, amount=AMOUNT, breaker=None,
                            owner=owner)
    return admission.state


def real_entry(clock: ManualClock, request_id: str, cost: int) -> LedgerEntry:
    from proxy_core.budget import period_window

    now = clock()
    return LedgerEntry(
        request_id=request_id, ts=now, day=period_window(now, "day")[0], workspace_id=WS, user_id="U1",
        model="gpt-4.1-mini-2025-04-14", kind="chat", prompt_tokens=120, cached_prompt_tokens=0,
        completion_tokens=40, cost_micros=cost, saved_micros=0, cache_status="miss", latency_ms=900, attempts=1,
    )


def test_an_expired_owned_claim_is_charged_at_its_worst_case_on_every_line(store: Store, clock: ManualClock) -> None:
    lines = lines_at(clock())
    assert admit(store, clock, "r1", lines) == "admitted"
    assert store.reap_interrupted() == []  # still live: nothing to charge
    clock.advance(TTL + 1)
    # Expired but not reaped yet: its reservation still counts, so no budget dips in between.
    assert store.spent(WS, lines[0]) == (0, AMOUNT)
    reaped = store.reap_interrupted()
    assert [(e.request_id, e.cost_micros, e.unsettled, e.user_id) for e in reaped] == [("r1", AMOUNT, True, "U1")]
    assert store.spent(WS, lines[0]) == (AMOUNT, 0)  # reserved -> spent, same amount
    assert store.spent(WS, lines[1]) == (AMOUNT, 0)  # the uncapped line is charged too
    entry = store.ledger_entry(WS, "r1")
    assert entry is not None and entry.unsettled and entry.cost_micros == AMOUNT and entry.day == "2026-01-01"
    usage = store.usage(WS, "2026-01-01", "2026-01-01")
    assert (usage.totals.requests, usage.totals.cost_micros) == (1, AMOUNT)
    assert (usage.totals.unsettled, usage.totals.unsettled_micros) == (1, AMOUNT)
    assert store.reap_interrupted() == []  # each claim is reaped once


def test_an_interrupted_request_id_is_never_admitted_again(store: Store, clock: ManualClock) -> None:
    lines = lines_at(clock())
    admit(store, clock, "r1", lines)
    clock.advance(TTL + 1)
    assert admit(store, clock, "r1", lines) == "interrupted"  # before the reaper came by
    store.reap_interrupted()
    assert admit(store, clock, "r1", lines) == "interrupted"  # and after
    store.release_request(WS, "r1")  # a late release from the dead call's process changes nothing
    assert admit(store, clock, "r1", lines) == "interrupted"
    assert store.claim_request(WS, "r1", ttl_s=60).state == "interrupted"


def test_a_late_real_settle_replaces_the_unsettled_charge(store: Store, clock: ManualClock) -> None:
    lines = lines_at(clock())
    admit(store, clock, "r1", lines)
    clock.advance(TTL + 1)
    store.reap_interrupted()
    real = real_entry(clock, "r1", cost=700)
    assert store.settle(real, reservation_id="r1", lines=lines, result='{"ok": 1}', result_ttl_s=60) is True
    assert store.spent(WS, lines[0]) == (700, 0)
    assert store.spent(WS, lines[1]) == (700, 0)
    entry = store.ledger_entry(WS, "r1")
    assert entry is not None and not entry.unsettled and entry.cost_micros == 700 and entry.completion_tokens == 40
    usage = store.usage(WS, "2026-01-01", "2026-01-01")
    assert (usage.totals.requests, usage.totals.cost_micros, usage.totals.unsettled) == (1, 700, 0)
    assert usage.totals.unsettled_micros == 0 and usage.totals.completion_tokens == 40
    assert set(usage.by_model) >= {"gpt-4.1-mini-2025-04-14"}
    assert usage.by_model.get("gpt-4.1-mini") is None or usage.by_model["gpt-4.1-mini"].requests == 0
    # The request now replays its result, and a second settle changes nothing.
    assert admit(store, clock, "r1", lines) == "done"
    assert store.settle(real, reservation_id="r1", lines=lines, result='{"ok": 1}', result_ttl_s=60) is False
    assert store.spent(WS, lines[0]) == (700, 0)


def test_the_replacing_settle_lands_on_the_day_the_call_was_charged(store: Store, clock: ManualClock) -> None:
    clock.set(1_767_225_600.0 + 86_400 - 30)  # 23:59:30 on 2026-01-01
    lines = lines_at(clock())
    admit(store, clock, "r1", lines)
    clock.advance(TTL + 1)  # the next day
    store.reap_interrupted()
    real = real_entry(clock, "r1", cost=700)
    assert real.day == "2026-01-02"
    assert store.settle(real, reservation_id="r1", lines=lines, result=None, result_ttl_s=60) is True
    charged = store.usage(WS, "2026-01-01", "2026-01-01")  # every store: the day of the charge, not the settle's
    assert (charged.totals.requests, charged.totals.cost_micros, charged.totals.unsettled) == (1, 700, 0)
    assert store.usage(WS, "2026-01-02", "2026-01-02").totals.requests == 0
    entry = store.ledger_entry(WS, "r1")
    assert entry is not None and entry.day == "2026-01-01" and entry.cost_micros == 700
    assert store.spent(WS, lines[0]) == (700, 0)


def test_settled_or_released_claims_are_never_charged(store: Store, clock: ManualClock) -> None:
    lines = lines_at(clock())
    admit(store, clock, "settled", lines)
    admit(store, clock, "released", lines)
    assert store.settle(real_entry(clock, "settled", 500), reservation_id="settled", lines=lines, result="{}",
                        result_ttl_s=60)
    store.release(WS, "released", lines)
    store.release_request(WS, "released")
    clock.advance(TTL + REAP_GRACE_S + 1)
    assert store.reap_interrupted() == []
    assert store.spent(WS, lines[0]) == (500, 0)
    assert admit(store, clock, "released", lines) == "admitted"  # a released ID may run again


def test_plain_claims_expire_free_as_before(store: Store, clock: ManualClock) -> None:
    lines = lines_at(clock())
    assert admit(store, clock, "plain", lines, owned=False) == "admitted"
    clock.advance(TTL + 1)
    assert store.reap_interrupted() == []
    assert admit(store, clock, "plain", lines, owned=False) == "admitted"


def test_an_owned_reservation_outlives_its_claim_until_reaped(store: Store, clock: ManualClock) -> None:
    lines = lines_at(clock(), user_daily=AMOUNT + 1_000)
    admit(store, clock, "r1", lines)
    clock.advance(TTL + 1)
    # Nobody reaped yet: the budget still counts the worst case, so this one does not fit.
    assert admit(store, clock, "r2", lines) == "over_budget"
    store.reap_interrupted()
    assert admit(store, clock, "r3", lines) == "over_budget"  # now as spent


def test_an_older_sqlite_file_gains_owned_claims_and_unsettled_entries(tmp_path: Path, clock: ManualClock) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as raw:
        raw.execute("CREATE TABLE requests (workspace_id TEXT NOT NULL, request_id TEXT NOT NULL, "
                    "state TEXT NOT NULL CHECK (state IN ('claimed', 'done')), result TEXT, expires_at REAL NOT NULL, "
                    "PRIMARY KEY (workspace_id, request_id)) WITHOUT ROWID")
        raw.execute("INSERT INTO requests VALUES ('T01', 'old', 'done', '{}', 9e18)")
        raw.execute("PRAGMA user_version = 3")
    raw.close()
    store = SqliteStore(path, clock=clock)
    try:
        assert store.claim_request(WS, "old", ttl_s=60).state == "done"
        lines = lines_at(clock())
        admit(store, clock, "r1", lines)
        clock.advance(TTL + 1)
        assert [e.request_id for e in store.reap_interrupted()] == ["r1"]
    finally:
        store.close()
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    raw.close()




def test_a_late_settle_of_an_interrupted_embedding_replaces_its_charge_whole(store: Store, clock: ManualClock) -> None:
    """The charge counted an embedding call (UsageTotals.embeddings); the real entry replaces it, so
    the day holds one embedding call and no question (on Redis the charge's count stayed: two)."""
    lines = lines_at(clock())
    owner = ClaimOwner("U1", "text-embedding-3-small", "embedding", clock())
    assert store.admit(WS, "e1", ttl_s=TTL, buckets=[], lines=lines, amount=AMOUNT, breaker=None,
                       owner=owner).state == "admitted"
    clock.advance(TTL + 1)
    store.reap_interrupted()
    charged = store.usage(WS, "2026-01-01", "2026-01-01").totals
    assert (charged.requests, charged.embeddings, charged.unsettled) == (1, 1, 1)
    real = dataclasses.replace(real_entry(clock, "e1", cost=7), kind="embedding", model="text-embedding-3-small",
                               completion_tokens=0, cache_status="bypass")
    assert store.settle(real, reservation_id="e1", lines=lines, result=None, result_ttl_s=60) is True
    settled = store.usage(WS, "2026-01-01", "2026-01-01").totals
    assert (settled.requests, settled.embeddings, settled.questions, settled.unsettled) == (1, 1, 0, 0)


def test_a_release_gives_back_only_its_own_admission_so_a_late_one_never_undoes_a_retry(
    store: Store, clock: ManualClock
) -> None:
    lines = lines_at(clock(), user_daily=AMOUNT)  # room for one call's reservation, not two
    first = ClaimOwner("U1", "gpt-4.1-mini", "chat", clock())
    assert store.admit(WS, "r1", ttl_s=TTL, buckets=[], lines=lines, amount=AMOUNT, breaker=None,
                       owner=first).state == "admitted"
    store.release_admission(WS, "r1", lines, call_id="another-call")  # not its admission: nothing
    assert store.spent(WS, lines[0]) == (0, AMOUNT)
    assert admit(store, clock, "r1", lines) == "in_flight"

    store.release_admission(WS, "r1", lines, call_id=first.call_id)
    assert store.spent(WS, lines[0]) == (0, 0)
    # A retry of the request is admitted; then the first call's release arrives once more (replayed
    # from a spool whose done mark was lost, or spooled when the first admit's reply was lost): the
    # retry keeps its claim and its reservation, so nobody can run the request beside it, nor
    # reserve the budget it holds.
    assert admit(store, clock, "r1", lines) == "admitted"
    store.release_admission(WS, "r1", lines, call_id=first.call_id)
    assert store.spent(WS, lines[0]) == (0, AMOUNT)
    assert admit(store, clock, "r1", lines) == "in_flight"
    assert store.admit(WS, "r2", ttl_s=TTL, buckets=[], lines=lines, amount=1, breaker=None,
                       owner=ClaimOwner("U1", "gpt-4.1-mini", "chat", clock())).state == "over_budget"


def test_a_release_leaves_a_reaped_claim_and_a_settled_request_alone(store: Store, clock: ManualClock) -> None:
    lines = lines_at(clock())
    owner = ClaimOwner("U1", "gpt-4.1-mini", "chat", clock())
    store.admit(WS, "r1", ttl_s=TTL, buckets=[], lines=lines, amount=AMOUNT, breaker=None, owner=owner)
    clock.advance(TTL + 1)
    store.reap_interrupted()
    store.release_admission(WS, "r1", lines, call_id=owner.call_id)  # its process comes back, late
    assert admit(store, clock, "r1", lines) == "interrupted"  # charged, and never run again
    assert store.spent(WS, lines[0]) == (AMOUNT, 0)

    settled = ClaimOwner("U1", "gpt-4.1-mini", "chat", clock())
    store.admit(WS, "r2", ttl_s=TTL, buckets=[], lines=lines, amount=AMOUNT, breaker=None, owner=settled)
    store.settle(real_entry(clock, "r2", 700), reservation_id="r2", lines=lines, result='{"ok": 1}',
                 result_ttl_s=60)
    store.release_admission(WS, "r2", lines, call_id=settled.call_id)
    assert store.claim_request(WS, "r2", ttl_s=60).state == "done"
    assert store.spent(WS, lines[0]) == (AMOUNT + 700, 0)


def admit_owned(store: Store, clock: ManualClock, request_id: str, lines: list[BudgetLine]) -> ClaimOwner:
    owner = ClaimOwner("U1", "gpt-4.1-mini", "chat", clock())
    assert store.admit(WS, request_id, ttl_s=TTL, buckets=[], lines=lines, amount=AMOUNT, breaker=None,
                       owner=owner).state == "admitted"
    return owner


def test_a_top_up_raises_the_reservation_on_every_capped_line_and_never_lowers_it(
    store: Store, clock: ManualClock
) -> None:
    lines = lines_at(clock(), user_daily=10_000, workspace_monthly=20_000)
    owner = admit_owned(store, clock, "r1", lines)
    assert store.top_up_admission(WS, "r1", lines, owner=owner, amount=AMOUNT + 2_000).state == "topped_up"
    assert store.spent(WS, lines[0]) == (0, AMOUNT + 2_000)
    assert store.spent(WS, lines[1]) == (0, AMOUNT + 2_000)
    # Sent again (a resend after a lost reply), or with less: it holds as much already.
    assert store.top_up_admission(WS, "r1", lines, owner=owner, amount=AMOUNT + 2_000).state == "topped_up"
    assert store.top_up_admission(WS, "r1", lines, owner=owner, amount=AMOUNT).state == "topped_up"
    assert store.spent(WS, lines[0]) == (0, AMOUNT + 2_000)
    # The settle drops the whole (raised) reservation.
    assert store.settle(real_entry(clock, "r1", 4_000), reservation_id="r1", lines=lines, result="{}",
                        result_ttl_s=60)
    assert store.spent(WS, lines[0]) == (4_000, 0)
    assert store.spent(WS, lines[1]) == (4_000, 0)


def test_a_top_up_that_a_line_cannot_hold_is_refused_and_changes_nothing(store: Store, clock: ManualClock) -> None:
    lines = lines_at(clock(), user_daily=10_000, workspace_monthly=8_000)
    owner = admit_owned(store, clock, "r1", lines)
    other = admit_owned(store, clock, "r2", lines)
    assert store.settle(real_entry(clock, "r0", 1_000), reservation_id=None, lines=lines, result=None,
                        result_ttl_s=60)
    # The workspace holds 1000 spent + 3000 (r2's) + 3000 (r1's): r1 may grow to 4000, not beyond.
    refused = store.top_up_admission(WS, "r1", lines, owner=owner, amount=4_001)
    assert refused.state == "over_budget" and refused.budget is not None
    assert (refused.budget.line, refused.budget.spent, refused.budget.reserved) == (lines[1], 1_000, AMOUNT)
    assert store.spent(WS, lines[1]) == (1_000, 2 * AMOUNT)
    assert store.top_up_admission(WS, "r1", lines, owner=owner, amount=4_000).state == "topped_up"
    assert store.spent(WS, lines[1]) == (1_000, AMOUNT + 4_000)
    # Released, the whole raised reservation goes: the other call's stays.
    store.release_admission(WS, "r1", lines, call_id=owner.call_id)
    assert store.spent(WS, lines[1]) == (1_000, AMOUNT)
    assert store.top_up_admission(WS, "r2", lines, owner=other, amount=7_000).state == "topped_up"


def test_a_top_up_acts_only_for_the_admission_that_holds_the_claim(store: Store, clock: ManualClock) -> None:
    lines = lines_at(clock())
    first = admit_owned(store, clock, "r1", lines)
    stale = ClaimOwner("U1", "gpt-4.1-mini", "chat", clock())  # another call's ID: a stale or foreign one
    assert store.top_up_admission(WS, "r1", lines, owner=stale, amount=9_000).state == "not_held"
    assert store.spent(WS, lines[0]) == (0, AMOUNT)
    # Released, then admitted again by a retry: the first call's top-up, late, leaves it alone.
    store.release_admission(WS, "r1", lines, call_id=first.call_id)
    assert store.top_up_admission(WS, "r1", lines, owner=first, amount=9_000).state == "not_held"
    retry = admit_owned(store, clock, "r1", lines)
    assert store.top_up_admission(WS, "r1", lines, owner=first, amount=9_000).state == "not_held"
    assert store.spent(WS, lines[0]) == (0, AMOUNT)
    # Settled: nothing left to raise.
    store.settle(real_entry(clock, "r1", 700), reservation_id="r1", lines=lines, result="{}", result_ttl_s=60)
    assert store.top_up_admission(WS, "r1", lines, owner=retry, amount=9_000).state == "not_held"
    assert store.spent(WS, lines[0]) == (700, 0)
    # Never admitted at all.
    assert store.top_up_admission(WS, "nobody", lines, owner=retry, amount=9_000).state == "not_held"


def test_an_expired_or_reaped_claim_is_not_topped_up(store: Store, clock: ManualClock) -> None:
    lines = lines_at(clock())
    owner = admit_owned(store, clock, "r1", lines)
    clock.advance(TTL + 1)
    assert store.top_up_admission(WS, "r1", lines, owner=owner, amount=9_000).state == "not_held"  # the reaper's
    [reaped] = store.reap_interrupted()
    assert reaped.cost_micros == AMOUNT
    assert store.top_up_admission(WS, "r1", lines, owner=owner, amount=9_000).state == "not_held"
    assert store.spent(WS, lines[0]) == (AMOUNT, 0)


def test_a_call_that_dies_after_a_top_up_is_reaped_at_the_raised_amount(store: Store, clock: ManualClock) -> None:
    lines = lines_at(clock())  # the workspace line is uncapped: no reservation, charged all the same
    owner = admit_owned(store, clock, "r1", lines)
    assert store.top_up_admission(WS, "r1", lines, owner=owner, amount=AMOUNT + 2_500).state == "topped_up"
    clock.advance(TTL + 1)
    assert store.spent(WS, lines[0]) == (0, AMOUNT + 2_500)  # expired, not reaped yet: still counted whole
    [reaped] = store.reap_interrupted()
    assert (reaped.request_id, reaped.cost_micros, reaped.unsettled) == ("r1", AMOUNT + 2_500, True)
    assert store.spent(WS, lines[0]) == (AMOUNT + 2_500, 0)
    assert store.spent(WS, lines[1]) == (AMOUNT + 2_500, 0)
    # A late real settle replaces the charge by what the call cost.
    assert store.settle(real_entry(clock, "r1", 4_200), reservation_id="r1", lines=lines, result=None,
                        result_ttl_s=60)
    assert store.spent(WS, lines[0]) == (4_200, 0)
