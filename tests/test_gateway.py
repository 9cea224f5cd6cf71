"""The gateway pipeline end to end: the real openai SDK over HTTP to the fake server, real stores.

Every test runs against SQLite and Redis (the ``store`` fixture) with a manual clock: sleeps are
recorded, never waited.
"""

from __future__ import annotations

import os
import random
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
import structlog

from proxy_core.budget import CallSource, source_day_line
from proxy_core.clock import ManualClock
from proxy_core.errors import (
    BudgetExceeded,
    CircuitOpen,
    ConfigurationError,
    PennyError,
    RateLimited,
    RequestInFlight,
    RequestInterrupted,
    StoreError,
    UpstreamError,
    UpstreamRejected,
)
from proxy_core.gateway import Gateway
from proxy_core.prices import PriceTable, chat_cost, embedding_cost
from proxy_core.settings import PennySettings
from proxy_core.stores import store_from_url
from proxy_core.stores.base import Store, TopUp
from proxy_core.tokens import estimate_chat_tokens, estimate_text_tokens
from proxy_core.upstream import OpenAIUpstream
from tests.fake_openai import API_KEY, FakeOpenAI, Fault, Gate, RecordedRequest
from tests.polling import until
from tests.redis_server import free_port
from tests.threads import run_together

DAY = "2026-01-01"  # ManualClock starts at 2026-01-01T00:00:00Z

GatewayFactory = Callable[..., Gateway]  # the make_gateway fixture (tests/conftest.py)


def _messages(question: str, system: str = "You are Penny.") -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": question}]


def ask(gw: Gateway, question: str, request_id: str, *, user: str = "U1", workspace: str = "W1",
        system: str = "You are Penny.", **kw: Any) -> Any:
    return gw.chat(user_id=user, workspace_id=workspace, request_id=request_id,
                   messages=_messages(question, system), **kw)


def test_miss_is_billed_exactly_and_recorded_in_the_ledger(make_gateway: GatewayFactory, fake: FakeOpenAI,
                                                          store: Store) -> None:
    fake.script(Fault.ok(prompt_tokens=1234, cached_tokens=200, completion_tokens=56))
    gw = make_gateway(chat_model="gpt-4o-mini")
    result = ask(gw, "How do I deploy?", "ev1")
    # gpt-4o-mini: 1034 × $0.15 + 200 × $0.075 + 56 × $0.60 per 1M = 155.1 + 15 + 33.6 = 203.7 → 204 µ$
    assert result.cost_micros == 204
    assert (result.prompt_tokens, result.cached_prompt_tokens, result.completion_tokens) == (1234, 200, 56)
    assert result.cache_status == "miss" and result.attempts == 1
    entry = store.ledger_entry("W1", "ev1")
    assert entry is not None
    assert (entry.cost_micros, entry.kind, entry.user_id, entry.cache_status) == (204, "chat", "U1", "miss")
    usage = gw.usage("W1", DAY, DAY)
    assert usage.totals.cost_micros == 204 and usage.by_user["U1"].requests == 1


def test_exact_hit_costs_nothing_records_savings_and_skips_upstream(make_gateway: GatewayFactory,
                                                                   fake: FakeOpenAI) -> None:
    gw = make_gateway()
    first = ask(gw, "How do I deploy?", "ev1")
    second = ask(gw, "  how do I DEPLOY ", "ev2")
    assert fake.count("chat") == 1
    assert second.cache_status == "exact" and second.content == first.content
    assert second.cost_micros == 0 and second.saved_micros == first.cost_micros > 0
    usage = gw.usage("W1", DAY, DAY)
    assert usage.totals.requests == 2 and usage.totals.cache_hits == 1
    assert usage.totals.cost_micros == first.cost_micros
    assert usage.totals.saved_micros == first.cost_micros


def test_cache_never_crosses_workspaces_system_prompts_or_models(make_gateway: GatewayFactory,
                                                                 fake: FakeOpenAI) -> None:
    gw = make_gateway()
    ask(gw, "How do I deploy?", "a")
    assert ask(gw, "How do I deploy?", "b", workspace="W2").cache_status == "miss"
    assert ask(gw, "How do I deploy?", "c", system="You are a pirate.").cache_status == "miss"
    assert ask(gw, "How do I deploy?", "d", model="gpt-4o-mini").cache_status == "miss"
    assert ask(gw, "How do I deploy?", "e", context="docs-v2").cache_status == "miss"
    assert fake.count("chat") == 5


def test_fresh_answer_bypasses_and_replaces_the_cached_one(make_gateway: GatewayFactory,
                                                          fake: FakeOpenAI) -> None:
    gw = make_gateway()
    ask(gw, "How do I deploy?", "a")
    fake.script(Fault.ok(content="A better answer."))
    fresh = ask(gw, "How do I deploy?", "b", use_cache=False)
    assert fresh.cache_status == "bypass" and fresh.cost_micros > 0
    again = ask(gw, "How do I deploy?", "c")
    assert again.cache_status == "exact" and again.content == "A better answer."
    assert fake.count("chat") == 2


def test_exact_cache_alone_a_thumbs_down_evicts_the_answer_for_every_replica(
    make_gateway: GatewayFactory, fake: FakeOpenAI, open_twin: Callable[[], Store]
) -> None:
    """With ``PENNY_SEMANTIC_CACHE=false`` a 👎 evicted nothing ("exact entries are found by their
    question"): the answer everyone 👎'd was served for the whole TTL."""
    a = make_gateway(semantic_cache=False)
    first = ask(a, "How do I deploy?", "r1")
    assert ask(a, "how do I deploy", "r2").cache_status == "exact"
    b = make_gateway(open_twin(), semantic_cache=False)
    assert b.invalidate_cache_entry(first.cache_entry_id)  # the 👎, on another replica
    assert not b.invalidate_cache_entry(first.cache_entry_id)  # already gone
    assert ask(a, "How do I deploy?", "r3").cache_status == "miss"
    assert fake.count("chat") == 2
    assert not a.invalidate_cache_entry("never-cached")
    a.store.record_put("cache:exact_entry", "from-a-newer-version", '["not", "this", "shape"]', 60)
    assert not a.invalidate_cache_entry("from-a-newer-version")  # nothing it can find, and no error


def test_exact_cache_alone_a_thumbs_down_on_a_replaced_answer_leaves_the_newer_one(
    make_gateway: GatewayFactory, fake: FakeOpenAI
) -> None:
    gw = make_gateway(semantic_cache=False)
    old = ask(gw, "How do I deploy?", "r1")
    fake.script(Fault.ok(content="Use the new pipeline."))
    ask(gw, "How do I deploy?", "r2", use_cache=False)  # a fresh answer replaces it
    assert not gw.invalidate_cache_entry(old.cache_entry_id)  # a late 👎 on the old answer
    again = ask(gw, "How do I deploy?", "r3")
    assert again.cache_status == "exact" and again.content == "Use the new pipeline."
    assert fake.count("chat") == 2


@pytest.mark.parametrize(
    ("cached", "asked", "status"),
    [
        ("What is 10?", "What is 10!", "miss"),  # 10 factorial
        ("What is 10!", "what is 10!?", "exact"),
        ("What is 10?", "What is 10 !", "exact"),  # not right after the number: punctuation
        ("How do I deploy?", "How do I deploy!", "exact"),
    ],
)
def test_exact_cache_alone_keeps_a_factorial_apart_and_drops_other_exclamation_marks(
    make_gateway: GatewayFactory, fake: FakeOpenAI, cached: str, asked: str, status: str
) -> None:
    gw = make_gateway(semantic_cache=False)
    ask(gw, cached, "r1")
    assert ask(gw, asked, "r2").cache_status == status


def test_repeated_request_id_gives_one_call_and_one_ledger_entry(make_gateway: GatewayFactory,
                                                                 fake: FakeOpenAI, store: Store) -> None:
    gw = make_gateway(cache_enabled=False)
    first = ask(gw, "Where are the logs?", "Ev123")
    again = ask(gw, "Where are the logs?", "Ev123")
    assert fake.count("chat") == 1
    assert again.replayed and not first.replayed
    assert again.content == first.content and again.cost_micros == first.cost_micros
    assert gw.usage("W1", DAY, DAY).totals.requests == 1


