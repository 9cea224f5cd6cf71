"""Penny's Bolt app end to end over loopback: signed requests go through ``app.dispatch`` and the
fake Slack Web API records what the app sent back. The answering service is a scripted stand-in
for the ``Answerer`` protocol; the store is a real SQLite file."""

from __future__ import annotations

import copy
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.client import RemoteDisconnected
from pathlib import Path
from typing import Any
from urllib.error import URLError
from urllib.parse import urlencode

import pytest
import structlog
import yaml  # type: ignore[import-untyped]  # PyYAML ships no stubs; types-PyYAML is not installed
from slack_bolt import App, BoltRequest
from slack_sdk.http_retry import ConnectionErrorRetryHandler, HttpRequest, RateLimitErrorRetryHandler, RetryState
from slack_sdk.signature import SignatureVerifier

from bot.answer import STORE_DOWN_TEXT
from bot.answer_types import Answer, Question
from bot.settings import ThreadReplies
from bot.slack.answers import FILES_NOTE, FILES_ONLY_TEXT, FRESH_GONE_TEXT, HELP_TEXT
from bot.slack.app import (
    BOT_EVENTS,
    BOT_SCOPES,
    ConnectionRetry,
    SlackSettings,
    _WaitingClients,
    build_app,
    make_client,
    socket_mode_handler,
)
from bot.slack.conversation import MAX_QUESTION_CHARS, strip_mentions, thread_history
from bot.slack.delivery import ANSWER_NOT_POSTED_NOTE, REST_NOT_POSTED_NOTE, THREADS_KIND
from bot.slack.feedback import ACTION_FRESH_ANSWER
from bot.slack.middleware import InstalledWorkspaceOnly
from bot.slack.pacing import DrainingExecutor, WorkTurns
from bot.slack.render import ACTION_FEEDBACK, ACTION_FEEDBACK_DOWN, ACTION_FEEDBACK_UP
from bot.slack.working import WorkingIndicator
from proxy_core import Accounts, PennySettings
from proxy_core.stores.sqlite import SqliteStore
from tests.fake_slack import FakeSlack, SlackCall, SlackFault
from tests.slack_harness import (
    ANSWER,
    BOT_ID,
    BOT_USER,
    CITATIONS,
    ROOT,
    SECRET,
    TEAM,
    TOKEN,
    Harness,
    ScriptedAnswerer,
    block_action,
    event_body,
    mention,
    message,
    wait_cleared,
)

MANIFEST = Path(__file__).resolve().parent.parent / "manifest.yml"


def all_text(blocks: list[dict[str, Any]]) -> str:
    return json.dumps(blocks, ensure_ascii=False)


def feedback_buttons(blocks: list[dict[str, Any]]) -> dict[str, Any]:
    """The native feedback buttons element of a message's blocks."""
    [element] = [e for b in blocks if b["type"] == "context_actions" for e in b["elements"]
                 if e["type"] == "feedback_buttons"]
    return element


def feedback_click(vote: str, entry_id: str, *, message_ts: str, user: str = "U1") -> dict[str, Any]:
    """The block_actions payload of a click on an answer's native 👍 (``up``) or 👎 (``down``)."""
    payload = block_action({"action_id": ACTION_FEEDBACK, "block_id": "fb", "value": f"{vote}:{entry_id}",
                            "text": {"type": "plain_text", "text": "👍" if vote == "up" else "👎"}},
                           message_ts=message_ts, user=user)
    payload["actions"][0]["type"] = "feedback_buttons"
    return payload


def methods(slack: FakeSlack) -> list[str]:
    return [c.method for c in slack.calls() if c.method != "auth.test"]


@pytest.fixture
def answerer() -> ScriptedAnswerer:
    return ScriptedAnswerer()


@pytest.fixture
def penny(slack: FakeSlack, sqlite_store: SqliteStore, answerer: ScriptedAnswerer) -> Iterator[Harness]:
    harness = Harness(slack, sqlite_store, answerer)
    yield harness
    harness.settle()


# ---------------------------------------------------------------------------------------------
# Answers


def test_mention_is_answered_in_its_thread_with_sources_and_feedback_buttons(
    penny: Harness, slack: FakeSlack, answerer: ScriptedAnswerer
) -> None:
    response = penny.event(mention("<@UPENNY> how do I deploy?"), event_id="EvMention1")
    assert response.status == 200

    [posted] = slack.wait_for("chat.postMessage")
    assert posted.params["channel"] == "C1"
    assert posted.params["thread_ts"] == "1700000100.000100"
    text = all_text(posted.blocks)
    assert "`make deploy`" in text and "*main*" in text
    assert "*Sources*" in text
    assert "<https://docs.example.com/ops/deploy|[1] Deploying › Steps>" in text
    assert "[2] Rollbacks · `ops/rollback.md`" in text
    assert "$0.0007" in text
    buttons = feedback_buttons(posted.blocks)  # Slack's native feedback buttons
    assert buttons["action_id"] == ACTION_FEEDBACK
    assert (buttons["positive_button"]["value"], buttons["negative_button"]["value"]) == ("up:entry-1",
                                                                                           "down:entry-1")
    assert "make deploy" in posted.params["text"]  # the notification fallback

    [question] = answerer.questions
    assert question == Question(
        text="how do I deploy?",
        user_id="U1",
        workspace_id=TEAM,
        request_id="EvMention1",
        channel_id="C1",
        history=(),
        fresh=False,
    )


def test_a_thread_shows_slacks_status_while_penny_works_and_it_is_cleared_after(
    penny: Harness, slack: FakeSlack
) -> None:
    penny.event(mention("<@UPENNY> how do I deploy?"))
    wait_cleared(slack)
    assert methods(slack) == ["assistant.threads.setStatus", "chat.postMessage", "assistant.threads.setStatus"]
    shown, cleared = slack.calls("assistant.threads.setStatus")
    assert (shown.params["channel_id"], shown.params["thread_ts"]) == ("C1", "1700000100.000100")
    assert shown.params["status"] == "is searching the docs…"  # Slack shows "Penny is searching the docs…"
    assert cleared.params["status"] == "" and slack.status("C1", "1700000100.000100") == ""
    assert slack.count("reactions.add") == 0  # no 👀 where the status applies


def test_a_top_level_dm_question_gets_the_eyes_reaction(penny: Harness, slack: FakeSlack) -> None:
    penny.event(message("how do I deploy?", channel="D1", channel_type="im", ts="1700000400.000100"))
    wait_cleared(slack)
    assert methods(slack) == ["reactions.add", "chat.postMessage", "reactions.remove"]
    for call in (slack.last("reactions.add"), slack.last("reactions.remove")):
        assert (call.params["channel"], call.params["timestamp"], call.params["name"]) == (
            "D1",
            "1700000400.000100",
            "eyes",
        )


@pytest.mark.parametrize("error", ["missing_scope", "channel_type_not_supported"])
def test_where_slack_refuses_the_status_the_question_gets_the_eyes_instead(
    penny: Harness, slack: FakeSlack, error: str
) -> None:
    slack.fail("assistant.threads.setStatus", error)
    penny.event(mention("<@UPENNY> how do I deploy?", ts="1700000100.000100"))
    wait_cleared(slack)
    penny.event(mention("<@UPENNY> and rollbacks?", ts="1700000500.000100"))
    wait_cleared(slack, 2)
    statuses = slack.count("assistant.threads.setStatus")
    if error == "missing_scope":  # will not change: statuses are off until Penny restarts
        assert methods(slack) == ["assistant.threads.setStatus", "reactions.add", "chat.postMessage",
                                 "reactions.remove", "reactions.add", "chat.postMessage", "reactions.remove"]
    else:  # this conversation only: the next question tries the status again
        assert statuses == 3 and slack.count("reactions.add") == 1


def test_an_answer_out_within_the_grace_period_gets_no_eyes_reaction(
    slack: FakeSlack, sqlite_store: SqliteStore, answerer: ScriptedAnswerer
) -> None:
    working = WorkingIndicator(grace_s=60)  # Penny's own indicator; no answer here takes 60 s
    harness = Harness(slack, sqlite_store, answerer, working=working)
    harness.event(mention("<@UPENNY> how do I deploy?"))
    slack.wait_for("chat.postMessage")
    harness.settle()
    working.close()
    assert methods(slack) == ["chat.postMessage"]


@pytest.mark.parametrize("method", ["reactions.add", "assistant.threads.setStatus"])
def test_a_throttled_reaction_or_status_does_not_hold_the_answer_back(penny: Harness, slack: FakeSlack,
                                                                      method: str) -> None:
    slack.rate_limit(method, retry_after=30)  # reactions.add is Tier 3: a burst reaches it
    if method == "reactions.add":
        penny.event(message("how do I deploy?", channel="D1", channel_type="im"))
    else:
        penny.event(mention("<@UPENNY> how do I deploy?"))
    slack.wait_for("chat.postMessage")  # not 30 s later
    penny.settle()
    assert methods(slack) == [method, "chat.postMessage"]  # skipped: nothing to take off


