"""OpenAIUpstream against the fake server: the real SDK over real HTTP on loopback."""

from __future__ import annotations

import base64
import math
import struct
import threading
import time
from collections.abc import Iterator
from email.utils import formatdate
from typing import Literal

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from proxy_core.errors import ConfigurationError, UpstreamError, UpstreamRejected
from proxy_core.retry import is_retryable
from proxy_core.upstream import ChatResponse, OpenAIUpstream, parse_retry_after
from tests.fake_openai import FakeOpenAI, Fault, count_tokens, fake_embedding, stream_pieces
from tests.redis_server import free_port

API_KEY = "sk-test-penny-0123456789abcdef"
MESSAGES = [
    {"role": "system", "content": "You answer questions about our docs."},
    {"role": "user", "content": "How do I rotate the signing key?"},
]


@pytest.fixture
def upstream(fake: FakeOpenAI) -> Iterator[OpenAIUpstream]:
    up = OpenAIUpstream(api_key=API_KEY, base_url=fake.base_url, timeout_s=2.0)
    yield up
    up.close()


def ask(up: OpenAIUpstream, **kwargs: object) -> ChatResponse:
    return up.chat(model="gpt-4o-mini", messages=MESSAGES, max_tokens=200, **kwargs)  # type: ignore[arg-type]


def chat_error(up: OpenAIUpstream) -> UpstreamError:
    with pytest.raises(UpstreamError) as info:
        ask(up)
    return info.value


# -- success ---------------------------------------------------------------------------------


def test_chat_success_reports_content_and_usage(fake: FakeOpenAI, upstream: OpenAIUpstream) -> None:
    response = ask(upstream)

    assert response.content == "Answer to: How do I rotate the signing key?"
    assert response.model == "gpt-4o-mini"
    assert response.finish_reason == "stop"
    assert response.completion_tokens == count_tokens(response.content)
    assert response.prompt_tokens == 3 + sum(count_tokens(m["content"]) + 3 for m in MESSAGES)
    assert response.cached_prompt_tokens == 0
    assert fake.count("chat") == 1


def test_chat_usage_with_cached_tokens(fake: FakeOpenAI, upstream: OpenAIUpstream) -> None:
    fake.script(
        Fault.ok(
            content="Use `penny keys rotate`.", prompt_tokens=1200, completion_tokens=9, cached_tokens=1024
        )
    )

    response = ask(upstream)

    assert response == ChatResponse(
        content="Use `penny keys rotate`.",
        model="gpt-4o-mini",
        prompt_tokens=1200,
        cached_prompt_tokens=1024,
        completion_tokens=9,
        finish_reason="stop",
    )


def test_dated_model_name_is_passed_through(fake: FakeOpenAI, upstream: OpenAIUpstream) -> None:
    fake.chat_model = "gpt-4o-mini-2024-07-18"

    assert ask(upstream).model == "gpt-4o-mini-2024-07-18"


def test_request_uses_max_completion_tokens_bearer_key_and_no_sdk_retries(
    fake: FakeOpenAI, upstream: OpenAIUpstream
) -> None:
    upstream.chat(
        model="gpt-4o-mini", messages=MESSAGES, max_tokens=77, temperature=0.2, extra={"user": "penny-U123"}
    )

    sent = fake.last("chat")
    assert sent.header("Authorization") == f"Bearer {API_KEY}"
    assert sent.header("x-stainless-retry-count") == "0"
    assert sent.body["max_completion_tokens"] == 77
    assert "max_tokens" not in sent.body
    assert sent.body["temperature"] == 0.2
    assert sent.body["user"] == "penny-U123"
    assert sent.body["messages"] == MESSAGES
    assert API_KEY not in repr(sent)  # the recorder never prints the key


def test_temperature_is_omitted_unless_given(fake: FakeOpenAI, upstream: OpenAIUpstream) -> None:
    ask(upstream)

    assert "temperature" not in fake.last("chat").body


