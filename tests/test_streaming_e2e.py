"""Streamed answers end to end: the real gateway and openai SDK against the fake OpenAI server
streaming server-sent events, and signed Slack events into the real Bolt app with the fake Slack
Web API recording every stream call. Nothing of ours is replaced; time is a manual clock."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.slack.delivery import ANSWERS_KIND, THREADS_KIND
from bot.slack.render import ACTION_FEEDBACK
from bot.slack.stream import StreamPacing
from proxy_core import format_usd
from tests.bot_harness import StreamingBot, streamed_text
from tests.fake_openai import FakeOpenAI, Fault, stream_pieces
from tests.fake_slack import FakeSlack, SlackCall
from tests.slack_harness import ROOT, TEAM, mention, message

ANSWER = (
    "To start the dev server, run `make dev` from the repository root [1]. It serves the app on "
    "port 8000 and reloads whenever a file changes [1]. If that port is taken, set `PORT` to another "
    "one before you run it [1]."
)
QUESTION = "<@UPENNY> how do I start the dev server?"
STREAM_METHODS = ("chat.startStream", "chat.appendStream", "chat.stopStream", "chat.update", "chat.delete",
                  "chat.postMessage", "chat.postEphemeral")


class Sink:
    """An AnswerStream that records what the gateway sends it."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def delta(self, text: str) -> None:
        self.events.append(("delta", text))

    def restart(self) -> None:
        self.events.append(("restart", ""))

    def shown(self) -> str:
        """The text on screen now: everything since the last restart."""
        text = ""
        for kind, piece in self.events:
            text = "" if kind == "restart" else text + piece
        return text


@pytest.fixture
def fake_answer() -> str:
    return ANSWER


@pytest.fixture
def make_bot(slack: FakeSlack, fake: FakeOpenAI, tmp_path: Path) -> Iterator[Any]:
    made: list[StreamingBot] = []

    def make(name: str = "bot", pacing: StreamPacing | None = None, **overrides: Any) -> StreamingBot:
        bot = StreamingBot(slack, fake, tmp_path / name, pacing, **overrides)
        made.append(bot)
        return bot

    yield make
    for bot in made:
        bot.gateway.close()


@pytest.fixture
def bot(make_bot: Any) -> StreamingBot:
    made: StreamingBot = make_bot()
    return made


def sent(slack: FakeSlack) -> list[str]:
    """The message calls Penny made, in order."""
    return [c.method for c in slack.calls() if c.method in STREAM_METHODS]


def action_ids(call: SlackCall) -> set[str]:
    return {e.get("action_id") for b in call.blocks if b.get("type") in ("actions", "context_actions")
            for e in b.get("elements", [])}


# -- the gateway streams a miss into any AnswerStream ----------------------------------------------


def test_a_miss_streams_its_text_and_a_mid_stream_drop_restarts_it_and_is_billed_once(
    bot: StreamingBot, fake: FakeOpenAI
) -> None:
    fake.script(Fault.stream_break(3))  # the first attempt breaks after three words
    sink = Sink()

    result = bot.gateway.chat(user_id="U1", workspace_id=TEAM, request_id="ev1", stream=sink,
                              messages=[{"role": "user", "content": "How do I start the dev server?"}])

    pieces = stream_pieces(ANSWER)
    assert sink.events == ([("delta", p) for p in pieces[:3]] + [("restart", "")]
                           + [("delta", p) for p in pieces])
    assert sink.shown() == result.content == ANSWER
    assert result.attempts == 2 and result.cost_micros > 0
    assert fake.count("chat") == 2
    entry = bot.store.ledger_entry(TEAM, "ev1")
    assert entry is not None and (entry.attempts, entry.cost_micros) == (2, result.cost_micros)
    assert bot.ledger() == 1


class BrokenSink(Sink):
    """A stream whose display fails after two pieces."""

    def delta(self, text: str) -> None:
        if len(self.events) == 2:
            raise RuntimeError("the display went away")
        super().delta(text)


def test_a_stream_that_fails_is_dropped_and_the_answer_is_still_returned_and_billed(
    bot: StreamingBot, fake: FakeOpenAI
) -> None:
    sink = BrokenSink()
    result = bot.gateway.chat(user_id="U1", workspace_id=TEAM, request_id="ev1", stream=sink,
                              messages=[{"role": "user", "content": "How do I start the dev server?"}])
    assert result.content == ANSWER and result.cost_micros > 0
    assert len(sink.events) == 2  # nothing more was sent to it once it failed
    assert bot.ledger() == 1
    assert fake.count("chat") == 1