def test_a_thread_follow_up_without_a_mention_is_answered_with_the_thread_as_history(
    penny: Harness, slack: FakeSlack, answerer: ScriptedAnswerer
) -> None:
    root = "1700000100.000100"
    penny.event(mention("<@UPENNY> how do I deploy?", ts=root))
    [first] = slack.wait_for("chat.postMessage")
    wait_cleared(slack)  # the thread is remembered once the answer is out
    slack.set_replies(
        "C1",
        root,
        [
            {"type": "message", "user": "U1", "text": "<@UPENNY> how do I deploy?", "ts": root},
            {
                "type": "message",
                "user": BOT_USER,
                "bot_id": BOT_ID,
                "text": "Run make deploy [1].",
                "ts": "1700000150.0",
            },
            {"type": "message", "user": "U2", "text": "thanks!", "ts": "1700000160.0", "thread_ts": root},
            {"type": "message", "user": "U1", "text": "and on staging?", "ts": "1700000200.000100", "thread_ts": root},
        ],
    )
    penny.event(message("and on staging?", thread_ts=root), event_id="EvFollow")
    slack.wait_for("chat.postMessage", 2)

    follow_up = answerer.questions[-1]
    assert follow_up.text == "and on staging?"
    assert follow_up.request_id == "EvFollow"
    assert follow_up.history == (
        ("user", "how do I deploy?"),
        ("assistant", "Run make deploy [1]."),
        ("user", "thanks!"),
    )
    replies = slack.last("conversations.replies")
    assert (replies.params["channel"], replies.params["ts"]) == ("C1", root)
    assert slack.last("chat.postMessage").params["thread_ts"] == root
    assert first.params["thread_ts"] == root


def test_a_long_thread_gives_its_root_and_its_latest_turns_as_history(
    penny: Harness, slack: FakeSlack, answerer: ScriptedAnswerer
) -> None:
    root = "1700000100.000100"
    penny.event(mention("<@UPENNY> how do I deploy?", ts=root))
    wait_cleared(slack)  # the thread is remembered once the answer is out
    replies = [{"type": "message", "user": "U1", "text": "<@UPENNY> how do I deploy?", "ts": root}]
    replies += [{"type": "message", "user": f"U{2 + i % 3}", "text": f"reply {i}", "ts": f"{1700000200 + i}.000100",
                 "thread_ts": root} for i in range(450)]
    asked = f"{1700000200 + 450}.000100"
    replies.append({"type": "message", "user": "U1", "text": "and on staging?", "ts": asked, "thread_ts": root})
    replies += [{"type": "message", "user": "U2", "text": "later", "ts": f"{1700000200 + 451 + i}.000100",
                 "thread_ts": root} for i in range(300)]  # posted while Penny works: no more pages for them
    slack.set_replies("C1", root, replies)

    penny.event(message("and on staging?", ts=asked, thread_ts=root), event_id="EvLong")
    slack.wait_for("chat.postMessage", 2)

    latest = tuple(("user", f"reply {i}") for i in range(441, 450))
    assert answerer.questions[-1].history == (("user", "how do I deploy?"), *latest)
    pages = slack.calls("conversations.replies")
    assert [call.params.get("cursor") is None for call in pages] == [True, False, False]  # up to the question
    assert {call.params["limit"] for call in pages} == {"200"}


def _answered_thread(penny: Harness, slack: FakeSlack) -> str:
    root = "1700000100.000100"
    penny.event(mention("<@UPENNY> how do I deploy?", ts=root))
    wait_cleared(slack)  # the thread is remembered once the answer is out
    return root


def test_chatter_in_a_thread_gets_no_reply_and_the_log_says_why(
    penny: Harness, slack: FakeSlack, answerer: ScriptedAnswerer
) -> None:
    root = _answered_thread(penny, slack)
    calls = slack.count()
    with structlog.testing.capture_logs() as logs:
        for i, text in enumerate(["thanks!", "lol", "ok cool, will do", "+1"]):
            penny.event(message(text, ts=f"{1700000200 + i}.0", thread_ts=root, user="U2"), event_id=f"EvChat{i}")
        penny.event(message("ok but how do I roll back?", ts="1700000300.0", thread_ts=root), event_id="EvAsk")
        penny.settle()
    assert sorted(q.text for q in answerer.questions) == ["how do I deploy?", "ok but how do I roll back?"]
    assert slack.count("chat.postMessage") == 2
    assert slack.count("conversations.replies") == 1  # for the question; chatter costs no Slack call
    assert slack.count() - calls == 4  # its reactions, history and answer
    decisions = [(e["event"], e["reason"], e["event_id"]) for e in logs if e["event"].startswith("slack.thread_reply")]
    assert sorted(decisions) == sorted([
        ("slack.thread_reply_skipped", "thanks", "EvChat0"),
        ("slack.thread_reply_skipped", "laughter", "EvChat1"),
        ("slack.thread_reply_skipped", "acknowledgement", "EvChat2"),
        ("slack.thread_reply_skipped", "plus_one", "EvChat3"),
        ("slack.thread_reply_answered", "question", "EvAsk"),
    ])


@pytest.mark.parametrize(
    ("mode", "answered"),
    [
        pytest.param("questions", ["and on staging?"], id="questions"),
        pytest.param("all", ["thanks!", "and on staging?"], id="all"),
        pytest.param("mentions", [], id="mentions"),
    ],
)
def test_thread_replies_setting_chooses_which_replies_are_answered(
    slack: FakeSlack, sqlite_store: SqliteStore, mode: ThreadReplies, answered: list[str]
) -> None:
    answerer = ScriptedAnswerer()
    penny = Harness(slack, sqlite_store, answerer, thread_replies=mode)
    try:
        root = _answered_thread(penny, slack)
        for i, text in enumerate(["thanks!", "<@U2> can you check?", "and on staging?"]):
            penny.event(message(text, ts=f"{1700000200 + i}.0", thread_ts=root))
        penny.event(mention("<@UPENNY> and rollbacks?", ts="1700000300.0", thread_ts=root))
    finally:
        penny.settle()
    assert sorted(q.text for q in answerer.questions) == sorted(["how do I deploy?", *answered, "and rollbacks?"])


def test_a_thread_penny_is_not_part_of_is_left_alone(
    penny: Harness, slack: FakeSlack, answerer: ScriptedAnswerer
) -> None:
    penny.event(message("what about staging?", thread_ts="1699999999.000001"))
    penny.settle()
    assert answerer.questions == []
    assert methods(slack) == []  # not even conversations.replies: the store knows Penny's threads


def test_a_private_channel_thread_follow_up_is_answered(
    penny: Harness, slack: FakeSlack, answerer: ScriptedAnswerer
) -> None:
    root = "1700000100.000100"
    penny.event({**mention("<@UPENNY> how do I deploy?", ts=root), "channel": "G1"})
    slack.wait_for("chat.postMessage")
    wait_cleared(slack)  # the thread is remembered once the answer is out
    penny.event(message("and rollbacks?", channel="G1", channel_type="group", thread_ts=root))
    [_, second] = slack.wait_for("chat.postMessage", 2)
    assert (second.params["channel"], second.params["thread_ts"]) == ("G1", root)
    assert [q.text for q in answerer.questions] == ["how do I deploy?", "and rollbacks?"]


def test_a_group_dm_thread_follow_up_is_answered(
    penny: Harness, slack: FakeSlack, answerer: ScriptedAnswerer
) -> None:
    root = "1700000100.000100"
    penny.event({**mention("<@UPENNY> how do I deploy?", ts=root), "channel": "G2"})
    wait_cleared(slack)  # the thread is remembered once the answer is out
    penny.event(message("thanks!", channel="G2", channel_type="mpim", thread_ts=root, ts="1700000150.0"))
    penny.event(message("and rollbacks?", channel="G2", channel_type="mpim", thread_ts=root))
    penny.event(message("a group DM message without a mention", channel="G2", channel_type="mpim"))
    penny.settle()
    [_, second] = slack.calls("chat.postMessage")
    assert (second.params["channel"], second.params["thread_ts"]) == ("G2", root)
    assert [q.text for q in answerer.questions] == ["how do I deploy?", "and rollbacks?"]


def test_a_direct_message_is_answered(penny: Harness, slack: FakeSlack, answerer: ScriptedAnswerer) -> None:
    penny.event(message("how do I deploy?", channel="D1", channel_type="im"), event_id="EvDM")
    [posted] = slack.wait_for("chat.postMessage")
    assert posted.params["channel"] == "D1"
    assert "thread_ts" not in posted.params
    assert "*Sources*" in all_text(posted.blocks)
    [question] = answerer.questions
    assert (question.text, question.channel_id, question.request_id, question.history) == (
        "how do I deploy?",
        "D1",
        "EvDM",
        (),
    )


