"""Votes on Penny's answers in Slack: the feedback buttons, the 👎 reason form, and the offer of a
fresh answer after a 👎 on a cached one (answered by :meth:`bot.slack.answers.Answers.on_fresh_answer`).

A vote is stored with the pages the answer cited (:func:`bot.feedback.record_feedback`) and
acknowledged to the voter alone; after a 👎 the voter may say why in a short form, stored with the
vote. ``on_feedback`` hears every vote (the runner evicts a 👎'd answer from the cache).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass
from typing import Any, Final

from slack_bolt import Ack, Respond
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot.feedback import add_reason, record_feedback
from bot.slack.agent import feedback_ack_blocks, reason_modal, reason_of
from bot.slack.conversation import action_channel, action_value, action_workspace
from bot.slack.delivery import in_thread, posted_answer
from bot.slack.render import Block, message_text
from proxy_core import Store, StoreError, get_logger

__all__ = [
    "ACTION_FRESH_ANSWER",
    "FRESH_BLOCK_PREFIX",
    "VOTE_NOT_SAVED_TEXT",
    "Feedback",
    "FeedbackCallback",
    "fresh_answer_blocks",
    "fresh_offer_answer",
    "reason_ref",
]

ACTION_FRESH_ANSWER: Final = "penny_fresh_answer"
# An offer made before buttons named answers adds the thread_ts to answer in ("" for none), and "/" +
# the question's ts when it followed up in that thread; an offer now takes both from Penny's record.
FRESH_BLOCK_PREFIX: Final = "penny_fresh:"

VOTE_NOT_SAVED_TEXT: Final = ("Your vote was not saved: Penny's storage is unavailable right now. "
                               "Please try again in a minute.")

FeedbackCallback = Callable[[str, str, bool], None]  # (user_id, entry_id, up)

_log = get_logger()


@dataclass(eq=False)
class Feedback:
    """The vote listeners; ``on_feedback`` hears each vote, ``wall`` dates it."""

    store: Store
    on_feedback: FeedbackCallback | None
    _: KW_ONLY
    wall: Callable[[], float]

    def on_feedback_buttons(self, ack: Ack, body: dict[str, Any], client: WebClient, respond: Respond) -> None:
        """Slack's native feedback buttons: the value says which (``up:`` / ``down:``) and of what."""
        ack()
        vote, _, entry_id = action_value(body).partition(":")
        if vote in ("up", "down"):
            self._vote(body, client, respond, up=vote == "up", entry_id=entry_id)

    def on_feedback_up(self, ack: Ack, body: dict[str, Any], client: WebClient, respond: Respond) -> None:
        """👍 on an answer posted before the native buttons."""
        ack()
        self._vote(body, client, respond, up=True, entry_id=action_value(body))

    def on_feedback_down(self, ack: Ack, body: dict[str, Any], client: WebClient, respond: Respond) -> None:
        """👎 on an answer posted before the native buttons."""
        ack()
        self._vote(body, client, respond, up=False, entry_id=action_value(body))

    def on_feedback_reason(self, ack: Ack, body: dict[str, Any], client: WebClient) -> None:
        """"Say what was wrong" under a 👎: the short form, in a modal (within the click's 3 s)."""
        ack()
        try:
            client.views_open(trigger_id=str(body.get("trigger_id") or ""), view=reason_modal(action_value(body)))
        except Exception as exc:
            _log.warning("slack.reason_form_failed", error=exc)

    def on_feedback_reason_sent(self, ack: Ack, body: dict[str, Any], view: dict[str, Any],
                                client: WebClient) -> None:
        """The 👎 reason submitted: stored with the vote, and the voter told so."""
        ack()
        try:
            ref = reason_ref(view.get("private_metadata"))
            if ref is None:
                # Not what Penny wrote into the form (see on_feedback_reason): a forged or mangled
                # payload. Logged as a warning, not a traceback: it is bad input, not a bug.
                _log.warning("slack.reason_metadata_unreadable", view_id=view.get("id"))
                return
            reason = reason_of(view)
            user = str(body["user"]["id"])
            workspace = action_workspace(body)
            channel, message_ts, entry_id = ref
            if not reason or not entry_id:
                return
            record = posted_answer(self.store, workspace, channel, message_ts) or {}
            kept = add_reason(self.store, workspace, entry_id, user, reason=reason, pages=record.get("pages", []),
                              at=self.wall())
            if channel:
                said = ("Thanks, your note is saved with your 👎." if kept else
                        "Your note was not saved: your vote on that answer is 👍 now.")
                client.chat_postEphemeral(channel=channel, user=user, text=said,
                                          **in_thread(str(record.get("thread_ts") or "")))
        except Exception as exc:
            _log.exception("slack.reason_failed", error=exc)

    def _vote(self, body: dict[str, Any], client: WebClient, respond: Respond, *, up: bool, entry_id: str) -> None:
        """Store a vote, tell the voter it counted, and after a 👎 offer to say why (and, on a
        cached answer, a fresh one). Where Slack refuses Penny's ephemeral (she is no longer in the
        channel), the click's ``respond`` says it instead."""
        try:
            user = str(body["user"]["id"])
            channel = action_channel(body)
            message_ts = str((body.get("container") or {}).get("message_ts") or (body.get("message") or {}).get("ts"))
            workspace = action_workspace(body)
            try:
                record = posted_answer(self.store, workspace, channel, message_ts) or {}
                if entry_id:
                    record_feedback(self.store, workspace, entry_id, user, up=up, pages=record.get("pages", []),
                                    at=self.wall())
            except StoreError as exc:  # saying "Thanks, noted" would be untrue: the voter may try again
                _log.warning("slack.feedback_not_stored", error=exc)
                said = [{"type": "section", "text": {"type": "mrkdwn", "text": VOTE_NOT_SAVED_TEXT}}]
                _show(client, respond, body, channel, user, said, thread_ts="")
                return
            if self.on_feedback is not None and entry_id:
                try:
                    self.on_feedback(user, entry_id, up)
                except Exception as exc:  # losing a vote must not lose the fresh-answer offer
                    _log.exception("slack.feedback_callback_failed", error=exc)
            thread_ts = str(record.get("thread_ts") or "")
            fresh = (fresh_answer_blocks(message_ts)
                     if not up and record.get("cached") and record.get("question") else None)
            ref = json.dumps({"e": entry_id, "c": channel, "m": message_ts}) if entry_id else None
            blocks = feedback_ack_blocks(up=up, reason_value=ref if ref and len(ref) <= 2000 else None, fresh=fresh)
            _show(client, respond, body, channel, user, blocks, thread_ts=thread_ts)
        except Exception as exc:
            _log.exception("slack.feedback_failed", error=exc)


