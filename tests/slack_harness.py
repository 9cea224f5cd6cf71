"""The Slack side of a test Penny: the fake workspace's identity, signed requests into the real Bolt
app (``Harness``), and builders for the events and payloads Slack sends.

The answering service is a scripted stand-in for the ``Answerer`` protocol (``ScriptedAnswerer``);
the store is whatever store the test hands in. ``tests.bot_harness`` builds on ``Harness``
with Penny's real service and gateway."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlencode

from slack_bolt import App, BoltRequest, BoltResponse
from slack_sdk.signature import SignatureVerifier

from bot.answer_types import Answer, Citation, Question
from bot.settings import ThreadReplies
from bot.slack.app import SlackSettings, build_app
from bot.slack.working import WorkingIndicator
from proxy_core import Accounts, PennySettings
from proxy_core.stores.base import Store
from tests.fake_slack import FakeSlack, SlackCall

TOKEN = "xoxb-test-penny-not-a-real-token"
SECRET = "test-signing-secret-penny"
TEAM = "T0PENNY"
BOT_USER = "UPENNY"
BOT_ID = "B0PENNY"
ROOT = "1700000100.000100"  # a mention's ts unless a test says otherwise: the root of its thread

CITATIONS = (
    Citation(1, "Deploying", "Steps", "ops/deploy.md", "https://docs.example.com/ops/deploy"),
    Citation(2, "Rollbacks", "", "ops/rollback.md", None),
)
ANSWER = Answer(
    kind="answer",
    text="Run `make deploy` from the **main** branch [1]. To undo, see [2].",
    citations=CITATIONS,
    footer="gpt-4.1-mini · 412 tokens · $0.0007",
    entry_id="entry-1",
    cost_micros=700,
)


class ScriptedAnswerer:
    """Answers from a script (one prepared Answer per call, the last one repeating) and records
    every Question. ``raises`` makes a call fail the way a bug in the service would."""

    def __init__(self, *answers: Answer, raises: Exception | None = None) -> None:
        self.script = list(answers) or [ANSWER]
        self.raises = raises
        self.questions: list[Question] = []
        self._lock = threading.Lock()

    def answer(self, question: Question) -> Answer:
        with self._lock:
            self.questions.append(question)
            index = min(len(self.questions), len(self.script)) - 1
        if self.raises is not None:
            raise self.raises
        return self.script[index]


class HeldAnswers:
    """An answering service whose answers run (holding their turns, busy, not waiting on the LLM)
    until ``release`` is set; counts those running at once, and keeps each question with the name
    of the thread that answered it."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.running = self.most = self.started = 0
        self.asked: list[tuple[Question, str]] = []
        self._lock = threading.Lock()

    def answer(self, question: Question) -> Answer:
        with self._lock:
            self.started += 1
            self.asked.append((question, threading.current_thread().name))
            self.running += 1
            self.most = max(self.most, self.running)
        assert self.release.wait(timeout=10)
        with self._lock:
            self.running -= 1
        return ANSWER


class Harness:
    """A Penny app wired to the fake Slack, a store and a scripted answerer."""

    def __init__(self, slack: FakeSlack, store: Store, answerer: ScriptedAnswerer,
                 working: WorkingIndicator | None = None, thread_replies: ThreadReplies = "questions",
                 wall: Callable[[], float] = time.time) -> None:
        self.slack = slack
        self.store = store
        self.answerer = answerer
        self.feedback: list[tuple[str, str, bool]] = []
        self.executor = ThreadPoolExecutor(max_workers=4)
        self.settings = SlackSettings(bot_token=TOKEN, signing_secret=SECRET, api_url=slack.base_url,
                                      thread_replies=thread_replies)
        self.app: App = build_app(
            answerer=answerer,
            store=store,
            settings=self.settings,
            accounts=Accounts(store, PennySettings(_env_file=None)),  # type: ignore[call-arg]  # defaults only
            on_feedback=lambda user, entry, up: self.feedback.append((user, entry, up)),
            listener_executor=self.executor,
            # 👀 at once and in order by default: these tests read the calls
            working=working if working is not None else WorkingIndicator(workers=0),
            wall=wall,  # how old an edited message is; a test of edits passes a manual clock
        )
        self._serial = 0

    def settle(self) -> None:
        """Wait until every listener dispatched so far has finished (no more can start)."""
        self.executor.shutdown(wait=True)

    # -- requests --------------------------------------------------------------------------

    def dispatch(
        self,
        body: str,
        *,
        content_type: str = "application/json",
        timestamp: int | None = None,
        secret: str = SECRET,
        headers: dict[str, str] | None = None,
    ) -> BoltResponse:
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        signature = SignatureVerifier(secret).generate_signature(timestamp=stamp, body=body)
        assert signature is not None
        all_headers: dict[str, str | Sequence[str]] = {
            "content-type": [content_type],
            "x-slack-signature": [signature],
            "x-slack-request-timestamp": [stamp],
        }
        for name, value in (headers or {}).items():
            all_headers[name.lower()] = [value]
        return self.app.dispatch(BoltRequest(body=body, headers=all_headers))

    def event(self, event: dict[str, Any], *, event_id: str | None = None, **kwargs: Any) -> BoltResponse:
        if event_id is None:
            self._serial += 1
            event_id = f"Ev{self._serial:04d}"
        return self.dispatch(event_body(event, event_id), **kwargs)

    def action(self, payload: dict[str, Any]) -> BoltResponse:
        body = urlencode({"payload": json.dumps(payload)})
        return self.dispatch(body, content_type="application/x-www-form-urlencoded")