def test_length_finish_reason_is_reported(fake: FakeOpenAI, upstream: OpenAIUpstream) -> None:
    response = upstream.chat(model="gpt-4o-mini", messages=MESSAGES, max_tokens=3)

    assert response.finish_reason == "length"
    assert response.completion_tokens == 3


# -- status errors ---------------------------------------------------------------------------


def test_429_with_retry_after_seconds(fake: FakeOpenAI, upstream: OpenAIUpstream) -> None:
    fake.script(Fault.status(429, retry_after="2", message="Rate limit reached for requests"))

    err = chat_error(upstream)

    assert type(err) is UpstreamError
    assert (err.kind, err.status, err.retry_after) == ("status", 429, 2.0)
    assert "429" in str(err)
    assert fake.count("chat") == 1


def test_429_with_retry_after_ms_is_preferred(fake: FakeOpenAI, upstream: OpenAIUpstream) -> None:
    fake.script(Fault.status(429, retry_after_ms="1500", retry_after="9"))

    err = chat_error(upstream)

    assert (err.kind, err.status, err.retry_after) == ("status", 429, 1.5)


def test_429_with_retry_after_http_date(fake: FakeOpenAI) -> None:
    now = 1_767_225_600.0
    up = OpenAIUpstream(api_key=API_KEY, base_url=fake.base_url, timeout_s=2.0, wall_clock=lambda: now)
    fake.script(Fault.status(429, retry_after=formatdate(now + 7, usegmt=True)))

    err = chat_error(up)

    assert err.retry_after == 7.0


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors(fake: FakeOpenAI, upstream: OpenAIUpstream, status: int) -> None:
    fake.script(Fault.status(status))

    err = chat_error(upstream)

    assert type(err) is UpstreamError
    assert (err.kind, err.status, err.retry_after) == ("status", status, None)
    assert fake.count("chat") == 1


def test_503_keeps_its_retry_after(fake: FakeOpenAI, upstream: OpenAIUpstream) -> None:
    fake.script(Fault.status(503, retry_after="4"))

    assert chat_error(upstream).retry_after == 4.0


@pytest.mark.parametrize(
    ("status", "hint"),
    [
        (400, "rejected the request"),
        (401, "OPENAI_API_KEY"),
        (403, "OPENAI_API_KEY"),
        (404, "model name"),
        (422, "rejected the request"),
    ],
)
def test_request_errors_are_rejected_with_a_fix(
    fake: FakeOpenAI, upstream: OpenAIUpstream, status: int, hint: str
) -> None:
    # OpenAI quotes (part of) the key in some messages; it must not reach ours.
    fake.script(
        Fault.status(status, message=f"Incorrect API key provided: {API_KEY}. Also sk-other-key-123456.")
    )

    err = chat_error(upstream)

    assert isinstance(err, UpstreamRejected)
    assert err.status == status
    assert hint in str(err)
    assert API_KEY not in str(err)
    assert "sk-other" not in str(err)
    assert fake.count("chat") == 1


def test_429_out_of_quota_is_rejected(fake: FakeOpenAI, upstream: OpenAIUpstream) -> None:
    fake.script(
        Fault.status(429, error_code="insufficient_quota", message="You exceeded your current quota.")
    )

    err = chat_error(upstream)

    assert isinstance(err, UpstreamRejected)
    assert err.status == 429
    assert "billing" in str(err)


def test_404_names_the_model(fake: FakeOpenAI, upstream: OpenAIUpstream) -> None:
    fake.script(
        Fault.status(404, message="The model `gpt-9` does not exist or you do not have access to it.")
    )

    with pytest.raises(UpstreamRejected) as info:
        upstream.chat(model="gpt-9", messages=MESSAGES, max_tokens=10)

    assert "'gpt-9'" in str(info.value)
    assert "does not exist" in str(info.value)


def test_400_passes_on_the_providers_reason(fake: FakeOpenAI, upstream: OpenAIUpstream) -> None:
    fake.script(Fault.status(400, message="max_completion_tokens is too large: 999999."))

    assert "max_completion_tokens is too large" in str(chat_error(upstream))


# -- transport failures ----------------------------------------------------------------------


