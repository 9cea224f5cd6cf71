"""The settle spool on its own (proxy_core/spool.py), and the gateway's alarm for writes that stay
pending: durable records, done marks, adoption of a dead process's file, and a torn last line."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from proxy_core.budget import budget_lines
from proxy_core.clock import ManualClock
from proxy_core.errors import StoreError
from proxy_core.gateway import Gateway
from proxy_core.keeper import LedgerKeeper
from proxy_core.metrics import Metrics
from proxy_core.settings import PennySettings
from proxy_core.spool import SettleSpool, SpoolRecord, count_pending
from proxy_core.stores.base import LedgerEntry, Store
from proxy_core.stores.sqlite import SqliteStore


def record(request_id: str, cost: int = 100, *, op: str = "settle") -> SpoolRecord:
    entry = LedgerEntry(
        request_id=request_id, ts=1_767_225_600.0, day="2026-01-01", workspace_id="T1", user_id="U1",
        model="gpt-4.1-mini", kind="chat", prompt_tokens=10, cached_prompt_tokens=0, completion_tokens=5,
        cost_micros=cost, saved_micros=0, cache_status="miss", latency_ms=5, attempts=1,
    )
    lines = tuple(budget_lines("T1", "U1", entry.ts, user_daily=1_000, workspace_monthly=0))
    return SpoolRecord("settle" if op == "settle" else "release", entry, lines, reservation_id=request_id,
                       result='{"r": 1}', result_ttl_s=60.0, spooled_at=entry.ts)


def crash(spool: SettleSpool) -> None:
    """The process dies: its file and lock are left as they are, nothing is marked."""
    assert spool._own is not None
    spool._own.handle.close()
    spool._own = None


def test_records_survive_a_crash_and_done_ones_are_not_replayed(tmp_path: Path) -> None:
    spool = SettleSpool(tmp_path)
    for i in range(3):
        spool.append(record(f"r{i}"))
    spool.done(record("r1"))
    assert count_pending(tmp_path) == 2
    crash(spool)
    heir = SettleSpool(tmp_path)
    assert heir.adopt() == 2
    assert [r.entry.request_id for r in heir.pending()] == ["r0", "r2"]
    assert heir.pending()[0] == record("r0")  # every field comes back as written
    for r in heir.pending():
        heir.done(r)
    assert not list(tmp_path.glob("*.spool"))  # an adopted file is deleted once empty


def test_a_live_process_file_is_never_adopted(tmp_path: Path) -> None:
    alive = SettleSpool(tmp_path)
    alive.append(record("mine"))
    other = SettleSpool(tmp_path)
    assert other.adopt() == 0 and other.pending() == []
    alive.done(record("mine"))
    alive.close()
    assert not list(tmp_path.glob("*.spool"))


def test_a_torn_last_line_and_an_unreadable_line_are_skipped(tmp_path: Path) -> None:
    spool = SettleSpool(tmp_path)
    spool.append(record("whole"))
    assert spool._own is not None
    path = spool._own.path
    crash(spool)
    with path.open("a", encoding="utf-8") as handle:
        handle.write("{not json}\n")
        handle.write(record("torn").to_json()[:40])  # the process died mid-write: never acknowledged
    with capture_logs() as logs:
        heir = SettleSpool(tmp_path)
        assert heir.adopt() == 1
    assert [r.entry.request_id for r in heir.pending()] == ["whole"]
    assert [e["event"] for e in logs].count("spool_line_unreadable") == 1


def test_only_writes_pending_for_rounds_and_a_minute_raise_the_alarm(tmp_path: Path) -> None:
    clock = ManualClock(time.time())
    store = SqliteStore(tmp_path / "penny.db", clock=clock)
    settings = PennySettings(store_url=f"sqlite:///{tmp_path / 'penny.db'}")
    spool = SettleSpool(tmp_path / "spool")
    gw = Gateway(settings, store=store, upstream=_NoUpstream(), spool=spool, clock=clock, wall=clock)
    spool.append(record("late", 250))
    store.close()  # the store is down: every replay round fails
    with capture_logs() as logs:
        for _ in range(3):
            assert gw.replay_spool().pending == 1
        clock.advance(61)
        gw.replay_spool()
        gw.replay_spool()  # raised once per write, not every round
    assert [e["event"] for e in logs].count("ledger_entries_pending") == 1
    back = SqliteStore(tmp_path / "penny.db", clock=clock)
    gw.ledger.store = back  # the store is back (same file)
    assert gw.replay_spool().applied == 1
    entry = back.ledger_entry("T1", "late")
    assert entry is not None and entry.cost_micros == 250
    gw.close()


class _NoUpstream:
    def chat(self, **_: object) -> object:
        raise AssertionError("no upstream call in this test")

    def embed(self, **_: object) -> object:
        raise AssertionError("no upstream call in this test")


def test_an_admission_that_never_reached_the_store_leaves_nothing_to_release(tmp_path: Path) -> None:
    """Connection refused: the admission surely did not happen, so nothing is spooled to undo it (a
    timed-out one may have happened, and is released through the spool: see test_faults.py)."""
    from proxy_core.stores.redis import RedisStore
    from tests.redis_server import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"
    store = RedisStore.from_url(url, timeout_s=0.3)
    spool = SettleSpool(tmp_path / "spool")
    gw = Gateway(PennySettings(store_url=url, cache_enabled=False), store=store, upstream=_NoUpstream(),
                 spool=spool)
    with pytest.raises(StoreError) as refused:
        gw.chat(user_id="U1", workspace_id="T1", request_id="r1", messages=[{"role": "user", "content": "hi"}])
    assert refused.value.maybe_applied is False
    assert count_pending(tmp_path / "spool") == 0
    sqlite = SqliteStore(tmp_path / "penny.db")
    sqlite.close()
    with pytest.raises(StoreError) as closed:
        sqlite.ping()
    assert closed.value.maybe_applied is False  # SQLite rolls back: a failed write never half-happens
    gw.close()


def test_a_corrupted_byte_neither_stops_start_up_nor_hides_the_records_around_it(tmp_path: Path) -> None:
    """Power loss or a bad sector can leave bytes that are not UTF-8 in a spool file: that line is
    unreadable, the records around it are replayed, and the process (``penny check``, a gateway
    starting up and adopting the file) carries on."""
    spool = SettleSpool(tmp_path)
    spool.append(record("before"))
    assert spool._own is not None
    path = spool._own.path
    crash(spool)
    with path.open("ab") as handle:
        handle.write(b'{"settle":\xff\xfe}\n')
        handle.write(record("after").to_json().encode() + b"\n")
    assert count_pending(tmp_path) == 2
    with capture_logs() as logs:
        heir = SettleSpool(tmp_path)
        assert heir.adopt() == 2
    assert [r.entry.request_id for r in heir.pending()] == ["before", "after"]
    assert [e["event"] for e in logs].count("spool_line_unreadable") == 1


# A process whose disk fills up while it spools: the spool file may not grow past what it holds
# after the first record (RLIMIT_FSIZE, SIGXFSZ ignored: the write fails with EFBIG part-way, as
# it would with ENOSPC). A subprocess, so the limit binds nobody else.
_DISK_FULL = """
import os, resource, signal, sys
from pathlib import Path
from structlog.testing import capture_logs
from proxy_core.errors import StoreError
from proxy_core.keeper import LedgerKeeper
from proxy_core.metrics import Metrics
from proxy_core.spool import SettleSpool
from proxy_core.stores.sqlite import SqliteStore
from tests.test_spool import crash, record

