"""The fault suite: real faults, injected on this machine, and the promise that no paid call is lost.

Each test breaks something for real: a private ``redis-server`` killed with SIGKILL and restarted,
or frozen with SIGSTOP; a SQLite file made full (``PRAGMA max_page_count``); a worker process
SIGKILLed in the middle of an upstream call. The upstream is the test's fake OpenAI, reached by
the real openai SDK over loopback. After each fault, what the provider was paid for (the fake's
count of chat calls) must equal what the ledger holds and what the budget counters hold.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from proxy_core.budget import budget_lines, period_window
from proxy_core.errors import RequestInterrupted
from proxy_core.gateway import Gateway
from proxy_core.settings import PennySettings
from proxy_core.spool import SettleSpool, count_pending
from proxy_core.stores.base import Store
from proxy_core.stores.redis import RedisStore
from proxy_core.stores.sqlite import SqliteStore
from proxy_core.upstream import ChatResponse, OpenAIUpstream
from tests.fake_openai import FakeOpenAI, Fault
from tests.redis_server import RedisServer, redis_server_binary

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "tests" / "fault_worker.py"
WS = "T01"
needs_redis_server = pytest.mark.skipif(redis_server_binary() is None and os.environ.get("CI") != "true",
                                        reason="redis-server is not installed")


def worker_env(store_url: str, fake: FakeOpenAI, spool: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PENNY_", "OPENAI_", "SLACK_"))}
    env.update({
        "PYTHONPATH": str(ROOT),
        "PENNY_STORE_URL": store_url,
        "PENNY_SPOOL_DIR": str(spool),
        "PENNY_STORE_TIMEOUT_S": "0.5",
        "OPENAI_BASE_URL": fake.base_url,
        "OPENAI_API_KEY": "sk-test-fault-suite",
        "PENNY_CACHE_ENABLED": "false",
        "PENNY_REQUESTS_PER_MINUTE": "0",
        "PENNY_TOKENS_PER_MINUTE": "0",
        "PENNY_USER_DAILY_BUDGET_USD": "5",
        "PENNY_LOG_JSON": "true",
        "PENNY_LOG_LEVEL": "WARNING",
    })
    env.update(extra)
    return env


def start_worker(name: str, count: int, env: dict[str, str], *, drain: bool = True) -> subprocess.Popen[str]:
    command = [sys.executable, str(WORKER), "--name", name, "--count", str(count)]
    return subprocess.Popen([*command, *(["--drain"] if drain else [])], env=env, cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for(condition: Callable[[], bool], workers: Sequence[subprocess.Popen[str]], timeout_s: float = 120.0) -> None:
    """Poll a condition the workers make true (bounded: a loaded 2-core machine can take a while to
    start Python processes); not a wait for a window. A worker that exits first fails the test
    with its own output."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        for worker in workers:
            if worker.poll() is not None:
                out, err = worker.communicate()
                raise AssertionError(f"a worker exited early ({worker.returncode}):\n{out}\n{err[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the workers to reach the fault")
        time.sleep(0.01)


def ledger_matches_upstream(store: Store, upstream_calls: int, users: Sequence[str]) -> None:
    """Upstream calls == ledger entries == budget counters, to the micro-dollar."""
    now = time.time()
    first, last = period_window(now - 86_400, "day")[0], period_window(now + 86_400, "day")[0]
    usage = store.usage(WS, first, last)
    assert usage.totals.requests == upstream_calls
    assert usage.totals.unsettled == 0
    lines = {user: budget_lines(WS, user, now, user_daily=1, workspace_monthly=0) for user in users}
    workspace_spent = store.spent(WS, lines[users[0]][1])[0]
    assert workspace_spent == usage.totals.cost_micros
    assert sum(store.spent(WS, lines[user][0])[0] for user in users) == usage.totals.cost_micros


@needs_redis_server
def test_redis_killed_and_restarted_mid_run_loses_no_paid_call(tmp_path: Path, fake: FakeOpenAI) -> None:
    fake.fail_all(Fault.ok(delay_s=0.05))
    spool = tmp_path / "spool"
    with RedisServer(tmp_path / "redis", "--appendonly", "yes", "--appendfsync", "always") as server:
        env = worker_env(server.url, fake, spool)
        workers = [start_worker(f"w{k}", 40, env) for k in range(4)]
        try:
            wait_for(lambda: fake.count("chat") >= 30, workers)
            server.kill()  # kill -9 while calls are in flight: their settles cannot reach Redis
            time.sleep(1.0)  # the outage itself lasts a second
            server.start()
            outputs = [w.communicate(timeout=120) for w in workers]
        finally:
            for w in workers:
                w.kill()
        summaries = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
        spooled = sum(1 for _, err in outputs for line in err.splitlines()
                      if "ledger_write_spooled" in line and '"op": "settle"' in line)
        store = RedisStore.from_url(server.url)
        try:
            ledger_matches_upstream(store, fake.count("chat"), [f"U{i}" for i in range(4)])
        finally:
            store.close()
    assert sum(s["answered"] for s in summaries) == fake.count("chat")
    assert all(s["pending"] == 0 for s in summaries) and count_pending(spool) == 0
    assert spooled >= 1, "the kill caught no settle in flight: the test proved nothing"
    assert not any("ledger_write_failed" in err for _, err in outputs)


