"""One attempt at the OpenAI API, with every failure translated once into Penny's error tree.

The SDK's own retries are off (``max_retries=0``): :mod:`proxy_core.retry` decides whether to try
again, so each method here makes exactly one HTTP request. Failures map as follows::

    400/401/403/404/422          -> UpstreamRejected (never retried; the message says what to fix:
                                    a 404 from a base URL not ending in /v1 says to try /v1)
    429 insufficient_quota       -> UpstreamRejected (out of credit: retrying cannot help)
    any other status             -> UpstreamError(kind="status", status, retry_after)
    openai.APITimeoutError       -> UpstreamError(kind="timeout")
    openai.APIConnectionError    -> UpstreamError(kind="connection")
    unreadable / incomplete 200  -> UpstreamError(kind="malformed")   (missing usage included:
                                                                         we could not bill it)

A streamed chat completion (:meth:`OpenAIUpstream.chat_stream`) fails the same way before its first
byte; once the answer is flowing, a broken stream (dropped connection, unreadable chunk, an error
event) is ``UpstreamError(kind="connection")`` (``"timeout"`` when it stalled past the timeout), and
a stream that ends without its usage chunk is ``malformed``, like a 200 without ``usage``.

Whether the provider had **accepted** the attempt (``UpstreamError.accepted``: it bills it) is
decided here, and only here, from what the HTTP exchange got to: True once a 200 began (a stream
that broke off, a body Penny could not use) or once the whole request was sent and no answer came
(a read timeout, a connection dropped after the request went out); False for a status answer and
for a request never wholly sent (refused, unresolvable, a connect or write timeout).

A plain chat completion goes out on a kept-alive ``http.client`` connection per thread
(:mod:`proxy_core._json_http`) with the headers the SDK would send: the SDK's own per-request work
cost as much CPU as the rest of a cache miss. An injected client, a route through an HTTP(S) proxy,
streaming and embeddings use the SDK. Both paths fail the same way (the table above).

``retry_after`` comes from ``retry-after-ms`` (milliseconds) or ``Retry-After`` (seconds or an HTTP
date). Messages are meant for a Slack user or an operator and never contain the API key; a failed
connection names the URL tried.
"""

from __future__ import annotations

import http.client
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import openai
from openai.types import CreateEmbeddingResponse, embedding_create_params
from openai.types.chat import completion_create_params

from proxy_core._json_http import KEEPALIVE_S, JSONPoster, JSONStatus, Unanswered, direct_route
from proxy_core.clock import Clock, monotonic, wall
from proxy_core.errors import ConfigurationError, UpstreamError, UpstreamRejected

__all__ = ["ChatResponse", "EmbedResponse", "OpenAIUpstream", "openai_request_fields", "parse_retry_after"]

REJECTED_STATUSES = frozenset({400, 401, 403, 404, 422})


def openai_request_fields(endpoint: Literal["chat", "embeddings"]) -> frozenset[str]:
    """The request fields of OpenAI's chat completions or embeddings, as the installed openai SDK
    knows them (its request types); ``stream`` is the SDK's own argument, not a field of the type."""
    params: Any = (completion_create_params.CompletionCreateParamsBase if endpoint == "chat"
                   else embedding_create_params.EmbeddingCreateParams)
    fields = frozenset(params.__required_keys__ | params.__optional_keys__)
    return fields | {"stream"} if endpoint == "chat" else fields

# Provider messages can quote (masked) keys; never pass anything key-shaped on.
_KEY_LIKE = re.compile(r"\b(?:sk|rk|pk|sess)-[A-Za-z0-9_\-*.]{4,}")
_MAX_DETAIL = 300
_CHAT_PATH = "/chat/completions"
_EMBEDDINGS_PATH = "/embeddings"


@dataclass(frozen=True, slots=True)
class ChatResponse:
    content: str
    model: str  # as returned, e.g. a dated snapshot such as "gpt-4o-mini-2024-07-18"
    prompt_tokens: int
    cached_prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None


