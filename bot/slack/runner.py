"""Start the Slack bot: Socket Mode by default (no public URL needed), or HTTP with ``--http``."""

from __future__ import annotations

from typing import TYPE_CHECKING, TextIO

from bot.answer_types import Answerer
from proxy_core.settings import PennySettings
from proxy_core.stores.base import Store

if TYPE_CHECKING:
    from bot.slack.app import SlackSettings

__all__ = ["run_slack", "slack_settings"]


def slack_settings(settings: PennySettings) -> SlackSettings:
    from bot.slack.app import SlackSettings

    def secret(value: object) -> str:
        return "" if value is None else str(value.get_secret_value())  # type: ignore[attr-defined]

    return SlackSettings(
        bot_token=secret(settings.slack_bot_token),
        signing_secret=secret(settings.slack_signing_secret),
        app_token=secret(settings.slack_app_token) or None,
        api_url=settings.slack_api_url,
        admin_user_ids=frozenset(settings.admin_user_ids),
    )


def run_slack(answerer: Answerer, store: Store, settings: PennySettings, *, http: bool, port: int, out: TextIO) -> int:
    """Serve Slack until interrupted. Tokens are never printed."""
    from bot.slack.app import build_app, run_http, run_socket_mode

    config = slack_settings(settings)
    app = build_app(answerer=answerer, store=store, settings=config)
    if http:
        print(f"Penny is listening for Slack events on http://0.0.0.0:{port}/slack/events", file=out, flush=True)
        run_http(app, port)
    else:
        print("Penny is connected to Slack (Socket Mode). Ctrl-C stops it.", file=out, flush=True)
        run_socket_mode(app, config.app_token or "")
    return 0

