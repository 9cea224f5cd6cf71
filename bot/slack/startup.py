"""Penny checks Slack before it says it is connected.

:func:`check_bot_token` calls ``auth.test`` (no scope needed; Slack's special tier, far above a
start-up's one call) and compares the scopes the token was granted (the ``x-oauth-scopes`` header of
that answer) with those the manifest declares (:data:`bot.slack.app.BOT_SCOPES`);
:func:`check_app_token` asks ``apps.connections.open`` (Tier 3, app-level token with
``connections:write``) for a Socket Mode URL, and :func:`connect_socket_mode` opens the connection
itself. What goes wrong becomes one sentence naming the setting and what to do:

- a token that is malformed, rejected or missing a scope is a
  :class:`~proxy_core.ConfigurationError` (``penny`` exits 2);
- Slack that cannot be reached (network, DNS, TLS, a proxy, Slack down, throttled) is
  :class:`SlackUnreachable` (``penny`` exits 1: the same settings may work in a minute).

No message carries a token, and no traceback reaches the terminal.
"""

from __future__ import annotations

import logging
import socket
import urllib.error
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.http_retry import RateLimitErrorRetryHandler

from proxy_core import ConfigurationError, PennyError

if TYPE_CHECKING:
    from concurrent.futures import Executor

    from slack_bolt import App

    from bot.slack.app import SlackSettings
    from bot.slack.pacing import AcksFirst

__all__ = [
    "SlackInstallation",
    "SlackUnreachable",
    "check_app_token",
    "check_bot_token",
    "check_report",
    "check_slack",
    "connect_socket_mode",
    "missing_scopes",
    "slack_failure",
]

APPS_URL: Final = "https://api.slack.com/apps → your app"
DEFAULT_API_URL: Final = "https://slack.com/api/"
# auth.test / apps.connections.open errors that mean "this token is not good here", not "try later"
_REJECTED: Final = frozenset({
    "invalid_auth", "not_authed", "account_inactive", "token_revoked", "token_expired", "not_allowed_token_type",
    "no_permission", "access_denied", "team_added_to_org", "ekm_access_denied", "enterprise_is_restricted",
    "forbidden_team", "missing_scope",
})
_TRANSIENT: Final = frozenset({"ratelimited", "service_unavailable", "request_timeout", "fatal_error",
                               "internal_error"})


class SlackUnreachable(PennyError):
    """Slack's Web API or Socket Mode endpoint cannot be reached or answered with a server error.
    The settings may be right: trying again later can work (``penny`` exits 1)."""


@dataclass(frozen=True, slots=True)
class SlackInstallation:
    """Who the bot token belongs to, from ``auth.test``: the installed workspace (or org, for an
    org-wide install), the app, the bot, and the scopes granted (None: Slack did not say)."""

    team_id: str
    team: str
    enterprise_id: str | None
    is_enterprise_install: bool
    app_id: str | None
    bot_user_id: str
    bot_id: str
    bot_name: str
    scopes: frozenset[str] | None

    @classmethod
    def from_auth_test(cls, data: Mapping[str, Any], headers: Mapping[str, Any] | None = None) -> SlackInstallation:
        granted = _header(headers or {}, "x-oauth-scopes")
        return cls(
            team_id=str(data.get("team_id") or ""),
            team=str(data.get("team") or ""),
            enterprise_id=str(data["enterprise_id"]) if data.get("enterprise_id") else None,
            is_enterprise_install=bool(data.get("is_enterprise_install")),
            app_id=str(data["app_id"]) if data.get("app_id") else None,
            bot_user_id=str(data.get("user_id") or ""),
            bot_id=str(data.get("bot_id") or ""),
            bot_name=str(data.get("user") or ""),
            scopes=frozenset(s.strip() for s in granted.split(",") if s.strip()) if granted is not None else None,
        )


def missing_scopes(granted: Iterable[str] | None, required: Iterable[str]) -> list[str]:
    """The ``required`` scopes not in ``granted``, sorted (none when Slack did not say what it granted)."""
    if granted is None:
        return []
    have = set(granted)
    return sorted(set(required) - have)


