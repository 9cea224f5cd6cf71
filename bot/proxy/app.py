"""The OpenAI-compatible endpoint as a WSGI app: ``/v1/models``, ``/v1/chat/completions``,
``/v1/embeddings``, every call through the :class:`~proxy_core.Gateway` as the key's user.

The app turns a WSGI environ into a :class:`ProxyRequest`, :meth:`ProxyApp.handle` turns that into a
:class:`ProxyResponse` (a pure function of the request, the keys and the gateway), and the response
goes back out. Refusals are OpenAI's error shape with the statuses its clients already handle:
401 for a bad key, 400 naming the bad field, 429 with ``Retry-After`` for a rate limit, 429
``insufficient_quota`` for a spent budget, 503 with ``Retry-After`` while upstream is down.

Every call is the key's user's, with the key as its :class:`~proxy_core.CallSource`: the ledger
records the key's ID (``/cost`` splits a person's spend by it), and a key's daily budget is one more
budget line the gateway reserves on before the call, counting only that key's spend; the user's and
the workspace's budgets still apply.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final, Literal

import numpy as np

from bot.proxy.keys import KeyRing, ProxyKey
from bot.proxy.streaming import QueuedStream, StreamCalls, StreamEvents, run_streamed, sse_chunks
from proxy_core import (
    BudgetExceeded,
    CallSource,
    ChatResult,
    CircuitOpen,
    EmbeddingResult,
    Gateway,
    PennyError,
    RateLimited,
    RequestAnswered,
    RequestInFlight,
    RequestInterrupted,
    StoreError,
    UpstreamError,
    UpstreamRejected,
    get_logger,
    openai_request_fields,
)

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

__all__ = ["ProxyApp", "ProxyError", "ProxyRequest", "ProxyResponse"]

MAX_BODY_BYTES = 1_000_000
# records: "<key ID>:<endpoint>:<Idempotency-Key>" -> the body's digest once a request under it was
# answered, "busy:<digest>" while the first request under it is in flight
IDEMPOTENCY_RECORD: Final = "proxy-idempotency"
_BUSY: Final = "busy:"
MAX_TOKENS_CAP = 128_000
MAX_EMBEDDING_INPUTS = 2048  # strings in one /v1/embeddings request, as OpenAI's API allows
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 409: "Conflict", 411: "Length Required", 413: "Payload Too Large",
            422: "Unprocessable Content", 429: "Too Many Requests",
            500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


@dataclass(frozen=True, slots=True)
class ProxyRequest:
    """One HTTP request as the proxy sees it: header names lower-case."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class ProxyResponse:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    stream: Iterator[bytes] | None = None  # server-sent events, written as they come (body unused)

    @classmethod
    def json(cls, status: int, payload: object, headers: Mapping[str, str] | None = None) -> ProxyResponse:
        return cls(status, json.dumps(payload, separators=(",", ":")).encode("utf-8"),
                   {"Content-Type": "application/json", **(headers or {})})


@dataclass(frozen=True, slots=True)
class _KeyUse:
    """A request under a client's ``Idempotency-Key``: its record's key and the body's digest.
    ``owner``: this request claimed the key (and gives the claim up if it is refused or fails);
    else the key was answered with this body, and the gateway replays that answer."""

    scoped: str
    digest: str
    owner: bool