def test_timeout(fake: FakeOpenAI) -> None:
    up = OpenAIUpstream(api_key=API_KEY, base_url=fake.base_url, timeout_s=0.2)
    fake.script(Fault.delay(30.0))  # answers only when the fake stops

    started = time.monotonic()
    err = chat_error(up)

    assert time.monotonic() - started < 5.0  # the timeout ended it, not the answer
    assert type(err) is UpstreamError
    assert (err.kind, err.status) == ("timeout", None)
    assert "0.2s" in str(err)
    assert err.accepted  # sent whole, then no answer: the provider has it (and bills it)
    assert fake.count("chat") == 1


def test_dropped_connection(fake: FakeOpenAI, upstream: OpenAIUpstream) -> None:
    fake.script(Fault.drop())

    err = chat_error(upstream)

    assert (err.kind, err.status) == ("connection", None)
    assert err.accepted and "took the request" in str(err)  # it was reached: not "could not reach"
    assert fake.count("chat") == 1


def upstream_through(client: str, base_url: str, timeout_s: float) -> OpenAIUpstream:
    """``sdk``: plain chat completions through the SDK (an injected client); else the upstream as
    Penny builds it, which posts them itself on a kept-alive connection."""
    if client != "sdk":
        return OpenAIUpstream(api_key=API_KEY, base_url=base_url, timeout_s=timeout_s)
    sdk = openai.OpenAI(api_key=API_KEY, base_url=base_url, max_retries=0, timeout=timeout_s)
    return OpenAIUpstream(api_key=API_KEY, base_url=base_url, timeout_s=timeout_s, client=sdk)


@pytest.mark.parametrize("client", ["poster", "sdk"])
@pytest.mark.parametrize(
    ("fault", "kind", "accepted"),
    [
        (Fault.drop(), "connection", True),  # the request went out whole; the answer never came
        (Fault.delay(0.6), "timeout", True),  # read timeout: the provider is still on it
        (Fault.garbage(), "malformed", True),  # a 200: the provider ran it
        (Fault.status(429), "status", False),  # refusals are not billed
        (Fault.status(500), "status", False),
        (Fault.status(503), "status", False),
    ],
    ids=["drop", "read-timeout", "garbage", "429", "500", "503"],
)
def test_whether_the_provider_took_the_request_is_the_same_through_either_client(
    fake: FakeOpenAI, client: str, fault: Fault, kind: str, accepted: bool
) -> None:
    up = upstream_through(client, fake.base_url, 0.2)
    fake.script(fault)

    err = chat_error(up)

    assert (err.kind, err.accepted) == (kind, accepted)
    assert fake.count("chat") == 1


@pytest.mark.parametrize("client", ["poster", "sdk"])
def test_a_provider_never_reached_did_not_take_the_request(client: str) -> None:
    port = free_port()  # nothing listens there
    url = f"http://127.0.0.1:{port}/v1"
    up = upstream_through(client, url, 1.0)

    err = chat_error(up)

    assert (err.kind, err.accepted) == ("connection", False)
    assert "Could not reach" in str(err)


def embed_error(up: OpenAIUpstream) -> UpstreamError:
    with pytest.raises(UpstreamError) as info:
        up.embed(model="text-embedding-3-small", inputs=["How do I rotate the signing key?"])
    return info.value


@pytest.mark.parametrize("client", ["default", "sdk"])
@pytest.mark.parametrize(
    ("fault", "kind", "accepted"),
    [
        (Fault.drop(), "connection", True),  # the inputs went out whole; the vectors never came
        (Fault.delay(0.6), "timeout", True),  # read timeout: the provider is still on it
        (Fault.garbage(), "malformed", True),  # a 200: the provider ran it
        (Fault.ok(include_usage=False), "malformed", True),  # a 200 Penny cannot bill from its usage
        (Fault.status(429), "status", False),  # refusals are not billed
        (Fault.status(500), "status", False),
        (Fault.status(503), "status", False),
    ],
    ids=["drop", "read-timeout", "garbage", "no-usage", "429", "500", "503"],
)
def test_whether_the_provider_took_an_embedding_request_is_decided_as_for_chat(
    fake: FakeOpenAI, client: str, fault: Fault, kind: str, accepted: bool
) -> None:
    """Embeddings go through the SDK whichever way the upstream was built (``default``: the one
    that posts chat completions itself); both must tell 'sent, no answer' from 'refused'."""
    up = upstream_through(client, fake.base_url, 0.2)
    fake.script(fault, endpoint="embeddings")

    err = embed_error(up)

    assert (err.kind, err.accepted) == (kind, accepted)
    assert fake.count("embeddings") == 1
    up.close()


