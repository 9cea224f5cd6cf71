"""Slack's agent surfaces (:mod:`bot.slack.agent` holds their pure parts): suggested prompts, and the
assistant threads of the older ``assistant_view``, through Bolt's :class:`~slack_bolt.Assistant`.

Opening Penny's Messages tab (the agent messaging experience of ``features.agent_view``) sets
suggested prompts drawn from the docs on the DM (:class:`SuggestedPrompts`, called by
:mod:`bot.slack.home`). An assistant thread gets a greeting, the same prompts and, from its first
question, a title; its questions are answered like DM thread replies
(:meth:`~bot.slack.answers.Answers.answer_event`). The context Slack reports
(``assistant_thread_context_changed``, ``app_context_changed``) is kept in the store.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from slack_bolt import BoltContext, SaveThreadContext, Say, SetSuggestedPrompts, SetTitle
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot.slack.agent import (
    ASSISTANT_THREADS_KIND,
    CONTEXT_KIND,
    CONTEXT_TTL_S,
    GREETING,
    PROMPTS_TITLE,
    AskedPages,
    DocPage,
    suggested_prompts,
    thread_title,
)
from bot.slack.answers import Answers
from bot.slack.conversation import workspace_of
from bot.slack.delivery import ANSWER_TTL_S
from bot.slack.middleware import Once, remember
from proxy_core import Clock, Record, RecordStore, StoreError, get_logger

__all__ = ["PROMPTS_TTL_S", "AssistantThreads", "SuggestedPrompts"]

PROMPTS_TTL_S: Final = 600.0  # suggested prompts are worked out again (and set again on a DM) this often
# setSuggestedPrompts refusals that mean the app is not set up as an agent: stop asking until a restart
PROMPTS_UNAVAILABLE: Final = frozenset({"not_agent_app", "missing_scope", "unknown_method", "not_allowed_token_type"})
DMS_KEPT: Final = 10_000  # DM channels whose prompts are remembered as set

_log = get_logger()


class SuggestedPrompts:
    """The prompts Penny suggests in a workspace: the pages its answers cite most (``asked``), then
    the docs' largest pages (``doc_pages``), worked out at most every :data:`PROMPTS_TTL_S`."""

    def __init__(self, asked: AskedPages, doc_pages: Callable[[], Sequence[DocPage]] | None, *,
                 clock: Clock) -> None:
        self.asked = asked
        self.doc_pages = doc_pages
        self.clock = clock
        self.off = False  # Slack refused suggested prompts for good (not an agent app)
        self._prompts: dict[str, tuple[list[dict[str, str]], float]] = {}  # workspace -> (prompts, until)
        self._prompted: dict[str, float] = {}  # DM channel -> prompts set there until
        self._lock = threading.Lock()

    def for_workspace(self, workspace: str) -> list[dict[str, str]]:
        """The suggested prompts for ``workspace``."""
        now = self.clock()
        with self._lock:
            known = self._prompts.get(workspace)
        if known is not None and now < known[1]:
            return known[0]
        try:
            pages = list(self.doc_pages()) if self.doc_pages is not None else []
        except Exception as exc:
            _log.warning("slack.doc_pages_failed", error=exc)
            pages = []
        prompts = suggested_prompts(self.asked.top(workspace), pages)
        with self._lock:
            self._prompts[workspace] = (prompts, now + PROMPTS_TTL_S)
        return prompts

    def set_in_dm(self, client: WebClient, workspace: str, channel: str) -> None:
        """Suggested prompts at the top of Penny's DM (the agent messaging experience)."""
        now = self.clock()
        with self._lock:
            if self.off or now < self._prompted.get(channel, 0.0):
                return
            if len(self._prompted) >= DMS_KEPT:
                self._prompted = {c: t for c, t in self._prompted.items() if now < t}
            self._prompted[channel] = now + PROMPTS_TTL_S
        prompts = self.for_workspace(workspace)
        if not prompts:
            return
        try:
            client.assistant_threads_setSuggestedPrompts(channel_id=channel, prompts=prompts, title=PROMPTS_TITLE)
        except SlackApiError as exc:
            error = str(exc.response.get("error") or "")
            with self._lock:
                self._prompted.pop(channel, None)
                first = error in PROMPTS_UNAVAILABLE and not self.off
                self.off = self.off or error in PROMPTS_UNAVAILABLE
            if first:
                _log.warning("slack.prompts_off", error=error,
                             note="the app has no agent view (manifest.yml features.agent_view) or scope "
                                  "assistant:write; no suggested prompts until Penny restarts")
            else:
                _log.warning("slack.prompts_failed", error=error)
        except Exception as exc:
            with self._lock:
                self._prompted.pop(channel, None)
            _log.warning("slack.prompts_failed", error=exc)