class ProxyError(Exception):
    """A refusal in OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``, plus
    ``"penny": {"cost_micros"}`` when the failed call was charged all the same (``cost_micros``:
    attempts the provider took and did not finish). OpenAI's clients ignore a member they do not
    know, as they do in a streamed error event, which carries the same body."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})
        self.cost_micros = 0

    def charged(self, micros: int) -> None:
        """Say, in the body and in ``x-penny-cost-usd``, that the failed call cost ``micros``."""
        self.cost_micros = micros
        self.headers["x-penny-cost-usd"] = _usd(micros)

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": {"message": self.message, "type": self.type, "param": self.param,
                                          "code": self.code}}
        if self.cost_micros:
            body["penny"] = {"cost_micros": self.cost_micros}
        return body

    def response(self) -> ProxyResponse:
        return ProxyResponse.json(self.status, self.body(), self.headers)


def _bad(param: str, message: str) -> ProxyError:
    return ProxyError(400, message, param=param, code="invalid_value")


class ProxyApp:
    """The proxy's WSGI app. ``cache_scope="user"`` (the default) keeps each key's user's cached
    answers to that user; ``"workspace"`` lets proxy callers in one workspace share them."""

    def __init__(self, gateway: Gateway, keys: KeyRing, *, cache_scope: Literal["user", "workspace"] = "user",
                 max_body_bytes: int = MAX_BODY_BYTES, clock: Callable[[], float] = time.time) -> None:
        self.gateway = gateway
        self.keys = keys
        self.cache_scope = cache_scope
        self.max_body_bytes = max_body_bytes
        self.streams = StreamCalls()  # streamed calls still running (the worker waits for them when it stops)
        self._clock = clock
        self._log = get_logger()

    # -- WSGI ------------------------------------------------------------------------------------

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        headers = {k[5:].replace("_", "-").lower(): str(v) for k, v in environ.items() if k.startswith("HTTP_")}
        try:
            response = self._from_environ(environ, headers)
        except Exception as exc:
            response = self._crashed(exc, environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", ""), None)
        if response is None:
            try:
                body = self._read_body(environ, headers)
            except ProxyError as exc:
                response = exc.response()
            else:
                request = ProxyRequest(environ.get("REQUEST_METHOD", "GET"), environ.get("PATH_INFO", "/"), headers,
                                       body)
                response = self.handle(request)
        status = f"{response.status} {_REASONS.get(response.status, 'Error')}"
        if response.stream is not None:
            start_response(status, list(response.headers.items()))
            return response.stream
        start_response(status, [*response.headers.items(), ("Content-Length", str(len(response.body)))])
        return [response.body]

    def _from_environ(self, environ: WSGIEnvironment, headers: Mapping[str, str]) -> ProxyResponse | None:
        """A refusal decided before reading the body: one too large, or sent without a valid key, is
        never read (a client without a key cannot hold a request thread by sending a body slowly)."""
        try:
            length = _content_length(environ)
        except ValueError:
            return ProxyError(400, "Content-Length is not a number.").response()
        if length > self.max_body_bytes:
            return ProxyError(413, f"The request body is over {self.max_body_bytes} bytes.",
                              code="request_too_large").response()
        if length or _chunked(headers):
            try:
                self._authenticate(ProxyRequest(environ.get("REQUEST_METHOD", "POST"), "", headers))
            except ProxyError as exc:
                return exc.response()
        return None

    def _read_body(self, environ: WSGIEnvironment, headers: Mapping[str, str]) -> bytes:
        """The request's body: ``Content-Length`` bytes, or a chunked body up to the size cap."""
        length = _content_length(environ)
        if length:
            return bytes(environ["wsgi.input"].read(length))
        if not _chunked(headers):
            return b""
        body = bytes(environ["wsgi.input"].read(self.max_body_bytes + 1))  # the server de-chunks it
        if len(body) > self.max_body_bytes:
            raise ProxyError(413, f"The request body is over {self.max_body_bytes} bytes.", code="request_too_large")
        return body

    # -- the request, as a value -------------------------------------------------------------------

    def handle(self, request: ProxyRequest) -> ProxyResponse:
        key: ProxyKey | None = None
        try:
            route = _ROUTES.get(request.path.rstrip("/"))
            if route is None:
                raise ProxyError(404, f"Unknown URL {request.method} {request.path}.", code="unknown_url")
            method, name = route
            if request.method != method:
                raise ProxyError(405, f"{request.path} takes {method}, not {request.method}.",
                                 code="method_not_allowed")
            key = self._authenticate(request)
            handler: Callable[[ProxyRequest, ProxyKey], ProxyResponse] = getattr(self, name)
            response = handler(request, key)
        except ProxyError as exc:
            response = exc.response()
        except Exception as exc:
            response = self._crashed(exc, request.method, request.path, key)
        response.headers.setdefault("x-penny-key-id", key.id if key else "")
        self._log.info("proxy_request", method=request.method, path=request.path, status=response.status,
                       key_id=key.id if key else None, user_id=key.user_id if key else None,
                       cache=response.headers.get("x-penny-cache"), cost_usd=response.headers.get("x-penny-cost-usd"))
        return response

    def _crashed(self, exc: Exception, method: str, path: str, key: ProxyKey | None) -> ProxyResponse:
        """A failure Penny did not foresee (a bug, a record it cannot read): OpenAI's shape, no
        details (they go to the log), never a WSGI server's plain-text 500. Not retried by SDKs:
        it may have come after the call was paid for, and a retry without an Idempotency-Key is
        a new call."""
        self._log.exception("proxy_request_crashed", method=method, path=path, key_id=key.id if key else None,
                            error=exc)
        return ProxyError(500, "Penny failed while handling this request; tell your Penny admin.",
                          type="server_error", code="internal_error", headers={"x-should-retry": "false"}).response()

    def _authenticate(self, request: ProxyRequest) -> ProxyKey:
        scheme, _, secret = request.headers.get("authorization", "").partition(" ")
        key = self.keys.authenticate(secret.strip()) if scheme.lower() == "bearer" else None
        if key is None:
            raise ProxyError(401, "Incorrect or revoked API key. Ask your Penny admin for a key "
                             "(penny keys create).", code="invalid_api_key")
        return key

    def models(self, request: ProxyRequest, key: ProxyKey) -> ProxyResponse:
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "penny"}
                for name in sorted(self.gateway.prices) if key.allows_model(name)]
        return ProxyResponse.json(200, {"object": "list", "data": data})

    def chat_completions(self, request: ProxyRequest, key: ProxyKey) -> ProxyResponse:
        body = _json_body(request, _CHAT_FIELDS)
        model = self._model(body, key, "chat")
        messages = _messages(body.get("messages"))
        max_tokens = _max_tokens(body)
        temperature = _temperature(body.get("temperature"))
        n = body.get("n")
        if n is not None and (n != 1 or isinstance(n, bool)):
            raise _bad("n", "Penny answers with one choice: n must be 1.")
        _refuse_unsupported(body)
        stream, include_usage = _stream_options(body)
        source = self._source(key)
        directives = _cache_directives(request)
        use_cache = not directives & {"no-cache", "no-store"}
        store_answer = "no-store" not in directives
        request_id, use = self._request_id(request, key, "chat")
        if stream:
            def call(answer_stream: QueuedStream) -> ChatResult:
                with self._answering(use, key):
                    return self.gateway.chat(
                        user_id=key.user_id, workspace_id=key.workspace_id, request_id=request_id,
                        messages=messages, model=model, max_tokens=max_tokens, temperature=temperature,
                        context=self._cache_context(key), use_cache=use_cache, stream=answer_stream, source=source,
                        store_answer=store_answer)

            with self._refusals(key):
                try:
                    events = run_streamed(call, self.streams)
                except BaseException:  # the call never started: nothing was asked, the key is free
                    self._give_up(use, key)
                    raise
                return self._streamed(events, model, request_id, include_usage, use_cache)
        with self._refusals(key), self._answering(use, key):
            result = self.gateway.chat(user_id=key.user_id, workspace_id=key.workspace_id, request_id=request_id,
                                       messages=messages, model=model, max_tokens=max_tokens,
                                       temperature=temperature, context=self._cache_context(key),
                                       use_cache=use_cache, source=source, store_answer=store_answer)
        return ProxyResponse.json(200, _completion(result, self._clock()), _penny_headers(result))

    def _streamed(self, events: StreamEvents, model: str, request_id: str, include_usage: bool,
                  use_cache: bool) -> ProxyResponse:
        """The event stream once the call has written text or finished; a refusal before any text
        is an ordinary error response."""
        headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "x-penny-request-id": request_id}
        if events.done is not None:
            if events.done.error is not None:
                raise events.done.error  # mapped by the caller's _refusals, as a call not streamed
            assert events.done.result is not None
            headers.update(_penny_headers(events.done.result))
        else:  # text is streaming: a miss (or a bypass); what it costs comes in the usage chunk
            headers["x-penny-cache"] = "miss" if use_cache else "bypass"

        def error_event(exc: BaseException) -> dict[str, Any]:
            mapped = _map_error(exc, self._clock()) or ProxyError(500, "Penny failed while answering.",
                                                                  type="server_error")
            return mapped.body()

        def restarted_event(result: ChatResult) -> dict[str, Any]:
            # Settled at its cost like any answer; a retry under the same Idempotency-Key replays it
            # (the answer is recorded), one without a key is a new request.
            refusal = ProxyError(500, "The answer was interrupted and started again with other text, so it cannot "
                                 "be continued. It was paid for (penny.cost_micros): a retry under the same "
                                 "Idempotency-Key gets it whole at no second charge.", type="server_error",
                                 code="stream_restarted")
            refusal.charged(result.charged_micros)
            return refusal.body()

        chunks = sse_chunks(events, model=model, request_id=request_id, created=int(self._clock()),
                            include_usage=include_usage, error_event=error_event, restarted_event=restarted_event)
        return ProxyResponse(200, b"", headers, stream=chunks)

    def embeddings(self, request: ProxyRequest, key: ProxyKey) -> ProxyResponse:
        body = _json_body(request, _EMBEDDING_FIELDS)
        model = self._model(body, key, "embedding")
        raw = body.get("input")
        inputs = [raw] if isinstance(raw, str) else raw
        if not isinstance(inputs, list) or not inputs or not all(isinstance(i, str) and i for i in inputs):
            raise _bad("input", "input must be a non-empty string or a non-empty list of non-empty strings.")
        if len(inputs) > MAX_EMBEDDING_INPUTS:  # OpenAI's own limit: every provider-bound batch fits it
            raise _bad("input", f"input holds {len(inputs):,} strings; at most {MAX_EMBEDDING_INPUTS:,} per request.")
        dimensions = body.get("dimensions")
        if dimensions is not None and (not isinstance(dimensions, int) or isinstance(dimensions, bool)
                                       or dimensions < 1):
            raise _bad("dimensions", "dimensions must be a positive integer.")
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):  # the openai SDK asks for base64 unless told otherwise
            raise _bad("encoding_format", "encoding_format must be float or base64.")
        for i, text in enumerate(inputs):
            _unicode(text, "input" if isinstance(raw, str) else f"input[{i}]")
        source = self._source(key)
        request_id, use = self._request_id(request, key, "embeddings")
        with self._refusals(key), self._answering(use, key):
            result = self.gateway.embed(user_id=key.user_id, workspace_id=key.workspace_id, request_id=request_id,
                                        inputs=inputs, model=model, dimensions=dimensions, source=source)
        return ProxyResponse.json(200, _embedding_list(result, base64_vectors=encoding == "base64"),
                                  _penny_headers(result))

    # -- steps ------------------------------------------------------------------------------------

    def _model(self, body: Mapping[str, Any], key: ProxyKey, kind: str) -> str:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise _bad("model", "model is required.")
        price = self.gateway.prices.get(model)
        if price is None or price.kind != kind:
            raise ProxyError(400, f"Penny has no {kind} price for model {model!r}; GET /v1/models lists them.",
                             param="model", code="model_not_found")
        if not key.allows_model(model):
            raise ProxyError(403, f"This key may not call {model!r}; it may call {', '.join(key.models)}.",
                             param="model", code="model_not_allowed")
        return model

    def _source(self, key: ProxyKey) -> CallSource:
        """The key as the call's source: its ID in the ledger, its daily budget reserved on by the
        gateway (a budget line of its own). A budget of $0 admits nothing, so it is refused here:
        to the gateway a line of 0 has no cap."""
        if key.daily_budget_micros == 0:
            now = self._clock()
            resets_at = (math.floor(now / 86400) + 1) * 86400.0
            raise _budget_refusal(BudgetExceeded(f"{key.id} daily", 0, 0, resets_at), now)
        return CallSource(key.id, daily_budget_micros=key.daily_budget_micros or 0)

    def _request_id(self, request: ProxyRequest, key: ProxyKey, endpoint: str) -> tuple[str, _KeyUse | None]:
        """The gateway's request ID: the client's ``Idempotency-Key``, else a fresh one; and, under
        a client's key, the claim on it (see :meth:`_answering`).

        A key's ID is scoped to the key (one key can never read another's results) and to the
        endpoint, and carries a digest of the body: a client that sends another request under a
        key it used before gets that request answered, never the first one's answer. As the IETF
        Idempotency-Key draft says, another body under the key is refused: 409 while the key's
        first request is in flight, 422 once it was answered (:data:`IDEMPOTENCY_RECORD`, claimed
        atomically by the first request, kept as long as results are once answered; a refused or
        failed request leaves the key free: it has no answer to replay, and what its attempts cost
        the provider, if anything, is charged under IDs of their own). The same body again waits for
        the first request (:meth:`_claim_key`): answered, the gateway replays its answer."""
        idempotency_key = request.headers.get("idempotency-key", "").strip()
        if len(idempotency_key) > 200:
            raise ProxyError(400, "Idempotency-Key is over 200 characters.", param="Idempotency-Key")
        if not idempotency_key:
            return f"proxy:{key.id}:{endpoint}:{uuid.uuid4().hex}", None
        digest = hashlib.sha256(request.body).hexdigest()[:32]
        scoped = f"{key.id}:{endpoint}:{idempotency_key}"
        request_id = f"proxy:{scoped}:{digest}"
        held = self._claim_key(scoped, digest, request_id)
        return request_id, _KeyUse(scoped, digest, owner=held is None)

    def _claim_key(self, scoped: str, digest: str, request_id: str) -> str | None:
        """Claim the client's key for this body: None once claimed, else the key's record naming
        this body answered (the gateway replays it). While this body is in flight under the key,
        wait (up to ``inflight_wait_s``) and try again: when the first request fails it gives up
        the key, and a waiting retry must claim it before it runs, or another body could claim it
        meanwhile and both be answered and billed under one key (the later answer's record hiding
        the other's). Another body in flight or answered is refused (:func:`_key_refusal`)."""
        waited, delay = 0.0, 0.05
        while True:
            try:
                # Held as long as the request can run: waiting for a concurrent asker of the same
                # question (at most a claim's TTL), then its own call (another); a worker that dies
                # leaves the key refused (409) that long.
                held = self.gateway.store.record_add(IDEMPOTENCY_RECORD, scoped, _BUSY + digest,
                                                     2 * self.gateway.claim_ttl_s)
            except StoreError as exc:
                raise _map_error(exc, self._clock()) or exc from exc
            if held is None or held == digest:
                return held
            refusal = _key_refusal(held, digest)
            if refusal is not None:
                raise refusal
            if waited >= self.gateway.settings.inflight_wait_s:
                raise _map_error(RequestInFlight(request_id), self._clock()) or RequestInFlight(request_id)
            self.gateway.sleep(delay)
            waited += delay
            delay = min(delay * 2, 1.0)

    @contextmanager
    def _answering(self, use: _KeyUse | None, key: ProxyKey) -> Iterator[None]:
        """The call under a client's ``Idempotency-Key``: once answered, the key is kept as used
        for this body (422 for any other); refused or failed (with no answer to replay: attempts the
        provider took are charged under IDs of their own), the claim is given up, leaving the key
        free for a corrected body."""
        try:
            yield
        except BaseException:
            self._give_up(use, key)
            raise
        if use is None:
            return
        try:
            self.gateway.store.record_put(IDEMPOTENCY_RECORD, use.scoped, use.digest,
                                          self.gateway.settings.idempotency_ttl_s)
        except StoreError as exc:  # the answer is paid for and goes out; only the 409/422 check is lost
            self._log.warning("proxy_idempotency_record_failed", key_id=key.id, error=str(exc))

    def _give_up(self, use: _KeyUse | None, key: ProxyKey) -> None:
        """Free the client's key of this request's claim (only its own: never an answered one's)."""
        if use is None or not use.owner:
            return
        try:
            self.gateway.store.record_drop(IDEMPOTENCY_RECORD, use.scoped, _BUSY + use.digest)
        except StoreError as exc:  # the claim lapses on its own (twice the gateway's claim TTL)
            self._log.warning("proxy_idempotency_release_failed", key_id=key.id, error=str(exc))

    @contextmanager
    def _refusals(self, key: ProxyKey) -> Iterator[None]:
        """The gateway's refusals as OpenAI-shaped errors; a rate limit also says the user's limit
        (``x-ratelimit-limit-requests`` / ``-tokens``, per minute, as OpenAI sends them)."""
        try:
            yield
        except Exception as exc:
            mapped = _map_error(exc, self._clock())
            if mapped is None:
                raise
            if isinstance(exc, RateLimited):
                limits = self.gateway.settings.limits_for(key.user_id)
                for kind, per_minute in (("requests", limits.requests_per_minute),
                                         ("tokens", limits.tokens_per_minute)):
                    if per_minute > 0:  # 0: no such limit
                        mapped.headers[f"x-ratelimit-limit-{kind}"] = str(int(per_minute))
            if isinstance(exc, UpstreamError | StoreError):
                self._log.warning("proxy_call_failed", key_id=key.id, error=str(exc))  # the details stay here
            raise mapped from exc

    def _cache_context(self, key: ProxyKey) -> str:
        return f"proxy:user:{key.user_id}" if self.cache_scope == "user" else "proxy"


