"""A paid answer always reaches its asker: once upstream has answered and the call is settled,
caching the answer is best effort. With an embedder billed through the gateway (``openai:…``),
caching a fresh answer embeds its question as a call of its own, which the asker's rate limit, a
budget or the provider may refuse; that refusal is logged and the answer returned, never raised
in its place (the asker, or an SDK's automatic retry, would otherwise pay for it again).
On SQLite and Redis, with the fake OpenAI.
"""

from __future__ import annotations

from collections.abc import Callable

from structlog.testing import capture_logs

from proxy_core import ManualClock, Store
from proxy_core.gateway import Gateway
from tests.fake_openai import FakeOpenAI, Fault

WS = "T1"
QUESTION = [{"role": "user", "content": "How do I deploy?"}]
BILLED_EMBEDDER = "openai:text-embedding-3-small"


def test_a_rate_limited_cache_write_still_returns_the_paid_answer(
    make_gateway: Callable[..., Gateway], fake: FakeOpenAI, store: Store, clock: ManualClock
) -> None:
    # One request a minute: the chat takes it, so the embedding that caches the answer is refused.
    gw = make_gateway(cache_enabled=True, embedder=BILLED_EMBEDDER, requests_per_minute=1, request_burst=1)
    with capture_logs() as logs:
        result = gw.chat(user_id="U1", workspace_id=WS, request_id="r1", messages=QUESTION, use_cache=False)
    assert result.cost_micros > 0 and result.content
    assert fake.count("chat") == 1 and fake.count("embeddings") == 0
    assert "cache_put_failed" in [e["event"] for e in logs]
    entry = store.ledger_entry(WS, "r1")
    assert entry is not None and entry.cost_micros == result.cost_micros


def test_a_failed_embedding_of_the_answer_still_returns_it(
    make_gateway: Callable[..., Gateway], fake: FakeOpenAI, store: Store, clock: ManualClock
) -> None:
    gw = make_gateway(cache_enabled=True, embedder=BILLED_EMBEDDER, retry_max_attempts=1)
    fake.script(Fault.status(400), endpoint="embeddings")  # the provider refuses the embedding
    result = gw.chat(user_id="U1", workspace_id=WS, request_id="r1", messages=QUESTION, use_cache=False)
    assert result.content and fake.count("chat") == 1
    # Asked again, the request replays its recorded answer: it was settled, never paid twice.
    again = gw.chat(user_id="U1", workspace_id=WS, request_id="r1", messages=QUESTION, use_cache=False)
    assert again.content == result.content and fake.count("chat") == 1
