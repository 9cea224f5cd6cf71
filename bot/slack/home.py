"""Penny's App Home: the Home tab shows the viewer's cost dashboard (and the team's, for admins),
fresh on every open; the Messages tab (Penny's agent DM) gets suggested prompts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from slack_bolt import BoltContext
from slack_sdk import WebClient

from bot.slack.answers import HELP_TEXT
from bot.slack.assistant import SuggestedPrompts
from bot.slack.conversation import workspace_of
from bot.slack.cost_blocks import home_view as cost_home_view
from bot.slack.cost_command import CostCommand
from bot.slack.delivery import context_block
from proxy_core import get_logger

__all__ = ["Home", "home_view"]

_log = get_logger()


@dataclass(eq=False)
class Home:
    """The ``app_home_opened`` listener."""

    costs: CostCommand
    prompts: SuggestedPrompts

    def on_home_opened(self, body: dict[str, Any], event: dict[str, Any], context: BoltContext,
                       client: WebClient) -> None:
        """The Home tab: publish the viewer's cost dashboard (and the team's, for admins), fresh on
        every open. The Messages tab (Penny's agent DM): set suggested prompts on it."""
        if event.get("tab") == "messages" and event.get("channel"):
            self.prompts.set_in_dm(client, workspace_of(body, context), str(event["channel"]))
            return
        if event.get("tab") != "home" or not event.get("user"):
            return
        user = str(event["user"])
        try:
            own, team = self.costs.reports(client, workspace_of(body, context), user, team=True)
            view = cost_home_view(own, team)
        except Exception as exc:  # the store is down: the plain home tab still explains Penny
            _log.warning("slack.home_report_failed", error=exc)
            view = home_view()
        try:
            client.views_publish(user_id=user, view=view)
        except Exception as exc:
            _log.warning("slack.home_failed", error=exc)


def home_view() -> dict[str, Any]:
    """The plain Home tab: what Penny is and how to ask her."""
    return {
        "type": "home",
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": "*Penny* answers questions about the team's docs."}},
            {"type": "section", "text": {"type": "mrkdwn", "text": HELP_TEXT}},
            context_block("DM me, or mention me in a channel. `/cost` shows what the answers cost."),
        ],
    }