_ROUTES: dict[str, tuple[str, str]] = {
    "/v1/models": ("GET", "models"),
    "/v1/chat/completions": ("POST", "chat_completions"),
    "/v1/embeddings": ("POST", "embeddings"),
}


def _key_refusal(held: str, digest: str) -> ProxyError | None:
    """Why a request whose body has ``digest`` may not run under a key whose record is ``held``
    (None: the same body, which the gateway replays or shares)."""
    if held in (digest, _BUSY + digest):
        return None
    if held.startswith(_BUSY):
        return ProxyError(409, "A request with another body under this Idempotency-Key is still being answered; "
                          "use a new key for a new request.", param="Idempotency-Key",
                          code="idempotency_key_in_use", headers={"Retry-After": "1"})
    return ProxyError(422, "This Idempotency-Key was used for a different request body; use a new key for "
                      "a new request.", param="Idempotency-Key", code="idempotency_key_reused",
                      headers={"x-should-retry": "false"})


def _content_length(environ: WSGIEnvironment) -> int:
    raw = environ.get("CONTENT_LENGTH") or "0"
    return max(0, int(raw))


def _json_body(request: ProxyRequest, fields: frozenset[str]) -> dict[str, Any]:
    """The body, a JSON object of OpenAI's ``fields`` for the endpoint. A field OpenAI does not know
    (``max_token``, another provider's ``top_k``) is refused, as OpenAI refuses it: dropped, a
    misspelt cap would leave the answer uncapped."""
    try:
        body = json.loads(request.body)
    except (ValueError, UnicodeDecodeError):
        raise ProxyError(400, "The request body is not valid JSON.", code="invalid_json") from None
    except RecursionError:
        raise ProxyError(400, "The request body is nested too deeply.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ProxyError(400, "The request body must be a JSON object.", code="invalid_json")
    unknown = next((name for name in body if name not in fields), None)
    if unknown is not None:
        name = unknown if len(unknown) <= 64 else unknown[:64] + "…"
        raise ProxyError(400, f"Unrecognized request argument supplied: {name}", param=name, code="unknown_parameter")
    return body


def _messages(raw: object) -> list[dict[str, str]]:
    if not isinstance(raw, list) or not raw:
        raise _bad("messages", "messages must be a non-empty list.")
    messages = []
    for i, message in enumerate(raw):
        role = message.get("role") if isinstance(message, dict) else None
        if not isinstance(role, str) or role not in _ROLES:  # a list or object as the role: unhashable
            raise _bad(f"messages[{i}].role", f"messages[{i}].role must be one of {', '.join(sorted(_ROLES))}.")
        content = message.get("content")
        if isinstance(content, list):  # content parts: Penny passes text on
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise _bad(f"messages[{i}].content", "Penny passes on text content parts only.")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise _bad(f"messages[{i}].content", f"messages[{i}].content must be a string.")
        messages.append({"role": message["role"], "content": _unicode(content, f"messages[{i}].content")})
    return messages


def _unicode(text: str, param: str) -> str:
    """``text``, if it is text the model can be sent: JSON's ``\\ud800`` escapes can make a lone
    surrogate, which no encoding can carry (the call would fail after being paid for, or in the
    cache)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _bad(param, f"{param} is not valid Unicode text (it has a lone surrogate).") from None
    return text


def _chunked(headers: Mapping[str, str]) -> bool:
    return "chunked" in headers.get("transfer-encoding", "").lower()


def _max_tokens(body: Mapping[str, Any]) -> int | None:
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_TOKENS_CAP:
            raise _bad(name, f"{name} must be a whole number from 1 to {MAX_TOKENS_CAP}.")
        return value
    return None


def _temperature(value: object) -> float | None:
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 2:
        raise _bad("temperature", "temperature must be a number from 0 to 2.")
    return float(value)


# The fields of OpenAI's requests: every one is either passed on, refused unless it changes
# nothing, or accepted and ignored. Those of the installed openai SDK's request types are added, so
# a field OpenAI adds after this list was written is accepted (and ignored) once the SDK has it,
# not refused as a typo.
_CHAT_FIELDS: Final = frozenset({
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "n", "stream", "stream_options",
    "tools", "tool_choice", "functions", "function_call", "parallel_tool_calls", "response_format", "modalities",
    "audio", "prediction", "logprobs", "top_logprobs", "logit_bias", "stop", "top_p", "presence_penalty",
    "frequency_penalty", "reasoning_effort", "verbosity", "web_search_options", "service_tier", "seed", "user",
    "store", "metadata", "safety_identifier", "prompt_cache_key", "prompt_cache_retention", "prompt_cache_options",
    "moderation",
}) | openai_request_fields("chat")
_EMBEDDING_FIELDS: Final = (frozenset({"model", "input", "dimensions", "encoding_format", "user"})
                             | openai_request_fields("embeddings"))

# What the gateway does not pass on: a client relying on one would get a plain text answer, not
# the tool call, JSON or log-probabilities it asked for, so it is told instead.
_UNSUPPORTED = ("tools", "tool_choice", "functions", "function_call", "logprobs", "top_logprobs", "audio",
                "prediction", "stop", "logit_bias")
# Not passed on either, and asked for by any value but null: web_search_options {} is a search.
_NEVER_WITHOUT = ("web_search_options", "reasoning_effort", "verbosity")
# Sampling settings the gateway does not pass on either, accepted at the value that changes nothing.
_DEFAULTS = {"top_p": 1, "presence_penalty": 0, "frequency_penalty": 0}


def _refuse_unsupported(body: Mapping[str, Any]) -> None:
    for name in _UNSUPPORTED:
        if body.get(name) not in (None, False, [], {}, ""):
            raise _bad(name, f"Penny does not pass {name} on to the model; leave it out.")
    for name, default in _DEFAULTS.items():
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or value != default):
            raise _bad(name, f"Penny does not pass {name} on to the model; leave it out (or {default}).")
    response_format = body.get("response_format")
    if response_format is not None and response_format != {"type": "text"}:
        raise _bad("response_format", "Penny answers in text only: response_format must be {\"type\": \"text\"}.")
    for name in _NEVER_WITHOUT:
        if body.get(name) is not None:
            raise _bad(name, f"Penny does not pass {name} on to the model; leave it out.")
    modalities = body.get("modalities")
    if modalities is not None and modalities != ["text"]:
        raise _bad("modalities", "Penny answers in text only: modalities must be [\"text\"].")


def _stream_options(body: Mapping[str, Any]) -> tuple[bool, bool]:
    """``stream`` and ``stream_options.include_usage``."""
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _bad("stream", "stream must be true or false.")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or not isinstance(options.get("include_usage") or False, bool):
        raise _bad("stream_options", "stream_options must be an object like {\"include_usage\": true}.")
    if options and not stream:
        raise _bad("stream_options", "stream_options is only allowed with stream: true.")
    return stream, bool(options.get("include_usage"))


def _cache_directives(request: ProxyRequest) -> set[str]:
    """``Cache-Control``'s directives, lower-case: ``no-cache`` asks upstream afresh (and caches the
    fresh answer), ``no-store`` also keeps the answer out of the cache. Without ``Cache-Control``,
    HTTP/1.0's ``Pragma: no-cache`` means ``no-cache`` (RFC 9111, 5.4)."""
    control = request.headers.get("cache-control")
    if control is None:
        pragma = {d.strip().lower() for d in request.headers.get("pragma", "").split(",")}
        return pragma & {"no-cache"}
    return {d.strip().lower() for d in control.split(",")}


