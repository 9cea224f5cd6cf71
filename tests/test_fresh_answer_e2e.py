""""Get a fresh answer" through the whole bot: the real Bolt app, answering service and gateway
against the fake OpenAI and the fake Slack. The button's click is deduplicated under one claim and
answered under its own request ID, so the gateway never finds the click's own claim in flight."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.slack.feedback import ACTION_FRESH_ANSWER
from tests.bot_harness import Bot, make_bot
from tests.fake_openai import FakeOpenAI
from tests.fake_slack import FakeSlack
from tests.slack_harness import block_action, mention, thumbs_down


@pytest.fixture
def bot(slack: FakeSlack, fake: FakeOpenAI, tmp_path: Path) -> Iterator[Bot]:
    b = make_bot(slack, fake, tmp_path)
    yield b
    b.gateway.close()


def fresh_answer_click(slack: FakeSlack, user: str) -> dict[str, Any]:
    """A click by ``user`` on "Get a fresh answer" in the last private offer."""
    [actions] = [b for b in slack.last("chat.postEphemeral").blocks if b["type"] == "actions"]
    [button] = [e for e in actions["elements"] if e["action_id"] == ACTION_FRESH_ANSWER]
    click = block_action({"action_id": ACTION_FRESH_ANSWER, "block_id": actions["block_id"], "value": button["value"]},
                         message_ts="1700000999.000001", user=user)
    click["container"]["is_ephemeral"] = True
    return click


def test_a_fresh_answer_offered_after_a_thumbs_down_is_answered_by_the_llm(
    bot: Bot, slack: FakeSlack, fake: FakeOpenAI
) -> None:
    question = "<@UPENNY> where are the production logs?"
    bot.event(mention(question, ts="1700000100.000100"))
    bot.event(mention(question, ts="1700000300.000100", user="U2"))
    bot.settle()
    assert fake.count("chat") == 1  # the second asker got the cached answer
    cached = slack.calls("chat.postMessage")[-1]
    assert cached.response is not None
    thumbs_down(bot, cached, user="U2")
    bot.settle()
    click = fresh_answer_click(slack, "U2")
    posted = len(slack.calls("chat.postMessage"))
    bot.action(click)
    bot.action({**click, "actions": [{**click["actions"][0], "action_ts": "1700001000.000002"}]})  # a double click
    bot.settle()
    assert fake.count("chat") == 2  # asked the LLM afresh, once for the two clicks
    fresh = slack.calls("chat.postMessage")[posted:]
    assert len(fresh) == 1, "not one fresh answer"
    text = json.dumps(fresh[-1].params.get("blocks", "")) + str(fresh[-1].params.get("text", ""))
    assert "already being answered" not in text and "logs" in text.lower()


def test_a_fresh_answer_to_a_follow_up_reads_the_thread_before_it_as_the_first_answer_did(
    bot: Bot, slack: FakeSlack, fake: FakeOpenAI
) -> None:
    root, follow_up = "<@UPENNY> where are the production logs?", "<@UPENNY> how long are they kept?"
    # Two people ask the same root question and the same follow-up in their own threads; each
    # thread reads as the same conversation, so the second follow-up is served from the cache.
    for user, root_ts, follow_ts in (("U1", "1700000100.000100", "1700000150.000100"),
                                     ("U2", "1700000300.000100", "1700000350.000100")):
        bot.event(mention(root, ts=root_ts, user=user))
        bot.settle()
        answered = str(slack.calls("chat.postMessage")[-1].params.get("text") or "")
        slack.set_replies("C1", root_ts, [
            {"ts": root_ts, "user": user, "text": root},
            {"ts": f"{root_ts[:-6]}200100", "user": "UPENNY", "bot_id": "B0PENNY", "text": answered},
            {"ts": follow_ts, "user": user, "text": follow_up},
        ])
        bot.event(mention(follow_up, ts=follow_ts, thread_ts=root_ts, user=user))
        bot.settle()
    assert fake.count("chat") == 2  # U2's root question and follow-up both came from the cache
    first_follow_up = fake.requests_to("chat")[-1].body["messages"]
    cached = slack.calls("chat.postMessage")[-1]
    assert cached.response is not None and cached.params["thread_ts"] == "1700000300.000100"

    thumbs_down(bot, cached, user="U2")
    bot.settle()
    bot.action(fresh_answer_click(slack, "U2"))
    bot.settle()

    assert fake.count("chat") == 3  # asked afresh
    fresh_messages = fake.requests_to("chat")[-1].body["messages"]
    # The same conversation as the first time: the root question and Penny's answer before it.
    assert [m["role"] for m in fresh_messages] == [m["role"] for m in first_follow_up]
    assert "where are the production logs?" in json.dumps(fresh_messages)
    fresh = slack.calls("chat.postMessage")[-1]
    assert fresh.params["thread_ts"] == "1700000300.000100"


def test_a_fresh_answer_to_someone_elses_answer_is_paid_by_the_person_who_clicks(
    bot: Bot, slack: FakeSlack, fake: FakeOpenAI
) -> None:
    question = "<@UPENNY> where are the production logs?"
    bot.event(mention(question, ts="1700000100.000100", user="U1"))
    bot.event(mention(question, ts="1700000300.000100", user="U2"))  # served from the cache
    cached = slack.calls("chat.postMessage")[-1]
    assert cached.response is not None
    thumbs_down(bot, cached, user="U3")  # U3 did not ask; U3 👎 U2's answer
    bot.action(fresh_answer_click(slack, "U3"))
    assert fake.count("chat") == 2
    by_user = bot.store.usage("T0PENNY", "2000-01-01", "2999-12-31").by_user
    assert by_user["U3"].cost_micros > 0 and by_user["U3"].requests == 1
    assert by_user["U2"].cost_micros == 0 and by_user["U1"].requests == 1  # the others paid nothing more
