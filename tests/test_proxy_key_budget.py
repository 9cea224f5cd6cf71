"""A proxy key's daily budget is a budget line of its own, reserved before the call like the user's and
the workspace's: it counts only that key's spend (the person's Slack questions never eat it), it
narrows the user's budgets and never widens them, and concurrent calls cannot overshoot it. The real
``openai`` SDK against the proxy, on SQLite and on Redis."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import openai
import pytest

from proxy_core import CallSource, ManualClock, Store
from proxy_core.prices import chat_cost
from proxy_core.tokens import estimate_chat_tokens
from tests.fake_openai import FakeOpenAI, Fault, Gate
from tests.proxy_harness import Proxy, serve_proxy
from tests.threads import run_together

MODEL = "gpt-4o-mini"
MAX_TOKENS = 100
NO_CACHE = {"Cache-Control": "no-cache"}


@pytest.fixture
def fake_answer() -> str:
    return "Run `make deploy`."


@pytest.fixture
def proxy(store: Store, fake: FakeOpenAI, clock: ManualClock) -> Iterator[Proxy]:
    with serve_proxy(store, fake, clock, request_timeout_s=30.0) as served:
        yield served


def question(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def worst_case(proxy: Proxy, text: str) -> int:
    """What the gateway reserves for ``text`` with MAX_TOKENS: the same arithmetic as Gateway._chat."""
    return chat_cost(proxy.gateway.prices.price_for(MODEL), estimate_chat_tokens(question(text)), 0, MAX_TOKENS)


def ask(client: openai.OpenAI, text: str) -> Decimal:
    """One fresh (uncached) completion; its cost in USD from ``x-penny-cost-usd``."""
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=question(text), max_tokens=MAX_TOKENS, extra_headers=NO_CACHE)  # type: ignore[arg-type]
    return Decimal(raw.headers["x-penny-cost-usd"])


def today(clock: ManualClock) -> str:
    return datetime.fromtimestamp(clock(), UTC).strftime("%Y-%m-%d")


def key_budget(proxy: Proxy, key_id: str, budget: int) -> tuple[int, int]:
    """(spent, reserved) on the key's own budget line today."""
    status = proxy.gateway.accounts.source_budget("T1", CallSource(key_id, budget))
    return status.spent, status.reserved


def test_the_keys_budget_counts_only_the_keys_spend_and_refuses_with_the_reset_time(
    proxy: Proxy, fake: FakeOpenAI, clock: ManualClock
) -> None:
    clock.advance(6 * 3600)  # 06:00 UTC: 18 hours to the reset
    budget = worst_case(proxy, "How do I deploy?")  # room for exactly one worst case
    # In Slack the person spends more than the key's whole budget today: it is not the key's.
    fake.script(Fault.ok(completion_tokens=1_000))
    slack = proxy.gateway.chat(user_id="U1", workspace_id="T1", request_id="evt-1", messages=question("In Slack?"),
                               model=MODEL, max_tokens=1_000, use_cache=False)
    assert slack.cost_micros > budget

    secret, key = proxy.keys.create(user_id="U1", workspace_id="T1", name="notebook", daily_budget_micros=budget)
    client = proxy.client(secret)
    assert ask(client, "How do I deploy?") > 0
    with pytest.raises(openai.RateLimitError) as caught:
        ask(client, "How do I deploy?")  # what it spent plus another worst case is over the budget
    assert caught.value.code == "insufficient_quota" and caught.value.type == "insufficient_quota"
    assert f"The {key.id} daily budget" in caught.value.message
    assert "resets at 2026-01-02T00:00:00Z" in caught.value.message
    assert caught.value.response.headers["retry-after"] == str(18 * 3600)
    assert caught.value.response.headers["x-penny-budget-resets-at"] == "2026-01-02T00:00:00Z"
    assert fake.count("chat") == 2  # Slack's call and the key's first; the refusal never went upstream

    # Another key of the same person has a budget of its own, and Slack has none.
    other_secret, _ = proxy.keys.create(user_id="U1", workspace_id="T1", daily_budget_micros=budget)
    assert ask(proxy.client(other_secret), "How do I deploy?") > 0
    proxy.gateway.chat(user_id="U1", workspace_id="T1", request_id="evt-2", messages=question("Still in Slack?"),
                       model=MODEL, max_tokens=MAX_TOKENS, use_cache=False)

    spent = proxy.gateway.accounts.spend_by_source("T1", today(clock), today(clock), "U1")
    assert set(spent) == {"", key.id, _other_id(proxy, key.id)}
    assert spent[""].requests == 2 and spent[key.id].requests == 1
    assert key_budget(proxy, key.id, budget) == (spent[key.id].cost_micros, 0)