@dataclass(frozen=True, slots=True)
class EmbedResponse:
    vectors: list[list[float]]  # in input order
    model: str
    prompt_tokens: int


class _Malformed(Exception):
    """A 200 response we cannot use; carries a short reason."""


@dataclass(frozen=True, slots=True)
class _Status:
    """A non-2xx answer, whichever client received it: ``body`` is the provider's error object
    (the ``error`` member of an OpenAI error body), ``code`` and ``type`` its fields."""

    status: int
    body: object
    headers: Mapping[str, str]
    code: str | None
    type: str | None

    @classmethod
    def of_sdk(cls, exc: openai.APIStatusError) -> _Status:
        return cls(exc.status_code, exc.body, exc.response.headers, exc.code, exc.type)

    @classmethod
    def of_poster(cls, exc: JSONStatus) -> _Status:
        body = exc.body.get("error", exc.body) if isinstance(exc.body, dict) else exc.body
        fields = body if isinstance(body, dict) else {}
        code, kind = fields.get("code"), fields.get("type")
        return cls(exc.status, body, exc.headers, None if code is None else str(code),
                   kind if isinstance(kind, str) else None)


def parse_retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """The provider's wait hint in seconds: ``retry-after-ms``, else ``Retry-After`` (seconds or date).

    ``now`` is wall time, used for the HTTP-date form. Returns None when there is no usable hint.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    millis = _finite_non_negative(lowered.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000.0
    raw = lowered.get("retry-after")
    if raw is None:
        return None
    seconds = _finite_non_negative(raw)
    if seconds is not None:
        return seconds
    try:
        when = parsedate_to_datetime(raw.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000" or no zone: RFC 9110 dates are GMT
        from datetime import UTC

        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def _finite_non_negative(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _sdk_http_client() -> openai.DefaultHttpxClient:
    """The SDK's own HTTP client (streams and embeddings go through it), its idle connections
    expired as the lean poster's are (``KEEPALIVE_S``, under the common 5 s server keep-alive): its
    default, 5 s, lets a request cross a server's idle close on the wire, fail unanswered, and be
    charged for a prompt the provider never saw."""
    defaults = openai.DEFAULT_CONNECTION_LIMITS
    limits = type(defaults)(max_connections=defaults.max_connections,
                            max_keepalive_connections=defaults.max_keepalive_connections,
                            keepalive_expiry=KEEPALIVE_S)
    return openai.DefaultHttpxClient(limits=limits)


class OpenAIUpstream:
    """The OpenAI API, one HTTP attempt per call. Thread-safe (the SDK client is)."""

    def __init__(
        self,
        *,
        api_key: str | None,
        base_url: str | None,
        timeout_s: float,
        client: openai.OpenAI | None = None,
        wall_clock: Clock = wall,
        clock: Clock = monotonic,
    ) -> None:
        """``clock`` (monotonic) times how long the plain chat's kept-alive connections sit idle."""
        self._timeout_s = timeout_s
        self._wall_clock = wall_clock
        self._poster: JSONPoster | None = None
        if client is not None:
            self._client = client
            self._secrets = tuple(s for s in (api_key, client.api_key) if s)
        else:
            self._secrets = tuple(s for s in (api_key,) if s)
            if not api_key or not api_key.strip():
                raise ConfigurationError(
                    "OPENAI_API_KEY is not set: Penny needs an OpenAI API key to answer questions."
                )
            try:
                self._client = openai.OpenAI(api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout_s,
                                             http_client=_sdk_http_client())
            except openai.OpenAIError as exc:
                raise ConfigurationError(f"Could not set up the OpenAI client ({type(exc).__name__}).") from exc
            if direct_route(str(self._client.base_url)):
                headers = {k: v for k, v in {**self._client.default_headers, **self._client.auth_headers}.items()
                           if isinstance(v, str)}
                headers["X-Stainless-Retry-Count"] = "0"
                self._poster = JSONPoster(str(self._client.base_url), headers=headers, timeout_s=timeout_s,
                                          clock=clock)
        # Where the calls go, for messages that must say what was tried (never with a password in it).
        self._base_url = _shown_url(str(self._client.base_url)).rstrip("/")
        self._base_url_set = base_url is not None
        self._where = (f"OPENAI_BASE_URL={self._base_url}" if base_url is not None
                       else f"the LLM provider at {self._base_url}")

    def close(self) -> None:
        if self._poster is not None:
            self._poster.close()
        self._client.close()

    def chat(
        self,
        *,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        max_tokens: int,
        temperature: float | None = None,
        extra: dict[str, Any] | None = None,
    ) -> ChatResponse:
        """One chat completion. ``max_tokens`` is sent as ``max_completion_tokens``."""
        body = _chat_body(model, messages, max_tokens, temperature, extra, stream=False)
        completion = self._post(body, model) if self._poster is not None else self._sdk_post(body, model)
        try:
            return _chat_response(completion)
        except _Malformed as exc:
            raise self._malformed(exc, model) from exc

    def _post(self, body: dict[str, Any], model: str) -> object:
        """The chat completion's decoded JSON, over the kept-alive connection."""
        assert self._poster is not None
        try:
            return self._poster.post(_CHAT_PATH, body)
        except JSONStatus as exc:
            raise self._status_error(_Status.of_poster(exc), model, _CHAT_PATH) from exc
        except Unanswered as exc:  # sent whole: the provider has it, unless it had begun a refusal
            accepted = exc.status is None or 200 <= exc.status < 300
            if isinstance(exc.__cause__, TimeoutError):
                raise self._timeout(accepted=accepted) from exc
            raise self._unreachable(self._base_url + _CHAT_PATH, _failure_reason(exc.__cause__),
                                    accepted=accepted) from exc
        except TimeoutError as exc:
            raise self._timeout() from exc
        except (OSError, http.client.HTTPException) as exc:
            raise self._unreachable(self._base_url + _CHAT_PATH, _failure_reason(exc)) from exc
        except ValueError as exc:  # a 200 whose JSON does not parse
            raise self._malformed(exc, model) from exc

    def _sdk_post(self, body: dict[str, Any], model: str) -> object:
        try:
            return self._client.post(_CHAT_PATH, cast_to=object, body=body)
        except openai.OpenAIError as exc:
            raise self._request_error(exc, model, _CHAT_PATH) from exc
        except ValueError as exc:  # a 200 whose JSON does not parse
            raise self._malformed(exc, model) from exc

    def chat_stream(
        self,
        *,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        max_tokens: int,
        on_delta: Callable[[str], None],
        temperature: float | None = None,
        extra: dict[str, Any] | None = None,
    ) -> ChatResponse:
        """One streamed chat completion: ``on_delta`` gets each piece of the answer's text as it
        arrives; the result is the whole response, usage included (asked for with
        ``stream_options.include_usage``). A failure after text was sent is still one failed attempt:
        the caller decides whether to retry and what to do with the text it already showed."""
        body = _chat_body(model, messages, max_tokens, temperature, extra, stream=True)
        try:
            stream = self._client.post(
                _CHAT_PATH, cast_to=object, body=body, stream=True, stream_cls=openai.Stream[object]
            )
        except openai.OpenAIError as exc:
            raise self._request_error(exc, model, _CHAT_PATH) from exc
        answer = _StreamedAnswer()
        for text in self._texts(stream, answer, model):
            on_delta(text)  # outside the translation: a failing sink is not a failing provider
        try:
            return answer.response()
        except _Malformed as exc:
            error = self._malformed(exc, model)
            error.streamed = answer.text()  # generated all the same: the gateway charges it
            raise error from exc

    def _texts(self, stream: Iterable[object], answer: _StreamedAnswer, model: str) -> Iterator[str]:
        """Feed ``stream``'s chunks into ``answer``, yielding the text each adds; failures translated,
        each carrying the text generated before it (``UpstreamError.streamed``)."""
        try:
            for chunk in stream:
                text = answer.add(chunk)
                if text:
                    yield text
        except openai.APITimeoutError as exc:
            error = self._timeout(accepted=True)  # the 200 had begun: the provider is answering, and bills it
            error.streamed = answer.text()
            raise error from exc
        except (openai.OpenAIError, _Malformed, ValueError) as exc:
            # The connection dropped mid-body, a chunk was unreadable, or the provider sent an error
            # event: the answer broke off, and a new attempt can fix that.
            raise UpstreamError(
                f"The LLM provider's answer broke off while streaming ({_stream_failure(exc)}).",
                kind="connection", accepted=True, streamed=answer.text(),
            ) from exc
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()

    def embed(self, *, model: str, inputs: list[str], dimensions: int | None = None) -> EmbedResponse:
        """Embed ``inputs`` in one request; vectors come back in input order."""
        kwargs: dict[str, Any] = {}
        if dimensions is not None:
            kwargs["dimensions"] = dimensions
        try:
            raw = self._client.embeddings.with_raw_response.create(model=model, input=inputs, **kwargs)
        except openai.OpenAIError as exc:
            raise self._request_error(exc, model, _EMBEDDINGS_PATH) from exc
        try:
            return _embed_response(raw.parse(), len(inputs), dimensions)
        except (_Malformed, ValueError, openai.OpenAIError) as exc:
            raise self._malformed(exc, model) from exc

    # -- translation -------------------------------------------------------------------------

    def _malformed(self, exc: Exception, model: str) -> UpstreamError:
        # Undecodable JSON, bad base64 vectors and schema mismatches all surface while parsing.
        reason = str(exc) if isinstance(exc, _Malformed) else "unreadable body"
        return UpstreamError(
            f"The LLM provider sent a response Penny could not use for {model} ({reason}).",
            kind="malformed", accepted=True,  # a 200: the provider ran the call, and bills it
        )

    def _request_error(self, exc: openai.OpenAIError, model: str, path: str) -> UpstreamError:
        """The Penny error for an SDK failure while sending the request (to ``path`` under the base
        URL) or receiving the answer."""
        if isinstance(exc, openai.APIStatusError):
            return self._status_error(_Status.of_sdk(exc), model, path)
        if isinstance(exc, openai.APITimeoutError):
            return self._timeout(accepted=_sent_unanswered(exc))
        if isinstance(exc, openai.APIConnectionError):
            return self._unreachable(str(exc.request.url), _connection_failure(exc), accepted=_sent_unanswered(exc))
        if isinstance(exc, openai.APIResponseValidationError):
            return self._malformed(exc, model)
        return UpstreamRejected(
            f"The OpenAI client refused the request ({type(exc).__name__}); check Penny's OpenAI settings."
        )

    def _timeout(self, *, accepted: bool = False) -> UpstreamError:
        return UpstreamError(
            f"The LLM provider did not answer within {self._timeout_s:g}s ({self._where}).", kind="timeout",
            accepted=accepted,
        )

    def _unreachable(self, url: str, reason: str, *, accepted: bool = False) -> UpstreamError:
        if accepted:  # it was reached: the request went out whole, the answer never came back
            return UpstreamError(f"{self._where[0].upper()}{self._where[1:]} took the request and the connection "
                                 f"dropped before its answer (tried {_shown_url(url)}: {reason}).",
                                 kind="connection", accepted=True)
        fix = ("check that the server is running and the URL is right" if self._base_url_set
               else "check this host's network, or set OPENAI_BASE_URL")
        return UpstreamError(f"Could not reach {self._where} (tried {_shown_url(url)}: {reason}); {fix}.",
                             kind="connection")

    def _status_error(self, exc: _Status, model: str, path: str) -> UpstreamError:
        status = exc.status
        detail = self._provider_detail(exc.body)
        suffix = f": {detail}" if detail else "."
        if status in REJECTED_STATUSES:
            if status == 401:
                message = "The LLM provider rejected Penny's API key (HTTP 401); check OPENAI_API_KEY."
            elif status == 403:
                message = (
                    "The LLM provider refused access (HTTP 403); check that OPENAI_API_KEY's "
                    f"project may use {model}."
                )
            elif status == 404:
                message = self._not_found(exc, model, path, detail, suffix)
            else:
                message = f"The LLM provider rejected the request (HTTP {status}){suffix}"
            return UpstreamRejected(message, kind="status", status=status)
        if status == 429 and "insufficient_quota" in (exc.code, exc.type):
            # Out of credit: retrying cannot help until someone pays, so do not retry.
            return UpstreamRejected(
                "The OpenAI account behind OPENAI_API_KEY is out of credit or over its quota "
                "(HTTP 429 insufficient_quota); check the account's billing.",
                kind="status",
                status=429,
            )
        retry_after = parse_retry_after(exc.headers, self._wall_clock())
        if status == 429:
            message = f"The LLM provider is rate-limiting Penny (HTTP 429){suffix}"
        elif status >= 500:
            message = f"The LLM provider is having trouble (HTTP {status})."
        else:
            message = f"The LLM provider returned HTTP {status}{suffix}"
        return UpstreamError(message, kind="status", status=status, retry_after=retry_after)

    def _not_found(self, exc: _Status, model: str, path: str, detail: str, suffix: str) -> str:
        """A 404 says the model is unknown, or (from a server that is not OpenAI) that the URL is:
        an OpenAI-compatible server serves under ``/v1``, and one without it answers 404 for every
        route, which once read as "check the model name"."""
        about_model = exc.code in ("model_not_found", "DeploymentNotFound") or (bool(detail) and model in detail)
        if not about_model and not self._base_url.endswith("/v1"):
            return (f"{self._where} answered 404 for {path}; OpenAI-compatible servers usually serve under /v1: "
                    f"try {self._base_url}/v1")
        openai_shaped = isinstance(exc.body, dict) and isinstance(exc.body.get("message"), str)
        if not about_model and not openai_shaped:
            return (f"{self._where} answered 404 for {path}, and not as an OpenAI-compatible API would: check "
                    "that the URL is the API's root (it usually ends in /v1).")
        return f"The LLM provider does not know the model {model!r} (HTTP 404); check the model name{suffix}"

    def _provider_detail(self, body: object) -> str:
        """The provider's own error message, shortened and scrubbed of anything key-like."""
        error = body.get("error", body) if isinstance(body, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        if not isinstance(message, str):
            return ""
        for secret in self._secrets:
            message = message.replace(secret, "[redacted]")
        message = _KEY_LIKE.sub("[redacted]", message).strip()
        if len(message) > _MAX_DETAIL:
            message = message[: _MAX_DETAIL - 1] + "…"
        return message


# -- response extraction ---------------------------------------------------------------------
# Chat completions come back as decoded JSON (``client.post(..., cast_to=object)``), not as the SDK's
# models: building a pydantic model per streamed chunk was most of the bot's CPU under load
# (README, Benchmarks). The SDK still sends the request, raises its status, timeout and connection
# errors and decodes the server-sent events; every field used is checked here.


def _chat_body(
    model: str,
    messages: Sequence[Mapping[str, Any]],
    max_tokens: int,
    temperature: float | None,
    extra: dict[str, Any] | None,
    *,
    stream: bool,
) -> dict[str, Any]:
    """The JSON body of a chat completion request, as the API reference spells it."""
    body: dict[str, Any] = {"model": model, "messages": list(messages), "max_completion_tokens": max_tokens}
    if temperature is not None:
        body["temperature"] = temperature
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    if extra:
        body.update(extra)
    return body


def _chat_response(completion: object) -> ChatResponse:
    if not isinstance(completion, dict):
        raise _Malformed("not a chat completion")
    choices = completion.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise _Malformed("no choices")
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, dict):
        raise _Malformed("no message")
    finish_reason = choice.get("finish_reason")
    if finish_reason is not None and not isinstance(finish_reason, str):
        raise _Malformed("bad finish_reason")
    content = message.get("content")
    if content is None:
        refusal = message.get("refusal")
        if isinstance(refusal, str):
            content = refusal
        elif finish_reason in ("length", "content_filter"):
            content = ""  # the model produced nothing visible, but the call is real and billable
        else:
            raise _Malformed("no content")
    if not isinstance(content, str):
        raise _Malformed("bad content")
    model = completion.get("model")
    if not isinstance(model, str) or not model:
        raise _Malformed("no model")
    prompt_tokens, cached, completion_tokens = _chat_usage(completion.get("usage"))
    return ChatResponse(
        content=content,
        model=model,
        prompt_tokens=prompt_tokens,
        cached_prompt_tokens=cached,
        completion_tokens=completion_tokens,
        finish_reason=finish_reason,
    )


