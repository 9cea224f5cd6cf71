"""``make bench``'s Redis Cluster rows: a local cluster of 3 primaries + 3 replicas on loopback
(tests/redis_targets.py starts it), measured beside the single Redis in the same run.

- PING p50 on each primary: the floor, as for the single node.
- The limiter and the gateway rows of ``bench/__main__.py`` on the cluster, without and with
  ``PENNY_REDIS_WAIT_REPLICAS=1`` (every admission and settle waits for its replica).
- Limiter decisions/s from 4 processes spread over 1,000 workspaces, single node vs cluster: does
  it scale with primaries? (On a 2-core machine the 4 clients and the 3 primaries share 2 cores.)
"""

from __future__ import annotations

import multiprocessing
import shutil
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection

from proxy_core.limiter import Bucket
from proxy_core.stores.base import BucketSpec
from proxy_core.stores.redis import RedisStore
from proxy_core.stores.redis_connect import RedisOptions

WORKSPACES = 1000
SPEC = [BucketSpec("user:U1:requests", Bucket(rate=1e9, burst=1e9), 1)]


@contextmanager
def local_cluster() -> Iterator[object | None]:
    """A started ``LocalCluster``, or None (with a note) when redis-server or redis-cli is missing."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        print("(cluster rows skipped: redis-server and redis-cli are needed)", file=sys.stderr)
        yield None
        return
    from tests.redis_targets import LocalCluster

    with LocalCluster() as cluster:
        yield cluster


def ping_primaries(cluster: object, n: int = 2000) -> list[float]:
    """p50 of a bare PING on each primary (seconds), lowest port first."""
    import redis

    floors = []
    for port in cluster.primary_ports():  # type: ignore[attr-defined]
        client = redis.Redis(port=port)
        times = []
        for _ in range(n):
            t = time.perf_counter()
            client.ping()
            times.append(time.perf_counter() - t)
        client.close()
        floors.append(statistics.median(times))
    return floors


def _hammer(url: str, wait_replicas: int, namespace: str, offset: int, seconds: float, out: Connection) -> None:
    store = RedisStore.from_url(url, namespace=namespace, options=RedisOptions(wait_replicas=wait_replicas))
    n = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        store.take_tokens(f"W{(offset + n) % WORKSPACES}", SPEC)
        n += 1
    store.close()
    out.send(n)


def decisions_per_second(url: str, *, processes: int = 4, seconds: float = 2.0, wait_replicas: int = 0) -> float:
    """Limiter decisions per second from ``processes`` processes, each cycling over the workspaces."""
    namespace = f"penny-bench-{uuid.uuid4().hex[:8]}"
    ctx = multiprocessing.get_context("spawn")
    pipes = [ctx.Pipe(duplex=False) for _ in range(processes)]
    workers = [ctx.Process(target=_hammer, args=(url, wait_replicas, namespace, k * 997, seconds, pipes[k][1]))
               for k in range(processes)]
    for w in workers:
        w.start()
    for _, send in pipes:
        send.close()  # the child holds its end: a child that dies makes recv() raise instead of hang
    try:
        counts = [receive.recv() if receive.poll(seconds + 60) else 0 for receive, _ in pipes]
    finally:
        for w in workers:
            w.join(timeout=10)
            if w.is_alive():
                w.kill()
    cleanup = RedisStore.from_url(url, namespace=namespace)
    cleanup.delete_namespace()
    cleanup.close()
    return sum(counts) / seconds
