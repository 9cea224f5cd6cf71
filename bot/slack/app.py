"""Penny's Slack app (Bolt for Python): thin listeners that parse an event, ask the answering
service, and post what :mod:`bot.slack.render` builds.

What it answers:

- an ``app_mention`` in a channel, in the thread of the mention;
- a ``message`` in a DM (top level or in a DM thread);
- a ``message`` in a channel or group DM thread Penny has already posted in, without a mention,
  when it asks her something (:mod:`bot.slack.addressing`; ``PENNY_THREAD_REPLIES``: ``questions``
  by default, ``all`` or ``mentions``): thanks, emoji and talk between people get no reply and
  no LLM call. Penny remembers the threads it posted in through the store (a record of
  :data:`THREADS_KIND`, for :data:`THREAD_TTL_S`), so an unrelated thread reply costs no Slack
  call; for a thread it knows, ``conversations.replies`` (one call per 200 replies) fetches the
  earlier turns, which go to the service as ``history``: the thread's root and its newest turns (at
  most :data:`HISTORY_TURNS` turns / :data:`HISTORY_TOKENS` tokens).

Every event is handled once: its event ID is claimed in the store (``slack:<event_id>``) before
anything runs, so Slack's retries and duplicate deliveries never answer twice; the event ID is also
the question's ``request_id``, on which the gateway dedupes charges. A mention arrives twice (as
``app_mention`` and as ``message``) under different event IDs; the ``message`` copy is dropped
because it mentions Penny.

Answers and ``no_match`` replies are posted in the thread; refusals and errors go to the asker
alone (``chat.postEphemeral``). While the service works, a thread shows Slack's status line
("Penny is searching the docs…", then "…is writing…"); a top-level DM question carries an ``eyes``
reaction instead (:mod:`bot.slack.working`). Every Web API call goes through a client with the
SDK's retry handlers for Slack's rate limits (HTTP 429, honouring ``Retry-After``) and for
connection errors.

Slack's agent surfaces (:mod:`bot.slack.agent`): opening Penny's Messages tab (``app_home_opened``,
``tab == "messages"``, the agent messaging experience of ``features.agent_view``) sets suggested
prompts drawn from the docs on the DM; an assistant thread (the older ``assistant_view``) gets a
greeting, the same prompts and, from its first question, a title, through Bolt's
:class:`~slack_bolt.Assistant`; the context Slack reports (``assistant_thread_context_changed``,
``app_context_changed``) is kept in the store. Answers carry Slack's native feedback buttons; a
vote is acknowledged to the voter, and a 👎 may add a short reason, stored with the vote.

An answer the LLM writes (a cache miss) to a question in a thread streams into that thread while it
is written (:mod:`bot.slack.stream`); once it is done, the streamed message is replaced
(``chat.update``) by exactly the message a non-streamed answer gets, and the rest of a long answer
follows as usual. If the answer ends as a refusal or an error, the streamed message is deleted and
the refusal goes to the asker as before. Streaming is best effort: when a streaming call fails, the
answer is delivered the non-streamed way, once. A top-level DM answer (no thread) is not streamed:
Slack streams only replies.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Final

from slack_bolt import Ack, App, Assistant, BoltContext, Respond, SaveThreadContext, Say, SetSuggestedPrompts, SetTitle
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry import ConnectionErrorRetryHandler, RateLimitErrorRetryHandler

from bot.answer_types import Answer, Answerer, Question
from bot.cost import CostReport, TeamReport, cost_report, is_admin, team_report
from bot.feedback import record_feedback
from bot.slack.addressing import classify_thread_reply
from bot.slack.agent import (
    ACTION_FEEDBACK_REASON,
    ASSISTANT_THREADS_KIND,
    CONTEXT_KIND,
    CONTEXT_TTL_S,
    GREETING,
    PROMPTS_TITLE,
    REASON_CALLBACK,
    AskedPages,
    DocPage,
    StoreThreadContext,
    feedback_ack_blocks,
    reason_modal,
    reason_of,
    suggested_prompts,
    thread_title,
)
from bot.slack.cost_blocks import (
    cost_blocks,
    help_blocks,
    team_blocks,
    team_refusal_blocks,
)
from bot.slack.cost_blocks import home_view as cost_home_view
from bot.slack.middleware import InstalledWorkspaceOnly
from bot.slack.render import (
    ACTION_FEEDBACK,
    ACTION_FEEDBACK_DOWN,
    ACTION_FEEDBACK_UP,
    MAX_BLOCKS,
    MESSAGE_BLOCKS_TEXT_BUDGET,
    AnswerView,
    Block,
    CitationTuple,
    answer_blocks,
    blocks_text_length,
    fallback_text,
    message_text,
    refusal_blocks,
)
from bot.slack.startup import SlackInstallation
from bot.slack.stream import SlackAnswerStream, StreamPacing, StreamStarts
from bot.slack.working import Working, WorkingIndicator
from proxy_core import (
    Clock,
    PennySettings,
    Record,
    Store,
    StoreError,
    ThreadReplies,
    estimate_text_tokens,
    get_logger,
)

__all__ = [
    "ACTION_FRESH_ANSWER",
    "BOT_EVENTS",
    "BOT_SCOPES",
    "FRESH_BLOCK_PREFIX",
    "HELP_TEXT",
    "MAX_QUESTION_CHARS",
    "FeedbackCallback",
    "SlackSettings",
    "build_app",
    "make_client",
    "run_http",
    "socket_mode_handler",
]

ACTION_FRESH_ANSWER: Final = "penny_fresh_answer"
FRESH_BLOCK_PREFIX: Final = "penny_fresh:"  # + the thread_ts to answer in ("" for none)

MAX_QUESTION_CHARS: Final = 4000
ADMIN_LOOKUP_TTL_S: Final = 300.0  # a users.info answer (admin or not) is trusted this long
PROMPTS_TTL_S: Final = 600.0  # suggested prompts are worked out again (and set again on a DM) this often
# setSuggestedPrompts refusals that mean the app is not set up as an agent: stop asking until a restart
PROMPTS_UNAVAILABLE: Final = frozenset({"not_agent_app", "missing_scope", "unknown_method", "not_allowed_token_type"})
_ADMIN_LOOKUPS_KEPT: Final = 10_000
HISTORY_TURNS: Final = 10
HISTORY_TOKENS: Final = 2000
REPLIES_PAGE: Final = 200  # messages per conversations.replies page (Slack recommends at most 200)
REPLIES_MAX_PAGES: Final = 10  # a thread is paged through to its end, up to this many pages
REPLIES_KEPT: Final = 50  # the newest replies kept while paging (bots and joins are left out later)

EVENT_CLAIM_TTL_S: Final = 15 * 60.0  # Slack's last retry comes ~5 minutes after the first delivery
EVENT_DONE_TTL_S: Final = 24 * 3600.0
THREAD_TTL_S: Final = 7 * 24 * 3600.0
ANSWER_TTL_S: Final = 7 * 24 * 3600.0
# Penny's records in the store (RecordStore), by kind:
THREADS_KIND: Final = "slack:threads"  # workspace:channel:thread_ts → Penny posted there
ANSWERS_KIND: Final = "slack:answers"  # workspace:channel:ts of an answer → its question, for 👎 → fresh answer

HELP_TEXT: Final = (
    "Hi! Ask me a question about the team's docs, e.g. `@Penny how do I rotate the API key?` "
    "I answer in a thread, with links to the pages I used. Reply in the thread to follow up."
)
TRUNCATED_NOTE: Final = f":scissors: Your message was long, so I read only its first {MAX_QUESTION_CHARS:,} characters."
FAILED_TEXT: Final = "Something went wrong on my side. Please try again in a minute."

# The Slack events and scopes the manifest must declare (tests hold manifest.yml to these).
BOT_EVENTS: Final = (
    "app_mention", "message.im", "message.channels", "message.groups", "message.mpim", "app_home_opened",
    "app_context_changed",
)
BOT_SCOPES: Final[Mapping[str, str]] = {
    "app_mentions:read": "app_mention events",
    "assistant:write": "assistant.threads.setSuggestedPrompts / setTitle (the agent DM and assistant threads), "
                       "app_context_changed events",
    "chat:write": "chat.postMessage, chat.postEphemeral, chat.update, chat.delete, "
                  "chat.startStream / appendStream / stopStream (a streamed answer), "
                  "assistant.threads.setStatus (the status line while Penny works)",
    "channels:history": "message.channels events; conversations.replies in public channels",
    "groups:history": "message.groups events; conversations.replies in private channels",
    "im:history": "message.im events; conversations.replies in DMs",
    "mpim:history": "message.mpim events; conversations.replies in group DMs",
    "reactions:write": "reactions.add / reactions.remove (the eyes reaction on a top-level DM question)",
    "commands": "the /cost slash command",
    "users:read": "users.info (is the caller a workspace admin or owner, for /cost team)",
}

# Subtypes that are still a person writing (a reply also sent to the channel, a message with a file).
_USER_SUBTYPES: Final = frozenset({"thread_broadcast", "file_share"})
_MENTION = re.compile(r"<@([UW][A-Z0-9]+)(?:\|[^>]*)?>")

FeedbackCallback = Callable[[str, str, bool], None]  # (user_id, entry_id, up)

# Streaming errors no later answer can get past: streaming stays off until Penny restarts.
STREAMING_UNAVAILABLE: Final = frozenset({"unknown_method", "missing_scope", "not_allowed_token_type"})

_log = get_logger()



@dataclass
class _Handling:
    """What the handling of one event leaves for its end (see _Penny._handling): records to store
    with its completion, and Slack calls to make once that is done (taking the 👀 off)."""

    remembered: list[Record] = field(default_factory=list)
    then: list[Callable[[], None]] = field(default_factory=list)


_HANDLING: ContextVar[_Handling | None] = ContextVar("penny_slack_handling", default=None)


@dataclass(frozen=True, slots=True)
class SlackSettings:
    """How Penny talks to Slack. Tokens and the signing secret never appear in a repr."""

    bot_token: str = field(repr=False)
    signing_secret: str = field(repr=False)
    app_token: str | None = field(default=None, repr=False)  # xapp-…, for Socket Mode
    api_url: str | None = None  # overrides the Web API base URL (SLACK_API_URL)
    admin_user_ids: frozenset[str] = frozenset()
    thread_replies: ThreadReplies = "questions"  # which unmentioned thread replies are answered


def make_client(settings: SlackSettings) -> WebClient:
    """A WebClient that retries Slack's rate limits (honouring ``Retry-After``) and connection errors."""
    handlers = [RateLimitErrorRetryHandler(max_retry_count=2), ConnectionErrorRetryHandler(max_retry_count=2)]
    if settings.api_url:
        base_url = settings.api_url if settings.api_url.endswith("/") else settings.api_url + "/"
        return WebClient(token=settings.bot_token, base_url=base_url, retry_handlers=handlers)
    return WebClient(token=settings.bot_token, retry_handlers=handlers)