@pytest.mark.parametrize(
    "event",
    [
        pytest.param(message("from a bot", channel_type="im", bot_id="B0OTHER", user=None), id="other-bot"),
        pytest.param(message("bot with user", channel_type="im", bot_id="B0OTHER", user="U9"), id="bot-with-user"),
        pytest.param(message("myself", channel_type="im", user=BOT_USER), id="penny-by-user"),
        pytest.param(message("myself", channel_type="im", user=BOT_USER, bot_id=BOT_ID), id="penny-by-bot-id"),
        pytest.param(mention("<@UPENNY> hi", user=BOT_USER), id="penny-mentions-itself"),
        pytest.param(
            message("", channel_type="im", user=None, subtype="message_changed", message={"text": "x", "user": "U1"}),
            id="edit",
        ),
        # An edit's app_mention (answered when it adds the mention, in time): tests/test_slack_edits.py.
        pytest.param({**message("how do I deploy? (typo fixed)", channel_type="im"),
                      "edited": {"user": "U1", "ts": "1700000250.000000"}}, id="edited-dm"),
        pytest.param(message("", channel_type="im", user=None, subtype="message_deleted"), id="delete"),
        pytest.param(message("<@U1> has joined the channel", subtype="channel_join"), id="join"),
        pytest.param(message("hello", channel_type="im", subtype="bot_message", bot_id="B0OTHER"), id="bot-message"),
        pytest.param(message("just chatting in the channel"), id="channel-top-level"),
    ],
)
def test_messages_not_for_penny_are_ignored(
    penny: Harness, slack: FakeSlack, answerer: ScriptedAnswerer, event: dict[str, Any]
) -> None:
    assert penny.event(event).status == 200
    penny.settle()
    assert answerer.questions == []
    assert methods(slack) == []


def test_in_a_thread_a_mention_is_answered_once_and_a_reply_to_others_not_at_all(
    penny: Harness, slack: FakeSlack, answerer: ScriptedAnswerer
) -> None:
    root = "1700000100.000100"
    penny.event(mention("<@UPENNY> how do I deploy?", ts=root))
    slack.wait_for("chat.postMessage")
    wait_cleared(slack)  # the thread is remembered once the answer is out
    later = "1700000300.000100"
    # Slack delivers the same message as app_mention and as message, under different event IDs.
    penny.event(mention("<@UPENNY> and staging?", ts=later, thread_ts=root), event_id="EvAsMention")
    penny.event(message("<@UPENNY> and staging?", ts=later, thread_ts=root), event_id="EvAsMessage")
    # A reply in the thread addressed to someone else is not for Penny.
    penny.event(message("<@U2> can you check staging?", ts="1700000400.0", thread_ts=root), event_id="EvToU2")
    penny.settle()
    assert slack.count("chat.postMessage") == 2
    assert [q.request_id for q in answerer.questions][1:] == ["EvAsMention"]


def test_the_same_event_delivered_three_times_is_answered_once(
    penny: Harness, slack: FakeSlack, answerer: ScriptedAnswerer
) -> None:
    event = mention("<@UPENNY> how do I deploy?")
    assert penny.event(event, event_id="EvDup").status == 200
    retry = {"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"}
    assert penny.event(event, event_id="EvDup", headers=retry).status == 200
    assert penny.event(event, event_id="EvDup", headers={**retry, "X-Slack-Retry-Num": "2"}).status == 200
    penny.settle()
    assert slack.count("chat.postMessage") == 1
    assert slack.count("assistant.threads.setStatus") == 2  # shown once, cleared once
    assert [q.request_id for q in answerer.questions] == ["EvDup"]


@pytest.mark.parametrize(
    ("stamp_offset", "secret"),
    [pytest.param(0, "forged-secret", id="forged-signature"), pytest.param(-600, SECRET, id="expired-timestamp")],
)
def test_unsigned_or_stale_requests_are_rejected(
    penny: Harness, slack: FakeSlack, answerer: ScriptedAnswerer, stamp_offset: int, secret: str
) -> None:
    response = penny.event(
        mention("<@UPENNY> how do I deploy?"), timestamp=int(time.time()) + stamp_offset, secret=secret
    )
    assert response.status == 401
    penny.settle()
    assert slack.calls() == []
    assert answerer.questions == []


# ---------------------------------------------------------------------------------------------
# Refusals, no match, odd input


@pytest.mark.parametrize(
    ("answer", "heading"),
    [
        (
            Answer(
                kind="refused", text="You're asking fast; try again in 30 s.", refusal="rate_limited", retry_after=30
            ),
            "Slow down a little",
        ),
        (Answer(kind="refused", text="Your daily budget is spent.", refusal="over_budget"), "The budget is used up"),
        (
            Answer(kind="refused", text="The AI service is failing; back soon.", refusal="breaker_open"),
            "The AI service is having trouble",
        ),
        (
            Answer(kind="refused", text="Already answering this one.", refusal="in_flight"),
            "Penny can't answer right now",
        ),
        (
            Answer(kind="error", text="The model did not answer.", refusal="upstream_error"),
            "Penny couldn't get an answer",
        ),
        (Answer(kind="error", text="The model did not answer."), "Penny couldn't get an answer"),
    ],
    ids=["rate_limited", "over_budget", "breaker_open", "in_flight", "upstream_error", "error-without-reason"],
)
def test_a_refusal_goes_to_the_asker_alone_with_the_closest_docs(
    slack: FakeSlack, sqlite_store: SqliteStore, answer: Answer, heading: str
) -> None:
    refused = Answer(
        kind=answer.kind, text=answer.text, refusal=answer.refusal, retry_after=answer.retry_after, citations=CITATIONS
    )
    penny = Harness(slack, sqlite_store, ScriptedAnswerer(refused))
    try:
        penny.event(mention("<@UPENNY> how do I deploy?"))
        [ephemeral] = slack.wait_for("chat.postEphemeral")
        wait_cleared(slack)
    finally:
        penny.settle()
    assert (ephemeral.params["channel"], ephemeral.params["user"]) == ("C1", "U1")
    assert ephemeral.params["thread_ts"] == "1700000100.000100"
    text = all_text(ephemeral.blocks)
    assert heading in text
    assert answer.text in text
    assert "Closest docs" in text and "https://docs.example.com/ops/deploy" in text and "ops/rollback.md" in text
    assert heading in ephemeral.params["text"]
    assert slack.count("chat.postMessage") == 0


def test_no_match_is_an_ordinary_reply_in_the_thread(slack: FakeSlack, sqlite_store: SqliteStore) -> None:
    no_match = Answer(kind="no_match", text="I found nothing in the docs about that.", citations=CITATIONS[:1])
    penny = Harness(slack, sqlite_store, ScriptedAnswerer(no_match))
    try:
        penny.event(mention("<@UPENNY> what's the wifi password?"))
        [posted] = slack.wait_for("chat.postMessage")
    finally:
        penny.settle()
    assert posted.params["thread_ts"] == "1700000100.000100"
    text = all_text(posted.blocks)
    assert "No docs match your question" in text and "I found nothing in the docs" in text
    assert "https://docs.example.com/ops/deploy" in text
    assert slack.count("chat.postEphemeral") == 0


def test_an_empty_mention_gets_help_without_asking_the_service(
    penny: Harness, slack: FakeSlack, answerer: ScriptedAnswerer
) -> None:
    penny.event(mention("<@UPENNY>   "))
    [posted] = slack.wait_for("chat.postMessage")
    penny.settle()
    assert posted.params["thread_ts"] == "1700000100.000100"
    assert HELP_TEXT in all_text(posted.blocks)
    assert answerer.questions == []
    assert methods(slack) == ["chat.postMessage"]


FILE = {"id": "F1", "name": "runbook.pdf", "mimetype": "application/pdf"}


def test_a_file_shared_without_words_is_told_penny_reads_text_only(
    penny: Harness, slack: FakeSlack, answerer: ScriptedAnswerer
) -> None:
    penny.event(message("", channel="D1", channel_type="im", subtype="file_share", files=[FILE]))
    [posted] = slack.wait_for("chat.postMessage")
    penny.settle()
    assert FILES_ONLY_TEXT in all_text(posted.blocks) and HELP_TEXT not in all_text(posted.blocks)
    assert answerer.questions == []


def test_a_question_with_a_file_is_answered_from_its_words_and_says_the_file_was_not_read(
    penny: Harness, slack: FakeSlack, answerer: ScriptedAnswerer
) -> None:
    penny.event(mention("<@UPENNY> how do I deploy? see attached") | {"files": [FILE]})
    [posted] = slack.wait_for("chat.postMessage")
    penny.settle()
    [question] = answerer.questions
    assert question.text == "how do I deploy? see attached"
    assert posted.blocks[0]["type"] == "context" and FILES_NOTE in all_text(posted.blocks[:1])
    assert "*Sources*" in all_text(posted.blocks)


def test_a_40000_character_message_is_truncated_and_the_reply_says_so(
    penny: Harness, slack: FakeSlack, answerer: ScriptedAnswerer
) -> None:
    huge = "why " * 10_000
    penny.event(mention("<@UPENNY> " + huge))
    [posted] = slack.wait_for("chat.postMessage")
    [question] = answerer.questions
    assert len(question.text) == MAX_QUESTION_CHARS
    assert huge.strip().startswith(question.text.strip())
    assert posted.blocks[0]["type"] == "context"
    assert "read only its first 4,000 characters" in all_text(posted.blocks)
    assert "*Sources*" in all_text(posted.blocks)


