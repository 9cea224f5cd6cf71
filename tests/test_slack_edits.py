"""A message edited to mention Penny, through the real Bolt app, signed requests and the fake Slack,
on every store: an edit that adds the mention is answered as if the message had been posted with it;
an edit of a message Penny answered already (a typo fixed) is not, whichever of its events comes
first and whichever replica hears it; nor is an edit long after its message, nor the
``message_changed`` Slack sends beside the edit's ``app_mention``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from bot.slack.middleware import EDIT_WINDOW_S
from proxy_core import Store
from proxy_core.clock import ManualClock
from tests.fake_slack import FakeSlack
from tests.slack_harness import BOT_USER, ROOT, Harness, ScriptedAnswerer, mention, message, wait_cleared

EDITED_AT = float(ROOT) + 60  # a minute after the message: when its edits below are made


@pytest.fixture
def wall() -> ManualClock:
    """Slack's time as Penny reads it (epoch seconds): the minute after ``ROOT`` was posted."""
    return ManualClock(start=EDITED_AT + 5)


@pytest.fixture
def answerer() -> ScriptedAnswerer:
    return ScriptedAnswerer()


@pytest.fixture
def penny(slack: FakeSlack, store: Store, answerer: ScriptedAnswerer, wall: ManualClock) -> Iterator[Harness]:
    harness = Harness(slack, store, answerer, wall=wall)
    yield harness
    harness.settle()


def edit(event: dict[str, Any], *, at: float = EDITED_AT) -> dict[str, Any]:
    """The ``app_mention`` Slack sends for ``event`` edited at ``at``: the message whole, as it now
    reads, with its own ts, and ``edited`` saying who edited it and when."""
    return {**event, "type": "app_mention", "edited": {"user": event["user"], "ts": f"{at:.6f}"}}


def message_changed(edited: dict[str, Any], previous_text: str) -> dict[str, Any]:
    """The ``message_changed`` Slack sends too (Penny hears channel messages) for the same edit."""
    ts = edited["edited"]["ts"]
    fields = ("type", "user", "text", "ts", "thread_ts", "edited")
    now = {name: edited[name] for name in fields if name in edited} | {"type": "message"}
    before = {name: now[name] for name in ("type", "user", "ts", "thread_ts") if name in now}
    return message("", ts=ts, channel=edited["channel"], user=None, subtype="message_changed", hidden=True,
                   message=now, previous_message={**before, "text": previous_text})


def posts(slack: FakeSlack) -> list[tuple[str, str | None]]:
    """Where each answer went: (channel, thread)."""
    return [(c.params["channel"], c.params.get("thread_ts")) for c in slack.calls("chat.postMessage")]


def test_a_mention_added_by_an_edit_is_answered_in_the_messages_thread(
    penny: Harness, slack: FakeSlack, answerer: ScriptedAnswerer
) -> None:
    assert penny.event(message("how do I deploy?", ts=ROOT), event_id="EvPosted").status == 200
    penny.event(edit(mention("<@UPENNY> how do I deploy?")), event_id="EvEdited")
    slack.wait_for("chat.postMessage")
    penny.settle()
    assert posts(slack) == [("C1", ROOT)]
    [question] = answerer.questions
    # Answered as if posted with the mention: its words, its asker, the edit's event as request ID.
    assert (question.text, question.user_id, question.channel_id, question.request_id) == (
        "how do I deploy?", "U1", "C1", "EvEdited")


def test_a_bare_mention_edited_to_ask_a_question_is_answered_after_its_help(
    penny: Harness, slack: FakeSlack, answerer: ScriptedAnswerer
) -> None:
    # "@Penny" alone gets how to ask; the asker then edits the question in: that is a question.
    penny.event(mention("<@UPENNY>"), event_id="EvBare")
    slack.wait_for("chat.postMessage")
    penny.event(edit(mention("<@UPENNY> how do I deploy?")), event_id="EvEdited")
    slack.wait_for("chat.postMessage", 2)
    penny.settle()
    [question] = answerer.questions
    assert (question.text, question.request_id) == ("how do I deploy?", "EvEdited")
    penny.event(mention("<@UPENNY>"), event_id="EvBare")  # Slack's retry of the bare mention
    penny.settle()
    assert len(slack.calls("chat.postMessage")) == 2  # its help is posted once


def test_a_mention_added_by_an_edit_in_a_thread_is_answered_there_with_the_thread(
    penny: Harness, slack: FakeSlack, answerer: ScriptedAnswerer
) -> None:
    reply = "1700000130.000200"
    slack.set_replies("C1", ROOT, [
        {"type": "message", "user": "U2", "text": "the deploy is red again", "ts": ROOT},
        {"type": "message", "user": "U1", "text": "<@UPENNY> how do I roll back?", "ts": reply, "thread_ts": ROOT},
    ])
    penny.event(message("how do I roll back?", ts=reply, thread_ts=ROOT))  # a thread Penny is not in
    penny.event(edit(mention("<@UPENNY> how do I roll back?", ts=reply, thread_ts=ROOT)), event_id="EvEdited")
    slack.wait_for("chat.postMessage")
    penny.settle()
    assert posts(slack) == [("C1", ROOT)]
    [question] = answerer.questions
    assert (question.text, question.request_id) == ("how do I roll back?", "EvEdited")
    assert question.history == (("user", "the deploy is red again"),)