def _usd(micros: int) -> str:
    return format(Decimal(micros) / 1_000_000, "f")


def _penny_headers(result: ChatResult | EmbeddingResult) -> dict[str, str]:
    if isinstance(result, ChatResult):
        cache = {"exact": "hit", "semantic": "hit"}.get(result.cache_status, result.cache_status)
        saved, cost = result.saved_micros, result.charged_micros  # its question's embedding included
    else:
        cache, saved, cost = "bypass", 0, result.cost_micros
    return {"x-penny-cache": cache, "x-penny-cost-usd": _usd(cost), "x-penny-saved-usd": _usd(saved),
            "x-penny-request-id": result.request_id, "x-penny-replayed": "true" if result.replayed else "false"}


def _completion(result: ChatResult, now: float) -> dict[str, Any]:
    return {
        "id": "chatcmpl-" + uuid.uuid5(uuid.NAMESPACE_URL, result.request_id).hex,
        "object": "chat.completion",
        "created": int(now),
        "model": result.model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": result.content, "refusal": None},
                     "finish_reason": result.finish_reason or "stop", "logprobs": None}],
        "usage": {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
                  "total_tokens": result.prompt_tokens + result.completion_tokens,
                  "prompt_tokens_details": {"cached_tokens": result.cached_prompt_tokens}},
    }


