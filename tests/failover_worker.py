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
import sys
import time
from pathlib import Path

from tests.worker_gateway import ask, drain_spool, open_gateway, report


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    parser.add_argument("--stop", type=Path, required=True)
    parser.add_argument("--workspaces", type=int, default=6)
    parser.add_argument("--pause", type=float, default=0.05)
    args = parser.parse_args()

    gateway = open_gateway()
    answered: list[float] = []
    refused: list[float] = []
    errors: dict[str, int] = {}
    i = 0
    while not args.stop.exists():
        workspace = f"W{i % args.workspaces}"
        if ask(gateway, f"{args.name}-{i}", f"question {i} from {args.name} in {workspace}", user=f"U{i % 4}",
               workspace=workspace, errors=errors):
            answered.append(time.time())
        else:
            refused.append(time.time())
            time.sleep(args.pause)  # asking again a moment later, as a person would
        i += 1
        report(progress=i)
    pending = drain_spool(gateway)
    gateway.close()
    report(answered=answered, refused=refused, errors=errors, pending=pending)
    return 0


if __name__ == "__main__":
    sys.exit(main())