@pytest.mark.parametrize("client", ["default", "sdk"])
def test_an_embedding_request_that_never_reached_the_provider_was_not_taken(client: str) -> None:
    port = free_port()  # nothing listens there
    url = f"http://127.0.0.1:{port}/v1"
    up = upstream_through(client, url, 1.0)

    err = embed_error(up)

    assert (err.kind, err.accepted) == ("connection", False)
    assert "Could not reach" in str(err) and "/embeddings" in str(err)


def test_nothing_listening() -> None:
    port = free_port()  # nothing listens there
    up = OpenAIUpstream(api_key=API_KEY, base_url=f"http://127.0.0.1:{port}/v1", timeout_s=1.0)

    err = chat_error(up)

    assert err.kind == "connection"
    message = str(err)
    assert f"OPENAI_BASE_URL=http://127.0.0.1:{port}/v1" in message
    assert f"tried http://127.0.0.1:{port}/v1/chat/completions" in message
    assert "refused" in message.lower() and API_KEY not in message


def test_an_unreachable_default_provider_names_its_url_and_never_a_password() -> None:
    client = openai.OpenAI(api_key=API_KEY, base_url="http://penny:hunter2@127.0.0.1:9/v1", max_retries=0,
                           timeout=1.0)
    up = OpenAIUpstream(api_key=API_KEY, base_url=None, timeout_s=1.0, client=client)

    message = str(chat_error(up))

    assert "the LLM provider at http://127.0.0.1:9/v1 (tried http://127.0.0.1:9/v1/chat/completions" in message
    assert "hunter2" not in message and API_KEY not in message


@pytest.mark.parametrize("endpoint", ["chat", "embeddings"])
def test_a_base_url_without_v1_is_told_to_try_v1(fake: FakeOpenAI, endpoint: str) -> None:
    # The fake serves under /v1 only, like OpenAI-compatible servers: every other path is a 404.
    root = fake.base_url.removesuffix("/v1")
    up = OpenAIUpstream(api_key=API_KEY, base_url=root, timeout_s=2.0)
    call = (lambda: ask(up)) if endpoint == "chat" else (lambda: up.embed(model="text-embedding-3-small",
                                                                          inputs=["hello"]))
    with pytest.raises(UpstreamRejected) as info:
        call()
    path = "/chat/completions" if endpoint == "chat" else "/embeddings"
    assert str(info.value) == (f"OPENAI_BASE_URL={root} answered 404 for {path}; OpenAI-compatible servers "
                               f"usually serve under /v1: try {root}/v1")
    assert "model name" not in str(info.value)
    assert fake.count() == 1  # the request reached the server, at the wrong path


def test_a_404_that_is_not_an_openai_error_says_the_url_is_not_the_apis_root(fake: FakeOpenAI,
                                                                               upstream: OpenAIUpstream) -> None:
    fake.script(Fault.json({"detail": "Not Found"}, status=404))

    message = str(chat_error(upstream))

    assert f"OPENAI_BASE_URL={fake.base_url} answered 404 for /chat/completions" in message
    assert "model name" not in message


# -- malformed 200s --------------------------------------------------------------------------


def test_garbage_json(fake: FakeOpenAI, upstream: OpenAIUpstream) -> None:
    fake.script(Fault.garbage())

    err = chat_error(upstream)

    assert type(err) is UpstreamError
    assert (err.kind, err.status) == ("malformed", None)
    assert fake.count("chat") == 1


