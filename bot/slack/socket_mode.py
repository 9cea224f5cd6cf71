"""Penny over Socket Mode, paced like an HTTP worker (:mod:`bot.slack.pacing`).

Bolt's handler runs each envelope's whole dispatch on one of the Socket Mode client's threads and
sends the ack when the dispatch returns. In a burst of questions that ack waits behind every answer
being written in the same process (one GIL), and Slack redelivers an envelope it has not seen acked
within 3 s. Here an Events API envelope is acked at once with the empty ack Bolt would send whatever
its listeners do, and Bolt's dispatch runs after the acks (``later``: the listener pool, which
holds it while envelopes are being acked). Anything else (``/cost``, buttons, forms, whose acks can
carry a body) goes to Bolt as before, and its listener runs at once on a turn of its own
(:meth:`~bot.slack.pacing.AcksFirst.awaiting_ack`)."""

from __future__ import annotations

import logging
from concurrent.futures import Executor
from typing import TYPE_CHECKING

from slack_bolt.adapter.socket_mode import SocketModeHandler
from slack_bolt.adapter.socket_mode.internals import build_headers
from slack_bolt.request import BoltRequest
from slack_sdk.socket_mode.response import SocketModeResponse

from bot.slack.pacing import AcksFirst, dispatch_acked

if TYPE_CHECKING:
    from slack_bolt import App
    from slack_sdk.socket_mode.builtin import SocketModeClient
    from slack_sdk.socket_mode.request import SocketModeRequest

__all__ = ["PennySocketModeHandler"]


class PennySocketModeHandler(SocketModeHandler):
    """Bolt's built-in Socket Mode handler with Penny's pacing: envelopes are counted while being
    acked (``acks_first``), and with ``later`` an event is acked before Bolt sees it."""

    def __init__(self, app: App, app_token: str, *, logger: logging.Logger | None = None,
                 acks_first: AcksFirst | None = None, later: Executor | None = None) -> None:
        super().__init__(app, app_token, web_client=app.client, logger=logger)
        self.acks_first = acks_first or AcksFirst()
        self._later = later

    def handle(self, client: SocketModeClient, req: SocketModeRequest) -> None:  # type: ignore[override]
        with self.acks_first.request():
            payload = req.payload
            if self._later is not None and req.type == "events_api" and payload.get("type") == "event_callback":
                client.send_socket_mode_response(SocketModeResponse(envelope_id=req.envelope_id))
                # Bolt's own request for an envelope: a redelivery's attempt and reason as the HTTP headers.
                self._later.submit(dispatch_acked, self.app, BoltRequest(mode="socket_mode", body=payload,
                                                                          headers=build_headers(req)))
                return
            with self.acks_first.awaiting_ack():
                super().handle(client, req)

