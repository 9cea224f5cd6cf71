"""One worker process of the failover test (tests/test_redis_failover.py): asks the gateway
questions until the file ``--stop`` exists, spread over ``--workspaces`` workspaces, through the
real openai SDK against the test's fake OpenAI.

Like a person asking again, it waits ``--pause`` seconds after a refusal before its next question,
so it keeps asking through the whole outage instead of using its questions up at once. Settings
come from the environment (PENNY_STORE_URL, OPENAI_BASE_URL, PENNY_SPOOL_DIR, …), as in
production. At the end it replays its spool until empty (bounded) and prints one JSON line: what
happened, with the wall-clock times of its answers and refusals.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from proxy_core.errors import PennyError
from proxy_core.gateway import Gateway
from proxy_core.log import configure_logging
from proxy_core.settings import load_settings


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    parser.add_argument("--stop", type=Path, required=True)
    parser.add_argument("--workspaces", type=int, default=6)
    parser.add_argument("--pause", type=float, default=0.05)
    args = parser.parse_args()

    settings = load_settings()
    configure_logging(settings.log_level, json=settings.log_json)
    gateway = Gateway.from_settings(settings)
    answered: list[float] = []
    refused: list[float] = []
    errors: dict[str, int] = {}
    i = 0
    while not args.stop.exists():
        workspace = f"W{i % args.workspaces}"
        try:
            gateway.chat(user_id=f"U{i % 4}", workspace_id=workspace, request_id=f"{args.name}-{i}",
                         messages=[{"role": "user", "content": f"question {i} from {args.name} in {workspace}"}])
            answered.append(time.time())
        except PennyError as exc:
            refused.append(time.time())
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            time.sleep(args.pause)  # asking again a moment later, as a person would
        i += 1
        print(json.dumps({"progress": i}), flush=True)
    deadline = time.monotonic() + 30
    while True:
        pending = gateway.replay_spool().pending
        if pending == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)  # the store is still coming back: poll it, bounded
    gateway.close()
    print(json.dumps({"answered": answered, "refused": refused, "errors": errors, "pending": pending}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
