"""HTTP load benchmark: ``penny run --http`` (the documented command, gunicorn and all) in its own
process, the fake Slack and the fake OpenAI (1 s per call) in theirs, and signed Slack events sent
over real TCP from an asyncio client. Each run starts a fresh server on a fresh SQLite store.

- burst: 500 events at once from 200 users: connection errors, ack p50/p99/max, each answered
  exactly once, ledger LLM calls == calls the fake OpenAI served;
- idle: 50 connections opened and left silent, then signed events one at a time: their acks;
- 200 questions at once: when the last answer is in Slack (the figure ``bench.bot`` gives without
  the server);
- cache hits (CPU-bound): answers per second with 1 and 2 workers;
- an unsigned 100 MB body: the status and the workers' RSS before and after.

The fake Slack is the bench's lean one (bench/lean_slack.py: one asyncio loop, counts only): the
tests' ``FakeSlack`` costs ~4 ms of CPU a call, and on a 2-core machine that CPU is taken from Penny's
workers (``--full-fake-slack`` runs on it anyway).

``.venv/bin/python -m bench.http``. Prints a table; asserts nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import multiprocessing
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from pathlib import Path

from proxy_core.stores import store_from_url
from tests.penny_http import PennyHTTP, penny_env, question_event, signed_headers
from tests.slack_harness import TEAM

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = [json.loads(line)["question"] for line in
             (ROOT / "examples" / "questions.jsonl").read_text().splitlines() if line.strip()]
FINAL = ("chat.postMessage", "chat.update")
_serial = itertools.count()


# -- the fakes, each in a process of its own ----------------------------------------------------


def _serve_openai(conn: Connection, delay_s: float) -> None:
    from tests.fake_openai import FakeOpenAI, Fault

    with FakeOpenAI() as fake:
        fake.fail_all(Fault.ok(delay_s=delay_s))
        conn.send(fake.base_url)
        while (command := conn.recv())[0] != "stop":
            if command[0] == "count":
                conn.send(fake.count("chat"))
            elif command[0] == "reset":
                fake.reset()
                fake.fail_all(Fault.ok(delay_s=delay_s))
                conn.send(None)


def _serve_slack(conn: Connection) -> None:
    """Commands: ("wait", count, timeout) → the time.monotonic() (system-wide) at which Slack held
    ``count`` final answers, or an error string; ("answers",) → {thread_ts: messages}; ("reset",);
    Socket Mode: ("deliver", envelopes) → once each is sent over the connection, the times they
    were; ("acks", envelope_ids, timeout) → {envelope_id: time.monotonic() of its first ack}, those
    acked within the timeout."""
    from collections import Counter

    from tests.fake_slack import FakeSlack
    from tests.slack_harness import BOT_ID, BOT_USER

    with FakeSlack(team_id=TEAM, bot_user_id=BOT_USER, bot_id=BOT_ID) as slack:
        conn.send(slack.base_url)
        while (command := conn.recv())[0] != "stop":
            if command[0] == "deliver":
                sent = []
                for envelope in command[1]:
                    slack.deliver(envelope)
                    sent.append(time.monotonic())
                conn.send(sent)
            elif command[0] == "acks":
                ids = set(command[1])
                with contextlib.suppress(AssertionError):
                    slack.wait_for("socket_mode.ack", len(ids), timeout=command[2],
                                   where=lambda c, ids=ids: c.params["envelope_id"] in ids)
                first: dict[str, float] = {}
                for call in slack.calls("socket_mode.ack"):
                    first.setdefault(str(call.params["envelope_id"]), call.at)
                conn.send({k: v for k, v in first.items() if k in ids})
            elif command[0] == "wait":
                try:
                    slack.wait_for(FINAL, command[1], timeout=command[2])
                    conn.send(time.monotonic())
                except AssertionError as exc:
                    conn.send(str(exc)[:300])
            elif command[0] == "answers":
                conn.send(dict(Counter(str(m.get("thread_ts")) for m in slack.messages())))
            elif command[0] == "reset":
                slack.reset()
                conn.send(None)


def _serve_lean_slack(conn: Connection) -> None:
    """The same commands as :func:`_serve_slack`, on :class:`~bench.lean_slack.LeanSlack`."""
    from bench.lean_slack import LeanSlack
    from tests.fake_slack import DEFAULT_SCOPES
    from tests.slack_harness import BOT_ID, BOT_USER

    # A0PENNY: the app the harness's events are addressed to (tests/slack_harness.py), as FakeSlack's.
    slack = LeanSlack(team_id=TEAM, app_id="A0PENNY", bot_user_id=BOT_USER, bot_id=BOT_ID, scopes=DEFAULT_SCOPES,
                      final=FINAL)
    conn.send(slack.base_url)
    while (command := conn.recv())[0] != "stop":
        if command[0] == "wait":
            try:
                conn.send(slack.wait(command[1], command[2]))
            except AssertionError as exc:
                conn.send(str(exc)[:300])
        elif command[0] == "answers":
            conn.send(slack.answers())
        elif command[0] == "reset":
            slack.reset()
            conn.send(None)


class Fakes:
    """The fake OpenAI and the fake Slack, each in a process of its own; ``lean_slack``: the
    benchmark's own lean fake Slack (:mod:`bench.lean_slack`) instead of the tests' full one."""

    def __init__(self, delay_s: float = 1.0, *, lean_slack: bool = False) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._openai, openai_end = ctx.Pipe()
        self._slack, slack_end = ctx.Pipe()
        self._procs = [ctx.Process(target=_serve_openai, args=(openai_end, delay_s), daemon=True),
                       ctx.Process(target=_serve_lean_slack if lean_slack else _serve_slack, args=(slack_end,),
                                   daemon=True)]
        for proc in self._procs:
            proc.start()
        self.openai_url: str = self._openai.recv()
        self.slack_url: str = self._slack.recv()
        self.slack_pid = int(self._procs[1].pid or 0)

    def reset(self) -> None:
        for pipe in (self._openai, self._slack):
            pipe.send(("reset",))
            pipe.recv()

    def answered_at(self, count: int, timeout: float) -> float:
        self._slack.send(("wait", count, timeout))
        reply = self._slack.recv()
        if isinstance(reply, str):
            raise AssertionError(reply)
        return float(reply)

    def deliver(self, envelopes: Sequence[dict[str, object]]) -> list[float]:
        """Socket Mode (the full fake Slack): send each envelope; when each was sent (time.monotonic())."""
        self._slack.send(("deliver", list(envelopes)))
        return list(self._slack.recv())

    def acks(self, envelope_ids: Sequence[str], timeout: float) -> dict[str, float]:
        """Socket Mode: when each envelope was first acked, for those acked within ``timeout``."""
        self._slack.send(("acks", list(envelope_ids), timeout))
        return dict(self._slack.recv())

    def answers(self) -> dict[str, int]:
        self._slack.send(("answers",))
        return dict(self._slack.recv())

    def llm_calls(self) -> int:
        self._openai.send(("count",))
        return int(self._openai.recv())

    def close(self) -> None:
        for pipe in (self._openai, self._slack):
            pipe.send(("stop",))
        for proc in self._procs:
            proc.join(timeout=10)


# -- the client ----------------------------------------------------------------------------------


def signed_request(body: str) -> bytes:
    headers = {**signed_headers(body), "Host": "penny", "Content-Length": str(len(body.encode()))}
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return f"POST /slack/events HTTP/1.1\r\n{head}Connection: close\r\n\r\n".encode() + body.encode()


async def _one(port: int, request: bytes, start: asyncio.Event, timeout_s: float) -> tuple[bool, float]:
    await start.wait()
    began = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout_s)
        writer.write(request)
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), timeout_s)
        writer.close()
        return status.startswith(b"HTTP/1.1 200"), time.monotonic() - began
    except (TimeoutError, OSError):
        return False, time.monotonic() - began


def send_at_once(port: int, bodies: Sequence[str], timeout_s: float = 30.0) -> tuple[int, list[float], float]:
    """Every body on its own connection, all released at once: (failures, ack seconds of the
    successes, time.monotonic() at release)."""
    requests = [signed_request(body) for body in bodies]  # signed before the clock starts

    async def run() -> tuple[list[tuple[bool, float]], float]:
        start = asyncio.Event()
        tasks = [asyncio.create_task(_one(port, request, start, timeout_s)) for request in requests]
        await asyncio.sleep(0.05)  # every task is waiting on the start
        released = time.monotonic()
        start.set()
        return list(await asyncio.gather(*tasks)), released

    results, released = asyncio.run(run())
    return sum(not ok for ok, _ in results), [s for ok, s in results if ok], released


def questions(n: int, users: int, prefix: str, texts: Sequence[str] = QUESTIONS) -> list[str]:
    run = next(_serial)
    return [question_event(texts[i % len(texts)], f"Ev{prefix}{run}x{i:04d}", user=f"U{i % users}",
                           ts=f"17{run:02d}{i:06d}.000100") for i in range(n)]


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


# -- the runs ------------------------------------------------------------------------------------


STORE: dict[str, str] = {}  # "url": a Redis every run shares (flushed before each), else a fresh SQLite file


def _server(fakes: Fakes, tmp: Path, workers: int, **settings: str) -> PennyHTTP:
    fakes.reset()
    directory = Path(tempfile.mkdtemp(dir=tmp))
    if "url" in STORE:
        import redis

        redis.Redis.from_url(STORE["url"]).flushdb()  # a private redis-server of this run, not a shared one
    env = penny_env(directory, openai_url=fakes.openai_url, slack_url=fakes.slack_url, store_url=STORE.get("url"),
                    PENNY_LOG_LEVEL="ERROR", **settings)
    return PennyHTTP(env, directory, workers=workers).start()


def _warm(penny: PennyHTTP, fakes: Fakes) -> int:
    """One question per worker, so auth.test and first-use costs are not measured; answers so far."""
    failures, _, _ = send_at_once(penny.port, questions(2 * penny.workers, 2 * penny.workers, "Warm"))
    fakes.answered_at(2 * penny.workers - failures, timeout=60)
    return 2 * penny.workers - failures


def paid_calls(penny: PennyHTTP) -> int:
    store = store_from_url(penny.env["PENNY_STORE_URL"])
    try:
        totals = store.usage(TEAM, "2000-01-01", "2100-01-01", None).totals
    finally:
        store.close()
    return totals.requests - totals.cache_hits


def burst(fakes: Fakes, tmp: Path, workers: int, n: int = 500, users: int = 200) -> list[str]:
    penny = _server(fakes, tmp, workers, PENNY_CACHE_ENABLED="false")
    try:
        warm = _warm(penny, fakes)
        assert penny.proc is not None
        pids = _workers_of(penny.proc.pid)
        cpu_before = _cpu_s(pids)
        failures, acks, released = send_at_once(penny.port, questions(n, users, "Burst"))
        ack_cpu = _cpu_s(pids) - cpu_before  # the workers' CPU until the last ack (answers included)
        last = fakes.answered_at(warm + n - failures, timeout=120) - released
        time.sleep(1.0)
        counts = fakes.answers()
        once = sum(1 for c in counts.values() if c == 1) - warm
        twice = sum(1 for c in counts.values() if c > 1)
        llm = fakes.llm_calls()
        ledger = paid_calls(penny)
    finally:
        penny.stop()
    return [f"{n} events at once from {users} users, {workers} worker{'s' * (workers > 1)}",
            f"{failures} connection errors; ack p50 {ms(pct(acks, .5))}, p99 {ms(pct(acks, .99))}, "
            f"max {ms(max(acks))} (workers' CPU by then {ack_cpu:.2f} s); "
            f"{once}/{n} answered once, {twice} twice; ledger {ledger} LLM calls, "
            f"fake OpenAI served {llm}; last answer after {last:.2f} s",
            "0 errors, p99 ≤ 500 ms, each once, ledger == calls"]


def idle(fakes: Fakes, tmp: Path, held: int = 50, probes: int = 20) -> list[str]:
    penny = _server(fakes, tmp, 1)
    try:
        _warm(penny, fakes)
        sockets = [socket.create_connection(("127.0.0.1", penny.port)) for _ in range(held)]
        time.sleep(0.2)
        acks = []
        for body in questions(probes, probes, "Idle"):
            _failures, seconds, _ = send_at_once(penny.port, [body])
            acks += seconds
            time.sleep(0.05)
        for sock in sockets:
            sock.close()
    finally:
        penny.stop()
    return [f"{held} idle connections held open, then {probes} signed events one by one",
            f"{len(acks)}/{probes} acked; p50 {ms(pct(acks, .5))}, max {ms(max(acks))}", "each ≤ 100 ms"]


def two_hundred(fakes: Fakes, tmp: Path, workers: int) -> list[str]:
    penny = _server(fakes, tmp, workers, PENNY_CACHE_ENABLED="false")
    try:
        warm = _warm(penny, fakes)
        failures, acks, released = send_at_once(penny.port, questions(200, 50, "Two"))
        last = fakes.answered_at(warm + 200 - failures, timeout=120) - released
    finally:
        penny.stop()
    return [f"200 questions at once (LLM 1 s each), {workers} worker{'s' * (workers > 1)}",
            f"all answered after {last:.2f} s ({failures} errors; acks max {ms(max(acks))})", "≤ 3 s"]


def cache_hits(fakes: Fakes, tmp: Path, workers: int, n: int = 600, distinct: int = 20) -> tuple[list[str], float]:
    penny = _server(fakes, tmp, workers)
    try:
        warm = _warm(penny, fakes)
        texts = QUESTIONS[:distinct]
        fakes.answered_at(warm + distinct - send_at_once(penny.port, questions(distinct, distinct, "Fill", texts))[0],
                          timeout=60)
        llm_before = fakes.llm_calls()
        assert penny.proc is not None
        pids = _workers_of(penny.proc.pid)
        cpu_before, slack_before, client_before = _cpu_s(pids), _cpu_s([fakes.slack_pid]), time.process_time()
        failures, _, released = send_at_once(penny.port, questions(n, 200, "Hit", texts))
        wall = fakes.answered_at(warm + distinct + n - failures, timeout=120) - released
        cpu, slack_cpu = _cpu_s(pids) - cpu_before, _cpu_s([fakes.slack_pid]) - slack_before
        client_cpu = time.process_time() - client_before
        misses = fakes.llm_calls() - llm_before
    finally:
        penny.stop()
    rate = (n - failures) / wall
    return [f"{n} cache hits at once, {workers} worker{'s' * (workers > 1)}",
            f"{rate:.0f} answers/s ({wall:.2f} s; CPU: workers {cpu:.2f} s, fake Slack {slack_cpu:.2f} s, "
            f"client {client_cpu:.2f} s; "
            f"{failures} errors; {misses} LLM calls)", ""], rate


def _cpu_s(pids: Sequence[int]) -> float:
    """User + system CPU seconds the processes have used."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / ticks


