"""``/cost`` in Slack: what the caller's answers cost (:mod:`bot.cost`), and the team's for admins.

``/cost`` shows the caller's own numbers (split by source when some came through a ``penny proxy``
key), ``/cost team`` the workspace's with every proxy key (to admins; others are told why not, with
their own), ``/cost help`` what it does. The command is acked at once and the reply
computed after. Who is an admin (:class:`Admins`): a Penny admin (``PENNY_ADMIN_USER_IDS``), or a
Slack workspace admin or owner (``users.info``, kept :data:`ADMIN_LOOKUP_TTL_S`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass
from typing import Any, Final

from slack_bolt import Ack, Respond
from slack_sdk import WebClient

from bot.cost import CostReport, TeamReport, cost_report, is_admin, team_report
from bot.proxy.keys import KeyRing
from bot.slack.answers import FAILED_TEXT
from bot.slack.cost_blocks import cost_blocks, help_blocks, team_blocks, team_refusal_blocks
from bot.slack.render import Block, message_text
from proxy_core import Accounts, Clock, get_logger

__all__ = ["ADMIN_LOOKUP_TTL_S", "Admins", "CostCommand"]

ADMIN_LOOKUP_TTL_S: Final = 300.0  # a users.info answer (admin or not) is trusted this long
ADMIN_LOOKUPS_KEPT: Final = 10_000

_log = get_logger()


@dataclass(frozen=True, slots=True)
class _PennyAdmins:
    """Penny's own admins, in the shape :func:`bot.cost.is_admin` reads."""

    admin_user_ids: frozenset[str]


class Admins:
    """Who may see the team's spend: a Penny admin, or a Slack workspace admin or owner, whose
    ``users.info`` answer is kept :data:`ADMIN_LOOKUP_TTL_S` (a demoted admin sees team spend that
    much longer at most)."""

    def __init__(self, penny_admins: frozenset[str], *, clock: Clock) -> None:
        self._penny = _PennyAdmins(penny_admins)
        self._clock = clock
        # (workspace, user) -> (is a Slack admin, known until): every Home open and /cost team
        # would otherwise ask users.info again.
        self._slack: dict[tuple[str, str], tuple[bool, float]] = {}
        self._lock = threading.Lock()

    def is_admin(self, client: WebClient, workspace: str, user: str) -> bool:
        if not user:
            return False
        if is_admin(user, self._penny, None):
            return True  # a Penny admin: no Slack call needed
        key, now = (workspace, user), self._clock()
        with self._lock:
            known = self._slack.get(key)
        if known is not None and now < known[1]:
            return known[0]
        try:
            info = client.users_info(user=user).data
        except Exception as exc:  # unknown means no, this time: a failed lookup is not kept
            _log.warning("slack.users_info_failed", error=exc)
            return False
        admin = isinstance(info, dict) and is_admin(user, self._penny, info, workspace=workspace)
        with self._lock:
            if len(self._slack) >= ADMIN_LOOKUPS_KEPT:
                self._slack = {k: v for k, v in self._slack.items() if now < v[1]}
                if len(self._slack) >= ADMIN_LOOKUPS_KEPT:
                    self._slack.clear()
            self._slack[key] = (admin, now + ADMIN_LOOKUP_TTL_S)
        return admin


@dataclass(eq=False)
class CostCommand:
    """``/cost``, and the reports the App Home shows too, read through ``accounts``; ``keys`` names
    the proxy keys among a person's sources (and lists them to admins); ``wall`` is the clock that
    picks today and this month."""

    accounts: Accounts
    admins: Admins
    _: KW_ONLY
    keys: KeyRing
    wall: Callable[[], float]

    def on_cost(self, ack: Ack, command: dict[str, Any], respond: Respond, client: WebClient) -> None:
        """``/cost`` (own numbers), ``/cost team`` (admins), ``/cost help``; ack first, then compute."""
        ack()
        user = str(command.get("user_id") or "")
        try:
            blocks = self._reply(client, str(command.get("team_id") or ""), user, str(command.get("text") or ""))
        except Exception as exc:
            _log.exception("slack.cost_failed", error=exc)
            blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": FAILED_TEXT}}]
        try:
            if command.get("response_url"):
                respond(blocks=blocks, text=message_text(blocks), response_type="ephemeral")
            else:
                client.chat_postEphemeral(
                    channel=str(command.get("channel_id") or ""), user=user, blocks=blocks, text=message_text(blocks)
                )
        except Exception as exc:
            _log.warning("slack.cost_reply_failed", error=exc)

    def reports(self, client: WebClient, workspace: str, user: str, *, team: bool
                ) -> tuple[CostReport, TeamReport | None]:
        """The user's report, and with ``team`` the team's when the user is an admin."""
        admin = team and self.admins.is_admin(client, workspace, user)
        now = self.wall()
        keys = self.keys.list()
        own = cost_report(self.accounts, workspace, user, now, keys=[k for k in keys if k.user_id == user])
        return own, team_report(self.accounts, workspace, now, keys=keys) if admin else None

    def _reply(self, client: WebClient, workspace: str, user: str, text: str) -> list[Block]:
        words = text.strip().lower().split()
        arg = words[0] if words else ""
        if len(words) > 1 or arg not in ("", "me", "team"):  # help, or anything unknown
            return help_blocks()
        if arg == "team":
            own, team = self.reports(client, workspace, user, team=True)
            return team_blocks(team) if team is not None else team_refusal_blocks(own)
        own, _ = self.reports(client, workspace, user, team=False)
        return cost_blocks(own)
