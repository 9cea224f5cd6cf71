""""Get a fresh answer" through the whole bot: the real Bolt app, answering service and gateway
against the fake OpenAI and the fake Slack. The button's click is deduplicated under one claim and
answered under its own request ID, so the gateway never finds the click's own claim in flight."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.slack.feedback import ACTION_FRESH_ANSWER
from tests.bot_harness import Bot, make_bot
from tests.fake_openai import FakeOpenAI
from tests.fake_slack import FakeSlack
from tests.slack_harness import block_action, mention


@pytest.fixture
def bot(slack: FakeSlack, fake: FakeOpenAI, tmp_path: Path) -> Iterator[Bot]:
    b = make_bot(slack, fake, tmp_path)
    yield b
    b.gateway.close()


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
    cached_ts = str(cached.response["ts"])
    [feedback] = [e for b in cached.blocks if b["type"] == "context_actions" for e in b["elements"]]
    down = block_action({"action_id": feedback["action_id"], "block_id": "fb",
                         "value": feedback["negative_button"]["value"]}, message_ts=cached_ts, user="U2")
    down["actions"][0]["type"] = "feedback_buttons"
    bot.action(down)
    bot.settle()
    offer = slack.last("chat.postEphemeral")
    [actions] = [b for b in offer.blocks if b["type"] == "actions"]
    [button] = [e for e in actions["elements"] if e["action_id"] == ACTION_FRESH_ANSWER]
    click = block_action({"action_id": ACTION_FRESH_ANSWER, "block_id": actions["block_id"], "value": button["value"]},
                         message_ts="1700000999.000001", user="U2")
    click["container"]["is_ephemeral"] = True
    posted = len(slack.calls("chat.postMessage"))
    bot.action(click)
    bot.action({**click, "actions": [{**click["actions"][0], "action_ts": "1700001000.000002"}]})  # a double click
    bot.settle()
    assert fake.count("chat") == 2  # asked the LLM afresh, once for the two clicks
    fresh = slack.calls("chat.postMessage")[posted:]
    assert len(fresh) == 1, "not one fresh answer"
    text = json.dumps(fresh[-1].params.get("blocks", "")) + str(fresh[-1].params.get("text", ""))
    assert "already being answered" not in text and "logs" in text.lower()