def test_concurrent_duplicates_make_one_upstream_call(make_gateway: GatewayFactory, fake: FakeOpenAI,
                                                      clock: ManualClock) -> None:
    # The first delivery's upstream call is held until the two duplicates have given up waiting
    # for it (they poll with the manual clock's sleep), so all three overlap on every run.
    gate = fake.hold(Gate(3))
    gw = make_gateway(cache_enabled=False, request_timeout_s=30.0)
    results: list[Any] = []
    errors: list[BaseException] = []

    def deliver() -> None:
        try:
            results.append(ask(gw, "Where are the logs?", "EvDup"))
        except BaseException as exc:
            errors.append(exc)
            gate.arrive()

    threads = [threading.Thread(target=deliver) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not gate.broken
    assert fake.count("chat") == 1
    assert [type(e) for e in errors] == [RequestInFlight, RequestInFlight]
    assert [r.replayed for r in results] == [False]
    # Once it is answered, the same event again is a replay, not a second call.
    assert ask(gw, "Where are the logs?", "EvDup").replayed
    assert fake.count("chat") == 1


def test_in_flight_request_is_refused_after_waiting(make_gateway: GatewayFactory, store: Store,
                                                    clock: ManualClock) -> None:
    gw = make_gateway(inflight_wait_s=5.0)
    assert store.claim_request("W1", "busy", 300).state == "claimed"
    with pytest.raises(RequestInFlight):
        ask(gw, "q", "busy")
    assert 5.0 <= sum(clock.sleeps) < 7.0


def test_rate_limit_tells_exactly_when_to_retry(make_gateway: GatewayFactory, clock: ManualClock,
                                               fake: FakeOpenAI) -> None:
    gw = make_gateway(requests_per_minute=6, request_burst=2, cache_enabled=False)
    ask(gw, "q1", "r1")
    ask(gw, "q2", "r2")
    with pytest.raises(RateLimited) as info:
        ask(gw, "q3", "r3")
    assert info.value.limit == "requests"
    assert info.value.retry_after == pytest.approx(10.0)  # one token at 6/min
    assert "10s" in str(info.value)
    clock.advance(10.0)
    ask(gw, "q3", "r3")
    assert fake.count("chat") == 3
    # Another user has a bucket of their own.
    ask(gw, "q4", "r4", user="U2")


def test_cache_hits_are_served_when_rate_limited_or_out_of_budget(make_gateway: GatewayFactory,
                                                                  fake: FakeOpenAI) -> None:
    gw = make_gateway(requests_per_minute=1, request_burst=1, user_daily_budget_usd="0.002")
    ask(gw, "What is the refund policy?", "a")
    with pytest.raises((RateLimited, BudgetExceeded)):
        ask(gw, "Something new", "b")
    hit = ask(gw, "What is the refund policy?", "c")
    assert hit.cache_status == "exact" and hit.cost_micros == 0


def test_budget_refusal_names_scope_limit_and_reset(make_gateway: GatewayFactory, fake: FakeOpenAI,
                                                    store: Store) -> None:
    gw = make_gateway(user_daily_budget_usd="0.001", max_output_tokens=800)
    # gpt-4.1-mini worst case: 800 output tokens × $1.60/1M = 1280 µ$ > 1000 µ$ cap.
    with pytest.raises(BudgetExceeded) as info:
        ask(gw, "hello", "b1")
    err = info.value
    assert err.scope == "daily" and err.limit == 1000 and err.spent == 0
    assert err.resets_at == 1_767_225_600.0 + 86_400
    assert "2026-01-02 00:00 UTC" in str(err)
    # Its worst case is more than the whole day's budget: it would not fit after the reset either.
    worst = chat_cost(PriceTable.load(None).price_for("gpt-4.1-mini"), estimate_chat_tokens(_messages("hello")), 0, 800)
    assert err.needed == worst and err.never_fits
    assert f"could cost up to ${worst / 1e6:.4f}, more than the whole daily budget of $0.001" in str(err)
    assert fake.count("chat") == 0
    assert store.ledger_entry("W1", "b1") is None

    fits = make_gateway(user_daily_budget_usd="0.002", max_output_tokens=800, cache_enabled=False)
    fake.script(Fault.ok(prompt_tokens=1_000, completion_tokens=600))  # spends most of the day
    ask(fits, "hello", "b2")
    with pytest.raises(BudgetExceeded) as info:
        ask(fits, "hello", "b3")
    assert not info.value.never_fits and "has too little left for this request" in str(info.value)


def test_a_prompt_of_random_letters_cannot_spend_past_the_budget(make_gateway: GatewayFactory,
                                                                  fake: FakeOpenAI) -> None:
    # Random lowercase words encode to ~2.3x the tokens the estimate used to reserve for them, so a
    # client sending such a prompt with max_tokens 1 was admitted on an estimate under the cap and then
    # billed (the provider's true usage) past it. The estimate is now an upper bound of any text.
    from tests.true_tokens import counter

    rng = random.Random(11)
    letters = "abcdefghijklmnopqrstuvwxyz"
    prompt = " ".join("".join(rng.choice(letters) for _ in range(rng.randint(5, 8))) for _ in range(600))
    messages = _messages(prompt)
    true_o200k = counter("o200k_base")  # what gpt-4.1-mini is billed in
    prompt_tokens = 3 + sum(3 + 1 + true_o200k(m["content"]) for m in messages)  # OpenAI's accounting
    price = PriceTable.load(None).price_for("gpt-4.1-mini")
    true_cost = chat_cost(price, prompt_tokens, 0, 1)
    budget = true_cost // 2  # micro-dollars; the old estimate's worst case (~0.44x) fit under it
    gw = make_gateway(user_daily_budget_usd=str(Decimal(budget) / 1_000_000), cache_enabled=False)
    fake.script(Fault.ok(prompt_tokens=prompt_tokens, completion_tokens=1))
    refusals: list[BudgetExceeded] = []
    try:
        ask(gw, prompt, "r1", max_tokens=1)
    except BudgetExceeded as exc:
        refusals.append(exc)
    assert gw.usage("W1", DAY, DAY).totals.cost_micros <= budget  # the old estimate: 860 µ$ on a 430 µ$ cap
    assert [r.never_fits for r in refusals] == [True] and refusals[0].needed >= true_cost
    assert estimate_chat_tokens(messages) >= prompt_tokens


def test_a_model_priced_at_zero_still_answers_after_the_budget_is_lowered_below_the_spend(
        make_gateway: GatewayFactory, fake: FakeOpenAI, tmp_path: Any) -> None:
    # A self-hosted model priced at $0 in PENNY_PRICE_FILE costs nothing: it answered when the day
    # was spent exactly to its cap, and must still answer when the operator lowers the cap below it.
    prices = tmp_path / "prices.json"
    prices.write_text('{"models": {"local-llm": {"kind": "chat", "input": "0", "cached_input": "0", '
                      '"output": "0", "source": "self-hosted", "date": "2026-01-01"}}}')
    gw = make_gateway(user_daily_budget_usd="0.01", max_output_tokens=100, price_file=str(prices),
                      cache_enabled=False)
    fake.script(Fault.ok(prompt_tokens=0, completion_tokens=5_000), Fault.ok(), Fault.ok())
    assert ask(gw, "paid", "p1").cost_micros == 8_000  # 8000 µ$ of the $0.01 day (5000 × $1.60 per 1M)
    lowered = make_gateway(user_daily_budget_usd="0.005", max_output_tokens=100, price_file=str(prices),
                           cache_enabled=False)
    with pytest.raises(BudgetExceeded):
        ask(lowered, "paid again", "p2")
    free = ask(lowered, "free", "f1", model="local-llm")
    assert free.cost_micros == 0 and free.model == "local-llm"


def test_workspace_monthly_budget_is_shared_by_users(make_gateway: GatewayFactory, fake: FakeOpenAI) -> None:
    # Each call reserves its worst case (≈20 prompt tokens × $0.40 + 100 × $1.60 per 1M ≈ 170 µ$)
    # and settles about that much, so a $0.001 month admits five or so calls, whoever asks.
    gw = make_gateway(workspace_monthly_budget_usd="0.001", max_output_tokens=100, cache_enabled=False)
    fake.script(*[Fault.ok(completion_tokens=100) for _ in range(10)])
    refusals: list[BudgetExceeded] = []
    for i in range(10):
        try:
            ask(gw, f"question {i}", f"w{i}", user=f"U{i}")
        except BudgetExceeded as exc:
            refusals.append(exc)
    assert refusals
    assert {e.scope for e in refusals} == {"workspace monthly"}
    assert gw.usage("W1", DAY, DAY).totals.cost_micros <= 1000


def test_fifty_concurrent_calls_never_settle_above_the_budget(make_gateway: GatewayFactory, fake: FakeOpenAI,
                                                              store: Store) -> None:
    # Every admitted call is held at the fake until all 50 have been admitted or refused, so the
    # reservations all overlap: exactly as many calls are admitted as worst cases fit the budget.
    gate = fake.hold(Gate(50))
    gw = make_gateway(user_daily_budget_usd="0.01", max_output_tokens=800, cache_enabled=False,
                      request_timeout_s=30.0)
    questions = [f"question {i:02d}" for i in range(50)]  # all the same length: one worst case
    worst = {chat_cost(PriceTable.load(None).price_for(gw.settings.chat_model),
                       estimate_chat_tokens(_messages(q)), 0, 800) for q in questions}
    assert len(worst) == 1
    fits = 10_000 // worst.pop()
    assert 1 < fits < 50
    ok: list[Any] = []
    refused: list[BudgetExceeded] = []
    lock = threading.Lock()

    def call(i: int) -> None:
        try:
            r = ask(gw, questions[i], f"c{i}")
            with lock:
                ok.append(r)
        except BudgetExceeded as exc:
            with lock:
                refused.append(exc)
            gate.arrive()

    run_together(50, call)
    assert not gate.broken and gate.waited == fits
    assert (len(ok), len(refused)) == (fits, 50 - fits)
    assert {e.scope for e in refused} == {"daily"}
    usage = gw.usage("W1", DAY, DAY)
    assert usage.totals.cost_micros == sum(r.cost_micros for r in ok) <= 10_000
    assert usage.totals.requests == len(ok) == fake.count("chat")
    assert store.spent("W1", _user_day_line(gw)) == (usage.totals.cost_micros, 0)  # nothing left reserved


def test_retry_after_is_honoured_and_every_attempt_recorded(make_gateway: GatewayFactory, fake: FakeOpenAI,
                                                            clock: ManualClock) -> None:
    fake.script(Fault.status(429, retry_after="2"), Fault.status(503), Fault.ok())
    gw = make_gateway()
    result = ask(gw, "q", "r")
    assert result.attempts == 3
    assert fake.count("chat") == 3
    assert clock.sleeps[0] == 2.0  # Retry-After, not the backoff
    assert len(clock.sleeps) == 2


class _Shown:
    """An AnswerStream that keeps the text on screen."""

    def __init__(self) -> None:
        self.text = ""

    def delta(self, text: str) -> None:
        self.text += text

    def restart(self) -> None:
        self.text = ""


def test_a_streamed_attempt_that_broke_off_is_charged_for_what_it_generated(
    make_gateway: GatewayFactory, fake: FakeOpenAI, store: Store
) -> None:
    fake.script(Fault.stream_break(3), Fault.ok(prompt_tokens=40, completion_tokens=12))
    gw = make_gateway(chat_model="gpt-4.1-mini")
    shown = _Shown()

    result = ask(gw, "How do I deploy?", "ev1", stream=shown)

    price = PriceTable.load(None).price_for("gpt-4.1-mini")
    answer_cost = chat_cost(price, 40, 0, 12)
    # What the first attempt generated before it broke ("Answer to: How "), on the same prompt: the
    # 40 tokens the provider counted for it when the retry answered.
    broken_cost = chat_cost(price, 40, 0, estimate_text_tokens("Answer to: How "))
    assert broken_cost > 0
    assert (result.attempts, result.cost_micros, shown.text) == (2, answer_cost + broken_cost, result.content)
    assert (result.prompt_tokens, result.completion_tokens) == (40, 12)  # the answer's own usage
    entry = store.ledger_entry("W1", "ev1")
    assert entry is not None and (entry.cost_micros, entry.attempts) == (answer_cost + broken_cost, 2)
    # A hit on the answer saves what the answer cost, not the attempt that broke off before it.
    hit = ask(gw, "How do I deploy?", "ev2", user="U2")
    assert (hit.cache_status, hit.saved_micros) == ("exact", answer_cost)


def test_a_call_whose_streamed_attempts_all_broke_off_is_charged_for_them_and_may_run_again(
    make_gateway: GatewayFactory, fake: FakeOpenAI, store: Store
) -> None:
    fake.script(Fault.stream_break(2), Fault.stream_break(2, how="error"), Fault.stream_break(0))
    gw = make_gateway(chat_model="gpt-4.1-mini", retry_max_attempts=3, user_daily_budget_usd="1")

    with pytest.raises(UpstreamError) as failed:
        ask(gw, "How do I deploy?", "ev1", stream=_Shown())

    price = PriceTable.load(None).price_for("gpt-4.1-mini")
    # Two attempts generated "Answer to: " before breaking off; the third broke off before any text,
    # its prompt taken all the same: three prompts (estimated), two texts.
    broken_cost = chat_cost(price, 3 * estimate_chat_tokens(_messages("How do I deploy?")), 0,
                            2 * estimate_text_tokens("Answer to: "))
    assert broken_cost > 0 and fake.count("chat") == 3
    assert failed.value.charged_micros == broken_cost
    totals = gw.usage("W1", DAY, DAY).totals
    assert (totals.requests, totals.cost_micros, totals.unsettled) == (1, broken_cost, 0)
    assert store.ledger_entry("W1", "ev1") is None  # the request itself was never answered
    assert store.spent("W1", _user_day_line(gw)) == (broken_cost, 0)  # charged; nothing left reserved
    # Its claim was given back: the same request ID runs again, and is charged once more.
    result = ask(gw, "How do I deploy?", "ev1", stream=_Shown())
    assert result.attempts == 1 and fake.count("chat") == 4
    assert gw.usage("W1", DAY, DAY).totals.cost_micros == broken_cost + result.cost_micros


class _CtrlC(_Shown):
    """The terminal chat's reader pressing Ctrl-C as the second piece of the answer is printed."""

    def delta(self, text: str) -> None:
        super().delta(text)
        if self.text != text:
            raise KeyboardInterrupt


def test_a_streamed_answer_interrupted_by_ctrl_c_is_charged_for_what_it_generated(
    make_gateway: GatewayFactory, fake: FakeOpenAI, store: Store
) -> None:
    """The provider was writing the answer: it bills the prompt and what it generated, so the
    interrupted call is charged as a stream that broke off, and its claim and reservation given back."""
    gw = make_gateway(chat_model="gpt-4.1-mini", user_daily_budget_usd="1")
    shown = _CtrlC()

    with structlog.testing.capture_logs() as logs, pytest.raises(KeyboardInterrupt):
        ask(gw, "How do I deploy?", "ev1", stream=shown)

    assert fake.count("chat") == 1 and shown.text == "Answer to: "
    price = PriceTable.load(None).price_for("gpt-4.1-mini")
    charged = chat_cost(price, estimate_chat_tokens(_messages("How do I deploy?")), 0,
                        estimate_text_tokens("Answer to: "))
    [ledger_id] = _failed_charges(logs)
    assert ledger_id.startswith("ev1:broken:")
    entry = store.ledger_entry("W1", ledger_id)
    assert entry is not None and entry.cost_micros == charged > 0
    assert store.spent("W1", _user_day_line(gw)) == (charged, 0)
    assert store.claim_request("W1", "ev1", 60).state == "claimed"  # asked again, it runs again


@pytest.mark.parametrize("streamed", [False, True], ids=["plain", "streamed"])
def test_an_answer_awaited_when_ctrl_c_is_pressed_is_charged_its_prompt(
    make_gateway: GatewayFactory, fake: FakeOpenAI, store: Store, streamed: bool
) -> None:
    """Ctrl-C (a real SIGINT to this process) while the provider holds the request: it had the
    prompt and bills it, so the interrupted call is charged its prompt, and its claim and
    reservation are given back. Before, a plain call interrupted so was charged nothing."""
    fake.script(Fault.delay(30.0))  # the provider takes the request and is still working on it
    gw = make_gateway(chat_model="gpt-4.1-mini", user_daily_budget_usd="1")

    def press_ctrl_c() -> None:
        until(lambda: fake.count("chat") == 1, what="the request at the provider")
        os.kill(os.getpid(), signal.SIGINT)

    presser = threading.Thread(target=press_ctrl_c)
    presser.start()
    try:
        with structlog.testing.capture_logs() as logs, pytest.raises(KeyboardInterrupt):
            ask(gw, "How do I deploy?", "ev1", stream=_Shown() if streamed else None)
    finally:
        presser.join()

    price = PriceTable.load(None).price_for("gpt-4.1-mini")
    charged = chat_cost(price, estimate_chat_tokens(_messages("How do I deploy?")), 0, 0)
    [ledger_id] = _failed_charges(logs)
    assert ledger_id.startswith("ev1:broken:" if streamed else "ev1:unanswered:")
    entry = store.ledger_entry("W1", ledger_id)
    assert entry is not None and entry.cost_micros == charged > 0
    assert store.spent("W1", _user_day_line(gw)) == (charged, 0)
    assert store.claim_request("W1", "ev1", 60).state == "claimed"  # asked again, it runs again


def test_the_text_a_broken_stream_showed_is_charged_no_more_than_max_tokens(
    make_gateway: GatewayFactory, fake: FakeOpenAI, store: Store
) -> None:
    """Penny's estimate of the text a stream showed is an upper bound, well above the truth on long
    words; the provider stops at ``max_tokens`` and bills no more, so neither does Penny (nor past
    what the call reserved)."""
    question = " ".join(["internationalization"] * 30)  # echoed: "Answer to: internationalization …"
    fake.fail_all(Fault.stream_break(15))  # 15 of the 20 words max_tokens allows
    gw = make_gateway(chat_model="gpt-4.1-mini", retry_max_attempts=1, user_daily_budget_usd="1")
    shown = _Shown()

    with pytest.raises(UpstreamError) as failed:
        ask(gw, question, "ev1", stream=shown, max_tokens=20)

    assert estimate_text_tokens(shown.text) > 20  # the text it showed, estimated, is past the cap
    price = PriceTable.load(None).price_for("gpt-4.1-mini")
    charged = chat_cost(price, estimate_chat_tokens(_messages(question)), 0, 20)
    assert failed.value.charged_micros == charged
    assert store.spent("W1", _user_day_line(gw)) == (charged, 0)


def _failed_charges(logs: list[dict[str, Any]]) -> list[str]:
    """The ledger IDs of the failed attempts' charges the gateway logged."""
    return [e["ledger_id"] for e in logs if e["event"] == "failed_attempts_charged"]


def test_a_stream_that_broke_before_any_text_is_charged_its_prompt_when_a_retry_answers(
    make_gateway: GatewayFactory, fake: FakeOpenAI, store: Store
) -> None:
    """The 200 had begun, so the provider had the prompt: it bills it, and the retry pays again."""
    fake.script(Fault.stream_break(0), Fault.ok(prompt_tokens=40, completion_tokens=12))
    gw = make_gateway(chat_model="gpt-4.1-mini", user_daily_budget_usd="1")
    shown = _Shown()

    result = ask(gw, "How do I deploy?", "ev1", stream=shown)

    price = PriceTable.load(None).price_for("gpt-4.1-mini")
    answer_cost, prompt_only = chat_cost(price, 40, 0, 12), chat_cost(price, 40, 0, 0)
    assert fake.count("chat") == 2 and shown.text == result.content
    assert (result.attempts, result.cost_micros) == (2, answer_cost + prompt_only)
    entry = store.ledger_entry("W1", "ev1")
    assert entry is not None and (entry.cost_micros, entry.attempts) == (answer_cost + prompt_only, 2)
    # The user's spend is both, on the lines the admission reserved on, with nothing left reserved.
    assert store.spent("W1", _user_day_line(gw)) == (answer_cost + prompt_only, 0)
    assert gw.usage("W1", DAY, DAY).totals.cost_micros == answer_cost + prompt_only
    assert gw.metrics.registry.get_sample_value("penny_spent_microdollars_total",
                                                {"kind": "chat", "model": "gpt-4.1-mini"}) == answer_cost + prompt_only


def test_streams_that_all_broke_before_any_text_are_charged_one_prompt_each(
    make_gateway: GatewayFactory, fake: FakeOpenAI, store: Store
) -> None:
    fake.fail_all(Fault.stream_break(0))
    gw = make_gateway(chat_model="gpt-4.1-mini", retry_max_attempts=3, user_daily_budget_usd="1")

    with structlog.testing.capture_logs() as logs, pytest.raises(UpstreamError) as failed:
        ask(gw, "How do I deploy?", "ev1", stream=_Shown())

    price = PriceTable.load(None).price_for("gpt-4.1-mini")
    estimated = estimate_chat_tokens(_messages("How do I deploy?"))
    charged = chat_cost(price, 3 * estimated, 0, 0)
    assert fake.count("chat") == 3 and failed.value.charged_micros == charged > 0
    [ledger_id] = _failed_charges(logs)
    assert ledger_id.startswith("ev1:broken:")
    entry = store.ledger_entry("W1", ledger_id)
    assert entry is not None
    assert (entry.attempts, entry.prompt_tokens, entry.completion_tokens, entry.cost_micros, entry.cache_status) == (
        3, 3 * estimated, 0, charged, "bypass")
    assert store.ledger_entry("W1", "ev1") is None
    assert store.spent("W1", _user_day_line(gw)) == (charged, 0)
    # A client's retry of the same request ID runs again: its attempts are new calls, and the
    # charge above is not made twice.
    fake.clear()
    result = ask(gw, "How do I deploy?", "ev1", stream=_Shown())
    assert gw.usage("W1", DAY, DAY).totals.cost_micros == charged + result.cost_micros
    assert store.spent("W1", _user_day_line(gw)) == (charged + result.cost_micros, 0)


def test_a_plain_call_that_timed_out_after_it_was_sent_is_charged_its_prompt_when_a_retry_answers(
    make_gateway: GatewayFactory, fake: FakeOpenAI, store: Store
) -> None:
    """The request went out whole and the read timed out: the provider goes on and bills it."""
    fake.script(Fault.delay(30.0), Fault.ok(prompt_tokens=40, completion_tokens=12))
    gw = make_gateway(chat_model="gpt-4.1-mini", request_timeout_s=1.0, user_daily_budget_usd="1")

    result = ask(gw, "How do I deploy?", "ev1")

    price = PriceTable.load(None).price_for("gpt-4.1-mini")
    answer_cost, prompt_only = chat_cost(price, 40, 0, 12), chat_cost(price, 40, 0, 0)
    assert fake.count("chat") == 2
    assert (result.attempts, result.cost_micros) == (2, answer_cost + prompt_only)
    entry = store.ledger_entry("W1", "ev1")
    assert entry is not None and (entry.cost_micros, entry.attempts) == (answer_cost + prompt_only, 2)
    assert store.spent("W1", _user_day_line(gw)) == (answer_cost + prompt_only, 0)


def test_plain_calls_that_all_went_unanswered_are_charged_one_prompt_each_marked_unanswered(
    make_gateway: GatewayFactory, fake: FakeOpenAI, store: Store
) -> None:
    """Sent whole, then the connection dropped: billed, but the answer (and its length) never came,
    so each is charged its estimated prompt alone, under ``:unanswered:``."""
    fake.fail_all(Fault.drop())
    gw = make_gateway(chat_model="gpt-4.1-mini", retry_max_attempts=2, user_daily_budget_usd="1")

    with structlog.testing.capture_logs() as logs, pytest.raises(UpstreamError) as failed:
        ask(gw, "How do I deploy?", "ev1")

    estimated = estimate_chat_tokens(_messages("How do I deploy?"))
    charged = chat_cost(PriceTable.load(None).price_for("gpt-4.1-mini"), 2 * estimated, 0, 0)
    assert fake.count("chat") == 2 and failed.value.charged_micros == charged > 0
    [ledger_id] = _failed_charges(logs)
    assert ledger_id.startswith("ev1:unanswered:")
    entry = store.ledger_entry("W1", ledger_id)
    assert entry is not None
    assert (entry.attempts, entry.prompt_tokens, entry.completion_tokens, entry.cost_micros) == (
        2, 2 * estimated, 0, charged)
    assert store.spent("W1", _user_day_line(gw)) == (charged, 0)


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "plain"])
@pytest.mark.parametrize("fault", [Fault.status(500), Fault.status(429, retry_after="1"), Fault.status(503)],
                         ids=["500", "429", "503"])