def test_a_cache_hit_does_not_touch_the_stream(bot: StreamingBot, fake: FakeOpenAI) -> None:
    messages = [{"role": "user", "content": "How do I start the dev server?"}]
    bot.gateway.chat(user_id="U1", workspace_id=TEAM, request_id="ev1", messages=messages, stream=Sink())
    sink = Sink()

    hit = bot.gateway.chat(user_id="U2", workspace_id=TEAM, request_id="ev2", messages=messages, stream=sink)

    assert hit.cache_status == "exact" and hit.content == ANSWER
    assert sink.events == []
    assert fake.count("chat") == 1


# -- Slack -------------------------------------------------------------------------------------------


def test_a_threaded_mention_streams_then_becomes_the_rendered_answer(
    bot: StreamingBot, slack: FakeSlack, fake: FakeOpenAI
) -> None:
    bot.event(mention(QUESTION, ts=ROOT))

    calls = sent(slack)
    assert calls[0] == "chat.startStream" and calls[-2:] == ["chat.stopStream", "chat.update"]
    assert set(calls[1:-2]) == {"chat.appendStream"} and len(calls[1:-2]) >= 2  # paced, not per word
    assert len(calls[1:-2]) < len(stream_pieces(ANSWER)) - 1
    start = slack.last("chat.startStream")
    assert start.params["thread_ts"] == ROOT
    assert (start.params["recipient_user_id"], start.params["recipient_team_id"]) == ("U1", TEAM)
    ts = str(start.response["ts"])  # type: ignore[index]
    assert streamed_text(slack, ts) == ANSWER  # the LLM's own Markdown, while it was written

    update = slack.last("chat.update")
    assert update.params["ts"] == ts
    body = json.dumps(update.blocks)
    assert "<https://docs.example.com/engineering/local-dev-setup.md" in body  # the citation, as a link
    assert "gpt-4.1-mini" in body and "tokens" in body and "$" in body  # the cost line
    assert ACTION_FEEDBACK in action_ids(update)
    [shown] = slack.messages()
    assert (shown["ts"], shown["thread_ts"], shown["streaming"]) == (ts, ROOT, False)
    assert slack.count("chat.postMessage") == 0 and fake.count("chat") == 1
    assert bot.store.record_get(ANSWERS_KIND, f"{TEAM}:C1:{ts}") is not None  # 👎 finds the question
    assert bot.store.record_get(THREADS_KIND, f"{TEAM}:C1:{ROOT}") is not None  # follow-ups are heard
    statuses = [c.params["status"] for c in slack.calls("assistant.threads.setStatus")]
    assert statuses == ["is searching the docs…", "is writing…", ""]  # Slack's own "Penny is writing…"
    assert slack.calls()[slack.calls().index(slack.calls("assistant.threads.setStatus")[1]) + 1].method == \
        "chat.startStream"  # writing, then the text appears
    assert slack.count("reactions.add") == 0


def test_an_answer_written_within_the_start_delay_is_posted_whole(
    make_bot: Any, slack: FakeSlack, fake: FakeOpenAI
) -> None:
    # The answer's words all arrive well within the start delay (the ticking clock moves 0.25 s a
    # read), so no stream ever starts: the answer is one chat.postMessage, no streaming calls.
    bot = make_bot(pacing=StreamPacing(start_after_s=60))
    bot.event(mention(QUESTION, ts=ROOT))
    assert sent(slack) == ["chat.postMessage"]
    assert fake.count("chat") == 1


def test_the_final_message_is_the_same_streamed_or_not(make_bot: Any, slack: FakeSlack) -> None:
    make_bot("streamed").event(mention(QUESTION, ts=ROOT), event_id="EvSame")
    update = slack.last("chat.update")
    slack.reset()
    slack.fail("chat.startStream", "channel_type_not_supported")

    make_bot("posted").event(mention(QUESTION, ts=ROOT), event_id="EvSame")

    post = slack.last("chat.postMessage")
    assert update.blocks == post.blocks
    assert update.params["text"] == post.params["text"]


def test_a_cache_hit_is_posted_whole_without_streaming(bot: StreamingBot, slack: FakeSlack,
                                                        fake: FakeOpenAI) -> None:
    bot.event(mention(QUESTION, ts=ROOT))
    bot.event(mention(QUESTION, ts="1700000300.000100", user="U2"))

    assert fake.count("chat") == 1
    assert slack.count("chat.startStream") == 1
    post = slack.last("chat.postMessage")
    assert post.params["thread_ts"] == "1700000300.000100"
    assert "cached" in json.dumps(post.blocks)


def test_a_question_the_docs_do_not_cover_is_not_streamed(bot: StreamingBot, slack: FakeSlack) -> None:
    bot.event(mention("<@UPENNY> what's the capital of Peru?"))
    assert sent(slack) == ["chat.postMessage"]


@pytest.mark.parametrize(("error", "tries_again"), [("channel_type_not_supported", True),
                                                    ("missing_scope", False), ("unknown_method", False)])