def build_app(
    *,
    answerer: Answerer,
    store: Store,
    settings: SlackSettings,
    client: WebClient | None = None,
    on_feedback: FeedbackCallback | None = None,
    listener_executor: Executor | None = None,
    cost_settings: PennySettings | None = None,
    wall: Callable[[], float] = time.time,
    clock: Clock = time.monotonic,
    stream_pacing: StreamPacing | None = None,
    working: WorkingIndicator | None = None,
    installation: SlackInstallation | None = None,
    stream_starts: StreamStarts | None = None,
    sleep: Callable[[float], None] = time.sleep,
    doc_pages: Callable[[], Sequence[DocPage]] | None = None,
) -> App:
    """Penny's Bolt app. ``client`` defaults to :func:`make_client`; ``on_feedback`` gets 👍/👎 clicks.

    Listeners run after the ack, on ``listener_executor`` (Bolt's own thread pool by default; tests
    pass theirs so they can wait for every listener to finish). ``cost_settings`` gives ``/cost`` and
    the App Home their budgets, rate limits and admins (defaults: no caps, default limits, only the
    admins in ``settings``); ``wall`` is the clock that picks today and this month. ``clock``
    (monotonic) and ``stream_pacing`` set how often a streamed answer is appended to;
    ``stream_starts`` is the shared budget of streams per minute (default: Slack's Tier 2, through
    ``store``); ``sleep`` waits out a throttled ``chat.stopStream``. ``working``
    shows the status (or 👀) on slow questions (default: after half a second, on threads of its own).
    ``installation`` is the workspace and app the bot token belongs to (from the start-up check;
    looked up on the first request without it): requests from any other are dropped unanswered.
    ``doc_pages`` lists the docs' pages, for suggested prompts (:func:`bot.slack.agent.doc_pages_of`).
    """
    web_client = client if client is not None else make_client(settings)
    _quiet_client_and_token_notice()
    # The bot's own IDs come from auth.test on the first request (Bolt caches it), not at start-up.
    app = App(
        client=web_client,
        signing_secret=settings.signing_secret,
        token_verification_enabled=False,
        listener_executor=listener_executor,
    )
    app.use(InstalledWorkspaceOnly(installation))  # before any listener: no store write, no LLM call
    costs = cost_settings if cost_settings is not None else PennySettings.model_construct()
    admins = _Admins(frozenset(settings.admin_user_ids) | frozenset(costs.admin_user_ids))
    penny = _Penny(answerer=answerer, store=store, on_feedback=on_feedback, costs=costs, admins=admins, wall=wall,
                   clock=clock, stream_pacing=stream_pacing or StreamPacing(),
                   working=working if working is not None else WorkingIndicator(),
                   thread_replies=settings.thread_replies,
                   stream_starts=stream_starts if stream_starts is not None else StreamStarts(store), sleep=sleep,
                   doc_pages=doc_pages)
    # Assistant threads (assistant_view): Bolt's Assistant handles their events, before the other
    # listeners (which it hands its context store). A question in one goes to on_assistant_question
    # when Penny knows the thread; any other DM thread message falls through to on_message.
    assistant = Assistant(thread_context_store=StoreThreadContext(store))
    assistant.thread_started(penny.on_thread_started)  # thread_context_changed: Bolt's default, saved in the store
    # Bolt concatenates ``matchers`` to a list (its annotation says a single callable).
    assistant.user_message(penny.on_assistant_question, matchers=[penny.in_assistant_thread])  # type: ignore[arg-type]
    app.assistant(assistant)
    app.event("app_mention")(penny.on_mention)
    app.event("message")(penny.on_message)
    app.event("app_home_opened")(penny.on_home_opened)
    app.event("app_context_changed")(penny.on_app_context_changed)
    app.command("/cost")(penny.on_cost)
    app.action(ACTION_FEEDBACK)(penny.on_feedback_buttons)
    app.action(ACTION_FEEDBACK_UP)(penny.on_feedback_up)  # the buttons of answers posted before native ones
    app.action(ACTION_FEEDBACK_DOWN)(penny.on_feedback_down)
    app.action(ACTION_FEEDBACK_REASON)(penny.on_feedback_reason)
    app.view(REASON_CALLBACK)(penny.on_feedback_reason_sent)
    app.action(ACTION_FRESH_ANSWER)(penny.on_fresh_answer)
    app.error(penny.on_error)
    return app


