"""How an answer reaches Slack: streamed into its thread while it is written, then posted as what
:mod:`bot.slack.render` builds, and the records Penny keeps of what it posted.

Answers and ``no_match`` replies are posted in the thread; refusals and errors go to the asker
alone (``chat.postEphemeral``). An answer the LLM writes (a cache miss) to a question in a thread
streams into that thread while it is written (:mod:`bot.slack.stream`); once it is done, the
streamed message is replaced (``chat.update``) by exactly the message a non-streamed answer gets,
and the rest of a long answer follows as usual. If the answer ends as a refusal or an error, the
streamed message is deleted and the refusal goes to the asker as before. Streaming is best effort:
when a streaming call fails, the answer is delivered the non-streamed way, once. A top-level DM
answer (no thread) is not streamed: Slack streams only replies.

Penny keeps two records in the store (a :class:`~proxy_core.RecordStore`, written with the event's
completion, :func:`bot.slack.middleware.remember`): the threads it posted in (:data:`THREADS_KIND`,
so a later reply there is heard) and the answers it posted (:data:`ANSWERS_KIND`: the question,
whether it was cached, its pages, so a 👎 can offer a fresh answer and count the pages).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Final

from slack_bolt import Respond
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry import RateLimitErrorRetryHandler

from bot.answer_types import Answer
from bot.slack.agent import AskedPages
from bot.slack.middleware import remember
from bot.slack.render import (
    MAX_BLOCKS,
    MESSAGE_BLOCKS_TEXT_BUDGET,
    AnswerView,
    Block,
    answer_blocks,
    blocks_text_length,
    fallback_text,
    message_text,
    refusal_blocks,
)
from bot.slack.stream import SlackAnswerStream, StreamPacing, StreamStarts
from bot.slack.working import Working
from proxy_core import Clock, Record, RecordStore, StoreError, get_logger

__all__ = [
    "ANSWERS_KIND",
    "ANSWER_NOT_POSTED_NOTE",
    "ANSWER_TTL_S",
    "NOT_POSTED_NOTE",
    "REST_NOT_POSTED_NOTE",
    "THREADS_KIND",
    "THREAD_TTL_S",
    "Delivery",
    "Target",
    "Writing",
    "context_block",
    "in_thread",
    "knows_thread",
    "posted_answer",
]

THREAD_TTL_S: Final = 7 * 24 * 3600.0
ANSWER_TTL_S: Final = 7 * 24 * 3600.0
THREADS_KIND: Final = "slack:threads"  # workspace:channel:thread_ts → Penny posted there
ANSWERS_KIND: Final = "slack:answers"  # workspace:channel:ts of an answer → its question, for 👎 → fresh answer
# On an answer Slack would not post where it was asked, shown to the clicker alone instead.
NOT_POSTED_NOTE: Final = (":lock: I can't post in this channel any more (I may have been removed from it), "
                          "so only you can see this answer.")
# On an answer (or the rest of one) Slack would not take in the thread, shown to the asker alone instead.
# (Slack refused it, or the connection failed, when the post may have gone through after all.)
ANSWER_NOT_POSTED_NOTE: Final = (":warning: Slack did not confirm it posted my answer in the thread, "
                                 "so here it is, for you alone.")
REST_NOT_POSTED_NOTE: Final = (":warning: Slack did not confirm it posted the rest of my answer in the thread, "
                               "so here it is, for you alone.")
# Streaming errors no later answer can get past: streaming stays off until Penny restarts.
STREAMING_UNAVAILABLE: Final = frozenset({"unknown_method", "missing_scope", "not_allowed_token_type"})

_log = get_logger()


@dataclass(frozen=True)
class Target:
    """Where one question came from and where its answer goes."""

    workspace_id: str
    channel: str
    user: str
    message_ts: str | None  # the user's message (for the reaction); None for a button click
    thread_ts: str | None  # the thread to answer in; None = top level (a DM)
    user_team: str | None = None  # the asker's team when it is not the workspace's (Slack Connect)


class Writing:
    """The stream an answer is written into, which also tells the working indicator once the LLM
    starts writing (the status moves on from searching to writing)."""

    def __init__(self, stream: SlackAnswerStream, working: Working) -> None:
        self._stream = stream
        self._working = working
        self._started = False

    def delta(self, text: str) -> None:
        if text and not self._started:
            self._started = True
            self._working.writing()
        self._stream.delta(text)

    def restart(self) -> None:
        self._stream.restart()


@dataclass(eq=False)
class Delivery:
    """Streams and posts answers for the listeners (see the module doc). ``stream_starts`` is the
    shared budget of streams per minute; ``clock`` and ``stream_pacing`` set how often a stream is
    appended to; ``sleep`` waits out a throttled ``chat.stopStream``."""

    store: RecordStore
    asked: AskedPages
    _: KW_ONLY
    clock: Clock
    stream_pacing: StreamPacing
    stream_starts: StreamStarts
    sleep: Callable[[float], None]
    streaming: bool = field(default=True, init=False)  # off for good after an error in STREAMING_UNAVAILABLE

    def stream_for(self, client: WebClient, target: Target) -> SlackAnswerStream | None:
        """Where the answer streams while it is written: its thread (Slack streams only replies)."""
        if not self.streaming or not target.thread_ts:
            return None
        # A throttled streaming call gives up streaming rather than wait and hold the answer back.
        stream_client = copy.copy(client)
        stream_client.retry_handlers = [
            h for h in client.retry_handlers if not isinstance(h, RateLimitErrorRetryHandler)
        ]
        return SlackAnswerStream(
            stream_client,
            channel=target.channel,
            thread_ts=target.thread_ts,
            user_id=target.user,
            team_id=target.user_team or target.workspace_id,
            clock=self.clock,
            pacing=self.stream_pacing,
            may_start=lambda: self.stream_starts.take(target.workspace_id),
            sleep=self.sleep,
        )

    def end_stream(self, client: WebClient, target: Target, stream: SlackAnswerStream | None) -> str | None:
        """Close ``stream``; the ts of the message it showed, which the answer must replace. A
        message whose stream could not be stopped is deleted (None then): the answer is posted
        whole, and nothing is left looking unfinished."""
        if stream is None:
            return None
        streamed_ts = stream.close()
        if stream.failure in STREAMING_UNAVAILABLE and self.streaming:
            self.streaming = False
            _log.warning("slack.streaming_off", error=stream.failure,
                         note="answers are posted whole until Penny restarts (streaming needs chat:write)")
        if streamed_ts is not None and not stream.stopped and _delete(client, target, streamed_ts):
            return None
        return streamed_ts

    def deliver(
        self,
        client: WebClient,
        target: Target,
        answer: Answer,
        question: str,
        note: str | None,
        streamed_ts: str | None = None,
        *,
        privately: Respond | None = None,
    ) -> None:
        """Post ``answer``; ``streamed_ts`` is the message it was streamed into, replaced by the
        answer's first message (or deleted, for a refusal). With ``privately`` (a click's
        ``respond``), an answer Slack refuses to post where it was asked (Penny was removed from the
        channel, or it was archived, since the click's offer) goes to the clicker alone through it:
        it was paid for, so it is not lost. Without it, what Slack would not post goes to the asker
        alone (``chat.postEphemeral``)."""
        if answer.kind in ("refused", "error"):
            if streamed_ts is not None:
                _delete(client, target, streamed_ts)
            kind = answer.refusal or "upstream_error"
            blocks = _with_note(refusal_blocks(kind, answer.text, _doc_links(answer)), note)
            try:
                client.chat_postEphemeral(channel=target.channel, user=target.user, blocks=blocks,
                                          text=message_text(blocks), **in_thread(target.thread_ts))
            except SlackApiError as exc:
                if privately is None:
                    raise
                _log.warning("slack.answer_not_posted", channel=target.channel, error=exc, shown_to="clicker")
                privately(blocks=blocks, text=message_text(blocks), response_type="ephemeral",
                          replace_original=False, **in_thread(target.thread_ts))
            return
        if answer.kind == "no_match":
            messages = [refusal_blocks("no_match", answer.text, _doc_links(answer))]
            texts = [message_text(messages[0])]
        else:
            citations = tuple((c.number, c.title, c.section, c.url, c.path) for c in answer.citations)
            messages = answer_blocks(AnswerView(text=answer.text, citations=citations, footer=answer.footer,
                                                entry_id=answer.entry_id, cached=answer.cached))
            texts = [fallback_text(answer.text)] if len(messages) == 1 else [message_text(m) for m in messages]
        messages[0] = _with_note(messages[0], note)
        posted = self._post(client, target, messages, texts, replace_ts=streamed_ts)
        if posted.error is not None:
            self._show_unposted(client, target, messages[posted.count:], posted, privately)
            return
        last_ts = posted.last_ts
        if answer.kind in ("answer", "extractive") and answer.citations:
            first = answer.citations[0]
            self.asked.add(target.workspace_id, first.path, first.title or first.path)
        if answer.entry_id is not None and last_ts:
            record = {"question": question, "cached": answer.cached, "thread_ts": target.thread_ts or "",
                      "asked_ts": target.message_ts or "", "pages": [c.path for c in answer.citations]}
            remember(self.store, Record(ANSWERS_KIND, f"{target.workspace_id}:{target.channel}:{last_ts}",
                                        json.dumps(record), ANSWER_TTL_S))

    def post(
        self,
        client: WebClient,
        target: Target,
        messages: list[list[Block]],
        texts: Sequence[str] | None = None,
        *,
        replace_ts: str | None = None,
    ) -> str | None:
        """Post ``messages`` in order (in the thread, if any); the last message's ts. With
        ``replace_ts`` (a streamed message), the first message replaces that one instead. Raises
        what the first post Slack refused raised."""
        posted = self._post(client, target, messages, texts, replace_ts=replace_ts)
        if posted.error is not None:
            raise posted.error
        return posted.last_ts

    def _post(
        self,
        client: WebClient,
        target: Target,
        messages: list[list[Block]],
        texts: Sequence[str] | None,
        *,
        replace_ts: str | None,
    ) -> _Posted:
        """Post ``messages`` in order until one fails (see :meth:`post`): how many went out."""
        posted = _Posted()
        for index, blocks in enumerate(messages):
            text = texts[index] if texts is not None and index < len(texts) else message_text(blocks)
            if index == 0 and replace_ts is not None and _replace(client, target, replace_ts, blocks, text):
                posted.last_ts, posted.count = replace_ts, 1
                continue
            try:
                response = client.chat_postMessage(channel=target.channel, blocks=blocks, text=text,
                                                   unfurl_links=False, unfurl_media=False,
                                                   **in_thread(target.thread_ts))
            except Exception as exc:
                posted.error = exc
                break
            posted.last_ts, posted.count = str(response.get("ts") or "") or None, index + 1
        if target.thread_ts and posted.count:
            remember(self.store, Record(THREADS_KIND, f"{target.workspace_id}:{target.channel}:{target.thread_ts}",
                                        "1", THREAD_TTL_S))
        return posted

    def _show_unposted(self, client: WebClient, target: Target, messages: list[list[Block]], posted: _Posted,
                       privately: Respond | None) -> None:
        """Show the asker alone the ``messages`` of an answer Slack would not post in the thread
        (after ``posted.count`` that it did post), through ``privately`` (a click's ``respond``) or
        ``chat.postEphemeral``; logged when that fails too."""
        _log.warning("slack.answer_not_posted", channel=target.channel, posted=posted.count, error=posted.error,
                     shown_to="clicker" if privately is not None else "asker")
        note = (NOT_POSTED_NOTE if privately is not None
                else REST_NOT_POSTED_NOTE if posted.count else ANSWER_NOT_POSTED_NOTE)
        messages = [_with_note(messages[0], note), *messages[1:]]
        try:
            for blocks in messages:
                if privately is not None:
                    privately(blocks=blocks, text=message_text(blocks), response_type="ephemeral",
                              replace_original=False, **in_thread(target.thread_ts))
                else:
                    client.chat_postEphemeral(channel=target.channel, user=target.user, blocks=blocks,
                                              text=message_text(blocks), **in_thread(target.thread_ts))
        except Exception as exc:
            _log.error("slack.answer_lost", channel=target.channel, error=exc, first_error=posted.error)


@dataclass
class _Posted:
    """How far posting an answer's messages got: ``count`` posted, the last at ``last_ts``, and
    the ``error`` that stopped the next one (None: all were posted)."""

    count: int = 0
    last_ts: str | None = None
    error: Exception | None = None


def knows_thread(store: RecordStore, workspace: str, channel: str, thread_ts: str) -> bool:
    """Whether Penny posted in this thread (within :data:`THREAD_TTL_S`); no when the store cannot say."""
    try:
        return store.record_get(THREADS_KIND, f"{workspace}:{channel}:{thread_ts}") is not None
    except StoreError as exc:
        _log.warning("slack.thread_lookup_failed", error=exc)
        return False


def posted_answer(store: RecordStore, workspace: str, channel: str, ts: str) -> dict[str, Any] | None:
    """What Penny recorded of the answer it posted at ``ts`` (question, cached, thread_ts, pages),
    or None. Raises :class:`~proxy_core.StoreError` when the store cannot say."""
    raw = store.record_get(ANSWERS_KIND, f"{workspace}:{channel}:{ts}")
    record = json.loads(raw) if raw else None
    return record if isinstance(record, dict) else None


def in_thread(thread_ts: str | None) -> dict[str, Any]:
    """The ``thread_ts`` argument of a post in ``thread_ts`` (none at the top level)."""
    return {"thread_ts": thread_ts} if thread_ts else {}


def context_block(text: str) -> Block:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": text}]}


def _replace(client: WebClient, target: Target, ts: str, blocks: list[Block], text: str) -> bool:
    """Turn the streamed message ``ts`` into the rendered one. False when it could not be
    updated: it is deleted (as far as Slack lets it be) and the caller posts the answer instead."""
    try:
        client.chat_update(channel=target.channel, ts=ts, blocks=blocks, text=text)
        return True
    except Exception as exc:
        _log.warning("slack.stream_update_failed", channel=target.channel, error=exc)
    _delete(client, target, ts)
    return False


def _delete(client: WebClient, target: Target, ts: str) -> bool:
    try:
        client.chat_delete(channel=target.channel, ts=ts)
        return True
    except Exception as exc:  # the partial answer stays; the full one still goes out
        _log.warning("slack.stream_delete_failed", channel=target.channel, error=exc)
        return False


def _doc_links(answer: Answer) -> list[tuple[str, str]]:
    return [(c.title + (f" › {c.section}" if c.section else ""), c.url or c.path) for c in answer.citations]


def _with_note(blocks: list[Block], note: str | None) -> list[Block]:
    """``blocks`` with a context note on top, when it fits Slack's limits."""
    if not note:
        return blocks
    noted = [context_block(note), *blocks]
    if len(noted) <= MAX_BLOCKS and blocks_text_length(noted) <= MESSAGE_BLOCKS_TEXT_BUDGET:
        return noted
    return blocks
