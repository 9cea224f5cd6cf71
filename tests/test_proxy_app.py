"""``penny proxy``'s app: the real ``openai`` SDK against the proxy over a real gateway and the fake
OpenAI upstream. Each refusal is OpenAI's error shape with the status its clients handle."""

from __future__ import annotations

import hashlib
import io
import json
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal

import openai
import pytest
import structlog
from openai.types.chat import ChatCompletionChunk
from structlog.testing import capture_logs

from bot.proxy.keys import _BLOB_PREFIX, KEY_PREFIX, hash_key
from proxy_core import ManualClock, Store
from proxy_core.prices import PriceTable, chat_cost
from tests.fake_openai import FakeOpenAI, Fault, Gate
from tests.polling import until
from tests.proxy_harness import API_KEY, Proxy, http, serve_proxy

QUESTION = [{"role": "user", "content": "How do I deploy?"}]
MODEL = "gpt-4o-mini"


@pytest.fixture
def fake_answer() -> str:
    return "Run `make deploy`."


@pytest.fixture
def proxy(sqlite_store: Store, fake: FakeOpenAI, clock: ManualClock) -> Iterator[Proxy]:
    with serve_proxy(sqlite_store, fake, clock) as served:
        yield served


def today(clock: ManualClock) -> str:
    return datetime.fromtimestamp(clock(), UTC).strftime("%Y-%m-%d")


def test_a_completion_goes_through_the_gateway_as_the_keys_user_and_a_repeat_is_a_cache_hit(
    proxy: Proxy, fake: FakeOpenAI, clock: ManualClock
) -> None:
    secret, key = proxy.keys.create(user_id="U123", workspace_id="T1")
    client = proxy.client(secret)
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=QUESTION)  # type: ignore[arg-type]
    completion = raw.parse()
    assert completion.choices[0].message.content == "Run `make deploy`."
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    assert raw.headers["x-penny-cache"] == "miss" and float(raw.headers["x-penny-cost-usd"]) > 0
    assert raw.headers["x-penny-key-id"] == key.id
    assert fake.last("chat").header("authorization") == f"Bearer {API_KEY}"  # upstream sees Penny's key only

    again = client.chat.completions.with_raw_response.create(model=MODEL, messages=QUESTION)  # type: ignore[arg-type]
    assert again.headers["x-penny-cache"] == "hit" and again.headers["x-penny-cost-usd"] == "0"
    assert float(again.headers["x-penny-saved-usd"]) > 0
    assert again.parse().choices[0].message.content == "Run `make deploy`."
    assert len(fake.requests_to("chat")) == 1

    usage = proxy.gateway.usage("T1", today(clock), today(clock))
    assert set(usage.by_user) == {"U123"} and usage.totals.requests == 2


def test_the_cache_is_the_keys_users_own(proxy: Proxy, fake: FakeOpenAI) -> None:
    mine, _ = proxy.keys.create(user_id="U1", workspace_id="T1")
    theirs, _ = proxy.keys.create(user_id="U2", workspace_id="T1")
    proxy.client(mine).chat.completions.create(model=MODEL, messages=QUESTION)  # type: ignore[arg-type]
    raw = proxy.client(theirs).chat.completions.with_raw_response.create(
        model=MODEL, messages=QUESTION)  # type: ignore[arg-type]
    assert raw.headers["x-penny-cache"] == "miss" and len(fake.requests_to("chat")) == 2


def test_cache_control_no_cache_bypasses_the_answer_cache(proxy: Proxy, fake: FakeOpenAI) -> None:
    secret, _ = proxy.keys.create(user_id="U1", workspace_id="T1")
    client = proxy.client(secret)
    client.chat.completions.create(model=MODEL, messages=QUESTION)  # type: ignore[arg-type]
    for header in ({"Cache-Control": "no-cache"}, {"Cache-Control": "no-store"}, {"Pragma": "no-cache"}):
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=QUESTION, extra_headers=header)  # type: ignore[arg-type]
        assert raw.headers["x-penny-cache"] == "bypass", header
    # Cache-Control, when there is one, is what counts (RFC 9111): this is a hit.
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=QUESTION, extra_headers={"Cache-Control": "max-age=60", "Pragma": "no-cache"})  # type: ignore[arg-type]
    assert raw.headers["x-penny-cache"] == "hit"
    assert len(fake.requests_to("chat")) == 4


def test_cache_control_no_store_keeps_the_answer_out_of_the_cache(proxy: Proxy, fake: FakeOpenAI) -> None:
    """``no-store`` skipped the cache's lookup but still stored the fresh answer, which the next
    asker in the cache's scope (with ``--cache-scope workspace``: a colleague) was then served."""
    proxy.app.cache_scope = "workspace"
    mine, _ = proxy.keys.create(user_id="U1", workspace_id="T1")
    theirs, _ = proxy.keys.create(user_id="U2", workspace_id="T1")
    private = [{"role": "user", "content": "What is the salary band for L5?"}]
    raw = proxy.client(mine).chat.completions.with_raw_response.create(
        model=MODEL, messages=private, extra_headers={"Cache-Control": "no-store"})  # type: ignore[arg-type]
    assert raw.headers["x-penny-cache"] == "bypass"
    again = proxy.client(theirs).chat.completions.with_raw_response.create(
        model=MODEL, messages=private)  # type: ignore[arg-type]
    assert again.headers["x-penny-cache"] == "miss"
    assert len(fake.requests_to("chat")) == 2
    # no-cache still refreshes the cached answer: the next asker is served the fresh one.
    proxy.client(mine).chat.completions.create(model=MODEL, messages=QUESTION,  # type: ignore[arg-type]
                                               extra_headers={"Cache-Control": "no-cache"})
    hit = proxy.client(theirs).chat.completions.with_raw_response.create(
        model=MODEL, messages=QUESTION)  # type: ignore[arg-type]
    assert hit.headers["x-penny-cache"] == "hit"


