"""SlackAnswerStream over the real slack_sdk WebClient against the fake Slack Web API, on a manual
clock: when text is started, appended and stopped, and how every failure ends streaming quietly."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot.slack.stream import (
    MARKDOWN_TEXT_LIMIT,
    SlackAnswerStream,
    StreamPacing,
    StreamStarts,
    append_due,
    pieces,
    retry_after_s,
)
from proxy_core.clock import ManualClock
from proxy_core.stores.base import Store
from tests.fake_slack import FakeSlack

TOKEN = "xoxb-test-penny-stream"
THREAD = "1700000100.000100"


@pytest.fixture
def stream(slack: FakeSlack, clock: ManualClock) -> SlackAnswerStream:
    client = WebClient(token=TOKEN, base_url=slack.base_url, retry_handlers=[])
    # Streams start with the first text here; the start delay has a test of its own.
    return SlackAnswerStream(client, channel="C1", thread_ts=THREAD, user_id="U1", team_id="T0PENNY", clock=clock,
                             pacing=StreamPacing(start_after_s=0))


def appended(slack: FakeSlack) -> list[str]:
    return [str(c.params["markdown_text"]) for c in slack.calls("chat.appendStream")]


# -- the pacing policy -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("waiting", "since", "due"),
    [
        (0, 5.0, False),  # nothing to send
        (1, 0.0, False),
        (999, 0.99, False),
        (1, 1.0, True),  # the interval has passed
        (1000, 0.0, True),  # a burst does not wait
    ],
)
def test_append_due(waiting: int, since: float, due: bool) -> None:
    assert append_due(waiting, since, StreamPacing(interval_s=1.0, burst_chars=1000)) is due


def test_pieces_respect_slacks_markdown_limit() -> None:
    text = "x" * (2 * MARKDOWN_TEXT_LIMIT + 5)
    assert [len(p) for p in pieces(text)] == [MARKDOWN_TEXT_LIMIT, MARKDOWN_TEXT_LIMIT, 5]
    assert "".join(pieces(text)) == text
    assert pieces("") == []


# -- streaming -----------------------------------------------------------------------------------


def test_the_first_text_starts_a_stream_in_the_thread_for_the_asker(slack: FakeSlack,
                                                                     stream: SlackAnswerStream) -> None:
    stream.delta("")  # nothing to show yet
    assert slack.count("chat.startStream") == 0

    stream.delta("Run ")

    start = slack.last("chat.startStream")
    assert start.params["channel"] == "C1"
    assert start.params["thread_ts"] == THREAD
    assert start.params["markdown_text"] == "Run "
    assert (start.params["recipient_user_id"], start.params["recipient_team_id"]) == ("U1", "T0PENNY")
    assert stream.ts == start.response["ts"]  # type: ignore[index]
    assert stream.failure is None


def test_an_answer_written_within_the_start_delay_never_streams(slack: FakeSlack, clock: ManualClock) -> None:
    client = WebClient(token=TOKEN, base_url=slack.base_url, retry_handlers=[])
    stream = SlackAnswerStream(client, channel="C1", thread_ts=THREAD, user_id="U1", team_id="T0PENNY",
                               clock=clock, pacing=StreamPacing(start_after_s=1.0))
    for word in ("Run ", "`make ", "deploy`."):
        clock.advance(0.3)
        stream.delta(word)
    assert stream.close() is None  # done in 0.6 s: the app posts it whole
    assert slack.count("chat.startStream") == 0

    slow = SlackAnswerStream(client, channel="C1", thread_ts=THREAD, user_id="U1", team_id="T0PENNY",
                             clock=clock, pacing=StreamPacing(start_after_s=1.0))
    for word in ("Run ", "`make ", "deploy` ", "from ", "main."):
        clock.advance(0.3)
        slow.delta(word)
    start = slack.last("chat.startStream")  # 1.2 s after the first text: everything so far at once
    assert start.params["markdown_text"] == "Run `make deploy` from main."
    assert slow.close() == slow.ts


def test_text_waits_for_the_interval_then_goes_out_in_one_append(
    slack: FakeSlack, stream: SlackAnswerStream, clock: ManualClock
) -> None:
    stream.delta("Run ")
    for word in ("`make ", "deploy` ", "from "):
        clock.advance(0.25)
        stream.delta(word)
    assert appended(slack) == []  # 0.75s since the stream started

    clock.advance(0.25)
    stream.delta("main ")
    assert appended(slack) == ["`make deploy` from main "]

    clock.advance(0.5)
    stream.delta("[1].")
    assert appended(slack) == ["`make deploy` from main "]  # the interval restarts at each append


def test_a_burst_of_text_is_appended_without_waiting(slack: FakeSlack, stream: SlackAnswerStream) -> None:
    stream.delta("Steps:\n")
    stream.delta("a" * 999)
    assert appended(slack) == []
    stream.delta("b")
    assert appended(slack) == ["a" * 999 + "b"]


def test_close_stops_the_stream_with_the_text_still_waiting(slack: FakeSlack, stream: SlackAnswerStream) -> None:
    for word in ("Run ", "`make ", "deploy`."):
        stream.delta(word)

    ts = stream.close()

    assert ts is not None and ts == stream.ts
    assert slack.last("chat.stopStream").params["markdown_text"] == "`make deploy`."
    [shown] = slack.messages("C1")
    assert (shown["ts"], shown["markdown"], shown["streaming"]) == (ts, "Run `make deploy`.", False)
    assert stream.close() == ts and slack.count("chat.stopStream") == 1  # closing twice is harmless


def test_close_without_any_text_shows_nothing(slack: FakeSlack, stream: SlackAnswerStream) -> None:
    assert stream.close() is None
    assert slack.calls() == []


def test_long_text_goes_out_in_pieces_slack_accepts(slack: FakeSlack, stream: SlackAnswerStream) -> None:
    stream.delta("y" * (MARKDOWN_TEXT_LIMIT + 10))
    stream.delta("z" * (MARKDOWN_TEXT_LIMIT + 20))  # a burst: sent at once, in two appends
    stream.close()

    assert len(slack.last("chat.startStream").params["markdown_text"]) == MARKDOWN_TEXT_LIMIT
    assert [len(t) for t in appended(slack)] == [10, MARKDOWN_TEXT_LIMIT, 20]
    assert slack.messages()[0]["markdown"] == "y" * (MARKDOWN_TEXT_LIMIT + 10) + "z" * (MARKDOWN_TEXT_LIMIT + 20)


# -- restart ---------------------------------------------------------------------------------------


def test_restart_removes_what_was_shown_and_the_next_text_starts_afresh(
    slack: FakeSlack, stream: SlackAnswerStream
) -> None:
    stream.delta("Run `make ")
    first = stream.ts
    stream.delta("depl")
    stream.restart()

    assert slack.last("chat.stopStream").params["ts"] == first
    assert "markdown_text" not in slack.last("chat.stopStream").params  # the void text is not sent
    assert slack.last("chat.delete").params["ts"] == first
    assert stream.ts is None and slack.messages() == []

    stream.delta("Run `make deploy`.")
    ts = stream.close()
    assert ts is not None and ts != first
    assert [(m["ts"], m["markdown"]) for m in slack.messages()] == [(ts, "Run `make deploy`.")]


def test_restart_before_any_text_does_nothing(slack: FakeSlack, stream: SlackAnswerStream) -> None:
    stream.restart()
    assert slack.calls() == []


def test_a_restart_that_cannot_delete_ends_streaming_and_keeps_the_message_to_replace(
    slack: FakeSlack, stream: SlackAnswerStream
) -> None:
    stream.delta("Run `make ")
    first = stream.ts
    slack.fail("chat.delete", "message_not_found")

    stream.restart()
    stream.delta("Run `make deploy`.")

    assert stream.failure == "message_not_found"
    assert slack.count("chat.startStream") == 1  # no second message: the final answer replaces the first
    assert stream.close() == first


# -- failures end streaming quietly --------------------------------------------------------------


@pytest.mark.parametrize("error", ["unknown_method", "missing_scope", "channel_type_not_supported"])
def test_a_stream_slack_refuses_to_start_shows_nothing_and_stops_trying(
    slack: FakeSlack, stream: SlackAnswerStream, error: str
) -> None:
    slack.fail("chat.startStream", error)

    stream.delta("Run ")
    stream.delta("`make deploy`.")

    assert stream.failure == error
    assert stream.close() is None
    assert slack.count("chat.startStream") == 1
    assert slack.count("chat.appendStream") == slack.count("chat.stopStream") == 0


def test_a_rate_limited_start_gives_up_at_once(slack: FakeSlack, stream: SlackAnswerStream) -> None:
    slack.rate_limit("chat.startStream", retry_after=30)

    stream.delta("Run ")

    assert stream.failure == "ratelimited"
    assert slack.count("chat.startStream") == 1  # no retry handler for 429s: nothing waited


def test_a_failed_append_stops_the_stream_and_keeps_the_message(
    slack: FakeSlack, stream: SlackAnswerStream, clock: ManualClock
) -> None:
    stream.delta("Run ")
    slack.fail("chat.appendStream", "ratelimited")
    clock.advance(1.0)
    stream.delta("`make ")
    clock.advance(1.0)
    stream.delta("deploy`.")

    ts = stream.close()

    assert stream.failure == "ratelimited"
    assert slack.count("chat.appendStream") == 1  # no append after the failure
    assert ts is not None  # the app replaces it with the answer
    stop = slack.last("chat.stopStream")
    assert stop.params["ts"] == ts and "markdown_text" not in stop.params
    assert slack.messages()[0]["streaming"] is False


def test_a_dead_connection_is_a_failure_not_an_exception(clock: ManualClock) -> None:
    with FakeSlack() as gone:
        url = gone.base_url
    client = WebClient(token=TOKEN, base_url=url, retry_handlers=[], timeout=1)
    stream = SlackAnswerStream(client, channel="C1", thread_ts=THREAD, user_id="U1", team_id="T0PENNY", clock=clock,
                               pacing=StreamPacing(start_after_s=0))

    stream.delta("Run ")

    assert stream.failure is not None
    assert stream.close() is None


def test_the_fake_holds_streams_to_slacks_rules(slack: FakeSlack) -> None:
    client = WebClient(token=TOKEN, base_url=slack.base_url, retry_handlers=[])
    with pytest.raises(SlackApiError, match="missing_recipient_user_id"):
        client.chat_startStream(channel="C1", thread_ts=THREAD, markdown_text="x")
    with pytest.raises(SlackApiError, match="invalid_arguments"):
        client.chat_startStream(channel="D1", thread_ts="", markdown_text="x")

    dm = client.chat_startStream(channel="D1", thread_ts=THREAD, markdown_text="x")  # a DM needs no recipient
    ts = str(dm["ts"])
    assert client.chat_appendStream(channel="D1", ts=ts, markdown_text="y")["ok"]
    client.chat_stopStream(channel="D1", ts=ts, markdown_text="z")
    with pytest.raises(SlackApiError, match="message_not_in_streaming_state"):
        client.chat_appendStream(channel="D1", ts=ts, markdown_text="late")
    assert [(m["markdown"], m["streaming"]) for m in slack.messages("D1")] == [("xyz", False)]


# -- Slack's tiers: a shared budget of starts, a stop that waits out a throttle --------------------


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [({"Retry-After": ["3"]}, 3.0), ({"retry-after": "12"}, 12.0), ({}, 1.0), ({"Retry-After": ["soon"]}, 1.0)],
)
def test_retry_after_s(headers: dict[str, object], seconds: float) -> None:
    assert retry_after_s(headers) == seconds


def sleeping_stream(slack: FakeSlack, clock: ManualClock, sleeps: list[float],
                    may_start: Callable[[], bool] | None = None) -> SlackAnswerStream:
    client = WebClient(token=TOKEN, base_url=slack.base_url, retry_handlers=[])
    return SlackAnswerStream(client, channel="C1", thread_ts=THREAD, user_id="U1", team_id="T0PENNY", clock=clock,
                             pacing=StreamPacing(start_after_s=0), may_start=may_start, sleep=sleeps.append)


def test_a_throttled_stop_is_retried_after_the_wait_slack_asks_for(slack: FakeSlack, clock: ManualClock) -> None:
    sleeps: list[float] = []
    stream = sleeping_stream(slack, clock, sleeps)
    stream.delta("Run `make deploy`.")
    slack.rate_limit("chat.stopStream", retry_after=3)

    ts = stream.close()

    assert sleeps == [3.0]  # Slack's Retry-After, exactly, on the injected sleep
    assert slack.count("chat.stopStream") == 2 and stream.stopped
    assert [(m["ts"], m["streaming"]) for m in slack.messages()] == [(ts, False)]


@pytest.mark.parametrize(("retry_after", "waited"), [(1, [1.0, 1.0]), (60, [])])
def test_a_stop_that_stays_throttled_says_the_message_is_still_streaming(
    slack: FakeSlack, clock: ManualClock, retry_after: int, waited: list[float]
) -> None:
    sleeps: list[float] = []
    stream = sleeping_stream(slack, clock, sleeps)
    stream.delta("Run `make deploy`.")
    slack.rate_limit("chat.stopStream", retry_after=retry_after, times=3)

    ts = stream.close()

    assert sleeps == waited  # two retries at most, and a wait of a minute is not worth it
    assert ts is not None and not stream.stopped  # the app deletes it and posts the answer whole


def test_no_stream_starts_once_the_budget_is_spent(slack: FakeSlack, clock: ManualClock) -> None:
    allowed = iter([False])
    stream = sleeping_stream(slack, clock, [], may_start=lambda: next(allowed))

    stream.delta("Run ")
    stream.delta("`make deploy`.")

    assert stream.failure == "stream_budget"
    assert stream.close() is None and stream.stopped
    assert slack.calls() == []  # asked once; the answer is posted whole


def test_stream_starts_are_one_budget_for_every_replica(store: Store, open_twin: Callable[[], Store],
                                                        clock: ManualClock) -> None:
    replicas = [StreamStarts(store, per_minute=15, burst=2), StreamStarts(open_twin(), per_minute=15, burst=2)]
    assert [replicas[0].take("T1"), replicas[1].take("T1"), replicas[0].take("T1"), replicas[1].take("T1")] == [
        True, True, False, False]
    assert replicas[1].take("T2")  # another workspace has its own Slack limits
    clock.advance(4.0)  # 15 a minute: one more start every 4 s, on the store's clock
    assert [replicas[1].take("T1"), replicas[0].take("T1")] == [True, False]