def _show(client: WebClient, respond: Respond, body: dict[str, Any], channel: str, user: str, blocks: list[Block],
          *, thread_ts: str) -> None:
    """``blocks`` to the clicker alone; through the click's ``respond`` where Slack refuses Penny's
    ephemeral (she is no longer in the channel)."""
    try:
        client.chat_postEphemeral(channel=channel, user=user, blocks=blocks, text=message_text(blocks),
                                  **in_thread(thread_ts))
    except SlackApiError as exc:
        if not body.get("response_url"):
            raise
        _log.warning("slack.feedback_ack_not_posted", channel=channel, error=exc)
        respond(blocks=blocks, text=message_text(blocks), response_type="ephemeral", replace_original=False,
                **in_thread(thread_ts))


def reason_ref(private_metadata: object) -> tuple[str, str, str] | None:
    """The (channel, message ts, entry ID) a 👎 reason form names in its ``private_metadata``, as
    :meth:`Feedback._vote` wrote it (``{"e": …, "c": …, "m": …}``, each a string); None for anything
    else, which Penny never wrote: it is not parsed further, nor posted to as a channel."""
    try:
        ref = json.loads(private_metadata) if isinstance(private_metadata, str) else None
    except ValueError:
        return None
    if not isinstance(ref, dict) or not all(isinstance(ref.get(k, ""), str) for k in ("c", "m", "e")):
        return None
    return ref.get("c", ""), ref.get("m", ""), ref.get("e", "")


def fresh_answer_blocks(answer_ts: str) -> list[Block]:
    """The ephemeral offer after 👎 on a cached answer: a button that asks again, bypassing the cache.
    Its value names the answer (``answer_ts``), not the question: the click reads the question, its
    thread and the message it followed up from what Penny recorded of that answer in the clicked
    channel, whole (a button value holds 2,000 characters, a question up to 4,000)."""
    return [
        {
            "type": "section",
            "text": {"type": "mrkdwn", "text": "That answer came from the cache. Want me to work it out afresh?"},
        },
        {
            "type": "actions",
            "block_id": FRESH_BLOCK_PREFIX,
            "elements": [
                {
                    "type": "button",
                    "text": {"type": "plain_text", "text": "Get a fresh answer"},
                    "action_id": ACTION_FRESH_ANSWER,
                    "value": json.dumps({"answer": answer_ts}),
                }
            ],
        },
    ]


def fresh_offer_answer(value: str) -> str | None:
    """The ts of the answer a "Get a fresh answer" button names (:func:`fresh_answer_blocks`), or
    None for an offer made before buttons named answers, whose value is the question itself."""
    try:
        ref = json.loads(value)
    except ValueError:
        return None
    if isinstance(ref, dict) and set(ref) == {"answer"} and isinstance(ref["answer"], str) and ref["answer"]:
        return ref["answer"]
    return None