tmp, ending = Path(sys.argv[1]), sys.argv[2]
keeper = LedgerKeeper(SqliteStore(tmp / "penny.db"), SettleSpool(tmp / "spool"), metrics=Metrics())
down = StoreError("disk I/O error")
keeper.keep(record("first"), down)
own = keeper.spool._own
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (own.path.stat().st_size + 100, resource.RLIM_INFINITY))
with capture_logs() as logs:
    keeper.keep(record("second"), down)
assert [e["event"] for e in logs] == ["ledger_write_failed"], logs
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
if ending == "replayed":  # space and the store are back: this process replays what it holds
    report = keeper.replay()
    assert (report.applied, report.pending) == (3 - 1, 0), report
    keeper.close()
else:  # the next paid call spools fine, then the process dies before any replay
    keeper.keep(record("third"), down)
    crash(keeper.spool)
    os._exit(0)
"""


@pytest.mark.parametrize("ending", ["replayed", "crashed"])
def test_a_paid_call_spooled_while_the_disk_is_full_still_reaches_the_ledger(tmp_path: Path, ending: str) -> None:
    """Neither the store nor the disk takes the settle (the default spool sits beside penny.db, on
    the same disk): the record stays in memory, is replayed once the store answers, and is written
    to the spool file, whole, with the next record the disk takes; a line cut short by the full
    disk never spoils the records after it."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, "-c", _DISK_FULL, str(tmp_path), ending], env=env, cwd=root,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    store = SqliteStore(tmp_path / "penny.db")
    if ending == "crashed":
        with capture_logs() as logs:
            heir = SettleSpool(tmp_path / "spool")
            assert heir.adopt() == 3
        assert "spool_line_unreadable" not in [e["event"] for e in logs]
        keeper = LedgerKeeper(store, heir, metrics=Metrics())
        assert keeper.replay().applied == 3
        keeper.close()
    wanted = ["first", "second"] + (["third"] if ending == "crashed" else [])
    assert [r for r in wanted if store.ledger_entry("T1", r) is None] == []
    assert count_pending(tmp_path / "spool") == 0
    store.close()