def test_non_json_body(fake: FakeOpenAI, upstream: OpenAIUpstream) -> None:
    fake.script(Fault.garbage(b"<html>Bad gateway</html>", content_type="text/html"))

    assert chat_error(upstream).kind == "malformed"


def test_missing_usage_is_malformed(fake: FakeOpenAI, upstream: OpenAIUpstream) -> None:
    fake.script(Fault.ok(include_usage=False))

    err = chat_error(upstream)

    assert err.kind == "malformed"
    assert "usage" in str(err)


@pytest.mark.parametrize(
    "body",
    [
        {"id": "x", "object": "chat.completion", "model": "m", "choices": []},
        {"id": "x", "object": "chat.completion", "model": "m", "choices": [{"index": 0}]},
        {"id": "x", "model": "m", "choices": [{"message": {"content": 42}}], "usage": {}},
        {
            "model": "m",
            "choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": "ten", "completion_tokens": 1},
        },
        {
            "choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1},
        },
        [1, 2, 3],
    ],
)
def test_missing_or_mistyped_fields_are_malformed(
    fake: FakeOpenAI, upstream: OpenAIUpstream, body: object
) -> None:
    fake.script(Fault.json(body))

    assert chat_error(upstream).kind == "malformed"


# -- embeddings ------------------------------------------------------------------------------


def test_embeddings_keep_input_order_and_dimensions(fake: FakeOpenAI, upstream: OpenAIUpstream) -> None:
    texts = ["rotate the signing key", "billing limits", "rotate the signing key please"]

    result = upstream.embed(model="text-embedding-3-small", inputs=texts, dimensions=64)

    assert result.model == "text-embedding-3-small"
    assert result.prompt_tokens == sum(count_tokens(t) for t in texts)
    assert [len(v) for v in result.vectors] == [64, 64, 64]
    for text, vector in zip(texts, result.vectors, strict=True):
        assert vector == pytest.approx(fake_embedding(text, 64), abs=1e-6)  # float32 on the wire
    sent = fake.last("embeddings").body
    assert sent["input"] == texts
    assert sent["dimensions"] == 64


def test_embeddings_default_dimensions(fake: FakeOpenAI, upstream: OpenAIUpstream) -> None:
    result = upstream.embed(model="text-embedding-3-small", inputs=["hello"])

    assert len(result.vectors[0]) == 1536
    assert "dimensions" not in fake.last("embeddings").body


def test_fake_embeddings_are_deterministic_and_meaningful() -> None:
    a = fake_embedding("How do I rotate the signing key?", 256)
    b = fake_embedding("how do i rotate the signing key", 256)
    c = fake_embedding("What is the weather in Lisbon", 256)

    def cos(x: list[float], y: list[float]) -> float:
        return sum(p * q for p, q in zip(x, y, strict=True))

    assert a == fake_embedding("How do I rotate the signing key?", 256)
    assert math.isclose(cos(a, a), 1.0)
    assert cos(a, b) > 0.99
    assert abs(cos(a, c)) < 0.5


def test_fake_serves_float_and_base64(fake: FakeOpenAI) -> None:
    client = openai.OpenAI(api_key=API_KEY, base_url=fake.base_url, max_retries=0)
    floats = client.embeddings.create(model="m", input="x y", dimensions=4, encoding_format="float")
    b64 = client.embeddings.create(model="m", input="x y", dimensions=4, encoding_format="base64")
    client.close()

    assert floats.data[0].embedding == fake_embedding("x y", 4)
    raw = base64.b64decode(b64.data[0].embedding)  # type: ignore[arg-type]
    assert list(struct.unpack("<4f", raw)) == pytest.approx(fake_embedding("x y", 4), abs=1e-6)


def test_pinned_embedding(fake: FakeOpenAI, upstream: OpenAIUpstream) -> None:
    fake.set_embedding("pinned", [0.6, 0.8])

    assert upstream.embed(model="m", inputs=["pinned"], dimensions=2).vectors[0] == pytest.approx(
        [0.6, 0.8], abs=1e-6
    )