def slack_failure(setting: str, exc: BaseException, *, api_url: str | None = None) -> PennyError:
    """The error to raise for ``exc`` from a call made with ``setting``'s token: a
    :class:`ConfigurationError` when the token is the problem, :class:`SlackUnreachable` otherwise."""
    where = api_url or DEFAULT_API_URL
    if isinstance(exc, SlackApiError):
        status = int(getattr(exc.response, "status_code", 200) or 200)
        error = str(exc.response.get("error") or f"HTTP {status}") if isinstance(exc.response.data, dict) \
            else f"HTTP {status}"
        if status == 429 or error == "ratelimited":
            return SlackUnreachable(f"Slack asks Penny to slow down ({setting}'s check was rate limited). Try "
                                    "again in a minute.")
        if status >= 500 or error in _TRANSIENT:
            return SlackUnreachable(f"Slack at {where} answered {error}: it is busy or down. Start Penny again "
                                    "in a minute (https://slack-status.com shows outages).")
        if setting == "SLACK_APP_TOKEN":
            return ConfigurationError(
                f"SLACK_APP_TOKEN: Slack refused the app-level token ({error}). Create one at {APPS_URL} → Basic "
                "Information → App-Level Tokens with the scope connections:write, check that Socket Mode is on "
                "(Settings → Socket Mode), and put it in .env as SLACK_APP_TOKEN=xapp-…")
        if error in _REJECTED:
            return ConfigurationError(
                f"SLACK_BOT_TOKEN: Slack rejected the bot token ({error}). Copy the Bot User OAuth Token (xoxb-…) "
                f"from {APPS_URL} → OAuth & Permissions into .env; if the app was uninstalled or the token "
                "revoked, install it to the workspace again there first.")
        return ConfigurationError(f"{setting}: Slack refused it ({error}). Check the app at {APPS_URL}.")
    reason = _network_reason(exc)
    return SlackUnreachable(
        f"Slack is unreachable at {where} ({reason}). Check this machine's network, DNS, firewall and proxy "
        "(HTTPS_PROXY), or SLACK_API_URL if Penny is pointed elsewhere, then start Penny again.")


def check_bot_token(client: WebClient, required_scopes: Iterable[str], *, api_url: str | None = None
                    ) -> SlackInstallation:
    """``auth.test`` with the bot token: who it is, and that it has every scope in ``required_scopes``."""
    token = client.token or ""
    if not token.startswith("xoxb-"):
        raise ConfigurationError(
            "SLACK_BOT_TOKEN: this is not a bot token (a bot token starts with xoxb-). Copy the Bot User OAuth "
            f"Token from {APPS_URL} → OAuth & Permissions into .env as SLACK_BOT_TOKEN=xoxb-…")
    try:
        response = client.auth_test()
    except (SlackClientError, OSError, urllib.error.URLError) as exc:
        raise slack_failure("SLACK_BOT_TOKEN", exc, api_url=api_url) from None
    installation = SlackInstallation.from_auth_test(dict(response.data) if isinstance(response.data, dict) else {},
                                                    response.headers)
    lacking = missing_scopes(installation.scopes, required_scopes)
    if lacking:
        raise ConfigurationError(
            f"SLACK_BOT_TOKEN: the token lacks scopes that manifest.yml declares: {', '.join(lacking)}. Add them at "
            f"{APPS_URL} → OAuth & Permissions → Scopes (or paste manifest.yml under App Manifest), reinstall the "
            "app to the workspace, and put the new token in .env.")
    return installation


def check_slack(settings: SlackSettings) -> SlackInstallation:
    """:func:`check_bot_token` with Penny's client and the scopes its manifest declares."""
    from bot.slack.app import BOT_SCOPES, make_client

    return check_bot_token(make_client(settings), BOT_SCOPES, api_url=settings.api_url)