def test_a_repeated_idempotency_key_pays_once(proxy: Proxy, fake: FakeOpenAI, clock: ManualClock) -> None:
    secret, _ = proxy.keys.create(user_id="U1", workspace_id="T1")
    client = proxy.client(secret)
    headers = {"Idempotency-Key": "retry-me-1", "Cache-Control": "no-cache"}
    first = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=QUESTION, extra_headers=headers)  # type: ignore[arg-type]
    second = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=QUESTION, extra_headers=headers)  # type: ignore[arg-type]
    assert first.parse().choices[0].message.content == second.parse().choices[0].message.content
    assert second.headers["x-penny-replayed"] == "true"
    assert first.headers["x-penny-request-id"] == second.headers["x-penny-request-id"]
    assert len(fake.requests_to("chat")) == 1
    assert proxy.gateway.usage("T1", today(clock), today(clock)).totals.requests == 1


def test_an_unknown_or_revoked_key_gets_401_in_openais_shape(proxy: Proxy) -> None:
    secret, key = proxy.keys.create(user_id="U1", workspace_id="T1")
    proxy.keys.revoke(key.id)
    for bad in (secret, "pk-unknown", "sk-not-penny"):
        with pytest.raises(openai.AuthenticationError) as caught:
            proxy.client(bad).chat.completions.create(model=MODEL, messages=QUESTION)  # type: ignore[arg-type]
        assert caught.value.code == "invalid_api_key"
    status, reply = http("GET", proxy.base_url + "/models")
    assert status == 401 and reply["error"]["type"] == "invalid_request_error"


def test_models_lists_the_priced_models_this_key_may_use(proxy: Proxy) -> None:
    every, _ = proxy.keys.create(user_id="U1", workspace_id="T1")
    narrow, _ = proxy.keys.create(user_id="U1", workspace_id="T1", models=[MODEL])
    assert [m.id for m in proxy.client(narrow).models.list()] == [MODEL]
    listed = {m.id for m in proxy.client(every).models.list()}
    assert MODEL in listed and set(proxy.gateway.prices) == listed


