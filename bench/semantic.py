"""Semantic-cache benchmarks: index lookups, the gateway's hit path, start-up load, memory, and the
naive Redis proxy for comparison. Medians of one run; prints rows, asserts nothing.

Run alone with ``.venv/bin/python -m bench.semantic`` or as part of ``make bench``.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from proxy_core.semantic.index import VectorIndex

REDIS_URL = os.environ.get("PENNY_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
Row = tuple[str, str, str, str]


def clustered(n: int, dims: int, seed: int = 0) -> np.ndarray:
    """Unit vectors in topical clumps, like real questions (uniform noise would flatter nothing)."""
    rng = np.random.default_rng(seed)
    topics = rng.standard_normal((max(1, n // 30), dims)).astype(np.float32)
    out = np.empty((n, dims), dtype=np.float32)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        chunk = topics[rng.integers(0, len(topics), stop - start)]
        chunk = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
        chunk += 0.35 / np.sqrt(dims) * rng.standard_normal((stop - start, dims)).astype(np.float32)
        out[start:stop] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return out


def near(vectors: np.ndarray, count: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Queries that are rephrasings of stored entries (cosine ≈ 0.9), and which entry each is."""
    rng = np.random.default_rng(seed)
    which = rng.choice(len(vectors), count, replace=False)
    q = vectors[which] + 0.45 / np.sqrt(vectors.shape[1]) * rng.standard_normal((count, vectors.shape[1]))
    q = q.astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True), which


def bench_lookup(n: int, dims: int = 384, queries: int = 300) -> Row:
    vectors = clustered(n, dims)
    index = VectorIndex(dims)
    started = time.perf_counter()
    rows = [(f"e{i}", "scope", "", "", f"q{i}", 1e18) for i in range(n)]
    index.upsert_many(rows, vectors)
    build = time.perf_counter() - started
    qs, which = near(vectors, queries)
    times, found = [], 0
    for q, w in zip(qs, which, strict=True):
        t = time.perf_counter()
        best = index.nearest("scope", q, 4, now=0.0)
        times.append(time.perf_counter() - t)
        found += best[0][0].entry_id == f"e{w}"
    del vectors, index
    return (f"index lookup, {n:,} entries × {dims} dims", f"{statistics.median(times) * 1e3:.3f} ms p50",
            f"recall@1 {found / queries:.3f}, build {build:.1f} s", "≤ 2 ms at 100k, ≤ 20 ms at 1M")


def _rss_child(n: int, dims: int, path: str) -> None:
    """In a fresh process: load ``n`` entries from the SQLite file with the real SemanticCache and
    the bundled embedder loaded, then report peak RSS and load time."""
    from proxy_core.semantic.decision import ThresholdPolicy
    from proxy_core.semantic.embedders import WordLlamaEmbedder
    from proxy_core.semantic.layer import SemanticCache
    from proxy_core.stores.sqlite import SqliteStore

    class Loader:
        """Stands in for the embedder: loading never embeds, it only needs the vectors' size."""

        def __init__(self, dims: int) -> None:
            self.name = f"bench:{dims}"
            self.dims = dims

        def embed(self, texts: Any) -> Any:
            raise AssertionError("loading must not embed")

    WordLlamaEmbedder(256).embed(["warm up the bundled model"])
    embedder = Loader(dims)
    store = SqliteStore(path)
    cache = SemanticCache(store, embedder, ttl_s=86400, max_entries=0, policy=ThresholdPolicy(0.8, None))
    started = time.perf_counter()
    loaded = cache.load()
    elapsed = time.perf_counter() - started
    # /proc rather than getrusage: ru_maxrss survives exec and would report the parent's peak.
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    peak, now = (int(status[k].split()[0]) / 1024 for k in ("VmHWM", "VmRSS"))
    print(f"{loaded} {elapsed:.3f} {now:.0f} {peak:.0f}")


