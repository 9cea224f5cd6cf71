"""Socket Mode: envelopes handed to Penny's real Socket Mode handler (Bolt's adapter) reach the real
app and service; Slack's redeliveries (``retry_attempt``) never produce a second answer. Only the
WebSocket transport is replaced, by a recorder of the acknowledgements Penny sends back."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse

from bot.slack.app import socket_mode_handler
from tests.bot_harness import Bot, make_bot
from tests.fake_openai import FakeOpenAI
from tests.fake_slack import FakeSlack
from tests.slack_harness import event_body, mention


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