def test_when_slack_cannot_stream_the_answer_is_posted_once(
    bot: StreamingBot, slack: FakeSlack, error: str, tries_again: bool
) -> None:
    slack.fail("chat.startStream", error)

    bot.event(mention(QUESTION, ts=ROOT))

    assert sent(slack) == ["chat.startStream", "chat.postMessage"]
    [shown] = slack.messages()
    assert shown["thread_ts"] == ROOT and "gpt-4.1-mini" in json.dumps(shown["blocks"])

    bot.event(mention("<@UPENNY> where are the production logs?", ts="1700000300.000100"))
    assert slack.count("chat.startStream") == (2 if tries_again else 1)  # a missing scope stays missing
    assert len(slack.messages()) == 2


def test_a_throttled_stream_is_not_waited_for_and_the_answer_still_arrives(
    bot: StreamingBot, slack: FakeSlack
) -> None:
    slack.rate_limit("chat.appendStream", retry_after=1)

    bot.event(mention(QUESTION, ts=ROOT))

    assert slack.count("chat.appendStream") == 1  # the 429 ended streaming; no retry, no wait
    assert sent(slack)[-2:] == ["chat.stopStream", "chat.update"]
    [shown] = slack.messages()
    assert not shown["streaming"] and "gpt-4.1-mini" in json.dumps(shown["blocks"])
    assert slack.count("chat.postMessage") == 0


def test_when_the_streamed_message_cannot_be_updated_it_is_replaced_by_one_post(
    bot: StreamingBot, slack: FakeSlack
) -> None:
    slack.fail("chat.update", "cant_update_message")

    bot.event(mention(QUESTION, ts=ROOT))

    streamed = str(slack.last("chat.startStream").response["ts"])  # type: ignore[index]
    assert slack.last("chat.delete").params["ts"] == streamed
    [shown] = slack.messages()
    assert shown["ts"] != streamed and shown["thread_ts"] == ROOT
    assert ACTION_FEEDBACK in action_ids(slack.last("chat.postMessage"))
    assert bot.store.record_get(ANSWERS_KIND, f"{TEAM}:C1:{shown['ts']}") is not None


def test_a_retried_stream_shows_only_the_answer_that_finished(bot: StreamingBot, slack: FakeSlack,
                                                              fake: FakeOpenAI) -> None:
    fake.script(Fault.stream_break(5))

    bot.event(mention(QUESTION, ts=ROOT))

    first, second = (str(c.response["ts"]) for c in slack.calls("chat.startStream"))  # type: ignore[index]
    assert slack.last("chat.delete").params["ts"] == first  # the void text is gone
    assert slack.last("chat.update").params["ts"] == second
    assert [m["ts"] for m in slack.messages()] == [second]
    assert streamed_text(slack, second) == ANSWER
    assert bot.ledger() == 1


def test_an_error_after_streaming_began_leaves_no_streamed_message_and_tells_the_asker_what_it_cost(
    make_bot: Any, slack: FakeSlack, fake: FakeOpenAI
) -> None:
    bot = make_bot(retry_max_attempts=2)
    fake.fail_all(Fault.stream_break(4))

    bot.event(mention(QUESTION, ts=ROOT))

    assert slack.count("chat.startStream") == 2  # one per attempt
    assert slack.count("chat.delete") == 2  # each removed: by the retry, then by the refusal
    assert slack.messages("C1") == []
    assert slack.count("chat.postMessage") == 0
    refusal = slack.last("chat.postEphemeral")
    assert (refusal.params["user"], refusal.params["thread_ts"]) == ("U1", ROOT)
    told = json.dumps(refusal.blocks)
    assert "The LLM provider took this question but did not finish answering it" in told
    # The provider bills what it wrote before breaking off: the asker is told, and the ledger has it.
    assert "charged for the attempts the provider started and did not finish" in told
    assert "nothing was charged" not in told
    totals = bot.gateway.usage(TEAM, "2000-01-01", "2100-01-01").totals
    assert totals.requests == 1 and totals.cost_micros > 0


def test_a_breaker_opened_by_answers_breaking_off_tells_the_asker_what_they_cost(
    make_bot: Any, slack: FakeSlack, fake: FakeOpenAI
) -> None:
    bot = make_bot(retry_max_attempts=4, breaker_failure_threshold=2)
    fake.fail_all(Fault.stream_break(4))

    bot.event(mention(QUESTION, ts=ROOT))

    assert fake.count("chat") == 2  # the second failure opened the breaker: no third attempt
    told = json.dumps(slack.last("chat.postEphemeral").blocks)
    assert "Penny is pausing calls" in told
    assert "charged for the attempts the provider started and did not finish" in told
    totals = bot.gateway.usage(TEAM, "2000-01-01", "2100-01-01").totals
    assert totals.requests == 1 and totals.cost_micros > 0 and format_usd(totals.cost_micros) in told