def _fill(conn: sqlite3.Connection) -> None:
    """Make the SQLite file full for this connection: no new page, and no room left in the old ones."""
    conn.execute("CREATE TABLE IF NOT EXISTS junk (b BLOB)")
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")
    for size in (4096, 1024, 256, 64, 16, 4, 1):
        with pytest.raises(sqlite3.OperationalError, match="full"):  # noqa: PT012 (fill until it refuses)
            while True:
                conn.execute("INSERT INTO junk VALUES (zeroblob(?))", (size,))


def next_connection(store: SqliteStore) -> sqlite3.Connection:
    """The connection the store's next call from this (its only) thread will use: the pool's most
    recently used one, which it hands out first."""
    with store._using() as conn:
        return conn


def _unfill(conn: sqlite3.Connection) -> None:
    conn.execute("DELETE FROM junk")
    conn.execute("PRAGMA max_page_count = 1073741823")


class FillingUpstream:
    """The real upstream, but the store's file fills up while the provider answers (same thread)."""

    def __init__(self, inner: OpenAIUpstream, conn: Callable[[], sqlite3.Connection]) -> None:
        self._inner = inner
        self._conn = conn

    def chat(self, **kwargs: Any) -> ChatResponse:
        response = self._inner.chat(**kwargs)
        _fill(self._conn())
        return response

    def embed(self, **kwargs: Any) -> Any:
        return self._inner.embed(**kwargs)


def test_sqlite_full_spools_every_paid_call_and_replays_it_when_space_returns(tmp_path: Path,
                                                                              fake: FakeOpenAI) -> None:
    # An answer longer than a page: recording it needs a new page, which a full file cannot give.
    fake.fail_all(Fault.ok(content="A long answer. " * 600))
    settings = PennySettings(store_url=f"sqlite:///{tmp_path}/penny.db", cache_enabled=False,
                             user_daily_budget_usd="5", requests_per_minute=0)
    store = SqliteStore(tmp_path / "penny.db")
    upstream = FillingUpstream(OpenAIUpstream(api_key="sk-test", base_url=fake.base_url, timeout_s=5),
                               lambda: next_connection(store))
    spool = SettleSpool(tmp_path / "spool")
    gw = Gateway(settings, store=store, upstream=upstream, spool=spool)
    costs = []
    with capture_logs() as logs:
        for i in range(10):
            result = gw.chat(user_id="U0", workspace_id=WS, request_id=f"q{i}",
                             messages=[{"role": "user", "content": f"question {i}"}])
            costs.append(result.cost_micros)  # the user got the answer
            _unfill(next_connection(store))
    assert [e["event"] for e in logs].count("ledger_write_spooled") == 10
    assert count_pending(tmp_path / "spool") == 10
    assert gw.usage(WS, "2000-01-01", "2100-01-01").totals.requests == 0  # nothing reached the file
    report = gw.replay_spool()
    assert (report.applied, report.already, report.pending) == (10, 0, 0)
    assert gw.replay_spool().applied == 0  # replaying again changes nothing
    ledger_matches_upstream(store, fake.count("chat"), ["U0"])
    assert fake.count("chat") == 10 and sum(costs) == gw.usage(WS, "2000-01-01", "2100-01-01").totals.cost_micros
    # The replayed settles also recorded each request's result: asking again replays it, unpaid.
    gw.chat(user_id="U0", workspace_id=WS, request_id="q3", messages=[{"role": "user", "content": "question 3"}])
    assert fake.count("chat") == 10
    gw.close()


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("redis", marks=needs_redis_server)])
def test_a_worker_killed_mid_call_is_charged_unsettled_and_never_run_twice(tmp_path: Path, fake: FakeOpenAI,
                                                                           backend: str) -> None:
    fake.fail_all(Fault.delay(60))  # the provider is slow: the worker dies while it answers
    server = RedisServer(tmp_path / "redis") if backend == "redis" else None
    if server is not None:
        server.start()
    try:
        url = server.url if server is not None else f"sqlite:///{tmp_path}/penny.db"
        # A short claim: retry deadline + request timeout + 30 s.
        env = worker_env(url, fake, tmp_path / "spool", PENNY_RETRY_DEADLINE_S="5", PENNY_REQUEST_TIMEOUT_S="5")
        worker = start_worker("killed", 1, env, drain=False)
        wait_for(lambda: fake.count("chat") == 1, [worker])
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
        later = time.time() + 300  # five minutes on: the 40 s claim expired; the reaper has not come by
        store: Store = (RedisStore.from_url(url, clock=lambda: later) if server is not None
                        else SqliteStore(tmp_path / "penny.db", clock=lambda: later))
        settings = PennySettings(store_url=url, cache_enabled=False, user_daily_budget_usd="5",
                                 requests_per_minute=0, retry_deadline_s=5, request_timeout_s=5)
        gw = Gateway(settings, store=store, upstream=OpenAIUpstream(api_key="sk-test", base_url=fake.base_url,
                                                                     timeout_s=5),
                     spool=SettleSpool(tmp_path / "spool2"), wall=lambda: later)
        line = budget_lines(WS, "U0", time.time(), user_daily=1, workspace_monthly=0)[0]
        reserved_before = store.spent(WS, line)  # (spent, reserved) while the claim is unreaped
        reaped = gw.reap_interrupted()
        assert [(e.request_id, e.unsettled) for e in reaped] == [("killed-0", True)]
        worst = reaped[0].cost_micros
        assert worst > 0 and reserved_before == (0, worst)
        assert store.spent(WS, line) == (worst, 0)  # the budget never counted less than may be spent
        usage = store.usage(WS, "2000-01-01", "2100-01-01")
        assert (usage.totals.unsettled, usage.totals.unsettled_micros) == (1, worst)
        # Slack (or any client) redelivering the request: refused, the provider is not paid twice.
        with pytest.raises(RequestInterrupted):
            gw.chat(user_id="U0", workspace_id=WS, request_id="killed-0",
                    messages=[{"role": "user", "content": "question 0 from killed"}])
        assert fake.count("chat") == 1
        gw.close()
    finally:
        if server is not None:
            server.close()