def test_a_failing_service_gets_an_apology_and_the_reaction_still_goes(
    slack: FakeSlack, sqlite_store: SqliteStore
) -> None:
    penny = Harness(slack, sqlite_store, ScriptedAnswerer(raises=RuntimeError("a bug in the service")))
    with structlog.testing.capture_logs() as logs:
        try:
            penny.event(mention("<@UPENNY> how do I deploy?"))
            [ephemeral] = slack.wait_for("chat.postEphemeral")
            wait_cleared(slack)
        finally:
            penny.settle()
    assert "try again" in all_text(ephemeral.blocks)
    assert methods(slack) == ["assistant.threads.setStatus", "chat.postEphemeral", "assistant.threads.setStatus"]
    assert any(entry["event"] == "slack.answerer_failed" for entry in logs)


def test_a_429_on_post_message_is_retried_and_the_answer_arrives(penny: Harness, slack: FakeSlack) -> None:
    slack.rate_limit("chat.postMessage", retry_after=0)
    penny.event(mention("<@UPENNY> how do I deploy?"))
    limited, delivered = slack.wait_for("chat.postMessage", 2)
    assert (limited.status, delivered.status) == (429, 200)
    assert delivered.blocks == limited.blocks
    wait_cleared(slack)


LONG_ANSWER = Answer(kind="answer", text="\n\n".join(f"Step {n}: " + "run the deploy script. " * 200
                                                     for n in range(1, 13)),
                     citations=CITATIONS, footer="gpt-4.1-mini · 9,000 tokens · $0.0100", entry_id="entry-long")


@pytest.mark.parametrize("fault", [SlackFault(500, {"ok": False, "error": "internal_error"}),
                                   SlackFault(200, {"ok": False, "error": "msg_too_long"})],
                         ids=["http_500", "msg_too_long"])
@pytest.mark.parametrize("posted_first", [False, True], ids=["first_message", "second_message"])
def test_an_answer_slack_will_not_post_in_the_thread_goes_to_the_asker_alone(
    slack: FakeSlack, sqlite_store: SqliteStore, fault: SlackFault, posted_first: bool
) -> None:
    """A paid answer (or the rest of a long one) Slack refuses is shown to the asker privately,
    saying so, once: it used to vanish, leaving nothing (or half an answer without its sources)."""
    penny = Harness(slack, sqlite_store, ScriptedAnswerer(LONG_ANSWER))
    if posted_first:
        slack.script("chat.postMessage", SlackFault(200, {"ok": True, "channel": "C1", "ts": "1700000200.000001"}))
    slack.script("chat.postMessage", fault)
    try:
        penny.event(mention("<@UPENNY> how do I deploy?"))
        wait_cleared(slack)
    finally:
        penny.settle()
    posts = slack.calls("chat.postMessage")
    assert len(posts) == 1 + posted_first  # nothing posted twice, nothing after the refused one
    shown = slack.calls("chat.postEphemeral")
    assert shown, "the answer was lost"
    assert all(c.params["user"] == "U1" and c.params["thread_ts"] == ROOT for c in shown)
    assert shown[0].blocks[0] == {"type": "context", "elements": [{"type": "mrkdwn", "text": (
        REST_NOT_POSTED_NOTE if posted_first else ANSWER_NOT_POSTED_NOTE)}]}
    assert shown[0].blocks[1:] == posts[-1].blocks  # from the refused message on, nothing skipped
    last = all_text(shown[-1].blocks)
    assert "Step 12" in last and "$0.0100" in last  # the end of the answer, with its cost line
    everything = " ".join(all_text(c.blocks) for c in shown)
    assert "127.0.0.1" not in everything and "internal_error" not in everything and "msg_too_long" not in everything
    if posted_first:  # Penny did post in the thread: a later reply there is heard
        assert sqlite_store.record_get(THREADS_KIND, f"{TEAM}:C1:{ROOT}") == "1"


def test_an_answer_whose_connection_drops_after_slack_posted_it_is_not_posted_again(
    penny: Harness, slack: FakeSlack
) -> None:
    """The connection drops once Slack has the post: the SDK's connection retry sent it again, and the
    answer showed twice in the thread. Now it is posted once, and the asker alone gets a copy."""
    slack.hang_up("chat.postMessage")
    penny.event(mention("<@UPENNY> how do I deploy?"))
    wait_cleared(slack)
    penny.settle()
    assert slack.count("chat.postMessage") == 1
    assert len(slack.messages("C1")) == 1
    [copy_] = slack.calls("chat.postEphemeral")
    assert copy_.blocks[0]["elements"][0]["text"] == ANSWER_NOT_POSTED_NOTE


@pytest.mark.parametrize(("method", "error", "retried"), [
    ("chat.postMessage", URLError(ConnectionRefusedError(111, "Connection refused")), True),
    ("chat.postMessage", URLError(socket.gaierror(-2, "Name or service not known")), True),
    ("chat.postMessage", RemoteDisconnected("Remote end closed connection without response"), False),
    ("chat.postMessage", ConnectionResetError(104, "Connection reset by peer"), False),
    ("chat.startStream", ConnectionResetError(104, "Connection reset by peer"), False),
    ("chat.appendStream", URLError(ConnectionResetError(104, "Connection reset by peer")), False),
    ("chat.update", RemoteDisconnected("Remote end closed connection without response"), True),
    ("reactions.remove", ConnectionResetError(104, "Connection reset by peer"), True),
])
def test_a_post_is_retried_after_a_connection_error_only_when_it_never_reached_slack(
    method: str, error: Exception, retried: bool
) -> None:
    request = HttpRequest(method="POST", url=f"https://slack.com/api/{method}", headers={})
    assert ConnectionRetry(max_retry_count=2).can_retry(state=RetryState(), request=request, error=error) is retried


# ---------------------------------------------------------------------------------------------
# Feedback and fresh answers


def _answered(penny: Harness, slack: FakeSlack) -> SlackCall:
    penny.event(mention("<@UPENNY> how do I deploy?"))
    [posted] = slack.wait_for("chat.postMessage")
    return posted


def test_thumbs_up_is_recorded_and_acknowledged_to_the_voter_alone(slack: FakeSlack,
                                                                   sqlite_store: SqliteStore) -> None:
    penny = Harness(slack, sqlite_store, ScriptedAnswerer(ANSWER))
    try:
        answer_ts = _answer_ts(slack)
        _answered(penny, slack)
        wait_cleared(slack)
        assert penny.action(feedback_click("up", "entry-1", message_ts=answer_ts)).status == 200
        [ack] = slack.wait_for("chat.postEphemeral")
    finally:
        penny.settle()
    assert penny.feedback == [("U1", "entry-1", True)]
    assert (ack.params["user"], ack.params["channel"], ack.params["thread_ts"]) == ("U1", "C1", "1700000100.000100")
    assert "this answer helped" in all_text(ack.blocks)
    assert not [b for b in ack.blocks if b["type"] == "actions"]  # nothing more to do after a 👍


def test_thumbs_down_on_a_fresh_answer_is_acknowledged_and_offers_to_say_why(
    slack: FakeSlack, sqlite_store: SqliteStore
) -> None:
    from bot.feedback import feedback_counts
    from bot.slack.agent import ACTION_FEEDBACK_REASON, REASON_CALLBACK

    penny = Harness(slack, sqlite_store, ScriptedAnswerer(ANSWER))
    try:
        answer_ts = _answer_ts(slack)
        _answered(penny, slack)
        wait_cleared(slack)
        assert penny.action(feedback_click("down", "entry-1", message_ts=answer_ts)).status == 200
        [ack] = slack.wait_for("chat.postEphemeral")
        assert "did not help" in all_text(ack.blocks)
        [actions] = [b for b in ack.blocks if b["type"] == "actions"]
        [why] = actions["elements"]  # a fresh answer is not offered: it was not from the cache
        assert why["action_id"] == ACTION_FEEDBACK_REASON

        click = block_action({"action_id": ACTION_FEEDBACK_REASON, "block_id": "b", "value": why["value"]},
                             message_ts="1700000999.000001")
        assert penny.action(click).status == 200
        [opened] = slack.wait_for("views.open")
        form = opened.json_param("view")
        assert opened.params["trigger_id"] == click["trigger_id"]
        assert form["callback_id"] == REASON_CALLBACK and form["blocks"][0]["optional"] is True

        submitted = {"type": "view_submission", "team": {"id": TEAM}, "user": {"id": "U1", "team_id": TEAM},
                     "api_app_id": "A0PENNY", "trigger_id": "t2",
                     "view": {**form, "id": "V1", "state": {"values": {"reason": {"text": {
                         "type": "plain_text_input", "value": "  It cited the old\nrunbook. "}}}}}}
        assert penny.action(submitted).status == 200
        [_, thanks] = slack.wait_for("chat.postEphemeral", 2)
        assert "saved with your 👎" in str(thanks.params["text"]) and thanks.params["thread_ts"] == "1700000100.000100"
        counts = feedback_counts(sqlite_store, TEAM)
        assert (counts.total.up, counts.total.down) == (0, 1)
        [reason] = counts.reasons
        assert (reason.user, reason.answer, reason.text) == ("U1", "entry-1", "It cited the old runbook.")
        assert set(reason.pages) == {c.path for c in ANSWER.citations}

        # A 👍 since, then the form (still open) sent again: the note does not turn the vote back.
        assert penny.action(feedback_click("up", "entry-1", message_ts=answer_ts)).status == 200
        slack.wait_for("chat.postEphemeral", 3)
        assert penny.action(submitted).status == 200
        [*_, refused] = slack.wait_for("chat.postEphemeral", 4)
    finally:
        penny.settle()
    assert penny.feedback == [("U1", "entry-1", False), ("U1", "entry-1", True)]
    assert "not saved" in str(refused.params["text"]) and "👍" in str(refused.params["text"])
    counts = feedback_counts(sqlite_store, TEAM)
    assert (counts.total.up, counts.total.down, counts.reasons) == (1, 0, [])