@dataclass(eq=False)
class AssistantThreads:
    """The assistant thread listeners (handed to Bolt's :class:`~slack_bolt.Assistant`), and what
    Slack says the user is looking at (``app_context_changed``)."""

    store: RecordStore
    once: Once
    answers: Answers
    prompts: SuggestedPrompts

    def on_thread_started(self, body: dict[str, Any], payload: dict[str, Any], context: BoltContext, say: Say,
                          set_suggested_prompts: SetSuggestedPrompts, save_thread_context: SaveThreadContext) -> None:
        """An assistant thread was opened: keep its context, greet, and suggest prompts (once per event)."""
        try:
            thread = payload.get("assistant_thread") or {}
            workspace = workspace_of(body, context)
            if not body.get("event_id"):
                return

            def greet() -> None:
                if thread.get("context"):
                    save_thread_context(thread["context"])
                key = f"{workspace}:{thread.get('channel_id')}:{thread.get('thread_ts')}"
                # Known at once, not with the event's completion: the first question may come right away.
                try:
                    self.store.record_put(ASSISTANT_THREADS_KIND, key, "new", ANSWER_TTL_S)
                except StoreError as exc:  # its questions are answered as DM thread replies, untitled
                    _log.warning("slack.remember_failed", kind=ASSISTANT_THREADS_KIND, error=exc)
                say(text=GREETING)
                prompts = self.prompts.for_workspace(workspace)
                if prompts:
                    set_suggested_prompts(prompts=prompts, title=PROMPTS_TITLE)

            self.once.run(workspace, "slack:" + str(body["event_id"]), greet)
        except Exception as exc:
            _log.exception("slack.thread_started_failed", event_id=body.get("event_id"), error=exc)

    def in_assistant_thread(self, body: dict[str, Any]) -> bool:
        """Listener matcher: the message is in an assistant thread Penny greeted."""
        event = body.get("event") or {}
        key = f"{workspace_of(body)}:{event.get('channel')}:{event.get('thread_ts')}"
        try:
            return self.store.record_get(ASSISTANT_THREADS_KIND, key) is not None
        except StoreError as exc:
            _log.warning("slack.thread_lookup_failed", error=exc)
            return False  # answered as a DM thread reply: the same answer, without a title

    def on_question(self, body: dict[str, Any], event: dict[str, Any], context: BoltContext,
                    client: WebClient, set_title: SetTitle) -> None:
        """A question in an assistant thread: answered like a DM thread reply; the first one titles it."""
        try:
            if event.get("subtype") is not None:  # a file shared in the thread asks nothing
                return
            key = f"{workspace_of(body, context)}:{event.get('channel')}:{event.get('thread_ts')}"

            def title(question: str) -> None:
                try:
                    if self.store.record_get(ASSISTANT_THREADS_KIND, key) == "new":
                        set_title(thread_title(question))
                        remember(self.store, Record(ASSISTANT_THREADS_KIND, key, "titled", ANSWER_TTL_S))
                except Exception as exc:  # a thread without a title still gets its answer
                    _log.warning("slack.title_failed", error=exc)

            self.answers.answer_event(body, event, context, client, thread_ts=str(event["thread_ts"]),
                                      with_history=True, on_question=title)
        except Exception as exc:
            _log.exception("slack.assistant_question_failed", event_id=body.get("event_id"), error=exc)

    def on_app_context_changed(self, body: dict[str, Any], event: dict[str, Any], context: BoltContext) -> None:
        """What the user looks at while Penny's agent view is open: kept for the user, no Slack call."""
        user = str(event.get("user") or context.user_id or "")
        if not user:
            return
        try:
            self.store.record_put(CONTEXT_KIND, f"user:{workspace_of(body, context)}:{user}",
                                  json.dumps(event.get("context") or {}), CONTEXT_TTL_S)
        except StoreError as exc:
            _log.warning("slack.context_not_kept", error=exc)