def test_a_line_no_one_could_read_is_kept_for_the_operator_not_deleted_with_its_file(tmp_path: Path) -> None:
    """A record this version cannot read (written by a newer Penny before a roll-back, or
    damaged) may be a paid call: once the rest of its file is replayed, the file is set aside as
    ``.unreadable``, never deleted, and nobody adopts it again."""
    spool = SettleSpool(tmp_path)
    spool.append(record("readable"))
    assert spool._own is not None
    path = spool._own.path
    crash(spool)
    newer = record("newer").to_json().replace('"source":""', '"source":"","region":"eu"')
    with path.open("a", encoding="utf-8") as handle:
        handle.write(newer + "\n")
    heir = SettleSpool(tmp_path)
    assert heir.adopt() == 1
    heir.done(heir.pending()[0])
    kept = path.with_suffix(".unreadable")
    assert newer in kept.read_text(encoding="utf-8")
    assert not path.exists() and count_pending(tmp_path) == 0
    with capture_logs() as logs:
        assert SettleSpool(tmp_path).adopt() == 0
    assert logs == []


def test_a_new_spool_file_is_never_adopted_before_its_process_locks_it(tmp_path: Path) -> None:
    """An adopter looking at the directory just as a process creates its file (opened, not yet
    locked) used to take it as an empty file of an exited process and delete it: the process then
    spooled paid calls into a file with no name, lost at exit. A race, so it is run 300 times:
    before the fix about one file in thirty went; now none may."""
    import threading

    stop = threading.Event()

    def adopt_again_and_again() -> None:
        while not stop.is_set():
            adopter = SettleSpool(tmp_path)
            adopter.adopt()
            for adopted in adopter._adopted:  # let go without replaying or deleting
                adopted.handle.close()

    adopter = threading.Thread(target=adopt_again_and_again)
    adopter.start()
    unnamed = failed = created = 0
    try:
        for _ in range(300):
            spool = SettleSpool(tmp_path)
            try:
                spool.append(record(f"r{created}"))
            except OSError:
                failed += 1
            own = spool._own
            if own is None:
                continue
            created += 1
            unnamed += not own.path.exists()
            own.handle.close()
            own.path.unlink(missing_ok=True)
    finally:
        stop.set()
        adopter.join()
    assert created + failed == 300
    assert (unnamed, failed) == (0, 0)


def test_a_torn_last_line_does_not_swallow_the_adopters_done_marks(tmp_path: Path) -> None:
    """The adopter of a file that ends in half a line (its process died mid-write) appends its done
    marks to that file: the first used to land on the half line, both unreadable, so the next
    adopter replayed that record again and reported a damaged line."""
    spool = SettleSpool(tmp_path)
    spool.append(record("a"))
    spool.append(record("b"))
    assert spool._own is not None
    path = spool._own.path
    crash(spool)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(record("torn").to_json()[:40])
    heir = SettleSpool(tmp_path)
    assert heir.adopt() == 2
    heir.done(record("a"))
    for adopted in heir._adopted:  # the heir dies too
        adopted.handle.close()
    with capture_logs() as logs:
        last = SettleSpool(tmp_path)
        assert last.adopt() == 1
    assert [r.entry.request_id for r in last.pending()] == ["b"]
    assert "spool_line_unreadable" not in [e["event"] for e in logs]


def test_two_adopters_at_once_replay_each_record_once(tmp_path: Path) -> None:
    """Two processes adopting the same dead files: one that opened a file just before the other
    replayed and deleted it used to lock the deleted file and replay its last record again (for a
    spooled release, a second release, possibly of a retry's new claim). A race, so it runs 300
    times: before the fix about one record in seven was replayed twice; now none may be."""
    import collections
    import threading

    replays: collections.Counter[str] = collections.Counter()
    counted = threading.Lock()
    stop = threading.Event()

    def adopt_and_replay() -> None:
        while not stop.is_set():
            spool = SettleSpool(tmp_path)
            spool.adopt()
            for r in spool.pending():
                with counted:
                    replays[r.entry.request_id] += 1
                spool.done(r)

    adopters = [threading.Thread(target=adopt_and_replay) for _ in range(2)]
    for adopter in adopters:
        adopter.start()
    written = 300
    try:
        for i in range(written):
            dead = SettleSpool(tmp_path)
            dead.append(record(f"r{i}"))
            crash(dead)
    finally:
        stop.set()
        for adopter in adopters:
            adopter.join()
    adopt_and_replay_once = SettleSpool(tmp_path)  # what the two left: one more start-up takes it
    adopt_and_replay_once.adopt()
    for r in adopt_and_replay_once.pending():
        replays[r.entry.request_id] += 1
        adopt_and_replay_once.done(r)
    assert len(replays) == written
    assert [r for r, n in replays.items() if n > 1] == []