def _chat_usage(usage: object) -> tuple[int, int, int]:
    """(prompt, cached prompt, completion) tokens of a chat completion's ``usage``."""
    if usage is None:
        raise _Malformed("no usage")
    if not isinstance(usage, dict):
        raise _Malformed("bad usage")
    prompt_tokens = _count(usage.get("prompt_tokens"), "prompt_tokens")
    completion_tokens = _count(usage.get("completion_tokens"), "completion_tokens")
    details = usage.get("prompt_tokens_details")
    cached_raw = details.get("cached_tokens") if isinstance(details, dict) else None
    cached = 0 if cached_raw is None else _count(cached_raw, "cached_tokens")
    if cached > prompt_tokens:
        raise _Malformed("cached_tokens exceed prompt_tokens")
    return prompt_tokens, cached, completion_tokens


class _StreamedAnswer:
    """A chat completion put together from its stream's chunks (decoded JSON), checked as strictly
    as :func:`_chat_response` checks a whole one."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._refusal: list[str] = []
        self._saw_content = False
        self._model: str | None = None
        self._finish_reason: str | None = None
        self._usage: object = None

    def add(self, chunk: object) -> str:
        """Take one chunk; the answer text it adds ("" for none)."""
        if not isinstance(chunk, dict):
            raise _Malformed("not a chat completion chunk")
        model = chunk.get("model")
        if isinstance(model, str) and model and self._model is None:
            self._model = model
        usage = chunk.get("usage")
        if usage is not None:
            self._usage = usage
        choices = chunk.get("choices", [])
        if not isinstance(choices, list):
            raise _Malformed("bad choices")
        text = ""
        for choice in choices:
            if not isinstance(choice, dict):
                raise _Malformed("bad choice")
            if choice.get("index", 0) != 0:
                continue  # only the first choice is asked for (n=1)
            finish_reason = choice.get("finish_reason")
            if finish_reason is not None:
                if not isinstance(finish_reason, str):
                    raise _Malformed("bad finish_reason")
                self._finish_reason = finish_reason
            delta = choice.get("delta")
            if delta is None:
                continue
            if not isinstance(delta, dict):
                raise _Malformed("bad delta")
            content = delta.get("content")
            if content is not None:
                if not isinstance(content, str):
                    raise _Malformed("bad content")
                self._saw_content = True
                self._parts.append(content)
                text += content
            refusal = delta.get("refusal")
            if isinstance(refusal, str):
                self._refusal.append(refusal)
        return text

    def text(self) -> str:
        """The answer's text so far."""
        return "".join(self._parts)

    def response(self) -> ChatResponse:
        """The whole response, once the stream has ended."""
        content = "".join(self._parts)
        if not content and self._refusal:
            content = "".join(self._refusal)
        elif not self._saw_content and self._finish_reason not in ("length", "content_filter"):
            raise _Malformed("no content")
        if self._model is None:
            raise _Malformed("no model")
        prompt_tokens, cached, completion_tokens = _chat_usage(self._usage)  # no usage chunk: not billable
        return ChatResponse(
            content=content,
            model=self._model,
            prompt_tokens=prompt_tokens,
            cached_prompt_tokens=cached,
            completion_tokens=completion_tokens,
            finish_reason=self._finish_reason,
        )


