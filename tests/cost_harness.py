"""The Slack harness for ``/cost`` and the App Home: budgets and admins from ``BotSettings``, a
fixed wall clock, and the slash command and ``app_home_opened`` event as Slack sends them."""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from slack_bolt import BoltResponse

from bot.settings import BotSettings
from bot.slack.app import build_app
from bot.slack.working import WorkingIndicator
from proxy_core import Accounts
from proxy_core.clock import ManualClock
from proxy_core.stores.sqlite import SqliteStore
from tests.fake_slack import FakeSlack
from tests.slack_harness import TEAM, Harness, ScriptedAnswerer, event_body

NOW = datetime(2026, 1, 20, 15, 30, tzinfo=UTC).timestamp()  # a Tuesday afternoon, mid-month


def make_settings(**fields: Any) -> BotSettings:
    """Settings from these fields and defaults only: no .env file, no PENNY_* variables."""
    return BotSettings(_env_file=None, **fields)  # type: ignore[call-arg]


class CostHarness(Harness):
    """The Slack harness, with budgets/admins and a fixed wall clock for the cost views."""

    def __init__(self, slack: FakeSlack, store: SqliteStore, settings: BotSettings, now: float = NOW,
                 clock: ManualClock | None = None) -> None:
        super().__init__(slack, store, ScriptedAnswerer())
        self.settings = dataclasses.replace(self.settings, admin_user_ids=frozenset(settings.admin_user_ids))
        self.app = build_app(
            answerer=self.answerer,
            store=store,
            settings=self.settings,
            accounts=Accounts(store, settings),
            listener_executor=self.executor,
            wall=lambda: now,
            clock=clock or time.monotonic,
            working=WorkingIndicator(workers=0),
        )

    def slash(self, text: str, *, user: str = "U1", channel: str = "C1", response_url: bool = True) -> BoltResponse:
        self._serial += 1
        form = {
            "token": "legacy-verification-token",
            "team_id": TEAM,
            "team_domain": "penny-test",
            "channel_id": channel,
            "channel_name": "general",
            "user_id": user,
            "user_name": user.lower(),
            "command": "/cost",
            "text": text,
            "api_app_id": "A0PENNY",
            "response_url": f"{self.slack.base_url}commands/{TEAM}/{self._serial}/hook" if response_url else "",
            "trigger_id": f"trigger-{self._serial}",
        }
        return self.dispatch(urlencode(form), content_type="application/x-www-form-urlencoded")

    def home_opened(self, user: str) -> BoltResponse:
        self._serial += 1
        event = {"type": "app_home_opened", "user": user, "channel": "D1", "tab": "home", "event_ts": "1.1"}
        return self.dispatch(event_body(event, f"EvHome{self._serial:04d}"))