def _rss_kib(pids: Sequence[int]) -> int:
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def _workers_of(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(child) for child in children]


def big_body(fakes: Fakes, tmp: Path, size: int = 100 * 1024 * 1024) -> list[str]:
    penny = _server(fakes, tmp, 1)
    try:
        _warm(penny, fakes)
        assert penny.proc is not None
        pids = [penny.proc.pid, *_workers_of(penny.proc.pid)]
        before = _rss_kib(pids)
        sock = socket.create_connection(("127.0.0.1", penny.port), timeout=30)
        sock.sendall(b"POST /slack/events HTTP/1.1\r\nHost: penny\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % size)
        sent = [0]

        def pour() -> None:
            chunk = b"{" * 65536
            try:
                while sent[0] < size:
                    sock.sendall(chunk)
                    sent[0] += len(chunk)
            except OSError:
                pass  # the server stopped reading: refused

        pourer = threading.Thread(target=pour, daemon=True)
        pourer.start()
        status = sock.recv(64).split(b"\r\n")[0].decode()
        pourer.join(timeout=30)
        sock.close()
        time.sleep(0.5)
        after = _rss_kib(pids)
    finally:
        penny.stop()
    return ["unsigned 100 MB body", f"{status!r} after {sent[0] / 1e6:.1f} MB sent; RSS of arbiter + worker "
            f"{before / 1024:.0f} → {after / 1024:.0f} MB", "413, RSS ± 20 MB"]


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    from proxy_core.log import configure_logging

    runs: dict[str, Callable[[Fakes, Path], list[str]]] = {
        "burst": lambda f, t: burst(f, t, 1),
        "burst2": lambda f, t: burst(f, t, 2),
        "idle": idle,
        "200": lambda f, t: two_hundred(f, t, 1),
        "200x2": lambda f, t: two_hundred(f, t, 2),
        "body": big_body,
        "hits": lambda f, t: hits_ratio(f, t),
    }
    parser = argparse.ArgumentParser(prog="python -m bench.http", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", choices=[[], *runs], default=[], help="only these (default: all)")
    parser.add_argument("--redis", action="store_true", help="on a private redis-server instead of SQLite")
    parser.add_argument("--full-fake-slack", action="store_true",
                        help="the tests' FakeSlack (~4 ms of CPU a call) instead of the bench's lean one")
    args = parser.parse_args(argv)
    configure_logging("ERROR")
    fakes = Fakes(delay_s=1.0, lean_slack=not args.full_fake_slack)
    redis = None
    if args.redis:
        from tests.redis_server import RedisServer

        redis = RedisServer(Path(tempfile.mkdtemp()) / "redis")
        redis.start()
        STORE["url"] = redis.url
    print(f"penny run --http · {os.cpu_count()} cores · fake OpenAI 1 s per call · "
          f"{'FakeSlack' if args.full_fake_slack else 'lean fake Slack'} · "
          f"{'Redis' if redis else 'SQLite'}")
    print()
    print("| run | measured | target |")
    print("|---|---|---|")
    try:
        with tempfile.TemporaryDirectory() as d:
            for name in args.runs or runs:
                row = runs[name](fakes, Path(d))
                print(f"| {' | '.join(row)} |", flush=True)
    finally:
        fakes.close()
        if redis is not None:
            redis.close()


def hits_ratio(fakes: Fakes, tmp: Path) -> list[str]:
    one, rate_one = cache_hits(fakes, tmp, 1)
    two, rate_two = cache_hits(fakes, tmp, 2)
    return ["600 cache hits at once (CPU-bound), 1 worker → 2 workers",
            f"{one[1]} → {two[1]}: **{rate_two / rate_one:.2f}×**", "≥ 1.6×"]


if __name__ == "__main__":
    main()
