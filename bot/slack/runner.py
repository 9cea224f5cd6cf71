"""Start the Slack bot: Socket Mode by default (no public URL needed), or HTTP with ``--http``."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, TextIO

from pydantic import SecretStr

from bot.answer_types import Answerer
from bot.settings import BotSettings, load_settings
from bot.slack.pacing import AcksFirst, DrainingExecutor, WorkTurns
from bot.slack.render import user_mrkdwn
from proxy_core import Accounts, BudgetAlert, Gateway, PennySettings, Store, alert_text, get_logger

if TYPE_CHECKING:
    from slack_bolt import App
    from slack_sdk import WebClient

    from bot.slack.app import SlackSettings
    from bot.slack.startup import SlackInstallation
    from bot.slack.working import WorkingIndicator

LISTENER_THREADS = 256
STOP_TIMEOUT_S = 30.0  # for the answers being written when Socket Mode stops (an HTTP worker's graceful timeout)

__all__ = ["AlertRelay", "AnswersCut", "penny_app", "run_slack", "slack_settings"]


def slack_settings(settings: BotSettings) -> SlackSettings:
    """How the app talks to Slack, from the bot's settings."""
    from bot.slack.app import SlackSettings

    def secret(value: SecretStr | None) -> str:
        return "" if value is None else value.get_secret_value()

    return SlackSettings(
        bot_token=secret(settings.slack_bot_token),
        signing_secret=secret(settings.slack_signing_secret),
        app_token=secret(settings.slack_app_token) or None,
        api_url=settings.slack_api_url,
        admin_user_ids=frozenset(settings.admin_user_ids),
        thread_replies=settings.thread_replies,
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
    working: WorkingIndicator | None = None,
    installation: SlackInstallation | None = None,
) -> App:
    """The Bolt app wired to the gateway: a 👎 evicts the cached answer it was given on, at once,
    for every replica. Listeners run on a wide pool: each waits on an LLM call, not on a CPU.
    ``/cost`` and the App Home read the gateway's accounts (without a gateway: ``settings``' budgets
    and rate limits, by default the environment's); ``working``
    shows the status (or 👀) on slow questions (:class:`~bot.slack.working.WorkingIndicator`'s defaults);
    ``installation`` is what the start-up check found (requests from elsewhere are dropped)."""
    from bot.slack.agent import doc_pages_of
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
        accounts=gateway.accounts if gateway is not None else Accounts(store, settings or load_settings()),
        working=working,
        installation=installation,
        doc_pages=doc_pages_of(answerer),  # suggested prompts: the docs' pages
        listener_executor=listener_executor or ThreadPoolExecutor(max_workers=LISTENER_THREADS,
                                                                  thread_name_prefix="penny-slack"),
    )


class AlertRelay:
    """Budget alerts to Slack: a DM to each admin (``PENNY_ADMIN_USER_IDS``), or one post in
    ``PENNY_ALERT_CHANNEL``. Posts go out from a worker thread, never the asker's request thread;
    until a Slack client is attached (terminal chat), alerts are only logged."""

    def __init__(self, settings: BotSettings) -> None:
        self._settings = settings
        self._client: WebClient | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="penny-alerts")

    def attach(self, client: WebClient) -> None:
        self._client = client

    def __call__(self, alert: BudgetAlert) -> None:
        self._pool.submit(self._send, alert)

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def _send(self, alert: BudgetAlert) -> None:
        from slack_sdk.errors import SlackApiError

        log = get_logger()
        if self._client is None:
            log.info("budget_alert_not_sent", reason="no Slack client", threshold=alert.threshold, scope=alert.scope)
            return
        channel = self._settings.alert_channel
        targets = [channel] if channel else list(self._settings.admin_user_ids)
        if not targets:
            log.warning("budget_alert_not_sent", reason="no PENNY_ADMIN_USER_IDS or PENNY_ALERT_CHANNEL")
        text = alert_text(alert, who=user_mrkdwn(alert.user_id) if alert.user_id is not None else None)
        for target in targets:
            try:
                self._client.chat_postMessage(channel=target, text=text)
            except SlackApiError as exc:
                log.warning("budget_alert_failed", target=target, error=str(exc.response.get("error")))