def bench_startup_and_rss(n: int = 100_000, dims: int = 384) -> list[Row]:
    from proxy_core.stores.base import SemanticEntry
    from proxy_core.stores.sqlite import SqliteStore

    vectors = clustered(n, dims)
    with tempfile.TemporaryDirectory() as d:
        path = str(Path(d) / "cache.db")
        store = SqliteStore(path)
        now = time.time()
        for i in range(n):
            store.semantic_put(SemanticEntry(
                entry_id=f"e{i}", scope="scope", context="docs:v1", question=f"How do I configure feature {i}?",
                vector=vectors[i].astype("<f4").tobytes(), answer='{"content": "' + "x" * 400 + '"}',
                created_at=now, expires_at=now + 86400,
            ), max_entries=0)
        store.close()
        out = subprocess.run([sys.executable, "-m", "bench.semantic", "--rss-child", str(n), str(dims), path],
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(out.stderr)
    fields = out.stdout.split()
    loaded, seconds, rss, peak = int(fields[0]), float(fields[1]), float(fields[2]), float(fields[3])
    return [
        (f"start-up load, {loaded:,} entries (SQLite)", f"{seconds:.2f} s", "", "≤ 5 s"),
        (f"process RSS, {loaded:,} entries × {dims} + WordLlama", f"{rss:.0f} MB", f"peak during load {peak:.0f} MB",
         "≤ 300 MB"),
    ]


def bench_hit_path(make_store: Callable[[], Any], label: str, n: int = 2000) -> Row:
    """A semantic hit through the whole gateway: claim, local embed, lookup, guard, fetch, settle."""
    from bench.__main__ import ZeroLatencyUpstream
    from proxy_core.gateway import Gateway
    from proxy_core.settings import PennySettings

    store = make_store()
    settings = PennySettings(requests_per_minute=0, tokens_per_minute=0, embedder="local:wordllama")
    gw = Gateway(settings, store=store, upstream=ZeroLatencyUpstream())
    try:
        base = "Where can I find the production logs for the {} service?"
        names = ["billing", "orders", "search", "payments", "inventory", "auth", "email", "reports"]
        for i, name in enumerate(names):
            gw.chat(user_id="U1", workspace_id="W1", request_id=f"seed{i}",
                    messages=[{"role": "user", "content": base.format(name)}])
        asked = "Where are the production logs of the {} service?"
        times, statuses = [], set()
        for i in range(n):
            t = time.perf_counter()
            r = gw.chat(user_id="U1", workspace_id="W1", request_id=f"hit{i}",
                        messages=[{"role": "user", "content": asked.format(names[i % len(names)])}])
            times.append(time.perf_counter() - t)
            statuses.add(r.cache_status)
        # The in-process part of that path: local embed + index lookup + the hit decision (guard + calibration).
        from proxy_core.cache import CacheScope
        from proxy_core.semantic.decision import Candidate, decide
        from proxy_core.semantic.layer import SemanticCache

        cache = gw.cache
        assert isinstance(cache, SemanticCache)
        scope = CacheScope.for_chat(model=settings.chat_model, messages=[{"role": "user", "content": "x"}],
                                    params={"max_tokens": settings.max_output_tokens, "temperature": None},
                                    context="", tenant="w:W1")
        sid = cache.scope_id(scope)
        local = []
        for i in range(n):
            question = asked.format(names[i % len(names)])
            t = time.perf_counter()
            vector = cache.embedder.embed([question])[0]
            found = cache.index.nearest(sid, vector, cache.top_k, time.time())
            decision = decide(question, [Candidate(e.question, s, e) for e, s in found], policy=cache.policy)
            local.append(time.perf_counter() - t)
            assert decision.hit
        return ("gateway semantic-hit path", f"{statistics.median(times) * 1e3:.3f} ms p50",
                f"{label}; served as {'/'.join(sorted(statuses))}; embed+lookup+decision "
                f"{statistics.median(local) * 1e3:.3f} ms", "≤ 1 ms")
    finally:
        namespace = getattr(store, "namespace", None)
        gw.close()  # stop the sync thread before its log disappears
        if namespace is not None:
            from proxy_core.stores.redis import RedisStore

            cleanup = RedisStore.from_url(REDIS_URL, namespace=namespace)
            cleanup.delete_namespace()
            cleanup.close()


def bench_naive(sizes: tuple[int, ...] = (1_000, 10_000), dims: int = 384) -> list[Row]:
    """The common naive proxy: every entry a Redis hash; a lookup is KEYS cache:*, then HGETALL and
    a cosine per entry. Against Penny's lookup (embed + in-process index + guard + one fetch)."""
    import redis

    from proxy_core.cache import CacheScope
    from proxy_core.semantic.decision import hit_policy
    from proxy_core.semantic.embedders import WordLlamaEmbedder
    from proxy_core.semantic.layer import SemanticCache
    from proxy_core.stores.redis import RedisStore

    client = redis.Redis.from_url(REDIS_URL)
    rows: list[Row] = []
    embedder = WordLlamaEmbedder(256)
    for n in sizes:
        prefix = f"naive-{uuid.uuid4().hex[:8]}"
        vectors = clustered(n, dims)
        pipe = client.pipeline(transaction=False)
        for i in range(n):
            pipe.hset(f"{prefix}:cache:{i}", mapping={"q": f"question {i}", "v": vectors[i].tobytes(), "a": "x" * 200})
        pipe.execute()
        q = vectors[n // 2]
        naive_times = []
        for _ in range(3):
            t = time.perf_counter()
            best_sim = -1.0
            for key in client.keys(f"{prefix}:cache:*"):
                h = client.hgetall(key)
                v = np.frombuffer(h[b"v"], dtype=np.float32)
                sim = float(v @ q / (np.linalg.norm(v) * np.linalg.norm(q)))
                best_sim = max(best_sim, sim)
            naive_times.append(time.perf_counter() - t)
        for start in range(0, n, 1000):
            client.delete(*[f"{prefix}:cache:{i}" for i in range(start, min(n, start + 1000))])

        store = RedisStore.from_url(REDIS_URL, namespace=f"penny-bench-{uuid.uuid4().hex[:8]}")
        cache = SemanticCache(store, embedder, ttl_s=86400, max_entries=0, policy=hit_policy(embedder.name))
        scope = CacheScope("m", "p", "c", "w:W1")
        texts = [f"How do I configure the {i} integration for team {i % 37}?" for i in range(n)]
        from proxy_core.cache import CachedAnswer

        for i, text in enumerate(texts):
            cache.put(scope, text, CachedAnswer(f"e{i}", "x" * 200, "m", 1, 0, 1, 1, 0.0))
        penny_times = []
        for i in range(300):
            t = time.perf_counter()
            cache.lookup(scope, f"How can I configure the {i} integration for team {i % 37}?")
            penny_times.append(time.perf_counter() - t)
        store.delete_namespace()
        store.close()
        naive, penny = statistics.median(naive_times), statistics.median(penny_times)
        rows.append((f"naive Redis proxy vs Penny lookup, {n:,} entries",
                     f"{naive * 1e3:.1f} ms vs {penny * 1e3:.3f} ms", f"{naive / penny:,.0f}× faster",
                     "≥ 1000× at 10k"))
    return rows


def run(make_sqlite: Callable[[], Any], make_redis: Callable[[], Any] | None) -> list[Row]:
    rows = [bench_lookup(100_000), bench_lookup(1_000_000)]
    rows += bench_startup_and_rss(dims=256)  # the default embedder's size
    rows += bench_startup_and_rss(dims=384)
    rows.append(bench_hit_path(make_sqlite, "sqlite"))
    if make_redis is not None:
        rows.append(bench_hit_path(make_redis, "redis"))
        rows += bench_naive()
    return rows


def print_table(rows: list[Row]) -> None:
    head = ("measure", "result", "notes", "target")
    widths = [max(len(r[i]) for r in [*rows, head]) for i in range(4)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--rss-child":
        _rss_child(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    else:
        from bench.__main__ import _stores
        from proxy_core.log import configure_logging

        configure_logging("WARNING")
        with tempfile.TemporaryDirectory() as tmp:
            stores = dict(_stores(Path(tmp)))
            print_table(run(stores["sqlite"], stores.get("redis")))