def test_bad_input_is_a_400_naming_the_field_before_anything_is_reserved(proxy: Proxy, fake: FakeOpenAI) -> None:
    secret, _ = proxy.keys.create(user_id="U1", workspace_id="T1", models=[MODEL])
    client = proxy.client(secret)
    cases: list[tuple[dict[str, object], str]] = [
        ({"model": "gpt-nope", "messages": QUESTION}, "model"),
        ({"model": MODEL, "messages": []}, "messages"),
        ({"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"model": MODEL, "messages": [{"role": ["user"], "content": "hi"}]}, "messages[0].role"),  # was a 500
        ({"model": MODEL, "messages": [{"role": {"user": 1}, "content": "hi"}]}, "messages[0].role"),
        ({"model": MODEL, "messages": QUESTION, "max_tokens": 0}, "max_tokens"),
        ({"model": MODEL, "messages": QUESTION, "max_tokens": 10**9}, "max_tokens"),
        ({"model": MODEL, "messages": QUESTION, "temperature": 7}, "temperature"),
        ({"model": MODEL, "messages": QUESTION, "n": 3}, "n"),
        ({"model": MODEL, "messages": QUESTION, "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"model": MODEL, "messages": QUESTION, "response_format": {"type": "json_object"}}, "response_format"),
        ({"model": MODEL, "messages": QUESTION, "logprobs": True}, "logprobs"),
        ({"model": MODEL, "messages": QUESTION, "stream_options": {"include_usage": True}}, "stream_options"),
    ]
    for body, param in cases:
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(**body)  # type: ignore[call-overload]
        assert caught.value.param == param, body
    with pytest.raises(openai.PermissionDeniedError) as denied:
        client.chat.completions.create(model="gpt-4o", messages=QUESTION)  # type: ignore[arg-type]
    assert denied.value.code == "model_not_allowed"
    auth = {"Authorization": f"Bearer {secret}"}
    statuses: list[str] = []
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/v1/chat/completions", "CONTENT_LENGTH": "2000000",
               "HTTP_AUTHORIZATION": f"Bearer {secret}", "wsgi.input": io.BytesIO(b"")}  # never read
    reply_body = b"".join(proxy.app(environ, lambda status, headers: statuses.append(status)))  # type: ignore[arg-type]
    assert statuses == ["413 Payload Too Large"] and json.loads(reply_body)["error"]["code"] == "request_too_large"
    status, reply = http("POST", proxy.base_url + "/chat/completions", body=b"{nope", headers=auth)
    assert status == 400 and reply["error"]["code"] == "invalid_json"
    anyone = proxy.client(proxy.keys.create(user_id="U1", workspace_id="T1")[0])
    with pytest.raises(openai.BadRequestError) as too_many:  # OpenAI's own cap: 2,048 inputs a request
        anyone.embeddings.create(model="text-embedding-3-small", input=["deploy"] * 2049)
    assert too_many.value.param == "input" and "2,049" in str(too_many.value)
    assert fake.requests == [] and proxy.gateway.usage("T1", "2000-01-01", "2100-01-01").totals.requests == 0


def test_the_rate_limiter_is_a_429_with_retry_after(sqlite_store: Store, fake: FakeOpenAI,
                                                     clock: ManualClock) -> None:
    with serve_proxy(sqlite_store, fake, clock, requests_per_minute=1, request_burst=1) as proxy:
        secret, _ = proxy.keys.create(user_id="U1", workspace_id="T1")
        client = proxy.client(secret)
        client.chat.completions.create(model=MODEL, messages=QUESTION)  # type: ignore[arg-type]
        with pytest.raises(openai.RateLimitError) as caught:  # a cache hit is free: ask for a fresh answer
            client.chat.completions.create(model=MODEL, messages=QUESTION,  # type: ignore[arg-type]
                                           extra_headers={"Cache-Control": "no-cache"})
        assert caught.value.code == "rate_limit_exceeded"
        headers = caught.value.response.headers
        assert int(headers["retry-after"]) >= 1 and headers["x-ratelimit-remaining-requests"] == "0"
        assert headers["x-ratelimit-limit-requests"] == "1"


def test_a_spent_budget_is_a_429_insufficient_quota_with_the_reset_time(
    sqlite_store: Store, fake: FakeOpenAI, clock: ManualClock
) -> None:
    with serve_proxy(sqlite_store, fake, clock, user_daily_budget_usd="0.001") as proxy:
        secret, _ = proxy.keys.create(user_id="U1", workspace_id="T1")
        client = proxy.client(secret)
        fake.script(Fault.ok(prompt_tokens=2_000, completion_tokens=800))  # most of the day's budget
        client.chat.completions.create(model=MODEL, messages=QUESTION)  # type: ignore[arg-type]
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model=MODEL, messages=QUESTION, extra_headers={"Cache-Control": "no-cache"})  # type: ignore[arg-type]
        assert caught.value.code == "insufficient_quota" and caught.value.type == "insufficient_quota"
        assert "has too little left for this request" in caught.value.message
        assert "resets at 2026-01-02T00:00:00Z" in caught.value.message
        assert caught.value.response.headers["retry-after"] == str(24 * 3600)
    assert len(fake.requests) == 1


def test_a_request_bigger_than_the_whole_budget_says_what_to_change_and_not_to_wait(
    sqlite_store: Store, fake: FakeOpenAI, clock: ManualClock
) -> None:
    """Its worst case (the prompt and max_tokens of answer) is more than the whole day's budget: no
    reset makes room, so the refusal says what would fit instead of when to come back."""
    with serve_proxy(sqlite_store, fake, clock, user_daily_budget_usd="0.000001") as proxy:
        secret, _ = proxy.keys.create(user_id="U1", workspace_id="T1")
        with pytest.raises(openai.RateLimitError) as caught:
            proxy.client(secret).chat.completions.create(model=MODEL, messages=QUESTION)  # type: ignore[arg-type]
        assert caught.value.code == "insufficient_quota" and caught.value.type == "insufficient_quota"
        assert "more than the whole daily budget of $0.000001" in caught.value.message
        assert "Lower max_tokens or shorten the prompt" in caught.value.message
        assert "retry-after" not in caught.value.response.headers
        assert caught.value.response.headers["x-should-retry"] == "false"
    assert fake.requests == []


def test_upstream_down_is_a_503_with_retry_after(proxy: Proxy, fake: FakeOpenAI) -> None:
    fake.fail_all(500)
    secret, _ = proxy.keys.create(user_id="U1", workspace_id="T1")
    with pytest.raises(openai.InternalServerError) as caught:
        proxy.client(secret).chat.completions.create(model=MODEL, messages=QUESTION)  # type: ignore[arg-type]
    assert caught.value.status_code == 503 and int(caught.value.response.headers["retry-after"]) >= 1


def test_embeddings_are_billed_to_the_keys_user(proxy: Proxy, fake: FakeOpenAI, clock: ManualClock) -> None:
    secret, _ = proxy.keys.create(user_id="U9", workspace_id="T1")
    raw = proxy.client(secret).embeddings.with_raw_response.create(
        model="text-embedding-3-small", input=["deploy", "rollback"], encoding_format="float")
    result = raw.parse()
    assert [d.index for d in result.data] == [0, 1] and len(result.data[0].embedding) == 1536
    assert float(raw.headers["x-penny-cost-usd"]) > 0
    assert set(proxy.gateway.usage("T1", today(clock), today(clock)).by_user) == {"U9"}


def test_logs_carry_the_key_id_never_the_key(proxy: Proxy) -> None:
    secret, key = proxy.keys.create(user_id="U1", workspace_id="T1")
    with capture_logs() as logs:
        proxy.client(secret).chat.completions.create(model=MODEL, messages=QUESTION)  # type: ignore[arg-type]
    structlog.reset_defaults()
    events = [e for e in logs if e.get("event") == "proxy_request"]
    assert events and events[0]["key_id"] == key.id and events[0]["status"] == 200
    assert secret not in repr(logs)


ANSWER = "Run `make deploy`."


def streamed(client: openai.OpenAI, **extra: object) -> tuple[list[ChatCompletionChunk], dict[str, str]]:
    """The chunks of one streamed completion, and the response headers."""
    raw = client.chat.completions.with_raw_response.create(  # type: ignore[call-overload]
        model=MODEL, messages=QUESTION, stream=True, stream_options={"include_usage": True}, **extra)
    return list(raw.parse()), dict(raw.headers)


def text_of(chunks: list[ChatCompletionChunk]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_a_streamed_completion_arrives_in_pieces_with_usage_last(proxy: Proxy, fake: FakeOpenAI,
                                                                 clock: ManualClock) -> None:
    secret, _ = proxy.keys.create(user_id="U1", workspace_id="T1")
    chunks, headers = streamed(proxy.client(secret))
    assert text_of(chunks) == ANSWER and headers["x-penny-cache"] == "miss"
    assert headers["content-type"].startswith("text/event-stream")
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None and last.usage.completion_tokens > 0
    assert fake.last("chat").body["stream"] is True
    assert proxy.gateway.usage("T1", today(clock), today(clock)).totals.requests == 1


def test_a_streamed_cache_hit_is_one_chunk_and_free(proxy: Proxy, fake: FakeOpenAI) -> None:
    secret, _ = proxy.keys.create(user_id="U1", workspace_id="T1")
    streamed(proxy.client(secret))
    chunks, headers = streamed(proxy.client(secret))
    assert text_of(chunks) == ANSWER and headers["x-penny-cache"] == "hit"
    assert headers["x-penny-cost-usd"] == "0" and len(fake.requests_to("chat")) == 1


def test_a_stream_refused_before_any_text_is_an_ordinary_429(sqlite_store: Store, fake: FakeOpenAI,
                                                              clock: ManualClock) -> None:
    with serve_proxy(sqlite_store, fake, clock, requests_per_minute=1, request_burst=1) as proxy:
        secret, _ = proxy.keys.create(user_id="U1", workspace_id="T1")
        streamed(proxy.client(secret))
        with pytest.raises(openai.RateLimitError) as caught:
            streamed(proxy.client(secret), extra_headers={"Cache-Control": "no-cache"})
        headers = caught.value.response.headers
        assert int(headers["retry-after"]) >= 1
        assert headers["x-ratelimit-limit-requests"] == "1"  # the limit too, as for a call not streamed
        assert "x-ratelimit-limit-tokens" not in headers  # no such limit


def test_a_stream_dropped_mid_answer_still_delivers_the_whole_answer_billed_once(
    proxy: Proxy, fake: FakeOpenAI, clock: ManualClock
) -> None:
    fake.script(Fault.stream_break(after=2), endpoint="chat")
    secret, _ = proxy.keys.create(user_id="U1", workspace_id="T1")
    chunks, _ = streamed(proxy.client(secret))
    assert text_of(chunks) == ANSWER and len(fake.requests_to("chat")) == 2
    assert proxy.gateway.usage("T1", today(clock), today(clock)).totals.requests == 1


def test_a_stream_whose_every_attempt_broke_off_says_what_they_cost_and_the_ledger_has_it(
    sqlite_store: Store, fake: FakeOpenAI, clock: ManualClock
) -> None:
    with serve_proxy(sqlite_store, fake, clock, retry_max_attempts=2) as proxy:
        fake.fail_all(Fault.stream_break(after=2))
        secret, key = proxy.keys.create(user_id="U1", workspace_id="T1")
        body = json.dumps({"model": MODEL, "messages": QUESTION, "stream": True}).encode()
        request = urllib.request.Request(proxy.base_url + "/chat/completions", data=body, method="POST",
                                         headers={"Authorization": f"Bearer {secret}"})
        with urllib.request.urlopen(request, timeout=10) as reply:  # text went out: the status is 200
            events = [json.loads(line[6:]) for line in reply.read().decode().splitlines()
                      if line.startswith("data: {")]
        totals = proxy.gateway.usage("T1", today(clock), today(clock)).totals
        by_source = proxy.gateway.store.usage_by_source("T1", today(clock), today(clock), "U1")
    assert len(fake.requests_to("chat")) == 2
    assert totals.requests == 1 and totals.cost_micros > 0  # the provider bills what it wrote
    assert events[-1]["error"]["code"] == "upstream_error"
    assert events[-1]["penny"] == {"cost_micros": totals.cost_micros}
    assert {s: t.cost_micros for s, t in by_source.items()} == {key.id: totals.cost_micros}  # under the key


def test_a_stream_that_broke_before_any_text_is_charged_its_prompt_with_the_answer(
    proxy: Proxy, fake: FakeOpenAI, clock: ManualClock
) -> None:
    """The provider had the first attempt's prompt (its 200 had begun): the answer's cost, in the
    usage chunk and the ledger, carries that prompt as well."""
    fake.script(Fault.stream_break(after=0), Fault.ok(prompt_tokens=1000, completion_tokens=10), endpoint="chat")
    secret, key = proxy.keys.create(user_id="U1", workspace_id="T1")

    chunks, _ = streamed(proxy.client(secret))

    price = PriceTable.load(None).price_for(MODEL)
    charged = chat_cost(price, 1000, 0, 10) + chat_cost(price, 1000, 0, 0)
    assert text_of(chunks) == ANSWER and len(fake.requests_to("chat")) == 2
    usage = chunks[-1].model_extra or {}
    assert usage["penny"]["cost_micros"] == charged
    by_source = proxy.gateway.store.usage_by_source("T1", today(clock), today(clock), "U1")
    assert {s: (t.requests, t.cost_micros) for s, t in by_source.items()} == {key.id: (1, charged)}


@pytest.mark.parametrize("call", ["streamed", "plain", "embeddings"])
def test_a_call_the_provider_took_and_never_answered_says_what_it_cost(
    sqlite_store: Store, fake: FakeOpenAI, clock: ManualClock, call: str
) -> None:
    """Every stream broke before any text (a plain request, chat or embeddings: sent whole, then
    dropped unanswered). No text went out, so the refusal is an ordinary 503; it says what the
    attempts cost, in its header and in its JSON body (``penny.cost_micros``, as a streamed error
    event does), which the SDK reads as any other error."""
    with serve_proxy(sqlite_store, fake, clock, retry_max_attempts=2) as proxy:
        fake.fail_all(Fault.stream_break(after=0))  # a request not streamed gets Fault.drop's behaviour
        secret, key = proxy.keys.create(user_id="U1", workspace_id="T1")
        client = proxy.client(secret)
        calls: dict[str, Callable[[], object]] = {
            "streamed": lambda: streamed(client),
            "plain": lambda: client.chat.completions.create(model=MODEL, messages=QUESTION),  # type: ignore[arg-type]
            "embeddings": lambda: client.embeddings.create(model="text-embedding-3-small", input=["deploy"] * 100),
        }
        with pytest.raises(openai.APIStatusError) as caught:
            calls[call]()
        by_source = proxy.gateway.store.usage_by_source("T1", today(clock), today(clock), "U1")
    assert caught.value.status_code == 503 and len(fake.requests) == 2
    [(source, totals)] = by_source.items()
    assert source == key.id and totals.requests == 1 and totals.cost_micros > 0
    assert caught.value.response.headers["x-penny-cost-usd"] == format(Decimal(totals.cost_micros) / 1_000_000, "f")
    body = caught.value.response.json()
    assert body["error"]["code"] == "upstream_error" == caught.value.code
    assert body["penny"] == {"cost_micros": totals.cost_micros}


def test_an_error_that_cost_nothing_has_no_penny_member(proxy: Proxy, fake: FakeOpenAI) -> None:
    fake.fail_all(Fault.status(503))
    secret, _ = proxy.keys.create(user_id="U1", workspace_id="T1")
    with pytest.raises(openai.APIStatusError) as caught:
        proxy.client(secret).embeddings.create(model="text-embedding-3-small", input="deploy")
    assert caught.value.status_code == 503 and "x-penny-cost-usd" not in caught.value.response.headers
    assert set(caught.value.response.json()) == {"error"}


# -- what careless and hostile clients send ----------------------------------------------------------


def test_text_no_encoding_can_carry_is_a_400_naming_the_field_before_anything_is_paid(
    proxy: Proxy, fake: FakeOpenAI
) -> None:
    """JSON's ``\\ud800`` escape makes a lone surrogate (a client that cuts a string mid-emoji). The
    call used to be paid for and then fail while caching it: a 500, which SDKs retry, paying again."""
    secret, _ = proxy.keys.create(user_id="U1", workspace_id="T1")
    auth = {"Authorization": f"Bearer {secret}", "Cache-Control": "no-cache"}
    chat = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi \\ud800 there"}]}'
    status, reply = http("POST", proxy.base_url + "/chat/completions", body=chat, headers=auth)
    assert status == 400 and reply["error"]["param"] == "messages[0].content"
    embed = b'{"model": "text-embedding-3-small", "input": ["fine", "cut \\udfff"]}'
    status, reply = http("POST", proxy.base_url + "/embeddings", body=embed, headers=auth)
    assert status == 400 and reply["error"]["param"] == "input[1]"
    deep = b'{"model": "gpt-4o-mini", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    status, reply = http("POST", proxy.base_url + "/chat/completions", body=deep, headers=auth)
    assert status == 400 and reply["error"]["code"] == "invalid_json"
    assert fake.requests == [] and proxy.gateway.usage("T1", "2000-01-01", "2100-01-01").totals.requests == 0


def test_an_idempotency_key_reused_for_another_request_is_refused_and_never_replays_the_first_answer(
    proxy: Proxy, fake: FakeOpenAI, clock: ManualClock
) -> None:
    secret, _ = proxy.keys.create(user_id="U1", workspace_id="T1")
    client = proxy.client(secret)
    same = {"Idempotency-Key": "same", "Cache-Control": "no-cache"}
    client.chat.completions.create(model=MODEL, messages=QUESTION, extra_headers=same)  # type: ignore[arg-type]
    with pytest.raises(openai.UnprocessableEntityError) as caught:  # another question: 422, as the IETF draft says
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Who is on call?"}],
                                       extra_headers=same)
    assert caught.value.code == "idempotency_key_reused" and caught.value.response.headers["x-should-retry"] == "false"
    # The other endpoint under the same key is another request (it was a 500: the chat result replayed as embeddings).
    vectors = client.embeddings.create(model="text-embedding-3-small", input="deploy", encoding_format="float",
                                       extra_headers=same)
    assert len(vectors.data[0].embedding) == 1536
    assert len(fake.requests_to("chat")) == 1 and len(fake.requests_to("embeddings")) == 1
    # A request refused upstream (charged nothing) leaves its key free for a corrected body.
    fake.script(Fault.status(400, message="This model's maximum context length is exceeded"), endpoint="chat")
    retry = {"Idempotency-Key": "fix-me", "Cache-Control": "no-cache"}
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x" * 5000}],
                                       extra_headers=retry)
    fixed = client.chat.completions.create(model=MODEL, messages=QUESTION, extra_headers=retry)  # type: ignore[arg-type]
    assert fixed.choices[0].message.content
    # Whatever the record says, each request's own ID keeps answers apart: a record naming the
    # second body (written by hand) lets it through, and it is answered itself, never given the first answer.
    other = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Who is on call?"}]}).encode()
    [key] = proxy.keys.list()
    proxy.gateway.store.record_put("proxy-idempotency", f"{key.id}:chat:same", hashlib.sha256(other).hexdigest()[:32],
                                   60)
    status, _ = http("POST", proxy.base_url + "/chat/completions", body=other,
                     headers={"Authorization": f"Bearer {secret}", **same})
    assert status == 200 and len(fake.requests_to("chat")) == 4  # answered itself, not given the first answer
    assert fake.last("chat").body["messages"][-1]["content"] == "Who is on call?"


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_another_body_under_an_idempotency_key_still_in_flight_is_a_409_never_a_second_paid_answer(
    backend: str, request: pytest.FixtureRequest, fake: FakeOpenAI, clock: ManualClock
) -> None:
    """The key's body digest used to be recorded only once a request was answered: a second body
    sent while the first was still upstream passed the check and was answered (and billed) too."""
    with serve_proxy(request.getfixturevalue(f"{backend}_store"), fake, clock) as proxy:
        _race_under_one_key(proxy, fake, clock)


def _race_under_one_key(proxy: Proxy, fake: FakeOpenAI, clock: ManualClock) -> None:
    secret, _ = proxy.keys.create(user_id="U1", workspace_id="T1")
    client = proxy.client(secret)
    racing = {"Idempotency-Key": "racing", "Cache-Control": "no-cache"}
    other: list[dict[str, str]] = [{"role": "user", "content": "Who is on call?"}]
    gate = fake.hold(Gate(2))  # the first request waits upstream until the gate is told the second is done
    with ThreadPoolExecutor(max_workers=1) as pool:
        first = pool.submit(client.chat.completions.create, model=MODEL, messages=QUESTION, extra_headers=racing)
        until(lambda: gate.waited == 1, what="the first request to reach upstream")
        with pytest.raises(openai.ConflictError) as caught:  # 409, as the IETF draft says: still being processed
            client.chat.completions.create(model=MODEL, messages=other, extra_headers=racing)  # type: ignore[arg-type]
        assert caught.value.code == "idempotency_key_in_use"
        assert caught.value.response.headers["retry-after"] == "1"
        with pytest.raises(openai.ConflictError) as streaming:  # a stream is refused the same way
            client.chat.completions.create(model=MODEL, messages=other, stream=True,  # type: ignore[arg-type]
                                           extra_headers=racing)
        assert streaming.value.code == "idempotency_key_in_use"
        # The same body is not refused by the key: it goes on to the gateway, which waits for the
        # first request (here, on the manual clock, until its in-flight wait runs out).
        with pytest.raises(openai.ConflictError) as same:
            client.chat.completions.create(model=MODEL, messages=QUESTION, extra_headers=racing)  # type: ignore[arg-type]
        assert same.value.code == "request_in_flight"
        gate.arrive()
        answer = first.result(timeout=10)
    assert not gate.broken and answer.choices[0].message.content == "Run `make deploy`."
    with pytest.raises(openai.UnprocessableEntityError):  # answered now: 422 for another body
        client.chat.completions.create(model=MODEL, messages=other, extra_headers=racing)  # type: ignore[arg-type]
    replay = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=QUESTION, extra_headers=racing)  # type: ignore[arg-type]
    assert replay.headers["x-penny-replayed"] == "true"
    assert len(fake.requests_to("chat")) == 1
    assert proxy.gateway.usage("T1", today(clock), today(clock)).totals.requests == 1