def test_answers_the_provider_does_not_bill_are_charged_nothing(
    make_gateway: GatewayFactory, fake: FakeOpenAI, store: Store, fault: Fault, stream: bool
) -> None:
    fake.script(fault, fault)
    gw = make_gateway(chat_model="gpt-4.1-mini", user_daily_budget_usd="1")

    result = ask(gw, "How do I deploy?", "ev1", stream=_Shown() if stream else None)

    assert fake.count("chat") == 3 and result.attempts == 3
    price = PriceTable.load(None).price_for("gpt-4.1-mini")
    answer = chat_cost(price, result.prompt_tokens, 0, result.completion_tokens)
    assert result.cost_micros == answer  # the answer alone
    assert store.spent("W1", _user_day_line(gw)) == (answer, 0)


def _gateway_to_nowhere(make_gateway: GatewayFactory) -> Gateway:
    """A gateway whose provider is a loopback port nothing listens on: every attempt is refused."""
    port = free_port()  # nothing listens there
    gw = make_gateway(retry_max_attempts=2, user_daily_budget_usd="1")
    gw.upstream = OpenAIUpstream(api_key=API_KEY, base_url=f"http://127.0.0.1:{port}/v1", timeout_s=1.0)
    return gw


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "plain"])
def test_a_provider_never_reached_is_charged_nothing(make_gateway: GatewayFactory, store: Store,
                                                     stream: bool) -> None:
    gw = _gateway_to_nowhere(make_gateway)

    with pytest.raises(UpstreamError) as failed:
        ask(gw, "How do I deploy?", "ev1", stream=_Shown() if stream else None)

    assert (failed.value.kind, failed.value.attempts, failed.value.charged_micros) == ("connection", 2, 0)
    assert gw.usage("W1", DAY, DAY).totals.requests == 0
    assert store.spent("W1", _user_day_line(gw)) == (0, 0)


