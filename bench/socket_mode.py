"""Socket Mode load benchmark: ``penny run`` (the documented command; Socket Mode, Penny's default)
in its own process, the tests' fake Slack (which sends envelopes over the WebSocket as Slack does and
records the acks) and the fake OpenAI (1 s per call) in theirs. Each run starts a fresh Penny on a
fresh SQLite store.

- burst: 500 events at once from 200 users: each envelope's ack (from when the fake sent it to when
  the ack reached it, both clocked in its process): p50/p99/max, and how many took over 3 s (Slack
  sends those again); each question answered once; when the last answer was in Slack;
- cache hits: 600 events at once that the answer cache serves (CPU-bound), and a ``/cost`` sent
  right after them: its ack, the events' acks, answers per second.

``.venv/bin/python -m bench.socket_mode``. Prints a table; asserts nothing.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.http import QUESTIONS, Fakes, ms, pct, questions
from tests.penny_http import penny_env
from tests.slack_harness import TEAM

APP_TOKEN = "xapp-1-bench-not-a-real-app-token"
SLACK_REDELIVERS_AFTER_S = 3.0


class PennySocketMode:
    """``penny run`` in Socket Mode on the fakes; ``start`` returns once it says it is connected."""

    def __init__(self, fakes: Fakes, tmp: Path) -> None:
        fakes.reset()
        directory = Path(tempfile.mkdtemp(dir=tmp))
        self.env = penny_env(directory, openai_url=fakes.openai_url, slack_url=fakes.slack_url,
                             PENNY_LOG_LEVEL="ERROR", SLACK_APP_TOKEN=APP_TOKEN)
        self.proc = subprocess.Popen([sys.executable, "-m", "bot.cli", "run"], env=self.env, cwd=directory,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                                     text=True)
        lines: queue.Queue[str] = queue.Queue()
        assert self.proc.stdout is not None
        stdout = self.proc.stdout
        threading.Thread(target=lambda: [lines.put(line) for line in stdout], daemon=True).start()
        deadline = time.monotonic() + 120
        while True:
            try:
                if "connected to Slack" in lines.get(timeout=max(0.0, deadline - time.monotonic())):
                    return
            except queue.Empty:
                self.stop()
                raise RuntimeError("penny run did not connect within 120 s") from None

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


_serial = iter(range(1_000_000))


def envelopes(bodies: Sequence[str]) -> list[dict[str, Any]]:
    run = next(_serial)
    return [{"envelope_id": f"env-{run}-{i}", "type": "events_api", "accepts_response_payload": False,
             "payload": json.loads(body)} for i, body in enumerate(bodies)]


def cost_envelope(fakes: Fakes) -> dict[str, Any]:
    run = next(_serial)
    command = {"command": "/cost", "text": "", "team_id": TEAM, "user_id": "U1", "channel_id": "C1",
               "api_app_id": "A0PENNY", "trigger_id": f"trigger-{run}",
               "response_url": f"{fakes.slack_url}commands/{TEAM}/{run}/hook"}
    return {"envelope_id": f"env-cost-{run}", "type": "slash_commands", "accepts_response_payload": True,
            "payload": command}


def ack_seconds(fakes: Fakes, sent: dict[str, float], timeout: float = 60.0) -> list[float]:
    acked = fakes.acks(list(sent), timeout)
    return [acked[envelope_id] - at for envelope_id, at in sent.items() if envelope_id in acked]


def deliver(fakes: Fakes, batch: Sequence[dict[str, Any]]) -> dict[str, float]:
    return dict(zip((e["envelope_id"] for e in batch), fakes.deliver(batch), strict=True))


def warm(fakes: Fakes, count: int = 2) -> int:
    deliver(fakes, envelopes(questions(count, count, "Warm")))
    fakes.answered_at(count, timeout=60)
    return count


def burst(fakes: Fakes, tmp: Path, n: int = 500, users: int = 200) -> list[str]:
    penny = PennySocketMode(fakes, tmp)
    try:
        warmed = warm(fakes)
        sent = deliver(fakes, envelopes(questions(n, users, "SockBurst")))
        acks = ack_seconds(fakes, sent)
        last = fakes.answered_at(warmed + n, timeout=120) - min(sent.values())
        time.sleep(1.0)
        counts = fakes.answers()
        once = sum(1 for c in counts.values() if c == 1) - warmed
        twice = sum(1 for c in counts.values() if c > 1)
    finally:
        penny.stop()
    late = sum(1 for a in acks if a > SLACK_REDELIVERS_AFTER_S)
    return [f"{n} events at once from {users} users (LLM 1 s each)",
            f"{len(acks)}/{n} acked; ack p50 {ms(pct(acks, .5))}, p99 {ms(pct(acks, .99))}, max {ms(max(acks))}; "
            f"{late} over 3 s; {once}/{n} answered once, {twice} twice; last answer after {last:.2f} s",
            "every ack < 3 s, each once"]


def cache_hits(fakes: Fakes, tmp: Path, n: int = 600, distinct: int = 20) -> list[str]:
    penny = PennySocketMode(fakes, tmp)
    try:
        warmed = warm(fakes)
        texts = QUESTIONS[:distinct]
        deliver(fakes, envelopes(questions(distinct, distinct, "SockFill", texts)))
        fakes.answered_at(warmed + distinct, timeout=60)
        batch = envelopes(questions(n, 200, "SockHit", texts))
        cost = cost_envelope(fakes)
        sent = deliver(fakes, [*batch, cost])
        cost_sent = sent.pop(cost["envelope_id"])
        [cost_ack] = ack_seconds(fakes, {cost["envelope_id"]: cost_sent}) or [float("nan")]
        acks = ack_seconds(fakes, sent)
        wall = fakes.answered_at(warmed + distinct + n, timeout=120) - min(sent.values())
    finally:
        penny.stop()
    return [f"{n} cache hits at once, then /cost",
            f"/cost acked in {ms(cost_ack)}; events' ack p50 {ms(pct(acks, .5))}, p99 {ms(pct(acks, .99))}; "
            f"{n / wall:.0f} answers/s ({wall:.2f} s)", "/cost < 3 s"]


def main() -> None:
    from proxy_core.log import configure_logging

    configure_logging("ERROR")
    fakes = Fakes(delay_s=1.0)
    print(f"penny run (Socket Mode) · {os.cpu_count()} cores · fake OpenAI 1 s per call · FakeSlack · SQLite")
    print()
    print("| run | measured | target |")
    print("|---|---|---|")
    try:
        with tempfile.TemporaryDirectory() as d:
            for run in (burst, cache_hits):
                print(f"| {' | '.join(run(fakes, Path(d)))} |", flush=True)
    finally:
        fakes.close()


if __name__ == "__main__":
    main()
