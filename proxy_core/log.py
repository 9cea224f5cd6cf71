"""Structured logging: one event per line, every gateway event carrying its request ID.

proxy_core logs through ``structlog.get_logger("penny")``; the application calls
:func:`configure_logging` once. A redaction processor runs last-but-one so that a token or key
that reaches an event by accident (an exception message, a URL) never reaches the output.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

__all__ = ["configure_logging", "get_logger", "redact"]

_SECRETS = re.compile(
    r"(sk-[A-Za-z0-9_\-]{8,}"  # OpenAI keys
    r"|xox[abposr]-[A-Za-z0-9\-]{8,}"  # Slack bot/user tokens
    r"|xapp-[A-Za-z0-9\-]{8,}"  # Slack app-level tokens
    r"|pk-[A-Za-z0-9_\-]{16,}"  # penny proxy keys
    # user:password@ in URLs, up to the host's @ (the last before the path: an unencoded @ in a
    # password still works, the host being what follows the last one)
    r"|(?<=://)[^/?#\s:@]*:[^/?#\s]+(?=@))"
)


def redact(text: str) -> str:
    """Replace anything shaped like a secret with ``[redacted]``."""
    return _SECRETS.sub("[redacted]", text)


def _redact_processor(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for k, v in event.items():
        if isinstance(v, str):
            event[k] = redact(v)
        elif isinstance(v, BaseException):
            event[k] = redact(f"{type(v).__name__}: {v}")
    return event


def configure_logging(level: str = "INFO", *, json: bool = False) -> None:
    """Route structlog to stderr as key=value lines (or JSON) at ``level``."""
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redact_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger() -> Any:
    return structlog.get_logger("penny")