def test_an_idempotency_key_stays_claimed_while_its_request_may_still_run(
    proxy: Proxy, fake: FakeOpenAI, clock: ManualClock
) -> None:
    """A request may wait a claim's TTL for a concurrent asker of the same question before its own
    call: a key claimed for one TTL would be free for another body while the first still ran."""
    secret, _ = proxy.keys.create(user_id="U1", workspace_id="T1")
    client = proxy.client(secret)
    slow = {"Idempotency-Key": "slow", "Cache-Control": "no-cache"}
    gate = fake.hold(Gate(2))
    with ThreadPoolExecutor(max_workers=1) as pool:
        first = pool.submit(client.chat.completions.create, model=MODEL, messages=QUESTION, extra_headers=slow)
        until(lambda: gate.waited == 1, what="the first request to reach upstream")
        clock.advance(proxy.gateway.claim_ttl_s + 1)
        with pytest.raises(openai.ConflictError) as caught:
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Who is on call?"}],
                                           extra_headers=slow)
        assert caught.value.code == "idempotency_key_in_use"
        gate.arrive()
        assert first.result(timeout=10).choices[0].message.content
    assert len(fake.requests_to("chat")) == 1


def test_a_refused_request_under_an_idempotency_key_leaves_it_free_and_a_stream_claims_it_too(
    sqlite_store: Store, fake: FakeOpenAI, clock: ManualClock
) -> None:
    with serve_proxy(sqlite_store, fake, clock, requests_per_minute=1, request_burst=1) as proxy:
        secret, _ = proxy.keys.create(user_id="U1", workspace_id="T1")
        client = proxy.client(secret)
        client.chat.completions.create(model=MODEL, messages=QUESTION)  # type: ignore[arg-type]  # the one request
        key = {"Idempotency-Key": "k1", "Cache-Control": "no-cache"}
        with pytest.raises(openai.RateLimitError):
            streamed(client, extra_headers=key)
        clock.advance(60)
        other: list[dict[str, str]] = [{"role": "user", "content": "Who is on call?"}]
        raw = client.chat.completions.with_raw_response.create(  # type: ignore[call-overload]
            model=MODEL, messages=other, stream=True, extra_headers=key)
        assert "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
        with pytest.raises(openai.UnprocessableEntityError):  # the stream's answer holds the key now
            client.chat.completions.create(model=MODEL, messages=QUESTION, extra_headers=key)  # type: ignore[arg-type]
        assert len(fake.requests_to("chat")) == 2