@pytest.mark.parametrize("view", [
    {"private_metadata": "up:entry-1"},  # not JSON: json.loads raised
    {"private_metadata": "[]"},  # JSON, not an object: .get raised
    {"private_metadata": json.dumps({"e": ["entry-1"], "c": {"id": "C1"}, "m": None})},  # posted to channel "{...}"
    {"private_metadata": json.dumps({"e": "entry-1", "c": "C1", "m": "1.1"}), "state": "x"},  # state not an object
    {"private_metadata": json.dumps({"e": "entry-1", "c": "C1", "m": "1.1"}),
     "state": {"values": {"reason": {"text": {"value": {"text": "it was wrong"}}}}}},  # a value that is not text
], ids=["metadata-not-json", "metadata-a-list", "metadata-fields-not-text", "state-a-string", "value-an-object"])
def test_a_reason_form_penny_did_not_write_is_acked_and_dropped_without_a_traceback(
    penny: Harness, slack: FakeSlack, sqlite_store: SqliteStore, view: dict[str, Any]
) -> None:
    """The 👎 reason form carries what Penny wrote into it (its ``private_metadata``) back; a
    submission whose metadata or state is not that shape logged a traceback as ``slack.reason_failed``
    (an error, as for a bug), or posted the thanks to a channel named ``str()`` of an object."""
    from bot.feedback import feedback_counts
    from bot.slack.agent import REASON_CALLBACK

    state = {"values": {"reason": {"text": {"type": "plain_text_input", "value": "It cited the old runbook."}}}}
    submitted = {"type": "view_submission", "team": {"id": TEAM}, "user": {"id": "U1", "team_id": TEAM},
                 "api_app_id": "A0PENNY", "trigger_id": "t2",
                 "view": {"id": "V1", "type": "modal", "callback_id": REASON_CALLBACK, "state": state, **view}}
    with structlog.testing.capture_logs() as logs:
        assert penny.action(submitted).status == 200
        penny.settle()
    assert [log for log in logs if log["log_level"] in ("error", "critical")] == []
    assert methods(slack) == []
    counts = feedback_counts(sqlite_store, TEAM)
    assert (counts.total.down, counts.reasons) == (0, [])


def test_the_buttons_of_answers_posted_before_native_feedback_still_count(slack: FakeSlack,
                                                                          sqlite_store: SqliteStore) -> None:
    penny = Harness(slack, sqlite_store, ScriptedAnswerer(ANSWER))
    try:
        click = {"action_id": ACTION_FEEDBACK_UP, "block_id": "penny_feedback", "value": "entry-1"}
        assert penny.action(block_action(click, message_ts="1700000001.000001")).status == 200
        slack.wait_for("chat.postEphemeral")
    finally:
        penny.settle()
    assert penny.feedback == [("U1", "entry-1", True)]



def test_a_vote_in_a_channel_penny_has_left_is_still_acknowledged_to_the_voter(slack: FakeSlack,
                                                                              sqlite_store: SqliteStore) -> None:
    """Slack refuses Penny's ephemeral where she is no longer a member: the vote's acknowledgement
    (and the offers under it) comes through the click's response URL instead."""
    penny = Harness(slack, sqlite_store, ScriptedAnswerer(ANSWER))
    try:
        click = feedback_click("down", "entry-1", message_ts="1700000001.000001")
        click["response_url"] = slack.base_url + "respond/vote"
        slack.fail("chat.postEphemeral", "not_in_channel")
        assert penny.action(click).status == 200
        [shown] = slack.wait_for("respond/vote")
    finally:
        penny.settle()
    assert penny.feedback == [("U1", "entry-1", False)]
    assert shown.params["response_type"] == "ephemeral" and shown.json_param("replace_original") in (False, "false")
    assert "did not help" in all_text(shown.blocks)

ANSWER_TS = "1700000500.000500"


def _answer_ts(slack: FakeSlack) -> str:
    """Pin the ts of every chat.postMessage so a test can click buttons on "that" message."""
    slack.respond("chat.postMessage", lambda call: {"ok": True, "channel": call.params.get("channel"), "ts": ANSWER_TS})
    return ANSWER_TS


def test_thumbs_down_on_a_cached_answer_offers_a_fresh_one(slack: FakeSlack, sqlite_store: SqliteStore) -> None:
    cached = Answer(
        kind="answer",
        text="Run `make deploy` [1].",
        citations=CITATIONS[:1],
        footer="cached (similar question, 0.97), saved $0.0012",
        entry_id="entry-7",
        cached=True,
    )
    fresh = Answer(kind="answer", text="Run `make release` now [1].", citations=CITATIONS[:1], entry_id="entry-8")
    answerer = ScriptedAnswerer(cached, fresh)
    penny = Harness(slack, sqlite_store, answerer)
    try:
        answer_ts = _answer_ts(slack)
        _answered(penny, slack)
        wait_cleared(slack)
        root = "1700000100.000100"
        assert penny.action(feedback_click("down", "entry-7", message_ts=answer_ts)).status == 200
        [offer] = slack.wait_for("chat.postEphemeral")
        assert (offer.params["user"], offer.params["channel"], offer.params["thread_ts"]) == ("U1", "C1", root)
        assert "did not help" in all_text(offer.blocks)
        [actions] = [b for b in offer.blocks if b["type"] == "actions"]
        [_why, button] = actions["elements"]
        assert button["action_id"] == ACTION_FRESH_ANSWER
        assert json.loads(button["value"]) == {"answer": answer_ts}  # the question is read from its record
        assert button["text"]["text"] == "Get a fresh answer"

        click = {"action_id": ACTION_FRESH_ANSWER, "block_id": actions["block_id"], "value": button["value"]}
        payload = block_action(click, message_ts="1700000999.000001")
        payload["container"]["is_ephemeral"] = True
        payload["response_url"] = slack.base_url + "respond/ephemeral-offer"
        assert penny.action(payload).status == 200
        [_, again] = slack.wait_for("chat.postMessage", 2)
        slack.wait_for("respond/ephemeral-offer")
    finally:
        penny.settle()
    assert penny.feedback == [("U1", "entry-7", False)]
    assert again.params["thread_ts"] == root
    assert "make release" in all_text(again.blocks)
    first, second = answerer.questions
    assert (first.fresh, second.fresh) == (False, True)
    assert second.text == "how do I deploy?" and second.user_id == "U1" and second.channel_id == "C1"
    assert second.request_id != first.request_id
    assert slack.last("respond/ephemeral-offer").json_param("delete_original") in (True, "true")


def _fresh_click(slack: FakeSlack, penny: Harness, answer_ts: str, *, channel: str = "C1") -> dict[str, Any]:
    """👎 the cached answer at ``answer_ts``; the click on the "Get a fresh answer" it offers, made in ``channel``."""
    assert penny.action(feedback_click("down", "entry-7", message_ts=answer_ts)).status == 200
    [offer] = slack.wait_for("chat.postEphemeral")
    [actions] = [b for b in offer.blocks if b["type"] == "actions"]
    [button] = [e for e in actions["elements"] if e["action_id"] == ACTION_FRESH_ANSWER]
    click = {"action_id": ACTION_FRESH_ANSWER, "block_id": actions["block_id"], "value": button["value"]}
    payload = block_action(click, message_ts="1700000999.000001", channel=channel)
    payload["container"]["is_ephemeral"] = True
    return payload


def _cached_then_fresh(slack: FakeSlack, store: SqliteStore) -> tuple[ScriptedAnswerer, Harness]:
    """A Penny whose first answer (entry-7) is a cached one, then a fresh one when asked again."""
    cached = Answer(kind="answer", text="Run `make deploy` [1].", citations=CITATIONS[:1], entry_id="entry-7",
                    cached=True)
    answerer = ScriptedAnswerer(cached, ANSWER)
    return answerer, Harness(slack, store, answerer)


def _offered_fresh(slack: FakeSlack, penny: Harness, *, channel: str = "C1") -> dict[str, Any]:
    """The cached answer posted, 👎 on it, and the click on the fresh-answer offer, made in ``channel``."""
    answer_ts = _answer_ts(slack)
    _answered(penny, slack)
    wait_cleared(slack)
    return _fresh_click(slack, penny, answer_ts, channel=channel)


