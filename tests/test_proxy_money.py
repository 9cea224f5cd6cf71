"""``penny proxy``'s money promises, as a hostile or careless client meets them: what a client is told
a request cost (``x-penny-cost-usd``, the usage chunk's ``penny.cost_micros``, an error body's or a
streamed error event's ``penny.cost_micros``) is what the ledger holds for it, under its key, once;
no budget line is passed; nothing stays reserved. Raw HTTP and the real ``openai`` SDK against the
proxy over a real gateway, the fake OpenAI upstream and both stores."""

from __future__ import annotations

import itertools
import json
import random
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from proxy_core import CallSource, ManualClock, Store
from proxy_core.prices import chat_cost
from proxy_core.tokens import estimate_chat_tokens
from tests.fake_openai import ATTEMPT_FAULTS, FakeOpenAI, Fault, Gate
from tests.proxy_harness import Proxy, serve_proxy
from tests.threads import run_together

MODEL = "gpt-4o-mini"
QUESTION = [{"role": "user", "content": "How do I deploy?"}]


@pytest.fixture
def fake_answer() -> str:
    return "Run make deploy from the repository root."


@pytest.fixture
def proxy(store: Store, fake: FakeOpenAI, clock: ManualClock) -> Iterator[Proxy]:
    with serve_proxy(store, fake, clock, request_timeout_s=30.0) as served:
        yield served


def today(clock: ManualClock) -> str:
    return datetime.fromtimestamp(clock(), UTC).strftime("%Y-%m-%d")


def post(proxy: Proxy, secret: str, path: str, body: dict[str, Any],
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], list[dict[str, Any]]]:
    """One raw request: the status, the headers and the JSON payloads (one, or each SSE event's)."""
    request = urllib.request.Request(proxy.base_url + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {secret}",
                                              "Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=20) as reply:
            status, got, text = reply.status, dict(reply.headers), reply.read().decode()
    except urllib.error.HTTPError as exc:
        status, got, text = exc.code, dict(exc.headers), exc.read().decode()
    if got.get("Content-Type", "").startswith("text/event-stream"):
        return status, got, [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
    return status, got, [json.loads(text)]


def told_micros(headers: dict[str, str], payloads: list[dict[str, Any]]) -> int:
    """What the client was told the request cost, wherever the proxy says it: the usage chunk or
    the error event of a stream, else ``x-penny-cost-usd`` (checked against the body's member)."""
    last = payloads[-1] if payloads else {}
    penny = last.get("penny")
    if penny is not None:
        return int(penny["cost_micros"])
    cost = headers.get("x-penny-cost-usd")
    return 0 if cost is None else int(Decimal(cost) * 1_000_000)


def ledger(proxy: Proxy, clock: ManualClock, key_id: str) -> int:
    by_source = proxy.gateway.store.usage_by_source("T1", today(clock), today(clock), "U1")
    return by_source[key_id].cost_micros if key_id in by_source else 0


def test_a_stream_restarted_with_other_text_says_what_the_answer_cost(
    proxy: Proxy, fake: FakeOpenAI, clock: ManualClock
) -> None:
    """The first attempt broke off after some text; the retry wrote another answer, which cannot
    follow what was sent, so the stream ends with an error event. The answer was paid for and
    settled: the event says what it cost, as every error the proxy sends does, and a retry under
    the same Idempotency-Key gets the answer whole, at no second charge."""
    fake.script(Fault.stream_break(after=2), Fault.ok(content="Use the deploy button instead."), endpoint="chat")
    secret, key = proxy.keys.create(user_id="U1", workspace_id="T1")
    body = {"model": MODEL, "messages": QUESTION, "stream": True, "stream_options": {"include_usage": True}}
    status, headers, events = post(proxy, secret, "/chat/completions", body, {"Idempotency-Key": "k1"})
    assert status == 200 and events[-1]["error"]["code"] == "stream_restarted"
    charged = ledger(proxy, clock, key.id)
    assert charged > 0
    assert told_micros(headers, events) == charged

    status, headers, events = post(proxy, secret, "/chat/completions", body, {"Idempotency-Key": "k1"})
    assert status == 200 and headers["x-penny-replayed"] == "true"
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e.get("choices")) \
        == "Use the deploy button instead."
    assert len(fake.requests_to("chat")) == 2 and ledger(proxy, clock, key.id) == charged


# -- the promises over random sequences of what clients send and the provider does -------------------

FAULTS: dict[str, Fault] = {
    **ATTEMPT_FAULTS,
    "another wording": Fault.ok(content="Use the deploy button on the release page."),
}


@dataclass(frozen=True)
class Ask:
    kind: str  # "chat", "stream" or "embeddings"
    question: int  # one of a few, so that some asks are cache hits or an Idempotency-Key's retry
    idempotency_key: str | None  # one of a few: some asks retry, some reuse a key for another body
    cache_control: str | None
    faults: tuple[str, ...]  # what the provider does with each attempt, in order; then it answers


asks = st.lists(
    st.builds(Ask, kind=st.sampled_from(["chat", "stream", "stream", "embeddings"]), question=st.integers(0, 2),
              idempotency_key=st.sampled_from([None, None, "a", "b"]),
              cache_control=st.sampled_from([None, None, "no-cache", "no-store"]),
              faults=st.lists(st.sampled_from(sorted(FAULTS)), max_size=3).map(tuple)),
    min_size=1, max_size=5,
)
# A key's own daily budget: none; room for several calls; for about one (a reservation is ~300 µ$:
# a long prompt and 100 tokens of answer at gpt-4o-mini's prices); for less than one.
key_budgets = st.sampled_from([None, 5_000, 400, 250, 60])
_users = itertools.count()


def _ask(proxy: Proxy, secret: str, ask: Ask) -> tuple[int, dict[str, str], list[dict[str, Any]]]:
    text = "passage " * 300 + f"How do I deploy service {ask.question}?"
    headers = {k: v for k, v in (("Idempotency-Key", ask.idempotency_key), ("Cache-Control", ask.cache_control))
               if v is not None}
    if ask.kind == "embeddings":
        return post(proxy, secret, "/embeddings", {"model": "text-embedding-3-small", "input": [text]}, headers)
    body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 100}
    if ask.kind == "stream":
        body.update(stream=True, stream_options={"include_usage": True})
    return post(proxy, secret, "/chat/completions", body, headers)