def test_a_failure_penny_did_not_foresee_is_a_500_in_openais_shape_without_details(
    proxy: Proxy, fake: FakeOpenAI
) -> None:
    """An exception the app did not map used to escape to the WSGI server: its plain-text 500
    (which SDKs retry, a new paid call each time without an Idempotency-Key). Staged here with a
    key record the store holds but cannot be read (written half, by hand)."""
    secret = KEY_PREFIX + "corrupt-record"
    proxy.store.blob_put_many({_BLOB_PREFIX + hash_key(secret): b'{"id": "key_x"'})
    with capture_logs() as logs:
        status, reply = http("POST", proxy.base_url + "/chat/completions",
                             body=json.dumps({"model": MODEL, "messages": QUESTION}).encode(),
                             headers={"Authorization": f"Bearer {secret}"})
    assert status == 500 and reply["error"]["code"] == "internal_error" and reply["error"]["type"] == "server_error"
    assert "key_x" not in json.dumps(reply) and "Error" not in reply["error"]["message"]
    assert [e["log_level"] for e in logs if e["event"] == "proxy_request_crashed"] == ["error"]
    assert secret not in json.dumps(logs, default=str) and fake.requests == []


def test_the_sdks_default_embeddings_call_gets_base64_vectors_equal_to_the_floats(proxy: Proxy) -> None:
    """The openai SDK asks for ``encoding_format: "base64"`` unless told otherwise, and decodes it."""
    secret, _ = proxy.keys.create(user_id="U1", workspace_id="T1")
    client = proxy.client(secret)
    default = client.embeddings.create(model="text-embedding-3-small", input="deploy")
    floats = client.embeddings.create(model="text-embedding-3-small", input="deploy", encoding_format="float")
    assert len(default.data[0].embedding) == 1536
    assert default.data[0].embedding == pytest.approx(floats.data[0].embedding, abs=1e-7)  # float32 on the wire
    body = json.dumps({"model": "text-embedding-3-small", "input": "deploy", "encoding_format": "base64"}).encode()
    status, reply = http("POST", proxy.base_url + "/embeddings", body=body,
                         headers={"Authorization": f"Bearer {secret}"})
    assert status == 200 and isinstance(reply["data"][0]["embedding"], str)  # what the SDK decodes