def event_body(event: dict[str, Any], event_id: str) -> str:
    return json.dumps(
        {
            "token": "legacy-verification-token",
            "team_id": TEAM,
            "api_app_id": "A0PENNY",
            "type": "event_callback",
            "event_id": event_id,
            "event_time": 1_700_000_000,
            "event": event,
        }
    )


def mention(
    text: str, *, ts: str = ROOT, thread_ts: str | None = None, user: str = "U1"
) -> dict[str, Any]:
    event = {
        "type": "app_mention",
        "user": user,
        "text": text,
        "ts": ts,
        "channel": "C1",
        "event_ts": ts,
    }
    if thread_ts:
        event["thread_ts"] = thread_ts
    return event


def message(
    text: str,
    *,
    ts: str = "1700000200.000100",
    channel: str = "C1",
    channel_type: str = "channel",
    thread_ts: str | None = None,
    user: str | None = "U1",
    **extra: Any,
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "message",
        "text": text,
        "ts": ts,
        "channel": channel,
        "channel_type": channel_type,
        "event_ts": ts,
    }
    if user is not None:
        event["user"] = user
    if thread_ts:
        event["thread_ts"] = thread_ts
    event.update(extra)
    return event


def block_action(action: dict[str, Any], *, message_ts: str, channel: str = "C1", user: str = "U1") -> dict[str, Any]:
    return {
        "type": "block_actions",
        "team": {"id": TEAM, "domain": "penny-test"},
        "user": {"id": user, "team_id": TEAM, "username": user.lower()},
        "api_app_id": "A0PENNY",
        "token": "legacy-verification-token",
        "trigger_id": f"trigger-{message_ts}-{action['action_id']}",
        "container": {"type": "message", "message_ts": message_ts, "channel_id": channel, "is_ephemeral": False},
        "channel": {"id": channel, "name": "general"},
        "response_url": "",
        "actions": [{"type": "button", "action_ts": f"{time.time():.6f}", **action}],
    }


def is_clear(call: SlackCall) -> bool:
    """A call that takes off what showed Penny working: the empty status, or the 👀's removal."""
    return call.method == "reactions.remove" or (
        call.method == "assistant.threads.setStatus" and call.params.get("status") == "")


def wait_cleared(slack: FakeSlack, count: int = 1) -> None:
    """Wait until ``count`` questions were answered to the end (their status or 👀 taken off)."""
    slack.wait_for(("reactions.remove", "assistant.threads.setStatus"), count, where=is_clear)


def thumbs_down(harness: Harness, answer: SlackCall, *, user: str) -> None:
    """Click 👎 under the answer ``answer`` (a recorded chat.postMessage), as ``user``."""
    assert answer.response is not None
    [feedback] = [e for b in answer.blocks if b["type"] == "context_actions" for e in b["elements"]]
    click = block_action({"action_id": feedback["action_id"], "block_id": "fb",
                          "value": feedback["negative_button"]["value"]}, message_ts=str(answer.response["ts"]),
                         user=user)
    click["actions"][0]["type"] = "feedback_buttons"
    harness.action(click)
