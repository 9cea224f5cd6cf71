"""SQLite writers of several processes take turns on a file lock beside the database
(``<database>-writers``), then SQLite's own lock; one held past the store's timeout is a clear error.
A process's threads share a pool of at most ``MAX_CONNECTIONS`` connections; a forked child opens its own."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from proxy_core.errors import StoreError
from proxy_core.stores.sqlite import MAX_CONNECTIONS, SqliteStore

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
