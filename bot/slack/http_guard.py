"""Bad HTTP input is refused before Bolt sees it: a 4xx and one log line, never a 500 or a traceback.

Bolt assumes well-formed input. ``BoltRequest`` parses the body as it is built (``json.loads``, then
``.get`` on what came out), before any signature is checked; the signature check runs ``int()`` on
``X-Slack-Request-Timestamp`` and ``hmac.compare_digest`` on ``X-Slack-Signature``. Malformed JSON,
a body that is not a JSON object, a non-numeric timestamp or a non-ASCII signature each raise in
there: a server in front of Bolt would answer 500 and log a traceback.

:func:`parse_request` looks at the same headers and bytes first and returns the request Bolt takes
(its body parsed once, by Bolt's own parser), or says what is wrong, as a :class:`Rejection` (status
and a short reason). It touches no server and no network: :class:`~bot.slack.server.PennyWSGI`
(``penny run --http``) puts it in front of ``App.dispatch``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, NamedTuple
from urllib.parse import parse_qs

from slack_bolt import BoltRequest
from slack_bolt.request.payload_utils import (
    to_action,
    to_command,
    to_event,
    to_message,
    to_options,
    to_shortcut,
    to_step,
    to_view,
)
from slack_sdk.signature import SignatureVerifier

__all__ = ["MAX_BODY_BYTES", "Rejection", "check_request", "content_length", "parse_request"]

MAX_BODY_BYTES: Final = 1 << 20  # Slack's event and interaction payloads are a few kB; 1 MiB is plenty
_SSL_CHECK_MAX_CHARS: Final = 1024  # "ssl_check=1&token=…"
_TIMESTAMP_DIGITS: Final = 15  # seconds since 1970 have 10 digits; int() of thousands would raise

class Rejection(NamedTuple):
    """Why a request is refused: the HTTP status to answer and a short reason (safe to show)."""

    status: int
    message: str


def check_request(headers: Mapping[str, str], body: bytes) -> Rejection | None:
    """None when Bolt can take this request (it still verifies the signature itself), else why not
    (see :func:`parse_request`)."""
    parsed = parse_request(headers, body)
    return parsed if isinstance(parsed, Rejection) else None


def parse_request(headers: Mapping[str, str], body: bytes, query: str = "", *,
                  verifier: SignatureVerifier | None = None) -> BoltRequest | Rejection:
    """The request as Bolt takes it (hand it to ``App.dispatch``: it verifies the signature), or why not.

    ``headers`` maps header names (any case) to values; ``body`` is the raw request body. A
    timestamp that is not a number, or a signature with non-ASCII characters, is 401: the request
    cannot be verified. A body that is not UTF-8, malformed JSON (in a JSON body or in a form's
    ``payload``), or JSON that is not an object is 400. With ``verifier`` (the signing secret's), the
    signature and timestamp are checked before the body is parsed, so nothing unsigned costs more than
    an HMAC (parsing 1 MiB of form fields takes up to half a second of CPU): 401 unless they verify,
    or the body is Slack's unsigned ``ssl_check``, which Bolt answers. The body is parsed once, by Bolt's own
    parser, so the guard and Bolt can never disagree about what is malformed. An ``event`` or a
    ``view`` that is not an object is 400 too (Bolt's listeners and middleware read each as one), as
    is a payload Bolt's own payload readers raise on (a ``view_submission`` whose view has no
    ``type``, a ``block_actions`` with no actions).
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
    if verifier is not None and not _ssl_check(text) and not verifier.is_valid(text, timestamp, signature):
        return Rejection(401, "the request's signature or timestamp does not verify")
    try:
        request = BoltRequest(body=text, query=query, headers=dict(lowered))
    except (ValueError, RecursionError):  # json.JSONDecodeError is a ValueError
        return Rejection(400, "the body is not valid JSON")
    except (AttributeError, TypeError, KeyError):  # JSON, but not the shape of any Slack payload
        return Rejection(400, "the body is not a Slack payload")
    if not isinstance(request.body, dict):
        return Rejection(400, "the body is not a Slack payload")
    for name in ("event", "view"):  # Bolt reads each as an object wherever it appears
        if name in request.body and not isinstance(request.body[name], dict):
            return Rejection(400, f"the body's {name} is not an object")
    try:
        _read_as_bolt_does(request.body)
    except (AttributeError, TypeError, KeyError, IndexError):
        return Rejection(400, "the body is not a Slack payload")
    return request


def _read_as_bolt_does(body: dict[str, Any]) -> None:
    """Read ``body`` with Bolt's own payload readers, as Bolt does for every middleware and listener
    it runs: they index into what they expect (a view's ``type``, an edited step's ``workflow_step``,
    the first of the ``actions``) and raise out of ``App.dispatch`` when it is not there."""
    for read in (to_options, to_shortcut, to_action, to_view, to_command, to_event, to_message, to_step):
        read(body)


def _ssl_check(text: str) -> bool:
    """Slack's check of a slash command URL's certificate: a short unsigned form with ``ssl_check=1``."""
    return len(text) <= _SSL_CHECK_MAX_CHARS and parse_qs(text).get("ssl_check") == ["1"]


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
