"""The SQLite store: Penny's shared state in one local file, safe across threads and processes.

A process's threads share a pool of at most ``MAX_CONNECTIONS`` connections, handed out first come
first served; the one writer of the process at a time never waits for it (see ``SqliteStore._using``).
The file runs in WAL mode so readers never block the writer, and every read-modify-write runs in one
``BEGIN IMMEDIATE`` transaction, which takes the file's write lock up front: concurrent writers
(threads or processes) queue for up to ``timeout_s`` instead of interleaving. The decisions
themselves come from the pure policies in ``limiter``, ``budget`` and ``breaker``; this module only
loads state, applies them and writes the result back.

Every ``sqlite3`` (and filesystem) error is translated here, once, into :class:`StoreError`.
"""

from __future__ import annotations

import functools
import os
import re
import sqlite3
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from proxy_core import breaker, budget, limiter
from proxy_core.breaker import BreakerPolicy, BreakerState, Permit
from proxy_core.budget import BudgetLine
from proxy_core.clock import Clock, wall
from proxy_core.errors import ConfigurationError, StoreError
from proxy_core.limiter import BucketState
from proxy_core.stores.base import (
    Admission,
    AdmitCall,
    BreakerRef,
    BucketSpec,
    BudgetDecision,
    Claim,
    ClaimOwner,
    LedgerEntry,
    LimitDecision,
    Record,
    SemanticChange,
    SemanticChanges,
    SemanticEntry,
    SemanticWrite,
    SettleCall,
    Store,
    TopUp,
    UsageSummary,
    UsageTotals,
)
from proxy_core.stores.claims import owned_by, owner_json, reserved_amount, unsettled_charge

__all__ = ["MAX_CONNECTIONS", "SCHEMA_VERSION", "SEMANTIC_LOG_RETAIN", "SqliteStore"]

# Version 2 added the semantic cache (semantic_entries, semantic_log), version 3 the blobs table,
# version 4 the owned claims (requests.owner, requests.reaped), unsettled ledger entries and records,
# version 5 the ledger's source (ledger.source: '' for the front end's own calls, e.g. a proxy key's ID).
# Every statement of _SCHEMA is idempotent, so opening an older file simply creates what it lacks
# and bumps user_version.
SCHEMA_VERSION = 5