def test_failed_attempts_count_against_the_daily_budget(make_gateway: GatewayFactory, fake: FakeOpenAI,
                                                        store: Store) -> None:
    """A budget that fits the call's worst case, and the charges for its failed attempts, but not
    both: once they are charged the next call is refused."""
    price = PriceTable.load(None).price_for("gpt-4.1-mini")
    estimated = estimate_chat_tokens(_messages("How do I deploy?"))
    worst_case = chat_cost(price, estimated, 0, 10)
    charged = chat_cost(price, 2 * estimated, 0, 0)
    budget = worst_case + charged - 1
    gw = make_gateway(chat_model="gpt-4.1-mini", retry_max_attempts=2, max_output_tokens=10,
                      user_daily_budget_usd=_budget_usd(budget))
    fake.fail_all(Fault.stream_break(0))

    with pytest.raises(UpstreamError):
        ask(gw, "How do I deploy?", "ev1", stream=_Shown())

    assert store.spent("W1", _user_day_line(gw)) == (charged, 0)
    fake.clear()
    with pytest.raises(BudgetExceeded) as refused:
        ask(gw, "How do I deploy?", "ev2")
    assert refused.value.spent == charged
    assert fake.count("chat") == 2


def _budget_usd(micros: int) -> str:
    """A budget setting of exactly ``micros`` micro-dollars."""
    return str(Decimal(micros) / 1_000_000)


# A plain attempt sent whole that got no answer, or a stream that broke off after "Answer to: ":
# either way the provider bills it; what Penny charges for it (besides its prompt).
_BILLED_FAILURES = {"plain": (Fault.drop(), ""), "streamed": (Fault.stream_break(2), "Answer to: ")}


@pytest.mark.parametrize("how", ["plain", "streamed"])
def test_a_retry_the_budget_cannot_hold_after_a_billed_failure_is_refused_and_the_failure_charged(
    make_gateway: GatewayFactory, fake: FakeOpenAI, store: Store, how: str
) -> None:
    """Room for the call's worst case, not for it and the attempt the provider billed: the retry
    would have settled past the cap (its answer on top of the lost attempt), so it is not sent."""
    fault, shown = _BILLED_FAILURES[how]
    price = PriceTable.load(None).price_for("gpt-4.1-mini")
    estimated = estimate_chat_tokens(_messages("How do I deploy?"))
    worst_case = chat_cost(price, estimated, 0, 10)
    owed = chat_cost(price, estimated, 0, estimate_text_tokens(shown))
    budget = worst_case + owed - 1
    gw = make_gateway(chat_model="gpt-4.1-mini", max_output_tokens=10, cache_enabled=False,
                      user_daily_budget_usd=_budget_usd(budget))
    fake.script(fault, Fault.ok(prompt_tokens=estimated, completion_tokens=10))

    with structlog.testing.capture_logs() as logs, pytest.raises(BudgetExceeded) as refused:
        ask(gw, "How do I deploy?", "ev1", stream=_Shown() if how == "streamed" else None)

    assert fake.count("chat") == 1 and fake.pending() == 1  # the retry never went out
    err = refused.value
    assert (err.scope, err.limit, err.spent, err.charged_micros) == ("daily", budget, owed, owed)
    assert "2026-01-02 00:00 UTC" in str(err)  # when the budget resets, as any budget refusal says
    [ledger_id] = _failed_charges(logs)
    assert ledger_id.startswith("ev1:broken:" if how == "streamed" else "ev1:unanswered:")
    entry = store.ledger_entry("W1", ledger_id)
    assert entry is not None and (entry.cost_micros, entry.attempts) == (owed, 1)
    assert store.ledger_entry("W1", "ev1") is None
    assert store.spent("W1", _user_day_line(gw)) == (owed, 0)  # charged, nothing left reserved, under the cap
    assert gw.metrics.registry.get_sample_value("penny_refusals_total", {"reason": "budget_daily"}) == 1
    # Its claim was given back: a retry of the request once there is room is admitted again.
    assert store.claim_request("W1", "ev1", 60).state == "claimed"