class PausingUpstream:
    """The real upstream; Redis freezes (SIGSTOP) while the provider answers, so the settle that
    follows times out with the outcome unknown."""

    def __init__(self, inner: OpenAIUpstream, server: RedisServer) -> None:
        self._inner = inner
        self._server = server

    def chat(self, **kwargs: Any) -> ChatResponse:
        response = self._inner.chat(**kwargs)
        self._server.pause()
        return response

    def embed(self, **kwargs: Any) -> Any:
        return self._inner.embed(**kwargs)


@needs_redis_server
def test_a_hung_store_neither_doubles_an_entry_nor_raises_a_false_alarm(tmp_path: Path, fake: FakeOpenAI) -> None:
    with RedisServer(tmp_path / "redis") as server:
        settings = PennySettings(store_url=server.url, cache_enabled=False, user_daily_budget_usd="5",
                                 requests_per_minute=0, store_timeout_s=0.3)
        store = RedisStore.from_url(server.url, timeout_s=0.3)
        upstream = PausingUpstream(OpenAIUpstream(api_key="sk-test", base_url=fake.base_url, timeout_s=5), server)
        gw = Gateway(settings, store=store, upstream=upstream, spool=SettleSpool(tmp_path / "spool"))
        with capture_logs() as logs:
            for i in range(5):
                gw.chat(user_id="U0", workspace_id=WS, request_id=f"h{i}",
                        messages=[{"role": "user", "content": f"question {i}"}])
                server.resume()  # the frozen server now runs what it had received, if anything
            report = gw.replay_spool()
        events = [e["event"] for e in logs]
        assert events.count("ledger_write_spooled") == 5  # each settle timed out: outcome unknown
        assert report.pending == 0 and report.applied + report.already == 5
        assert "ledger_entries_pending" not in events and "ledger_write_failed" not in events
        ledger_matches_upstream(store, fake.count("chat"), ["U0"])  # no entry twice, none missing
        gw.close()


def test_a_spool_left_by_a_crashed_process_is_adopted_and_replayed(tmp_path: Path, fake: FakeOpenAI) -> None:
    db = tmp_path / "penny.db"
    fake.fail_all(Fault.ok(content="A long answer. " * 600))
    settings = PennySettings(store_url=f"sqlite:///{db}", cache_enabled=False, requests_per_minute=0)
    store = SqliteStore(db)
    upstream = FillingUpstream(OpenAIUpstream(api_key="sk-test", base_url=fake.base_url, timeout_s=5),
                               lambda: next_connection(store))
    gw = Gateway(settings, store=store, upstream=upstream, spool=SettleSpool(tmp_path / "spool"))
    gw.chat(user_id="U0", workspace_id=WS, request_id="c1", messages=[{"role": "user", "content": "hi"}])
    _unfill(next_connection(store))
    own = gw.spool._own
    assert own is not None and count_pending(tmp_path / "spool") == 1
    own.handle.close()  # the process "dies": its lock goes, its file stays
    gw.spool._own = None
    store.close()

    # A fresh process with the default spool directory beside the SQLite file... and the old one.
    restarted = Gateway(settings, store=SqliteStore(db), upstream=upstream.__dict__["_inner"],
                        spool=SettleSpool(tmp_path / "spool"))
    assert restarted.replay_spool().applied == 1
    assert restarted.usage(WS, "2000-01-01", "2100-01-01").totals.requests == 1 == fake.count("chat")
    assert count_pending(tmp_path / "spool") == 0 and not list((tmp_path / "spool").glob("*.spool"))
    restarted.close()