def check_report(settings: SlackSettings) -> list[str]:
    """``penny check``'s Slack lines: the bot token (who, which workspace, its scopes) and the
    app-level token when they are set, each checked against Slack; raises like :func:`check_slack`."""
    from bot.slack.app import BOT_SCOPES, make_client

    if not settings.bot_token:
        if settings.app_token or settings.signing_secret:
            raise ConfigurationError(
                f"SLACK_BOT_TOKEN: not set, though other Slack settings are. Copy the Bot User OAuth Token "
                f"(xoxb-…) from {APPS_URL} → OAuth & Permissions into .env.")
        return ["not set up: penny run starts a terminal chat (README: Slack set-up)"]
    client = make_client(settings)
    # A check reports a throttle at once (apps.connections.open is Tier 3) rather than wait it out.
    client.retry_handlers = [h for h in client.retry_handlers if not isinstance(h, RateLimitErrorRetryHandler)]
    installation = check_bot_token(client, BOT_SCOPES, api_url=settings.api_url)
    lines = [f"bot token ok: @{installation.bot_name or installation.bot_user_id} in {installation.team} "
             f"({installation.team_id}), app {installation.app_id or '?'}"]
    if installation.scopes is None:
        lines.append("Slack did not list the token's scopes, so they were not compared with manifest.yml")
    else:
        lines.append(f"scopes ok: the token has all {len(BOT_SCOPES)} that manifest.yml declares")
    if settings.app_token:
        check_app_token(client, settings.app_token, api_url=settings.api_url)
        lines.append("app-level token ok: Socket Mode (penny run) can connect")
    else:
        lines.append("SLACK_APP_TOKEN not set: penny run needs it for Socket Mode (penny run --http does not)")
    lines.append("SLACK_SIGNING_SECRET " + ("set (penny run --http)" if settings.signing_secret
                                            else "not set: penny run --http needs it (Socket Mode does not)"))
    return lines


def check_app_token(client: WebClient, app_token: str, *, api_url: str | None = None) -> None:
    """``apps.connections.open`` with the app-level token: Slack would let Penny open a Socket Mode
    connection (the URL it returns is left unused and expires)."""
    _check_app_token_format(app_token)
    try:
        client.apps_connections_open(app_token=app_token)
    except (SlackClientError, OSError, urllib.error.URLError) as exc:
        raise slack_failure("SLACK_APP_TOKEN", exc, api_url=api_url) from None


def connect_socket_mode(app: App, settings: SlackSettings, *, acks_first: AcksFirst | None = None,
                        later: Executor | None = None) -> Any:
    """Open Penny's Socket Mode connection and return its (connected) handler; raise the mapped error
    when the app-level token is refused or the connection cannot be opened. ``acks_first`` and
    ``later``: the handler's pacing (:func:`bot.slack.app.socket_mode_handler`)."""
    from bot.slack.app import socket_mode_handler

    app_token = settings.app_token or ""
    _check_app_token_format(app_token)
    # The SDK logs a failed connection attempt itself (a raw multi-line error on stderr); while
    # connecting, Penny says what went wrong instead. Later reconnects log as usual.
    logger = logging.getLogger("penny.socket_mode")
    logger.setLevel(logging.CRITICAL)
    handler = socket_mode_handler(app, app_token, logger=logger, acks_first=acks_first, later=later)
    try:
        handler.connect()  # apps.connections.open, then the WebSocket handshake
    except (SlackClientError, OSError, urllib.error.URLError) as exc:
        handler.close()
        raise slack_failure("SLACK_APP_TOKEN", exc, api_url=settings.api_url) from None
    finally:
        logger.setLevel(logging.NOTSET)
    if not handler.client.is_connected():  # a failed handshake is logged, not raised
        handler.close()
        raise SlackUnreachable(
            "Slack gave Penny a Socket Mode address but the WebSocket connection to it failed. Check that this "
            "machine may open outbound WebSocket (wss://) connections (firewall, proxy: HTTPS_PROXY), then start "
            "Penny again.")
    return handler


def _check_app_token_format(app_token: str) -> None:
    if not app_token.startswith("xapp-"):
        raise ConfigurationError(
            "SLACK_APP_TOKEN: this is not an app-level token (one starts with xapp-). Create one at "
            f"{APPS_URL} → Basic Information → App-Level Tokens with the scope connections:write.")


def _network_reason(exc: BaseException) -> str:
    """A few words for why a connection failed (never a URL with credentials, never a traceback)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, urllib.error.URLError) and not isinstance(cause, urllib.error.HTTPError):
            cause = cause.reason if isinstance(cause.reason, BaseException) else None
            continue
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, socket.gaierror):
            return "the host name does not resolve"
        if isinstance(cause, TimeoutError):
            return "timed out"
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror.lower()
        cause = cause.__cause__ or cause.__context__
    return type(exc).__name__


def _header(headers: Mapping[str, Any], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return str(value[0] if isinstance(value, list | tuple) else value)
    return None
