"""The whole bot: signed Slack events into the real Bolt app, the real answering service over the
example handbook, the real gateway and openai SDK against the fake OpenAI server, and the fake Slack
Web API recording what Penny posts. Nothing of ours is replaced."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy_core.stores.base import Store
from tests.bot_harness import Bot, make_bot
from tests.fake_openai import FakeOpenAI
from tests.fake_slack import FakeSlack
from tests.slack_harness import TEAM, event_body, mention, message, thumbs_down


@pytest.fixture
def bot(slack: FakeSlack, fake: FakeOpenAI, tmp_path: Path) -> Iterator[Bot]:
    b = make_bot(slack, fake, tmp_path)
    yield b
    b.gateway.close()


def _text(call: Any) -> str:
    return json.dumps(call.params.get("blocks", "")) + str(call.params.get("text", ""))


def test_a_mention_gets_a_threaded_answer_with_citations_and_its_cost(bot: Bot, slack: FakeSlack,
                                                                      fake: FakeOpenAI) -> None:
    assert bot.event(mention("<@UPENNY> how do I start the dev server?", ts="1700000100.000100")).status == 200
    bot.settle()
    shown = slack.messages()  # streamed while written, then replaced by the rendered answer
    assert len(shown) == 1
    answer = shown[0]
    assert answer["thread_ts"] == "1700000100.000100"
    assert not answer["streaming"]
    body = json.dumps(answer["blocks"]) + answer["text"]
    assert "engineering/local-dev-setup.md" in body  # the cited page
    assert "gpt-4.1-mini" in body and "$" in body  # the cost line
    assert fake.count("chat") == 1
    assert [c.params["status"] for c in slack.calls("assistant.threads.setStatus")] == [
        "is searching the docs…", "is writing…", ""]  # the thread's status line, cleared after the answer


def test_one_event_delivered_three_times_is_answered_and_charged_once(bot: Bot, slack: FakeSlack,
                                                                      fake: FakeOpenAI) -> None:
    event = mention("<@UPENNY> where are the production logs?")
    bot.event(event, event_id="EvSame")
    bot.event(event, event_id="EvSame", headers={"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"})
    bot.event(event, event_id="EvSame", headers={"X-Slack-Retry-Num": "2", "X-Slack-Retry-Reason": "http_timeout"})
    bot.settle()
    assert len(slack.messages()) == 1
    assert slack.count("chat.startStream") + slack.count("chat.postMessage") == 1  # one message, streamed or not
    assert fake.count("chat") == 1
    usage = bot.gateway.usage(TEAM, "2000-01-01", "2100-01-01")
    assert usage.totals.requests == 1


def test_chatter_in_a_thread_costs_nothing_and_a_follow_up_question_is_answered(
    bot: Bot, slack: FakeSlack, fake: FakeOpenAI
) -> None:
    root = "1700000100.000100"
    bot.event(mention("<@UPENNY> how do I start the dev server?", ts=root))
    assert len(slack.messages()) == 1
    slack_calls, llm_calls = slack.count(), fake.count()

    chatter = ["thanks!", "lol", "ok cool, will do", "+1", ":pray:", "<@U2> can you check?",
               "is it just me or is the VPN down again lol", "merci, ça marche"]
    for i, text in enumerate(chatter):
        assert bot.event(message(text, ts=f"{1700000200 + i}.000100", thread_ts=root, user="U2")).status == 200
    assert (slack.count(), fake.count()) == (slack_calls, llm_calls)  # no reply, no Slack call, no LLM call

    bot.event(message("ok but how do I deploy to staging?", ts="1700000300.000100", thread_ts=root))
    assert len(slack.messages()) == 2
    assert slack.messages()[-1]["thread_ts"] == root
    assert fake.count("chat") == 2
    assert bot.gateway.usage(TEAM, "2000-01-01", "2100-01-01").totals.requests == 2


def test_a_question_the_docs_do_not_cover_is_answered_at_no_cost(bot: Bot, slack: FakeSlack,
                                                                   fake: FakeOpenAI) -> None:
    bot.event(mention("<@UPENNY> what's the capital of Peru?"))
    bot.settle()
    assert "couldn't find this in the docs" in _text(slack.last("chat.postMessage"))
    assert fake.count() == 0


def test_over_budget_is_an_ephemeral_refusal_with_the_reset_time(slack: FakeSlack, fake: FakeOpenAI,
                                                                  tmp_path: Path) -> None:
    bot = make_bot(slack, fake, tmp_path, user_daily_budget_usd="0.000001")
    try:
        bot.event(mention("<@UPENNY> how do I start the dev server?"))
        bot.settle()
        assert slack.count("chat.postMessage") == 0
        refusal = slack.last("chat.postEphemeral")
        assert refusal.params["user"] == "U1"
        assert "resets at" in _text(refusal)
        assert fake.count() == 0
    finally:
        bot.gateway.close()


def test_thumbs_down_on_a_cached_answer_evicts_it(bot: Bot, slack: FakeSlack, fake: FakeOpenAI) -> None:
    bot.event(mention("<@UPENNY> where are the production logs?", ts="1700000100.000100"))
    bot.event(mention("<@UPENNY> where are the production logs?", ts="1700000300.000100", user="U2"))
    bot.settle()
    assert fake.count("chat") == 1  # the second asker got the cached answer
    thumbs_down(bot, slack.calls("chat.postMessage")[-1], user="U2")
    bot.event(mention("<@UPENNY> where are the production logs?", ts="1700000500.000100", user="U3"))
    bot.settle()
    assert fake.count("chat") == 2  # evicted: the next asker gets a fresh LLM answer


def test_thumbs_down_evicts_the_answer_from_the_exact_cache_alone(slack: FakeSlack, fake: FakeOpenAI,
                                                                   tmp_path: Path, store: Store) -> None:
    """``PENNY_SEMANTIC_CACHE=false``: the exact cache used to keep a 👎'd answer for its whole TTL.
    A late 👎 on an answer already replaced leaves the newer one cached."""
    bot = make_bot(slack, fake, tmp_path, store=store, semantic_cache=False)
    try:
        question = "<@UPENNY> where are the production logs?"
        bot.event(mention(question, ts="1700000100.000100"))
        first = slack.calls("chat.postMessage")[-1]
        bot.event(mention(question, ts="1700000300.000100", user="U2"))
        assert fake.count("chat") == 1  # the second asker got the cached answer
        thumbs_down(bot, slack.calls("chat.postMessage")[-1], user="U2")
        bot.event(mention(question, ts="1700000500.000100", user="U3"))
        assert fake.count("chat") == 2  # evicted: the next asker gets a fresh LLM answer
        thumbs_down(bot, first, user="U4")  # the same answer, 👎'd again under the first message
        bot.event(mention(question, ts="1700000700.000100", user="U5"))
        assert fake.count("chat") == 2  # U3's newer answer is still cached
    finally:
        bot.gateway.close()


def test_a_question_from_a_slack_connect_guest_is_billed_to_the_workspace_penny_is_installed_in(
    bot: Bot, slack: FakeSlack, fake: FakeOpenAI
) -> None:
    """In a Slack Connect channel an event's ``team_id`` can be the sender's workspace; the installation
    it is delivered to is ``authorizations[0]`` (as Bolt reads it, and as Penny's installed-workspace
    check does). The question is the installing workspace's to pay for and to see in ``/cost``: billed
    under the guest's workspace, it ran on a budget line of its own, which no cap of the host's held."""
    body = json.loads(event_body(mention("<@UPENNY> where are the production logs?", user="UGUEST"), "EvGuest"))
    body["team_id"] = "T0GUEST"
    body["authorizations"] = [{"enterprise_id": None, "team_id": TEAM, "user_id": "UPENNY", "is_bot": True,
                               "is_enterprise_install": False}]
    assert bot.dispatch(json.dumps(body)).status == 200
    bot.settle()

    assert len(slack.messages()) == 1 and fake.count("chat") == 1
    assert bot.gateway.usage(TEAM, "2000-01-01", "2100-01-01").totals.requests == 1
    assert bot.gateway.usage("T0GUEST", "2000-01-01", "2100-01-01").totals.requests == 0