def test_embedding_faults(fake: FakeOpenAI, upstream: OpenAIUpstream) -> None:
    fake.script(Fault.status(503), Fault.garbage(), Fault.ok(include_usage=False), endpoint="embeddings")

    kinds = []
    for _ in range(3):
        with pytest.raises(UpstreamError) as info:
            upstream.embed(model="m", inputs=["a"])
        kinds.append((info.value.kind, info.value.status))

    assert kinds == [("status", 503), ("malformed", None), ("malformed", None)]
    assert fake.count("embeddings") == 3


def test_embedding_count_mismatch_is_malformed(fake: FakeOpenAI, upstream: OpenAIUpstream) -> None:
    one = {"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}
    fake.script(Fault.json({"object": "list", "data": [one], "model": "m", "usage": {"prompt_tokens": 2}}))

    with pytest.raises(UpstreamError) as info:
        upstream.embed(model="m", inputs=["a", "b"])

    assert info.value.kind == "malformed"


def test_embeddings_reordered_by_index(fake: FakeOpenAI, upstream: OpenAIUpstream) -> None:
    data = [
        {"object": "embedding", "index": 1, "embedding": [0.0, 1.0]},
        {"object": "embedding", "index": 0, "embedding": [1.0, 0.0]},
    ]
    fake.script(Fault.json({"object": "list", "data": data, "model": "m", "usage": {"prompt_tokens": 2}}))

    assert upstream.embed(model="m", inputs=["a", "b"]).vectors == [[1.0, 0.0], [0.0, 1.0]]


# -- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize("key", [None, "", "   "])
def test_missing_api_key_is_a_configuration_error(key: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env-should-not-be-used")
    with pytest.raises(ConfigurationError, match="OPENAI_API_KEY"):
        OpenAIUpstream(api_key=key, base_url=None, timeout_s=5.0)


def test_injected_client_needs_no_key_and_its_key_is_still_redacted(fake: FakeOpenAI) -> None:
    client = openai.OpenAI(api_key=API_KEY, base_url=fake.base_url, max_retries=0)
    up = OpenAIUpstream(api_key=None, base_url=None, timeout_s=5.0, client=client)
    fake.script(Fault.status(400, message=f"bad key {API_KEY}"))

    with pytest.raises(UpstreamRejected) as info:
        ask(up)
    assert API_KEY not in str(info.value)
    assert ask(up).content.startswith("Answer to:")
    up.close()


# -- pure helpers and the fake itself --------------------------------------------------------


def test_parse_retry_after() -> None:
    now = 1_767_225_600.0
    assert parse_retry_after({"retry-after": "3"}, now) == 3.0
    assert parse_retry_after({"Retry-After": "3"}, now) == 3.0
    assert parse_retry_after({"retry-after": "0.25"}, now) == 0.25
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "3"}, now) == 0.25
    assert parse_retry_after({"retry-after-ms": "nope", "retry-after": "3"}, now) == 3.0
    assert parse_retry_after({"retry-after": formatdate(now + 30, usegmt=True)}, now) == 30.0
    assert parse_retry_after({"retry-after": formatdate(now - 30, usegmt=True)}, now) == 0.0
    assert parse_retry_after({"retry-after": "soon"}, now) is None
    assert parse_retry_after({"retry-after": "-1"}, now) is None
    assert parse_retry_after({"retry-after": "inf"}, now) is None
    assert parse_retry_after({}, now) is None


def test_fake_scripts_per_endpoint_then_shared(fake: FakeOpenAI, upstream: OpenAIUpstream) -> None:
    fake.script(Fault.status(502), endpoint="embeddings")
    fake.script(Fault.status(500))

    with pytest.raises(UpstreamError) as emb:
        upstream.embed(model="m", inputs=["a"])
    with pytest.raises(UpstreamError) as chat:
        ask(upstream)

    assert (emb.value.status, chat.value.status) == (502, 500)
    ask(upstream)  # the scripts are used up
    assert fake.pending() == 0


