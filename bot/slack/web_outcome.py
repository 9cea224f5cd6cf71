"""Whether a Slack Web API call that failed may still have taken effect, and a retry for the calls
that are safe to repeat.

A call whose connection was refused, or whose host had no address, never reached Slack. One that
Slack answered with a 5xx, or with ``internal_error`` or ``fatal_error`` (a 200 whose error Slack's
docs say may follow part of the call done), or whose connection broke or timed out once the
request was out, may have been carried out all the same: repeating it may do it twice (a message
posted twice, see :class:`~bot.slack.app.ConnectionRetry`), and giving up on it may leave it done
(a 👀 that nobody takes off, see :mod:`bot.slack.working`).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Final
from urllib.error import URLError

from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry import HttpRequest, HttpResponse, RetryHandler, RetryState

__all__ = ["MAYBE_DONE_ERRORS", "ServerErrorRetry", "may_have_taken_effect", "never_sent"]

# Errors every Web API method may answer with HTTP 200, of which Slack's docs say "It's possible
# some aspect of the operation succeeded before the error was raised".
MAYBE_DONE_ERRORS: Final = frozenset({"internal_error", "fatal_error"})
SERVER_ERROR_RETRIES: Final = 2
SERVER_ERROR_DELAY_S: Final = 0.5  # then twice that: Slack's 5xx are brief


def never_sent(error: BaseException | None) -> bool:
    """Whether ``error`` means the request never left: the connection was refused or had no address."""
    reason = error.reason if isinstance(error, URLError) else error
    return isinstance(reason, ConnectionRefusedError | socket.gaierror)


def may_have_taken_effect(error: BaseException) -> bool:
    """Whether Slack may have carried out a call that failed with ``error``: it answered with a 5xx,
    or with an error its docs say may come after part of the call was done
    (:data:`MAYBE_DONE_ERRORS`), or the connection failed after the request was sent (reset, closed
    unanswered, timed out)."""
    if isinstance(error, SlackApiError):
        return (int(getattr(error.response, "status_code", 200)) >= 500
                or error.response.get("error") in MAYBE_DONE_ERRORS)
    return isinstance(error, OSError) and not never_sent(error)  # URLError and timeouts are OSErrors


class ServerErrorRetry(RetryHandler):
    """Retries a call Slack answered with a 5xx, after ``SERVER_ERROR_DELAY_S`` and then twice that
    (through ``sleep``), for calls that are safe to repeat: taking a reaction or a status off."""

    def __init__(self, *, max_retry_count: int = SERVER_ERROR_RETRIES, delay_s: float = SERVER_ERROR_DELAY_S,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        super().__init__(max_retry_count=max_retry_count)
        self.delay_s = delay_s
        self._sleep = sleep

    def _can_retry(self, *, state: RetryState, request: HttpRequest, response: HttpResponse | None = None,
                   error: Exception | None = None) -> bool:
        return response is not None and response.status_code >= 500

    def prepare_for_next_attempt(self, *, state: RetryState, request: HttpRequest,
                                 response: HttpResponse | None = None, error: Exception | None = None) -> None:
        state.next_attempt_requested = True
        self._sleep(self.delay_s * 2 ** state.current_attempt)
        state.increment_current_attempt()