def _embedding_list(result: EmbeddingResult, *, base64_vectors: bool = False) -> dict[str, Any]:
    """OpenAI's embedding list; ``base64_vectors``: each vector as base64 of its little-endian
    float32s (``encoding_format: "base64"``, what the openai SDK asks for and decodes)."""
    def encoded(vector: list[float]) -> list[float] | str:
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii") if base64_vectors else vector

    data = [{"object": "embedding", "index": i, "embedding": encoded(v)} for i, v in enumerate(result.vectors)]
    return {"object": "list", "model": result.model, "data": data,
            "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens}}


def _retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))


def _budget_refusal(exc: BudgetExceeded, now: float) -> ProxyError:
    reset = datetime.fromtimestamp(exc.resets_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if exc.never_fits:  # no reset makes room: the request itself must change (the answer's length, mostly)
        return ProxyError(429, f"{exc} Lower max_tokens or shorten the prompt, or ask your Penny admin for a "
                          "larger budget.", type="insufficient_quota", code="insufficient_quota",
                          headers={"x-penny-budget-resets-at": reset, "x-should-retry": "false"})
    return ProxyError(429, f"{exc} The budget resets at {reset}.", type="insufficient_quota",
                      code="insufficient_quota",
                      headers={"Retry-After": _retry_after(exc.resets_at - now), "x-penny-budget-resets-at": reset,
                               "x-should-retry": "false"})  # not before the reset: SDKs must not retry it


def _map_error(exc: BaseException, now: float) -> ProxyError | None:
    """The one place the proxy maps proxy_core's error tree to HTTP; None: not a refusal. A failed
    call charged all the same (attempts the provider took and did not finish: it bills them) says
    what it cost."""
    mapped = _refusal_for(exc, now)
    if mapped is not None and isinstance(exc, PennyError) and exc.charged_micros:
        mapped.charged(exc.charged_micros)
    return mapped


def _refusal_for(exc: BaseException, now: float) -> ProxyError | None:
    if isinstance(exc, RateLimited):
        wait = _retry_after(exc.retry_after)
        kind = "tokens" if exc.limit == "tokens" else "requests"
        return ProxyError(429, str(exc), type="requests", code="rate_limit_exceeded",
                          headers={"Retry-After": wait, f"x-ratelimit-reset-{kind}": f"{wait}s",
                                   f"x-ratelimit-remaining-{kind}": "0"})
    if isinstance(exc, BudgetExceeded):
        return _budget_refusal(exc, now)
    if isinstance(exc, CircuitOpen):
        return ProxyError(503, str(exc), type="server_error", code="upstream_unavailable",
                          headers={"Retry-After": _retry_after(exc.retry_after)})
    # The same Idempotency-Key can never succeed after these: SDKs must not retry them.
    if isinstance(exc, RequestAnswered):
        return ProxyError(409, str(exc), code="request_already_answered", headers={"x-should-retry": "false"})
    if isinstance(exc, RequestInterrupted):
        return ProxyError(409, str(exc), code="request_interrupted", headers={"x-should-retry": "false"})
    if isinstance(exc, RequestInFlight):
        return ProxyError(409, str(exc), code="request_in_flight", headers={"Retry-After": "1"})
    # Upstream's failures are Penny's own, not the client's: said without Penny's settings or URLs
    # (the proxy logs those), and a refusal of Penny's own key or account never as the client's 401/403/429.
    if isinstance(exc, UpstreamRejected) and exc.status in (401, 403):
        return ProxyError(502, "The model provider refused Penny's own credentials; tell your Penny admin.",
                          type="server_error", code="upstream_auth_failed", headers={"x-should-retry": "false"})
    if isinstance(exc, UpstreamRejected) and exc.status == 429:
        return ProxyError(503, "The model provider account behind Penny is out of credit; tell your Penny admin.",
                          type="server_error", code="upstream_quota_exhausted", headers={"x-should-retry": "false"})
    if isinstance(exc, UpstreamRejected) and exc.status == 404:
        return ProxyError(404, "The model provider does not know this model; GET /v1/models lists Penny's.",
                          param="model", code="model_not_found")
    if isinstance(exc, UpstreamRejected):  # the request itself (too long for the model, …): the provider's words
        return ProxyError(exc.status or 400, str(exc), code="upstream_rejected")
    if isinstance(exc, UpstreamError):
        return ProxyError(503, "The model provider did not answer; try again shortly.", type="server_error",
                          code="upstream_error", headers={"Retry-After": _retry_after(exc.retry_after or 1)})
    if isinstance(exc, StoreError):
        return ProxyError(503, "Penny's store is unavailable; try again shortly.", type="server_error",
                          code="store_unavailable", headers={"Retry-After": "1"})
    return None