def test_a_spooled_release_replayed_after_a_retry_was_admitted_leaves_the_retry_alone(tmp_path: Path) -> None:
    """An admit timed out (it may have been applied), so its release was spooled; it had not been
    applied, and the client's retry of the request was admitted before the replay. The replay used
    to delete the retry's claim and reservation while its call was in flight: a third try could
    then run beside it and pay the provider again, and the budget no longer held its cost."""
    from dataclasses import replace

    from proxy_core.stores.base import ClaimOwner

    store = SqliteStore(tmp_path / "penny.db")
    keeper = LedgerKeeper(store, SettleSpool(tmp_path / "spool"), metrics=Metrics())
    lost = ClaimOwner("U1", "gpt-4.1-mini", "chat", 1_767_225_600.0)  # its admission never reached the store
    spooled = replace(record("r1", op="release"), call_id=lost.call_id)
    keeper.keep(spooled, StoreError("Redis store: cannot admit a request: timed out", maybe_applied=True))
    retry = ClaimOwner("U1", "gpt-4.1-mini", "chat", 1_767_225_601.0)
    lines = list(spooled.lines)
    assert store.admit("T1", "r1", ttl_s=60, buckets=[], lines=lines, amount=500, breaker=None,
                       owner=retry).state == "admitted"

    assert keeper.replay().applied == 1

    assert store.spent("T1", lines[0]) == (0, 500)  # the retry's reservation holds
    assert store.claim_request("T1", "r1", ttl_s=60).state == "in_flight"  # and so does its claim
    assert SpoolRecord.from_json("release", json.loads(spooled.to_json())["release"]) == spooled
    keeper.close()
    store.close()


@pytest.mark.redis
def test_a_write_the_store_keeps_refusing_does_not_hold_up_the_paid_calls_spooled_after_it(
        tmp_path: Path, redis_store: Store) -> None:
    """One spooled settle the store refuses every time (here its ledger key holds the wrong type, as
    a stray write by anything else in the namespace leaves it) used to stop each replay round at
    itself: every paid call spooled after it stayed out of the ledger for good."""
    from proxy_core.stores.redis import RedisStore

    assert isinstance(redis_store, RedisStore)
    keeper = LedgerKeeper(redis_store, SettleSpool(tmp_path / "spool"), metrics=Metrics())
    refused = StoreError("Redis store: cannot settle a call: timed out")
    for request_id in ("poison", "r1", "r2"):
        keeper.keep(record(request_id), refused)
    keeper.keep(record("poison", op="release"), refused)  # waits for its request's settle
    stray = f"{redis_store._ws('T1')}:ledger:poison"
    redis_store._client.lpush(stray, "not a ledger entry")

    first = keeper.replay()

    assert (first.applied, first.pending) == (2, 2)
    assert first.error is not None and "WRONGTYPE" in first.error
    assert all(redis_store.ledger_entry("T1", r) is not None for r in ("r1", "r2"))
    keeper.keep(record("r3"), refused)  # spooled later: tried before the write that failed
    with capture_logs() as logs:
        second = keeper.replay()
    assert (second.applied, second.pending) == (1, 2)
    assert [e["event"] for e in logs] == ["ledger_replayed", "spool_replayed", "spool_replay_refused"]
    redis_store._client.delete(stray)  # the operator clears it
    assert keeper.replay().applied == 2
    assert all(redis_store.ledger_entry("T1", r) is not None for r in ("poison", "r1", "r2", "r3"))
    keeper.close()


def test_a_replay_round_stops_after_three_refused_requests(
        tmp_path: Path) -> None:
    """A store that is down refuses everything: a round gives up after three requests (each try may
    take a whole timeout) instead of trying every spooled write."""
    store = SqliteStore(tmp_path / "penny.db")
    keeper = LedgerKeeper(store, SettleSpool(tmp_path / "spool"), metrics=Metrics())
    refused = StoreError("SQLite store: cannot settle a call: disk I/O error")
    for request_id in ("r0", "r1", "r2", "r3", "r4"):
        keeper.keep(record(request_id), refused)
    tried: list[str] = []

    def down(entry: LedgerEntry, **_: object) -> bool:
        tried.append(entry.request_id)
        raise StoreError("SQLite store: cannot settle a call: unable to open database file")

    store.settle = down  # type: ignore[method-assign]
    report = keeper.replay()
    assert tried == ["r0", "r1", "r2"] and report.pending == 5
    del store.settle  # the store is back: the round after takes all five
    assert keeper.replay().applied == 5
    assert all(store.ledger_entry("T1", f"r{i}") is not None for i in range(5))
    keeper.close()
    store.close()