def test_fake_fail_all_until_cleared(fake: FakeOpenAI, upstream: OpenAIUpstream) -> None:
    fake.fail_all(503)
    for _ in range(3):
        assert chat_error(upstream).status == 503

    fake.clear()

    assert ask(upstream).content
    assert fake.count("chat") == 4


def test_fake_stops_promptly_with_a_delayed_request_in_flight() -> None:
    server = FakeOpenAI().start()
    server.script(Fault.delay(30))
    up = OpenAIUpstream(api_key=API_KEY, base_url=server.base_url, timeout_s=5.0)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            ask(up)
        except UpstreamError as exc:
            errors.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    while server.count("chat") == 0:
        time.sleep(0.01)
    started = time.monotonic()
    server.stop()
    caller.join(timeout=5)

    assert time.monotonic() - started < 3.0  # the stop ended it, not the 5 s timeout
    assert not caller.is_alive()
    assert [type(e) for e in errors] == [UpstreamError]


# -- streamed chat completions ---------------------------------------------------------------


def ask_streaming(
    up: OpenAIUpstream, sink: list[str] | None = None, *, temperature: float | None = None
) -> ChatResponse:
    deltas = sink if sink is not None else []
    return up.chat_stream(
        model="gpt-4o-mini", messages=MESSAGES, max_tokens=200, on_delta=deltas.append, temperature=temperature
    )


def stream_error(up: OpenAIUpstream, sink: list[str] | None = None) -> UpstreamError:
    with pytest.raises(UpstreamError) as info:
        ask_streaming(up, sink)
    return info.value


def test_chat_stream_sends_each_piece_then_returns_the_whole_response_with_usage(
    fake: FakeOpenAI, upstream: OpenAIUpstream
) -> None:
    deltas: list[str] = []

    response = ask_streaming(upstream, deltas)

    assert deltas == stream_pieces("Answer to: How do I rotate the signing key?")
    assert len(deltas) > 3
    assert response == ask(upstream)  # the same response a plain call gets
    body = fake.requests_to("chat")[0].body
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["max_completion_tokens"] == 200 and "max_tokens" not in body
    assert "temperature" not in body


def test_chat_stream_reports_cached_tokens_model_and_length(fake: FakeOpenAI, upstream: OpenAIUpstream) -> None:
    fake.script(Fault.ok(content="Use `penny keys rotate`.", prompt_tokens=1200, completion_tokens=9,
                         cached_tokens=1024, model="gpt-4o-mini-2024-07-18", finish_reason="length"))

    response = ask_streaming(upstream, temperature=0.2)

    assert response == ChatResponse(
        content="Use `penny keys rotate`.",
        model="gpt-4o-mini-2024-07-18",
        prompt_tokens=1200,
        cached_prompt_tokens=1024,
        completion_tokens=9,
        finish_reason="length",
    )
    assert fake.last("chat").body["temperature"] == 0.2


@pytest.mark.parametrize(
    ("fault", "kind", "status", "rejected"),
    [
        (Fault.status(429, retry_after="2"), "status", 429, False),
        (Fault.status(503), "status", 503, False),
        (Fault.status(401), "status", 401, True),
        (Fault.status(429, error_code="insufficient_quota"), "status", 429, True),
        (Fault.drop(), "connection", None, False),
    ],
)
def test_chat_stream_failures_before_the_first_byte_are_translated_like_chat(
    fake: FakeOpenAI, upstream: OpenAIUpstream, fault: Fault, kind: str, status: int | None, rejected: bool
) -> None:
    """A status answer is not billed; a request sent whole and dropped unanswered is (``accepted``)."""
    fake.script(fault, fault)
    deltas: list[str] = []

    streamed = stream_error(upstream, deltas)
    plain = chat_error(upstream)

    assert (type(streamed), streamed.kind, streamed.status) == (type(plain), kind, status)
    assert str(streamed) == str(plain)
    assert streamed.retry_after == plain.retry_after
    assert isinstance(streamed, UpstreamRejected) is rejected
    assert streamed.accepted == plain.accepted == (fault.kind == "drop")
    assert deltas == []


