"""Socket Mode: envelopes handed to Penny's real Socket Mode handler (Bolt's adapter) reach the real
app and service; Slack's redeliveries (``retry_attempt``) never produce a second answer. Only the
WebSocket transport is replaced, by a recorder of the acknowledgements Penny sends back."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse

from bot.settings import BotSettings
from bot.slack.app import socket_mode_handler
from bot.slack.feedback import ACTION_FRESH_ANSWER, FRESH_BLOCK_PREFIX
from bot.slack.pacing import WorkTurns
from bot.slack.runner import AnswersCut, run_slack
from proxy_core.stores.sqlite import SqliteStore
from tests.bot_harness import Bot, make_bot
from tests.fake_openai import FakeOpenAI, Gate
from tests.fake_slack import FakeSlack, SlackCall
from tests.penny_http import penny_env
from tests.polling import until
from tests.slack_harness import TEAM, TOKEN, HeldAnswers, ScriptedAnswerer, block_action, event_body, mention


class Transport:
    """Stands in for the WebSocket: records the envelope acknowledgements."""

    def __init__(self) -> None:
        self.acks: list[SocketModeResponse] = []
        self.logger = logging.getLogger("tests.socket_mode")

    def send_socket_mode_response(self, response: SocketModeResponse) -> None:
        self.acks.append(response)


@pytest.fixture
def bot(slack: FakeSlack, fake: FakeOpenAI, tmp_path: Path) -> Iterator[Bot]:
    b = make_bot(slack, fake, tmp_path)
    yield b
    b.gateway.close()


def envelope(event: dict[str, Any], event_id: str, envelope_id: str, retry: int | None = None) -> SocketModeRequest:
    payload = json.loads(event_body(event, event_id))
    return SocketModeRequest(type="events_api", envelope_id=envelope_id, payload=payload,
                             retry_attempt=retry, retry_reason="timeout" if retry else None)


def test_a_socket_mode_event_is_acked_and_answered_once(bot: Bot, slack: FakeSlack, fake: FakeOpenAI) -> None:
    handler = socket_mode_handler(bot.app, "xapp-test-not-a-real-token")
    transport = Transport()
    event = mention("<@UPENNY> where are the production logs?", ts="1700000100.000100")
    handler.handle(transport, envelope(event, "EvSock", "env-1"))
    handler.handle(transport, envelope(event, "EvSock", "env-2", retry=1))
    handler.handle(transport, envelope(event, "EvSock", "env-3", retry=2))
    assert [a.envelope_id for a in transport.acks] == ["env-1", "env-2", "env-3"]  # every delivery acked
    [answer] = slack.messages()  # posted, or streamed while written and then replaced by the answer
    assert slack.count("chat.startStream") + slack.count("chat.postMessage") == 1  # one message, streamed or not
    assert answer["thread_ts"] == "1700000100.000100"
    assert "engineering/logs-and-observability.md" in json.dumps(answer["blocks"])
    assert fake.count("chat") == 1


def test_two_socket_mode_replicas_answer_an_event_delivered_to_both_once(
    slack: FakeSlack, fake: FakeOpenAI, tmp_path: Path
) -> None:
    """Slack spreads an app's events over its open connections (up to 10), and may redeliver one on
    another: replicas sharing a store answer each event once, whichever connection carries it."""
    from concurrent.futures import ThreadPoolExecutor

    replicas = [make_bot(slack, fake, tmp_path) for _ in range(2)]  # two gateways, one store file
    try:
        handlers = [socket_mode_handler(bot.app, "xapp-test-not-a-real-token") for bot in replicas]
        transports = [Transport(), Transport()]
        events = [(mention(f"<@UPENNY> {question}", ts=f"17000002{i:02d}.000100", user=f"U{i}"), f"EvRep{i}")
                  for i, question in enumerate(["where are the production logs?", "how do I deploy to staging?",
                                                "how do I start the dev server?", "what is the on-call rotation?"])]
        with ThreadPoolExecutor(8) as pool:
            for i, (event, event_id) in enumerate(events):
                for r, (handler, transport) in enumerate(zip(handlers, transports, strict=True)):
                    pool.submit(handler.handle, transport, envelope(event, event_id, f"env-{i}-{r}"))
        assert [len(t.acks) for t in transports] == [4, 4]  # every delivery acked on both connections
        threads = [m["thread_ts"] for m in slack.messages()]
        assert sorted(threads) == sorted(event["ts"] for event, _ in events)  # each answered once
        assert fake.count("chat") == 4  # one LLM call per event, not per delivery
    finally:
        for bot in replicas:
            bot.gateway.close()


# -- over a real Socket Mode connection: paced like an HTTP worker ----------------------------------

APP_TOKEN = "xapp-1-test-not-a-real-app-token"


def events_envelope(text: str, n: int) -> dict[str, Any]:
    event = mention(f"<@UPENNY> {text}", ts=f"17000009{n:02d}.000100", user=f"U{n}")
    return {"envelope_id": f"env-q{n}", "type": "events_api", "accepts_response_payload": False,
            "payload": json.loads(event_body(event, f"EvSockHeld{n}"))}


def cost_envelope(slack: FakeSlack) -> dict[str, Any]:
    command = {"command": "/cost", "text": "", "team_id": TEAM, "user_id": "U1", "channel_id": "C1",
               "api_app_id": "A0PENNY", "trigger_id": "trigger-1",
               "response_url": f"{slack.base_url}commands/{TEAM}/1/hook"}
    return {"envelope_id": "env-cost", "type": "slash_commands", "accepts_response_payload": True, "payload": command}


def acked(slack: FakeSlack, envelope_id: str) -> list[SlackCall]:
    return [c for c in slack.calls("socket_mode.ack") if c.params["envelope_id"] == envelope_id]


def test_socket_mode_acks_events_before_answering_them_cost_at_once_with_every_turn_held_and_finishes_answers_on_stop(
    slack: FakeSlack, sqlite_store: SqliteStore
) -> None:
    answers, turns, stop, out = HeldAnswers(), WorkTurns(2), threading.Event(), io.StringIO()
    settings = BotSettings(slack_bot_token=TOKEN, slack_app_token=APP_TOKEN, slack_api_url=slack.base_url)
    result: list[int] = []
    runner = threading.Thread(target=lambda: result.append(
        run_slack(answers, sqlite_store, None, settings, out=out, until=stop, turns=turns)))
    runner.start()
    try:
        slack.wait_for("websocket")
        for n in range(6):  # two answers hold both turns (busy, not waiting on the LLM); four wait for one
            slack.deliver(events_envelope(f"question {n}", n))
        slack.wait_for("socket_mode.ack", 6)  # every event acked, though most answers cannot start
        until(lambda: answers.started == 2 and turns.queued() == 4)

        sent = time.monotonic()
        slack.deliver(cost_envelope(slack))
        [ack] = slack.wait_for("socket_mode.ack", where=lambda c: c.params["envelope_id"] == "env-cost")
        assert ack.at - sent < 1.0  # Slack allows 3 s
        [reply] = slack.wait_for(f"commands/{TEAM}/1/hook")
        assert reply.params["response_type"] == "ephemeral"
        assert answers.started == 2  # the command's turn, past the bound, let no other answer start

        # A "Get a fresh answer" click is acked at once too; the answer it asks for waits its turn.
        click = block_action({"action_id": ACTION_FRESH_ANSWER, "block_id": FRESH_BLOCK_PREFIX + "1700000900.000100",
                              "value": "question 0"}, message_ts="1700000999.000001")
        sent = time.monotonic()
        slack.deliver({"envelope_id": "env-click", "type": "interactive", "accepts_response_payload": False,
                       "payload": click})
        [ack] = slack.wait_for("socket_mode.ack", where=lambda c: c.params["envelope_id"] == "env-click")
        assert ack.at - sent < 1.0 and answers.started == 2

        stop.set()  # stopping with six answers unwritten: the connection closes, the answers are finished
        until(lambda: "Stopping: finishing the answers being written" in out.getvalue(), timeout_s=15)
        assert not slack.calls("chat.postMessage")
    finally:
        stop.set()
        answers.release.set()
        runner.join(timeout=20)
    assert result == [0]
    assert slack.count("chat.postMessage") == 7 and answers.most == 2  # all written before run_slack returned
    [(fresh, thread)] = [(question, thread) for question, thread in answers.asked if question.fresh]
    assert fresh.text == "question 0" and thread.startswith("penny-slack_")  # the answers' pool, not the acks'
    assert [len(acked(slack, f"env-q{n}")) for n in range(6)] == [1] * 6


def test_a_redelivered_socket_mode_event_is_acked_again_and_answered_once(slack: FakeSlack,
                                                                         sqlite_store: SqliteStore) -> None:
    stop = threading.Event()
    settings = BotSettings(slack_bot_token=TOKEN, slack_app_token=APP_TOKEN, slack_api_url=slack.base_url)
    runner = threading.Thread(target=run_slack, args=(ScriptedAnswerer(), sqlite_store, None, settings),
                              kwargs={"out": io.StringIO(), "until": stop, "turns": WorkTurns(2)})
    runner.start()
    try:
        slack.wait_for("websocket")
        envelope = events_envelope("where are the logs?", 1)
        slack.deliver(envelope)
        slack.deliver({**envelope, "envelope_id": "env-q1-again", "retry_attempt": 1, "retry_reason": "timeout"})
        slack.wait_for("socket_mode.ack", 2)
        slack.wait_for("chat.postMessage")
    finally:
        stop.set()
        runner.join(timeout=20)
    assert slack.count("chat.postMessage") == 1


def test_sigterm_stops_socket_mode_like_ctrl_c_and_restores_the_previous_handler(slack: FakeSlack,
                                                                                sqlite_store: SqliteStore) -> None:
    """``docker stop`` and systemd send SIGTERM: Penny closes the connection and returns 0 (Python's
    default would end the process at once, answers under way and all)."""
    settings = BotSettings(slack_bot_token=TOKEN, slack_app_token=APP_TOKEN, slack_api_url=slack.base_url)
    before = signal.getsignal(signal.SIGTERM)

    out = io.StringIO()

    def terminate_once_connected() -> None:
        try:
            until(lambda: "connected to Slack" in out.getvalue(), timeout_s=30)  # said once SIGTERM is Penny's
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # whatever happened, run_slack on the main thread must end

    sender = threading.Thread(target=terminate_once_connected)
    sender.start()
    assert run_slack(ScriptedAnswerer(), sqlite_store, None, settings, out=out, turns=WorkTurns(2)) == 0  # main thread
    sender.join(timeout=10)
    assert signal.getsignal(signal.SIGTERM) == before


def test_answers_not_finished_by_the_stop_timeout_are_cut_and_those_not_started_never_start(
    slack: FakeSlack, sqlite_store: SqliteStore
) -> None:
    answers, turns, stop = HeldAnswers(), WorkTurns(2), threading.Event()
    settings = BotSettings(slack_bot_token=TOKEN, slack_app_token=APP_TOKEN, slack_api_url=slack.base_url)
    raised: list[BaseException] = []

    def run() -> None:
        try:
            run_slack(answers, sqlite_store, None, settings, out=io.StringIO(), until=stop, turns=turns,
                      stop_timeout_s=0.2)
        except BaseException as exc:  # the test looks at what it was
            raised.append(exc)

    runner = threading.Thread(target=run)
    runner.start()
    try:
        slack.wait_for("websocket")
        for n in range(5):  # two answers hold both turns, three wait for one
            slack.deliver(events_envelope(f"question {n}", n))
        until(lambda: answers.started == 2 and turns.queued() == 3)
        stop.set()
        runner.join(timeout=20)
        [cut] = raised
        assert isinstance(cut, AnswersCut) and cut.left == 5  # penny run then ends the process (below)
    finally:
        stop.set()
        answers.release.set()
        runner.join(timeout=20)
    slack.wait_for("chat.postMessage", 2)  # the two running answers finished and gave their turns up:
    assert answers.started == 2 and turns.queued() == 0  # to nobody (the three were dismissed, not handed one)


def test_penny_run_past_its_stop_timeout_ends_at_once_and_says_how_many_answers_were_cut(
    slack: FakeSlack, fake: FakeOpenAI, tmp_path: Path
) -> None:
    """The documented command: SIGTERM while an answer waits on the LLM longer than ``--stop-timeout``
    allows. The interpreter would wait for the listener's thread at exit; Penny ends instead."""
    gate = fake.hold(Gate(2, timeout_s=60))  # the LLM call does not answer during the test
    env = penny_env(tmp_path, openai_url=fake.base_url, slack_url=slack.base_url, SLACK_APP_TOKEN=APP_TOKEN)
    proc = subprocess.Popen([sys.executable, "-m", "bot.cli", "run", "--stop-timeout", "0.5"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    said: list[str] = []
    errors: list[str] = []
    assert proc.stdout is not None and proc.stderr is not None
    # One reader per pipe, and nothing else reads them (communicate() would take lines from "said").
    readers = [threading.Thread(target=lines.extend, args=(pipe,), daemon=True)
               for lines, pipe in ((said, proc.stdout), (errors, proc.stderr))]
    for reader in readers:
        reader.start()
    try:
        until(lambda: any("connected to Slack" in line for line in said) or proc.poll() is not None, timeout_s=60)
        assert proc.poll() is None, "".join(errors)
        slack.deliver(events_envelope("where are the production logs?", 1))
        until(lambda: fake.count("chat") == 1, timeout_s=30)  # the answer waits on the LLM
        stopped = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        took = time.monotonic() - stopped
        for reader in readers:
            reader.join(timeout=10)  # the pipes close with the process
    finally:
        gate.arrive()
        gate.arrive()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert "stopped with 1 answer(s) unfinished" in "".join(errors)
    assert took < 20  # not after the LLM call (held up to 60 s)
    assert any("Stopping: finishing the answers being written" in line for line in said)
