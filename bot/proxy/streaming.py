"""``stream: true``: a chat completion as OpenAI's server-sent events, written as upstream writes it.

The gateway runs the call on a helper thread and hands its text to :class:`QueuedStream` (an
:class:`~proxy_core.AnswerStream`). The HTTP status waits for the first event: a refusal before any
text is an ordinary error response (429, 503, …); once text has gone out, the status is 200 and the
rest follows as ``chat.completion.chunk`` events, then the usage chunk (``stream_options.include_usage``)
and ``data: [DONE]``. A cache hit never streams: its answer is one chunk.

Upstream dropping mid-answer makes the gateway start the answer again (``restart``). What was
already sent cannot be taken back, so the retry's text is held; when the answer is complete, the
part after what was sent follows if the sent text is its beginning, and otherwise the stream ends
with an error event (the client retries with the same ``Idempotency-Key`` and gets the whole
answer, at no second charge).
"""

from __future__ import annotations

import json
import queue
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from proxy_core import ChatResult

__all__ = ["QueuedStream", "StreamCalls", "StreamEvents", "run_streamed", "sse_chunks"]


@dataclass(frozen=True, slots=True)
class _Delta:
    text: str


@dataclass(frozen=True, slots=True)
class _Restart:
    pass


@dataclass(frozen=True, slots=True)
class _Done:
    result: ChatResult | None
    error: BaseException | None


_Event = _Delta | _Restart | _Done


class QueuedStream:
    """The gateway's :class:`~proxy_core.AnswerStream`, handing each piece to the request's thread."""

    def __init__(self) -> None:
        self.events: queue.Queue[_Event] = queue.Queue()

    def delta(self, text: str) -> None:
        if text:
            self.events.put(_Delta(text))

    def restart(self) -> None:
        self.events.put(_Restart())


@dataclass(frozen=True, slots=True)
class StreamEvents:
    """A streamed call after its first event: ``first`` text (None: the call finished without
    streaming, see ``done``), and the rest of the events."""

    first: str | None
    done: _Done | None
    rest: queue.Queue[_Event]


class StreamCalls:
    """The streamed calls running on helper threads. A call outlives its request when the client
    goes away mid-answer (it is paid for: it is settled and cached all the same), so a stopping
    worker waits for them (:meth:`wait`) before it closes the gateway: gunicorn, which counts
    connections, no longer waits for one whose client is gone."""

    def __init__(self) -> None:
        self._running = 0
        self._changed = threading.Condition()

    def start(self, run: Callable[[], None]) -> None:
        def counted() -> None:
            try:
                run()
            finally:
                with self._changed:
                    self._running -= 1
                    self._changed.notify_all()

        with self._changed:
            self._running += 1
        try:
            threading.Thread(target=counted, name="penny-proxy-stream", daemon=True).start()
        except BaseException:
            with self._changed:
                self._running -= 1
            raise

    def running(self) -> int:
        return self._running

    def wait(self, timeout_s: float) -> int:
        """Wait until none runs, at most ``timeout_s``; how many still run."""
        with self._changed:
            self._changed.wait_for(lambda: self._running == 0, timeout=timeout_s)
            return self._running


def run_streamed(call: Callable[[QueuedStream], ChatResult], calls: StreamCalls) -> StreamEvents:
    """Start ``call`` on a helper thread (counted in ``calls``); return once it has written text or
    finished."""
    stream = QueuedStream()

    def run() -> None:
        try:
            stream.events.put(_Done(call(stream), None))
        except BaseException as exc:  # handed to the request's thread, which maps or re-raises it
            stream.events.put(_Done(None, exc))

    calls.start(run)
    while True:
        event = stream.events.get()
        if isinstance(event, _Delta):
            return StreamEvents(event.text, None, stream.events)
        if isinstance(event, _Done):
            return StreamEvents(None, event, stream.events)
        # a restart before any text changes nothing


def sse_chunks(events: StreamEvents, *, model: str, request_id: str, created: int, include_usage: bool,
               error_event: Callable[[BaseException], dict[str, Any]],
               restarted_event: Callable[[ChatResult], dict[str, Any]]) -> Iterator[bytes]:
    """The event stream's bytes, from the first text (or the finished result) to ``[DONE]``.
    ``error_event`` is the last event of a call that failed after text went out;
    ``restarted_event`` that of an answer which cannot follow the text sent before a restart (it
    was paid for: the event says what it cost)."""
    chunk_id = "chatcmpl-" + uuid.uuid5(uuid.NAMESPACE_URL, request_id).hex

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        body = {"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra}
        return _data(body)

    yield chunk({"role": "assistant", "content": ""})
    sent = ""
    held = False
    if events.first is not None:
        sent = events.first
        yield chunk({"content": events.first})
    done = events.done
    while done is None:
        event = events.rest.get()
        if isinstance(event, _Delta) and not held:
            sent += event.text
            yield chunk({"content": event.text})
        elif isinstance(event, _Restart):
            held = held or bool(sent)
        elif isinstance(event, _Done):
            done = event
    if done.error is not None:
        yield _data(error_event(done.error))
        return
    result = done.result
    assert result is not None
    if not result.content.startswith(sent):
        yield _data(restarted_event(result))
        return
    if len(result.content) > len(sent):
        yield chunk({"content": result.content[len(sent):]})
    yield chunk({}, result.finish_reason or "stop")
    if include_usage:
        usage = {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
                 "total_tokens": result.prompt_tokens + result.completion_tokens,
                 "prompt_tokens_details": {"cached_tokens": result.cached_prompt_tokens}}
        yield _data({"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": model,
                     "choices": [], "usage": usage,
                     "penny": {"cache": result.cache_status, "cost_micros": result.charged_micros,
                               "saved_micros": result.saved_micros}})
    yield b"data: [DONE]\n\n"


def _data(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode("utf-8") + b"\n\n"
