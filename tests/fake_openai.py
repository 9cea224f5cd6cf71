"""A fake OpenAI API on loopback, for tests that drive the real SDK over real HTTP.

Usage::

    with FakeOpenAI() as fake:
        client = openai.OpenAI(api_key="sk-test", base_url=fake.base_url, max_retries=0)
        fake.script(Fault.status(429, retry_after="2"), Fault.status(503), Fault.ok())
        ...
        assert fake.count("chat") == 3

Endpoints: ``POST /v1/chat/completions`` and ``POST /v1/embeddings``; anything else is a 404.
A chat request with ``"stream": true`` is answered with server-sent events, as OpenAI does (see
*Streaming* below).

Answers are deterministic:

- chat content is ``answer(body)`` when an ``answer`` callable or string was given, else
  ``"Answer to: <last user message>"``. If ``max_completion_tokens`` (or ``max_tokens``) is smaller
  than the answer, it is cut to that many tokens and ``finish_reason`` is ``"length"``.
- tokens are counted with :func:`count_tokens` (whitespace-separated words). ``prompt_tokens`` is
  the sum over messages of ``count_tokens(content) + 3``, plus 3; ``completion_tokens`` counts the
  answer; ``cached_tokens`` is 0. Each can be overridden per call with ``Fault.ok(...)``.
- the ``model`` echoed is the request's, unless ``chat_model`` / ``embed_model`` (e.g. a dated
  snapshot) or ``Fault.ok(model=...)`` says otherwise.
- embeddings are bag-of-words vectors: each lower-cased word gets a pseudo-random unit-normal vector
  seeded by the SHA-256 of the word; a text's vector is their normalised sum. The same text always
  gives the same vector, texts sharing most words are close (cosine), unrelated texts are nearly
  orthogonal. ``set_embedding(text, vector)`` pins a vector. ``dimensions`` is honoured (default
  ``embed_dimensions``, 1536). ``encoding_format`` ``"float"`` and ``"base64"`` (little-endian
  float32, what the SDK asks for by default) are both served.

Streaming: the answer (the same content, model and counts as above, ``Fault.ok`` overrides
included) goes out as ``data: {chunk}`` events over chunked transfer encoding: a first chunk with
the assistant role and ``""`` content, one chunk per word (with the whitespace after it), a chunk
with the ``finish_reason``, then, when the request set ``stream_options.include_usage``, a chunk
with no choices and the ``usage`` (every earlier chunk then carries ``"usage": null``; ``Fault.ok(
include_usage=False)`` leaves the usage chunk out), and finally ``data: [DONE]``.
``Fault.stream_break(after=K, how=...)`` sends the role chunk and ``K`` word chunks and then drops the
connection mid-body (``"drop"``), sends an unreadable chunk (``"garbage"``) or an error event
(``"error"``). Every other fault (a status, a delay, a drop before any byte) works as for a plain
request.

Faults, in order of precedence:

1. a persistent fault set with :meth:`FakeOpenAI.fail_all` answers every request until
   :meth:`FakeOpenAI.clear`;
2. a rule set with :meth:`FakeOpenAI.decide` — ``rule(request, earlier)``, where ``earlier`` counts
   the requests before this one with the same body (so a retry can be told from a first attempt) —
   answers when it returns a fault, until :meth:`FakeOpenAI.clear`;
3. scripted faults (:meth:`FakeOpenAI.script`) are consumed one per request, in order. A script
   given for one endpoint (``endpoint="chat"`` or ``"embeddings"``) is consumed only by that
   endpoint; the shared script (the default, ``endpoint="any"``) is consumed by any request whose
   own endpoint script is empty;
4. otherwise the request succeeds.

Concurrency on purpose: :meth:`FakeOpenAI.hold` makes requests to an endpoint wait in a
:class:`Gate` until a given number of callers have arrived (requests held there, plus callers that
report with :meth:`Gate.arrive` that they will never get there, e.g. because they were refused),
then lets them all go at once. "N concurrent calls" then means all N overlap, whatever the
scheduler does, so a test can assert exactly what that overlap implies.

Every request is counted and recorded (headers and JSON body) before its fault is applied, so
``count`` is exactly the number of HTTP calls that reached the server. Recorded headers hide the
``Authorization`` value in their ``repr`` so assertion output never prints a key. The server prints
nothing. It is thread-safe; delayed responses wake up early when the server stops.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import math
import random
import re
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal, cast

from tests.fake_server import FakeServer, QuietHandler, RedactedHeaders

__all__ = [
    "API_KEY",
    "ATTEMPT_FAULTS",
    "FakeOpenAI",
    "Fault",
    "Gate",
    "RecordedRequest",
    "Rule",
    "count_tokens",
    "fake_embedding",
    "stream_pieces",
]

API_KEY = "sk-test-0123456789abcdef"  # what tests give Penny for the fake (it takes any key); never logged

Endpoint = Literal["chat", "embeddings"]
ScriptTarget = Literal["chat", "embeddings", "any"]
FaultKind = Literal["ok", "status", "garbage", "json", "drop", "stream_break"]
BreakHow = Literal["drop", "garbage", "error"]

_PATHS: dict[str, Endpoint] = {"/v1/chat/completions": "chat", "/v1/embeddings": "embeddings"}

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_denied",
    404: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_exceeded",
}


def count_tokens(text: str) -> int:
    """The fake's tokenizer: whitespace-separated words."""
    return len(text.split())


