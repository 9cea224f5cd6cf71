"""SQLite writers of several processes take turns on a file lock beside the database
(``<database>-writers``), then SQLite's own lock; one held past the store's timeout is a clear error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from proxy_core.errors import StoreError
from proxy_core.stores.sqlite import SqliteStore

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
