"""``penny proxy``'s money promises, as a hostile or careless client meets them: what a client is told
a request cost (``x-penny-cost-usd``, the usage chunk's ``penny.cost_micros``, an error body's or a
streamed error event's ``penny.cost_micros``) is what the ledger holds for it, under its key, once;
no budget line is passed; nothing stays reserved. Raw HTTP and the real ``openai`` SDK against the
proxy over a real gateway, the fake OpenAI upstream and both stores."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from proxy_core import ManualClock, Store
from tests.fake_openai import FakeOpenAI, Fault
from tests.proxy_harness import Proxy, serve_proxy

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
