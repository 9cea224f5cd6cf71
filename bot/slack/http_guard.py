"""Bad HTTP input is refused before Bolt sees it: a 4xx and one log line, never a 500 or a traceback.

Bolt assumes well-formed input. ``BoltRequest`` parses the body as it is built (``json.loads``, then
``.get`` on what came out), before any signature is checked; the signature check runs ``int()`` on
``X-Slack-Request-Timestamp`` and ``hmac.compare_digest`` on ``X-Slack-Signature``. Malformed JSON,
a body that is not a JSON object, a non-numeric timestamp or a non-ASCII signature each raise in
there: Bolt's development server drops the connection or answers 500 and logs a traceback.

:func:`check_request` looks at the same headers and bytes first and says what is wrong, as a
:class:`Rejection` (status and a short reason). It touches no server and no network, so any adapter
can put it in front of Bolt: :class:`SlackHTTPServer` (``penny run --http``) does today; a WSGI
adapter would read the body, call it, and answer a rejection itself before handing the request
(body re-wrapped) to Bolt's ``SlackRequestHandler``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final, NamedTuple

from slack_bolt import App, BoltRequest

from proxy_core import get_logger

__all__ = ["MAX_BODY_BYTES", "Rejection", "SlackHTTPServer", "check_request", "content_length"]

MAX_BODY_BYTES: Final = 1 << 20  # Slack's event and interaction payloads are a few kB; 1 MiB is plenty
_TIMESTAMP_DIGITS: Final = 15  # seconds since 1970 have 10 digits; int() of thousands would raise

_log = get_logger()


class Rejection(NamedTuple):
    """Why a request is refused: the HTTP status to answer and a short reason (safe to show)."""

    status: int
    message: str


def check_request(headers: Mapping[str, str], body: bytes) -> Rejection | None:
    """None when Bolt can take this request (it still verifies the signature itself), else why not.

    ``headers`` maps header names (any case) to values; ``body`` is the raw request body. A
    timestamp that is not a number, or a signature with non-ASCII characters, is 401: the request
    cannot be verified. A body that is not UTF-8, malformed JSON (in a JSON body or in a form's
    ``payload``), or JSON that is not an object is 400.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    timestamp = lowered.get("x-slack-request-timestamp")
    if timestamp is not None and not (
        timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= _TIMESTAMP_DIGITS
    ):
        return Rejection(401, "X-Slack-Request-Timestamp is not a number of seconds")
    signature = lowered.get("x-slack-signature")
    if signature is not None and not signature.isascii():
        return Rejection(401, "X-Slack-Signature is not a valid signature")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return Rejection(400, "the body is not UTF-8 text")
    try:
        # Bolt's own parsing, so the guard and Bolt can never disagree about what is malformed.
        parsed = BoltRequest(body=text, headers=dict(lowered)).body
    except (ValueError, RecursionError):  # json.JSONDecodeError is a ValueError
        return Rejection(400, "the body is not valid JSON")
    except (AttributeError, TypeError, KeyError):  # JSON, but not the shape of any Slack payload
        return Rejection(400, "the body is not a Slack payload")
    if not isinstance(parsed, dict):
        return Rejection(400, "the body is not a Slack payload")
    return None


def content_length(value: str | None) -> int | Rejection:
    """The body's length from a ``Content-Length`` header (none: an empty body), or why it is refused."""
    if value is None or not value.strip():
        return 0
    value = value.strip()
    if not (value.isascii() and value.isdigit()):
        return Rejection(400, "Content-Length is not a number")
    value = value.lstrip("0") or "0"
    if len(value) > len(str(MAX_BODY_BYTES)) or int(value) > MAX_BODY_BYTES:
        return Rejection(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
    return int(value)


class SlackHTTPServer(ThreadingHTTPServer):
    """Serves a Bolt ``app`` at ``path`` (POST only), with :func:`check_request` in front of it.

    A stand-in for Bolt's development server (``App.start``), which answers bad input with a
    traceback: this one answers a :class:`Rejection` with its status and logs one line. Each
    request runs on its own daemon thread; Bolt acks at once and runs listeners on its executor.
    """

    daemon_threads = True

    def __init__(self, app: App, address: tuple[str, int], *, path: str = "/slack/events") -> None:
        self.app = app
        self.events_path = path
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-request is not worth a traceback: one line says what happened.
        error = sys.exc_info()[1]
        _log.warning("slack.http_connection_failed", error=f"{type(error).__name__}: {error}")


class _Handler(BaseHTTPRequestHandler):
    server: SlackHTTPServer
    timeout = 30.0  # a client that stops sending mid-body does not hold a thread for ever

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: http.server would write a line per request to stderr."""

    def do_GET(self) -> None:
        self._send(404, {}, "")

    def do_POST(self) -> None:
        path, _, query = self.path.partition("?")
        if path != self.server.events_path:
            self._send(404, {}, "")
            return
        length = content_length(self.headers.get("Content-Length"))
        if isinstance(length, Rejection):
            self._reject(length)
            return
        body = self.rfile.read(length)
        headers = {name.lower(): value for name, value in self.headers.items()}
        rejection = check_request(headers, body)
        if rejection is not None:
            self._reject(rejection)
            return
        response = self.server.app.dispatch(BoltRequest(body=body.decode("utf-8"), query=query, headers=dict(headers)))
        self._send(response.status, response.headers, response.body)

    def _reject(self, rejection: Rejection) -> None:
        _log.warning("slack.http_rejected", status=rejection.status, reason=rejection.message)
        self.close_connection = True  # what is left of a refused body is not read
        self._send(rejection.status, {"content-type": ["application/json"]}, json.dumps({"error": rejection.message}))

    def _send(self, status: int, headers: Mapping[str, Sequence[str]], body: str | dict[str, Any]) -> None:
        data = (body if isinstance(body, str) else json.dumps(body)).encode("utf-8")
        self.send_response(status)
        for name, values in headers.items():
            for value in values:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