def _other_id(proxy: Proxy, first: str) -> str:
    return next(k.id for k in proxy.keys.list() if k.id != first)


def test_the_users_own_budget_still_applies_to_a_key_with_a_larger_one(
    store: Store, fake: FakeOpenAI, clock: ManualClock
) -> None:
    with serve_proxy(store, fake, clock, user_daily_budget_usd="0.000001") as proxy:
        secret, _ = proxy.keys.create(user_id="U1", workspace_id="T1", daily_budget_micros=2_000_000)
        with pytest.raises(openai.RateLimitError) as caught:
            ask(proxy.client(secret), "How do I deploy?")
        assert caught.value.code == "insufficient_quota"
        assert "more than the whole daily budget of $0.000001" in caught.value.message  # the user's line refused
    assert fake.requests == []


def test_a_zero_budget_key_spends_nothing(proxy: Proxy, fake: FakeOpenAI) -> None:
    secret, key = proxy.keys.create(user_id="U1", workspace_id="T1", daily_budget_micros=0)
    with pytest.raises(openai.RateLimitError) as caught:
        ask(proxy.client(secret), "How do I deploy?")
    assert caught.value.code == "insufficient_quota" and key.id in caught.value.message
    assert fake.requests == []


def test_a_stream_over_the_keys_budget_is_an_ordinary_429(proxy: Proxy, fake: FakeOpenAI) -> None:
    secret, _ = proxy.keys.create(user_id="U1", workspace_id="T1", daily_budget_micros=1)
    with pytest.raises(openai.RateLimitError) as caught:
        proxy.client(secret).chat.completions.create(model=MODEL, messages=question("How?"),  # type: ignore[arg-type]
                                                     max_tokens=MAX_TOKENS, stream=True)
    assert caught.value.code == "insufficient_quota"
    assert fake.requests == []


def test_fifty_concurrent_calls_with_one_key_never_settle_above_its_budget(
    proxy: Proxy, fake: FakeOpenAI, clock: ManualClock
) -> None:
    # Every admitted call is held at the fake until all 50 have been admitted or refused, so the
    # reservations all overlap: exactly as many calls are admitted as worst cases fit the key's budget.
    questions = [f"question {i:02d}" for i in range(50)]  # all the same length: one worst case
    worst = {worst_case(proxy, q) for q in questions}
    assert len(worst) == 1
    one = worst.pop()
    budget = 7 * one + one // 2
    secret, key = proxy.keys.create(user_id="U1", workspace_id="T1", daily_budget_micros=budget)
    gate = fake.hold(Gate(50))
    costs: list[Decimal] = []
    refused: list[openai.RateLimitError] = []
    lock = threading.Lock()

    def call(i: int) -> None:
        client = proxy.client(secret)
        try:
            cost = ask(client, questions[i])
            with lock:
                costs.append(cost)
        except openai.RateLimitError as exc:
            with lock:
                refused.append(exc)
            gate.arrive()

    run_together(50, call)
    assert not gate.broken and gate.waited == 7
    assert (len(costs), len(refused)) == (7, 43)
    assert {e.code for e in refused} == {"insufficient_quota"}
    spent = proxy.gateway.accounts.spend_by_source("T1", today(clock), today(clock), "U1")
    assert set(spent) == {key.id} and spent[key.id].requests == 7 == fake.count("chat")
    assert spent[key.id].cost_micros <= budget
    assert key_budget(proxy, key.id, budget) == (spent[key.id].cost_micros, 0)