def test_two_offers_of_a_fresh_answer_to_one_answer_ask_and_post_once(slack: FakeSlack,
                                                                      sqlite_store: SqliteStore) -> None:
    """👎 twice on the same cached answer (a second click, another device) gives two offers; clicking
    both once paid and posted two fresh answers. One person gets one fresh answer per answer; the
    other offer says where it is."""
    answerer, penny = _cached_then_fresh(slack, sqlite_store)
    try:
        answer_ts = _answer_ts(slack)
        _answered(penny, slack)
        wait_cleared(slack)
        first = _fresh_click(slack, penny, answer_ts)
        assert penny.action(feedback_click("down", "entry-7", message_ts=answer_ts)).status == 200
        slack.wait_for("chat.postEphemeral", 2)
        second = copy.deepcopy(first)
        second["container"]["message_ts"] = "1700000999.000002"  # the second offer
        second["response_url"] = slack.base_url + "respond/second-offer"
        assert penny.action(first).status == 200
        slack.wait_for("chat.postMessage", 2)
        assert penny.action(second).status == 200
        [told] = slack.wait_for("respond/second-offer")
    finally:
        penny.settle()
    assert len(answerer.questions) == 2  # the question, then one fresh answer
    assert len(slack.calls("chat.postMessage")) == 2
    assert told.json_param("replace_original") in (True, "true") and "already" in str(told.params["text"])

def test_clicks_while_the_store_is_down_say_so_plainly_and_keep_the_offer(slack: FakeSlack, tmp_path: Path) -> None:
    """The store goes away after the offer: the 👎 no longer says "Thanks, noted" for a vote that was
    not saved, and the fresh-answer click is no longer silent; its offer stays, to try again."""
    store = SqliteStore(tmp_path / "down.db")
    answerer, penny = _cached_then_fresh(slack, store)
    try:
        answer_ts = _answer_ts(slack)
        click = _offered_fresh(slack, penny)
        click["response_url"] = slack.base_url + "respond/offer"
        penny.settle()
        store.close()
        penny = Harness(slack, store, answerer)
        with structlog.testing.capture_logs():
            assert penny.action(feedback_click("down", "entry-7", message_ts=answer_ts)).status == 200
            [_, vote] = slack.wait_for("chat.postEphemeral", 2)
            assert penny.action(click).status == 200
            [told] = slack.wait_for("respond/offer")
            penny.settle()
    finally:
        penny.settle()
    assert "not saved" in str(vote.params["text"]) and "Thanks, noted" not in all_text(vote.blocks)
    assert not [b for b in vote.blocks if b["type"] == "actions"]  # nothing offered on a vote not saved
    assert told.params["text"] == STORE_DOWN_TEXT and told.json_param("replace_original") in (False, "false")
    assert len(answerer.questions) == 1
    everything = json.dumps([c.params for c in slack.calls()], ensure_ascii=False)
    assert "down.db" not in everything and "Error" not in everything

def test_a_fresh_answer_asks_the_whole_question_not_the_first_2000_characters(
    slack: FakeSlack, sqlite_store: SqliteStore
) -> None:
    answerer, penny = _cached_then_fresh(slack, sqlite_store)
    question = "how do I deploy " + "and then check each service, " * 100 + "at the end?"
    assert 2000 < len(question) <= MAX_QUESTION_CHARS
    try:
        answer_ts = _answer_ts(slack)
        penny.event(mention(f"<@UPENNY> {question}"))
        slack.wait_for("chat.postMessage")
        wait_cleared(slack)
        assert penny.action(_fresh_click(slack, penny, answer_ts)).status == 200
        slack.wait_for("chat.postMessage", 2)
    finally:
        penny.settle()
    first, again = answerer.questions
    assert first.text == question
    assert (again.text, again.fresh) == (question, True)  # was cut to the button's 2,000 characters


def test_a_fresh_answer_click_from_another_channel_asks_nothing(slack: FakeSlack, sqlite_store: SqliteStore) -> None:
    """The button names an answer; its question is read from where the click is, never another channel's."""
    answerer, penny = _cached_then_fresh(slack, sqlite_store)
    try:
        click = _offered_fresh(slack, penny, channel="C2")
        click["response_url"] = slack.base_url + "respond/ephemeral-offer"
        with structlog.testing.capture_logs() as logs:
            assert penny.action(click).status == 200
            penny.settle()
    finally:
        penny.settle()
    assert len(answerer.questions) == 1
    assert len(slack.calls("chat.postMessage")) == 1
    assert any(log["event"] == "slack.fresh_answer_unknown" for log in logs)
    told = slack.last("respond/ephemeral-offer")  # told plainly, not left with a button that does nothing
    assert told.params["text"] == FRESH_GONE_TEXT


def test_a_fresh_answer_goes_to_the_answers_thread_whatever_thread_the_offer_names(
    slack: FakeSlack, sqlite_store: SqliteStore
) -> None:
    """The offer is ephemeral (Slack keeps no copy to check a click against): its block_id naming
    another thread, or a follow-up that was not asked, changes nothing."""
    answerer, penny = _cached_then_fresh(slack, sqlite_store)
    try:
        click = _offered_fresh(slack, penny)
        click["actions"][0]["block_id"] = "penny_fresh:1600000000.000001/1600000000.000002"
        assert penny.action(click).status == 200
        [_, again] = slack.wait_for("chat.postMessage", 2)
    finally:
        penny.settle()
    assert again.params["thread_ts"] == ROOT
    assert slack.calls("conversations.replies") == []  # no other thread read as history
    assert answerer.questions[1].history == ()



@pytest.mark.parametrize("refused", [False, True], ids=["answer", "refusal"])
def test_a_fresh_answer_penny_cannot_post_where_it_was_asked_goes_to_the_clicker_alone(
    slack: FakeSlack, sqlite_store: SqliteStore, refused: bool
) -> None:
    """Penny was removed from the channel (or it was archived) after the offer: the answer the click
    paid for reaches the clicker through the click's response URL, in its thread, never silently lost."""
    fresh = (Answer(kind="refused", text="You're over your daily budget.", refusal="budget_exceeded") if refused
             else Answer(kind="answer", text="Run `make release` now [1].", citations=CITATIONS[:1], entry_id="e8"))
    cached = Answer(kind="answer", text="Run `make deploy` [1].", citations=CITATIONS[:1], entry_id="entry-7",
                    cached=True)
    answerer = ScriptedAnswerer(cached, fresh)
    penny = Harness(slack, sqlite_store, answerer)
    try:
        click = _offered_fresh(slack, penny)
        click["response_url"] = slack.base_url + "respond/ephemeral-offer"
        slack.fail("chat.postMessage", "not_in_channel", times=3)
        slack.fail("chat.postEphemeral", "not_in_channel", times=3)
        assert penny.action(click).status == 200
        [_, shown] = slack.wait_for("respond/ephemeral-offer", 2)
    finally:
        penny.settle()
    assert len(answerer.questions) == 2  # asked (and paid for) once
    assert shown.params["response_type"] == "ephemeral" and shown.params["thread_ts"] == ROOT
    assert shown.json_param("replace_original") in (False, "false")
    text = all_text(shown.blocks)
    assert ("over your daily budget" if refused else "make release") in text
    assert refused or "only you can see" in text

# ---------------------------------------------------------------------------------------------
# App Home, settings, construction


def test_app_home_opened_publishes_the_home_tab(penny: Harness, slack: FakeSlack) -> None:
    penny.event({"type": "app_home_opened", "user": "U1", "channel": "D1", "tab": "home", "event_ts": "1.1"})
    [published] = slack.wait_for("views.publish")
    assert published.params["user_id"] == "U1"
    assert "docs" in json.dumps(published.json_param("view"))


def test_settings_hide_secrets_and_the_client_retries_slack_rate_limits(slack: FakeSlack) -> None:
    settings = SlackSettings(
        bot_token=TOKEN, signing_secret=SECRET, app_token="xapp-1-secret-app-token", api_url=slack.base_url.rstrip("/")
    )
    shown = repr(settings)
    assert TOKEN not in shown and SECRET not in shown and "xapp-" not in shown
    client = make_client(settings)
    assert client.base_url == slack.base_url
    kinds = {type(h) for h in client.retry_handlers}
    assert RateLimitErrorRetryHandler in kinds and any(issubclass(k, ConnectionErrorRetryHandler) for k in kinds)
    default = make_client(SlackSettings(bot_token=TOKEN, signing_secret=SECRET))
    assert default.base_url == "https://slack.com/api/"


def test_a_client_made_with_waiting_makes_each_call_and_its_retries_inside_it(slack: FakeSlack) -> None:
    calls_inside: list[int] = []

    @contextmanager
    def waiting() -> Iterator[None]:
        calls_inside.append(slack.count("chat.postMessage"))
        yield
        calls_inside.append(slack.count("chat.postMessage"))

    settings = SlackSettings(bot_token=TOKEN, signing_secret=SECRET, api_url=slack.base_url)
    client = make_client(settings, waiting=waiting)
    client.chat_postMessage(channel="C1", text="hi")
    assert calls_inside == [0, 1]  # the call, entered before it reached Slack and left after
    assert {type(h) for h in client.retry_handlers} >= {RateLimitErrorRetryHandler, ConnectionRetry}
    assert type(copy.copy(client)) is type(client)  # a stream's copy of it lends the turn too


