"""The whole bot behind the Slack harness: Penny's real answering service over the example handbook
and the real gateway and openai SDK against the fake OpenAI server, with listeners run inline so a
test reads Slack's state right after each dispatch. ``Bot`` is the plain one; ``StreamingBot`` paces
its streams by a ticking manual clock."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from bot.service import index_docs, open_answer_service
from bot.settings import BotSettings
from bot.slack.app import SlackSettings, build_app
from bot.slack.runner import penny_app
from bot.slack.stream import StreamPacing, StreamStarts
from bot.slack.working import WorkingIndicator
from proxy_core.clock import ManualClock
from proxy_core.gateway import Gateway
from proxy_core.metrics import Metrics
from proxy_core.stores.base import Store
from proxy_core.stores.sqlite import SqliteStore
from proxy_core.upstream import OpenAIUpstream
from tests.fake_openai import FakeOpenAI
from tests.fake_slack import FakeSlack
from tests.slack_harness import SECRET, TEAM, TOKEN, Harness

DOCS = Path(__file__).resolve().parents[1] / "examples" / "docs"
KEY = "sk-test-e2e-0123456789abcdef"


class Inline(Executor):
    """Runs each listener as soon as Bolt hands it over (after the ack), so a test reads Slack's
    state right after dispatch, in order, with no waiting."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


class Bot(Harness):
    """The slack-app harness, but with Penny's real service and gateway behind it."""

    def __init__(self, slack: FakeSlack, store: Store, gateway: Gateway, settings: BotSettings) -> None:
        self.slack = slack
        self.store = store
        self.gateway = gateway
        self.settings = SlackSettings(bot_token=TOKEN, signing_secret=SECRET, api_url=slack.base_url)
        service = open_answer_service(settings, store, gateway)
        self.app = penny_app(service, store, gateway, self.settings, listener_executor=Inline(),
                             working=WorkingIndicator(workers=0))
        self._serial = 0

    def settle(self) -> None:
        """Listeners already ran inline."""


def make_bot(slack: FakeSlack, openai: FakeOpenAI, tmp_path: Path, *, store: Store | None = None,
             **overrides: Any) -> Bot:
    """A bot on ``store`` (by default a new SQLite file in ``tmp_path``) with the docs indexed."""
    params: dict[str, Any] = {"openai_api_key": KEY, "requests_per_minute": 0, "tokens_per_minute": 0}
    params.update(overrides)
    settings = BotSettings(**params)
    store = store or SqliteStore(tmp_path / "penny.db")
    index_docs(settings, store, DOCS)
    gateway = Gateway(settings, store=store, metrics=Metrics(CollectorRegistry()),
                      upstream=OpenAIUpstream(api_key=KEY, base_url=openai.base_url, timeout_s=5.0))
    return Bot(slack, store, gateway, settings)


class TickingClock(ManualClock):
    """A manual clock that moves ``step`` seconds each time it is read: the stream's pacing sees
    time pass between the pieces of an answer while nothing sleeps."""

    def __init__(self, step: float) -> None:
        super().__init__()
        self.step = step

    def __call__(self) -> float:
        now = super().__call__()
        self.advance(self.step)
        return now


class StreamingBot(Harness):
    """Penny's Bolt app over the real service and gateway, its streams paced by a ticking clock."""

    def __init__(self, slack: FakeSlack, openai: FakeOpenAI, path: Path, pacing: StreamPacing | None = None,
                 starts_burst: float = 5, **overrides: Any) -> None:
        params: dict[str, Any] = {"openai_api_key": KEY, "requests_per_minute": 0, "tokens_per_minute": 0,
                                  "docs_base_url": "https://docs.example.com"}
        params.update(overrides)
        settings = BotSettings(**params)
        path.mkdir(parents=True, exist_ok=True)
        self.slack = slack
        self.store = SqliteStore(path / "penny.db")
        index_docs(settings, self.store, DOCS)
        self.gateway_clock = ManualClock()
        self.gateway = Gateway(settings, store=self.store, metrics=Metrics(CollectorRegistry()),
                               upstream=OpenAIUpstream(api_key=KEY, base_url=openai.base_url, timeout_s=5.0),
                               clock=self.gateway_clock, sleep=self.gateway_clock.sleep, rand=lambda: 0.5)
        self.settings = SlackSettings(bot_token=TOKEN, signing_secret=SECRET, api_url=slack.base_url)
        self.sleeps: list[float] = []  # what a throttled chat.stopStream waited
        # Streams start with the first text here (the fake writes an answer in no time); the
        # default start delay has a test of its own.
        self.app = build_app(answerer=open_answer_service(settings, self.store, self.gateway), store=self.store,
                             settings=self.settings, accounts=self.gateway.accounts, listener_executor=Inline(),
                             clock=TickingClock(0.25),
                             stream_pacing=pacing or StreamPacing(start_after_s=0),
                             working=WorkingIndicator(workers=0), sleep=self.sleeps.append,
                             stream_starts=StreamStarts(self.store, burst=starts_burst))
        self._serial = 0

    def settle(self) -> None:
        """Listeners already ran inline."""

    def ledger(self) -> int:
        return self.gateway.usage(TEAM, "2000-01-01", "2100-01-01").totals.requests


def streamed_text(slack: FakeSlack, ts: str) -> str:
    """Everything sent into the stream whose message is ``ts``."""
    text = ""
    for call in slack.calls():
        started = call.method == "chat.startStream" and (call.response or {}).get("ts") == ts
        continued = call.method in ("chat.appendStream", "chat.stopStream") and call.params.get("ts") == ts
        if started or continued:
            text += str(call.params.get("markdown_text", ""))
    return text
