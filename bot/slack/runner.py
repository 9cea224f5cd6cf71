"""Start the Slack bot: Socket Mode by default (no public URL needed), or HTTP with ``--http``."""

from __future__ import annotations

from concurrent.futures import Executor, ThreadPoolExecutor
from typing import TYPE_CHECKING, TextIO

from bot.answer_types import Answerer
from proxy_core.settings import PennySettings
from proxy_core.stores.base import Store

if TYPE_CHECKING:
    from slack_bolt import App
    from slack_sdk import WebClient

    from bot.slack.app import SlackSettings
    from proxy_core.gateway import Gateway

LISTENER_THREADS = 256

__all__ = ["penny_app", "run_slack", "slack_settings"]


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


def penny_app(
    answerer: Answerer,
    store: Store,
    gateway: Gateway | None,
    config: SlackSettings,
    *,
    client: WebClient | None = None,
    listener_executor: Executor | None = None,
    settings: PennySettings | None = None,
) -> App:
    """The Bolt app wired to the gateway: a 👎 evicts the cached answer it was given on, at once,
    for every replica. Listeners run on a wide pool: each waits on an LLM call, not on a CPU.
    ``settings`` gives ``/cost`` and the App Home the budgets, rate limits and admins."""
    from bot.slack.app import build_app

    def on_feedback(user_id: str, entry_id: str, up: bool) -> None:
        if not up and gateway is not None:
            gateway.invalidate_cache_entry(entry_id)

    return build_app(
        answerer=answerer,
        store=store,
        settings=config,
        client=client,
        on_feedback=on_feedback,
        cost_settings=settings,
        listener_executor=listener_executor or ThreadPoolExecutor(max_workers=LISTENER_THREADS,
                                                                  thread_name_prefix="penny-slack"),
    )


def run_slack(
    answerer: Answerer, store: Store, gateway: Gateway | None, settings: PennySettings, *, http: bool, port: int,
    out: TextIO,
) -> int:
    """Serve Slack until interrupted. Tokens are never printed."""
    from bot.slack.app import run_http, run_socket_mode

    config = slack_settings(settings)
    app = penny_app(answerer, store, gateway, config, settings=settings)
    if http:
        print(f"Penny is listening for Slack events on http://0.0.0.0:{port}/slack/events", file=out, flush=True)
        run_http(app, port)
    else:
        print("Penny is connected to Slack (Socket Mode). Ctrl-C stops it.", file=out, flush=True)
        run_socket_mode(app, config.app_token or "")
    return 0

