"""One worker process of the fault suite (tests/test_faults.py): asks the gateway ``--count``
questions, one after another, through the real openai SDK against the test's fake OpenAI.

Settings come from the environment (PENNY_STORE_URL, OPENAI_BASE_URL, PENNY_SPOOL_DIR, …), as
in production. Questions refused because the store is down are counted, not retried: the fault
suite checks that every *paid* call reaches the ledger. With ``--drain``, the worker replays its
spool until it is empty (bounded) before it exits. Prints one JSON line: what happened.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from proxy_core.errors import PennyError
from proxy_core.gateway import Gateway
from proxy_core.log import configure_logging
from proxy_core.settings import load_settings


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--workspace", default="T01")
    parser.add_argument("--drain", action="store_true")
    args = parser.parse_args()

    settings = load_settings()
    configure_logging(settings.log_level, json=settings.log_json)
    gateway = Gateway.from_settings(settings)
    answered = refused = 0
    errors: dict[str, int] = {}
    for i in range(args.count):
        try:
            gateway.chat(user_id=f"U{i % 4}", workspace_id=args.workspace, request_id=f"{args.name}-{i}",
                         messages=[{"role": "user", "content": f"question {i} from {args.name}"}])
            answered += 1
        except PennyError as exc:
            refused += 1
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            time.sleep(0.05)  # the next person asks a moment later: traffic goes on across an outage
        print(json.dumps({"progress": i + 1}), flush=True)
    pending = 0
    if args.drain:
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
