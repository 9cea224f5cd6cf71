"""Penny's Slack app (Bolt for Python): :func:`build_app` wires the listeners of each feature to
Bolt. The listeners are thin: they parse an event, ask a service, and post what
:mod:`bot.slack.render` builds.

Where things are:

- :mod:`bot.slack.middleware`: what runs around every listener: only the installed workspace is
  served, only what people write is heard (and a mention added by a recent edit), each message is
  answered once;
- :mod:`bot.slack.answers`: mentions, DMs, thread replies and "Get a fresh answer", answered
  through :mod:`bot.slack.delivery` (streaming, posting, the records of what Penny posted);
- :mod:`bot.slack.assistant`: suggested prompts and assistant threads (Slack's agent surfaces);
- :mod:`bot.slack.feedback`: the feedback buttons, the 👎 reason form, the fresh-answer offer;
- :mod:`bot.slack.cost_command` and :mod:`bot.slack.home`: ``/cost`` and the App Home;
- :mod:`bot.slack.conversation`: what Penny reads of a payload and of a thread (pure).

Every Web API call goes through a client with the SDK's retry handlers for Slack's rate limits
(HTTP 429, honouring ``Retry-After``) and for connection errors (:func:`make_client`; a post or
append only when it never reached Slack, :class:`ConnectionRetry`). In an HTTP
worker, each listener's calls, those retries' waits included, lend its turn (``WorkTurns``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

from slack_bolt import App, Assistant, BoltRequest, BoltResponse, Respond
from slack_bolt.middleware import Middleware
from slack_sdk import WebClient
from slack_sdk.http_retry import (
    ConnectionErrorRetryHandler,
    HttpRequest,
    HttpResponse,
    RateLimitErrorRetryHandler,
    RetryState,
)
from slack_sdk.web import SlackResponse
from slack_sdk.webhook import WebhookResponse

from bot.answer_types import Answerer
from bot.proxy.keys import KeyRing
from bot.settings import ThreadReplies
from bot.slack.agent import ACTION_FEEDBACK_REASON, REASON_CALLBACK, AskedPages, DocPage, StoreThreadContext
from bot.slack.answers import Answers, in_dm
from bot.slack.assistant import AssistantThreads, SuggestedPrompts
from bot.slack.cost_command import Admins, CostCommand
from bot.slack.delivery import Delivery
from bot.slack.feedback import ACTION_FRESH_ANSWER, Feedback, FeedbackCallback
from bot.slack.home import Home
from bot.slack.middleware import FromPeopleOnly, InstalledWorkspaceOnly, Once, RateLimitNotices, WellFormedOnly
from bot.slack.pacing import AcksFirst
from bot.slack.render import ACTION_FEEDBACK, ACTION_FEEDBACK_DOWN, ACTION_FEEDBACK_UP
from bot.slack.startup import SlackInstallation
from bot.slack.stream import StreamPacing, StreamStarts
from bot.slack.web_outcome import never_sent
from bot.slack.working import WorkingIndicator
from proxy_core import Accounts, Clock, Store, get_logger

__all__ = [
    "BOT_EVENTS",
    "BOT_SCOPES",
    "NOT_REPEATABLE",
    "ConnectionRetry",
    "SlackSettings",
    "build_app",
    "make_client",
    "socket_mode_handler",
]

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

_log = get_logger()


@dataclass(frozen=True, slots=True)
class SlackSettings:
    """How Penny talks to Slack. Tokens and the signing secret never appear in a repr."""

    bot_token: str = field(repr=False)
    signing_secret: str = field(repr=False)
    app_token: str | None = field(default=None, repr=False)  # xapp-…, for Socket Mode
    api_url: str | None = None  # overrides the Web API base URL (SLACK_API_URL)
    admin_user_ids: frozenset[str] = frozenset()
    thread_replies: ThreadReplies = "questions"  # which unmentioned thread replies are answered


def make_client(settings: SlackSettings, *, waiting: Callable[[], AbstractContextManager[object]] | None = None
                ) -> WebClient:
    """A WebClient that retries Slack's rate limits (honouring ``Retry-After``) and connection errors.
    With ``waiting``, each Web API call, its retries and their waits included, runs inside
    ``waiting()``: an HTTP worker's listener lends its turn while Slack answers (``WorkTurns``), so
    answers sleeping out a rate limit never hold every turn. :func:`build_app` gives each request's
    listeners a client like it (:class:`_WaitingClients`)."""
    handlers = [RateLimitErrorRetryHandler(max_retry_count=2), ConnectionRetry(max_retry_count=2)]
    options: dict[str, Any] = {"token": settings.bot_token, "retry_handlers": handlers}
    if settings.api_url:
        options["base_url"] = settings.api_url if settings.api_url.endswith("/") else settings.api_url + "/"
    return WebClient(**options) if waiting is None else _WaitingWebClient(waiting, **options)


# Web API methods that show something each time they are called: sent twice, it shows twice.
NOT_REPEATABLE: Final = frozenset({"chat.postMessage", "chat.postEphemeral", "chat.startStream", "chat.appendStream"})


class ConnectionRetry(ConnectionErrorRetryHandler):
    """The SDK's retry of a call whose connection failed, except for a :data:`NOT_REPEATABLE` one
    that may have reached Slack: a connection that drops once Slack has the request (reset, closed
    unanswered) leaves it posted, and a retry posted it again. Those are retried only when the
    connection was never made (refused, or no address for Slack's host)."""

    def _can_retry(self, *, state: RetryState, request: HttpRequest, response: HttpResponse | None = None,
                   error: Exception | None = None) -> bool:
        if not super()._can_retry(state=state, request=request, response=response, error=error):
            return False
        return urlsplit(request.url).path.rsplit("/", 1)[-1] not in NOT_REPEATABLE or never_sent(error)


class _WaitingWebClient(WebClient):
    """A WebClient whose every call (``api_call``, which each Web API method goes through) runs
    inside ``waiting()``."""

    def __init__(self, waiting: Callable[[], AbstractContextManager[object]], **options: Any) -> None:
        super().__init__(**options)
        self.waiting = waiting

    def api_call(self, *args: Any, **kwargs: Any) -> SlackResponse:
        with self.waiting():
            return super().api_call(*args, **kwargs)

    def __deepcopy__(self, memo: dict[int, object]) -> _WaitingWebClient:
        """Itself: Bolt deep-copies a request's context for its lazy listeners, and ``waiting`` lends
        this worker's turns, which a copy must share, not duplicate (its lock cannot be copied)."""
        return self


class _WaitingRespond(Respond):
    """Bolt's ``respond`` (a POST to the request's ``response_url``), inside ``waiting()``."""

    def __init__(self, waiting: Callable[[], AbstractContextManager[object]], **options: Any) -> None:
        super().__init__(**options)
        self._waiting = waiting

    def __call__(self, *args: Any, **kwargs: Any) -> WebhookResponse:
        with self._waiting():
            return super().__call__(*args, **kwargs)

    def __deepcopy__(self, memo: dict[int, object]) -> _WaitingRespond:
        """Itself, as :meth:`_WaitingWebClient.__deepcopy__`."""
        return self


class _WaitingClients(Middleware):
    """Gives each request's listeners a client whose calls run inside ``waiting()``, like the app's.

    Bolt builds a plain WebClient for each request from the app client's settings
    (``App._init_context``): that one, not the app's, is every listener's ``client`` and what
    ``say``, ``set_status`` and the assistant helpers call through. This replaces it with a copy
    that waits, and ``respond`` with one that waits too. It runs after Bolt's authorization and
    Penny's installation check, whose ``auth.test`` keep the plain client."""

    def __init__(self, waiting: Callable[[], AbstractContextManager[object]]) -> None:
        self._waiting = waiting

    def process(self, *, req: BoltRequest, resp: BoltResponse, next: Callable[[], BoltResponse]) -> BoltResponse:
        context = req.context
        plain = context.client
        context["client"] = _WaitingWebClient(
            self._waiting, token=plain.token, base_url=plain.base_url, timeout=plain.timeout, ssl=plain.ssl,
            proxy=plain.proxy, headers=dict(plain.headers), team_id=context.team_id, logger=plain.logger,
            retry_handlers=plain.retry_handlers,
        )
        if context.response_url is not None:  # Bolt gives respond only to requests with one
            context["respond"] = _WaitingRespond(self._waiting, response_url=context.response_url,
                                                 proxy=plain.proxy, ssl=plain.ssl)
        return next()


def build_app(
    *,
    answerer: Answerer,
    store: Store,
    settings: SlackSettings,
    client: WebClient | None = None,
    accounts: Accounts,
    on_feedback: FeedbackCallback | None = None,
    listener_executor: Executor | None = None,
    wall: Callable[[], float] = time.time,
    clock: Clock = time.monotonic,
    stream_pacing: StreamPacing | None = None,
    working: WorkingIndicator | None = None,
    installation: SlackInstallation | None = None,
    stream_starts: StreamStarts | None = None,
    sleep: Callable[[float], None] = time.sleep,
    doc_pages: Callable[[], Sequence[DocPage]] | None = None,
) -> App:
    """Penny's Bolt app. ``client`` defaults to :func:`make_client`; one made with ``waiting`` makes
    every listener's Slack calls (``client``, ``say``, ``respond``) run inside ``waiting()`` too.
    ``on_feedback`` gets 👍/👎 clicks.

    ``/cost`` and the App Home read spend, budgets and rate-limit headroom through ``accounts`` (the
    gateway's own, ``gateway.accounts``); admins are ``settings.admin_user_ids`` and Slack's own.
    Listeners run after the ack, on ``listener_executor`` (Bolt's own thread pool by default; tests
    pass theirs so they can wait for every listener to finish). ``wall`` is the clock that picks
    today and this month, and tells an edit made in time to be answered from a late one. ``clock``
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
    # Before any listener, on the ack's path: pure checks, no store write, no LLM call.
    app.use(InstalledWorkspaceOnly(installation))
    app.use(RateLimitNotices())
    app.use(WellFormedOnly())
    app.use(FromPeopleOnly(wall))
    if isinstance(web_client, _WaitingWebClient):  # listeners' Slack calls lend their turn too
        app.use(_WaitingClients(web_client.waiting))

    once = Once(store)
    asked = AskedPages(store)
    delivery = Delivery(store, asked, clock=clock, stream_pacing=stream_pacing or StreamPacing(),
                        stream_starts=stream_starts if stream_starts is not None else StreamStarts(store), sleep=sleep)
    answers = Answers(answerer=answerer, store=store, once=once, delivery=delivery,
                      working=working if working is not None else WorkingIndicator(),
                      thread_replies=settings.thread_replies)
    prompts = SuggestedPrompts(asked, doc_pages, clock=clock)
    cost = CostCommand(accounts, Admins(frozenset(settings.admin_user_ids), clock=clock), keys=KeyRing(store),
                       wall=wall)
    _listen(app, answers, AssistantThreads(store, once, answers, prompts), StoreThreadContext(store),
            Home(cost, prompts), cost, Feedback(store, on_feedback, wall=wall))
    return app


def _listen(app: App, answers: Answers, threads: AssistantThreads, thread_context: StoreThreadContext, home: Home,
            cost: CostCommand, feedback: Feedback) -> None:
    """Which listener hears what; for a ``message``, the first whose matchers accept it."""
    # Assistant threads (assistant_view): Bolt's Assistant handles their events, before the other
    # listeners (which it hands its context store). A question in one goes to threads.on_question
    # when Penny knows the thread; any other DM thread message falls through to answers.on_dm.
    assistant = Assistant(thread_context_store=thread_context)
    assistant.thread_started(threads.on_thread_started)  # thread_context_changed: Bolt's default, saved in the store
    # Bolt concatenates ``matchers`` to a list (its annotation says a single callable).
    assistant.user_message(threads.on_question, matchers=[threads.in_assistant_thread])  # type: ignore[arg-type]
    app.assistant(assistant)
    app.event("app_mention")(answers.on_mention)
    app.event("message", matchers=[in_dm])(answers.on_dm)
    app.event("message", matchers=[answers.is_unmentioned_thread_reply])(answers.on_thread_reply)
    app.event("message")(_not_for_penny)
    app.action(ACTION_FRESH_ANSWER)(ack=answers.ack_fresh_answer, lazy=[answers.on_fresh_answer])
    app.event("app_home_opened")(home.on_home_opened)
    app.event("app_context_changed")(threads.on_app_context_changed)
    app.command("/cost")(cost.on_cost)
    app.action(ACTION_FEEDBACK)(feedback.on_feedback_buttons)
    app.action(ACTION_FEEDBACK_UP)(feedback.on_feedback_up)  # the buttons of answers posted before native ones
    app.action(ACTION_FEEDBACK_DOWN)(feedback.on_feedback_down)
    app.action(ACTION_FEEDBACK_REASON)(feedback.on_feedback_reason)
    app.view(REASON_CALLBACK)(feedback.on_feedback_reason_sent)
    app.error(_on_error)


def _not_for_penny() -> None:
    """Any other message where Penny listens (a channel's own talk, a mention's ``message`` copy, a
    reply to someone else): heard, and left alone."""


def _on_error(error: Exception, body: dict[str, Any]) -> None:
    _log.error("slack.listener_error", event_id=body.get("event_id"), error=error)


class _ClientAndTokenNotice(logging.Filter):
    """Bolt warns that the token is unused when a client is given while SLACK_BOT_TOKEN is in the
    environment: Penny gives its own client (with retry handlers) on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "`token` will be unused" not in record.getMessage()


def _quiet_client_and_token_notice() -> None:
    bolt = logging.getLogger("slack_bolt.App")
    if not any(isinstance(f, _ClientAndTokenNotice) for f in bolt.filters):
        bolt.addFilter(_ClientAndTokenNotice())


def socket_mode_handler(app: App, app_token: str, *, logger: logging.Logger | None = None,
                        acks_first: AcksFirst | None = None, later: Executor | None = None) -> Any:
    """The Socket Mode handler for ``app`` (not connected yet); ``logger`` is its client's. With
    ``later`` (the listener pool), an event is acked before Bolt handles it there
    (:class:`~bot.slack.socket_mode.PennySocketModeHandler`)."""
    from bot.slack.socket_mode import PennySocketModeHandler

    return PennySocketModeHandler(app, app_token, logger=logger, acks_first=acks_first, later=later)
