"""An answer shown in a Slack thread while the LLM writes it (Slack's ``chat.startStream`` /
``chat.appendStream`` / ``chat.stopStream``).

:class:`SlackAnswerStream` is the :class:`~proxy_core.AnswerStream` the Slack app hands the
answering service for a question asked in a thread. Text waits in a buffer; once the answer has
been coming for a second (or much text is waiting) a streamed reply starts in that thread with it,
so an answer written faster than that is simply posted whole, with no streaming calls at all. Later
pieces go out in one append when :func:`append_due` says so (:class:`StreamPacing`: about once a
second, sooner when much text is waiting), checked as each piece arrives, so nothing sleeps and
``chat.appendStream`` (Tier 4) stays far below Slack's rate limits. :meth:`SlackAnswerStream.close`
stops the stream with whatever is still waiting; the app then replaces the streamed message with the
rendered answer (``chat.update``) or deletes it.

Streaming is best effort and never raises: the first Slack call that fails (unknown method, missing
scope, a conversation that cannot stream, rate limited) ends streaming for this answer; the message
already shown, if any, is left for the app to replace, and an answer that never started streaming is
posted the usual way. :attr:`SlackAnswerStream.failure` names what failed. ``restart`` (the gateway
retrying after text was shown) stops and deletes the streamed message, so the next text starts a
fresh one; if it cannot be deleted, streaming ends and the final answer replaces that message.

Slack's tiers: ``chat.startStream`` and ``chat.stopStream`` are Tier 2 (about 20 a minute per
workspace, for all of Penny's replicas together), ``chat.appendStream`` Tier 4. A stream starts only
when ``may_start`` allows it (:class:`StreamStarts`: a budget of starts per minute shared through the
store, under Tier 2); otherwise the answer is posted whole. Starts and appends are not retried (a
throttled start or append ends streaming; the answer is never held back). ``chat.stopStream`` is
retried on HTTP 429 after Slack's ``Retry-After`` (:class:`RetryAfter`), because a message left
streaming would look unfinished: :attr:`SlackAnswerStream.stopped` says whether it was stopped, and
when it was not, the app deletes it before posting the answer.

What goes out is the model's Markdown made safe first (:func:`~bot.slack.render.safe_markdown_text`):
``&<>`` as entities and no link syntax, so a streamed answer can no more ping a channel or hide a
URL behind a label than the rendered answer that replaces it.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry import HttpRequest, HttpResponse, RetryHandler, RetryState

from bot.slack.render import safe_markdown_text
from proxy_core import Clock, LimitStore, SharedRate, StoreError, get_logger

__all__ = [
    "MARKDOWN_TEXT_LIMIT",
    "STREAM_STARTS_BURST",
    "STREAM_STARTS_PER_MINUTE",
    "RetryAfter",
    "SlackAnswerStream",
    "StreamPacing",
    "StreamStarts",
    "append_due",
    "pieces",
    "retry_after_s",
]

# What the next piece's safety needs of the text before it: a "]" and a split "@everyone", with the
# character before its "@".
_TAIL_CHARS = 16

MARKDOWN_TEXT_LIMIT: Final = 12_000  # markdown_text per chat.startStream / appendStream / stopStream call
# chat.startStream and chat.stopStream are Tier 2 (20+ a minute per workspace); every start needs a stop.
STREAM_STARTS_PER_MINUTE: Final = 15
STREAM_STARTS_BURST: Final = 5
STOP_RETRIES: Final = 2
STOP_MAX_WAIT_S: Final = 10.0  # a longer Retry-After is not waited out: the message is deleted instead
STREAM_STARTS_KEY: Final = "slack:stream_starts"

_log = get_logger()


@dataclass(frozen=True, slots=True)
class StreamPacing:
    """When a streamed message starts: once text has been waiting ``start_after_s`` (an answer
    written faster is posted whole); and when waiting text is appended to it: once ``interval_s``
    has passed since the last append. Either happens at once when ``burst_chars`` are waiting."""

    interval_s: float = 1.0
    burst_chars: int = 1000
    start_after_s: float = 1.0


def append_due(waiting_chars: int, since_last_s: float, pacing: StreamPacing) -> bool:
    """Whether ``waiting_chars`` characters, ``since_last_s`` seconds after the last append, go out now."""
    if waiting_chars <= 0:
        return False
    return since_last_s >= pacing.interval_s or waiting_chars >= pacing.burst_chars


def retry_after_s(headers: Mapping[str, Any], default: float = 1.0) -> float:
    """Slack's ``Retry-After`` (whole seconds) from response ``headers`` (values may be lists, as the
    SDK gives them); ``default`` when it is missing or unreadable."""
    for name, value in headers.items():
        if name.lower() == "retry-after":
            raw = value[0] if isinstance(value, list | tuple) and value else value
            try:
                return max(0.0, float(str(raw).strip()))
            except ValueError:
                return default
    return default


class RetryAfter(RetryHandler):
    """Retries an HTTP 429 after exactly the ``Retry-After`` Slack sent, through ``sleep`` (the
    SDK's own handler sleeps on ``time.sleep`` with jitter), and only when that wait is at most
    ``max_wait_s``: a longer one is not worth holding a finished answer for."""

    def __init__(self, *, max_retry_count: int = STOP_RETRIES, max_wait_s: float = STOP_MAX_WAIT_S,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        super().__init__(max_retry_count=max_retry_count)
        self.max_wait_s = max_wait_s
        self._sleep = sleep

    def _can_retry(self, *, state: RetryState, request: HttpRequest, response: HttpResponse | None = None,
                   error: Exception | None = None) -> bool:
        return response is not None and response.status_code == 429 and \
            retry_after_s(response.headers) <= self.max_wait_s

    def prepare_for_next_attempt(self, *, state: RetryState, request: HttpRequest,
                                 response: HttpResponse | None = None, error: Exception | None = None) -> None:
        state.next_attempt_requested = True
        self._sleep(retry_after_s(response.headers) if response is not None else 1.0)
        state.increment_current_attempt()


class StreamStarts:
    """The budget of ``chat.startStream`` calls per minute for one workspace, shared by every
    replica (a :class:`~proxy_core.SharedRate`: the store's clock, atomic in SQLite and Redis).

    :meth:`take` says whether one more stream may start now. When the budget is spent, or the
    store cannot say, the answer is posted whole instead: never more streams than Slack allows."""

    def __init__(self, store: LimitStore, *, per_minute: float = STREAM_STARTS_PER_MINUTE,
                 burst: float = STREAM_STARTS_BURST) -> None:
        self._rate = SharedRate(store, STREAM_STARTS_KEY, per_minute=per_minute, burst=burst)

    def take(self, workspace_id: str) -> bool:
        try:
            decision = self._rate.take(workspace_id)
        except StoreError as exc:
            _log.warning("slack.stream_budget_unknown", error=exc, note="posting whole")
            return False
        if not decision.allowed:
            _log.info("slack.stream_budget_spent", workspace_id=workspace_id, retry_after=decision.retry_after,
                      note="posting whole")
        return decision.allowed


def pieces(text: str, limit: int = MARKDOWN_TEXT_LIMIT) -> list[str]:
    """``text`` cut into parts Slack accepts in one ``markdown_text`` (never an empty part), never
    inside an ``&lt;``-style entity or between a backslash and the character it escapes."""
    parts: list[str] = []
    start = 0
    while start < len(text):
        end = min(start + limit, len(text))
        if end < len(text):
            amp = text.rfind("&", max(start + 1, end - 4), end)  # "&amp;" is the longest entity sent
            if amp >= 0 and ";" not in text[amp:end]:
                end = amp
            elif text[end - 1] == "\\" and end - 1 > start:
                end -= 1
        parts.append(text[start:end])
        start = end
    return parts


class SlackAnswerStream:
    """Streams one answer into ``thread_ts`` of ``channel``, for ``user_id`` of ``team_id`` (the
    asker's team, which differs from the installed workspace in a Slack Connect channel).

    ``client`` should not wait out rate limits (a throttled stream gives up instead of holding the
    answer back); only ``chat.stopStream`` waits a throttle out (:class:`RetryAfter`, on ``sleep``).
    ``may_start`` is asked once, when a stream would start (:meth:`StreamStarts.take`); ``clock`` is
    monotonic. Not thread-safe: one answer, one thread.
    """

    def __init__(
        self,
        client: WebClient,
        *,
        channel: str,
        thread_ts: str,
        user_id: str,
        team_id: str,
        clock: Clock,
        pacing: StreamPacing | None = None,
        may_start: Callable[[], bool] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._client = client
        self._stop_client = copy.copy(client)
        self._stop_client.retry_handlers = [*client.retry_handlers, RetryAfter(sleep=sleep)]
        self._may_start = may_start
        self._channel = channel
        self._thread_ts = thread_ts
        self._user_id = user_id
        self._team_id = team_id
        self._clock = clock
        self._pacing = pacing if pacing is not None else StreamPacing()
        self._ts: str | None = None  # the streamed message, once started
        self._open = False  # started and not stopped yet
        self._waiting: list[str] = []
        self._waiting_chars = 0
        self._last_append = 0.0
        self._first_text: float | None = None  # when the first text arrived
        self._sent_tail = ""  # the end of the model's text taken for the message shown (see _take)
        self.failure: str | None = None  # the Slack error that ended streaming (e.g. "missing_scope")
        self.stopped = True  # False while a started stream has not been stopped (or could not be)
        self._last_error: str | None = None

    @property
    def ts(self) -> str | None:
        """The streamed message's ts (None while nothing is shown)."""
        return self._ts

    # -- AnswerStream ----------------------------------------------------------------------------

    def delta(self, text: str) -> None:
        if not text or self.failure is not None:
            return
        self._waiting.append(text)
        self._waiting_chars += len(text)
        now = self._clock()
        if self._ts is None:
            if self._first_text is None:
                self._first_text = now
            waited = now - self._first_text
            if waited >= self._pacing.start_after_s or self._waiting_chars >= self._pacing.burst_chars:
                self._start(now)
        elif append_due(self._waiting_chars, now - self._last_append, self._pacing):
            self._append(now)

    def restart(self) -> None:
        self._take()
        self._first_text = None
        self._sent_tail = ""
        if self._ts is None:
            return
        self._stop(None)
        if self._call("chat_delete", channel=self._channel, ts=self._ts) is not None:
            self._ts, self.stopped = None, True
        elif self.failure is None:
            self.failure = "delete_failed"  # keep the message: the final answer replaces it

    # -- the end ---------------------------------------------------------------------------------

    def close(self) -> str | None:
        """Stop the stream, sending what is still waiting; the ts of the message that was streamed
        (for the app to replace or delete), or None when nothing was shown."""
        self._stop(self._take())
        return self._ts

    # -- Slack calls -----------------------------------------------------------------------------

    def _start(self, now: float) -> None:
        if self._may_start is not None and not self._may_start():
            self.failure = "stream_budget"  # no more streams this minute: the answer is posted whole
            self._take()
            return
        first, *rest = pieces(self._take())
        response = self._call(
            "chat_startStream",
            channel=self._channel,
            thread_ts=self._thread_ts,
            markdown_text=first,
            # Required outside DMs; Bolt's say_stream sends them everywhere, and so does Penny.
            recipient_user_id=self._user_id,
            recipient_team_id=self._team_id,
        )
        ts = str(response.get("ts") or "") if response is not None else ""
        if not ts:
            if self.failure is None:
                self.failure = "no_ts"
            return
        self._ts, self._open, self._last_append = ts, True, now
        self.stopped = False
        self._send(rest)

    def _append(self, now: float) -> None:
        self._send(pieces(self._take()))
        self._last_append = now

    def _send(self, parts: list[str]) -> None:
        for part in parts:
            if self.failure is not None:
                return
            self._call("chat_appendStream", channel=self._channel, ts=self._ts, markdown_text=part)

    def _stop(self, text: str | None) -> None:
        """Stop the stream, if it is open, with ``text`` as its last words (left out after a failure)."""
        if not self._open:
            return
        self._open = False
        parts = pieces(text) if text and self.failure is None else []
        self._send(parts[:-1])
        kwargs = {"markdown_text": parts[-1]} if parts and self.failure is None else {}
        response = self._call("chat_stopStream", client=self._stop_client, channel=self._channel, ts=self._ts,
                              **kwargs)
        # Not streaming any more is stopped too (Slack ended it, or an earlier stop got through).
        self.stopped = response is not None or self._last_error == "message_not_in_streaming_state"

    def _take(self) -> str:
        """The waiting text, made safe to show (see :func:`safe_markdown_text`), and no longer waiting."""
        text = "".join(self._waiting)
        self._waiting.clear()
        self._waiting_chars = 0
        safe = safe_markdown_text(text, after=self._sent_tail)
        self._sent_tail = (self._sent_tail + text)[-_TAIL_CHARS:]
        return safe

    def _call(self, method: str, *, client: WebClient | None = None, **kwargs: Any) -> Any:
        """``client.<method>(**kwargs)``; on any failure: log it, remember it, and return None."""
        try:
            return getattr(client or self._client, method)(**kwargs)
        except SlackApiError as exc:
            error = str(exc.response.get("error") or f"http_{exc.response.status_code}")
        except Exception as exc:  # a connection failure: the answer still goes out without streaming
            error = type(exc).__name__
        self._last_error = error
        if self.failure is None:
            self.failure = error
        _log.warning("slack.stream_failed", method=method, channel=self._channel, error=error)
        return None
