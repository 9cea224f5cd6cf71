"""One worker process of the fault suite (tests/test_faults.py): asks the gateway ``--count``
questions, one after another, through the real openai SDK against the test's fake OpenAI.

Settings come from the environment (PENNY_STORE_URL, OPENAI_BASE_URL, PENNY_SPOOL_DIR, …), as
in production. Questions refused because the store is down are counted, not retried: the fault
suite checks that every *paid* call reaches the ledger. With ``--drain``, the worker replays its
spool until it is empty (bounded) before it exits. Prints one JSON line: what happened.
"""

from __future__ import annotations

import argparse
import sys
import time

from tests.worker_gateway import ask, drain_spool, open_gateway, report


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--workspace", default="T01")
    parser.add_argument("--drain", action="store_true")
    args = parser.parse_args()

    gateway = open_gateway()
    answered = refused = 0
    errors: dict[str, int] = {}
    for i in range(args.count):
        if ask(gateway, f"{args.name}-{i}", f"question {i} from {args.name}", user=f"U{i % 4}",
               workspace=args.workspace, errors=errors):
            answered += 1
        else:
            refused += 1
            time.sleep(0.05)  # the next person asks a moment later: traffic goes on across an outage
        report(progress=i + 1)
    pending = drain_spool(gateway) if args.drain else 0
    gateway.close()
    report(answered=answered, refused=refused, errors=errors, pending=pending)
    return 0


if __name__ == "__main__":
    sys.exit(main())