class _ClientAndTokenNotice(logging.Filter):
    """Bolt warns that the token is unused when a client is given while SLACK_BOT_TOKEN is in the
    environment: Penny gives its own client (with retry handlers) on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "`token` will be unused" not in record.getMessage()


def _quiet_client_and_token_notice() -> None:
    bolt = logging.getLogger("slack_bolt.App")
    if not any(isinstance(f, _ClientAndTokenNotice) for f in bolt.filters):
        bolt.addFilter(_ClientAndTokenNotice())


def socket_mode_handler(app: App, app_token: str, *, logger: logging.Logger | None = None) -> Any:
    """The Socket Mode handler for ``app`` (not connected yet); ``logger`` is its client's."""
    from slack_bolt.adapter.socket_mode import SocketModeHandler

    return SocketModeHandler(app, app_token, web_client=app.client, logger=logger)


def run_http(app: App, port: int) -> None:
    """Serve ``app`` over HTTP at ``/slack/events`` (blocks). Bad input (a non-numeric timestamp,
    malformed JSON) gets a 4xx before Bolt sees it, never a traceback (:mod:`bot.slack.http_guard`)."""
    from bot.slack.http_guard import SlackHTTPServer

    with SlackHTTPServer(app, ("0.0.0.0", port), path="/slack/events") as server:  # noqa: S104  # Slack calls in
        server.serve_forever()


# ---------------------------------------------------------------------------------------------
# Parsing helpers (pure)


def strip_mentions(text: str, bot_user_id: str | None) -> str:
    """``text`` without mentions of the bot (others stay), whitespace collapsed at the ends."""
    if not bot_user_id:
        return text.strip()
    return _MENTION.sub(lambda m: "" if m.group(1) == bot_user_id else m.group(0), text).strip()


def clip_question(text: str, limit: int = MAX_QUESTION_CHARS) -> tuple[str, bool]:
    """(text cut to ``limit`` characters, whether it was cut)."""
    if len(text) <= limit:
        return text, False
    return text[:limit], True


def _ts_key(ts: str) -> tuple[int, int]:
    seconds, _, micros = ts.partition(".")
    try:
        return int(seconds), int(micros or 0)
    except ValueError:
        return 0, 0


