"""What the test suites' worker processes (tests/fault_worker.py, tests/failover_worker.py) share:
a gateway opened from the environment as in production, asking one question, replaying the spool
before exit, and one JSON line per report on stdout."""

from __future__ import annotations

import json
import time
from typing import Any

from proxy_core.errors import PennyError
from proxy_core.gateway import Gateway
from proxy_core.log import configure_logging
from proxy_core.settings import load_settings


def open_gateway() -> Gateway:
    """The gateway from PENNY_STORE_URL, OPENAI_BASE_URL, PENNY_SPOOL_DIR, …, logging as configured."""
    settings = load_settings()
    configure_logging(settings.log_level, json=settings.log_json)
    return Gateway.from_settings(settings)


def ask(gateway: Gateway, request_id: str, question: str, *, user: str, workspace: str,
        errors: dict[str, int]) -> bool:
    """Ask once: True when answered; a refusal is counted in ``errors`` by its error class."""
    try:
        gateway.chat(user_id=user, workspace_id=workspace, request_id=request_id,
                     messages=[{"role": "user", "content": question}])
    except PennyError as exc:
        errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
        return False
    return True


def drain_spool(gateway: Gateway, timeout_s: float = 30.0) -> int:
    """Replay the spool until it is empty or ``timeout_s`` passed; the writes still pending."""
    deadline = time.monotonic() + timeout_s
    while True:
        pending = gateway.replay_spool().pending
        if pending == 0 or time.monotonic() > deadline:
            return pending
        time.sleep(0.2)  # the store is still coming back: poll it, bounded


def report(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)