def test_a_top_level_dm_is_posted_whole_and_a_dm_thread_streams(bot: StreamingBot, slack: FakeSlack) -> None:
    bot.event(message("how do I start the dev server?", channel="D1", channel_type="im", ts=ROOT))
    assert sent(slack) == ["chat.postMessage"]  # Slack streams only replies

    bot.event(message("and how do I deploy to staging?", channel="D1", channel_type="im",
                      ts="1700000300.000100", thread_ts=ROOT))

    start = slack.last("chat.startStream")
    assert (start.params["channel"], start.params["thread_ts"]) == ("D1", ROOT)
    assert sent(slack)[-1] == "chat.update"
    assert len(slack.messages("D1")) == 2


def test_a_long_streamed_answer_updates_the_first_part_and_posts_the_rest(
    make_bot: Any, slack: FakeSlack, fake: FakeOpenAI
) -> None:
    paragraph = ("Run `make dev` from the repository root and wait for the server to report that it "
                 "listens on port 8000 before you open the browser [1]. ") * 6
    fake.answer = "\n\n".join([paragraph] * 25)
    bot = make_bot(max_output_tokens=8000)

    bot.event(mention(QUESTION, ts=ROOT))

    posts = slack.calls("chat.postMessage")
    assert len(posts) >= 1
    calls = sent(slack)
    assert calls.index("chat.update") < calls.index("chat.postMessage")  # the first part stays first
    streamed = str(slack.last("chat.startStream").response["ts"])  # type: ignore[index]
    assert slack.last("chat.update").params["ts"] == streamed
    shown = slack.messages()
    assert [m["ts"] for m in shown] == [streamed] + [str(p.response["ts"]) for p in posts]  # type: ignore[index]
    assert all(m["thread_ts"] == ROOT for m in shown)
    last = str(posts[-1].response["ts"])  # type: ignore[index]
    assert ACTION_FEEDBACK in action_ids(posts[-1])
    assert bot.store.record_get(ANSWERS_KIND, f"{TEAM}:C1:{last}") is not None


# -- Slack's tiers ---------------------------------------------------------------------------------


def test_a_throttled_stop_is_waited_out_and_the_stream_becomes_the_answer(bot: StreamingBot,
                                                                         slack: FakeSlack) -> None:
    slack.rate_limit("chat.stopStream", retry_after=2)

    bot.event(mention(QUESTION, ts=ROOT))

    assert bot.sleeps == [2.0]  # Slack's Retry-After, once
    streamed = str(slack.last("chat.startStream").response["ts"])  # type: ignore[index]
    assert slack.last("chat.update").params["ts"] == streamed
    [shown] = slack.messages()
    assert shown["ts"] == streamed and not shown["streaming"] and "gpt-4.1-mini" in json.dumps(shown["blocks"])


@pytest.mark.parametrize(("retry_after", "waited"), [(1, [1.0, 1.0]), (60, [])])
def test_a_stop_that_stays_throttled_leaves_no_message_mid_stream(bot: StreamingBot, slack: FakeSlack,
                                                                 retry_after: int, waited: list[float]) -> None:
    slack.rate_limit("chat.stopStream", retry_after=retry_after, times=3)

    bot.event(mention(QUESTION, ts=ROOT))

    assert bot.sleeps == waited
    streamed = str(slack.last("chat.startStream").response["ts"])  # type: ignore[index]
    assert slack.last("chat.delete").params["ts"] == streamed  # taken down, not left mid-stream
    [shown] = slack.messages()
    assert shown["ts"] != streamed and not shown["streaming"] and shown["thread_ts"] == ROOT
    assert "gpt-4.1-mini" in json.dumps(shown["blocks"])  # the answer, posted whole
    assert bot.ledger() == 1


def test_once_the_shared_budget_of_streams_is_spent_answers_are_posted_whole(make_bot: Any,
                                                                            slack: FakeSlack) -> None:
    bot = make_bot(starts_burst=1)
    bot.event(mention(QUESTION, ts=ROOT))
    bot.event(mention("<@UPENNY> where are the production logs?", ts="1700000300.000100"))

    assert slack.count("chat.startStream") == 1  # the second answer did not stream
    assert slack.last("chat.postMessage").params["thread_ts"] == "1700000300.000100"
    assert [m["thread_ts"] for m in slack.messages()] == [ROOT, "1700000300.000100"]
    assert not any(m["streaming"] for m in slack.messages())


def test_a_slack_connect_guest_is_the_streams_recipient(bot: StreamingBot, slack: FakeSlack) -> None:
    bot.event({**mention(QUESTION, ts=ROOT, user="U0GUEST"), "user_team": "T0GUEST", "team": "T0GUEST"})

    start = slack.last("chat.startStream")
    assert (start.params["recipient_user_id"], start.params["recipient_team_id"]) == ("U0GUEST", "T0GUEST")