@dataclass(frozen=True)
class Fault:
    """What the fake does with one request. Build with the static constructors."""

    kind: FaultKind = "ok"
    delay_s: float = 0.0
    status_code: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    message: str | None = None
    error_code: str | None = None  # the JSON error's "code" (and "type"), e.g. "insufficient_quota"
    body: bytes | None = None
    json_body: object = None
    content_type: str = "application/json"
    # "ok" overrides (None: computed from the request)
    content: str | None = None
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    finish_reason: str | None = None
    include_usage: bool = True
    chunk_delay_s: float = 0.0  # a streamed answer: the pause before each word chunk
    # "stream_break": how many word chunks go out before the stream breaks, and how it breaks
    break_after: int = 0
    break_how: BreakHow = "drop"

    @staticmethod
    def ok(
        *,
        content: str | None = None,
        model: str | None = None,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        cached_tokens: int | None = None,
        finish_reason: str | None = None,
        include_usage: bool = True,
        delay_s: float = 0.0,
        chunk_delay_s: float = 0.0,
    ) -> Fault:
        """A normal answer, with any field overridden (``include_usage=False`` drops ``usage``);
        streamed, ``chunk_delay_s`` before each word (an answer still being written)."""
        return Fault(
            kind="ok",
            content=content,
            model=model,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cached_tokens=cached_tokens,
            finish_reason=finish_reason,
            include_usage=include_usage,
            delay_s=delay_s,
            chunk_delay_s=chunk_delay_s,
        )

    @staticmethod
    def status(
        code: int,
        *,
        retry_after: str | None = None,
        retry_after_ms: str | None = None,
        message: str | None = None,
        error_code: str | None = None,
        headers: Mapping[str, str] | None = None,
        delay_s: float = 0.0,
    ) -> Fault:
        """An HTTP error with an OpenAI-style JSON error body and optional retry hints."""
        extra = dict(headers or {})
        if retry_after is not None:
            extra["Retry-After"] = retry_after
        if retry_after_ms is not None:
            extra["retry-after-ms"] = retry_after_ms
        return Fault(
            kind="status",
            status_code=code,
            headers=tuple(extra.items()),
            message=message,
            error_code=error_code,
            delay_s=delay_s,
        )

    @staticmethod
    def delay(seconds: float) -> Fault:
        """Wait ``seconds`` (interruptible by ``stop``), then answer normally."""
        return Fault(kind="ok", delay_s=seconds)

    @staticmethod
    def garbage(
        body: bytes = b'{"id": "chatcmpl-broken", "choi', content_type: str = "application/json"
    ) -> Fault:
        """A 200 whose body is not valid JSON (by default truncated JSON labelled as JSON)."""
        return Fault(kind="garbage", body=body, content_type=content_type)

    @staticmethod
    def json(body: object, *, status: int = 200) -> Fault:
        """Any JSON body, e.g. a 200 missing fields."""
        return Fault(kind="json", json_body=body, status_code=status)

    @staticmethod
    def drop(*, delay_s: float = 0.0) -> Fault:
        """Read the request, then close the connection without any response."""
        return Fault(kind="drop", delay_s=delay_s)

    @staticmethod
    def stream_break(after: int, *, how: BreakHow = "drop", delay_s: float = 0.0) -> Fault:
        """A streamed answer that breaks after ``after`` word chunks: the connection drops without
        ending the body (``"drop"``), an unreadable chunk arrives (``"garbage"``), or an OpenAI
        error event (``"error"``). A request that does not stream gets :meth:`drop`'s behaviour."""
        return Fault(kind="stream_break", break_after=after, break_how=how, delay_s=delay_s)


