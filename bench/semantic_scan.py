"""How long a replica's start-up load of the semantic cache takes, on each store.

Run from the repo root: ``.venv/bin/python -m bench.semantic_scan [entries] [dims]`` (default 100000
entries of 384-dim float32 vectors, the target being well under 5 s). It fills a fresh SQLite file
and a fresh Redis namespace (at ``PENNY_BENCH_REDIS_URL``, default redis://127.0.0.1:6379/0;
skipped with a note when it does not answer), then times what a replica does at start-up: take the
log head, then ``semantic_scan`` everything. The fill is timed too. Not a test; asserts nothing.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from proxy_core.stores.base import SemanticEntry, Store
from proxy_core.stores.sqlite import SqliteStore

REDIS_URL = os.environ.get("PENNY_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def _entries(n: int, dims: int, now: float) -> list[SemanticEntry]:
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((n, dims), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [
        SemanticEntry(
            entry_id=uuid.UUID(int=i).hex,
            scope="T01:public",
            context=f"docs:v1:{i % 50}",
            question=f"How do I configure feature number {i} of the product?",
            vector=vectors[i].astype("<f4").tobytes(),
            answer='{"text": "' + "An answer of about two hundred characters. " * 5 + '"}',
            created_at=now,
            expires_at=now + 86400,
        )
        for i in range(n)
    ]


def _fill(store: Store, entries: list[SemanticEntry], threads: int) -> float:
    started = time.perf_counter()
    if threads == 1:
        for e in entries:
            store.semantic_put(e, max_entries=0)
    else:
        with ThreadPoolExecutor(threads) as pool:
            for _ in pool.map(lambda e: store.semantic_put(e, max_entries=0), entries, chunksize=256):
                pass
    return time.perf_counter() - started


def _load(store: Store) -> tuple[float, int]:
    started = time.perf_counter()
    store.semantic_changes(None)
    loaded = sum(1 for _ in store.semantic_scan(batch=1000))
    return time.perf_counter() - started, loaded


def _redis() -> tuple[Callable[[], Store], Callable[[Store], None]] | None:
    try:
        import redis

        redis.Redis.from_url(REDIS_URL, socket_timeout=0.5).ping()
    except Exception as exc:
        print(f"(redis skipped: {type(exc).__name__} at {REDIS_URL.split('@')[-1]})", file=sys.stderr)
        return None
    from proxy_core.stores.redis import RedisStore

    def make() -> Store:
        return RedisStore.from_url(REDIS_URL, namespace=f"penny-bench-{uuid.uuid4().hex[:8]}", timeout_s=10)

    def cleanup(store: Store) -> None:
        assert isinstance(store, RedisStore)
        store.delete_namespace()

    return make, cleanup


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    dims = int(sys.argv[2]) if len(sys.argv) > 2 else 384
    with tempfile.TemporaryDirectory() as tmp:
        backends: list[tuple[str, Callable[[], Store], Callable[[Store], None], int]] = [
            ("sqlite", lambda: SqliteStore(Path(tmp) / "bench.db", timeout_s=30), lambda _: None, 1)
        ]
        redis_backend = _redis()
        if redis_backend is not None:
            backends.append(("redis", *redis_backend, 16))
        print(f"semantic cache start-up load: {n} entries, {dims}-dim float32 vectors")
        print("| store  | fill (puts/s) | head + scan | loaded |")
        print("|--------|---------------|-------------|--------|")
        for name, make, cleanup, threads in backends:
            store = make()
            try:
                entries = _entries(n, dims, store.now())
                fill_s = _fill(store, entries, threads)
                del entries
                load_s, loaded = _load(store)
                print(f"| {name:6} | {n / fill_s:13,.0f} | {load_s:9.2f} s | {loaded:6} |")
            finally:
                cleanup(store)
                store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