@settings(max_examples=100, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sequence=asks, budget=key_budgets)
# A stream broke off after text and the retry wrote another wording: the stream_restarted event
# said nothing of the answer's cost, though it was settled (until December 2026).
@example(sequence=[Ask("stream", 0, None, None, ("stream broke after text", "another wording"))], budget=None)
def test_whatever_clients_send_and_the_provider_does_each_key_is_told_what_its_ledger_holds(
    proxy: Proxy, fake: FakeOpenAI, clock: ManualClock, sequence: list[Ask], budget: int | None
) -> None:
    user = f"U{next(_users)}"  # each example has a cache and budget lines of its own: the store outlives it
    secret, key = proxy.keys.create(user_id=user, workspace_id="T1", daily_budget_micros=budget)
    first_day = today(clock)
    told = 0
    for ask in sequence:
        fake.clear()
        fake.script(*(FAULTS[name] for name in ask.faults),
                    endpoint="embeddings" if ask.kind == "embeddings" else "chat")
        status, headers, payloads = _ask(proxy, secret, ask)
        assert status in (200, 409, 422, 429, 503), (status, payloads)
        if status != 200:
            body = payloads[-1]
            assert body.get("penny", {}).get("cost_micros", 0) == told_micros(headers, payloads)
        if headers.get("x-penny-replayed") != "true":  # a replay tells the first answer's cost again
            told += told_micros(headers, payloads)
    fake.clear()

    by_source = proxy.gateway.store.usage_by_source("T1", first_day, today(clock), user)
    assert set(by_source) <= {key.id}
    charged = by_source[key.id].cost_micros if by_source else 0
    assert charged == told
    if budget is not None:
        line = CallSource(key.id, budget)
        status_ = proxy.gateway.accounts.source_budget("T1", line)
        assert (status_.spent, status_.reserved) == (charged, 0)
        assert charged <= budget


@pytest.mark.parametrize("stream", [False, True])
def test_one_key_at_its_budget_with_first_attempts_billed_and_lost_never_passes_it(
    proxy: Proxy, fake: FakeOpenAI, clock: ManualClock, stream: bool
) -> None:
    """12 calls at once through one key whose budget holds 4 worst cases. Each admitted call's first
    attempt is held at the provider until all 12 were admitted or refused, then lost after the
    provider took it (billed); the retries are answered in full, so each call costs more than it
    reserved and must top up before its retry. What every client was told is what the key's
    ledger holds, the key's line is not passed, and nothing stays reserved."""
    text = "passage " * 300 + "How do I deploy?"
    messages = [{"role": "user", "content": f"{text} ({i:02d})"} for i in range(12)]
    price = proxy.gateway.prices.price_for(MODEL)
    prompt = {estimate_chat_tokens([m]) for m in messages}
    assert len(prompt) == 1
    worst = chat_cost(price, next(iter(prompt)), 0, 100)
    budget = 4 * worst + 50
    secret, key = proxy.keys.create(user_id="U1", workspace_id="T1", daily_budget_micros=budget)
    gate = fake.hold(Gate(12))
    lost = Fault.stream_break(2) if stream else Fault.drop()
    answer = Fault.ok(prompt_tokens=next(iter(prompt)), completion_tokens=100)
    fake.decide(lambda request, earlier: lost if earlier == 0 else answer)
    told: list[int] = []
    lock = threading.Lock()

    def call(i: int) -> None:
        body: dict[str, Any] = {"model": MODEL, "messages": [messages[i]], "max_tokens": 100}
        if stream:
            body.update(stream=True, stream_options={"include_usage": True})
        status, headers, payloads = post(proxy, secret, "/chat/completions", body, {"Idempotency-Key": f"k{i}"})
        charged = told_micros(headers, payloads)
        if status == 429 and not charged:  # refused at admission: it never reaches the provider
            gate.arrive()
        with lock:
            told.append(charged)

    run_together(12, call)

    assert not gate.broken and gate.waited == 4
    line = proxy.gateway.accounts.source_budget("T1", CallSource(key.id, budget))
    assert ledger(proxy, clock, key.id) == sum(told) == line.spent <= budget
    assert line.reserved == 0


