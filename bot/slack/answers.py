"""Answering questions in Slack: the listeners that take a question, ask the answering service, and
hand the answer to :class:`~bot.slack.delivery.Delivery`.

What it answers:

- an ``app_mention`` in a channel, in the thread of the mention;
- a ``message`` in a DM (top level or in a DM thread);
- a ``message`` in a channel or group DM thread Penny has already posted in, without a mention,
  when it asks her something (:mod:`bot.slack.addressing`; ``PENNY_THREAD_REPLIES``: ``questions``
  by default, ``all`` or ``mentions``): thanks, emoji and talk between people get no reply and
  no LLM call. Penny remembers the threads it posted in (:func:`~bot.slack.delivery.knows_thread`),
  so an unrelated thread reply costs no Slack call; for a thread it knows, ``conversations.replies``
  fetches the earlier turns, which go to the service as ``history``
  (:func:`~bot.slack.conversation.thread_history`);
- a click on "Get a fresh answer" (offered after a 👎 on a cached answer): the question again,
  bypassing the cache.

Which ``message`` events get here is decided by listener matchers (:func:`in_dm`,
:meth:`Answers.is_unmentioned_thread_reply`); a mention arrives twice (as ``app_mention`` and as
``message``) under different event IDs, and the ``message`` copy matches neither because it
mentions Penny. Each message is answered once (:class:`~bot.slack.middleware.Once`, under
``slack:message:<channel>:<ts>``): Slack's retries of its event, and the ``app_mention`` Slack
sends again when it is edited (a typo fixed), find it answered, while an edit that adds the
mention to a message Penny never answered is answered as if posted with it. The event ID (a
fresh answer's ``fresh:…``) is the question's ``request_id``, on which the gateway dedupes
charges. While the service
works, a thread shows Slack's status line, a top-level DM question an ``eyes`` reaction
(:mod:`bot.slack.working`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

from slack_bolt import Ack, BoltContext, Respond
from slack_sdk import WebClient

from bot.answer import STORE_DOWN_TEXT
from bot.answer_types import Answer, Answerer, Question
from bot.settings import ThreadReplies
from bot.slack.addressing import classify_thread_reply
from bot.slack.conversation import (
    MAX_QUESTION_CHARS,
    MENTION,
    action_channel,
    action_workspace,
    asker_team,
    clip_question,
    strip_mentions,
    thread_history,
    thread_messages,
    workspace_of,
)
from bot.slack.delivery import Delivery, Target, Writing, knows_thread, posted_answer
from bot.slack.feedback import FRESH_BLOCK_PREFIX, fresh_offer_answer
from bot.slack.middleware import Once, after_handling, message_request_id
from bot.slack.working import WorkingIndicator
from proxy_core import RecordStore, StoreError, get_logger

__all__ = [
    "FAILED_TEXT",
    "FILES_NOTE",
    "FILES_ONLY_TEXT",
    "FRESH_ASKED_TEXT",
    "FRESH_GONE_TEXT",
    "HELP_TEXT",
    "TRUNCATED_NOTE",
    "Answers",
    "in_dm",
]

HELP_TEXT: Final = (
    "Hi! Ask me a question about the team's docs, e.g. `@Penny how do I rotate the API key?` "
    "I answer in a thread, with links to the pages I used. Reply in the thread to follow up."
)
TRUNCATED_NOTE: Final = f":scissors: Your message was long, so I read only its first {MAX_QUESTION_CHARS:,} characters."
# Penny searches the docs it indexed; it does not read files shared with a question.
FILES_ONLY_TEXT: Final = (
    "I can't read files shared with me, only text. Ask your question in words and I'll look it up in the "
    "team's docs, e.g. `how do I rotate the API key?`"
)
FILES_NOTE: Final = ":paperclip: I read only your message's text, not the file you shared."
FAILED_TEXT: Final = "Something went wrong on my side. Please try again in a minute."
# A fresh-answer offer whose answer Penny no longer has a record of (kept a week), here.
FRESH_GONE_TEXT: Final = (
    "I no longer have that answer on record, so I can't ask it again. Please ask your question again."
)

# A second offer of a fresh answer to an answer the clicker already had one for.
FRESH_ASKED_TEXT: Final = "You already asked for a fresh answer to that one: it is in the thread (or on its way)."

OnQuestion = Callable[[str], None]

_log = get_logger()


def in_dm(event: Mapping[str, Any]) -> bool:
    """Listener matcher: a message in a DM with Penny."""
    return event.get("channel_type") == "im"


@dataclass(eq=False, kw_only=True)
class Answers:
    """The answering listeners (see the module doc). ``thread_replies`` says which unmentioned
    thread replies are answered; ``working`` shows the status (or 👀) while the service works."""

    answerer: Answerer
    store: RecordStore
    once: Once
    delivery: Delivery
    working: WorkingIndicator
    thread_replies: ThreadReplies

    # -- listeners -------------------------------------------------------------------------

    def on_mention(self, body: dict[str, Any], event: dict[str, Any], context: BoltContext, client: WebClient) -> None:
        try:
            ts = str(event.get("ts", ""))
            thread_ts = str(event.get("thread_ts") or ts)
            self.answer_event(body, event, context, client, thread_ts=thread_ts, with_history=thread_ts != ts)
        except Exception as exc:
            _log.exception("slack.mention_failed", event_id=body.get("event_id"), error=exc)

    def on_dm(self, body: dict[str, Any], event: dict[str, Any], context: BoltContext, client: WebClient) -> None:
        """A DM: answered at the top level, or in its DM thread with the thread's history."""
        try:
            thread_ts = event.get("thread_ts")
            in_thread = bool(thread_ts) and thread_ts != str(event.get("ts", ""))
            self.answer_event(body, event, context, client, thread_ts=str(thread_ts) if in_thread else None,
                              with_history=in_thread)
        except Exception as exc:
            _log.exception("slack.message_failed", event_id=body.get("event_id"), error=exc)

    def is_unmentioned_thread_reply(self, event: Mapping[str, Any]) -> bool:
        """Listener matcher: a reply in a channel or group DM thread that mentions no one, when
        Penny answers more than mentions. (A reply that mentions Penny is answered as its
        ``app_mention``; one that mentions someone else is for them.)"""
        thread_ts = event.get("thread_ts")
        if in_dm(event) or not thread_ts or thread_ts == str(event.get("ts", "")):
            return False
        return self.thread_replies != "mentions" and MENTION.search(str(event.get("text", ""))) is None

    def on_thread_reply(self, body: dict[str, Any], event: dict[str, Any], context: BoltContext,
                        client: WebClient) -> None:
        """An unmentioned reply: answered when the thread is one Penny is in and the reply asks her."""
        try:
            thread_ts = str(event["thread_ts"])
            if not knows_thread(self.store, workspace_of(body, context), str(event.get("channel", "")), thread_ts):
                return
            addressing = classify_thread_reply(
                str(event.get("text") or ""), bot_user_id=context.bot_user_id, mode=self.thread_replies
            )
            where = {"event_id": body.get("event_id"), "channel": event.get("channel"), "thread_ts": thread_ts}
            if not addressing.for_penny:
                _log.info("slack.thread_reply_skipped", reason=addressing.reason, **where)
                return
            _log.info("slack.thread_reply_answered", reason=addressing.reason, **where)
            self.answer_event(body, event, context, client, thread_ts=thread_ts, with_history=True)
        except Exception as exc:
            _log.exception("slack.message_failed", event_id=body.get("event_id"), error=exc)

    @staticmethod
    def ack_fresh_answer(ack: Ack) -> None:
        """The click on "Get a fresh answer", acked at once; the answer is :meth:`on_fresh_answer`'s,
        a lazy listener Bolt starts after the ack, on the answers' pool and turns like any question
        (not on the pool that runs acks, which must stay free for ``/cost`` and the buttons)."""
        ack()

    def on_fresh_answer(self, body: dict[str, Any], client: WebClient, respond: Respond, context: BoltContext) -> None:
        """"Get a fresh answer": the question of the answer the button names, as Penny recorded it in
        the clicked channel, asked again past the cache, once per click; a follow-up in a thread with
        the thread before it, as it was asked the first time. (An offer made before buttons named
        answers carries the question itself.)"""
        try:
            action = body["actions"][0]
            value = str(action.get("value") or "")
            workspace = action_workspace(body)
            answer_ts = fresh_offer_answer(value)
            if answer_ts is None:  # an offer made before buttons named answers: all of it is in the offer
                question = value.strip()
                block_id = str(action.get("block_id", ""))
                where = block_id[len(FRESH_BLOCK_PREFIX) :] if block_id.startswith(FRESH_BLOCK_PREFIX) else ""
                thread_ts, _, asked_ts = where.partition("/")
            else:
                try:
                    record = posted_answer(self.store, workspace, action_channel(body), answer_ts) or {}
                except StoreError as exc:  # said plainly; the offer stays, to try again
                    _log.warning("slack.fresh_answer_store_unavailable", error=exc)
                    if body.get("response_url"):
                        respond(text=STORE_DOWN_TEXT, replace_original=False, response_type="ephemeral")
                    return
                question = str(record.get("question") or "").strip()
                # Where it was asked comes from the record too, not the offer's block_id: Slack keeps no
                # copy of an ephemeral message to check a click against; the record is Penny's own.
                thread_ts = str(record.get("thread_ts") or "")
                asked_ts = str(record.get("asked_ts") or "")
                asked_ts = asked_ts if thread_ts and asked_ts != thread_ts else ""
                if not question:
                    _log.warning("slack.fresh_answer_unknown", channel=action_channel(body), answer_ts=answer_ts)
                    if body.get("response_url"):
                        respond(text=FRESH_GONE_TEXT, replace_original=True, response_type="ephemeral")
                    return
            # The click is deduplicated under "slack:<id>" and answered under "<id>", as an event is:
            # one ID for both, the gateway would find the click's own claim in flight and refuse.
            # The ID is who clicked and the answer the offer names: a double click, a second click
            # before the offer is taken away, or the offer of a second 👎 on the same answer, gets
            # one fresh answer, paid once. (An old offer names no answer: its own message then.)
            user = str(body["user"]["id"])
            offer = str((body.get("container") or {}).get("message_ts") or "")
            clicked = action.get("action_ts") or body.get("trigger_id")
            request_id = (f"fresh:{user}:{action_channel(body)}:{answer_ts}" if answer_ts is not None
                          else f"fresh:{user}:{offer}" if offer else f"fresh:{clicked}")
            if not question:
                return
            target = Target(workspace, action_channel(body), user, None, thread_ts or None,
                            str(body["user"].get("team_id") or workspace))

            def fresh() -> None:
                if body.get("response_url"):
                    try:
                        respond(delete_original=True)  # the offer is used up
                    except Exception as exc:
                        _log.warning("slack.fresh_offer_delete_failed", error=exc)
                history: tuple[tuple[str, str], ...] = ()
                if thread_ts and asked_ts:
                    history = self._history(client, replace(target, message_ts=asked_ts), thread_ts, context)
                self._ask(client, target, question, request_id=request_id, history=history, fresh=True,
                          privately=respond if body.get("response_url") else None)

            if not self.once.run(workspace, "slack:" + request_id, fresh) and body.get("response_url"):
                respond(text=FRESH_ASKED_TEXT, replace_original=True, response_type="ephemeral")
        except Exception as exc:
            _log.exception("slack.fresh_answer_failed", error=exc)

    # -- the work --------------------------------------------------------------------------

    def answer_event(
        self,
        body: dict[str, Any],
        event: dict[str, Any],
        context: BoltContext,
        client: WebClient,
        *,
        thread_ts: str | None,
        with_history: bool,
        on_question: OnQuestion | None = None,
    ) -> None:
        """Answer the question ``event`` asks, once, in ``thread_ts`` (None: the top level of a DM);
        ``on_question`` gets the question first (an assistant thread's title)."""
        workspace = workspace_of(body, context)
        event_id = str(body.get("event_id") or "")
        if not event_id or not event.get("user"):
            return
        target = Target(workspace, str(event.get("channel", "")), str(event["user"]), str(event["ts"]), thread_ts,
                        asker_team(event, workspace))
        text = strip_mentions(str(event.get("text") or ""), context.bot_user_id)
        if not text:
            # Help, not an answer: claimed as the event, so that an edit that adds a question to a
            # bare mention is still answered, under the message's claim.
            self.once.run(workspace, "slack:" + event_id, lambda: self._help(client, target, event))
            return
        # Claimed as the message, not the event: the app_mention of an edit comes under an event ID
        # of its own, and must find a message answered already (a typo fixed) answered.
        answered = self.once.run(workspace, message_request_id(target.channel, str(event["ts"])),
                                 lambda: self._answer(client, target, text, event, context, event_id, with_history,
                                                      on_question))
        if not answered and event.get("edited"):
            _log.info("slack.edit_already_answered", event_id=event_id, channel=target.channel,
                      ts=target.message_ts)

    def _help(self, client: WebClient, target: Target, event: dict[str, Any]) -> None:
        """What a mention with no question gets: how to ask (or, with files alone, that Penny does not read them)."""
        help_text = FILES_ONLY_TEXT if event.get("files") else HELP_TEXT
        self.delivery.post(client, target, [[{"type": "section", "text": {"type": "mrkdwn", "text": help_text}}]])

    def _answer(self, client: WebClient, target: Target, text: str, event: dict[str, Any], context: BoltContext,
                event_id: str, with_history: bool, on_question: OnQuestion | None) -> None:
        shared_files = bool(event.get("files"))
        if on_question is not None:
            on_question(text)
        history: tuple[tuple[str, str], ...] = ()
        if with_history and target.thread_ts:
            history = self._history(client, target, target.thread_ts, context)
        self._ask(client, target, text, request_id=event_id, history=history,
                  note=FILES_NOTE if shared_files else None)

    def _ask(
        self,
        client: WebClient,
        target: Target,
        text: str,
        *,
        request_id: str,
        history: tuple[tuple[str, str], ...] = (),
        fresh: bool = False,
        note: str | None = None,
        privately: Respond | None = None,
    ) -> None:
        question_text, truncated = clip_question(text)
        note = "\n".join(n for n in (TRUNCATED_NOTE if truncated else None, note) if n) or None
        working = self.working.show(client, target.channel, target.message_ts, thread_ts=target.thread_ts)
        try:
            stream = self.delivery.stream_for(client, target)
            question = Question(
                text=question_text,
                user_id=target.user,
                workspace_id=target.workspace_id,
                request_id=request_id,
                channel_id=target.channel,
                history=history,
                fresh=fresh,
                stream=Writing(stream, working) if stream is not None else None,
            )
            try:
                answer = self.answerer.answer(question)
            except Exception as exc:
                _log.exception("slack.answerer_failed", request_id=request_id, error=exc)
                answer = Answer(kind="error", text=FAILED_TEXT, refusal="upstream_error")
            streamed_ts = self.delivery.end_stream(client, target, stream)
            self.delivery.deliver(client, target, answer, question_text, note, streamed_ts, privately=privately)
            working.answered()  # no 👀 or status from now on, even while the event's records are still stored
        finally:
            after_handling(working.done)  # the 👀 comes off once everything is stored

    def _history(
        self, client: WebClient, target: Target, thread_ts: str, context: BoltContext
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
