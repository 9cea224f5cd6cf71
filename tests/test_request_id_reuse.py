"""A request ID is used once: its ledger entry outlives the recorded result (kept
``idempotency_ttl_s``) and the interrupted mark (a day), and as long as it is there the ID is
never admitted again, nor is its unsettled charge replaced by a cache hit's $0. Otherwise a reused ID (a proxy client's
``Idempotency-Key`` a day later) pays upstream again and that call never reaches the ledger: the
settle finds the ID's entry and writes nothing, so no budget line, the key's own included, is
charged; or it replaces the interrupted call's unsettled charge, which is then lost.

Store contract on every backend, then through the gateway and ``penny proxy`` on SQLite and Redis.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import openai
import pytest

from proxy_core import CallSource, ManualClock, RequestInterrupted, Store
from proxy_core.budget import BudgetLine, budget_lines
from proxy_core.errors import RequestAnswered
from proxy_core.gateway import Gateway
from proxy_core.stores.base import ClaimOwner, LedgerEntry
from tests.fake_openai import FakeOpenAI
from tests.proxy_harness import Proxy, serve_proxy
from tests.redis_targets import EVERY_BACKEND

WS = "T1"
TTL = 90.0
AMOUNT = 3_000
DAY_S = 86_400.0
QUESTION = [{"role": "user", "content": "How do I deploy?"}]


@pytest.fixture(params=EVERY_BACKEND)
def any_store(request: pytest.FixtureRequest) -> Store:
    """Every backend in turn, Redis Cluster and TLS included."""
    result: Store = request.getfixturevalue(f"{request.param}_store")
    return result


def lines_at(now: float) -> list[BudgetLine]:
    return budget_lines(WS, "U1", now, user_daily=10_000, workspace_monthly=0,
                        source=CallSource("key_a", daily_budget_micros=10_000))


def admit(store: Store, clock: ManualClock, request_id: str, lines: list[BudgetLine]) -> str:
    owner = ClaimOwner("U1", "gpt-4o-mini", "chat", clock(), source="key_a")
    return store.admit(WS, request_id, ttl_s=TTL, buckets=[], lines=lines, amount=AMOUNT, breaker=None,
                       owner=owner).state


def entry(clock: ManualClock, request_id: str, cost: int, *, hit: bool = False) -> LedgerEntry:
    now = clock()
    return LedgerEntry(
        request_id=request_id, ts=now, day=datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d"), workspace_id=WS,
        user_id="U1", model="gpt-4o-mini", kind="chat", prompt_tokens=0 if hit else 120, cached_prompt_tokens=0,
        completion_tokens=0 if hit else 40, cost_micros=cost, saved_micros=500 if hit else 0,
        cache_status="exact" if hit else "miss", latency_ms=5, attempts=0 if hit else 1, source="key_a",
    )


def test_an_id_settled_before_is_not_admitted_again_once_its_result_is_forgotten(
    any_store: Store, clock: ManualClock
) -> None:
    lines = lines_at(clock())
    assert admit(any_store, clock, "r1", lines) == "admitted"
    assert any_store.settle(entry(clock, "r1", 700), reservation_id="r1", lines=lines, result='{"ok": 1}',
                            result_ttl_s=60)
    clock.advance(61)  # the result is forgotten; the ledger entry is not
    again = any_store.admit(WS, "r1", ttl_s=TTL, buckets=[], lines=lines, amount=AMOUNT, breaker=None,
                            owner=ClaimOwner("U1", "gpt-4o-mini", "chat", clock(), source="key_a"))
    assert (again.state, again.result) == ("done", None)
    assert [any_store.spent(WS, line) for line in lines] == [(700, 0), (700, 0), (700, 0)]  # nothing reserved
    # A cache hit under it costs nothing and is not recorded: the ledger entry stays the paid call's.
    hit = any_store.record_hit(entry(clock, "r1", 0, hit=True), result='{"hit": 1}', result_ttl_s=60)
    assert hit.state == "claimed"
    kept = any_store.ledger_entry(WS, "r1")
    assert kept is not None and kept.cost_micros == 700 and kept.cache_status == "miss"


def test_an_interrupted_id_stays_interrupted_while_its_charge_is_in_the_ledger(
    any_store: Store, clock: ManualClock
) -> None:
    lines = lines_at(clock())
    assert admit(any_store, clock, "r1", lines) == "admitted"
    clock.advance(TTL + 1)
    [charged] = any_store.reap_interrupted()
    assert charged.unsettled and charged.source == "key_a"
    clock.advance(2 * DAY_S)  # past the day the reaped claim itself is kept
    assert admit(any_store, clock, "r1", lines) == "interrupted"
    # A cache hit under that ID does not replace the charge with $0 either.
    held = any_store.record_hit(entry(clock, "r1", 0, hit=True), result='{"hit": 1}', result_ttl_s=60)
    assert held.state == "interrupted"
    kept = any_store.ledger_entry(WS, "r1")
    assert kept is not None and kept.unsettled and kept.cost_micros == AMOUNT
    assert [any_store.spent(WS, line)[0] for line in lines] == [AMOUNT] * 3
    usage = any_store.usage_by_source(WS, "2026-01-01", "2026-01-03", "U1")
    assert set(usage) == {"key_a"} and usage["key_a"].unsettled_micros == AMOUNT


# -- through the gateway and penny proxy ---------------------------------------------------------


@pytest.fixture
def gateway_settings() -> dict[str, object]:
    return {"cache_enabled": False}


def test_a_reused_request_id_is_refused_not_paid_for_unseen(
    make_gateway: Callable[..., Gateway], fake: FakeOpenAI, clock: ManualClock
) -> None:
    gw = make_gateway()
    key = CallSource("key_a", daily_budget_micros=1_000_000)
    first = gw.chat(user_id="U1", workspace_id=WS, request_id="proxy:key_a:job-1", messages=QUESTION, source=key)
    clock.advance(1.5 * DAY_S)  # past idempotency_ttl_s: the result is forgotten
    with pytest.raises(RequestAnswered):
        gw.chat(user_id="U1", workspace_id=WS, request_id="proxy:key_a:job-1", messages=QUESTION, source=key)
    assert fake.count("chat") == 1  # upstream was not paid again
    usage = gw.accounts.usage(WS, "2026-01-01", "2026-01-02")
    assert (usage.totals.requests, usage.totals.cost_micros) == (1, first.cost_micros)
    today = gw.accounts.source_budget(WS, key)
    assert (today.spent, today.reserved) == (0, 0)  # nothing held on the key's line either


@pytest.fixture
def proxy(store: Store, fake: FakeOpenAI, clock: ManualClock) -> Iterator[Proxy]:
    with serve_proxy(store, fake, clock) as served:
        yield served


def test_penny_proxy_refuses_an_idempotency_key_reused_a_day_later(
    proxy: Proxy, fake: FakeOpenAI, clock: ManualClock
) -> None:
    secret, _ = proxy.keys.create(user_id="U1", workspace_id=WS, name="batch", daily_budget_micros=1_000_000)
    client = proxy.client(secret)
    headers = {"Idempotency-Key": "job-1", "Cache-Control": "no-cache"}
    client.chat.completions.create(model="gpt-4o-mini", messages=QUESTION, extra_headers=headers)  # type: ignore[arg-type]
    clock.advance(1.5 * DAY_S)
    with pytest.raises(openai.ConflictError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=QUESTION, extra_headers=headers)  # type: ignore[arg-type]
    assert caught.value.code == "request_already_answered"
    assert caught.value.response.headers["x-should-retry"] == "false"  # the SDKs' retries stay off
    assert fake.count("chat") == 1
    assert proxy.gateway.accounts.usage(WS, "2026-01-01", "2026-01-02").totals.requests == 1


def test_refusing_a_reused_id_is_not_a_refusal_of_a_retry_within_its_ttl(
    make_gateway: Callable[..., Gateway], fake: FakeOpenAI, clock: ManualClock
) -> None:
    gw = make_gateway()
    first = gw.chat(user_id="U1", workspace_id=WS, request_id="r1", messages=QUESTION)
    clock.advance(3600)
    again = gw.chat(user_id="U1", workspace_id=WS, request_id="r1", messages=QUESTION)
    assert again.content == first.content and fake.count("chat") == 1


def test_a_request_interrupted_long_ago_is_still_refused(
    make_gateway: Callable[..., Gateway], store: Store, fake: FakeOpenAI, clock: ManualClock
) -> None:
    gw = make_gateway()
    lines = budget_lines(WS, "U1", clock(), user_daily=0, workspace_monthly=0)
    owner = ClaimOwner("U1", "gpt-4o-mini", "chat", clock())
    assert store.admit(WS, "r1", ttl_s=TTL, buckets=[], lines=lines, amount=AMOUNT, breaker=None,
                       owner=owner).state == "admitted"
    clock.advance(TTL + 1)
    assert len(gw.reap_interrupted()) == 1
    clock.advance(2 * DAY_S)
    with pytest.raises(RequestInterrupted):
        gw.chat(user_id="U1", workspace_id=WS, request_id="r1", messages=QUESTION)
    assert fake.count("chat") == 0
