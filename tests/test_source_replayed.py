"""A paid call through a source with a budget of its own (a proxy key's) whose settle the store
does not take is spooled with its source and its source's budget line, and the replay charges
that line and records the source: the key's budget and ``/cost``'s split come out as if the store
had never been away. A private ``redis-server``, stopped while the fake OpenAI holds the call.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from proxy_core import CallSource, ChatResult, ManualClock
from proxy_core.gateway import Gateway
from proxy_core.stores.redis import RedisStore
from tests.fake_openai import FakeOpenAI, Gate
from tests.redis_server import RedisServer, redis_server_binary

pytestmark = pytest.mark.skipif(redis_server_binary() is None, reason="redis-server is not installed")

WS = "T1"
DAY = "2026-01-01"
KEY = CallSource("key_a", daily_budget_micros=1_000_000)


@pytest.fixture
def gateway_settings() -> dict[str, object]:
    return {"cache_enabled": False}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis") as running:
        yield running


@pytest.fixture
def store(server: RedisServer, clock: ManualClock) -> Iterator[RedisStore]:
    """The private server's store (conftest's ``store`` is SQLite and the shared Redis)."""
    opened = RedisStore.from_url(server.url, clock=clock, namespace="penny-test-spool")
    yield opened
    opened.close()


def test_a_spooled_settle_keeps_its_source_and_its_budget_line(
    make_gateway: Callable[..., Gateway], fake: FakeOpenAI, clock: ManualClock, server: RedisServer,
    store: RedisStore,
) -> None:
    gw = make_gateway()
    gate = fake.hold(Gate(2))
    answered: list[ChatResult] = []
    call = threading.Thread(target=lambda: answered.append(gw.chat(
        user_id="U1", workspace_id=WS, request_id="proxy:key_a:r1",
        messages=[{"role": "user", "content": "How do I deploy?"}], source=KEY)))
    call.start()
    while fake.count("chat") == 0 and call.is_alive():  # admitted, and at the provider
        call.join(0.01)
    server.stop()  # the provider answers; the settle finds no store
    gate.arrive()
    call.join(timeout=30)
    [result] = answered  # the asker has the answer
    [record] = gw.spool.pending()
    assert record.entry.source == "key_a"
    assert [line.key for line in record.lines][-1].startswith("source:key_a:day:")

    server.start()
    report = gw.replay_spool()
    assert (report.applied, report.pending) == (1, 0)
    status = gw.accounts.source_budget(WS, KEY)
    assert (status.spent, status.reserved) == (result.cost_micros, 0)
    by_source = gw.accounts.spend_by_source(WS, DAY, DAY, "U1")
    assert set(by_source) == {"key_a"} and by_source["key_a"].cost_micros == result.cost_micros
    entry = store.ledger_entry(WS, "proxy:key_a:r1")
    assert entry is not None and entry.source == "key_a" and not entry.unsettled