@pytest.mark.parametrize("first", ["original", "edit", "both-at-once"])
def test_a_mention_edited_to_fix_a_typo_is_answered_once_whichever_replica_hears_which_first(
    slack: FakeSlack, store: Store, open_twin: Callable[[], Store], answerer: ScriptedAnswerer,
    wall: ManualClock, first: str,
) -> None:
    replicas = [Harness(slack, store, answerer, wall=wall), Harness(slack, open_twin(), answerer, wall=wall)]
    original = (replicas[0], mention("<@UPENNY> how do I deplyo?"), "EvAsked")
    fixed = (replicas[1], edit(mention("<@UPENNY> how do I deploy?")), "EvFixed")
    try:
        with capture_logs() as logs:
            arrivals = [original, fixed] if first != "edit" else [fixed, original]
            for replica, event, event_id in arrivals:
                assert replica.event(event, event_id=event_id).status == 200
                if first != "both-at-once":
                    wait_cleared(slack)  # the first is answered to the end before the second comes
            for replica in replicas:
                replica.settle()
    finally:
        for replica in replicas:
            replica.settle()
    assert posts(slack) == [("C1", ROOT)]
    assert len(answerer.questions) == 1
    if first == "original":
        assert answerer.questions[0].request_id == "EvAsked"
        skipped = [e for e in logs if e["event"] == "slack.edit_already_answered"]
        assert [(e["event_id"], e["ts"]) for e in skipped] == [("EvFixed", ROOT)]
    elif first == "edit":
        assert answerer.questions[0].request_id == "EvFixed"


def test_an_edit_long_after_its_message_is_not_answered(
    penny: Harness, slack: FakeSlack, answerer: ScriptedAnswerer, wall: ManualClock
) -> None:
    now = wall()
    in_time = f"{now - EDIT_WINDOW_S + 30:.6f}"  # posted 14 1/2 minutes ago
    too_late = f"{now - EDIT_WINDOW_S - 30:.6f}"  # 15 1/2 minutes ago
    last_week = f"{now - 7 * 86400:.6f}"
    for ts in (too_late, last_week, in_time):
        penny.event(message(f"question {ts}", ts=ts))
        penny.event(edit(mention(f"<@UPENNY> question {ts}", ts=ts), at=now))
    penny.settle()
    assert posts(slack) == [("C1", in_time)]
    assert [q.text for q in answerer.questions] == [f"question {in_time}"]


def test_an_edit_delivered_again_is_answered_once(
    penny: Harness, slack: FakeSlack, answerer: ScriptedAnswerer
) -> None:
    penny.event(message("how do I deploy?", ts=ROOT))
    added = edit(mention("<@UPENNY> how do I deploy?"))
    retry = {"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"}
    penny.event(added, event_id="EvEdited")
    penny.event(added, event_id="EvEdited", headers=retry)  # Slack's retry
    penny.event(added, event_id="EvEdited", headers={**retry, "X-Slack-Retry-Num": "2"})
    penny.event(added, event_id="EvEditedAgain")  # the same edit delivered twice under two event IDs
    penny.settle()
    assert posts(slack) == [("C1", ROOT)]
    assert [q.request_id for q in answerer.questions] in (["EvEdited"], ["EvEditedAgain"])


@pytest.mark.parametrize("changed_first", [True, False], ids=["message_changed-first", "app_mention-first"])
def test_the_message_changed_of_an_edit_adds_no_answer(
    penny: Harness, slack: FakeSlack, answerer: ScriptedAnswerer, changed_first: bool
) -> None:
    penny.event(message("how do I deploy?", ts=ROOT))
    added = edit(mention("<@UPENNY> how do I deploy?"))
    events = [(added, "EvMention"), (message_changed(added, "how do I deploy?"), "EvChanged")]
    for event, event_id in events[::-1] if changed_first else events:
        assert penny.event(event, event_id=event_id).status == 200
    penny.settle()
    assert posts(slack) == [("C1", ROOT)]
    assert [q.request_id for q in answerer.questions] == ["EvMention"]


def test_a_thread_reply_answered_without_a_mention_is_not_answered_again_when_edited_to_mention_penny(
    penny: Harness, slack: FakeSlack, answerer: ScriptedAnswerer
) -> None:
    penny.event(mention("<@UPENNY> how do I deploy?", ts=ROOT))
    wait_cleared(slack)  # the thread is remembered once the answer is out
    reply = "1700000130.000200"
    penny.event(message("and on staging?", ts=reply, thread_ts=ROOT), event_id="EvReply")
    wait_cleared(slack, 2)
    penny.event(edit(mention("<@UPENNY> and on staging?", ts=reply, thread_ts=ROOT)), event_id="EvEdited")
    penny.settle()
    assert posts(slack) == [("C1", ROOT), ("C1", ROOT)]
    assert [q.text for q in answerer.questions] == ["how do I deploy?", "and on staging?"]


def test_an_edited_dm_is_not_answered_again(penny: Harness, slack: FakeSlack, answerer: ScriptedAnswerer) -> None:
    asked = message("how do I deplyo?", channel="D1", channel_type="im", ts=ROOT)
    penny.event(asked, event_id="EvDM")
    wait_cleared(slack)
    # In a DM Slack sends no app_mention for an edit: a message_changed, whatever it now says.
    fixed = {**asked, "text": f"<@{BOT_USER}> how do I deploy?", "edited": {"user": "U1", "ts": f"{EDITED_AT:.6f}"}}
    changed = {**message_changed(fixed, "how do I deplyo?"), "channel_type": "im"}
    penny.event(changed, event_id="EvDMChanged")
    penny.settle()
    assert posts(slack) == [("D1", None)]
    assert [q.request_id for q in answerer.questions] == ["EvDM"]