def test_chat_stream_timeout_before_the_first_byte(fake: FakeOpenAI) -> None:
    up = OpenAIUpstream(api_key=API_KEY, base_url=fake.base_url, timeout_s=0.2)
    fake.script(Fault.delay(0.6))

    err = stream_error(up)

    assert (type(err), err.kind, err.accepted) == (UpstreamError, "timeout", True)  # sent whole: billed


@pytest.mark.parametrize("how", ["drop", "garbage", "error"])
def test_a_stream_that_breaks_midway_is_a_retryable_connection_error(
    fake: FakeOpenAI, upstream: OpenAIUpstream, how: Literal["drop", "garbage", "error"]
) -> None:
    fake.script(Fault.stream_break(3, how=how))
    deltas: list[str] = []

    err = stream_error(upstream, deltas)

    assert type(err) is UpstreamError
    assert (err.kind, err.status) == ("connection", None)
    assert is_retryable(err)
    assert deltas == ["Answer ", "to: ", "How "]  # what was shown before it broke
    assert err.streamed == "Answer to: How "  # generated, so billed: the gateway charges it
    assert err.accepted  # the provider had the prompt: it bills it
    assert API_KEY not in str(err)
    assert ask_streaming(upstream).content  # the connection pool is fine afterwards


@pytest.mark.parametrize("how", ["drop", "garbage", "error"])
def test_a_stream_that_breaks_before_any_text_was_accepted_all_the_same(
    fake: FakeOpenAI, upstream: OpenAIUpstream, how: Literal["drop", "garbage", "error"]
) -> None:
    """The 200 and its first chunk came back: the provider had the prompt, and bills it."""
    fake.script(Fault.stream_break(0, how=how))
    deltas: list[str] = []

    err = stream_error(upstream, deltas)

    assert (type(err), err.kind, err.accepted, err.streamed, deltas) == (UpstreamError, "connection", True, "", [])


def test_a_stream_without_its_usage_chunk_is_malformed_not_free(fake: FakeOpenAI, upstream: OpenAIUpstream) -> None:
    fake.script(Fault.ok(include_usage=False))
    deltas: list[str] = []

    err = stream_error(upstream, deltas)

    assert (type(err), err.kind, err.accepted) == (UpstreamError, "malformed", True)
    assert "usage" in str(err)
    assert "".join(deltas) == err.streamed == "Answer to: How do I rotate the signing key?"


def test_a_failing_sink_is_not_an_upstream_error(fake: FakeOpenAI, upstream: OpenAIUpstream) -> None:
    def sink(text: str) -> None:
        raise RuntimeError("the terminal went away")

    with pytest.raises(RuntimeError):
        upstream.chat_stream(model="gpt-4o-mini", messages=MESSAGES, max_tokens=200, on_delta=sink)
    assert ask_streaming(upstream).content


def test_fake_streams_server_sent_events_and_usage_only_when_asked(fake: FakeOpenAI) -> None:
    client = openai.OpenAI(api_key=API_KEY, base_url=fake.base_url, max_retries=0)
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "How do I rotate the signing key?"}]
    try:
        with client.chat.completions.create(model="m", messages=messages, stream=True) as stream:
            chunks = list(stream)
        with client.chat.completions.create(
            model="m", messages=messages, stream=True, stream_options={"include_usage": True}
        ) as stream:
            with_usage = list(stream)
    finally:
        client.close()

    assert all(c.usage is None for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Answer to: How do I rotate the signing key?"
    assert [c.choices[0].finish_reason for c in chunks][-1] == "stop"
    assert len(with_usage) == len(chunks) + 1
    assert with_usage[-1].choices == [] and with_usage[-1].usage is not None
    assert with_usage[-1].usage.completion_tokens == count_tokens("Answer to: How do I rotate the signing key?")
    assert fake.last("chat").header("Authorization") == f"Bearer {API_KEY}"


def test_stream_break_on_a_plain_request_drops_the_connection(fake: FakeOpenAI, upstream: OpenAIUpstream) -> None:
    fake.script(Fault.stream_break(2))

    assert chat_error(upstream).kind == "connection"
