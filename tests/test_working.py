"""The 👀 while Penny works: only on slow answers, made off the answer's path, and a throttled
reaction never waited out. Against the fake Slack Web API, through the real slack_sdk client."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import pytest
import structlog
from slack_sdk import WebClient
from slack_sdk.http_retry import builtin_handlers

from bot.slack.app import SlackSettings, make_client
from bot.slack.working import WorkingIndicator
from proxy_core.clock import ManualClock
from tests.fake_slack import FakeSlack, SlackCall, SlackFault

TS = "1700000100.000100"


@pytest.fixture
def client(slack: FakeSlack) -> WebClient:
    # Penny's own client: it retries Slack's rate limits, as every Slack call Penny makes does.
    return make_client(SlackSettings(bot_token="xoxb-test-token", signing_secret="s", api_url=slack.base_url))


def reactions(slack: FakeSlack) -> list[str]:
    return [c.method for c in slack.calls() if c.method.startswith("reactions.")]


def test_an_answer_out_within_the_grace_period_costs_no_reaction(slack: FakeSlack, client: WebClient) -> None:
    indicator = WorkingIndicator(grace_s=60, workers=2)
    working = indicator.show(client, "C1", TS)
    working.done()
    indicator.close()
    assert reactions(slack) == []


def test_a_slow_answer_gets_the_reaction_once_the_grace_period_is_over_and_loses_it_after(
    slack: FakeSlack, client: WebClient
) -> None:
    clock = ManualClock()
    indicator = WorkingIndicator(grace_s=0.5, workers=2, clock=clock)
    working = indicator.show(client, "C1", TS)
    clock.advance(0.6)
    indicator.wake()
    [add] = slack.wait_for("reactions.add")
    assert (add.params["channel"], add.params["timestamp"], add.params["name"]) == ("C1", TS, "eyes")
    working.done()
    slack.wait_for("reactions.remove")
    indicator.close()
    assert reactions(slack) == ["reactions.add", "reactions.remove"]
    working.done()  # a second done() changes nothing
    assert reactions(slack) == ["reactions.add", "reactions.remove"]


def test_no_reaction_once_the_answer_is_out_even_before_the_handling_is_done(
    slack: FakeSlack, client: WebClient
) -> None:
    clock = ManualClock()
    indicator = WorkingIndicator(grace_s=0.5, workers=2, clock=clock)
    working = indicator.show(client, "C1", TS)
    slow = indicator.show(client, "C1", "1.000002")  # due at the same moment, still unanswered
    working.answered()  # posted; the event's records are still being stored
    clock.advance(1)
    indicator.wake()
    slack.wait_for("reactions.add")  # the timer has handled both by now
    working.done()
    slow.done()
    slack.wait_for("reactions.remove")
    indicator.close()
    assert [(c.method, c.params["timestamp"]) for c in slack.calls()] == [
        ("reactions.add", "1.000002"), ("reactions.remove", "1.000002")]


def test_reactions_come_due_in_order_of_their_grace_periods(slack: FakeSlack, client: WebClient) -> None:
    clock = ManualClock()
    indicator = WorkingIndicator(grace_s=0.5, workers=1, clock=clock)
    first = indicator.show(client, "C1", "1.000001")
    clock.advance(0.3)
    second = indicator.show(client, "C1", "1.000002")
    clock.advance(0.3)  # the first is due, the second not yet
    indicator.wake()
    slack.wait_for("reactions.add")
    second.done()  # out before its grace period ended: never shown
    clock.advance(1)
    indicator.wake()
    first.done()
    slack.wait_for("reactions.remove")
    indicator.close()
    assert [(c.method, c.params["timestamp"]) for c in slack.calls()] == [
        ("reactions.add", "1.000001"), ("reactions.remove", "1.000001")]


def test_an_answer_out_while_the_reaction_is_being_added_takes_it_off_after(
    slack: FakeSlack, client: WebClient
) -> None:
    entered, release = threading.Event(), threading.Event()

    def slow_add(call: SlackCall) -> Mapping[str, Any]:
        entered.set()
        release.wait(5)
        return {"ok": True}

    slack.respond("reactions.add", slow_add)
    indicator = WorkingIndicator(grace_s=0, workers=2)
    working = indicator.show(client, "C1", TS)
    assert entered.wait(5)
    working.done()  # while reactions.add is still on its way
    release.set()
    slack.wait_for("reactions.remove")
    indicator.close()
    assert reactions(slack) == ["reactions.add", "reactions.remove"]


def test_a_throttled_reaction_is_skipped_not_waited_out(slack: FakeSlack, client: WebClient) -> None:
    slack.rate_limit("reactions.add", retry_after=1)
    indicator = WorkingIndicator(grace_s=0, workers=2)
    working = indicator.show(client, "C1", TS)
    slack.wait_for("reactions.add")
    working.done()
    indicator.close()  # waits for the workers: a retried add would be a second call
    assert reactions(slack) == ["reactions.add"]  # not retried, and nothing to take off


def test_a_throttled_removal_is_retried_so_no_reaction_is_left_behind(
    slack: FakeSlack, client: WebClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The SDK's handler sleeps Retry-After plus up to 1 s of jitter: recorded here, not waited out.
    waits: list[float] = []
    monkeypatch.setattr(builtin_handlers, "time", SimpleNamespace(sleep=waits.append))
    slack.rate_limit("reactions.remove", retry_after=0)
    indicator = WorkingIndicator(grace_s=0, workers=2)
    working = indicator.show(client, "C1", TS)
    slack.wait_for("reactions.add")
    working.done()
    slack.wait_for("reactions.remove", count=2)
    indicator.close()
    assert [c.status for c in slack.calls() if c.method == "reactions.remove"] == [429, 200]
    assert len(waits) == 1 and 0 <= waits[0] < 1  # Retry-After: 0, honoured once


def test_a_reaction_slack_answered_with_a_5xx_may_be_on_so_it_is_taken_off_after(
    slack: FakeSlack, client: WebClient
) -> None:
    # A 5xx does not say the reaction was not added: left on, the 👀 would say Penny still works.
    slack.fail("reactions.add", status=500)
    slack.fail("reactions.remove", "no_reaction")  # it had not been added after all
    indicator = WorkingIndicator(workers=0)
    working = indicator.show(client, "C1", TS)
    with structlog.testing.capture_logs() as logs:
        working.done()
    assert [(c.method, c.status) for c in slack.calls()] == [("reactions.add", 500), ("reactions.remove", 200)]
    assert [e["event"] for e in logs] == []  # nothing to warn about: it was off already


@pytest.mark.parametrize("error", ["internal_error", "fatal_error"])
def test_a_reaction_slack_answered_with_an_error_that_may_follow_it_being_added_is_taken_off_after(
    slack: FakeSlack, client: WebClient, error: str
) -> None:
    # A 200 with one of these: Slack's docs say part of the call may have been done before it.
    slack.fail("reactions.add", error)
    indicator = WorkingIndicator(workers=0)
    working = indicator.show(client, "C1", TS)
    working.done()
    assert reactions(slack) == ["reactions.add", "reactions.remove"]


def test_a_reaction_whose_connection_broke_after_slack_added_it_is_taken_off(
    slack: FakeSlack, client: WebClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The client's connection retry adds it again; Slack says it is on already: it is.
    monkeypatch.setattr(builtin_handlers, "time", SimpleNamespace(sleep=lambda _s: None))
    slack.script("reactions.add", SlackFault(hang_up=True), SlackFault(body={"ok": False, "error": "already_reacted"}))
    indicator = WorkingIndicator(workers=0)
    working = indicator.show(client, "C1", TS)
    working.done()
    assert reactions(slack) == ["reactions.add", "reactions.add", "reactions.remove"]


def test_a_reaction_slack_refused_is_not_taken_off(slack: FakeSlack, client: WebClient) -> None:
    slack.fail("reactions.add", "too_many_reactions")  # a refusal that says it was not added
    indicator = WorkingIndicator(workers=0)
    working = indicator.show(client, "C1", TS)
    working.done()
    assert reactions(slack) == ["reactions.add"]


def test_a_removal_slack_answered_with_a_5xx_is_retried(slack: FakeSlack, client: WebClient) -> None:
    waits: list[float] = []
    slack.fail("reactions.remove", status=503, times=2)
    indicator = WorkingIndicator(workers=0, sleep=waits.append)
    working = indicator.show(client, "C1", TS)
    working.done()
    assert [c.status for c in slack.calls("reactions.remove")] == [503, 503, 200]
    assert waits == [0.5, 1.0]


def test_a_reaction_queued_behind_a_retried_removal_is_not_made_once_its_answer_is_out(
    slack: FakeSlack, client: WebClient
) -> None:
    # A removal Slack answered with a 5xx holds its worker through the waits between its retries;
    # a reaction queued behind it whose answer is out meanwhile must not be put on (and taken off).
    waiting, go_on = threading.Event(), threading.Event()

    def sleep(_s: float) -> None:
        waiting.set()
        go_on.wait(5)

    slack.fail("reactions.remove", status=503, times=1)
    indicator = WorkingIndicator(grace_s=0, workers=1, sleep=sleep)
    first = indicator.show(client, "C1", TS)
    slack.wait_for("reactions.add")
    first.done()
    assert waiting.wait(5)  # the removal's worker is waiting to retry
    second = indicator.show(client, "C1", "1700000200.000200")  # queued behind it
    second.answered()
    second.done()
    go_on.set()
    indicator.close()
    assert [(c.method, c.params["timestamp"]) for c in slack.calls()] == [
        ("reactions.add", TS), ("reactions.remove", TS), ("reactions.remove", TS)]


def test_closing_cancels_reactions_not_made_yet(slack: FakeSlack, client: WebClient) -> None:
    indicator = WorkingIndicator(grace_s=60, workers=2)
    working = indicator.show(client, "C1", TS)
    indicator.close()
    working.done()
    late = indicator.show(client, "C1", "1.000009")
    late.done()
    assert reactions(slack) == []


def test_without_workers_the_reaction_is_made_at_once_on_the_calling_thread(
    slack: FakeSlack, client: WebClient
) -> None:
    indicator = WorkingIndicator(workers=0)
    working = indicator.show(client, "C1", TS)
    assert reactions(slack) == ["reactions.add"]
    working.done()
    assert reactions(slack) == ["reactions.add", "reactions.remove"]


def test_negative_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        WorkingIndicator(grace_s=-1)
    with pytest.raises(ValueError):
        WorkingIndicator(workers=-1)


# -- the status line in a thread -------------------------------------------------------------------


def statuses(slack: FakeSlack) -> list[str]:
    return [str(c.params["status"]) for c in slack.calls("assistant.threads.setStatus")]


def test_in_a_thread_slacks_status_shows_searching_then_writing_and_is_cleared(slack: FakeSlack,
                                                                              client: WebClient) -> None:
    indicator = WorkingIndicator(grace_s=0, workers=2)
    working = indicator.show(client, "C1", TS, thread_ts="1700000000.000001")
    slack.wait_for("assistant.threads.setStatus")
    working.writing()
    slack.wait_for("assistant.threads.setStatus", 2)
    working.writing()  # once is enough
    working.done()
    slack.wait_for("assistant.threads.setStatus", 3)
    indicator.close()
    assert statuses(slack) == ["is searching the docs…", "is writing…", ""]
    assert {c.params["thread_ts"] for c in slack.calls("assistant.threads.setStatus")} == {"1700000000.000001"}
    assert reactions(slack) == []


def test_writing_while_the_status_is_being_set_never_outlives_the_answer(slack: FakeSlack,
                                                                         client: WebClient) -> None:
    entered, release = threading.Event(), threading.Event()

    def slow_status(call: SlackCall) -> Mapping[str, Any]:
        if call.params.get("status") == "is searching the docs…":
            entered.set()
            release.wait(5)
        return {"ok": True}

    slack.respond("assistant.threads.setStatus", slow_status)
    indicator = WorkingIndicator(grace_s=0, workers=2)
    working = indicator.show(client, "C1", TS, thread_ts="1700000000.000001")
    assert entered.wait(5)
    working.writing()  # the LLM writes, and the answer is out, while the status is on its way
    working.done()
    release.set()
    slack.wait_for("assistant.threads.setStatus", 2)
    indicator.close()
    assert statuses(slack) == ["is searching the docs…", ""]  # cleared last; "writing" never shown after


@pytest.mark.parametrize(("status", "error"), [(500, "internal_error"), (200, "internal_error"),
                                               (200, "fatal_error")])
def test_a_status_slack_answered_with_a_5xx_or_a_maybe_done_error_is_cleared_after_the_answer(
    slack: FakeSlack, client: WebClient, status: int, error: str
) -> None:
    slack.fail("assistant.threads.setStatus", error, status=status)
    indicator = WorkingIndicator(workers=0)
    working = indicator.show(client, "C1", TS, thread_ts="1700000000.000001")
    working.done()
    assert statuses(slack) == ["is searching the docs…", ""]
    assert reactions(slack) == []


def test_without_a_thread_or_a_message_nothing_is_shown(slack: FakeSlack, client: WebClient) -> None:
    indicator = WorkingIndicator(workers=0)
    working = indicator.show(client, "D1", None)  # a button click answered at the top level
    working.writing()
    working.done()
    assert slack.calls() == []
