"""SQLite writers of several processes take turns on a file lock beside the database
(``<database>-writers``), then SQLite's own lock; one held past the store's timeout is a clear error.
A process's threads share a pool of at most ``MAX_CONNECTIONS`` connections, first come first served,
waited for at most the store's timeout; the writer holding the writers' locks never waits for it. A
forked child opens its own connections and takes its own locks."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from proxy_core.errors import StoreError
from proxy_core.stores.sqlite import MAX_CONNECTIONS, SqliteStore
from tests.polling import until

_HOLD = (
    "import fcntl, os, sys\n"
    "fd = os.open(sys.argv[1], os.O_RDWR)\n"
    "fcntl.flock(fd, fcntl.LOCK_EX)\n"
    "print('held', flush=True)\n"
    "sys.stdin.read()\n"
)


def test_a_writer_waits_for_another_processes_writer_and_says_so_when_it_holds_on_too_long(tmp_path: Path) -> None:
    db = tmp_path / "state" / "penny.db"
    store = SqliteStore(db, timeout_s=0.05)
    try:
        store.record_put("k", "first", "1", 60)
        assert Path(f"{db}-writers").exists()
        holder = subprocess.Popen([sys.executable, "-c", _HOLD, f"{db}-writers"], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
            with pytest.raises(StoreError, match="another process's writer held it") as refused:
                store.record_put("k", "second", "2", 60)
            assert refused.value.maybe_applied is False
            assert store.record_get("k", "first") == "1"  # reads never wait for writers
        finally:
            assert holder.stdin is not None
            holder.stdin.close()
            holder.wait(timeout=10)
        store.record_put("k", "second", "2", 60)  # the holder is gone: the next write goes through
        assert store.record_get("k", "second") == "2"
    finally:
        store.close()
    lock_file = Path(f"{db}-writers").resolve()
    assert not any(Path(f"/proc/self/fd/{fd}").resolve() == lock_file for fd in os.listdir("/proc/self/fd")
                   if Path(f"/proc/self/fd/{fd}").exists())  # closed with the store


def test_an_in_memory_database_takes_no_file_lock(tmp_path: Path) -> None:
    store = SqliteStore(":memory:")
    try:
        store.record_put("k", "a", "1", 60)
        assert store.record_get("k", "a") == "1"
    finally:
        store.close()


# -- the connection pool ---------------------------------------------------------------------------


def test_threads_share_at_most_max_connections_and_each_sees_the_others_writes(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "penny.db")
    start = threading.Barrier(64)

    def one(i: int) -> str | None:
        start.wait(timeout=10)
        store.record_put("k", f"r{i}", str(i), 60)
        return store.record_get("k", f"r{(i + 1) % 64}")

    try:
        with ThreadPoolExecutor(64) as pool:
            list(pool.map(one, range(64)))
        assert 1 <= store._opened <= MAX_CONNECTIONS  # 64 threads at once, not 64 connections
        assert [store.record_get("k", f"r{i}") for i in range(64)] == [str(i) for i in range(64)]
    finally:
        store.close()


def test_a_block_inside_another_shares_its_connection_and_a_closed_store_refuses_plainly(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "penny.db")
    with store._using() as outer, store._using() as inner:
        assert inner is outer  # one thread, one connection: no second one taken from the pool
    store.record_put("k", "a", "1", 60)
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.record_get("k", "a")


def test_a_forked_child_opens_its_own_connections(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "penny.db")
    try:
        store.record_put("k", "parent", "1", 60)
        with store._using() as parents:
            pass
        child = os.fork()
        if child == 0:  # never the parent's connection: a new one, on the same file
            try:
                with store._using() as conn:
                    ok = conn is not parents and store.record_get("k", "parent") == "1"
                store.record_put("k", "child", "2", 60)
            except BaseException:
                ok = False
            os._exit(0 if ok else 1)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert store.record_get("k", "child") == "2"
    finally:
        store.close()


@contextmanager
def every_connection_held(
    store: SqliteStore, then: Callable[[int], None] | None = None
) -> Iterator[list[threading.Event]]:
    """``MAX_CONNECTIONS`` threads each inside a read, holding its pooled connection until its event
    (one per thread, yielded) is set, then calling ``then(its index)``; all are set when the block ends."""
    holding = threading.Barrier(MAX_CONNECTIONS + 1)
    releases = [threading.Event() for _ in range(MAX_CONNECTIONS)]

    def hold(i: int) -> None:
        with store._read("hold a connection"):
            holding.wait(timeout=5)
            releases[i].wait(timeout=10)
        if then is not None:
            then(i)

    holders = [threading.Thread(target=hold, args=(i,)) for i in range(MAX_CONNECTIONS)]
    for holder in holders:
        holder.start()
    try:
        holding.wait(timeout=5)
        yield releases
    finally:
        for release in releases:
            release.set()
        for holder in holders:
            holder.join(timeout=10)


def test_a_writer_never_waits_for_the_readers_connections(tmp_path: Path) -> None:
    # 16 readers hold every pooled connection and 8 more queue for one (a cache-hit burst): the
    # writer, holding the writers' locks that every other writer of every process waits behind,
    # writes on a connection of its own instead of queueing with them.
    store = SqliteStore(tmp_path / "penny.db")
    store.record_put("k", "a", "1", 60)
    read: list[str | None] = []
    queued = [threading.Thread(target=lambda: read.append(store.record_get("k", "a"))) for _ in range(8)]
    written = threading.Event()
    failed: list[BaseException] = []

    def write() -> None:
        try:
            for i in range(50):
                store.record_put("k", f"w{i}", str(i), 60)
            with store._write("read inside a write") as conn:  # shares the writer's connection
                assert store.record_get("k", "w49") == "49"
                with store._using() as inner:
                    assert inner is conn
        except BaseException as exc:
            failed.append(exc)
        finally:
            written.set()

    try:
        with every_connection_held(store):
            for reader in queued:
                reader.start()
            writer = threading.Thread(target=write)
            writer.start()
            assert written.wait(timeout=2), "the writer waited for the readers' connections"
            assert failed == []
            assert store._opened == MAX_CONNECTIONS  # the pool stayed at its cap
        writer.join(timeout=5)
        for reader in queued:
            reader.join(timeout=5)
        assert read == ["1"] * 8
        with store._read("a read") as conn:  # a write inside a read shares the reader's connection
            store.record_put("k", "nested", "2", 60)
            assert conn.execute("SELECT value FROM records WHERE key = 'nested'").fetchone() == ("2",)
    finally:
        store.close()


def test_a_reader_waits_for_a_connection_no_longer_than_the_stores_timeout(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "penny.db", timeout_s=0.2)
    store.record_put("k", "a", "1", 60)
    outcome: list[tuple[StoreError, float]] = []

    def read() -> None:
        started = time.monotonic()
        try:
            store.record_get("k", "a")
        except StoreError as exc:
            outcome.append((exc, time.monotonic() - started))

    try:
        with every_connection_held(store):
            reader = threading.Thread(target=read)
            reader.start()
            reader.join(timeout=3)
            assert not reader.is_alive(), "the reader waited past the store's timeout"
        [(refused, waited)] = outcome
        assert f"all {MAX_CONNECTIONS} connections of this process were in use for more than 0.2s" in str(refused)
        assert refused.maybe_applied is False and 0.15 < waited < 2
        assert not store._waiters and store.record_get("k", "a") == "1"  # it left the queue
    finally:
        store.close()


def test_connections_go_to_the_threads_waiting_for_them_in_the_order_they_came(tmp_path: Path) -> None:
    # A thread giving its connection back and asking again at once queues behind the waiters
    # instead of taking it back before the one it went to has woken.
    store = SqliteStore(tmp_path / "penny.db")
    store.ping()
    order: list[str] = []

    def read(name: str) -> None:
        with store._read("a read"):
            order.append(name)

    def read_again(holder: int) -> None:
        if holder == 0:
            read("the first holder again")

    try:
        with every_connection_held(store, then=read_again) as releases:
            first = threading.Thread(target=read, args=("first",))
            second = threading.Thread(target=read, args=("second",))
            first.start()
            until(lambda: len(store._waiters) == 1)
            second.start()
            until(lambda: len(store._waiters) == 2)
            releases[0].set()  # its holder gives its connection back and asks for one again at once
            for waiter in (first, second):
                waiter.join(timeout=5)
        assert order == ["first", "second", "the first holder again"]
    finally:
        store.close()


def test_closing_wakes_a_reader_waiting_for_a_connection_and_closes_the_writers_own_too(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "penny.db")
    store.ping()
    refused: list[StoreError] = []

    def read() -> None:
        try:
            store.record_get("k", "a")
        except StoreError as exc:
            refused.append(exc)

    closing = threading.Thread(target=store.close)  # which waits for the connections' reads to end
    with every_connection_held(store):
        store.record_put("k", "a", "1", 60)  # every pooled connection is busy: on the writers' own
        spare = store._spare
        assert spare is not None
        reader = threading.Thread(target=read)
        reader.start()
        until(lambda: len(store._waiters) == 1)
        closing.start()
        reader.join(timeout=5)
        assert [str(exc) for exc in refused] == [f"SQLite store {tmp_path / 'penny.db'} is closed"]
    closing.join(timeout=5)
    assert not closing.is_alive()
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        spare.execute("SELECT 1")
    with pytest.raises(StoreError, match="closed"):
        store.record_put("k", "b", "2", 60)


def test_an_in_memory_database_has_one_connection_for_readers_and_writers(tmp_path: Path) -> None:
    store = SqliteStore(":memory:", timeout_s=5)
    store.record_put("k", "a", "1", 60)
    reading, release = threading.Event(), threading.Event()
    written: list[str | None] = []

    def hold() -> None:
        with store._read("hold the connection"):
            reading.set()
            release.wait(timeout=5)

    def write() -> None:  # waits for the one connection like a reader, holding no writers' lock meanwhile
        store.record_put("k", "b", "2", 60)
        written.append(store.record_get("k", "b"))

    try:
        holder, writer = threading.Thread(target=hold), threading.Thread(target=write)
        holder.start()
        reading.wait(timeout=5)
        writer.start()
        until(lambda: len(store._waiters) == 1)
        release.set()
        for thread in (holder, writer):
            thread.join(timeout=5)
        assert written == ["2"] and store.record_get("k", "a") == "1"
        with store._write("a write") as conn, store._using() as inner:
            assert inner is conn and store._opened == 1 and store._spare is None
    finally:
        store.close()


def test_a_forked_child_takes_the_writers_locks_for_itself(tmp_path: Path) -> None:
    # At fork() a thread of the parent holds both writers' locks. The child shares neither: its
    # writer waits for the parent's flock like any other process's (sharing the parent's open lock
    # file, it would take it at once, and its unlock would release the parent's), and the process
    # lock it inherited held is not its own.
    db = tmp_path / "penny.db"
    store = SqliteStore(db, timeout_s=0.2)
    store.record_put("k", "a", "1", 60)
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with store._write("hold the writers' locks"):
            holding.set()
            release.wait(timeout=10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(timeout=5)
        report_from, report_to = os.pipe()
        child = os.fork()
        if child == 0:
            report = "crashed"
            try:
                started = time.monotonic()
                try:
                    store.record_put("k", "child", "2", 60)
                    report = "written at once"
                except StoreError as exc:
                    report = f"{time.monotonic() - started:.3f} {exc}"
            finally:
                os.write(report_to, report.encode())
                os._exit(0)
        os.close(report_to)
        _, status = os.waitpid(child, 0)
        with os.fdopen(report_from) as reports:
            report = reports.read()
        fd = os.open(f"{db}-writers", os.O_RDWR)
        try:  # the parent's writer still holds its flock: the child released nothing of it
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    finally:
        release.set()
        holder.join(timeout=10)
    try:
        assert os.waitstatus_to_exitcode(status) == 0
        waited, _, message = report.partition(" ")
        assert "another process's writer held it for more than 0.2s" in message, report
        assert float(waited) >= 0.15
        assert store.record_get("k", "child") is None
        store.record_put("k", "parent", "3", 60)  # the parent's own locks are as they were
    finally:
        store.close()


class _OpenFailsOnce(SqliteStore):
    """A store whose next new connection, once ``armed``, fails to open (as a full disk or a file
    descriptor limit would make it) after ``fail`` is set; ``opening`` is set while it waits."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.armed = False
        self.opening, self.fail = threading.Event(), threading.Event()

    def _connect(self) -> Any:
        if self.armed:
            self.armed = False
            self.opening.set()
            assert self.fail.wait(timeout=5)
            raise sqlite3.OperationalError("unable to open database file")
        return super()._connect()