def test_sampling_settings_penny_does_not_pass_on_are_refused_unless_they_change_nothing(
    proxy: Proxy, fake: FakeOpenAI
) -> None:
    secret, _ = proxy.keys.create(user_id="U1", workspace_id="T1")
    client = proxy.client(secret)
    for extra, param in (({"stop": ["\n"]}, "stop"), ({"top_p": 0.1}, "top_p"), ({"logit_bias": {"50256": -100}},
                                                                                   "logit_bias"),
                         ({"presence_penalty": 1.5}, "presence_penalty"), ({"n": True}, "n")):
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model=MODEL, messages=QUESTION, **extra)  # type: ignore[call-overload]
        assert caught.value.param == param
    assert fake.requests == []
    answer = client.chat.completions.create(  # type: ignore[call-overload]
        model=MODEL, messages=QUESTION, top_p=1, presence_penalty=0, frequency_penalty=0, n=None, stop=None,
        stream=True, stream_options={"include_usage": None}, user="someone")
    assert "".join(c.choices[0].delta.content or "" for c in answer if c.choices) == ANSWER


def test_asking_for_web_search_or_a_reasoning_effort_is_refused_not_answered_without_it(
    proxy: Proxy, fake: FakeOpenAI
) -> None:
    """``web_search_options: {}`` (search, with the defaults), ``reasoning_effort`` and ``verbosity``
    were dropped: the client got an answer made without what it asked for, and was not told."""
    secret, _ = proxy.keys.create(user_id="U1", workspace_id="T1")
    client = proxy.client(secret)
    for name, value in (("web_search_options", {}), ("reasoning_effort", "high"), ("verbosity", "low")):
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model=MODEL, messages=QUESTION, **{name: value})  # type: ignore[call-overload]
        assert caught.value.param == name
    assert fake.requests == []
    client.chat.completions.create(model=MODEL, messages=QUESTION, reasoning_effort=None,  # type: ignore[call-overload]
                                   extra_body={"web_search_options": None})


