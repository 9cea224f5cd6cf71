"""The answering service end to end: the example handbook indexed into a real store, the real
gateway and openai SDK against the fake OpenAI server, a manual clock."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from prometheus_client import CollectorRegistry

from bot.answer import AnswerService
from bot.answer_types import Question
from bot.service import index_docs, open_answer_service
from bot.settings import BotSettings
from proxy_core import format_usd
from proxy_core.accounts import budget_lines_for
from proxy_core.clock import ManualClock
from proxy_core.errors import ConfigurationError
from proxy_core.gateway import Gateway
from proxy_core.metrics import Metrics
from proxy_core.stores.base import LedgerEntry, Store
from proxy_core.upstream import OpenAIUpstream
from tests.fake_openai import FakeOpenAI, Fault, RecordedRequest

DOCS = Path(__file__).resolve().parents[1] / "examples" / "docs"
KEY = "sk-test-answers-0123456789"
_n = iter(range(10**6))


def _settings(**kw: Any) -> BotSettings:
    params: dict[str, Any] = {"openai_api_key": KEY, "requests_per_minute": 0, "tokens_per_minute": 0,
                              "docs_base_url": "https://git.example/handbook/blob/main"}
    params.update(kw)
    return BotSettings(**params)


@pytest.fixture
def service(store: Store, clock: ManualClock, fake: FakeOpenAI) -> Iterator[AnswerService]:
    settings = _settings()
    index_docs(settings, store, DOCS)
    gateway = Gateway(settings, store=store, metrics=Metrics(CollectorRegistry()), clock=clock, wall=clock,
                      sleep=clock.sleep,
                      upstream=OpenAIUpstream(api_key=KEY, base_url=fake.base_url, timeout_s=2.0))
    yield open_answer_service(settings, store, gateway)
    assert gateway.cache is not None
    gateway.cache.close()  # type: ignore[attr-defined]


def ask(service: AnswerService, text: str, **kw: Any) -> Any:
    return service.answer(Question(text, kw.pop("user", "U1"), "W1", f"ev{next(_n)}", **kw))


def test_answers_from_numbered_passages_and_cites_the_page(service: AnswerService, fake: FakeOpenAI) -> None:
    answer = ask(service, "How do I start the dev server?")
    assert answer.kind == "answer" and answer.cost_micros > 0
    prompt = fake.last("chat").body["messages"][0]["content"]
    assert "[1] " in prompt and "engineering/local-dev-setup.md" in prompt
    assert "ONLY the numbered passages" in prompt
    assert any(c.path == "engineering/local-dev-setup.md" for c in answer.citations)
    cited = answer.citations[0]
    assert cited.url is not None and cited.url.startswith("https://git.example/handbook/blob/main/")
    assert "·" in answer.footer and "$" in answer.footer


def test_no_match_costs_nothing_and_lists_the_closest_pages(service: AnswerService, fake: FakeOpenAI) -> None:
    answer = ask(service, "What's the capital of Peru?")
    assert answer.kind == "no_match"
    assert answer.text.startswith("I couldn't find this in the docs.")
    assert answer.footer.startswith("no LLM call · $0")
    assert fake.count() == 0


def test_the_same_question_is_served_from_the_cache(service: AnswerService, fake: FakeOpenAI) -> None:
    first = ask(service, "Where are the production logs?")
    again = ask(service, "where are the production logs", user="U2")
    assert again.cached and again.cost_micros == 0 and again.saved_micros == first.cost_micros
    assert again.footer.startswith("cached (same question), saved $")
    assert again.entry_id == first.entry_id
    assert fake.count("chat") == 1


def test_a_reindex_drops_answers_built_on_the_old_docs(store: Store, tmp_path: Path, clock: ManualClock,
                                                        fake: FakeOpenAI) -> None:
    docs = tmp_path / "docs"
    shutil.copytree(DOCS, docs)
    settings = _settings()
    index_docs(settings, store, docs)
    gateway = Gateway(settings, store=store, metrics=Metrics(CollectorRegistry()), clock=clock, wall=clock,
                      sleep=clock.sleep, upstream=OpenAIUpstream(api_key=KEY, base_url=fake.base_url, timeout_s=2.0))
    try:
        service = open_answer_service(settings, store, gateway)
        ask(service, "Where are the production logs?")
        assert ask(service, "Where are the production logs?").cached
        page = docs / "engineering" / "logs-and-observability.md"
        page.write_text(page.read_text() + "\n\n## Archive\n\nOld logs move to cold storage after 90 days.\n")
        index_docs(settings, store, docs)
        clock.advance(10)  # the service checks the index version at most every few seconds
        # The re-index deleted the old answers in the store; a replica learns it from the change
        # log (its sync thread, within a round trip), and stops serving its copy then.
        gateway.cache.sync_once()  # type: ignore[union-attr]
        fresh = ask(service, "Where are the production logs?")
        assert not fresh.cached
        assert fake.count("chat") == 2
    finally:
        gateway.cache.close()  # type: ignore[union-attr]


def test_follow_ups_carry_the_thread(service: AnswerService, fake: FakeOpenAI) -> None:
    history = (("user", "Where are the production logs?"), ("assistant", "In Grafana [1]."))
    answer = ask(service, "And for staging?", history=history)
    assert answer.kind == "answer"
    messages = fake.last("chat").body["messages"]
    assert [m["role"] for m in messages[1:]] == ["user", "assistant", "user"]
    assert messages[-1]["content"] == "And for staging?"


def test_refusals_are_answers_with_the_closest_pages(store: Store, clock: ManualClock, fake: FakeOpenAI) -> None:
    settings = _settings(user_daily_budget_usd="0.000001")
    index_docs(settings, store, DOCS)
    gateway = Gateway(settings, store=store, metrics=Metrics(CollectorRegistry()), clock=clock, wall=clock,
                      sleep=clock.sleep, upstream=OpenAIUpstream(api_key=KEY, base_url=fake.base_url, timeout_s=2.0))
    try:
        answer = ask(open_answer_service(settings, store, gateway), "How do I start the dev server?")
        assert answer.kind == "refused" and answer.refusal == "over_budget"
        assert "resets at" in answer.text and answer.citations
        # A micro-dollar a day holds no question: the asker is told who can change that.
        assert "more than the whole daily budget" in answer.text and "Ask your Penny admin" in answer.text
        assert fake.count() == 0
    finally:
        gateway.cache.close()  # type: ignore[union-attr]


def test_a_retry_the_budget_refuses_after_a_billed_attempt_tells_the_asker_what_it_cost(
    store: Store, clock: ManualClock, fake: FakeOpenAI
) -> None:
    """The question went out whole and no answer came (the provider bills it); meanwhile the asker's
    other questions filled the day, so the retry is refused: the refusal says when the budget resets
    and what the lost attempt cost."""
    settings = _settings(user_daily_budget_usd="1")
    index_docs(settings, store, DOCS)
    gateway = Gateway(settings, store=store, metrics=Metrics(CollectorRegistry()), clock=clock, wall=clock,
                      sleep=clock.sleep, upstream=OpenAIUpstream(api_key=KEY, base_url=fake.base_url, timeout_s=2.0))
    day = budget_lines_for(settings, "W1", "U1", clock())[0]

    def meanwhile(request: RecordedRequest, earlier: int) -> Fault | None:
        if request.endpoint == "chat" and earlier == 0:
            spent, reserved = store.spent("W1", day)
            other = LedgerEntry(request_id="other", ts=clock(), day="2026-01-01", workspace_id="W1", user_id="U1",
                                model="gpt-4.1-mini", kind="chat", prompt_tokens=0, cached_prompt_tokens=0,
                                completion_tokens=0, cost_micros=day.limit - spent - reserved, saved_micros=0,
                                cache_status="miss", latency_ms=0, attempts=1)
            store.settle(other, reservation_id=None, lines=[day], result=None, result_ttl_s=60)
            return Fault.drop()
        return None

    fake.decide(meanwhile)
    try:
        answer = ask(open_answer_service(settings, store, gateway), "How do I start the dev server?")
        assert answer.kind == "refused" and answer.refusal == "over_budget"
        assert "resets at" in answer.text and answer.citations
        assert answer.cost_micros > 0 and format_usd(answer.cost_micros) in answer.text
        assert "charged for the attempts the provider started and did not finish" in answer.footer
        assert fake.count("chat") == 1
    finally:
        gateway.cache.close()  # type: ignore[union-attr]


def test_without_an_api_key_answers_are_extractive(store: Store, fake: FakeOpenAI) -> None:
    settings = _settings(openai_api_key=None)
    index_docs(settings, store, DOCS)
    answer = ask(open_answer_service(settings, store, None), "How do I start the dev server?")
    assert answer.kind == "extractive" and answer.cost_micros == 0
    assert "> " in answer.text and answer.citations
    assert fake.count() == 0


def test_an_empty_or_huge_question_gets_a_clear_answer(service: AnswerService) -> None:
    assert ask(service, "   ").refusal == "invalid"
    huge = ask(service, "How do I deploy? " + "x" * 40_000)
    assert huge.kind in ("answer", "no_match")
    if huge.kind == "answer":
        assert "first 4,000 characters" in huge.text


def test_an_index_built_by_another_embedder_is_named_at_start_and_searched_by_its_words_while_running(
    store: Store
) -> None:
    """``PENNY_EMBEDDER`` changed after indexing: the vectors cannot be compared (256 dimensions
    against 64), which was a traceback on every question."""
    index_docs(_settings(), store, DOCS)
    other = _settings(openai_api_key=None, embedder="local:wordllama?dims=64")
    with pytest.raises(ConfigurationError, match=r"PENNY_EMBEDDER is 'local:wordllama\?dims=64'.*run `penny index`"):
        open_answer_service(other, store, None)
    # Re-indexed under another embedder while a replica runs: it answers from the passages' words.
    service = open_answer_service(_settings(openai_api_key=None), store, None)
    index_docs(other, store, DOCS)
    service.index.refresh_if_changed()
    with structlog.testing.capture_logs() as logs:
        answer = ask(service, "Where are the production logs?")
    assert "engineering/logs-and-observability.md" in [c.path for c in answer.citations]
    assert [log["index"] for log in logs if log["event"] == "docs_index_other_embedder"] == ["local:wordllama?dims=64"]
