"""``make bench``: Penny's performance targets, measured and printed as a table.

Numbers are medians of one run on whatever machine runs it; this is not a test and asserts nothing.
Redis rows need a Redis at ``PENNY_BENCH_REDIS_URL`` (default redis://127.0.0.1:6379/0); they are
skipped with a note when it does not answer.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy_core.gateway import Gateway
from proxy_core.limiter import Bucket
from proxy_core.log import configure_logging
from proxy_core.settings import PennySettings
from proxy_core.stores import store_from_url
from proxy_core.stores.base import BucketSpec, Store
from proxy_core.upstream import ChatResponse, EmbedResponse

REDIS_URL = os.environ.get("PENNY_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


@dataclass
class Row:
    name: str
    store: str
    value: str
    target: str


class ZeroLatencyUpstream:
    """An upstream that answers instantly, so timings are the gateway's own overhead."""

    def chat(self, *, model: str, messages: Sequence[Any], max_tokens: int,
             temperature: float | None = None, extra: dict[str, Any] | None = None) -> ChatResponse:
        return ChatResponse(content="ok", model=model, prompt_tokens=20, cached_prompt_tokens=0,
                            completion_tokens=2, finish_reason="stop")

    def embed(self, *, model: str, inputs: list[str], dimensions: int | None = None) -> EmbedResponse:
        return EmbedResponse(vectors=[[0.0] * 8 for _ in inputs], model=model, prompt_tokens=len(inputs))


def _stores(tmp: Path) -> list[tuple[str, Callable[[], Store]]]:
    out: list[tuple[str, Callable[[], Store]]] = [
        ("sqlite", lambda: store_from_url(f"sqlite:///{tmp / f'bench-{uuid.uuid4().hex[:6]}.db'}"))
    ]
    try:
        import redis

        redis.Redis.from_url(REDIS_URL, socket_timeout=0.5).ping()
    except Exception as exc:
        print(f"(redis rows skipped: {type(exc).__name__} at {REDIS_URL.split('@')[-1]})", file=sys.stderr)
        return out

    def make_redis() -> Store:
        from proxy_core.stores.redis import RedisStore

        return RedisStore.from_url(REDIS_URL, namespace=f"penny-bench-{uuid.uuid4().hex[:8]}")

    out.append(("redis", make_redis))
    return out


def _cleanup(store: Store) -> None:
    delete = getattr(store, "delete_namespace", None)
    if delete is not None:
        delete()
    store.close()


def bench_limiter(make: Callable[[], Store], seconds: float = 1.5, threads: int = 1) -> float:
    """Limiter decisions per second from one client (one store instance) on ``threads`` threads."""
    store = make()
    try:
        spec = [BucketSpec("user:U1:requests", Bucket(rate=1e9, burst=1e9), 1)]
        counts = [0] * threads
        start = time.perf_counter()
        end = start + seconds

        def work(i: int) -> None:
            n = 0
            while time.perf_counter() < end:
                store.take_tokens("W1", spec)
                n += 1
            counts[i] = n

        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(work, range(threads)))
        return sum(counts) / (time.perf_counter() - start)
    finally:
        _cleanup(store)