def thread_history(
    messages: Sequence[Mapping[str, Any]],
    *,
    before_ts: str,
    bot_user_id: str | None,
    bot_id: str | None,
    root_ts: str | None = None,
    max_turns: int = HISTORY_TURNS,
    max_tokens: int = HISTORY_TOKENS,
) -> tuple[tuple[str, str], ...]:
    """The turns of a thread before ``before_ts``, oldest first, as (role, text), keeping the newest
    that fit ``max_turns`` and ``max_tokens``. The thread's root (the message at ``root_ts``) is kept
    first whatever the thread's length, in at most half the tokens: it is usually the question the
    thread is about. Penny's messages are ``assistant``; other bots and system messages are left out."""
    turns: list[tuple[str, str]] = []
    root: list[tuple[str, str]] = []
    for message in messages:
        ts = str(message.get("ts", ""))
        if _ts_key(ts) >= _ts_key(before_ts):
            continue
        subtype = message.get("subtype")
        penny = (bot_id is not None and message.get("bot_id") == bot_id) or (
            bot_user_id is not None and message.get("user") == bot_user_id
        )
        if not penny and (message.get("bot_id") or (subtype is not None and subtype not in _USER_SUBTYPES)):
            continue
        text = strip_mentions(str(message.get("text") or ""), bot_user_id)
        if text:
            (root if root_ts is not None and ts == root_ts and not root else turns).append(
                ("assistant" if penny else "user", text)
            )
    if root and max_turns > 1:
        role, text = root[0]
        root = [(role, _clip_tokens(text, max_tokens // 2))]
        max_turns -= 1
        max_tokens -= estimate_text_tokens(root[0][1])
    else:
        turns = root + turns
        root = []
    kept: list[tuple[str, str]] = []
    total = 0
    for role, text in reversed(turns[-max_turns:]):
        tokens = estimate_text_tokens(text)
        if total + tokens > max_tokens:
            if not kept:  # the newest turn alone is too long: keep its start
                kept.append((role, _clip_tokens(text, max_tokens)))
            break
        kept.append((role, text))
        total += tokens
    return tuple(root + kept[::-1])


def _clip_tokens(text: str, max_tokens: int) -> str:
    """The start of ``text``, about ``max_tokens`` long (all of it when it fits)."""
    tokens = estimate_text_tokens(text)
    if tokens <= max_tokens:
        return text
    return text[: max(1, len(text) * max_tokens // max(tokens, 1))]


def thread_messages(
    client: WebClient,
    channel: str,
    thread_ts: str,
    *,
    before_ts: str,
    page: int = REPLIES_PAGE,
    max_pages: int = REPLIES_MAX_PAGES,
    keep: int = REPLIES_KEPT,
) -> list[Mapping[str, Any]]:
    """The thread's root and its newest ``keep`` replies before ``before_ts``, oldest first.

    ``conversations.replies`` pages from the root forward (later pages leave the root out), so a
    long thread is paged through until ``before_ts`` or its end, keeping only the newest replies;
    one page is one call. Past ``max_pages`` the newest replies read so far are used."""
    root: Mapping[str, Any] | None = None
    newest: deque[Mapping[str, Any]] = deque(maxlen=keep)
    cursor = ""
    for _ in range(max_pages):
        response = client.conversations_replies(channel=channel, ts=thread_ts, limit=page, cursor=cursor or None)
        done = False
        for message in response.get("messages") or []:
            ts = str(message.get("ts", ""))
            if _ts_key(ts) >= _ts_key(before_ts):
                done = True
            elif ts == thread_ts:
                root = message
            else:
                newest.append(message)
        cursor = str((response.get("response_metadata") or {}).get("next_cursor") or "")
        if done or not cursor:
            break
    else:
        _log.warning("slack.thread_too_long", channel=channel, thread_ts=thread_ts, pages=max_pages)
    return ([root] if root is not None else []) + list(newest)


def asker_team(event: Mapping[str, Any], workspace: str) -> str:
    """The team of the person who wrote ``event``: its ``user_team`` (or ``team``) when that is a
    workspace ID (a Slack Connect guest's own workspace), else ``workspace``."""
    for key in ("user_team", "team"):
        team = str(event.get(key) or "")
        if team.startswith("T"):
            return team
    return workspace


def _view_citations(answer: Answer) -> tuple[CitationTuple, ...]:
    return tuple((c.number, c.title, c.section, c.url, c.path) for c in answer.citations)


def _doc_links(answer: Answer) -> list[tuple[str, str]]:
    return [(c.title + (f" › {c.section}" if c.section else ""), c.url or c.path) for c in answer.citations]


def _context_block(text: str) -> Block:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": text}]}


def _with_note(blocks: list[Block], note: str | None) -> list[Block]:
    """``blocks`` with a context note on top, when it fits Slack's limits."""
    if not note:
        return blocks
    noted = [_context_block(note), *blocks]
    if len(noted) <= MAX_BLOCKS and blocks_text_length(noted) <= MESSAGE_BLOCKS_TEXT_BUDGET:
        return noted
    return blocks


def fresh_answer_blocks(question: str, thread_ts: str | None) -> list[Block]:
    """The ephemeral offer after 👎 on a cached answer: a button that asks again, bypassing the cache."""
    return [
        {
            "type": "section",
            "text": {"type": "mrkdwn", "text": "That answer came from the cache. Want me to work it out afresh?"},
        },
        {
            "type": "actions",
            "block_id": FRESH_BLOCK_PREFIX + (thread_ts or ""),
            "elements": [
                {
                    "type": "button",
                    "text": {"type": "plain_text", "text": "Get a fresh answer"},
                    "action_id": ACTION_FRESH_ANSWER,
                    "value": question[:2000],
                }
            ],
        },
    ]


def home_view() -> dict[str, Any]:
    return {
        "type": "home",
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": "*Penny* answers questions about the team's docs."}},
            {"type": "section", "text": {"type": "mrkdwn", "text": HELP_TEXT}},
            _context_block("DM me, or mention me in a channel. `/cost` shows what the answers cost."),
        ],
    }


# ---------------------------------------------------------------------------------------------
# Listeners


@dataclass(frozen=True, slots=True)
class _Admins:
    """Penny's own admins (``PENNY_ADMIN_USER_IDS``), in the shape :func:`bot.cost.is_admin` reads."""

    admin_user_ids: frozenset[str]


@dataclass(frozen=True)
class _Target:
    """Where one question came from and where its answer goes."""

    workspace_id: str
    channel: str
    user: str
    message_ts: str | None  # the user's message (for the reaction); None for a button click
    thread_ts: str | None  # the thread to answer in; None = top level (a DM)
    user_team: str | None = None  # the asker's team when it is not the workspace's (Slack Connect)


class _Writing:
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


class _Penny:
    def __init__(
        self,
        *,
        answerer: Answerer,
        store: Store,
        on_feedback: FeedbackCallback | None,
        costs: PennySettings,
        admins: _Admins,
        wall: Callable[[], float],
        clock: Clock,
        stream_pacing: StreamPacing,
        working: WorkingIndicator,
        thread_replies: ThreadReplies,
        stream_starts: StreamStarts,
        sleep: Callable[[float], None],
        doc_pages: Callable[[], Sequence[DocPage]] | None,
    ) -> None:
        self.answerer = answerer
        self.store = store
        self.on_feedback = on_feedback
        self.costs = costs
        self.admins = admins
        self.wall = wall
        self.clock = clock
        self.stream_pacing = stream_pacing
        self.working = working
        self.thread_replies = thread_replies
        self.stream_starts = stream_starts
        self.sleep = sleep
        self.doc_pages = doc_pages
        self.asked = AskedPages(store)
        self.prompts_off = False  # Slack refused suggested prompts for good (not an agent app)
        self._prompts: dict[str, tuple[list[dict[str, str]], float]] = {}  # workspace -> (prompts, until)
        self._prompted: dict[str, float] = {}  # DM channel -> prompts set there until
        self._prompts_lock = threading.Lock()
        self.streaming = True  # off for good after an error in STREAMING_UNAVAILABLE
        # (workspace, user) -> (is a Slack admin, known until): every Home open and /cost team
        # would otherwise ask users.info again.
        self._slack_admins: dict[tuple[str, str], tuple[bool, float]] = {}
        self._slack_admins_lock = threading.Lock()

    # -- events --------------------------------------------------------------------------

    def on_mention(self, body: dict[str, Any], event: dict[str, Any], context: BoltContext, client: WebClient) -> None:
        try:
            if event.get("bot_id") or self._from_penny(event, context):
                return
            ts = str(event.get("ts", ""))
            thread_ts = str(event.get("thread_ts") or ts)
            self._handle(body, event, context, client, thread_ts=thread_ts, with_history=thread_ts != ts)
        except Exception as exc:
            _log.exception("slack.mention_failed", event_id=body.get("event_id"), error=exc)

    def on_message(self, body: dict[str, Any], event: dict[str, Any], context: BoltContext, client: WebClient) -> None:
        try:
            subtype = event.get("subtype")
            if (subtype is not None and subtype not in _USER_SUBTYPES) or event.get("bot_id"):
                return
            if not event.get("user") or self._from_penny(event, context):
                return
            ts = str(event.get("ts", ""))
            thread_ts = event.get("thread_ts")
            in_thread = bool(thread_ts) and thread_ts != ts
            if event.get("channel_type") == "im":
                self._handle(
                    body,
                    event,
                    context,
                    client,
                    thread_ts=str(thread_ts) if in_thread else None,
                    with_history=in_thread,
                )
                return
            if not in_thread:
                return  # a channel message without a mention is not for Penny
            mentioned = set(_MENTION.findall(str(event.get("text", ""))))
            if context.bot_user_id in mentioned:
                return  # the app_mention copy of this message answers it
            if mentioned or self.thread_replies == "mentions":
                return  # addressed to someone else in the thread, or Penny answers only mentions
            workspace = self._workspace(body, context)
            if not self._knows_thread(workspace, str(event.get("channel", "")), str(thread_ts)):
                return
            addressing = classify_thread_reply(
                str(event.get("text") or ""), bot_user_id=context.bot_user_id, mode=self.thread_replies
            )
            where = {"event_id": body.get("event_id"), "channel": event.get("channel"), "thread_ts": thread_ts}
            if not addressing.for_penny:
                _log.info("slack.thread_reply_skipped", reason=addressing.reason, **where)
                return
            _log.info("slack.thread_reply_answered", reason=addressing.reason, **where)
            self._handle(body, event, context, client, thread_ts=str(thread_ts), with_history=True)
        except Exception as exc:
            _log.exception("slack.message_failed", event_id=body.get("event_id"), error=exc)

    def on_home_opened(self, body: dict[str, Any], event: dict[str, Any], context: BoltContext,
                       client: WebClient) -> None:
        """The Home tab: publish the viewer's cost dashboard (and the team's, for admins), fresh on
        every open. The Messages tab (Penny's agent DM): set suggested prompts on it."""
        if event.get("tab") == "messages" and event.get("channel"):
            self._suggest_in_dm(client, self._workspace(body, context), str(event["channel"]))
            return
        if event.get("tab") != "home" or not event.get("user"):
            return
        user = str(event["user"])
        try:
            workspace = self._workspace(body, context)
            own, team = self._reports(workspace, user, team=self._is_admin(client, workspace, user))
            view = cost_home_view(own, team)
        except Exception as exc:  # the store is down: the plain home tab still explains Penny
            _log.warning("slack.home_report_failed", error=exc)
            view = home_view()
        try:
            client.views_publish(user_id=user, view=view)
        except Exception as exc:
            _log.warning("slack.home_failed", error=exc)

    # -- agent surfaces ------------------------------------------------------------------

    def on_thread_started(self, body: dict[str, Any], payload: dict[str, Any], context: BoltContext, say: Say,
                          set_suggested_prompts: SetSuggestedPrompts, save_thread_context: SaveThreadContext) -> None:
        """An assistant thread was opened: keep its context, greet, and suggest prompts (once per event)."""
        try:
            thread = payload.get("assistant_thread") or {}
            workspace = self._workspace(body, context)
            request_id = "slack:" + str(body.get("event_id") or "")
            if not body.get("event_id") or not self._claim(workspace, request_id):
                return
            with self._handling(workspace, request_id):
                if thread.get("context"):
                    save_thread_context(thread["context"])
                key = f"{workspace}:{thread.get('channel_id')}:{thread.get('thread_ts')}"
                # Known at once, not with the event's completion: the first question may come right away.
                try:
                    self.store.record_put(ASSISTANT_THREADS_KIND, key, "new", ANSWER_TTL_S)
                except StoreError as exc:  # its questions are answered as DM thread replies, untitled
                    _log.warning("slack.remember_failed", kind=ASSISTANT_THREADS_KIND, error=exc)
                say(text=GREETING)
                prompts = self._suggestions(workspace)
                if prompts:
                    set_suggested_prompts(prompts=prompts, title=PROMPTS_TITLE)
        except Exception as exc:
            _log.exception("slack.thread_started_failed", event_id=body.get("event_id"), error=exc)

    def in_assistant_thread(self, body: dict[str, Any]) -> bool:
        """Listener matcher: the message is in an assistant thread Penny greeted."""
        event = body.get("event") or {}
        key = f"{body.get('team_id')}:{event.get('channel')}:{event.get('thread_ts')}"
        try:
            return self.store.record_get(ASSISTANT_THREADS_KIND, key) is not None
        except StoreError as exc:
            _log.warning("slack.thread_lookup_failed", error=exc)
            return False  # answered as a DM thread reply: the same answer, without a title

    def on_assistant_question(self, body: dict[str, Any], event: dict[str, Any], context: BoltContext,
                              client: WebClient, set_title: SetTitle) -> None:
        """A question in an assistant thread: answered like a DM thread reply; the first one titles it."""
        try:
            if event.get("subtype") is not None or not event.get("user") or self._from_penny(event, context):
                return
            key = f"{self._workspace(body, context)}:{event.get('channel')}:{event.get('thread_ts')}"

            def title(question: str) -> None:
                try:
                    if self.store.record_get(ASSISTANT_THREADS_KIND, key) == "new":
                        set_title(thread_title(question))
                        self._remember(ASSISTANT_THREADS_KIND, key, "titled")
                except Exception as exc:  # a thread without a title still gets its answer
                    _log.warning("slack.title_failed", error=exc)

            self._handle(body, event, context, client, thread_ts=str(event["thread_ts"]), with_history=True,
                         on_question=title)
        except Exception as exc:
            _log.exception("slack.assistant_question_failed", event_id=body.get("event_id"), error=exc)

    def on_app_context_changed(self, body: dict[str, Any], event: dict[str, Any], context: BoltContext) -> None:
        """What the user looks at while Penny's agent view is open: kept for the user, no Slack call."""
        user = str(event.get("user") or context.user_id or "")
        if not user:
            return
        try:
            self.store.record_put(CONTEXT_KIND, f"user:{self._workspace(body, context)}:{user}",
                                 json.dumps(event.get("context") or {}), CONTEXT_TTL_S)
        except StoreError as exc:
            _log.warning("slack.context_not_kept", error=exc)

    def _suggestions(self, workspace: str) -> list[dict[str, str]]:
        """The suggested prompts for ``workspace``, worked out at most every :data:`PROMPTS_TTL_S`."""
        now = self.clock()
        with self._prompts_lock:
            known = self._prompts.get(workspace)
        if known is not None and now < known[1]:
            return known[0]
        try:
            pages = list(self.doc_pages()) if self.doc_pages is not None else []
        except Exception as exc:
            _log.warning("slack.doc_pages_failed", error=exc)
            pages = []
        prompts = suggested_prompts(self.asked.top(workspace), pages)
        with self._prompts_lock:
            self._prompts[workspace] = (prompts, now + PROMPTS_TTL_S)
        return prompts

    def _suggest_in_dm(self, client: WebClient, workspace: str, channel: str) -> None:
        """Suggested prompts at the top of Penny's DM (the agent messaging experience)."""
        now = self.clock()
        with self._prompts_lock:
            if self.prompts_off or now < self._prompted.get(channel, 0.0):
                return
            if len(self._prompted) >= _ADMIN_LOOKUPS_KEPT:
                self._prompted = {c: t for c, t in self._prompted.items() if now < t}
            self._prompted[channel] = now + PROMPTS_TTL_S
        prompts = self._suggestions(workspace)
        if not prompts:
            return
        try:
            client.assistant_threads_setSuggestedPrompts(channel_id=channel, prompts=prompts, title=PROMPTS_TITLE)
        except SlackApiError as exc:
            error = str(exc.response.get("error") or "")
            with self._prompts_lock:
                self._prompted.pop(channel, None)
                first = error in PROMPTS_UNAVAILABLE and not self.prompts_off
                self.prompts_off = self.prompts_off or error in PROMPTS_UNAVAILABLE
            if first:
                _log.warning("slack.prompts_off", error=error,
                             note="the app has no agent view (manifest.yml features.agent_view) or scope "
                                  "assistant:write; no suggested prompts until Penny restarts")
            else:
                _log.warning("slack.prompts_failed", error=error)
        except Exception as exc:
            with self._prompts_lock:
                self._prompted.pop(channel, None)
            _log.warning("slack.prompts_failed", error=exc)

    # -- the /cost command ---------------------------------------------------------------

    def on_cost(self, ack: Ack, command: dict[str, Any], respond: Respond, client: WebClient) -> None:
        """``/cost`` (own numbers), ``/cost team`` (admins), ``/cost help``; ack first, then compute."""
        ack()
        user = str(command.get("user_id") or "")
        workspace = str(command.get("team_id") or "")
        words = str(command.get("text") or "").strip().lower().split()
        arg = words[0] if words else ""
        try:
            if len(words) > 1 or arg not in ("", "me", "team"):  # help, or anything unknown
                blocks = help_blocks()
            elif arg == "team":
                admin = self._is_admin(client, workspace, user)
                own, team = self._reports(workspace, user, team=admin)
                blocks = team_blocks(team) if team is not None else team_refusal_blocks(own)
            else:
                own, _ = self._reports(workspace, user, team=False)
                blocks = cost_blocks(own)
        except Exception as exc:
            _log.exception("slack.cost_failed", error=exc)
            blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": FAILED_TEXT}}]
        try:
            if command.get("response_url"):
                respond(blocks=blocks, text=message_text(blocks), response_type="ephemeral")
            else:
                client.chat_postEphemeral(
                    channel=str(command.get("channel_id") or ""), user=user, blocks=blocks, text=message_text(blocks)
                )
        except Exception as exc:
            _log.warning("slack.cost_reply_failed", error=exc)

    def _reports(self, workspace: str, user: str, *, team: bool) -> tuple[CostReport, TeamReport | None]:
        now = self.wall()
        own = cost_report(self.store, self.costs, workspace, user, now)
        return own, team_report(self.store, self.costs, workspace, now) if team else None

    def _is_admin(self, client: WebClient, workspace: str, user: str) -> bool:
        """A Penny admin, or a Slack workspace admin or owner (``users.info``, whose answer is kept
        :data:`ADMIN_LOOKUP_TTL_S`: a demoted admin sees team spend that much longer at most)."""
        if not user:
            return False
        if is_admin(user, self.admins, None):
            return True  # a Penny admin: no Slack call needed
        key, now = (workspace, user), self.clock()
        with self._slack_admins_lock:
            known = self._slack_admins.get(key)
        if known is not None and now < known[1]:
            return known[0]
        try:
            info = client.users_info(user=user).data
        except Exception as exc:  # unknown means no, this time: a failed lookup is not kept
            _log.warning("slack.users_info_failed", error=exc)
            return False
        admin = isinstance(info, dict) and is_admin(user, self.admins, info)
        with self._slack_admins_lock:
            if len(self._slack_admins) >= _ADMIN_LOOKUPS_KEPT:
                self._slack_admins = {k: v for k, v in self._slack_admins.items() if now < v[1]}
                if len(self._slack_admins) >= _ADMIN_LOOKUPS_KEPT:
                    self._slack_admins.clear()
            self._slack_admins[key] = (admin, now + ADMIN_LOOKUP_TTL_S)
        return admin

    # -- actions -------------------------------------------------------------------------

    def on_feedback_buttons(self, ack: Ack, body: dict[str, Any], client: WebClient) -> None:
        """Slack's native feedback buttons: the value says which (``up:`` / ``down:``) and of what."""
        ack()
        value = str(((body.get("actions") or [{}])[0]).get("value") or "")
        vote, _, entry_id = value.partition(":")
        if vote in ("up", "down"):
            self._feedback(body, client, up=vote == "up", entry_id=entry_id)

    def on_feedback_up(self, ack: Ack, body: dict[str, Any], client: WebClient) -> None:
        ack()
        self._feedback(body, client, up=True, entry_id=str(((body.get("actions") or [{}])[0]).get("value") or ""))

    def on_feedback_down(self, ack: Ack, body: dict[str, Any], client: WebClient) -> None:
        ack()
        self._feedback(body, client, up=False, entry_id=str(((body.get("actions") or [{}])[0]).get("value") or ""))

    def on_feedback_reason(self, ack: Ack, body: dict[str, Any], client: WebClient) -> None:
        """"Say what was wrong" under a 👎: the short form, in a modal (within the click's 3 s)."""
        ack()
        try:
            value = str(((body.get("actions") or [{}])[0]).get("value") or "")
            client.views_open(trigger_id=str(body.get("trigger_id") or ""), view=reason_modal(value))
        except Exception as exc:
            _log.warning("slack.reason_form_failed", error=exc)

    def on_feedback_reason_sent(self, ack: Ack, body: dict[str, Any], view: dict[str, Any],
                                client: WebClient) -> None:
        """The 👎 reason submitted: stored with the vote, and the voter told so."""
        ack()
        try:
            ref = json.loads(str(view.get("private_metadata") or "{}"))
            reason = reason_of(view)
            user = str(body["user"]["id"])
            workspace = str((body.get("team") or {}).get("id") or body["user"].get("team_id") or "")
            channel, message_ts, entry_id = str(ref.get("c") or ""), str(ref.get("m") or ""), str(ref.get("e") or "")
            if not reason or not entry_id:
                return
            raw = self.store.record_get(ANSWERS_KIND, f"{workspace}:{channel}:{message_ts}")
            record = json.loads(raw) if raw else {}
            pages = record.get("pages", []) if isinstance(record, dict) else []
            record_feedback(self.store, workspace, entry_id, user, up=False, pages=pages, at=self.wall(), reason=reason)
            if channel:
                thread_ts = str(record.get("thread_ts") or "") if isinstance(record, dict) else ""
                kwargs: dict[str, Any] = {"thread_ts": thread_ts} if thread_ts else {}
                client.chat_postEphemeral(channel=channel, user=user, text="Thanks, your note is saved with your 👎.",
                                          **kwargs)
        except Exception as exc:
            _log.exception("slack.reason_failed", error=exc)

    def on_fresh_answer(self, ack: Ack, body: dict[str, Any], client: WebClient, respond: Respond) -> None:
        ack()
        try:
            action = body["actions"][0]
            question = str(action.get("value") or "").strip()
            block_id = str(action.get("block_id", ""))
            thread_ts = block_id[len(FRESH_BLOCK_PREFIX) :] if block_id.startswith(FRESH_BLOCK_PREFIX) else ""
            user = str(body["user"]["id"])
            channel = str((body.get("channel") or {}).get("id") or (body.get("container") or {}).get("channel_id"))
            workspace = str((body.get("team") or {}).get("id") or body["user"].get("team_id") or "")
            request_id = "slack:fresh:" + str(action.get("action_ts") or body.get("trigger_id"))
            if not question or not self._claim(workspace, request_id):
                return
            with self._handling(workspace, request_id):
                if body.get("response_url"):
                    try:
                        respond(delete_original=True)  # the offer is used up
                    except Exception as exc:
                        _log.warning("slack.fresh_offer_delete_failed", error=exc)
                target = _Target(workspace, channel, user, None, thread_ts or None,
                                 str(body["user"].get("team_id") or workspace))
                self._ask(client, target, question, request_id=request_id, fresh=True)
        except Exception as exc:
            _log.exception("slack.fresh_answer_failed", error=exc)

    def on_error(self, error: Exception, body: dict[str, Any]) -> None:
        _log.error("slack.listener_error", event_id=body.get("event_id"), error=error)

    # -- the work ------------------------------------------------------------------------

    def _handle(
        self,
        body: dict[str, Any],
        event: dict[str, Any],
        context: BoltContext,
        client: WebClient,
        *,
        thread_ts: str | None,
        with_history: bool,
        on_question: Callable[[str], None] | None = None,
    ) -> None:
        workspace = self._workspace(body, context)
        event_id = str(body.get("event_id") or "")
        if not event_id or not event.get("user"):
            return
        request_id = "slack:" + event_id
        if not self._claim(workspace, request_id):
            return
        with self._handling(workspace, request_id):
            target = _Target(workspace, str(event.get("channel", "")), str(event["user"]), str(event["ts"]), thread_ts,
                             asker_team(event, workspace))
            text = strip_mentions(str(event.get("text") or ""), context.bot_user_id)
            if not text:
                self._post(client, target, [[{"type": "section", "text": {"type": "mrkdwn", "text": HELP_TEXT}}]])
                return
            if on_question is not None:
                on_question(text)
            history: tuple[tuple[str, str], ...] = ()
            if with_history and thread_ts:
                history = self._history(client, target, thread_ts, context)
            self._ask(client, target, text, request_id=event_id, history=history)

    def _ask(
        self,
        client: WebClient,
        target: _Target,
        text: str,
        *,
        request_id: str,
        history: tuple[tuple[str, str], ...] = (),
        fresh: bool = False,
    ) -> None:
        question_text, truncated = clip_question(text)
        note = TRUNCATED_NOTE if truncated else None
        working = self.working.show(client, target.channel, target.message_ts, thread_ts=target.thread_ts)
        try:
            stream = self._answer_stream(client, target)
            question = Question(
                text=question_text,
                user_id=target.user,
                workspace_id=target.workspace_id,
                request_id=request_id,
                channel_id=target.channel,
                history=history,
                fresh=fresh,
                stream=_Writing(stream, working) if stream is not None else None,
            )
            try:
                answer = self.answerer.answer(question)
            except Exception as exc:
                _log.exception("slack.answerer_failed", request_id=request_id, error=exc)
                answer = Answer(kind="error", text=FAILED_TEXT, refusal="upstream_error")
            streamed_ts = self._end_stream(client, target, stream)
            self._deliver(client, target, answer, question_text, note, streamed_ts)
            working.answered()  # no 👀 or status from now on, even while the event's records are still stored
        finally:
            self._after_handling(working)

    @staticmethod
    def _after_handling(working: Working) -> None:
        """Take the 👀 off once everything is stored (see :meth:`_handling`), or now."""
        handling = _HANDLING.get()
        if handling is not None:
            handling.then.append(working.done)
        else:
            working.done()

    def _answer_stream(self, client: WebClient, target: _Target) -> SlackAnswerStream | None:
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

    def _end_stream(self, client: WebClient, target: _Target, stream: SlackAnswerStream | None) -> str | None:
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
        if streamed_ts is not None and not stream.stopped and self._delete(client, target, streamed_ts):
            return None
        return streamed_ts

    def _deliver(
        self,
        client: WebClient,
        target: _Target,
        answer: Answer,
        question: str,
        note: str | None,
        streamed_ts: str | None = None,
    ) -> None:
        """Post ``answer``; ``streamed_ts`` is the message it was streamed into, replaced by the
        answer's first message (or deleted, for a refusal)."""
        if answer.kind in ("refused", "error"):
            if streamed_ts is not None:
                self._delete(client, target, streamed_ts)
            kind = answer.refusal or "upstream_error"
            blocks = _with_note(refusal_blocks(kind, answer.text, _doc_links(answer)), note)
            kwargs: dict[str, Any] = {"thread_ts": target.thread_ts} if target.thread_ts else {}
            client.chat_postEphemeral(
                channel=target.channel, user=target.user, blocks=blocks, text=message_text(blocks), **kwargs
            )
            return
        if answer.kind == "no_match":
            messages = [refusal_blocks("no_match", answer.text, _doc_links(answer))]
            texts = [message_text(messages[0])]
        else:
            view = AnswerView(
                text=answer.text,
                citations=_view_citations(answer),
                footer=answer.footer,
                entry_id=answer.entry_id,
                cached=answer.cached,
            )
            messages = answer_blocks(view)
            texts = [fallback_text(answer.text)] if len(messages) == 1 else [message_text(m) for m in messages]
        messages[0] = _with_note(messages[0], note)
        last_ts = self._post(client, target, messages, texts, replace_ts=streamed_ts)
        if answer.kind in ("answer", "extractive") and answer.citations:
            first = answer.citations[0]
            self.asked.add(target.workspace_id, first.path, first.title or first.path)
        if answer.entry_id is not None and last_ts:
            record = {"question": question, "cached": answer.cached, "thread_ts": target.thread_ts or "",
                      "pages": [c.path for c in answer.citations]}
            self._remember(ANSWERS_KIND, f"{target.workspace_id}:{target.channel}:{last_ts}", json.dumps(record))

    def _post(
        self,
        client: WebClient,
        target: _Target,
        messages: list[list[Block]],
        texts: Sequence[str] | None = None,
        *,
        replace_ts: str | None = None,
    ) -> str | None:
        """Post ``messages`` in order (in the thread, if any); the last message's ts. With
        ``replace_ts`` (a streamed message), the first message replaces that one instead."""
        last_ts: str | None = None
        for index, blocks in enumerate(messages):
            text = texts[index] if texts is not None and index < len(texts) else message_text(blocks)
            if index == 0 and replace_ts is not None and self._replace(client, target, replace_ts, blocks, text):
                last_ts = replace_ts
                continue
            kwargs: dict[str, Any] = {"thread_ts": target.thread_ts} if target.thread_ts else {}
            response = client.chat_postMessage(
                channel=target.channel, blocks=blocks, text=text, unfurl_links=False, unfurl_media=False, **kwargs
            )
            last_ts = str(response.get("ts") or "") or None
        if target.thread_ts:
            self._remember(THREADS_KIND, f"{target.workspace_id}:{target.channel}:{target.thread_ts}", "1")
        return last_ts

    def _replace(self, client: WebClient, target: _Target, ts: str, blocks: list[Block], text: str) -> bool:
        """Turn the streamed message ``ts`` into the rendered one. False when it could not be
        updated: it is deleted (as far as Slack lets it be) and the caller posts the answer instead."""
        try:
            client.chat_update(channel=target.channel, ts=ts, blocks=blocks, text=text)
            return True
        except Exception as exc:
            _log.warning("slack.stream_update_failed", channel=target.channel, error=exc)
        self._delete(client, target, ts)
        return False

    @staticmethod
    def _delete(client: WebClient, target: _Target, ts: str) -> bool:
        try:
            client.chat_delete(channel=target.channel, ts=ts)
            return True
        except Exception as exc:  # the partial answer stays; the full one still goes out
            _log.warning("slack.stream_delete_failed", channel=target.channel, error=exc)
            return False

    def _feedback(self, body: dict[str, Any], client: WebClient, *, up: bool, entry_id: str) -> None:
        """Store a vote, tell the voter it counted, and after a 👎 offer to say why (and, on a
        cached answer, a fresh one)."""
        try:
            user = str(body["user"]["id"])
            channel = str((body.get("channel") or {}).get("id") or (body.get("container") or {}).get("channel_id"))
            message_ts = str((body.get("container") or {}).get("message_ts") or (body.get("message") or {}).get("ts"))
            workspace = str((body.get("team") or {}).get("id") or body["user"].get("team_id") or "")
            raw = self.store.record_get(ANSWERS_KIND, f"{workspace}:{channel}:{message_ts}")
            record = json.loads(raw) if raw else None
            if entry_id:
                pages = record.get("pages", []) if isinstance(record, dict) else []
                try:
                    record_feedback(self.store, workspace, entry_id, user, up=up, pages=pages, at=self.wall())
                except StoreError as exc:
                    _log.warning("slack.feedback_not_stored", error=exc)
            if self.on_feedback is not None and entry_id:
                try:
                    self.on_feedback(user, entry_id, up)
                except Exception as exc:  # losing a vote must not lose the fresh-answer offer
                    _log.exception("slack.feedback_callback_failed", error=exc)
            thread_ts = str(record.get("thread_ts") or "") if isinstance(record, dict) else ""
            fresh = (fresh_answer_blocks(str(record["question"]), thread_ts or None)
                     if not up and isinstance(record, dict) and record.get("cached") and record.get("question")
                     else None)
            ref = json.dumps({"e": entry_id, "c": channel, "m": message_ts}) if entry_id else None
            blocks = feedback_ack_blocks(up=up, reason_value=ref if ref and len(ref) <= 2000 else None, fresh=fresh)
            kwargs: dict[str, Any] = {"thread_ts": thread_ts} if thread_ts else {}
            client.chat_postEphemeral(channel=channel, user=user, blocks=blocks, text=message_text(blocks), **kwargs)
        except Exception as exc:
            _log.exception("slack.feedback_failed", error=exc)

    # -- Slack and store helpers ---------------------------------------------------------

    def _history(
        self, client: WebClient, target: _Target, thread_ts: str, context: BoltContext
    ) -> tuple[tuple[str, str], ...]:
        before_ts = target.message_ts or "9999999999.999999"
        try:
            messages = thread_messages(client, target.channel, thread_ts, before_ts=before_ts)
        except Exception as exc:
            _log.warning("slack.replies_failed", channel=target.channel, error=exc)
            return ()
        return thread_history(
            messages,
            before_ts=before_ts,
            bot_user_id=context.bot_user_id,
            bot_id=context.bot_id,
            root_ts=thread_ts,
        )

    @staticmethod
    def _from_penny(event: Mapping[str, Any], context: BoltContext) -> bool:
        return bool(context.bot_user_id) and event.get("user") == context.bot_user_id

    @staticmethod
    def _workspace(body: Mapping[str, Any], context: BoltContext) -> str:
        return str(body.get("team_id") or context.team_id or "")

    def _claim(self, workspace: str, request_id: str) -> bool:
        try:
            return self.store.claim_request(workspace, request_id, EVENT_CLAIM_TTL_S).state == "claimed"
        except StoreError as exc:
            # Without the store nothing can be deduplicated; answering once more beats not answering.
            _log.warning("slack.claim_failed", request_id=request_id, error=exc)
            return True

    def _complete(self, workspace: str, request_id: str, remembered: Sequence[Record] = ()) -> None:
        """Mark the event handled, and store what was remembered while handling it, in one step."""
        try:
            self.store.complete_request(workspace, request_id, '{"handled": true}', EVENT_DONE_TTL_S,
                                        records=remembered)
        except StoreError as exc:
            _log.warning("slack.complete_failed", request_id=request_id, error=exc)

    @contextmanager
    def _handling(self, workspace: str, request_id: str) -> Iterator[None]:
        """Around the handling of one claimed event: what it remembers (the thread it answered in,
        the answer it posted) is written with its completion, one store write instead of three;
        then the 👀 comes off, so a follow-up sent after that always finds the thread known."""
        handling = _Handling()
        token = _HANDLING.set(handling)
        try:
            yield
        finally:
            _HANDLING.reset(token)
            self._complete(workspace, request_id, handling.remembered)
            for then in handling.then:
                then()

    def _knows_thread(self, workspace: str, channel: str, thread_ts: str) -> bool:
        try:
            return self.store.record_get(THREADS_KIND, f"{workspace}:{channel}:{thread_ts}") is not None
        except StoreError as exc:
            _log.warning("slack.thread_lookup_failed", error=exc)
            return False

    def _remember(self, kind: str, key: str, value: str) -> None:
        ttl = THREAD_TTL_S if kind == THREADS_KIND else ANSWER_TTL_S
        handling = _HANDLING.get()
        if handling is not None:  # written with the event's completion
            handling.remembered.append(Record(kind, key, value, ttl))
            return
        try:
            self.store.record_put(kind, key, value, ttl)
        except StoreError as exc:
            _log.warning("slack.remember_failed", kind=kind, error=exc)