@pytest.mark.parametrize("seed", range(6))
def test_clients_racing_on_a_few_idempotency_keys_are_each_told_what_the_ledger_holds(
    proxy: Proxy, fake: FakeOpenAI, clock: ManualClock, seed: int
) -> None:
    """16 requests at once on one key near its budget: plain, streamed and embeddings, a few bodies
    under a few Idempotency-Keys (retries of one request, and other bodies reusing a key), some
    without; the provider fails attempts in every way it can, decided by the request's order."""
    rng = random.Random(seed)
    faults = sorted(FAULTS)
    picks = [rng.choice(faults) for _ in range(200)]
    fake.decide(lambda request, earlier: FAULTS[picks[(len(fake.requests) + earlier) % len(picks)]])
    secret, key = proxy.keys.create(user_id=f"R{seed}", workspace_id="T1", daily_budget_micros=1_500)
    sequence = [Ask(kind=rng.choice(["chat", "stream", "embeddings"]), question=rng.randrange(2),
                    idempotency_key=rng.choice([None, "a", "b"]), cache_control=rng.choice([None, "no-cache"]),
                    faults=()) for _ in range(16)]
    told: list[int] = []
    lock = threading.Lock()

    def call(i: int) -> None:
        status, headers, payloads = _ask(proxy, secret, sequence[i])
        assert status in (200, 409, 422, 429, 503), (status, payloads)
        charged = 0 if headers.get("x-penny-replayed") == "true" else told_micros(headers, payloads)
        with lock:
            told.append(charged)

    run_together(16, call)
    fake.clear()

    line = proxy.gateway.accounts.source_budget("T1", CallSource(key.id, 1_500))
    by_source = proxy.gateway.store.usage_by_source("T1", today(clock), today(clock), f"R{seed}")
    charged = by_source[key.id].cost_micros if by_source else 0
    assert charged == sum(told) == line.spent <= 1_500
    assert line.reserved == 0


@pytest.mark.parametrize("stream", [False, True])
def test_with_a_billed_embedder_each_answer_says_what_its_questions_embedding_cost_too(
    store: Store, fake: FakeOpenAI, clock: ManualClock, stream: bool
) -> None:
    """With an ``openai:`` embedder the semantic cache embeds each question through the provider,
    billed to the key (a ledger entry of its own, ``<request ID>:question-embedding``). A miss, a
    rephrasing served from the cache and a fresh answer (``no-cache``) each tell the client what
    the request cost, the embedding included: what the key's ledger holds for it."""
    with serve_proxy(store, fake, clock, embedder="openai:text-embedding-3-small") as proxy:
        secret, key = proxy.keys.create(user_id="U1", workspace_id="T1")
        told = 0
        for text, headers in (("How do I deploy the service?", {}),
                              ("How do I deploy the service to production?", {}),
                              ("How do I deploy the service?", {"Cache-Control": "no-cache"})):
            before = ledger(proxy, clock, key.id)
            body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": text}]}
            if stream:
                body.update(stream=True, stream_options={"include_usage": True})
            status, got, payloads = post(proxy, secret, "/chat/completions", body, headers)
            assert status == 200
            assert told_micros(got, payloads) == ledger(proxy, clock, key.id) - before, text
            told += told_micros(got, payloads)
        assert fake.count("embeddings") >= 2
        assert told == ledger(proxy, clock, key.id)


def test_with_a_billed_embedder_a_refused_answer_says_what_its_questions_embedding_cost(
    store: Store, fake: FakeOpenAI, clock: ManualClock
) -> None:
    """The key's budget holds the question's embedding, not the answer's worst case: the embedding
    is made and billed (the semantic lookup runs before admission), the answer refused. The 429
    says what the request cost, as every error that cost something does."""
    with serve_proxy(store, fake, clock, embedder="openai:text-embedding-3-small") as proxy:
        secret, key = proxy.keys.create(user_id="U1", workspace_id="T1", daily_budget_micros=20)
        status, headers, payloads = post(proxy, secret, "/chat/completions",
                                         {"model": MODEL, "messages": QUESTION, "max_tokens": 1000})
        assert status == 429 and payloads[0]["error"]["code"] == "insufficient_quota"
        assert fake.count("embeddings") == 1 and fake.count("chat") == 0
        charged = ledger(proxy, clock, key.id)
        assert charged > 0
        assert told_micros(headers, payloads) == charged == payloads[0]["penny"]["cost_micros"]