# How many change-log events are kept for replicas that fall behind; one further back reloads.
SEMANTIC_LOG_RETAIN = 10_000
# Connections one process keeps open on the file, shared by its threads (see SqliteStore._using); a
# writer that finds them all busy writes on one more, its own.
MAX_CONNECTIONS = 16
# How often a blocking ``semantic_changes`` looks at the log again (replicas share one machine).
_CHANGES_POLL_S = 0.05

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    workspace_id TEXT NOT NULL,
    request_id   TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('claimed', 'done')),
    result       TEXT,
    expires_at   REAL NOT NULL,
    PRIMARY KEY (workspace_id, request_id)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS buckets (
    workspace_id TEXT NOT NULL,
    key          TEXT NOT NULL,
    tokens       REAL NOT NULL,
    updated      REAL NOT NULL,
    PRIMARY KEY (workspace_id, key)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS budget_spent (
    workspace_id TEXT NOT NULL,
    line_key     TEXT NOT NULL,
    spent        INTEGER NOT NULL,
    PRIMARY KEY (workspace_id, line_key)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS budget_reservations (
    workspace_id   TEXT NOT NULL,
    line_key       TEXT NOT NULL,
    reservation_id TEXT NOT NULL,
    amount         INTEGER NOT NULL,
    expires_at     REAL NOT NULL,
    PRIMARY KEY (workspace_id, line_key, reservation_id)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS breakers (
    name                 TEXT PRIMARY KEY,
    state                TEXT NOT NULL CHECK (state IN ('closed', 'open', 'half_open')),
    consecutive_failures INTEGER NOT NULL,
    window_start         REAL NOT NULL,
    window_calls         INTEGER NOT NULL,
    window_failures      INTEGER NOT NULL,
    opened_at            REAL NOT NULL,
    probe_deadline       REAL NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS cache (
    scope      TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (scope, key)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS ledger (
    workspace_id         TEXT NOT NULL,
    request_id           TEXT NOT NULL,
    ts                   REAL NOT NULL,
    day                  TEXT NOT NULL,
    user_id              TEXT NOT NULL,
    model                TEXT NOT NULL,
    kind                 TEXT NOT NULL,
    prompt_tokens        INTEGER NOT NULL,
    cached_prompt_tokens INTEGER NOT NULL,
    completion_tokens    INTEGER NOT NULL,
    cost_micros          INTEGER NOT NULL,
    saved_micros         INTEGER NOT NULL,
    cache_status         TEXT NOT NULL,
    latency_ms           INTEGER NOT NULL,
    attempts             INTEGER NOT NULL,
    PRIMARY KEY (workspace_id, request_id)
) WITHOUT ROWID;

CREATE INDEX IF NOT EXISTS ledger_workspace_day ON ledger (workspace_id, day);
CREATE INDEX IF NOT EXISTS ledger_workspace_user_day ON ledger (workspace_id, user_id, day);

-- Large columns come last so a scan that skips the answer never reads its overflow pages.
-- last_used: integer microseconds of the store clock, strictly increasing (the LRU order).
CREATE TABLE IF NOT EXISTS semantic_entries (
    entry_id   TEXT NOT NULL UNIQUE,
    scope      TEXT NOT NULL,
    context    TEXT NOT NULL,
    question   TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    last_used  INTEGER NOT NULL,
    vector     BLOB NOT NULL,
    answer     TEXT NOT NULL
);

CREATE INDEX IF NOT EXISTS semantic_entries_last_used ON semantic_entries (last_used);
CREATE INDEX IF NOT EXISTS semantic_entries_expires_at ON semantic_entries (expires_at);
CREATE INDEX IF NOT EXISTS semantic_entries_context ON semantic_entries (context);

-- The change log replicas tail, trimmed to the last ``semantic_log_retain`` events. A put carries
-- the entry without its answer, a delete only entry_id and scope. (No semicolons in these
-- comments: _prepare_file splits the schema on them.)
CREATE TABLE IF NOT EXISTS semantic_log (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    op         TEXT NOT NULL CHECK (op IN ('put', 'delete')),
    entry_id   TEXT NOT NULL,
    scope      TEXT NOT NULL,
    context    TEXT,
    question   TEXT,
    created_at REAL,
    expires_at REAL,
    vector     BLOB
);

-- A front end's own keyed records (the Slack bot's bookkeeping), apart from the answer cache.
CREATE TABLE IF NOT EXISTS records (
    kind       TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (kind, key)
) WITHOUT ROWID;

-- Opaque values shared by replicas (the docs index), grouped by key prefix.
CREATE TABLE IF NOT EXISTS blobs (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID
"""

# Column order of both tables follows the dataclass fields, so rows map straight onto them.
_LEDGER_COLUMNS = tuple(f.name for f in fields(LedgerEntry))
_INSERT_LEDGER = (
    "INSERT INTO ledger (request_id, ts, day, workspace_id, user_id, model, kind, prompt_tokens, "
    "cached_prompt_tokens, completion_tokens, cost_micros, saved_micros, cache_status, latency_ms, "
    "attempts, unsettled, source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (workspace_id, request_id) DO NOTHING"
)
# The real settle of a call that was charged unsettled: the same row, every column replaced but its day
# (the day the call was charged on, as on Redis: a settle after midnight moves no spend to the next day).
_REPLACE_UNSETTLED = (
    "UPDATE ledger SET ts = ?, user_id = ?, model = ?, kind = ?, prompt_tokens = ?, "
    "cached_prompt_tokens = ?, completion_tokens = ?, cost_micros = ?, saved_micros = ?, cache_status = ?, "
    "latency_ms = ?, attempts = ?, source = ?, unsettled = 0 "
    "WHERE workspace_id = ? AND request_id = ? AND unsettled = 1"
)
_SELECT_LEDGER = (
    "SELECT request_id, ts, day, workspace_id, user_id, model, kind, prompt_tokens, "
    "cached_prompt_tokens, completion_tokens, cost_micros, saved_micros, cache_status, latency_ms, "
    "attempts, unsettled, source FROM ledger WHERE workspace_id = ? AND request_id = ?"
)
_SELECT_BREAKER = (
    "SELECT state, consecutive_failures, window_start, window_calls, window_failures, opened_at, "
    "probe_deadline, failed_probes FROM breakers WHERE name = ?"
)
_SAVE_BREAKER = (
    "INSERT OR REPLACE INTO breakers (name, state, consecutive_failures, window_start, window_calls, "
    "window_failures, opened_at, probe_deadline, failed_probes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_BREAKER_COLUMNS = tuple(f.name for f in fields(BreakerState))

_UPSERT_SEMANTIC = (
    "INSERT INTO semantic_entries (entry_id, scope, context, question, created_at, expires_at, last_used, "
    "vector, answer) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (entry_id) DO UPDATE SET scope = excluded.scope, context = excluded.context, "
    "question = excluded.question, created_at = excluded.created_at, expires_at = excluded.expires_at, "
    "last_used = excluded.last_used, vector = excluded.vector, answer = excluded.answer"
)
_LOG_PUT = (
    "INSERT INTO semantic_log (op, entry_id, scope, context, question, created_at, expires_at, vector) "
    "VALUES ('put', ?, ?, ?, ?, ?, ?, ?)"
)
_LOG_DELETE = "INSERT INTO semantic_log (op, entry_id, scope) VALUES ('delete', ?, ?)"
_LOG_CURSOR = re.compile(r"[0-9]+")
_BLOB_SCAN_BATCH = 256

# Columns added to a table after it first shipped: table -> {column: declaration}. CREATE TABLE IF
# NOT EXISTS leaves an older file's table as it was, so each is added when missing (idempotent,
# like every statement of _SCHEMA). A new column needs a DEFAULT so existing rows stay valid.
_ADDED_COLUMNS: dict[str, dict[str, str]] = {
    # owner: JSON {user_id, model, kind, amount, lines: [[key, limit, resets_at], ...], started_at, source} of a
    # claim made by admit(owner=...); reaped: 1 once reap_interrupted turned it into a charge.
    "requests": {"owner": "TEXT", "reaped": "INTEGER NOT NULL DEFAULT 0"},
    # source: '' (the default) is also what every entry written before version 5 is: the front
    # end's own calls (penny proxy's calls of that time cannot be told apart from them).
    "ledger": {"unsettled": "INTEGER NOT NULL DEFAULT 0", "source": "TEXT NOT NULL DEFAULT ''"},
    "breakers": {"failed_probes": "INTEGER NOT NULL DEFAULT 0"},
}
# Statements that need the added columns, run after them.
_AFTER_COLUMNS = (
    "CREATE INDEX IF NOT EXISTS requests_owned ON requests (reaped, expires_at) WHERE owner IS NOT NULL",
)
# How long a reaped request ID stays ``interrupted`` (refused) after it was reaped.
_REAPED_KEEP_S = 86400.0


class _Connection(sqlite3.Connection):
    """A connection that can be weakly referenced, so ``close()`` can reach every thread's, and
    that says when it is in use: closing one mid-query from another thread crashes sqlite3."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.in_use = threading.RLock()


class _Waiter:
    """A thread queued for a pooled connection. Whoever frees one hands it over in ``conn`` (or, when
    a connection failed to open, leaves it None: the right to open one) and releases ``ready``; the
    waiter never races a newcomer for it."""

    __slots__ = ("conn", "ready")

    def __init__(self) -> None:
        self.conn: _Connection | None = None
        self.ready = threading.Lock()
        self.ready.acquire()


# Every open store, so a forked child can give each its own locks and connections (_after_fork).
_STORES: weakref.WeakSet[SqliteStore] = weakref.WeakSet()
# The connections a forked child inherited: kept and never closed there (SQLite: a connection must not
# be used across fork(), and closing is a use). Only the forking thread lives on in the child.
_INHERITED: list[_Connection] = []


def _after_fork_in_child() -> None:
    # Runs in the child before anything else, while it has one thread: nothing can race the reset,
    # and a lock that another of the parent's threads held at fork() is replaced, not waited for.
    for store in list(_STORES):
        store._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class SqliteStore(Store):
    """:class:`Store` on a SQLite file. The directory and file are created on first use."""

    def __init__(
        self,
        path: str | Path,
        *,
        clock: Clock | None = None,
        timeout_s: float = 2.0,
        semantic_log_retain: int = SEMANTIC_LOG_RETAIN,
    ) -> None:
        if semantic_log_retain < 1:
            raise ConfigurationError("SQLite store: semantic_log_retain must be at least 1")
        self.path = Path(path)
        self.timeout_s = timeout_s
        self.semantic_log_retain = semantic_log_retain
        self._clock: Clock = clock if clock is not None else wall
        self._local = threading.local()
        self._lock = threading.Lock()
        self._writer = _WriterLock()
        self._processes = _ProcessWriters.beside(self.path)
        self._connections: weakref.WeakSet[_Connection] = weakref.WeakSet()
        # The connection pool (see _using): idle connections, the threads queued for one (oldest first),
        # how many this process opened; and the writers' spare connection, opened when first needed.
        self._pool_lock = threading.Lock()
        self._idle: list[_Connection] = []
        self._waiters: deque[_Waiter] = deque()
        self._opened = 0
        self._spare: _Connection | None = None
        self._in_memory = str(path) == ":memory:"
        self._max_connections = 1 if self._in_memory else MAX_CONNECTIONS  # one in-memory database
        self._schema_ready = False
        self._closed = False
        _STORES.add(self)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        clock: Clock | None = None,
        timeout_s: float = 2.0,
        semantic_log_retain: int = SEMANTIC_LOG_RETAIN,
    ) -> SqliteStore:
        """Open ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``."""
        return cls(cls.path_of_url(url), clock=clock, timeout_s=timeout_s, semantic_log_retain=semantic_log_retain)

    @staticmethod
    def path_of_url(url: str) -> str:
        """The database file ``url`` names; a URL that names none is a ConfigurationError."""
        parts = urlsplit(url)
        if parts.scheme != "sqlite":
            raise ConfigurationError(f"PENNY_STORE_URL: expected a sqlite:// URL, got scheme {parts.scheme!r}")
        if parts.netloc or parts.query or parts.fragment:
            raise ConfigurationError(
                "PENNY_STORE_URL: a sqlite URL is just a file path: sqlite:///relative/penny.db "
                "or sqlite:////absolute/penny.db (no host, no options)"
            )
        path = unquote(parts.path[1:]) if parts.path.startswith("/") else ""
        if not path or path == ":memory:" or path.endswith("/"):
            raise ConfigurationError(
                "PENNY_STORE_URL: the sqlite URL needs a database file path, "
                "e.g. sqlite:///data/penny.db (in-memory databases cannot be shared)"
            )
        _refuse_what_is_no_file(path)
        return path

    # -- connections and transactions ------------------------------------------------------
    def _connect(self) -> _Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # ``timeout`` is SQLite's busy timeout: how long a writer waits for the file's write lock.
        # Autocommit mode (isolation_level=None): transactions are opened explicitly below.
        conn = sqlite3.connect(
            self.path,
            timeout=self.timeout_s,
            isolation_level=None,
            check_same_thread=False,  # one thread at a time, but the pool moves it between threads
            factory=_Connection,
        )
        try:
            conn.execute("PRAGMA synchronous=NORMAL")
            if not self._schema_ready:
                self._prepare_file(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _prepare_file(self, conn: sqlite3.Connection) -> None:
        """Switch the file to WAL (a lasting property of the file) and create the schema, once."""
        with self._lock:
            if self._schema_ready:
                return
            self._enable_wal(conn)
            with _transaction(conn, "BEGIN IMMEDIATE"):
                version = int(conn.execute("PRAGMA user_version").fetchone()[0])
                if version > SCHEMA_VERSION:
                    raise StoreError(
                        f"SQLite store {self.path}: schema version {version} is newer than this Penny "
                        f"understands ({SCHEMA_VERSION}); upgrade Penny or use another file"
                    )
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                for table, columns in _ADDED_COLUMNS.items():
                    _add_missing_columns(conn, table, columns)
                for statement in _AFTER_COLUMNS:
                    conn.execute(statement)
                if version < SCHEMA_VERSION:
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self._schema_ready = True

    def _enable_wal(self, conn: sqlite3.Connection) -> None:
        # Changing the journal mode does not wait on SQLite's busy handler: when another process
        # is opening the same new file at this moment it fails at once with "locked", so retry
        # here until the store's timeout.
        if str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
            return
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                # A filesystem without WAL support answers with another mode; it still works.
                conn.execute("PRAGMA journal_mode=WAL").fetchone()
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)

    def _take(self, action: str) -> _Connection:
        """A pooled connection, first come first served: an idle one, else a new one while fewer than
        the cap are open, else the next one given back, waited for in turn for up to ``timeout_s``.
        While anyone waits, a newcomer queues behind them (a thread that has just given one back and
        asks again would otherwise take it before the waiter it went to has woken)."""
        with self._pool_lock:
            self._refuse_if_closed()
            waiter = None
            if self._waiters or (not self._idle and self._opened >= self._max_connections):
                waiter = _Waiter()
                self._waiters.append(waiter)
            elif self._idle:
                return self._idle.pop()  # the most recently used: its pages are the warmest
            else:
                self._opened += 1
        if waiter is None:
            return self._open_pooled()
        handed = waiter.ready.acquire(timeout=self.timeout_s)
        with self._pool_lock:
            self._refuse_if_closed()
            if not handed and waiter in self._waiters:  # nobody handed it anything in time
                self._waiters.remove(waiter)
                raise StoreError(
                    f"SQLite store {self.path}: cannot {action}: all {self._max_connections} connections of this "
                    f"process were in use for more than {self.timeout_s:g}s", maybe_applied=False)
        # Handed a connection (perhaps just as the wait ran out), or the place of one that failed to open.
        return waiter.conn if waiter.conn is not None else self._open_pooled()

    def _open_pooled(self) -> _Connection:
        """Open a connection for the pool, whose place (counted in ``_opened``) is already taken."""
        try:
            return self._register(self._connect())
        except BaseException:
            with self._pool_lock:
                if self._waiters:  # the place goes to the oldest waiter, who tries in turn
                    self._waiters.popleft().ready.release()
                else:
                    self._opened -= 1
            raise

    def _give_back(self, conn: _Connection) -> None:
        with self._pool_lock:
            if self._closed:
                return
            if self._waiters:
                waiter = self._waiters.popleft()
                waiter.conn = conn
                waiter.ready.release()
            else:
                self._idle.append(conn)

    def _writer_connection(self) -> tuple[_Connection, bool]:
        """The connection of the writer holding the writer locks, which must not wait for readers
        (every other writer, of this process and of others, would wait behind it): an idle pooled one
        when nobody waits for it, else a new pooled one under the cap, else the writers' spare, opened
        when first needed (one writer at a time holds the locks). True when pooled (to give back)."""
        with self._pool_lock:
            self._refuse_if_closed()
            if not self._waiters and self._idle:
                return self._idle.pop(), True
            grow = not self._waiters and self._opened < self._max_connections
            if grow:
                self._opened += 1
        if grow:
            return self._open_pooled(), True
        if self._spare is None:
            self._spare = self._register(self._connect())
        return self._spare, False

    def _register(self, conn: _Connection) -> _Connection:
        """Record a new connection for close(), which may have begun while it was opening."""
        with self._lock:
            if self._closed:
                conn.close()
                self._refuse_if_closed()
            self._connections.add(conn)
        return conn

    def _refuse_if_closed(self) -> None:
        if self._closed:
            raise StoreError(f"SQLite store {self.path} is closed", maybe_applied=False)

    def _after_fork(self) -> None:
        """In a forked child (see _after_fork_in_child): the parent's connections, locks and lock
        file description are the parent's. Sharing the flock's description would let parent and
        child write at once, and the child's unlock would release the parent's lock; a lock another
        thread held at fork() would stay held for good. The child starts afresh."""
        _INHERITED.extend(self._connections)
        self._connections = weakref.WeakSet()
        self._lock = threading.Lock()
        self._pool_lock = threading.Lock()
        self._idle, self._waiters, self._opened, self._spare = [], deque(), 0, None
        self._writer = _WriterLock()
        self._processes = self._processes.after_fork()

    @contextmanager
    def _translate(self, action: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            # A failed statement or transaction is rolled back: nothing of it was applied.
            raise StoreError(f"SQLite store {self.path}: cannot {action}: {self._explain(exc)}",
                             maybe_applied=False) from exc
        except OSError as exc:  # creating the parent directory
            reason = exc.strerror or type(exc).__name__
            where = f" (at {exc.filename})" if exc.filename else ""
            raise StoreError(
                f"SQLite store {self.path}: cannot {action}: cannot create its directory: {reason}{where}"
            ) from exc

    def _explain(self, exc: sqlite3.Error) -> str:
        text = str(exc) or type(exc).__name__
        if "unable to open" in text or "readonly" in text:
            return f"{text} (the path must name a file in a writable directory)"
        if "locked" in text or "busy" in text:
            return f"{text} (another writer held it for more than {self.timeout_s:g}s)"
        return text

    @contextmanager
    def _write(self, action: str, *, transaction: bool = True) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction: committed when the block ends, rolled back on error.
        ``transaction=False`` is for a block whose one write is a single statement (atomic alone):
        it spares the BEGIN and COMMIT, each a release of the GIL while this process's writers queue."""
        # Writers of this process queue on a lock instead of racing in SQLite's busy handler, whose
        # sleep-and-retry loop starves some threads under contention (50 threads, one budget). The
        # timeout bounds how long one writer may hold it, not the queue (see _WriterLock).
        # The locks are the ones of this process even if it forks meanwhile (see _after_fork).
        # An in-memory database's one connection is taken first, waiting in the pool like a reader:
        # the writer then finds it held (a writer never waits for a connection holding the locks).
        one_connection: AbstractContextManager[object] = self._using(action) if self._in_memory else nullcontext()
        with self._translate(action), one_connection:
            writer, processes = self._writer, self._processes
            if not writer.acquire(timeout=self.timeout_s):
                raise StoreError(f"SQLite store {self.path}: cannot {action}: other writers held it for more "
                                 f"than {self.timeout_s:g}s", maybe_applied=False)
            try:
                if not processes.acquire(timeout=self.timeout_s):
                    raise StoreError(f"SQLite store {self.path}: cannot {action}: another process's writer held "
                                     f"it for more than {self.timeout_s:g}s", maybe_applied=False)
                try:
                    with self._using(action, writer=True) as conn:
                        if not transaction:
                            yield conn
                            return
                        with _transaction(conn, "BEGIN IMMEDIATE"):
                            yield conn
                finally:
                    processes.release()
            finally:
                writer.release()

    @contextmanager
    def _read(self, action: str) -> Iterator[sqlite3.Connection]:
        with self._translate(action), self._using(action) as conn:
            yield conn

    @contextmanager
    def _using(self, action: str = "use the database", *, writer: bool = False) -> Iterator[_Connection]:
        """A connection of the process's pool for the block; a block inside another of the same
        thread shares the outer one's (a write inside a read, a read inside a write's transaction).
        Threads share at most :data:`MAX_CONNECTIONS`: one per thread (256 listener threads in a
        Slack worker) meant hundreds of connections on one WAL file, each opened during the burst
        that first needed it — two workers answered 600 cache hits at 334–349 answers/s with them,
        422–465 with 16 shared. The ``writer`` (holding the writer locks) never waits for the pool:
        when no connection is free it writes on its own spare one (see _writer_connection); with
        16 threads reading back to back it waited for one for up to a second, and every writer of
        every process waited behind it."""
        pid = os.getpid()
        held: tuple[int, _Connection] | None = getattr(self._local, "held", None)
        if held is not None and held[0] == pid:
            with held[1].in_use:
                yield held[1]
            return
        conn, pooled = self._writer_connection() if writer else (self._take(action), True)
        self._local.held = (pid, conn)
        try:
            with conn.in_use:
                self._refuse_if_closed()  # closed while we waited: the connection may be gone
                yield conn
        finally:
            self._local.held = None
            if pooled and os.getpid() == pid:  # not the parent's connection into a forked child's pool
                self._give_back(conn)

    @contextmanager
    def _snapshot(self, action: str) -> Iterator[sqlite3.Connection]:
        """Several reads of one consistent state (a deferred read transaction; WAL: never blocks)."""
        with self._translate(action), self._using(action) as conn, _transaction(conn, "BEGIN"):
            yield conn

    # -- lifecycle -------------------------------------------------------------------------
    def now(self) -> float:
        return self._clock()

    def ping(self) -> None:
        with self._read("open the database") as conn:
            conn.execute("SELECT 1").fetchone()

    def close(self) -> None:
        with self._pool_lock:
            self._closed = True
            self._idle.clear()
            waiters, self._waiters = self._waiters, deque()
            for waiter in waiters:  # threads waiting for a connection: closed
                waiter.ready.release()
        with self._lock:
            connections = list(self._connections)  # the writers' spare too
            self._connections.clear()
        if self._writer.acquire(timeout=self.timeout_s):  # no writer holds the lock file now
            try:
                self._processes.close()
                self._spare = None
            finally:
                self._writer.release()
        for conn in connections:
            # Wait for a query in flight on another thread; one that does not end in time is left
            # open (the OS reclaims the handle) rather than closed under it.
            if not conn.in_use.acquire(timeout=self.timeout_s):
                continue
            try:
                with suppress(sqlite3.Error):
                    conn.close()
            finally:
                conn.in_use.release()

    # -- idempotency ---------------------------------------------------------------------
    def claim_request(self, workspace_id: str, request_id: str, ttl_s: float) -> Claim:
        # One statement claims a free or expired ID; only when it claims nothing is the holder
        # read. This process's writers are queued behind the lock, so nobody here can change the
        # row in between; another process can only move it on (done, expired, released), hence
        # the loop.
        with self._write("claim a request", transaction=False) as conn:
            while True:
                now = self.now()
                if conn.execute(_CLAIM, (workspace_id, request_id, now + ttl_s, now)).fetchall():
                    return Claim("claimed")
                held = _held_request(conn, workspace_id, request_id, now)
                if held is not None:
                    return held

    def _admit(self, call: AdmitCall) -> Admission:
        workspace_id, request_id, buckets, lines, amount = (call.workspace_id, call.request_id, call.buckets,
                                                            call.lines, call.amount)
        with self._write("admit a request") as conn:
            now = self.now()
            held = _held_request(conn, workspace_id, request_id, now) or _ledger_holds(conn, workspace_id, request_id)
            if held is not None:
                return Admission.held(held)
            taken = _take(conn, workspace_id, buckets, now)
            limit = None if taken is None else LimitDecision(taken.allowed, taken.retry_after, taken.remaining,
                                                              taken.blocking)
            if limit is not None and not limit.allowed:
                return Admission("rate_limited", limit=limit)
            refusal = _check_budget(conn, workspace_id, request_id, lines, amount, now)
            if refusal is not None:
                return Admission("over_budget", budget=refusal)
            if taken is not None:
                _write_buckets(conn, workspace_id, buckets, taken)
            permit = None if call.breaker is None else _acquire_breaker(conn, call.breaker, now)
            if permit is not None and not permit.allowed:
                # Asked last, the breaker refuses after the tokens are taken; nothing else is held.
                return Admission("circuit_open", limit=limit, permit=permit)
            owned = None if call.owner is None else owner_json(call.owner, amount, lines)
            _write_claim(conn, workspace_id, request_id, now + call.ttl_s, owned)
            _write_reservation(conn, workspace_id, request_id, lines, amount, now + call.reserved_for_s)
        return Admission("admitted", limit=limit, permit=permit)

    def complete_request(
        self, workspace_id: str, request_id: str, result: str, ttl_s: float, *, records: Sequence[Record] = ()
    ) -> None:
        with self._write("record a request's result", transaction=bool(records)) as conn:
            now = self.now()
            _complete(conn, workspace_id, request_id, result, now + ttl_s)
            for record in records:
                _record_put(conn, record, now)

    def release_request(self, workspace_id: str, request_id: str) -> None:
        with self._write("release a request") as conn:
            # A reaped claim stays: its unsettled charge is what may have been spent.
            conn.execute(
                "DELETE FROM requests WHERE workspace_id = ? AND request_id = ? AND state = 'claimed' AND reaped = 0",
                (workspace_id, request_id),
            )

    def release_admission(self, workspace_id: str, request_id: str, lines: Sequence[BudgetLine], *,
                          call_id: str) -> None:
        with self._write("release an admission") as conn:
            row = conn.execute(
                "SELECT owner, state, reaped FROM requests WHERE workspace_id = ? AND request_id = ?",
                (workspace_id, request_id),
            ).fetchone()
            if row is None or not owned_by(row[0], call_id):
                return  # settled, released, or admitted again by another call since
            _drop_reservation(conn, workspace_id, request_id, lines)
            if row[1] == "claimed" and not row[2]:  # a reaped claim stays: its charge may have been spent
                conn.execute("DELETE FROM requests WHERE workspace_id = ? AND request_id = ?",
                             (workspace_id, request_id))

    def top_up_admission(self, workspace_id: str, request_id: str, lines: Sequence[BudgetLine], *,
                         owner: ClaimOwner, amount: int) -> TopUp:
        with self._write("top up an admission") as conn:
            now = self.now()
            row = conn.execute(
                "SELECT owner FROM requests WHERE workspace_id = ? AND request_id = ? AND state = 'claimed' "
                "AND reaped = 0 AND expires_at > ?",
                (workspace_id, request_id, now),
            ).fetchone()
            if row is None or not owned_by(row[0], owner.call_id):
                return TopUp("not_held")  # settled, released, expired (the reaper's), or another call's
            refusal = _check_budget(conn, workspace_id, request_id, lines, amount, now)
            if refusal is not None:
                return TopUp("over_budget", refusal)
            conn.executemany(
                "UPDATE budget_reservations SET amount = ? "
                "WHERE workspace_id = ? AND line_key = ? AND reservation_id = ? AND amount < ?",
                [(amount, workspace_id, line.key, request_id, amount) for line in budget.capped(lines)],
            )
            if reserved_amount(row[0]) < amount:
                conn.execute("UPDATE requests SET owner = ? WHERE workspace_id = ? AND request_id = ?",
                             (owner_json(owner, amount, lines), workspace_id, request_id))
        return TopUp("topped_up")

    # -- rate limiting -------------------------------------------------------------------
    def take_tokens(self, workspace_id: str, specs: Sequence[BucketSpec]) -> LimitDecision:
        if not specs:
            return LimitDecision(True, 0.0, (), None)
        with self._write("take rate-limit tokens") as conn:
            taken = _take(conn, workspace_id, specs, self.now())
            assert taken is not None
            _write_buckets(conn, workspace_id, specs, taken)
        return LimitDecision(taken.allowed, taken.retry_after, taken.remaining, taken.blocking)

    # -- budgets -------------------------------------------------------------------------
    def release(self, workspace_id: str, reservation_id: str, lines: Sequence[BudgetLine]) -> None:
        with self._write("release a budget reservation") as conn:
            _drop_reservation(conn, workspace_id, reservation_id, lines)

    def _settle(self, call: SettleCall) -> bool:
        with self._write("settle a request") as conn:
            now = self.now()
            if call.breaker is not None:
                _record_breaker(conn, call.breaker, now, success=True)
            return _settle(conn, call.entry, call.reservation_id, call.lines, call.result, now + call.result_ttl_s)

    def record_hit(self, entry: LedgerEntry, *, result: str, result_ttl_s: float) -> Claim:
        with self._write("record a cache hit") as conn:
            now = self.now()
            held = (_held_request(conn, entry.workspace_id, entry.request_id, now)
                    or _ledger_holds(conn, entry.workspace_id, entry.request_id, unsettled_only=True))
            if held is not None:
                return held
            _settle(conn, entry, None, (), result, now + result_ttl_s)
        return Claim("claimed")

    def reap_interrupted(self, *, limit: int = 500) -> list[LedgerEntry]:
        with self._write("charge interrupted calls") as conn:
            now = self.now()
            rows = conn.execute(
                "SELECT workspace_id, request_id, owner FROM requests WHERE owner IS NOT NULL AND reaped = 0 "
                "AND state = 'claimed' AND expires_at <= ? LIMIT ?",
                (now, limit),
            ).fetchall()
            reaped: list[LedgerEntry] = []
            for workspace_id, request_id, owner in rows:
                entry, lines = unsettled_charge(workspace_id, request_id, owner)
                if conn.execute(_INSERT_LEDGER, _ledger_row(entry)).rowcount:
                    if lines:
                        conn.execute(_add_spent(len(lines)),
                                     [v for line in lines for v in (workspace_id, line.key, entry.cost_micros)])
                    reaped.append(entry)
                _drop_reservation(conn, workspace_id, request_id, lines)
                conn.execute(
                    "UPDATE requests SET reaped = 1, expires_at = ? WHERE workspace_id = ? AND request_id = ?",
                    (now + _REAPED_KEEP_S, workspace_id, request_id),
                )
        return reaped

    def spent(self, workspace_id: str, line: BudgetLine) -> tuple[int, int]:
        with self._read("read a budget") as conn:
            return _line_totals(conn, workspace_id, line.key, self.now(), exclude=None)

    # -- circuit breaker -----------------------------------------------------------------
    def breaker_acquire(self, name: str, policy: BreakerPolicy) -> Permit:
        with self._write("check the circuit breaker") as conn:
            return _acquire_breaker(conn, BreakerRef(name, policy), self.now())

    def breaker_record(self, name: str, policy: BreakerPolicy, *, success: bool, pending: int = 0) -> BreakerState:
        with self._write("record a circuit-breaker outcome") as conn:
            return _record_breaker(conn, BreakerRef(name, policy), self.now(), success=success, pending=pending)

    def breaker_state(self, name: str) -> BreakerState:
        with self._read("read the circuit breaker") as conn:
            return _load_breaker(conn, name)

    # -- exact cache ---------------------------------------------------------------------
    def cache_get(self, scope: str, key: str) -> str | None:
        with self._read("read the cache") as conn:
            row = conn.execute(
                "SELECT value FROM cache WHERE scope = ? AND key = ? AND expires_at > ?",
                (scope, key, self.now()),
            ).fetchone()
        return None if row is None else str(row[0])

    def cache_put(self, scope: str, key: str, value: str, ttl_s: float, *, records: Sequence[Record] = ()) -> None:
        with self._write("write the cache", transaction=bool(records)) as conn:
            now = self.now()
            conn.execute("INSERT OR REPLACE INTO cache (scope, key, value, expires_at) VALUES (?, ?, ?, ?)",
                         (scope, key, value, now + ttl_s))
            for record in records:
                _record_put(conn, record, now)

    def cache_delete(self, scope: str, key: str | None = None) -> int:
        with self._write("delete from the cache") as conn:
            # Only live entries count as deleted; expired ones were already gone as far as callers
            # know. ``?2 IS NULL`` makes one statement serve both a key and the whole scope.
            live = conn.execute(
                "DELETE FROM cache WHERE scope = ?1 AND (?2 IS NULL OR key = ?2) AND expires_at > ?3",
                (scope, key, self.now()),
            ).rowcount
            conn.execute("DELETE FROM cache WHERE scope = ?1 AND (?2 IS NULL OR key = ?2)", (scope, key))
        return int(live)

    def cache_clear(self) -> int:
        with self._write("clear the cache") as conn:
            return int(conn.execute("DELETE FROM cache").rowcount)

    def cache_count(self) -> int:
        with self._read("count cache entries") as conn:
            return int(conn.execute("SELECT COUNT(*) FROM cache").fetchone()[0])

    def cache_drop(self, scope: str, key: str, value: str) -> bool:
        return self._drop("delete from the cache", "DELETE FROM cache WHERE scope = ? AND key = ? AND value = ? "
                                                   "AND expires_at > ?", scope, key, value)

    # -- records -------------------------------------------------------------------------
    def record_get(self, kind: str, key: str) -> str | None:
        with self._read("read a record") as conn:
            row = conn.execute("SELECT value FROM records WHERE kind = ? AND key = ? AND expires_at > ?",
                               (kind, key, self.now())).fetchone()
        return None if row is None else str(row[0])

    def record_put(self, kind: str, key: str, value: str, ttl_s: float) -> None:
        with self._write("write a record") as conn:
            _record_put(conn, Record(kind, key, value, ttl_s), self.now())

    def record_add(self, kind: str, key: str, value: str, ttl_s: float) -> str | None:
        with self._write("add a record") as conn:  # BEGIN IMMEDIATE: nobody writes between the read and the put
            now = self.now()
            row = conn.execute("SELECT value FROM records WHERE kind = ? AND key = ? AND expires_at > ?",
                               (kind, key, now)).fetchone()
            if row is not None:
                return str(row[0])
            _record_put(conn, Record(kind, key, value, ttl_s), now)
        return None

    def record_drop(self, kind: str, key: str, value: str) -> bool:
        return self._drop("delete a record", "DELETE FROM records WHERE kind = ? AND key = ? AND value = ? "
                                             "AND expires_at > ?", kind, key, value)

    def _drop(self, action: str, delete: str, group: str, key: str, value: str) -> bool:
        """Compare-and-delete: ``delete`` removes the live row of ``group`` and ``key`` only while it
        holds ``value`` (one statement, so nothing written since is taken)."""
        with self._write(action, transaction=False) as conn:
            return bool(conn.execute(delete, (group, key, value, self.now())).rowcount)

    # -- ledger --------------------------------------------------------------------------
    def ledger_entry(self, workspace_id: str, request_id: str) -> LedgerEntry | None:
        with self._read("read the ledger") as conn:
            row = conn.execute(_SELECT_LEDGER, (workspace_id, request_id)).fetchone()
        return None if row is None else _ledger_entry(row)

    def _ledger_totals(
        self, action: str, by: str, workspace_id: str, first_day: str, last_day: str, user_id: str | None
    ) -> list[Any]:
        """The ledger's totals (:data:`_TOTALS`) from ``first_day`` to ``last_day``, of one user when
        ``user_id`` is given, grouped by the columns ``by``, which each row starts with."""
        query = f"SELECT {by}, {_TOTALS} FROM ledger WHERE workspace_id = ? AND day BETWEEN ? AND ?"  # noqa: S608
        params: tuple[str, ...] = (workspace_id, first_day, last_day)
        if user_id is not None:
            query += " AND user_id = ?"
            params += (user_id,)
        with self._read(action) as conn:
            return conn.execute(f"{query} GROUP BY {by}", params).fetchall()

    def usage(self, workspace_id: str, first_day: str, last_day: str, user_id: str | None = None) -> UsageSummary:
        groups = self._ledger_totals("summarise the ledger", "user_id, model, day", workspace_id, first_day, last_day,
                                     user_id)
        summary = UsageSummary()
        for user, model, day, *sums in groups:
            group = _group_totals(sums)
            for totals in (
                summary.totals,
                summary.by_user.setdefault(user, UsageTotals()),
                summary.by_model.setdefault(model, UsageTotals()),
                summary.by_day.setdefault(day, UsageTotals()),
            ):
                totals.merge(group)
        return summary

    def usage_by_source(
        self, workspace_id: str, first_day: str, last_day: str, user_id: str | None = None
    ) -> dict[str, UsageTotals]:
        groups = self._ledger_totals("summarise the ledger by source", "source", workspace_id, first_day, last_day,
                                     user_id)
        return {str(source): _group_totals(sums) for source, *sums in groups}

    # -- semantic cache ------------------------------------------------------------------
    def semantic_write(self, entry: SemanticEntry, *, max_entries: int, touched: Sequence[str] = ()) -> SemanticWrite:
        if max_entries < 0:
            raise ValueError("max_entries must be 0 (no cap) or more")
        # The entry's fields as both the table and its change log start with them.
        head = (entry.entry_id, entry.scope, entry.context, entry.question, entry.created_at, entry.expires_at)
        vector = bytes(entry.vector)
        with self._write("store a semantic-cache entry") as conn:
            logged_after = _log_head(conn)  # BEGIN IMMEDIATE: no other writer logs in between
            conn.execute(_UPSERT_SEMANTIC, (*head, _next_use(conn, self.now()), vector, entry.answer))
            conn.execute(_LOG_PUT, (*head, vector))
            _touch(conn, touched, self.now())
            evicted: list[tuple[str, str]] = []
            if max_entries:
                excess = int(conn.execute("SELECT COUNT(*) FROM semantic_entries").fetchone()[0]) - max_entries
                if excess > 0:
                    evicted = conn.execute(
                        "SELECT entry_id, scope FROM semantic_entries ORDER BY last_used LIMIT ?", (excess,)
                    ).fetchall()
                    conn.executemany("DELETE FROM semantic_entries WHERE entry_id = ?", [(i,) for i, _ in evicted])
                    conn.executemany(_LOG_DELETE, evicted)
            logged_through = _log_head(conn)
            self._trim_log(conn)
        return SemanticWrite([entry_id for entry_id, _ in evicted], str(logged_after), str(logged_through))

    def semantic_get(self, entry_id: str, *, touch: bool = True) -> SemanticEntry | None:
        query = (
            "SELECT entry_id, scope, context, question, vector, answer, created_at, expires_at "
            "FROM semantic_entries WHERE entry_id = ? AND expires_at > ?"
        )
        if not touch:
            with self._read("read a semantic-cache entry") as conn:
                row = conn.execute(query, (entry_id, self.now())).fetchone()
            return None if row is None else SemanticEntry(*row)
        with self._write("read a semantic-cache entry") as conn:
            now = self.now()
            row = conn.execute(query, (entry_id, now)).fetchone()
            if row is not None:
                _touch(conn, [entry_id], now)
        return None if row is None else SemanticEntry(*row)

    def semantic_touch(self, entry_ids: Sequence[str]) -> int:
        with self._write("mark semantic-cache entries used") as conn:
            return _touch(conn, entry_ids, self.now())

    def semantic_delete(self, entry_ids: Sequence[str]) -> int:
        with self._write("delete semantic-cache entries") as conn:
            gone: list[tuple[str, str]] = []
            for entry_id in dict.fromkeys(entry_ids):
                row = conn.execute("SELECT scope FROM semantic_entries WHERE entry_id = ?", (entry_id,)).fetchone()
                if row is not None:
                    gone.append((entry_id, row[0]))
            conn.executemany("DELETE FROM semantic_entries WHERE entry_id = ?", [(i,) for i, _ in gone])
            conn.executemany(_LOG_DELETE, gone)
            self._trim_log(conn)
        return len(gone)

    def semantic_delete_where(self, *, context_prefix: str | None = None, expired: bool = False) -> list[str]:
        if expired == (context_prefix is not None):  # both or neither
            raise ValueError("semantic_delete_where: give either context_prefix or expired=True")
        with self._write("delete semantic-cache entries") as conn:
            params: tuple[float | str | bytes, ...]
            if expired:
                where, params = "expires_at <= ?", (self.now(),)
            elif context_prefix:
                # Every text starting with the prefix sorts between it and the prefix followed by a
                # 0xFF byte, which UTF-8 never contains: an exact range the context index serves.
                where = "context >= ? AND context < CAST(? AS TEXT)"
                params = (context_prefix, context_prefix.encode("utf-8") + b"\xff")
            else:
                where, params = "1", ()
            # ``where`` is one of the fixed texts above; values travel as parameters.
            gone = conn.execute(f"SELECT entry_id, scope FROM semantic_entries WHERE {where}", params).fetchall()  # noqa: S608
            conn.execute(f"DELETE FROM semantic_entries WHERE {where}", params)  # noqa: S608
            conn.executemany(_LOG_DELETE, gone)
            self._trim_log(conn)
        return [entry_id for entry_id, _ in gone]

    def semantic_scan(self, *, batch: int = 1000) -> Iterator[SemanticEntry]:
        if batch < 1:
            raise ValueError("batch must be at least 1")
        return self._scan_semantic(batch)

    def _scan_semantic(self, batch: int) -> Iterator[SemanticEntry]:
        # Each batch is its own short read, so a slow consumer holds no transaction open. Entries
        # changed meanwhile may be seen old or new: the caller replays the log from the cursor it
        # took before scanning, which converges either way.
        now: float | None = None
        after = 0
        while True:
            with self._read("load the semantic cache") as conn:
                if now is None:
                    now = self.now()
                rows = conn.execute(
                    "SELECT rowid, entry_id, scope, context, question, vector, created_at, expires_at "
                    "FROM semantic_entries WHERE rowid > ? AND expires_at > ? ORDER BY rowid LIMIT ?",
                    (after, now, batch),
                ).fetchall()
            for _, entry_id, scope, context, question, vector, created_at, expires_at in rows:
                yield SemanticEntry(entry_id, scope, context, question, vector, "", created_at, expires_at)
            if len(rows) < batch:
                return
            after = rows[-1][0]

    def semantic_changes(self, cursor: str | None, *, block_s: float = 0.0, limit: int = 1000) -> SemanticChanges:
        if cursor is None:
            with self._read("read the semantic change log") as conn:
                return SemanticChanges(str(_log_head(conn)))
        if not _LOG_CURSOR.fullmatch(cursor):
            raise ValueError(f"not a cursor of the SQLite semantic change log: {cursor!r}")
        if limit < 1:
            raise ValueError("limit must be at least 1")
        after = int(cursor)
        # Replicas on one machine share the file, so polling it is cheap; the sleep is real time
        # on purpose (a wait for another process, not a window of the store's clock).
        deadline = time.monotonic() + block_s
        while True:
            changes = self._changes_after(after, limit)
            remaining = deadline - time.monotonic()
            if changes.changes or changes.reset or remaining <= 0:
                return changes
            time.sleep(min(_CHANGES_POLL_S, remaining))

    def semantic_wait(self, cursor: str, block_s: float) -> None:
        if not _LOG_CURSOR.fullmatch(cursor):
            raise ValueError(f"not a cursor of the SQLite semantic change log: {cursor!r}")
        after = int(cursor)
        deadline = time.monotonic() + block_s
        while True:
            with self._read("read the semantic change log") as conn:
                head = _log_head(conn)
            remaining = deadline - time.monotonic()
            if head != after or remaining <= 0:
                return
            time.sleep(min(_CHANGES_POLL_S, remaining))

    def semantic_count(self) -> int:
        with self._read("count semantic-cache entries") as conn:
            return int(conn.execute("SELECT COUNT(*) FROM semantic_entries").fetchone()[0])

    # -- blobs -------------------------------------------------------------------------------
    def blob_get(self, key: str) -> bytes | None:
        with self._read("read a blob") as conn:
            row = conn.execute("SELECT value FROM blobs WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def blob_put_many(
        self, items: Mapping[str, bytes], delete: Sequence[str] = (), *, expect: tuple[str, bytes | None] | None = None
    ) -> bool:
        with self._write("write blobs") as conn:
            if expect is not None:
                row = conn.execute("SELECT value FROM blobs WHERE key = ?", (expect[0],)).fetchone()
                if (None if row is None else bytes(row[0])) != expect[1]:
                    return False
            conn.executemany("DELETE FROM blobs WHERE key = ?", [(key,) for key in delete])
            conn.executemany(
                "INSERT OR REPLACE INTO blobs (key, value) VALUES (?, ?)",
                [(key, sqlite3.Binary(value)) for key, value in items.items()],
            )
        return True

    def blob_scan(self, prefix: str) -> Iterator[tuple[str, bytes]]:
        return self._scan_blobs(prefix, _BLOB_SCAN_BATCH)

    def _scan_blobs(self, prefix: str, batch: int) -> Iterator[tuple[str, bytes]]:
        # Keys compare as UTF-8 bytes (BINARY collation), which orders like code points, so the
        # prefix is the key range [prefix, _prefix_end(prefix)) and each batch resumes after the last key.
        end = _prefix_end(prefix)
        after: str | None = None
        while True:
            with self._read("scan blobs") as conn:
                rows = conn.execute(
                    "SELECT key, value FROM blobs WHERE key >= ? AND (? IS NULL OR key > ?) "
                    "AND (? IS NULL OR key < ?) ORDER BY key LIMIT ?",
                    (prefix, after, after, end, end, batch),
                ).fetchall()
            for key, value in rows:
                yield key, bytes(value)
            if len(rows) < batch:
                return
            after = rows[-1][0]

    def _changes_after(self, after: int, limit: int) -> SemanticChanges:
        with self._snapshot("read the semantic change log") as conn:
            head = _log_head(conn)
            first = conn.execute("SELECT MIN(id) FROM semantic_log").fetchone()[0]
            trimmed_through = head if first is None else int(first) - 1
            # A cursor past the head comes from another (replaced) file; one before the trim point
            # missed events. Either way the caller must reload.
            if after > head or after < trimmed_through:
                return SemanticChanges(str(head), reset=True)
            rows = conn.execute(
                "SELECT id, op, entry_id, scope, context, question, vector, created_at, expires_at "
                "FROM semantic_log WHERE id > ? ORDER BY id LIMIT ?",
                (after, limit),
            ).fetchall()
        changes = tuple(_logged_change(row) for row in rows)
        return SemanticChanges(str(rows[-1][0]) if rows else str(after), changes)

    def _trim_log(self, conn: sqlite3.Connection) -> None:
        conn.execute("DELETE FROM semantic_log WHERE id <= ?", (_log_head(conn) - self.semantic_log_retain,))


def _refuse_what_is_no_file(path: str) -> None:
    """A ConfigurationError naming the path when it is a folder, or lies under a file: SQLite only
    said "unable to open database file", which read as a store that is down (exit 1, "check that it
    is reachable"), not as a setting to fix."""
    if os.path.isdir(path):
        raise ConfigurationError(f"PENNY_STORE_URL: {path} is a folder, not a database file; name a file in it, "
                                 f"e.g. sqlite:///{os.path.join(path, 'penny.db')}")
    above = next((p for p in Path(path).parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise ConfigurationError(f"PENNY_STORE_URL: {path} cannot be a database file: {above} is a file, "
                                 "not a folder")


def _prefix_end(prefix: str) -> str | None:
    """The least string above every string starting with ``prefix`` (None: no bound, ``""``)."""
    chars = list(prefix.rstrip("\U0010ffff"))
    if not chars:
        return None
    code = ord(chars[-1]) + 1
    chars[-1] = chr(0xE000 if 0xD800 <= code <= 0xDFFF else code)  # surrogates cannot be stored
    return "".join(chars)


class _WriterLock:
    """The writers' lock of one process. ``acquire`` fails only when the lock made no progress for
    ``timeout`` seconds (one writer held it that long: the file is stuck), not when a thread merely
    waited behind many others that each held it briefly: hundreds of Slack threads answering at once
    queue here, and none of them should fail for it. A wait is still capped at ``_MAX_WAIT_S``.

    A waiter sleeps in the lock itself and wakes at most once per ``timeout`` to check for progress:
    polling more often would have hundreds of waiters taking the GIL from the writer they wait for."""

    _MAX_WAIT_S = 30.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._releases = 0  # bumped on every release: progress

    def acquire(self, timeout: float) -> bool:
        start = time.monotonic()
        while True:
            seen = self._releases
            if self._lock.acquire(timeout=timeout):
                return True
            if self._releases == seen:  # nobody got through for a whole timeout: stuck
                return False
            if time.monotonic() - start >= max(timeout, self._MAX_WAIT_S):
                return False

    def release(self) -> None:
        self._releases += 1
        self._lock.release()


class _ProcessWriters:
    """The writers' lock across processes (gunicorn workers, CLI commands) on one file: an
    ``flock`` on ``<database>-writers`` beside it, taken by the one writer of this process that
    holds :class:`_WriterLock`. SQLite's own busy handler, which a writer of another process
    otherwise waits in, sleeps 1, 2, 5, 10 … ms between looks at a lock held for a fraction of a
    millisecond: two busy workers then spend more time asleep than writing. Here a waiter looks
    again after 50 µs, doubling up to 1 ms, so the lock changes hands as soon as it is free. An
    in-memory database has no other process: nothing to lock. SQLite's own lock still guards every
    write; this one only decides who tries first (a process killed holding it loses it with its fd)."""

    def __init__(self, lock_path: Path | None) -> None:
        self._path = lock_path
        self._fd: int | None = None

    @classmethod
    def beside(cls, database: Path) -> _ProcessWriters:
        return cls(None if str(database) == ":memory:" else Path(f"{database}-writers"))

    def acquire(self, timeout: float) -> bool:
        if self._path is None:
            return True
        import fcntl

        if self._fd is None:
            try:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
            except OSError:  # no place for it (a read-only directory): SQLite's busy handler alone
                self._path = None  # opening the database itself says what is wrong
                return True
        deadline = time.monotonic() + timeout
        pause = 0.00005
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(pause)
                pause = min(pause * 2, 0.001)

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def after_fork(self) -> _ProcessWriters:
        """A forked child's own lock, on a file description of its own: an flock belongs to the
        description, which the child shares with its parent. The inherited descriptor is closed
        (that releases nothing: the parent's stays open) and this object locks nothing any more, so
        a write the fork caught in the child's one thread cannot unlock the parent's lock either."""
        fresh = _ProcessWriters(self._path)
        self.close()
        return fresh

    def close(self) -> None:
        """Close the lock file (call holding :class:`_WriterLock`); writes after it lock nothing
        (the closed store refuses them)."""
        self._path = None
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


@contextmanager
def _transaction(conn: sqlite3.Connection, begin: str) -> Iterator[None]:
    """``begin`` (``BEGIN IMMEDIATE`` for writes, ``BEGIN`` for a consistent read), then ``COMMIT``
    when the block ends; rolled back on any error, also after a failed COMMIT, so the connection is
    never left inside a transaction."""
    conn.execute(begin)
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise


def _rollback(conn: sqlite3.Connection) -> None:
    # The original error is the one worth reporting; SQLite rolls back on its own anyway.
    if conn.in_transaction:
        with suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _add_missing_columns(conn: sqlite3.Connection, table: str, columns: Mapping[str, str]) -> None:
    have = {str(row[1]) for row in conn.execute(f"PRAGMA table_info({table})")}
    for column, declaration in columns.items():
        if column not in have:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")


def _ledger_holds(
    conn: sqlite3.Connection, workspace_id: str, request_id: str, *, unsettled_only: bool = False
) -> Claim | None:
    """A request ID is used once: its ledger entry, kept for good, holds it after its result and
    its interrupted mark are forgotten. ``interrupted`` while the entry is an unsettled charge, else
    ``done`` without a result; None when the ledger has no entry for it. (Run again, the call
    could not be recorded: the settle would find the entry and write nothing, or replace the charge.)
    With ``unsettled_only`` (a cache hit, which costs nothing and is then simply not recorded
    again) only an unsettled charge holds the ID."""
    row = conn.execute("SELECT unsettled FROM ledger WHERE workspace_id = ? AND request_id = ?",
                       (workspace_id, request_id)).fetchone()
    if row is None or (unsettled_only and not row[0]):
        return None
    return Claim("interrupted") if row[0] else Claim("done")


def _held_request(conn: sqlite3.Connection, workspace_id: str, request_id: str, now: float) -> Claim | None:
    """The live claim or result holding a request ID, or None when it may be claimed. An owned
    claim that expired unsettled holds it as ``interrupted`` (reaped or not yet)."""
    row = conn.execute(
        "SELECT state, result, expires_at, owner, reaped FROM requests WHERE workspace_id = ? AND request_id = ?",
        (workspace_id, request_id),
    ).fetchone()
    if row is None:
        return None
    state, result, expires_at, owner, reaped = row
    if reaped:
        return Claim("interrupted") if now < expires_at else None
    if now < expires_at:
        return Claim("done", result) if state == "done" else Claim("in_flight")
    if state == "claimed" and owner is not None:
        return Claim("interrupted")
    return None


# Claims the ID unless a live claim or result, or an interrupted owned claim, holds it; returns a
# row only when it claimed.
_CLAIM = (
    "INSERT INTO requests (workspace_id, request_id, state, result, expires_at) VALUES (?1, ?2, 'claimed', NULL, ?3) "
    "ON CONFLICT (workspace_id, request_id) DO UPDATE SET state = 'claimed', result = NULL, owner = NULL, "
    "reaped = 0, expires_at = excluded.expires_at WHERE requests.expires_at <= ?4 "
    "AND (requests.owner IS NULL OR requests.reaped = 1) RETURNING 1"
)


def _write_claim(
    conn: sqlite3.Connection, workspace_id: str, request_id: str, expires_at: float, owner: str | None
) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO requests (workspace_id, request_id, state, result, expires_at, owner, reaped) "
        "VALUES (?, ?, 'claimed', NULL, ?, ?, 0)",
        (workspace_id, request_id, expires_at, owner),
    )


def _ledger_row(entry: LedgerEntry) -> tuple[Any, ...]:
    return tuple(getattr(entry, column) for column in _LEDGER_COLUMNS)


def _ledger_entry(row: Sequence[Any]) -> LedgerEntry:
    entry = LedgerEntry(*row)
    return replace(entry, unsettled=bool(entry.unsettled))


def _take(
    conn: sqlite3.Connection, workspace_id: str, specs: Sequence[BucketSpec], now: float
) -> limiter.TakeResult | None:
    """``limiter.take`` on the stored buckets (None without buckets); written by _write_buckets."""
    if not specs:
        return None
    states: list[BucketState | None] = []
    for spec in specs:
        row = conn.execute(
            "SELECT tokens, updated FROM buckets WHERE workspace_id = ? AND key = ?", (workspace_id, spec.key)
        ).fetchone()
        states.append(None if row is None else BucketState(float(row[0]), float(row[1])))
    return limiter.take([s.bucket for s in specs], states, [s.cost for s in specs], now)


def _write_buckets(
    conn: sqlite3.Connection, workspace_id: str, specs: Sequence[BucketSpec], taken: limiter.TakeResult
) -> None:
    # A refusal or a pure peek debits nothing, so there is nothing worth writing.
    if not taken.allowed or not any(s.cost > 0 for s in specs):
        return
    conn.executemany(
        "INSERT INTO buckets (workspace_id, key, tokens, updated) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (workspace_id, key) DO UPDATE SET tokens = excluded.tokens, updated = excluded.updated",
        [
            (workspace_id, spec.key, state.tokens, state.updated)
            for spec, state in zip(specs, taken.states, strict=True)
        ],
    )


def _check_budget(
    conn: sqlite3.Connection, workspace_id: str, reservation_id: str, lines: Sequence[BudgetLine], amount: int,
    now: float,
) -> BudgetDecision | None:
    """Purge reservations left by crashed processes; None if ``amount`` fits every capped line,
    else the refusal. Uncapped lines hold no reservations (see :func:`budget.capped`)."""
    lines = budget.capped(lines)
    if not lines:
        return None
    conn.executemany(
        "DELETE FROM budget_reservations WHERE workspace_id = ? AND line_key = ? AND expires_at <= ?",
        [(workspace_id, line.key, now) for line in lines],
    )
    for line in lines:
        spent, reserved = _line_totals(conn, workspace_id, line.key, now, exclude=reservation_id)
        if not budget.fits(spent, reserved, amount, line.limit):
            return BudgetDecision(False, line, spent, reserved)
    return None


def _write_reservation(
    conn: sqlite3.Connection, workspace_id: str, reservation_id: str, lines: Sequence[BudgetLine], amount: int,
    expires_at: float,
) -> None:
    lines = budget.capped(lines)
    if not lines:
        return
    conn.executemany(
        "INSERT OR REPLACE INTO budget_reservations "
        "(workspace_id, line_key, reservation_id, amount, expires_at) VALUES (?, ?, ?, ?, ?)",
        [(workspace_id, line.key, reservation_id, amount, expires_at) for line in lines],
    )


def _settle(
    conn: sqlite3.Connection, entry: LedgerEntry, reservation_id: str | None, lines: Sequence[BudgetLine],
    result: str | None, result_expires_at: float,
) -> bool:
    # The ledger row decides: one already there means this request was settled before, unless it
    # is the unsettled charge of a reaped claim, which the real cost replaces.
    added = entry.cost_micros
    if conn.execute(_INSERT_LEDGER, _ledger_row(entry)).rowcount == 0:
        row = conn.execute("SELECT cost_micros FROM ledger WHERE workspace_id = ? AND request_id = ? AND unsettled = 1",
                           (entry.workspace_id, entry.request_id)).fetchone()
        if row is None:
            return False
        added -= int(row[0])
        conn.execute(_REPLACE_UNSETTLED, (
            entry.ts, entry.user_id, entry.model, entry.kind, entry.prompt_tokens,
            entry.cached_prompt_tokens, entry.completion_tokens, entry.cost_micros, entry.saved_micros,
            entry.cache_status, entry.latency_ms, entry.attempts, entry.source, entry.workspace_id,
            entry.request_id,
        ))
    if reservation_id is not None:
        _drop_reservation(conn, entry.workspace_id, reservation_id, lines)
    if lines and added:
        conn.execute(_add_spent(len(lines)),
                     [value for line in lines for value in (entry.workspace_id, line.key, added)])
    if result is not None:
        _complete(conn, entry.workspace_id, entry.request_id, result, result_expires_at)
    return True


@functools.cache
def _add_spent(rows: int) -> str:
    """One statement adding a cost to ``rows`` budget lines (placeholders only: no data in the SQL)."""
    values = ", ".join(["(?, ?, ?)"] * rows)
    return (
        f"INSERT INTO budget_spent (workspace_id, line_key, spent) VALUES {values} "  # noqa: S608
        "ON CONFLICT (workspace_id, line_key) DO UPDATE SET spent = spent + excluded.spent"
    )


def _acquire_breaker(conn: sqlite3.Connection, ref: BreakerRef, now: float) -> Permit:
    state = _load_breaker(conn, ref.name)
    new_state, permit = breaker.acquire(state, ref.policy, now)
    if new_state != state:
        _save_breaker(conn, ref.name, new_state)
    return permit


def _record_breaker(
    conn: sqlite3.Connection, ref: BreakerRef, now: float, *, success: bool, pending: int = 0
) -> BreakerState:
    state = _load_breaker(conn, ref.name)
    new_state = breaker.record(state, ref.policy, now, success=success, pending=pending)
    if new_state != state:
        _save_breaker(conn, ref.name, new_state)
    return new_state


def _record_put(conn: sqlite3.Connection, record: Record, now: float) -> None:
    conn.execute("INSERT OR REPLACE INTO records (kind, key, value, expires_at) VALUES (?, ?, ?, ?)",
                 (record.kind, record.key, record.value, now + record.ttl_s))
    # Expired records of the kind go a few at a time, so the table stays the size of what lives.
    conn.execute("DELETE FROM records WHERE (kind, key) IN "
                 "(SELECT kind, key FROM records WHERE kind = ? AND expires_at <= ? LIMIT 16)", (record.kind, now))


def _complete(conn: sqlite3.Connection, workspace_id: str, request_id: str, result: str, expires_at: float) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO requests (workspace_id, request_id, state, result, expires_at) "
        "VALUES (?, ?, 'done', ?, ?)",
        (workspace_id, request_id, result, expires_at),
    )


def _line_totals(
    conn: sqlite3.Connection, workspace_id: str, line_key: str, now: float, *, exclude: str | None
) -> tuple[int, int]:
    """(spent, live reserved) on one line, leaving out the reservation ``exclude`` if given."""
    row = conn.execute(
        "SELECT "
        "(SELECT spent FROM budget_spent WHERE workspace_id = ?1 AND line_key = ?2), "
        "(SELECT SUM(amount) FROM budget_reservations WHERE workspace_id = ?1 AND line_key = ?2 "
        " AND expires_at > ?3 AND reservation_id IS NOT ?4)",
        (workspace_id, line_key, now, exclude),
    ).fetchone()
    return int(row[0] or 0), int(row[1] or 0)


def _drop_reservation(
    conn: sqlite3.Connection, workspace_id: str, reservation_id: str, lines: Sequence[BudgetLine]
) -> None:
    lines = budget.capped(lines)
    if not lines:
        return
    conn.executemany(
        "DELETE FROM budget_reservations WHERE workspace_id = ? AND line_key = ? AND reservation_id = ?",
        [(workspace_id, line.key, reservation_id) for line in lines],
    )


def _load_breaker(conn: sqlite3.Connection, name: str) -> BreakerState:
    row = conn.execute(_SELECT_BREAKER, (name,)).fetchone()
    return BreakerState() if row is None else BreakerState(*row)


def _save_breaker(conn: sqlite3.Connection, name: str, state: BreakerState) -> None:
    conn.execute(_SAVE_BREAKER, (name, *(getattr(state, column) for column in _BREAKER_COLUMNS)))


# A group of ledger rows' UsageTotals, in field order (_group_totals reads them back).
_TOTALS = (
    "COUNT(*), SUM(cache_status IN ('exact', 'semantic')), SUM(prompt_tokens), SUM(cached_prompt_tokens), "
    "SUM(completion_tokens), SUM(cost_micros), SUM(saved_micros), SUM(unsettled), "
    "SUM(CASE WHEN unsettled THEN cost_micros ELSE 0 END), SUM(kind = 'embedding')"
)


def _group_totals(sums: Sequence[Any]) -> UsageTotals:
    return UsageTotals(*(int(value) for value in sums))


def _next_use(conn: sqlite3.Connection, now: float) -> int:
    """The store clock in integer microseconds, nudged past the last use so LRU order has no ties."""
    last = conn.execute("SELECT MAX(last_used) FROM semantic_entries").fetchone()[0]
    now_us = int(now * 1_000_000)
    return now_us if last is None or now_us > last else int(last) + 1


def _touch(conn: sqlite3.Connection, entry_ids: Sequence[str], now: float) -> int:
    """Mark existing entries most recently used, in order; returns how many existed."""
    touched = 0
    for entry_id in entry_ids:
        touched += conn.execute(
            "UPDATE semantic_entries SET last_used = ? WHERE entry_id = ?", (_next_use(conn, now), entry_id)
        ).rowcount
    return touched


def _log_head(conn: sqlite3.Connection) -> int:
    """The id of the newest change-log event ever written (0 before the first)."""
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'semantic_log'").fetchone()
    return 0 if row is None else int(row[0])



def _logged_change(row: tuple[Any, ...]) -> SemanticChange:
    """One semantic_log row (id, op, entry_id, scope, then the entry's columns for a put)."""
    _, op, entry_id, scope, context, question, vector, created_at, expires_at = row
    if op == "delete":
        return SemanticChange("delete", entry_id, scope)
    entry = SemanticEntry(entry_id, scope, context, question, vector, "", created_at, expires_at)
    return SemanticChange("put", entry_id, scope, entry)
