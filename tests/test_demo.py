"""``penny demo`` end to end through ``bot.cli.main``, and the simulated LLM it runs against.

The demo needs no key and no network: the simulated LLM is a local server shipped in the package,
and the docs are embedded by the bundled local embedder. Its waits (a first token, a word) are set
to zero here; the script is otherwise the one ``make demo`` plays.
"""

from __future__ import annotations

import functools
import io
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

import bot.demo
from bot.cli import main
from bot.demo import BEN, BEN_DAILY_BUDGET, demo_settings
from bot.simulated_llm import LABEL, SimulatedLLM, simulated_answer
from proxy_core.upstream import OpenAIUpstream
from tests.redis_server import free_port

PROMPT = [
    {"role": "system", "content": "Answer from the passages.\n\nPassages:\n"
     "[1] Deploying › Production (engineering/deploying.md)\n"
     "To deploy to production, promote a SHA from staging.\n\n```sh\ntw deploy --env production\n```\n\n"
     "Watch the production dashboard for fifteen minutes.\n\n"
     "[2] Lunch (office.md)\n| day | menu |\nThe canteen opens at noon."},
    {"role": "user", "content": "How do I deploy to production?"},
]


@pytest.fixture(autouse=True)
def isolated(cli_env: str) -> None:
    """Every test here runs in ``cli_env``."""


@pytest.fixture
def llm() -> Iterator[SimulatedLLM]:
    with SimulatedLLM(latency_s=0, word_delay_s=0) as server:
        yield server


def test_penny_demo_shows_cost_lines_cache_hits_a_budget_a_rate_limit_and_cost_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bot.demo, "SimulatedLLM", functools.partial(SimulatedLLM, latency_s=0, word_delay_s=0))
    # The demo reads none of the user's settings: none of these may change what it shows or touch.
    mine = tmp_path / "mine.db"
    (tmp_path / ".env").write_text(f"PENNY_STORE_URL=sqlite:///{mine}\nPENNY_CACHE_ENABLED=false\n")
    monkeypatch.setenv("PENNY_REQUESTS_PER_MINUTE", "1")
    monkeypatch.setenv("PENNY_USER_DAILY_BUDGET_USD", "two dollars")  # a broken setting stops every command but this
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-never-sent-0123456789")
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{free_port()}/v1")
    out = io.StringIO()

    code = main(["demo"], stdout=out, stdin=io.StringIO())

    text = out.getvalue()
    assert code == 0, text
    assert "against a simulated LLM at http://127.0.0.1:" in text and "no real model, no real money" in text
    assert text.count(f"penny> {LABEL}") >= 5  # every LLM answer says it is simulated
    assert "gpt-4.1-mini · " in text and " tokens · $0.000" in text  # a fresh answer's cost line
    assert "cached (same question), saved $0.000" in text
    assert "cached (similar question, 0." in text
    assert f"The daily budget of ${BEN_DAILY_BUDGET} has too little left for this request" in text
    assert "it resets at " in text
    assert "You're asking faster than your limit allows (requests per minute). Try again in " in text
    assert "Your Penny costs" in text and "Your daily budget: $" in text
    assert "Team Penny costs" in text and "Top users this month" in text and BEN in text
    assert "sk-test-never-sent" not in text
    assert not mine.exists() and not (tmp_path / "penny.db").exists()


def test_the_demo_settings_ignore_the_environment_and_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("PENNY_CHAT_MODEL=gpt-4o\n")
    monkeypatch.setenv("PENNY_STORE_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("PENNY_USER_DAILY_BUDGET_USD", "100")

    settings = demo_settings(tmp_path, "http://127.0.0.1:9/v1", tmp_path)

    assert settings.store_url == f"sqlite:///{tmp_path / 'penny.db'}"
    assert settings.chat_model == "gpt-4.1-mini"
    assert settings.user_daily_budget_micros(BEN) == 2_000
    assert settings.spool_directory() == tmp_path / "penny-spool"


def test_a_simulated_answer_cites_the_passage_sentences_closest_to_the_question() -> None:
    answer = simulated_answer(PROMPT)

    assert answer == (f"{LABEL} To deploy to production, promote a SHA from staging. [1] "
                      "Watch the production dashboard for fifteen minutes. [1]")
    assert simulated_answer([{"role": "user", "content": "hi"}]).startswith(LABEL)


def test_the_simulated_llm_speaks_openai_to_the_openai_client(llm: SimulatedLLM) -> None:
    upstream = OpenAIUpstream(api_key="sk-simulated", base_url=llm.base_url, timeout_s=5)
    try:
        whole = upstream.chat(model="gpt-4.1-mini", messages=PROMPT, max_tokens=800)
        pieces: list[str] = []
        streamed = upstream.chat_stream(model="gpt-4.1-mini", messages=PROMPT, max_tokens=800,
                                        on_delta=pieces.append)
        cut = upstream.chat(model="gpt-4.1-mini", messages=PROMPT, max_tokens=5)
        vectors = upstream.embed(model="text-embedding-3-small", inputs=["deploy to production", "lunch"])
        small = upstream.embed(model="text-embedding-3-small", inputs=["deploy"], dimensions=64)
    finally:
        upstream.close()
    assert whole.content == simulated_answer(PROMPT) and whole.model == "gpt-4.1-mini"
    assert whole.prompt_tokens > 40 and whole.completion_tokens == -(-len(whole.content) // 4)
    assert streamed == whole and len(pieces) > 5 and "".join(pieces) == whole.content
    assert (cut.finish_reason, cut.completion_tokens) == ("length", 5)
    assert len(vectors.vectors) == 2 and len(vectors.vectors[0]) == 1536 and vectors.prompt_tokens > 0
    assert len(small.vectors[0]) == 64
    assert llm.calls == 3


def test_the_simulated_llm_answers_404_off_v1_and_400_to_a_bad_body(llm: SimulatedLLM) -> None:
    root = llm.base_url.removesuffix("/v1")
    cases = [(f"{root}/chat/completions", b"{}", 404), (f"{llm.base_url}/chat/completions", b"[", 400)]
    for url, body, status in cases:
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=5)
        assert info.value.code == status
        assert isinstance(json.loads(info.value.read())["error"]["message"], str)
    client = openai.OpenAI(api_key="sk-simulated", base_url=root, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.models.list()
