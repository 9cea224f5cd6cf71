"""``penny proxy`` benchmark: what the proxy adds over calling the fake OpenAI directly.

``penny proxy`` (the documented command, gunicorn and all) on Redis, with 1 and 2 workers, in front
of the fake OpenAI (answers at once). Latency: the same ``openai`` SDK client, sequential calls,
straight to the fake and through the proxy; the overhead is the difference per percentile, for a
miss (a new question each time) and a hit (the same question). Throughput: cache hits per second
from 1, 8 and 32 client threads on keep-alive connections (``http.client``: lighter than the SDK,
so the client is less often the bottleneck).

The store is Redis DB ``PENNY_BENCH_PROXY_REDIS_URL`` (default redis://127.0.0.1:6379/14); Penny's
keys there (namespace ``penny``) are deleted before and after. LiteLLM's proxy is not run here.
``.venv/bin/python -m bench.proxy``. Prints a table; asserts nothing.
"""

from __future__ import annotations

import http.client
import json
import os
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import openai

from bot.proxy.keys import KeyRing
from proxy_core.stores.redis import RedisStore
from tests.fake_openai import FakeOpenAI
from tests.proxy_harness import ProxyProcess, proxy_env

REDIS_URL = os.environ.get("PENNY_BENCH_PROXY_REDIS_URL", "redis://127.0.0.1:6379/14")
CALLS = 400
HIT_SECONDS = 3.0


def _percentiles(samples: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(samples, n=100, method="inclusive")
    return q[49] * 1000, q[94] * 1000, q[98] * 1000


def _ms3(values: tuple[float, ...]) -> str:
    return " / ".join(f"{v:.2f}" for v in values)


def _timed(call: Callable[[int], object], n: int) -> list[float]:
    for i in range(20):  # warm-up: connections, first-call imports
        call(-1 - i)
    samples = []
    for i in range(n):
        started = time.perf_counter()
        call(i)
        samples.append(time.perf_counter() - started)
    return samples


def _latencies(base_url: str, api_key: str, tag: str) -> tuple[list[float], list[float]]:
    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=30)

    def miss(i: int) -> object:
        return client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"question {tag} {i} {uuid.uuid4().hex}"}])

    def hit(_i: int) -> object:
        return client.chat.completions.create(model="gpt-4o-mini",
                                              messages=[{"role": "user", "content": "How do I deploy?"}])

    return _timed(miss, CALLS), _timed(hit, CALLS)


def _hits_per_second(port: int, key: str, clients: int) -> float:
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "How do I deploy?"}]})
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    counts = [0] * clients
    stop = time.perf_counter() + HIT_SECONDS

    def run(slot: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while time.perf_counter() < stop:
            connection.request("POST", "/v1/chat/completions", body=body, headers=headers)
            reply = connection.getresponse()
            reply.read()
            counts[slot] += reply.status == 200
        connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - started)


def _clear_redis() -> None:
    store = RedisStore.from_url(REDIS_URL, namespace="penny", timeout_s=10)
    try:
        store.delete_namespace()
    finally:
        store.close()


def main() -> None:
    rows: list[tuple[str, str, str]] = []
    with FakeOpenAI(answer="Run `make deploy`.") as fake, tempfile.TemporaryDirectory() as tmp:
        direct_miss, _ = _latencies(fake.base_url, "sk-bench", "direct")
        base = _percentiles(direct_miss)
        rows.append(("SDK → fake OpenAI (no proxy)", "p50/p95/p99 ms", _ms3(base)))
        for workers in (1, 2):
            _clear_redis()
            env = proxy_env(Path(tmp), fake.base_url, store_url=REDIS_URL)
            env["PENNY_LOG_LEVEL"] = "WARNING"
            store = RedisStore.from_url(REDIS_URL, namespace="penny", timeout_s=10)
            try:
                key, _ = KeyRing(store).create(user_id="UBENCH", workspace_id="TBENCH")
            finally:
                store.close()
            server = ProxyProcess(env, Path(tmp), workers=workers)
            try:
                miss, hit = _latencies(server.url, key, f"w{workers}")
                miss_p = _percentiles(miss)
                hit_p = _percentiles(hit)
                over = tuple(m - b for m, b in zip(miss_p, base, strict=True))
                rows.append((f"proxy miss overhead, {workers} worker(s)", "p50/p95/p99 ms",
                             _ms3(over)))
                rows.append((f"proxy hit, {workers} worker(s)", "p50/p95/p99 ms", _ms3(hit_p)))
                port = int(server.url.split(":")[2].split("/")[0])
                for clients in (1, 8, 32):
                    rows.append((f"proxy hits/s, {workers} worker(s), {clients} clients", "calls/s",
                                 f"{_hits_per_second(port, key, clients):,.0f}"))
            finally:
                server.stop()
                _clear_redis()
    width = max(len(r[0]) for r in rows)
    print(f"{'measure'.ljust(width)}  {'unit':15}  value")
    for name, unit, value in rows:
        print(f"{name.ljust(width)}  {unit:15}  {value}")
    print("targets (issue 15): miss overhead p50 ≤ 2 ms, hit p50 ≤ 1.5 ms, ≥ 1,000 hits/s with 2 workers")


if __name__ == "__main__":
    main()