def test_a_connection_that_fails_to_open_gives_its_place_to_the_oldest_waiter(tmp_path: Path) -> None:
    store = _OpenFailsOnce(tmp_path / "penny.db")
    store.record_put("k", "a", "1", 60)
    store._max_connections = 2  # one held below, one being opened: a third reader waits for a place
    results: dict[str, object] = {}

    def read(name: str) -> None:
        try:
            results[name] = store.record_get("k", "a")
        except StoreError as exc:
            results[name] = exc

    release = threading.Event()

    def hold() -> None:
        with store._read("hold a connection"):
            release.wait(timeout=10)

    try:
        holder = threading.Thread(target=hold)
        holder.start()
        until(lambda: store._opened == 1 and not store._idle)
        store.armed = True
        opener, waiter = (threading.Thread(target=read, args=(name,)) for name in ("opener", "waiter"))
        opener.start()
        assert store.opening.wait(timeout=5)
        waiter.start()
        until(lambda: len(store._waiters) == 1)
        store.fail.set()  # the opener's connection fails: its place goes to the waiter, which opens its own
        for thread in (opener, waiter):
            thread.join(timeout=5)
        assert isinstance(results["opener"], StoreError) and "unable to open database file" in str(results["opener"])
        assert results["waiter"] == "1"
        release.set()
        holder.join(timeout=5)
        assert store._opened == 2 and not store._waiters  # the failed one's place was not lost, nor counted twice
    finally:
        release.set()
        store.close()


def test_a_connection_that_fails_to_open_with_nobody_waiting_gives_its_place_back(tmp_path: Path) -> None:
    store = _OpenFailsOnce(tmp_path / "penny.db")
    store.ping()
    store._max_connections = 2
    try:
        with store._read("hold the first connection"):
            store.armed = True
            store.fail.set()
            outcome: list[BaseException] = []
            refused = threading.Thread(target=lambda: outcome.extend(_raised(store.ping)))
            refused.start()
            refused.join(timeout=5)
            [error] = outcome
            assert isinstance(error, StoreError) and error.maybe_applied is False
            assert store._opened == 1  # its place is free again: the next reader opens one
            reader = threading.Thread(target=store.ping)
            reader.start()
            reader.join(timeout=5)
            assert store._opened == 2
    finally:
        store.close()


def _raised(fn: Callable[[], object]) -> list[BaseException]:
    try:
        fn()
    except BaseException as exc:  # the test looks at what it was
        return [exc]
    return []