def run_slack(
    answerer: Answerer, store: Store, gateway: Gateway | None, settings: BotSettings, *,
    out: TextIO, alerts: AlertRelay | None = None, installation: SlackInstallation | None = None,
    until: threading.Event | None = None, turns: WorkTurns | None = None, stop_timeout_s: float = STOP_TIMEOUT_S,
) -> int:
    """Serve Slack over Socket Mode until interrupted (or until ``until`` is set; over HTTP it is
    :func:`bot.slack.server.serve`). Slack is checked first: the bot token with ``auth.test`` and its
    scopes (unless ``installation`` says the caller did), and the connection is opened; only then
    does Penny say it is connected, having recorded its workspace in the store (:mod:`bot.workspaces`). A failure raises
    :class:`~proxy_core.ConfigurationError` or :class:`~bot.slack.startup.SlackUnreachable`
    (see :mod:`bot.slack.startup`). Tokens are never printed.

    Paced as an HTTP worker is (:mod:`bot.slack.pacing`): events are acked before they are answered,
    and at most ``turns`` answers run at once — the gateway's, whose ``waiting`` lends a turn during
    each LLM call (without them, answers are not bounded). ``SIGTERM`` (from the main thread) or
    Ctrl-C stops it: the connection is closed, then the answers being written are finished, for up to
    ``stop_timeout_s`` or until a second Ctrl-C; then returns 0, or raises :class:`AnswersCut`."""
    from bot.slack.app import make_client
    from bot.slack.startup import check_slack, connect_socket_mode
    from bot.workspaces import record_served

    config = slack_settings(settings)
    if installation is None:
        installation = check_slack(config)
    acks_first = AcksFirst()
    listeners = DrainingExecutor(LISTENER_THREADS, acks_first=acks_first, turns=turns)
    where = f"as @{installation.bot_name or installation.bot_user_id} in {installation.team or installation.team_id}"
    stop = until or threading.Event()
    left = 0
    try:
        listeners.start_threads()
        client = make_client(config, waiting=turns.waiting if turns is not None else None)
        app = penny_app(answerer, store, gateway, config, settings=settings, installation=installation,
                        client=client, listener_executor=listeners)
        if alerts is not None:
            alerts.attach(app.client)
        handler = connect_socket_mode(app, config, acks_first=acks_first, later=listeners)
        record_served(store, installation)  # the CLI's commands default to this workspace
        with _stopped_by_sigterm(stop):
            try:
                print(f"Penny is connected to Slack {where} (Socket Mode). Ctrl-C stops it.", file=out, flush=True)
                stop.wait()
            except KeyboardInterrupt:
                pass  # Ctrl-C: a stop, as SIGTERM's
            finally:
                try:
                    handler.close()  # no more deliveries; the answers under way post through the Web API
                except KeyboardInterrupt:  # a second Ctrl-C while closing: cut them off
                    left = listeners.pending()
                else:
                    left = _finish_answers(listeners, stop_timeout_s, out)
    finally:
        listeners.shutdown(wait=False, cancel_futures=True)  # what has not started never will
    if left:
        raise AnswersCut(left)
    return 0


class AnswersCut(Exception):
    """Socket Mode stopped with ``left`` listeners unfinished (past the stop timeout, or a second
    Ctrl-C): those not started never will; those running end with the process, which the caller
    ends as soon as its gateway is closed (``penny run`` does), as an HTTP worker's end past its
    graceful timeout. A paid call they made and did not record is charged at its reserved worst case
    when its claim expires (the gateway's maintenance), never lost."""

    def __init__(self, left: int) -> None:
        super().__init__(f"stopped with {left} answer(s) unfinished")
        self.left = left


def _finish_answers(listeners: DrainingExecutor, timeout_s: float, out: TextIO) -> int:
    """Wait for the answers being written (and the events acked but not answered yet), at most
    ``timeout_s`` or until a second Ctrl-C; how many listeners are left."""
    pending = listeners.pending()
    if pending:
        print(f"Stopping: finishing the answers being written ({pending} listener(s); up to {timeout_s:g}s, "
              "Ctrl-C again cuts them off).", file=out, flush=True)
    try:
        left = listeners.drain(timeout_s)
    except KeyboardInterrupt:
        left = listeners.pending()
    if left:
        get_logger().warning("slack.socket_mode_stop_cut_answers", running=left, waited_s=timeout_s)
    return left


@contextmanager
def _stopped_by_sigterm(stop: threading.Event) -> Iterator[None]:
    """``SIGTERM`` (``docker stop``, systemd) sets ``stop`` while in the block, as Ctrl-C interrupts it;
    only the main thread can take a signal, so elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigterm(_signum: int, _frame: object) -> None:
        # The handler runs on the main thread between two bytecodes, perhaps while that thread holds
        # the event's lock (entering or leaving stop.wait()): set it from another thread.
        threading.Thread(target=stop.set, name="penny-sigterm", daemon=True).start()

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