# What the provider may do with one attempt, by name, for the property tests that draw sequences of
# them: free refusals (429, 503), attempts it took and did not finish (billed), and answers.
ATTEMPT_FAULTS: dict[str, Fault] = {
    "ok": Fault.ok(),
    "503": Fault.status(503),
    "429": Fault.status(429, retry_after="1"),
    "dropped after it was sent": Fault.drop(),
    "stream broke before any text": Fault.stream_break(0),
    "stream broke after text": Fault.stream_break(2),
    "stream ended with an error event": Fault.stream_break(1, how="error"),
    "200 that is not JSON": Fault.garbage(),
}


class Gate:
    """Holds requests until ``parties`` callers have arrived, then lets every one of them go.

    A caller arrives by reaching the fake (its request then waits here, as any caller of
    :meth:`wait` does) or by calling :meth:`arrive` (it will never reach the fake). Once full the
    gate stays open. A gate still not full after ``timeout_s`` opens anyway and is marked
    :attr:`broken`, so a test fails on that instead of hanging.
    """

    def __init__(self, parties: int, *, timeout_s: float = 30.0) -> None:
        self.parties = parties
        self.timeout_s = timeout_s
        self.arrived = 0
        self.waited = 0  # callers that waited here (on a held endpoint: requests that reached the fake)
        self.broken = False
        self._open = False
        self._changed = threading.Condition()

    @property
    def is_open(self) -> bool:
        with self._changed:
            return self._open

    def arrive(self) -> None:
        """Count a caller that will not reach the fake."""
        with self._changed:
            self._count_arrival()

    def open(self) -> None:
        """Let everything through now (the fake does this when it stops)."""
        with self._changed:
            self._open = True
            self._changed.notify_all()

    def wait(self) -> None:
        """Arrive, then wait until the gate is open (what a request to a held endpoint does)."""
        with self._changed:
            if self._open:
                return
            self.waited += 1
            self._count_arrival()
            if not self._changed.wait_for(lambda: self._open, timeout=self.timeout_s):
                self.broken = True
                self._open = True
                self._changed.notify_all()

    def _count_arrival(self) -> None:
        self.arrived += 1
        if self.arrived >= self.parties:
            self._open = True
            self._changed.notify_all()


@dataclass(frozen=True)
class RecordedRequest:
    endpoint: Endpoint | None
    method: str
    path: str
    headers: RedactedHeaders
    body: Any  # decoded JSON, or None when the body was not JSON

    def header(self, name: str) -> str | None:
        return self.headers.get_ci(name)


@lru_cache(maxsize=4096)
def _word_vector(word: str, dims: int) -> tuple[float, ...]:
    seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "big")
    rng = random.Random(seed)
    return tuple(rng.gauss(0.0, 1.0) for _ in range(dims))


def fake_embedding(text: str, dims: int = 1536) -> list[float]:
    """The fake's deterministic unit vector for ``text`` (see the module docstring)."""
    words = [w.strip(".,;:!?\"'()[]{}").lower() for w in text.split()]
    words = [w for w in words if w] or [text]
    total = [0.0] * dims
    for word in words:
        for i, x in enumerate(_word_vector(word, dims)):
            total[i] += x
    norm = math.sqrt(sum(x * x for x in total)) or 1.0
    return [x / norm for x in total]


Rule = Callable[[RecordedRequest, int], Fault | None]
"""``rule(request, earlier)`` → the fault for ``request``, or None to fall through to the script.
``earlier`` is the number of earlier requests with the same body."""


@dataclass
class _State:
    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: list[RecordedRequest] = field(default_factory=list)
    scripts: dict[ScriptTarget, deque[Fault]] = field(
        default_factory=lambda: {"chat": deque(), "embeddings": deque(), "any": deque()}
    )
    persistent: Fault | None = None
    rule: Rule | None = None
    bodies: dict[str, int] = field(default_factory=dict)  # requests seen per canonical body
    gates: dict[Endpoint, Gate] = field(default_factory=dict)


