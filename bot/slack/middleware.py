"""Bolt middleware that applies to every request before any listener runs.

:class:`InstalledWorkspaceOnly`: Penny runs with one bot token, so it serves the one workspace (or,
for an org-wide install, the one organization) that token belongs to, and the one app. A request
from anywhere else (the app installed in a second workspace whose events reach this URL, a
misrouted delivery) is acknowledged and dropped before any listener runs: no store write, no
LLM call, no Slack call. The first drop from each workspace is logged; later ones are not, so a
busy foreign workspace cannot flood the log.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Final

from slack_bolt import BoltRequest, BoltResponse
from slack_bolt.middleware import Middleware

from bot.slack.startup import SlackInstallation
from proxy_core import get_logger

__all__ = ["InstalledWorkspaceOnly", "foreign_request"]

LOGGED_TEAMS_KEPT: Final = 10_000  # workspaces whose first drop was logged, remembered per process

_log = get_logger()


def foreign_request(installed: SlackInstallation, *, team_id: str | None, enterprise_id: str | None,
                    app_id: str | None) -> str | None:
    """Why a request from ``team_id`` / ``enterprise_id`` for ``app_id`` is not for this
    installation ("app" or "workspace"), or None when it is (or cannot be told apart)."""
    if app_id and installed.app_id and app_id != installed.app_id:
        return "app"
    if installed.is_enterprise_install and installed.enterprise_id:
        return None if enterprise_id in (None, installed.enterprise_id) else "workspace"
    if team_id and installed.team_id and team_id != installed.team_id:
        return "workspace"
    return None


class InstalledWorkspaceOnly(Middleware):
    """Drops requests not for the installation the bot token belongs to (see the module doc).

    ``installation`` comes from Penny's start-up check; without one, the first request looks it up
    with ``auth.test`` (once per process, again only after a failed lookup)."""

    def __init__(self, installation: SlackInstallation | None = None) -> None:
        self._installation = installation
        self._lock = threading.Lock()
        self._logged: set[str] = set()

    def process(self, *, req: BoltRequest, resp: BoltResponse, next: Callable[[], BoltResponse]) -> BoltResponse:
        installed = self._installed(req)
        if installed is None:
            return next()  # auth.test failed: Bolt's own authorization has refused the request already
        context = req.context
        app_id = req.body.get("api_app_id") if isinstance(req.body, dict) else None
        reason = foreign_request(installed, team_id=context.team_id, enterprise_id=context.enterprise_id,
                                 app_id=str(app_id) if app_id else None)
        if reason is None:
            return next()
        team = str(context.team_id or context.enterprise_id or "unknown")
        with self._lock:
            first = team not in self._logged
            if first:
                if len(self._logged) >= LOGGED_TEAMS_KEPT:
                    self._logged.clear()
                self._logged.add(team)
        if first:
            _log.warning("slack.foreign_request_dropped", reason=reason, team_id=team, app_id=app_id,
                         installed_team_id=installed.team_id, note="logged once per workspace")
        return BoltResponse(status=200, body="")

    def _installed(self, req: BoltRequest) -> SlackInstallation | None:
        if self._installation is not None:
            return self._installation
        with self._lock:
            if self._installation is None:
                try:
                    response = req.context.client.auth_test()
                except Exception as exc:
                    _log.warning("slack.auth_test_failed", error=exc)
                    return None
                data = response.data if isinstance(response.data, dict) else {}
                self._installation = SlackInstallation.from_auth_test(data, response.headers)
            return self._installation