def test_a_proxy_keys_own_budget_refuses_the_retry_after_a_billed_failure(
    make_gateway: GatewayFactory, fake: FakeOpenAI, store: Store
) -> None:
    """Every line the call reserved on is checked by the top-up: here the key's day, not the user's."""
    price = PriceTable.load(None).price_for("gpt-4.1-mini")
    estimated = estimate_chat_tokens(_messages("How do I deploy?"))
    owed = chat_cost(price, estimated, 0, 0)
    key = CallSource("key-1", daily_budget_micros=chat_cost(price, estimated, 0, 10) + owed - 1)
    gw = make_gateway(chat_model="gpt-4.1-mini", max_output_tokens=10, cache_enabled=False,
                      user_daily_budget_usd="1")
    fake.script(Fault.drop(), Fault.ok())

    with pytest.raises(BudgetExceeded) as refused:
        ask(gw, "How do I deploy?", "ev1", source=key)

    assert fake.count("chat") == 1
    assert (refused.value.scope, refused.value.charged_micros) == ("key-1 daily", owed)
    assert store.spent("W1", source_day_line(key, 1_767_225_600.0)) == (owed, 0)
    assert store.spent("W1", _user_day_line(gw)) == (owed, 0)
    assert gw.metrics.registry.get_sample_value("penny_refusals_total", {"reason": "budget_source"}) == 1


def test_each_retry_after_billed_failures_is_reserved_for_and_the_call_settles_once(
    make_gateway: GatewayFactory, fake: FakeOpenAI, store: Store
) -> None:
    """Two attempts dropped after they went out, then an answer. Before each retry the reservation
    grows by what the lost attempts cost, so a concurrent call that would have fit beside the first
    reservation is refused while the third attempt runs; the call settles one entry, as before."""
    price = PriceTable.load(None).price_for("gpt-4.1-mini")
    estimated = estimate_chat_tokens(_messages("How do I deploy? 0"))  # its question, and the other call's
    worst_case = chat_cost(price, estimated, 0, 10)
    one_lost, two_lost = chat_cost(price, estimated, 0, 0), chat_cost(price, 2 * estimated, 0, 0)
    budget = 2 * worst_case + two_lost - 1  # a second call fits beside the first reservation, not the topped-up one
    gw = make_gateway(chat_model="gpt-4.1-mini", max_output_tokens=10, cache_enabled=False,
                      user_daily_budget_usd=_budget_usd(budget))
    line = _user_day_line(gw)
    reserved: list[int] = []
    beside: list[BaseException] = []

    def upstream(request: RecordedRequest, earlier: int) -> Fault | None:
        if _question_number(request) != 0:
            return None
        reserved.append(store.spent("W1", line)[1])  # what the call holds as this attempt arrives
        if earlier < 2:
            return Fault.drop()
        try:
            ask(gw, "How do I deploy? 1", "ev2")  # another call of the same user, meanwhile
        except BudgetExceeded as exc:
            beside.append(exc)
        return Fault.ok(prompt_tokens=estimated, completion_tokens=10)

    fake.decide(upstream)
    result = ask(gw, "How do I deploy? 0", "ev1")

    assert reserved == [worst_case, worst_case + one_lost, worst_case + two_lost]
    assert [type(e) for e in beside] == [BudgetExceeded] and fake.count("chat") == 3
    assert (result.attempts, result.cost_micros) == (3, worst_case + two_lost)
    entry = store.ledger_entry("W1", "ev1")
    assert entry is not None and (entry.cost_micros, entry.attempts) == (worst_case + two_lost, 3)
    assert gw.usage("W1", DAY, DAY).totals.requests == 1  # one entry: no separate charge for the lost attempts
    assert store.spent("W1", line) == (worst_case + two_lost, 0)  # nothing left reserved


def _store_down(*args: Any, **kwargs: Any) -> TopUp:
    raise StoreError("Redis store: cannot top up an admission: timed out")


def _claim_gone(*args: Any, **kwargs: Any) -> TopUp:
    return TopUp("not_held")  # expired or reaped: the reaper's now


@pytest.mark.parametrize(("top_up", "error"), [(_store_down, StoreError), (_claim_gone, RequestInterrupted)],
                         ids=["store down", "claim gone"])
def test_a_retry_that_cannot_be_reserved_for_is_not_sent_and_the_billed_attempt_is_charged(
    make_gateway: GatewayFactory, fake: FakeOpenAI, store: Store, monkeypatch: pytest.MonkeyPatch,
    top_up: Callable[..., TopUp], error: type[Exception],
) -> None:
    """Without the top-up the retry would run with nothing reserved for it: it is not sent, and the
    lost attempt is charged and the claim given back, as when the last attempt fails."""
    fake.script(Fault.drop(), Fault.ok())
    gw = make_gateway(chat_model="gpt-4.1-mini", user_daily_budget_usd="1", cache_enabled=False)
    monkeypatch.setattr(store, "top_up_admission", top_up)

    with pytest.raises(error) as failed:
        ask(gw, "How do I deploy?", "ev1")

    owed = chat_cost(PriceTable.load(None).price_for("gpt-4.1-mini"),
                     estimate_chat_tokens(_messages("How do I deploy?")), 0, 0)
    assert isinstance(failed.value, PennyError)
    assert fake.count("chat") == 1 and failed.value.charged_micros == owed > 0
    assert store.spent("W1", _user_day_line(gw)) == (owed, 0)
    if top_up is _store_down:
        assert store.claim_request("W1", "ev1", 60).state == "claimed"  # given back for a retry