def test_a_field_openai_does_not_know_is_a_400_naming_it_never_silently_dropped(
    proxy: Proxy, fake: FakeOpenAI
) -> None:
    """``max_token`` (a typo for ``max_tokens``) was dropped: the answer ran to the default length,
    uncapped, and was billed so. OpenAI refuses such a field; so does Penny, naming it."""
    secret, _ = proxy.keys.create(user_id="U1", workspace_id="T1")
    client = proxy.client(secret)
    calls: list[tuple[str, Callable[[], object]]] = [
        ("max_token", lambda: client.chat.completions.create(
            model=MODEL, messages=QUESTION, extra_body={"max_token": 5})),  # type: ignore[arg-type]
        ("top_k", lambda: client.chat.completions.create(
            model=MODEL, messages=QUESTION, extra_body={"top_k": 40})),  # type: ignore[arg-type]
        ("dimension", lambda: client.embeddings.create(
            model="text-embedding-3-small", input="deploy", extra_body={"dimension": 8})),
    ]
    for name, call in calls:
        with pytest.raises(openai.BadRequestError) as caught:
            call()
        assert caught.value.param == name and caught.value.code == "unknown_parameter"
        assert f"Unrecognized request argument supplied: {name}" in caught.value.message
    auth = {"Authorization": f"Bearer {secret}"}
    huge = json.dumps({"model": MODEL, "messages": QUESTION, "x" * 10_000: 1}).encode()
    status, reply = http("POST", proxy.base_url + "/chat/completions", body=huge, headers=auth)
    assert status == 400 and len(json.dumps(reply)) < 1_000  # the name is not echoed whole
    assert fake.requests == []
    # What OpenAI's API takes and Penny has no use for is still accepted.
    client.chat.completions.create(model=MODEL, messages=QUESTION, seed=1, user="someone", store=False,  # type: ignore[arg-type]
                                   metadata={"team": "docs"}, parallel_tool_calls=False, safety_identifier="h1",
                                   prompt_cache_key="k")
    client.embeddings.create(model="text-embedding-3-small", input="deploy", user="someone")