def bench_ping(n: int = 3000) -> float:
    """p50 of a bare redis-py PING: the floor one round trip sets on this machine."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        times: list[float] = []
        for _ in range(n):
            t = time.perf_counter()
            client.ping()
            times.append(time.perf_counter() - t)
        return statistics.median(times)
    finally:
        client.close()


def bench_gateway(make: Callable[[], Store], n: int = 2000, *, semantic: bool) -> tuple[list[float], list[float]]:
    """Latencies (s) of gateway misses and exact-cache hits against a zero-latency upstream, with
    the exact cache alone (``semantic=False``) or the default semantic cache (WordLlama)."""
    store = make()
    # The limiter and both budgets are on (generous), so every step of the pipeline is measured.
    settings = PennySettings(requests_per_minute=60_000, request_burst=10_000, tokens_per_minute=0,
                             user_daily_budget_usd=100, workspace_monthly_budget_usd=10_000, semantic_cache=semantic)
    gw = Gateway(settings, store=store, upstream=ZeroLatencyUpstream())
    try:
        misses: list[float] = []
        for i in range(n):
            t = time.perf_counter()
            gw.chat(user_id="U1", workspace_id="W1", request_id=f"m{i}",
                    messages=[{"role": "user", "content": f"question number {i}"}])
            misses.append(time.perf_counter() - t)
        hits: list[float] = []
        for i in range(n):
            t = time.perf_counter()
            r = gw.chat(user_id="U1", workspace_id="W1", request_id=f"h{i}",
                        messages=[{"role": "user", "content": f"question number {i % 100}"}])
            hits.append(time.perf_counter() - t)
            assert r.cache_status == "exact"
        return misses, hits
    finally:
        if gw.cache is not None:
            gw.cache.close()  # its sync thread must stop before the store goes
        _cleanup(store)


def _ms(xs: list[float]) -> str:
    return f"{statistics.median(xs) * 1e3:.3f} / {_pct(xs, 0.95) * 1e3:.3f} ms"


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def _cluster_stores(local: Any) -> list[tuple[str, Callable[[], Store]]]:
    """The local cluster, as is and with every admission and settle waiting for a replica."""
    from proxy_core.stores.redis import RedisStore
    from proxy_core.stores.redis_connect import RedisOptions

    def make(wait_replicas: int) -> Callable[[], Store]:
        return lambda: RedisStore.from_url(local.url(), namespace=f"penny-bench-{uuid.uuid4().hex[:8]}",
                                           options=RedisOptions(wait_replicas=wait_replicas))

    return [("cluster", make(0)), ("cluster, WAIT 1", make(1))]


def main() -> int:
    from bench import cluster

    configure_logging("WARNING")  # one log line per request would be measured too
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as d, cluster.local_cluster() as local:
        stores = _stores(Path(d))
        if local is not None and any(name == "redis" for name, _ in stores):
            stores += _cluster_stores(local)
        for name, make in stores:
            if name == "redis":
                rows.append(Row("PING p50 (one round trip, the floor)", name, f"{bench_ping() * 1e3:.3f} ms", ""))
            if name == "cluster":
                floors = " / ".join(f"{f * 1e3:.3f}" for f in cluster.ping_primaries(local))
                rows.append(Row("PING p50 on each primary (the floor)", name, f"{floors} ms", ""))
            rate = bench_limiter(make)
            rows.append(Row("limiter decisions/s, 1 client, 1 thread", name, f"{rate:,.0f}",
                            "≥ 5,000 on Redis" if name == "redis" else ""))
            rate = bench_limiter(make, threads=4)
            rows.append(Row("limiter decisions/s, 1 client, 4 threads", name, f"{rate:,.0f}",
                            "≥ 5,000 on Redis" if name == "redis" else ""))
            for semantic, label in ((False, "exact cache"), (True, "semantic cache")):
                misses, hits = bench_gateway(make, semantic=semantic)
                rows.append(Row(f"miss overhead p50 / p95, {label}", name, _ms(misses),
                                "p50 ≤ 2 ms on Redis" if name == "redis" else ""))
                rows.append(Row(f"exact hit p50 / p95, {label}", name, _ms(hits), "p50 ≤ 0.5 ms"))
        if local is not None and any(name == "redis" for name, _ in stores):
            for name, url in (("redis", REDIS_URL), ("cluster", local.url())):
                rate = cluster.decisions_per_second(url)
                rows.append(Row(f"limiter decisions/s, 4 processes, {cluster.WORKSPACES:,} workspaces", name,
                                f"{rate:,.0f}", ""))
    widths = [max(len(getattr(r, f)) for r in rows) for f in ("name", "store", "value")]
    head = ("measure", "store", "result", "target")
    print(f"| {head[0]:{widths[0]}} | {head[1]:{widths[1]}} | {head[2]:{widths[2]}} | {head[3]} |")
    print(f"|{'-' * (widths[0] + 2)}|{'-' * (widths[1] + 2)}|{'-' * (widths[2] + 2)}|---|")
    for r in rows:
        print(f"| {r.name:{widths[0]}} | {r.store:{widths[1]}} | {r.value:{widths[2]}} | {r.target} |")
    print()
    from bench import semantic

    with tempfile.TemporaryDirectory() as d:
        by_name = dict(_stores(Path(d)))
        semantic.print_table(semantic.run(by_name["sqlite"], by_name.get("redis")))
    print()
    from bench import bot, retrieval

    retrieval.main([])
    print()
    bot.main()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