def _signed(body: str, content_type: str = "application/json") -> BoltRequest:
    stamp = str(int(time.time()))
    signature = SignatureVerifier(SECRET).generate_signature(timestamp=stamp, body=body)
    assert signature is not None
    return BoltRequest(body=body, headers={"content-type": [content_type], "x-slack-signature": [signature],
                                           "x-slack-request-timestamp": [stamp]})


def _second_call_arrives(answer: dict[str, Any], *, within_s: float = 3.0) -> tuple[Callable[[SlackCall], Any],
                                                                                     list[bool]]:
    """A fake Slack responder that holds the first call until a second one has arrived (at most
    ``within_s``), and the record of whether it did."""
    arrived, lock, second, overlapped = [0], threading.Lock(), threading.Event(), []

    def responder(_call: SlackCall) -> dict[str, Any]:
        with lock:
            arrived[0] += 1
            first = arrived[0] == 1
        if first:
            overlapped.append(second.wait(timeout=within_s))
        else:
            second.set()
        return answer

    return responder, overlapped


def test_in_an_http_worker_a_listeners_slack_calls_lend_its_turn(slack: FakeSlack, sqlite_store: SqliteStore) -> None:
    turns = WorkTurns(1)
    listeners = DrainingExecutor(4, thread_name_prefix="penny-lend", turns=turns)
    settings = SlackSettings(bot_token=TOKEN, signing_secret=SECRET, api_url=slack.base_url)
    app = build_app(answerer=ScriptedAnswerer(), store=sqlite_store, settings=settings,
                    client=make_client(settings, waiting=turns.waiting), listener_executor=listeners,
                    accounts=Accounts(sqlite_store, PennySettings(_env_file=None)),  # type: ignore[call-arg]
                    working=WorkingIndicator(workers=0))
    # The first answer's post reaches Slack and waits there: the second question's listener, on the
    # one turn, gets as far as its own post only if the first listener lent its turn meanwhile.
    post, overlapped = _second_call_arrives({"ok": True, "channel": "C1", "ts": "1700000999.000100"})
    slack.respond("chat.postMessage", post)
    try:
        for i in range(2):
            event = event_body(mention(f"<@UPENNY> question {i}", ts=f"170000010{i}.000100"), f"EvLend{i}")
            assert app.dispatch(_signed(event)).status == 200  # Bolt's own dispatch: its per-request client
        slack.wait_for("chat.postMessage", 2)
        assert listeners.drain(10) == 0
    finally:
        listeners.shutdown()
    assert overlapped == [True]


def test_a_slow_installation_lookup_cannot_deadlock_listeners_that_lend_their_turn(slack: FakeSlack) -> None:
    """InstalledWorkspaceOnly holds no lock across auth.test: were a lending client to make that call,
    the requests waiting on the lock would hold every turn while the caller waited for one back."""
    turns = WorkTurns(1)
    listeners = DrainingExecutor(4, thread_name_prefix="penny-auth", turns=turns)
    client = make_client(SlackSettings(bot_token=TOKEN, signing_secret=SECRET, api_url=slack.base_url),
                         waiting=turns.waiting)
    app = App(client=client, signing_secret=SECRET, listener_executor=listeners)  # Bolt's auth.test: done now
    app.use(_WaitingClients(turns.waiting))  # before the installation check: its auth.test lends the turn
    app.use(InstalledWorkspaceOnly())
    heard: list[str] = []
    app.event("app_mention")(lambda event: heard.append(event["text"]))
    lookup, overlapped = _second_call_arrives({"ok": True, "team_id": TEAM, "team": "Penny Test", "user_id": BOT_USER,
                                               "bot_id": BOT_ID, "app_id": "A0PENNY", "user": "penny"})
    slack.respond("auth.test", lookup)
    try:
        # Two events' handling on the one turn, as EarlyAcks runs them (_dispatch_acked).
        handled = [listeners.submit(app.dispatch, _signed(event_body(mention(f"<@UPENNY> q{i}"), f"EvAuth{i}")))
                   for i in range(2)]
        assert [future.result(timeout=5).status for future in handled] == [200, 200]
        assert listeners.drain(5) == 0
    finally:
        listeners.shutdown(wait=False)
    assert sorted(heard) == ["<@UPENNY> q0", "<@UPENNY> q1"] and overlapped == [True]


def test_socket_mode_handler_builds_without_connecting(penny: Harness) -> None:
    handler = socket_mode_handler(penny.app, "xapp-1-not-a-real-token")
    assert handler.app is penny.app


# ---------------------------------------------------------------------------------------------
# Pure helpers


def test_strip_mentions_removes_only_penny() -> None:
    assert strip_mentions("<@UPENNY> ask <@U2> about <@UPENNY|penny> it", BOT_USER) == "ask <@U2> about  it"
    assert strip_mentions("  <@UPENNY>  ", BOT_USER) == ""


def test_thread_history_keeps_the_newest_turns_within_the_bounds() -> None:
    messages = [{"user": "U1", "text": f"question {i}", "ts": f"1700000{i:03d}.000000"} for i in range(15)]
    history = thread_history(messages, before_ts="1700000014.000000", bot_user_id=BOT_USER, bot_id=BOT_ID)
    assert [text for _, text in history] == [f"question {i}" for i in range(4, 14)]  # 10 turns, oldest first

    long_turns = [{"user": "U1", "text": "word " * 600, "ts": f"1700000{i:03d}.0"} for i in range(3)]
    bounded = thread_history(long_turns, before_ts="1700000999.0", bot_user_id=BOT_USER, bot_id=BOT_ID, max_tokens=1000)
    assert len(bounded) == 1  # only the newest fits, cut to the budget
    assert 0 < len(bounded[0][1]) < len(long_turns[0]["text"])


def test_thread_history_keeps_the_root_question_and_the_newest_turns() -> None:
    messages = [{"user": "U1", "text": f"turn {i}", "ts": f"1700000{i:03d}.000000"} for i in range(15)]
    history = thread_history(messages, before_ts="1700000014.000000", bot_user_id=BOT_USER, bot_id=BOT_ID,
                             root_ts="1700000000.000000")
    assert [text for _, text in history] == ["turn 0"] + [f"turn {i}" for i in range(5, 14)]  # 10 turns

    root = {"user": "U1", "text": "word " * 3000, "ts": "1700000000.0"}
    replies = [{"user": "U2", "text": f"reply {i}", "ts": f"1700000{i:03d}.5"} for i in range(1, 4)]
    bounded = thread_history([root, *replies], before_ts="1700000999.0", bot_user_id=BOT_USER, bot_id=BOT_ID,
                             root_ts="1700000000.0", max_tokens=1000)
    assert [text for _, text in bounded[1:]] == ["reply 1", "reply 2", "reply 3"]  # a long root takes half at most
    assert 0 < len(bounded[0][1]) < len(root["text"]) // 2


# ---------------------------------------------------------------------------------------------
# The manifest


def test_manifest_declares_exactly_what_the_app_uses() -> None:
    manifest = yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))
    features, settings = manifest["features"], manifest["settings"]
    assert features["bot_user"] == {"display_name": "Penny", "always_online": True}
    assert features["app_home"]["home_tab_enabled"] is True
    assert features["app_home"]["messages_tab_enabled"] is True
    assert features["app_home"]["messages_tab_read_only_enabled"] is False
    assert [c["command"] for c in features["slash_commands"]] == ["/cost"]
    # Slack's agent messaging experience, the only one new apps get (assistant_view is being retired)
    assert "assistant_view" not in features and len(features["agent_view"]["agent_description"]) <= 300
    assert settings["socket_mode_enabled"] is True
    assert settings["interactivity"]["is_enabled"] is True
    assert sorted(settings["event_subscriptions"]["bot_events"]) == sorted(BOT_EVENTS)
    assert sorted(manifest["oauth_config"]["scopes"]["bot"]) == sorted(BOT_SCOPES)


def test_every_subscribed_event_reaches_a_listener(penny: Harness, slack: FakeSlack) -> None:
    """Each bot event in the manifest is one the app acts on (and none is unhandled: Bolt would 404)."""
    root = "1700000100.000100"
    examples = {
        "app_mention": mention("<@UPENNY> how do I deploy?", ts=root),
        "message.channels": message("and staging?", thread_ts=root, ts="1700000200.0"),
        "message.groups": message("and rollbacks?", channel_type="group", thread_ts=root, ts="1700000300.0"),
        "message.mpim": message("and on staging?", channel_type="mpim", thread_ts=root, ts="1700000350.0"),
        "message.im": message("hello", channel="D1", channel_type="im", ts="1700000400.0"),
        "app_home_opened": {"type": "app_home_opened", "user": "U1", "channel": "D1", "tab": "home", "event_ts": "1.2"},
        "app_context_changed": {"type": "app_context_changed", "user": "U1", "event_ts": "1.3", "context": {
            "entities": [{"type": "slack#/types/channel_id", "value": "C1", "team_id": TEAM}]}},
    }
    assert set(examples) == set(BOT_EVENTS)
    for name, event in examples.items():
        assert penny.event(event).status == 200, name
        if name == "app_mention":
            slack.wait_for("chat.postMessage")
            wait_cleared(slack)  # the thread is remembered once the answer is out
    penny.settle()
    assert slack.count("chat.postMessage") == 5
    assert slack.count("views.publish") == 1