class FakeOpenAI(FakeServer):
    """A loopback OpenAI server; see the module docstring. Use as a context manager."""

    url_path = "/v1"

    def __init__(
        self,
        *,
        answer: str | Callable[[dict[str, Any]], str] | None = None,
        chat_model: str | None = None,
        embed_model: str | None = None,
        embed_dimensions: int = 1536,
    ) -> None:
        self.answer = answer
        self.chat_model = chat_model
        self.embed_model = embed_model
        self.embed_dimensions = embed_dimensions
        self._state = _State()
        self._overrides: dict[str, list[float]] = {}
        super().__init__(_Handler)

    # -- lifecycle (start, stop, base_url: FakeServer) -------------------------------------------

    def _release_waiters(self) -> None:
        with self._state.lock:
            gates = list(self._state.gates.values())
        for gate in gates:
            gate.open()

    # -- scripting ---------------------------------------------------------------------------

    def script(self, *faults: Fault, endpoint: ScriptTarget = "any") -> None:
        """Queue ``faults``, one per request, after anything already queued for ``endpoint``."""
        with self._state.lock:
            self._state.scripts[endpoint].extend(faults)

    def fail_all(self, fault: Fault | int) -> None:
        """Answer every request with ``fault`` (a status code means ``Fault.status(code)``) until cleared."""
        with self._state.lock:
            self._state.persistent = Fault.status(fault) if isinstance(fault, int) else fault

    def decide(self, rule: Rule) -> None:
        """Answer each request with ``rule(request, earlier)`` when it returns a fault (see the
        module docstring), until cleared."""
        with self._state.lock:
            self._state.rule = rule

    def hold(self, gate: Gate, endpoint: Endpoint = "chat") -> Gate:
        """Make requests to ``endpoint`` wait in ``gate`` (after being recorded) until it opens."""
        with self._state.lock:
            self._state.gates[endpoint] = gate
        return gate

    def clear(self) -> None:
        """Drop the persistent fault, the rule, every queued script, and open and drop the gates."""
        with self._state.lock:
            self._state.persistent = None
            self._state.rule = None
            for queue in self._state.scripts.values():
                queue.clear()
            gates = list(self._state.gates.values())
            self._state.gates.clear()
        for gate in gates:
            gate.open()

    def reset(self) -> None:
        """``clear`` and forget recorded requests."""
        self.clear()
        with self._state.lock:
            self._state.requests.clear()
            self._state.bodies.clear()

    def pending(self, endpoint: ScriptTarget = "any") -> int:
        """Scripted faults not consumed yet."""
        with self._state.lock:
            return len(self._state.scripts[endpoint])

    def set_embedding(self, text: str, vector: list[float]) -> None:
        """Always answer ``vector`` for exactly ``text`` (it must match the requested dimensions)."""
        with self._state.lock:
            self._overrides[text] = list(vector)

    # -- inspection --------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._state.lock:
            return list(self._state.requests)

    def requests_to(self, endpoint: Endpoint) -> list[RecordedRequest]:
        return [r for r in self.requests if r.endpoint == endpoint]

    def count(self, endpoint: Endpoint | None = None) -> int:
        """HTTP calls received, for one endpoint or in total."""
        with self._state.lock:
            return sum(1 for r in self._state.requests if endpoint is None or r.endpoint == endpoint)

    def last(self, endpoint: Endpoint) -> RecordedRequest:
        found = self.requests_to(endpoint)
        if not found:
            raise AssertionError(f"no request to {endpoint}")
        return found[-1]

    # -- request handling (server threads) ---------------------------------------------------

    def _record_and_pick(self, request: RecordedRequest) -> Fault:
        """Record ``request``, pick its fault, then wait in its endpoint's gate if one is set."""
        with self._state.lock:
            self._state.requests.append(request)
            gate = self._state.gates.get(request.endpoint) if request.endpoint is not None else None
            key = json.dumps(request.body, sort_keys=True)
            earlier = self._state.bodies.get(key, 0)
            self._state.bodies[key] = earlier + 1
            rule = self._state.rule if self._state.persistent is None else None
        decided = rule(request, earlier) if rule is not None else None
        with self._state.lock:
            fault = self._state.persistent or decided or self._next_scripted(request.endpoint)
        if gate is not None:
            gate.wait()
        return fault

    def _next_scripted(self, endpoint: Endpoint | None) -> Fault:
        if endpoint is not None:
            own = self._state.scripts[endpoint]
            if own:
                return own.popleft()
        shared = self._state.scripts["any"]
        return shared.popleft() if shared else Fault.ok()

    def _wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; False when the server is stopping."""
        if seconds <= 0:
            return not self.stopping.is_set()
        return not self.stopping.wait(seconds)

    def _chat_body(self, request: dict[str, Any], fault: Fault) -> dict[str, Any]:
        messages = request.get("messages") or []
        if fault.content is not None:
            content = fault.content
        elif callable(self.answer):
            content = self.answer(request)
        elif isinstance(self.answer, str):
            content = self.answer
        else:
            content = f"Answer to: {_last_user_message(messages)}"
        finish_reason = fault.finish_reason or "stop"
        limit = request.get("max_completion_tokens", request.get("max_tokens"))
        if fault.content is None and isinstance(limit, int) and count_tokens(content) > limit:
            content = " ".join(content.split()[:limit])
            finish_reason = fault.finish_reason or "length"
        prompt = fault.prompt_tokens
        if prompt is None:
            prompt = 3 + sum(
                count_tokens(_text_of(m.get("content"))) + 3 for m in messages if isinstance(m, dict)
            )
        completion = fault.completion_tokens if fault.completion_tokens is not None else count_tokens(content)
        body: dict[str, Any] = {
            "id": f"chatcmpl-fake{self.count():06d}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": fault.model or self.chat_model or request.get("model") or "gpt-fake",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": None},
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
            ],
            "system_fingerprint": "fp_fake",
        }
        if fault.include_usage:
            body["usage"] = {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": fault.cached_tokens or 0, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
            }
        return body

    def _chat_events(self, request: dict[str, Any], fault: Fault) -> list[bytes]:
        """The server-sent events of a streamed chat completion, ``data: [DONE]`` included."""
        whole = self._chat_body(request, fault)
        choice = whole["choices"][0]
        options = request.get("stream_options")
        with_usage = isinstance(options, dict) and options.get("include_usage") is True

        def chunk(choices: list[dict[str, Any]], usage: object = None) -> bytes:
            body: dict[str, Any] = {
                "id": whole["id"],
                "object": "chat.completion.chunk",
                "created": whole["created"],
                "model": whole["model"],
                "system_fingerprint": whole["system_fingerprint"],
                "choices": choices,
            }
            if with_usage:
                body["usage"] = usage
            return b"data: " + json.dumps(body).encode() + b"\n\n"

        def delta(content: dict[str, Any], finish_reason: str | None = None) -> list[dict[str, Any]]:
            return [{"index": 0, "delta": content, "logprobs": None, "finish_reason": finish_reason}]

        events = [chunk(delta({"role": "assistant", "content": "", "refusal": None}))]
        events.extend(chunk(delta({"content": piece})) for piece in stream_pieces(choice["message"]["content"]))
        events.append(chunk(delta({}, choice["finish_reason"])))
        if with_usage and "usage" in whole:
            events.append(chunk([], whole["usage"]))
        events.append(b"data: [DONE]\n\n")
        return events

    def _embeddings_body(self, request: dict[str, Any], fault: Fault) -> dict[str, Any] | tuple[int, str]:
        raw = request.get("input")
        inputs: list[str]
        if isinstance(raw, str):
            inputs = [raw]
        elif isinstance(raw, list) and raw:
            inputs = [item if isinstance(item, str) else json.dumps(item) for item in raw]
        else:
            return 400, "'input' must be a non-empty string or array"
        dims = request.get("dimensions", self.embed_dimensions)
        if not isinstance(dims, int) or dims < 1:
            return 400, "'dimensions' must be a positive integer"
        encoding = request.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            return 400, "'encoding_format' must be 'float' or 'base64'"
        with self._state.lock:
            overrides = dict(self._overrides)
        data = []
        for index, text in enumerate(inputs):
            vector = overrides.get(text) or fake_embedding(text, dims)
            embedding: object = vector
            if encoding == "base64":
                embedding = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        prompt = fault.prompt_tokens
        if prompt is None:
            prompt = sum(max(1, count_tokens(t)) for t in inputs)
        body: dict[str, Any] = {
            "object": "list",
            "data": data,
            "model": fault.model or self.embed_model or request.get("model") or "text-embedding-fake",
        }
        if fault.include_usage:
            body["usage"] = {"prompt_tokens": prompt, "total_tokens": prompt}
        return body


def stream_pieces(content: str) -> list[str]:
    """How the fake streams ``content``: one piece per word, with the whitespace after it."""
    return re.findall(r"\s+\S*\s*|\S+\s*", content) if content else []


def _text_of(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _last_user_message(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return _text_of(message.get("content"))
    return ""


class _Handler(QuietHandler):
    def do_GET(self) -> None:
        self._read_body()
        self._send_json(404, _error_body(404, f"Unknown path {self.path}"))

    def do_POST(self) -> None:
        fake = self.server.fake
        raw = self._read_body()
        path = self.path.split("?", 1)[0]
        endpoint = _PATHS.get(path)
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = None
        headers = RedactedHeaders({k: v for k, v in self.headers.items()})
        fault = fake._record_and_pick(RecordedRequest(endpoint, "POST", path, headers, body))
        if not fake._wait(fault.delay_s):
            self._drop()
            return
        streaming = isinstance(body, dict) and body.get("stream") is True and endpoint == "chat"
        if fault.kind == "drop" or (fault.kind == "stream_break" and not streaming):
            self._drop()
        elif fault.kind == "status":
            message = fault.message or f"Fake upstream error {fault.status_code}"
            self._send_json(
                fault.status_code, _error_body(fault.status_code, message, fault.error_code), fault.headers
            )
        elif fault.kind == "garbage":
            self._send_raw(200, fault.body or b"", fault.content_type)
        elif fault.kind == "json":
            self._send_json(fault.status_code, fault.json_body)
        elif endpoint is None:
            self._send_json(404, _error_body(404, f"Unknown path {path}"))
        elif not isinstance(body, dict):
            self._send_json(400, _error_body(400, "Request body must be a JSON object"))
        elif streaming:
            self._send_stream(fake._chat_events(cast(dict[str, Any], body), fault), fault)
        elif endpoint == "chat":
            self._send_json(200, fake._chat_body(cast(dict[str, Any], body), fault))
        else:
            result = fake._embeddings_body(cast(dict[str, Any], body), fault)
            if isinstance(result, tuple):
                self._send_json(result[0], _error_body(result[0], result[1]))
            else:
                self._send_json(200, result)

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _send_stream(self, events: list[bytes], fault: Fault) -> None:
        """Send ``events`` as a 200 ``text/event-stream`` in chunked encoding, one event per chunk,
        breaking off as ``fault`` says."""
        if fault.kind == "stream_break":
            events = events[: 1 + fault.break_after]  # the role chunk, then that many word chunks
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("x-request-id", "req_fake")
            self.end_headers()
            for event in events:
                if fault.chunk_delay_s and b'"content"' in event and not self.server.fake._wait(fault.chunk_delay_s):
                    self._drop()
                    return
                self._write_chunk(event)
            if fault.kind == "stream_break":
                if fault.break_how == "drop":
                    self._drop()  # mid-body: the client sees an incomplete chunked read
                    return
                if fault.break_how == "garbage":
                    self._write_chunk(b'data: {"id": "chatcmpl-broken", "choi\n\n')
                else:
                    error = _error_body(500, "The server had an error while processing your request.")
                    self._write_chunk(b"data: " + json.dumps(error).encode() + b"\n\n")
                self._write_chunk(b"data: [DONE]\n\n")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            self.close_connection = True

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _send_json(self, status: int, body: object, headers: tuple[tuple[str, str], ...] = ()) -> None:
        self._send_raw(status, json.dumps(body).encode(), "application/json", headers)

    def _send_raw(
        self, status: int, payload: bytes, content_type: str, headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        super()._send_raw(status, payload, content_type, (("x-request-id", "req_fake"), *headers))


def _error_body(status: int, message: str, code: str | None = None) -> dict[str, Any]:
    default_type = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": code or default_type, "param": None, "code": code}}