def _shown_url(url: str) -> str:
    """``url`` without a user name or password in it."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


# The SDK's HTTP client's failures (httpx's, or httpx2's: the names are the same) that come after the
# request was written whole, while waiting for or reading the answer. A connect, pool or write
# failure did not get the request to the provider.
_AFTER_SENDING = frozenset({"ReadTimeout", "ReadError", "RemoteProtocolError"})


def _sent_unanswered(exc: openai.APIConnectionError) -> bool:
    """Whether the SDK's timeout or connection failure came after the whole request was sent: the
    provider has it (and bills it) though no answer came back. By class name, since the SDK's
    HTTP client is httpx or httpx2 depending on its version."""
    cause = exc.__cause__
    return cause is not None and any(cls.__name__ in _AFTER_SENDING for cls in type(cause).__mro__)


def _connection_failure(exc: openai.APIConnectionError) -> str:
    """A short reason a connection failed ("Connection refused", "Name or service not known")."""
    return _failure_reason(exc.__cause__)


def _failure_reason(cause: BaseException | None) -> str:
    if isinstance(cause, http.client.RemoteDisconnected):  # worded as the SDK's client words it
        return "Server disconnected without sending a response."
    reason = re.sub(r"^\[Errno -?\d+\]\s*", "", str(cause)).strip() if cause is not None else ""
    reason = _KEY_LIKE.sub("[redacted]", reason)
    return reason[:120] or "connection failed"


def _stream_failure(exc: Exception) -> str:
    """A short, key-free reason a stream broke off."""
    if isinstance(exc, openai.APIConnectionError):
        return "connection lost"
    if isinstance(exc, (_Malformed, ValueError)):
        return "unreadable chunk"
    return "the provider reported an error"


def _embed_response(result: object, expected: int, dimensions: int | None) -> EmbedResponse:
    if not isinstance(result, CreateEmbeddingResponse):
        raise _Malformed("not an embedding response")
    data = result.data
    if not isinstance(data, list) or len(data) != expected:
        raise _Malformed("wrong number of embeddings")
    by_index: dict[int, list[float]] = {}
    for position, item in enumerate(data):
        index = getattr(item, "index", position)
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < expected:
            raise _Malformed("bad embedding index")
        vector = _vector(getattr(item, "embedding", None))
        if dimensions is not None and len(vector) != dimensions:
            raise _Malformed("wrong embedding dimensions")
        by_index[index] = vector
    if len(by_index) != expected:
        raise _Malformed("duplicate embedding index")
    model = result.model
    if not isinstance(model, str) or not model:
        raise _Malformed("no model")
    usage = result.usage
    if usage is None:
        raise _Malformed("no usage")
    prompt_tokens = _count(getattr(usage, "prompt_tokens", None), "prompt_tokens")
    return EmbedResponse(
        vectors=[by_index[i] for i in range(expected)], model=model, prompt_tokens=prompt_tokens
    )


def _vector(raw: object) -> list[float]:
    if not isinstance(raw, list) or not raw:
        raise _Malformed("bad embedding")
    values: Iterable[object] = raw
    vector: list[float] = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _Malformed("bad embedding value")
        vector.append(float(value))
    return vector


def _count(raw: object, name: str) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
        raise _Malformed(f"bad {name}")
    return raw