def test_votes_are_stored_with_the_answer_pages_and_counted_per_page_and_user(
    slack: FakeSlack, sqlite_store: SqliteStore
) -> None:
    from bot.feedback import feedback_counts

    penny = Harness(slack, sqlite_store, ScriptedAnswerer(ANSWER))
    try:
        answer_ts = _answer_ts(slack)
        _answered(penny, slack)
        wait_cleared(slack)
        up = {"action_id": ACTION_FEEDBACK_UP, "block_id": "penny_feedback", "value": "entry-1"}
        down = {"action_id": ACTION_FEEDBACK_DOWN, "block_id": "penny_feedback", "value": "entry-1"}
        penny.action(block_action(up, message_ts=answer_ts, user="U1"))
        penny.action(block_action(down, message_ts=answer_ts, user="U2"))
    finally:
        penny.settle()
    counts = feedback_counts(sqlite_store, TEAM)
    assert (counts.total.up, counts.total.down) == (1, 1)
    assert {u: (t.up, t.down) for u, t in counts.by_user.items()} == {"U1": (1, 0), "U2": (0, 1)}
    pages = {c.path for c in ANSWER.citations}
    assert {p: (t.up, t.down) for p, t in counts.by_page.items()} == {p: (1, 1) for p in pages}


def test_a_second_vote_by_the_same_person_replaces_the_first(sqlite_store: SqliteStore) -> None:
    from bot.feedback import feedback_counts, record_feedback

    record_feedback(sqlite_store, TEAM, "entry-1", "U1", up=True, pages=["a.md"], at=1.0)
    record_feedback(sqlite_store, TEAM, "entry-1", "U1", up=False, pages=["a.md"], at=2.0)
    counts = feedback_counts(sqlite_store, TEAM)
    assert (counts.total.up, counts.total.down) == (0, 1)
    assert (counts.by_page["a.md"].up, counts.by_page["a.md"].down) == (0, 1)


def _malformed_action(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    payload = block_action({"action_id": ACTION_FRESH_ANSWER, "block_id": "penny_fresh:1700000100.000100",
                            "value": "how do I deploy?"}, message_ts="1700000999.000001")
    change(payload)
    return payload


@pytest.mark.parametrize(("kind", "payload"), [
    ("event", {"type": "app_mention", "user": ["U1"], "text": "<@UPENNY> hi", "channel": "C1", "ts": "1700000100.1"}),
    ("event", {"type": "app_mention", "user": {"id": "U1"}, "text": "<@UPENNY> hi", "channel": "C1",
               "ts": "1700000100.1"}),
    ("event", {"type": "app_mention", "user": "U1", "text": ["<@UPENNY> hi"], "channel": "C1", "ts": "1700000100.1"}),
    ("event", {"type": "app_mention", "user": "U1", "text": "<@UPENNY> hi", "ts": "1700000100.1"}),
    ("event", {"type": "app_mention", "user": "U1", "text": "<@UPENNY> hi", "channel": "C1"}),
    ("event", {"type": "message", "user": "U1", "text": "hi", "channel": "D1", "channel_type": "im",
               "ts": "1700000200.1", "thread_ts": {"a": 1}}),
    ("event", {"type": "app_home_opened", "user": ["U1"], "channel": "D1", "tab": "home"}),
    ("action", _malformed_action(lambda p: (p.pop("channel"), p["container"].pop("channel_id")))),
    ("action", _malformed_action(lambda p: p.update(user=["U1"]))),
    ("action", _malformed_action(lambda p: p["user"].update(id=None))),
    ("action", _malformed_action(lambda p: p.update(container="C1"))),
    # A vote read the message's ts from the message when the container had none: .get on a string raised.
    ("action", (lambda p: (p["container"].pop("message_ts"), p.update(message="an answer"), p)[-1])(
        feedback_click("down", "entry-1", message_ts="1700000500.000500"))),
    # Bolt's action matchers index action_id: without one, Bolt answered 500 and logged a listener error.
    ("action", _malformed_action(lambda p: p["actions"][0].pop("action_id"))),
    ("action", _malformed_action(lambda p: p["actions"][0].update(action_id=None))),
    # A lone surrogate (escaped in the JSON) failed to encode in a store key, a Slack post or a log line.
    ("action", _malformed_action(lambda p: p["actions"][0].update(value="\ud800"))),
    ("event", {"type": "app_mention", "user": "U1", "text": "<@UPENNY> how do I deploy? \udfff", "channel": "C1",
               "ts": "1700000100.1"}),
    ("event", {"type": "app_mention", "user": "U1", "text": "<@UPENNY> hi", "channel": "C1", "ts": "1700000100.1",
               "blocks": [{"type": "rich_text", "\ud83d": 1}]}),
    # Bolt's Assistant indexes the thread's channel_id, thread_ts and context: a 500 and a listener error.
    ("event", {"type": "assistant_thread_started", "event_ts": "1.2",
               "assistant_thread": {"user_id": "U1", "channel_id": "D1"}}),
    ("event", {"type": "assistant_thread_context_changed", "event_ts": "1.2"}),
    ("event", {"type": "assistant_thread_context_changed", "event_ts": "1.2",
               "assistant_thread": {"user_id": "U1", "channel_id": "D1", "thread_ts": "1.1", "context": "C1"}}),
    # A null context raised in Bolt's thread context lookup when Penny greeted the thread (a traceback).
    ("event", {"type": "assistant_thread_started", "event_ts": "1.2",
               "assistant_thread": {"user_id": "U1", "channel_id": "D1", "thread_ts": "1.1", "context": None}}),
    # Bolt's event matchers raised on a type that is not a string.
    ("event", {"type": [], "user": "U1", "text": "<@UPENNY> hi", "channel": "C1", "ts": "1700000100.1"}),
    ("event", {"type": {"app_mention": 1}, "user": "U1", "text": "<@UPENNY> hi", "channel": "C1",
               "ts": "1700000100.1"}),
    ("event", {"user": "U1", "text": "<@UPENNY> hi", "channel": "C1", "ts": "1700000100.1"}),
    # FromPeopleOnly looked the subtype up in a set: a list raised there (a 500).
    ("event", {"type": "message", "subtype": ["file_share"], "user": "U1", "text": "hi", "channel": "D1",
               "channel_type": "im", "ts": "1700000200.1"}),
    # Bolt's respond posts to the response_url: to one that is no URL, the SDK logged an error and raised.
    ("action", _malformed_action(lambda p: p.update(response_url={"id": "U1"}))),
    ("action", _malformed_action(lambda p: p.update(response_url="hooks.slack.com/actions/1"))),
    ("command", {"command": "/cost", "text": "", "team_id": TEAM, "user_id": "U1", "channel_id": "C1",
                 "api_app_id": "A0PENNY", "response_url": '{"id": "U1"}'}),
    ("command", {"command": "/cost", "text": "", "team_id": TEAM, "user_id": "U1", "channel_id": "C1",
                 "api_app_id": "A0PENNY", "response_url": "http://[::1"}),
])
def test_a_signed_but_malformed_payload_is_dropped_with_a_log_line_and_nothing_is_asked_or_posted(
    penny: Harness, slack: FakeSlack, answerer: ScriptedAnswerer, kind: str, payload: Any
) -> None:
    """Before, these were answered (and billed) as user "['U1']", in channel "None", in thread "{'a': 1}"."""
    with structlog.testing.capture_logs() as logs:
        if kind == "command":
            response = penny.dispatch(urlencode(payload), content_type="application/x-www-form-urlencoded")
        else:
            response = penny.event(payload) if kind == "event" else penny.action(payload)
        penny.settle()
    assert response.status == 200
    assert methods(slack) == []
    assert answerer.questions == []
    assert [log["event"] for log in logs if log["log_level"] in ("warning", "error")] == [
        "slack.malformed_request_dropped"]


def test_slacks_app_rate_limited_notice_is_acked_with_200_and_logged_once_as_a_warning(
    penny: Harness, slack: FakeSlack, answerer: ScriptedAnswerer
) -> None:
    """Slack posts ``app_rate_limited`` to the events URL when it starts dropping the app's events, and
    counts a delivery not answered 200 towards disabling its subscriptions; Bolt has no listener for
    it and answered 404 ("unhandled request"), so nobody was told events were being dropped."""
    notice = json.dumps({"token": "legacy-verification-token", "type": "app_rate_limited", "team_id": TEAM,
                         "minute_rate_limited": 1_518_467_820, "api_app_id": "A0PENNY"})
    with structlog.testing.capture_logs() as logs:
        response = penny.dispatch(notice)
        penny.settle()
    assert response.status == 200
    assert methods(slack) == [] and answerer.questions == []
    [line] = [log for log in logs if log["log_level"] in ("warning", "error")]
    assert line["event"] == "slack.events_rate_limited"
    assert (line["team_id"], line["minute_rate_limited"]) == (TEAM, 1_518_467_820)