def test_failures_the_provider_does_not_bill_need_no_top_up(
    make_gateway: GatewayFactory, fake: FakeOpenAI, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.script(Fault.status(503), Fault.status(429, retry_after="1"))
    gw = make_gateway(chat_model="gpt-4.1-mini", user_daily_budget_usd="1", cache_enabled=False)
    topped_up: list[int] = []
    monkeypatch.setattr(store, "top_up_admission", lambda *a, **kw: topped_up.append(kw["amount"]))

    assert ask(gw, "How do I deploy?", "ev1").attempts == 3
    assert topped_up == []


def test_bad_request_is_not_retried_and_nothing_is_charged(make_gateway: GatewayFactory, fake: FakeOpenAI,
                                                           store: Store) -> None:
    fake.script(Fault.status(400))
    gw = make_gateway(user_daily_budget_usd="1")
    with pytest.raises(UpstreamRejected):
        ask(gw, "q", "bad")
    assert fake.count("chat") == 1
    assert store.ledger_entry("W1", "bad") is None
    line = _user_day_line(gw)
    assert store.spent("W1", line) == (0, 0)  # the reservation was released
    # The request ID can be tried again once the cause is fixed.
    ask(gw, "q", "bad")
    assert fake.count("chat") == 2


def test_upstream_outage_opens_the_breaker_for_every_replica(make_gateway: GatewayFactory, fake: FakeOpenAI,
                                                             open_twin: Callable[[], Store],
                                                             clock: ManualClock) -> None:
    fake.fail_all(503)
    gw = make_gateway(retry_max_attempts=1, breaker_cooldown_s=30)
    for i in range(4):
        with pytest.raises(UpstreamError):
            ask(gw, f"q{i}", f"f{i}")
    with pytest.raises(CircuitOpen):  # the fifth failure opens it
        ask(gw, "q4", "f4")
    assert fake.count("chat") == 5
    # A second gateway (another replica) on the same store fails fast without calling upstream.
    other = make_gateway(open_twin(), retry_max_attempts=1, breaker_cooldown_s=30)
    with pytest.raises(CircuitOpen) as info:
        ask(other, "q-new", "f-new")
    assert info.value.retry_after == pytest.approx(30.0)
    assert fake.count("chat") == 5
    # After the cooldown one probe goes through; its success closes the breaker for everyone.
    fake.clear()
    clock.advance(30.0)
    ask(other, "q-new", "f-new")
    ask(gw, "q-again", "f-again")
    assert fake.count("chat") == 7


def test_retries_feed_the_breaker_and_stop_when_it_opens(make_gateway: GatewayFactory, fake: FakeOpenAI,
                                                         clock: ManualClock) -> None:
    fake.fail_all(500)
    gw = make_gateway(retry_max_attempts=10, breaker_failure_threshold=3)
    with structlog.testing.capture_logs() as logs, pytest.raises(CircuitOpen):
        ask(gw, "q", "r")
    assert fake.count("chat") == 3
    # What opened it is in the log: the calls it refuses from now on never reach upstream to say.
    (opened,) = [e for e in logs if e["event"] == "breaker_open"]
    assert "500" in opened["error"]


def run_concurrently(n: int, call: Callable[[int], Any],
                     on_error: Callable[[], None] | None = None) -> tuple[list[Any], list[BaseException]]:
    """``call(i)`` for i in range(n) on n threads; the results and the errors, in completion order.
    ``on_error`` runs on the failing thread."""
    results: list[Any] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        try:
            result = call(i)
        except BaseException as exc:
            with lock:
                errors.append(exc)
            if on_error is not None:
                on_error()
        else:
            with lock:
                results.append(result)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, errors


def _question_number(request: RecordedRequest) -> int:
    return int(request.body["messages"][-1]["content"].split()[-1])


def test_a_brownout_keeps_the_breaker_closed_and_every_question_answered(
    make_gateway: GatewayFactory, fake: FakeOpenAI, store: Store, clock: ManualClock
) -> None:
    # 1 question in 3 gets a fast 503 on its first attempt; a retry succeeds. Successes take 100 ms,
    # so all 17 failures come back while the 33 successes are still in flight. The 50 first
    # attempts are held at the fake until all have arrived, so they overlap on every run.
    n, failing = 50, len(range(0, 50, 3))
    gate = fake.hold(Gate(n))
    fake.decide(lambda request, earlier: Fault.status(503) if earlier == 0 and _question_number(request) % 3 == 0
                else Fault.ok(delay_s=0.1))
    gw = make_gateway(cache_enabled=False, request_timeout_s=30.0)

    answers, errors = run_concurrently(n, lambda i: ask(gw, f"brown-out question {i}", f"b{i}"))

    assert errors == [] and len(answers) == n and not gate.broken
    state = store.breaker_state("openai")
    assert (state.state, state.window_calls, state.window_failures) == ("closed", n + failing, failing)
    assert gw.metrics.registry.get_sample_value("penny_refusals_total", {"reason": "breaker"}) is None
    assert sorted(a.attempts for a in answers) == [1] * (n - failing) + [2] * failing
    assert clock.sleeps == [0.25] * failing  # each failed question waited one backoff, then retried
    # Every upstream call is accounted for: one ledger entry per answer, carrying its attempts.
    usage = gw.usage("W1", DAY, DAY)
    assert usage.totals.requests == n == fake.count("chat") - failing
    assert fake.count("chat") == sum(a.attempts for a in answers) == n + failing
    assert usage.totals.cost_micros == sum(a.cost_micros for a in answers)


def test_an_outage_opens_at_the_fifth_failed_attempt_and_failed_probes_back_off(
    make_gateway: GatewayFactory, fake: FakeOpenAI, clock: ManualClock
) -> None:
    fake.fail_all(503)
    gw = make_gateway(cache_enabled=False, breaker_cooldown_s=30, breaker_max_cooldown_s=100)
    with pytest.raises(UpstreamError) as gave_up:
        ask(gw, "q0", "o0")
    assert gave_up.value.attempts == 4  # four failures in a row: one short of the threshold
    with pytest.raises(CircuitOpen) as opened:
        ask(gw, "q1", "o1")  # its first attempt is the fifth failure: no retry after it
    assert opened.value.retry_after == pytest.approx(30)
    assert fake.count("chat") == 5
    refused_for, reopened_for = [], []
    for i in range(3):
        with pytest.raises(CircuitOpen) as refused:
            ask(gw, f"early {i}", f"e{i}")  # refused for the current cooldown; nothing is sent
        refused_for.append(refused.value.retry_after)
        clock.advance(refused.value.retry_after)
        with pytest.raises(CircuitOpen) as probe_failed:
            ask(gw, f"probe {i}", f"p{i}")  # the one probe fails: open again, for longer
        reopened_for.append(probe_failed.value.retry_after)
    assert refused_for == pytest.approx([30, 60, 100])
    assert reopened_for == pytest.approx([60, 100, 100])
    assert fake.count("chat") == 5 + 3
    # Upstream is back: the next probe closes the breaker, and the backoff is forgotten.
    fake.clear()
    clock.advance(100)
    assert ask(gw, "probe 3", "p3").attempts == 1
    fake.fail_all(503)
    with pytest.raises(UpstreamError):
        ask(gw, "q2", "o2")
    with pytest.raises(CircuitOpen) as opened_again:
        ask(gw, "q3", "o3")
    assert opened_again.value.retry_after == pytest.approx(30)


def test_an_outage_with_fifty_calls_in_flight_opens_at_half_of_them_and_sends_no_retry(
    make_gateway: GatewayFactory, fake: FakeOpenAI, store: Store, clock: ManualClock
) -> None:
    # All 50 first attempts are in flight before any fails (held at the fake), and no retry goes
    # out before every first failure has been recorded (the backoff waits at a second gate), as
    # when upstream fails fast and the backoff is longer than its round trip.
    n = 50
    fake.fail_all(503)
    sent = fake.hold(Gate(n))
    backoff = Gate(n)
    slept: set[int] = set()

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        slept.add(threading.get_ident())
        backoff.wait()

    def gave_up() -> None:
        if threading.get_ident() not in slept:
            backoff.arrive()

    gw = make_gateway(cache_enabled=False, request_timeout_s=30.0, sleep=sleep)

    answers, errors = run_concurrently(n, lambda i: ask(gw, f"outage question {i}", f"o{i}"), on_error=gave_up)

    assert answers == [] and not sent.broken and not backoff.broken
    assert [type(e) for e in errors] == [CircuitOpen] * n
    # The k-th failure is weighed against the 50 - k still in flight: the 25th opens the breaker.
    # The 24 before it each waited a backoff, and their retries were refused, not sent.
    assert len(clock.sleeps) == backoff.waited == 24
    assert fake.count("chat") == n
    assert store.breaker_state("openai").state == "open"
    assert gw.metrics.registry.get_sample_value("penny_refusals_total", {"reason": "breaker"}) == n


def test_embeddings_are_billed_as_embedding_spend(make_gateway: GatewayFactory, fake: FakeOpenAI,
                                                  store: Store) -> None:
    gw = make_gateway(embedding_model="text-embedding-3-small")
    result = gw.embed(user_id="U1", workspace_id="W1", request_id="e1", inputs=["alpha beta", "gamma"],
                      dimensions=64)
    assert len(result.vectors) == 2 and len(result.vectors[0]) == 64
    entry = store.ledger_entry("W1", "e1")
    assert entry is not None and entry.kind == "embedding"
    price = PriceTable.load(None).price_for("text-embedding-3-small")
    assert entry.cost_micros == result.cost_micros > 0
    assert result.cost_micros == -(-result.prompt_tokens * price.input // 1_000_000)
    again = gw.embed(user_id="U1", workspace_id="W1", request_id="e1", inputs=["alpha beta", "gamma"],
                     dimensions=64)
    assert again.replayed and fake.count("embeddings") == 1


# A proxy client's batch of long inputs: what a lost embedding attempt costs is no rounding error.
_BATCH = [f"Section {i}. " + "Rotate the signing key before it expires, then redeploy every service. " * 40
          for i in range(200)]
_LARGE = "text-embedding-3-large"


def _embed(gw: Gateway, request_id: str, inputs: list[str] = _BATCH) -> Any:
    return gw.embed(user_id="U1", workspace_id="W1", request_id=request_id, inputs=inputs, dimensions=8)


def test_an_embedding_call_that_timed_out_after_it_was_sent_is_charged_its_inputs_when_a_retry_answers(
    make_gateway: GatewayFactory, fake: FakeOpenAI, store: Store
) -> None:
    """The inputs went out whole and the read timed out: the provider goes on, embeds them and
    bills them, and the retry pays again. The answer's entry carries both."""
    fake.script(Fault.delay(30.0), Fault.ok(prompt_tokens=100_000), endpoint="embeddings")
    gw = make_gateway(embedding_model=_LARGE, request_timeout_s=1.0, user_daily_budget_usd="1")

    result = _embed(gw, "e1")

    price = PriceTable.load(None).price_for(_LARGE)
    each = embedding_cost(price, 100_000)  # the lost attempt had the same inputs the answer counted
    assert fake.count("embeddings") == 2 and each > 0
    assert (result.attempts, result.prompt_tokens, result.cost_micros) == (2, 100_000, 2 * each)
    entry = store.ledger_entry("W1", "e1")
    assert entry is not None
    assert (entry.kind, entry.prompt_tokens, entry.cost_micros, entry.attempts) == ("embedding", 100_000, 2 * each, 2)
    assert store.spent("W1", _user_day_line(gw)) == (2 * each, 0)
    assert gw.metrics.registry.get_sample_value("penny_spent_microdollars_total",
                                                {"kind": "embedding", "model": _LARGE}) == 2 * each


def test_embedding_calls_that_all_went_unanswered_are_charged_their_estimated_inputs_each(
    make_gateway: GatewayFactory, fake: FakeOpenAI, store: Store
) -> None:
    fake.fail_all(Fault.drop())
    gw = make_gateway(embedding_model=_LARGE, retry_max_attempts=3, user_daily_budget_usd="1")

    with structlog.testing.capture_logs() as logs, pytest.raises(UpstreamError) as failed:
        _embed(gw, "e1")

    estimated = sum(estimate_text_tokens(text) for text in _BATCH)
    charged = embedding_cost(PriceTable.load(None).price_for(_LARGE), 3 * estimated)
    assert fake.count("embeddings") == 3 and failed.value.charged_micros == charged > 0
    [ledger_id] = _failed_charges(logs)
    assert ledger_id.startswith("e1:unanswered:")
    entry = store.ledger_entry("W1", ledger_id)
    assert entry is not None
    assert (entry.kind, entry.user_id, entry.attempts, entry.prompt_tokens, entry.cost_micros, entry.cache_status) == (
        "embedding", "U1", 3, 3 * estimated, charged, "bypass")
    assert store.ledger_entry("W1", "e1") is None
    assert store.spent("W1", _user_day_line(gw)) == (charged, 0)
    # The request ID was given back: a client's retry runs, and the charge above is not made twice.
    fake.clear()
    result = _embed(gw, "e1")
    assert gw.usage("W1", DAY, DAY).totals.cost_micros == charged + result.cost_micros
    assert store.spent("W1", _user_day_line(gw)) == (charged + result.cost_micros, 0)


@pytest.mark.parametrize("fault", [Fault.status(429, retry_after="1"), Fault.status(500), Fault.status(503)],
                         ids=["429", "500", "503"])
def test_embedding_answers_the_provider_does_not_bill_are_charged_nothing(
    make_gateway: GatewayFactory, fake: FakeOpenAI, store: Store, fault: Fault
) -> None:
    fake.script(fault, fault, endpoint="embeddings")
    gw = make_gateway(embedding_model=_LARGE, user_daily_budget_usd="1")

    result = _embed(gw, "e1")

    answer = embedding_cost(PriceTable.load(None).price_for(_LARGE), result.prompt_tokens)
    assert fake.count("embeddings") == 3 and result.attempts == 3
    assert result.cost_micros == answer  # the answer alone
    assert store.spent("W1", _user_day_line(gw)) == (answer, 0)


def test_an_embedding_call_that_never_reached_the_provider_is_charged_nothing(make_gateway: GatewayFactory,
                                                                               store: Store) -> None:
    gw = _gateway_to_nowhere(make_gateway)

    with pytest.raises(UpstreamError) as failed:
        _embed(gw, "e1")

    assert (failed.value.kind, failed.value.attempts, failed.value.charged_micros) == ("connection", 2, 0)
    assert gw.usage("W1", DAY, DAY).totals.requests == 0
    assert store.spent("W1", _user_day_line(gw)) == (0, 0)


def test_unanswered_embedding_attempts_count_against_the_daily_budget(
    make_gateway: GatewayFactory, fake: FakeOpenAI, store: Store
) -> None:
    """A budget that fits the call's worst case and the charges for its lost attempts, but not
    both: once they are charged the next call is refused."""
    price = PriceTable.load(None).price_for(_LARGE)
    estimated = sum(estimate_text_tokens(text) for text in _BATCH)
    charged = embedding_cost(price, 2 * estimated)
    budget = embedding_cost(price, estimated) + charged - 1
    gw = make_gateway(embedding_model=_LARGE, retry_max_attempts=2, user_daily_budget_usd=_budget_usd(budget))
    fake.fail_all(Fault.drop())

    with pytest.raises(UpstreamError):
        _embed(gw, "e1")

    assert store.spent("W1", _user_day_line(gw)) == (charged, 0)
    fake.clear()
    with pytest.raises(BudgetExceeded) as refused:
        _embed(gw, "e2")
    assert refused.value.spent == charged
    assert fake.count("embeddings") == 2


def test_an_embedding_retry_the_budget_cannot_hold_after_a_lost_attempt_is_refused(
    make_gateway: GatewayFactory, fake: FakeOpenAI, store: Store
) -> None:
    """Room for one attempt's inputs, not for the lost attempt's and the retry's: the retry is not sent."""
    price = PriceTable.load(None).price_for(_LARGE)
    estimated = sum(estimate_text_tokens(text) for text in _BATCH)
    each = embedding_cost(price, estimated)
    budget = 2 * each - 1
    gw = make_gateway(embedding_model=_LARGE, user_daily_budget_usd=_budget_usd(budget))
    fake.script(Fault.drop(), Fault.ok(prompt_tokens=estimated), endpoint="embeddings")

    with structlog.testing.capture_logs() as logs, pytest.raises(BudgetExceeded) as refused:
        _embed(gw, "e1")

    assert fake.count("embeddings") == 1
    assert (refused.value.scope, refused.value.spent, refused.value.charged_micros) == ("daily", each, each)
    [ledger_id] = _failed_charges(logs)
    assert ledger_id.startswith("e1:unanswered:")
    entry = store.ledger_entry("W1", ledger_id)
    assert entry is not None and (entry.kind, entry.cost_micros) == ("embedding", each)
    assert store.ledger_entry("W1", "e1") is None
    assert store.spent("W1", _user_day_line(gw)) == (each, 0)


def test_the_semantic_caches_own_embedding_lost_unanswered_is_charged_to_the_asker(
    make_gateway: GatewayFactory, fake: FakeOpenAI, store: Store
) -> None:
    """The question's embedding (billed to whoever asks) was dropped after it went out: the lookup
    goes on without it, and the lost attempt is charged to the asker, under the embedding's ID."""
    gw = make_gateway(embedder="openai:text-embedding-3-small?dimensions=8", retry_max_attempts=1,
                      user_daily_budget_usd="1")
    fake.script(Fault.drop(), endpoint="embeddings")

    with structlog.testing.capture_logs() as logs:
        result = ask(gw, "How do I deploy?", "ev1")

    assert result.cache_status == "miss" and fake.count("embeddings") == 2  # the lookup's, then the cache write's
    [ledger_id] = _failed_charges(logs)
    assert ledger_id.startswith("ev1:question-embedding:unanswered:")
    lost = store.ledger_entry("W1", ledger_id)
    paid = store.ledger_entry("W1", "ev1:question-embedding")
    assert lost is not None and paid is not None
    expected = embedding_cost(PriceTable.load(None).price_for("text-embedding-3-small"),
                              estimate_text_tokens("How do I deploy?"))
    assert (lost.kind, lost.user_id, lost.attempts, lost.cost_micros) == ("embedding", "U1", 1, expected)
    assert store.spent("W1", _user_day_line(gw)) == (result.cost_micros + paid.cost_micros + expected, 0)


def test_an_embedding_billed_to_a_caller_is_charged_for_its_lost_attempts(
    make_gateway: GatewayFactory, fake: FakeOpenAI, store: Store
) -> None:
    """The docs search of a question (``billed_to``): charged to the asker, and the error says how much."""
    gw = make_gateway(embedding_model=_LARGE, retry_max_attempts=2, user_daily_budget_usd="1")
    fake.fail_all(Fault.drop())
    search = gw.caller_embed_fn("search-embedding")

    with structlog.testing.capture_logs() as logs, gw.billed_to("U1", "W1", "ev1"), \
            pytest.raises(UpstreamError) as failed:
        search(_BATCH, model=_LARGE, dimensions=8)

    charged = embedding_cost(PriceTable.load(None).price_for(_LARGE),
                             2 * sum(estimate_text_tokens(text) for text in _BATCH))
    assert failed.value.charged_micros == charged > 0
    [ledger_id] = _failed_charges(logs)
    assert ledger_id.startswith("ev1:search-embedding:unanswered:")
    assert store.spent("W1", _user_day_line(gw)) == (charged, 0)


def test_penny_index_pays_for_a_batch_it_lost_after_sending(make_gateway: GatewayFactory, fake: FakeOpenAI,
                                                              store: Store) -> None:
    """``penny index`` embeds the docs through the gateway as ``penny:index``: a batch whose answer
    timed out was billed, and its retry was billed again; the index's ledger has both."""
    from bot.service import INDEX_USER, INDEX_WORKSPACE, docs_embedder

    gw = make_gateway(embedder=f"openai:{_LARGE}?dimensions=8", request_timeout_s=1.0, cache_enabled=False)
    fake.script(Fault.delay(30.0), Fault.ok(prompt_tokens=100_000), endpoint="embeddings")

    vectors = docs_embedder(gw.settings, gw).embed(_BATCH)

    each = embedding_cost(PriceTable.load(None).price_for(_LARGE), 100_000)
    assert len(vectors) == len(_BATCH) and fake.count("embeddings") == 2
    totals = gw.usage(INDEX_WORKSPACE, DAY, DAY, INDEX_USER).totals
    assert (totals.requests, totals.cost_micros) == (1, 2 * each)


def test_unknown_model_is_refused_at_start_up(store: Store) -> None:
    # Settings refuse an unpriced model themselves (tests/test_settings.py); a gateway given a price
    # table without the configured model refuses to start too, rather than bill it as $0.
    settings = PennySettings(openai_api_key=API_KEY)
    with pytest.raises(ConfigurationError) as info:
        Gateway(settings, store=store, upstream=OpenAIUpstream(api_key=API_KEY, base_url=None, timeout_s=1),
                prices=PriceTable({}, version="empty"))
    assert settings.chat_model in str(info.value) and "PENNY_PRICE_FILE" in str(info.value)


def test_unreachable_store_is_a_clear_store_error(fake: FakeOpenAI) -> None:
    settings = PennySettings(openai_api_key=API_KEY)
    store = store_from_url("redis://127.0.0.1:1/0", timeout_s=0.2)
    gw = Gateway(settings, store=store, upstream=OpenAIUpstream(api_key=API_KEY, base_url=fake.base_url, timeout_s=1))
    try:
        with pytest.raises(StoreError):
            ask(gw, "q", "r")
        assert fake.count() == 0
    finally:
        gw.close()


def test_metrics_count_outcomes_money_and_never_identities(make_gateway: GatewayFactory,
                                                           fake: FakeOpenAI) -> None:
    gw = make_gateway(requests_per_minute=60, request_burst=1)
    first = ask(gw, "q", "m1")
    ask(gw, "q", "m2")
    with pytest.raises(RateLimited):
        ask(gw, "other", "m3")
    reg = gw.metrics.registry
    assert reg.get_sample_value("penny_requests_total", {"kind": "chat", "outcome": "ok", "cache": "miss"}) == 1
    assert reg.get_sample_value("penny_requests_total", {"kind": "chat", "outcome": "ok", "cache": "exact"}) == 1
    assert reg.get_sample_value("penny_refusals_total", {"reason": "rate_limit_requests"}) == 1
    assert reg.get_sample_value("penny_saved_microdollars_total", {"kind": "chat"}) == first.cost_micros
    exposition = "\n".join(
        f"{s.name}{s.labels}" for metric in reg.collect() for s in metric.samples
    )
    for secret in ("U1", "W1", "m1", API_KEY):
        assert secret not in exposition


def test_log_events_carry_the_request_id_and_no_secret(make_gateway: GatewayFactory, fake: FakeOpenAI) -> None:
    gw = make_gateway()
    with structlog.testing.capture_logs() as logs:
        ask(gw, "q", "L1")
        ask(gw, "q", "L2")
        fake.script(Fault.status(401))
        with pytest.raises(UpstreamRejected):
            ask(gw, "other", "L3")
    assert {e["request_id"] for e in logs} >= {"L1", "L2", "L3"}
    assert API_KEY not in repr(logs)


def _user_day_line(gw: Gateway) -> Any:
    from proxy_core.budget import budget_lines

    return budget_lines("W1", "U1", 1_767_225_600.0, user_daily=1, workspace_monthly=0)[0]


def test_an_answer_naming_a_model_of_the_other_kind_is_billed_at_the_model_asked_for(
    make_gateway: GatewayFactory, fake: FakeOpenAI, store: Store
) -> None:
    # A compatible server reporting an embedding model's name for a chat: billing at that price
    # raised ValueError after the answer was paid for, and the call reached no ledger.
    fake.script(Fault.ok(model="text-embedding-3-small", prompt_tokens=1_000, completion_tokens=100))
    gw = make_gateway(chat_model="gpt-4.1-mini")
    result = ask(gw, "How do I deploy?", "r1")
    assert result.cost_micros == chat_cost(PriceTable.load(None).price_for("gpt-4.1-mini"), 1_000, 0, 100) == 560
    assert store.usage("W1", DAY, DAY).totals.cost_micros == 560


def test_price_fixture_matches_hand_arithmetic() -> None:
    price = PriceTable.load(None).price_for("gpt-4.1-mini")
    # $0.40 in, $0.10 cached, $1.60 out per 1M: 1000×0.40 + 500×0.10 + 250×1.60 = 400 + 50 + 400 = 850 µ$
    assert chat_cost(price, 1500, 500, 250) == 850


def test_accounts_read_the_very_buckets_and_budget_lines_the_gateway_charges(make_gateway: GatewayFactory,
                                                                            clock: ManualClock) -> None:
    gw = make_gateway(requests_per_minute=6, request_burst=4, tokens_per_minute=60_000,
                      user_daily_budget_usd="1", cache_enabled=False)
    before = gw.accounts.headroom("W1", "U1")
    assert (before.requests_left, before.request_burst, before.tokens_left) == (4, 4, 60_000)
    result = ask(gw, "How do I deploy?", "r1")
    after = gw.accounts.headroom("W1", "U1")
    assert after.requests_left == 3  # the gateway's own request bucket, one taken
    assert after.tokens_left is not None and after.tokens_left < 60_000
    daily, monthly = gw.accounts.budgets("W1", "U1")
    assert (daily.limit, daily.spent, daily.reserved) == (1_000_000, result.cost_micros, 0)
    assert (monthly.limit, monthly.spent) == (0, result.cost_micros)
    assert gw.accounts.headroom("W1", "U2").requests_left == 4  # another user's buckets are their own


def test_a_call_admitted_before_midnight_and_settled_after_is_in_the_ledger_on_the_day_it_was_charged(
    make_gateway: GatewayFactory, fake: FakeOpenAI, clock: ManualClock
) -> None:
    # Admitted 0.1 s before February; a 503 and its backoff carry the settle into February. The
    # budget lines it reserved on are January's, so its ledger entry must be January's too, or the
    # report shows a February day (and month) with spend its budget never counted, and January's
    # ledger misses money its budget did count.
    feb = datetime(2026, 2, 1, tzinfo=UTC).timestamp()
    clock.set(feb - 0.1)
    gw = make_gateway(user_daily_budget_usd="5", workspace_monthly_budget_usd="100", cache_enabled=False)
    fake.script(Fault.status(503), Fault.ok())
    result = ask(gw, "How do I deploy?", "r1")
    assert clock() > feb and result.cost_micros > 0
    for now in (feb - 1, clock()):
        daily, monthly = gw.accounts.budgets("W1", "U1", now)
        day, month = (datetime.fromtimestamp(now, UTC).strftime(f) for f in ("%Y-%m-%d", "%Y-%m"))
        assert gw.accounts.usage("W1", day, day, "U1").totals.cost_micros == daily.spent
        assert gw.accounts.usage("W1", f"{month}-01", day).totals.cost_micros == monthly.spent
    assert gw.accounts.usage("W1", "2026-01-31", "2026-01-31").totals.cost_micros == result.cost_micros


def test_waiting_is_entered_around_the_upstream_call_and_a_hit_waits_on_nothing(
    make_gateway: GatewayFactory, fake: FakeOpenAI
) -> None:
    around: list[tuple[str, int]] = []

    @contextmanager
    def waiting() -> Iterator[None]:
        around.append(("enter", fake.count("chat")))
        yield
        around.append(("leave", fake.count("chat")))

    gw = make_gateway(semantic_cache=False, waiting=waiting)
    ask(gw, "How do I deploy?", "r1")
    assert around == [("enter", 0), ("leave", 1)]  # the upstream call, and only it, inside
    assert ask(gw, "How do I deploy?", "r2").cache_status == "exact"
    assert around == [("enter", 0), ("leave", 1)]  # a cache hit waits on nothing


def test_upstream_latency_leaves_out_the_wait_after_the_call_to_get_a_turn_back(
    make_gateway: GatewayFactory, clock: ManualClock
) -> None:
    @contextmanager
    def waiting() -> Iterator[None]:
        yield
        clock.advance(30.0)  # the caller waited half a minute for its turn back (WorkTurns)

    gw = make_gateway(semantic_cache=False, waiting=waiting)
    ask(gw, "How do I deploy?", "r1")
    reg = gw.metrics.registry
    assert reg.get_sample_value("penny_upstream_latency_seconds_count", {"kind": "chat"}) == 1
    assert reg.get_sample_value("penny_upstream_latency_seconds_sum", {"kind": "chat"}) == 0.0  # the clock stood


def _ask_together(gw: Gateway, questions: list[str], tag: str = "Same") -> tuple[list[Any], list[BaseException]]:
    """Each question asked on a thread of its own, by a user of its own; results in asking order."""
    results: list[Any] = [None] * len(questions)
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            results[i] = ask(gw, questions[i], f"Ev{tag}{i}", user=f"U{i}")
        except BaseException as exc:
            errors.append(exc)

    run_together(len(questions), one)
    return results, errors


def _arriving(gate: Gate) -> Callable[[], Any]:
    """A ``waiting`` hook: each wait of the gateway's (upstream, or another's answer) arrives at ``gate``."""
    @contextmanager
    def waiting() -> Iterator[None]:
        gate.arrive()
        yield

    return waiting


def test_the_same_question_asked_while_it_is_being_answered_is_paid_once(
    make_gateway: GatewayFactory, fake: FakeOpenAI
) -> None:
    # The model answers only once the first asker waits on it (its hook and its request: two
    # arrivals) and the second waits for the first's answer (the third): they overlap on every run.
    gate = fake.hold(Gate(3, timeout_s=10))
    gw = make_gateway(waiting=_arriving(gate))
    (first, second), errors = _ask_together(gw, ["Where are the production logs?", "where are the Production logs"])
    assert errors == [] and not gate.broken
    assert fake.count("chat") == 1
    miss, hit = sorted((first, second), key=lambda r: r.cache_status == "exact")
    assert miss.cache_status == "miss" and hit.cache_status == "exact" and hit.cache_reason == "asked at the same time"
    assert hit.content == miss.content and hit.cost_micros == 0 and hit.saved_micros == miss.cost_micros
    usage = gw.usage("W1", DAY, DAY).totals
    assert (usage.requests, usage.cache_hits, usage.cost_micros) == (2, 1, miss.cost_micros)


def test_when_the_first_asker_fails_the_one_waiting_for_it_asks_for_itself(
    make_gateway: GatewayFactory, fake: FakeOpenAI
) -> None:
    gate = fake.hold(Gate(3, timeout_s=10))
    fake.script(Fault.status(400, message="This model's maximum context length is exceeded"), endpoint="chat")
    gw = make_gateway(waiting=_arriving(gate))
    results, errors = _ask_together(gw, ["Where are the production logs?"] * 2)
    assert [type(e) for e in errors] == [UpstreamRejected] and not gate.broken
    [answered] = [r for r in results if r is not None]
    assert answered.cache_status == "miss" and fake.count("chat") == 2
    # Different questions never wait for each other.
    gate2 = fake.hold(Gate(4, timeout_s=10))
    gw2 = make_gateway(waiting=_arriving(gate2))
    _ask_together(gw2, ["How do I deploy?", "How do I roll back?"], tag="Other")
    assert not gate2.broken and fake.count("chat") == 4


def test_answers_and_results_a_newer_replica_wrote_with_more_fields_are_still_served(
        make_gateway: GatewayFactory, fake: FakeOpenAI, store: Store) -> None:
    """In a rolling deploy replicas of two versions share the store: a newer one may store answers
    and results with a field this one does not know. Reading them raised TypeError, so every retry
    of such a request and every hit on such an answer failed; the field is now passed over."""
    import json

    from proxy_core.cache import CachedAnswer
    from proxy_core.results import EmbeddingResult

    gw = make_gateway(semantic_cache=False)
    first = ask(gw, "How do I deploy?", "r1")
    store.complete_request("W1", "r1", json.dumps({**json.loads(first.to_json()), "reasoning_tokens": 7}), 3600)
    replayed = ask(gw, "How do I deploy?", "r1")
    assert replayed.replayed and replayed.content == first.content
    assert len(fake.requests_to("chat")) == 1

    answer = CachedAnswer(entry_id="e1", content="Run make deploy.", model="gpt-4o-mini", prompt_tokens=10,
                          cached_prompt_tokens=0, completion_tokens=5, cost_micros=9, created_at=1.0)
    assert CachedAnswer.from_json(json.dumps({**json.loads(answer.to_json()), "annotations": []})) == answer
    vectors = EmbeddingResult("e2", [[0.5]], "text-embedding-3-small", 3, 1, 2, 1)
    newer = json.dumps({**json.loads(vectors.to_json()), "usage_tier": "x"})
    assert EmbeddingResult.from_json(newer) == EmbeddingResult("e2", [[0.5]], "text-embedding-3-small", 3, 1, 2, 1,
                                                               replayed=True)