def test_every_field_of_the_installed_openai_sdks_requests_is_known() -> None:
    """A field OpenAI adds after Penny's list was written is accepted (and ignored) once the openai
    SDK has it, never refused as a typo; and the SDK's fields are read from its request types."""
    from bot.proxy.app import _CHAT_FIELDS, _EMBEDDING_FIELDS
    from proxy_core import openai_request_fields

    assert {"messages", "max_completion_tokens", "stream_options", "stream"} <= openai_request_fields("chat")
    assert {"input", "dimensions"} <= openai_request_fields("embeddings")
    assert openai_request_fields("chat") <= _CHAT_FIELDS
    assert openai_request_fields("embeddings") <= _EMBEDDING_FIELDS


def test_upstream_failures_are_pennys_never_the_clients_key_and_never_show_pennys_settings(
    proxy: Proxy, fake: FakeOpenAI
) -> None:
    secret, _ = proxy.keys.create(user_id="U1", workspace_id="T1")
    client = proxy.client(secret).with_options(max_retries=0)
    fake.fail_all(Fault.status(401, message="Incorrect API key provided"))
    with pytest.raises(openai.APIStatusError) as caught:  # not AuthenticationError: the client's key is fine
        client.chat.completions.create(model=MODEL, messages=QUESTION)  # type: ignore[arg-type]
    assert caught.value.status_code == 502 and caught.value.code == "upstream_auth_failed"
    assert caught.value.response.headers["x-should-retry"] == "false"
    fake.fail_all(Fault.status(429, error_code="insufficient_quota"))
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model=MODEL, messages=QUESTION)  # type: ignore[arg-type]
    assert caught.value.code == "upstream_quota_exhausted"
    assert caught.value.response.headers["x-should-retry"] == "false"
    fake.fail_all(Fault.ok(delay_s=3))  # past the proxy's 2 s request timeout
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model=MODEL, messages=QUESTION)  # type: ignore[arg-type]
    assert caught.value.code == "upstream_error" and "127.0.0.1" not in caught.value.message
    assert "OPENAI" not in caught.value.message
