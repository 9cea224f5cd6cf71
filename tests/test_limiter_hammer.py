"""Many processes and threads hammer one user's request bucket on real Redis, timed by the server.

The bucket is the bottleneck (far more attempts than tokens), so ``burst + rate × elapsed`` takes
should pass over the run: never more (the script is atomic across processes), and not noticeably
fewer (no lost refill, no skew between workers, since every decision is timed by the server's
TIME). No clock is injected.

Taking the last reading after the last attempt leaves a few milliseconds in which tokens refill
but nobody asks (more on a busy machine). For the lower bound those tokens are read back with a
zero-cost peek, so the check is ``allowed + left ≥ 99 %`` of what the run could have admitted.
"""

from __future__ import annotations

import multiprocessing
import queue
import time
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.synchronize import Barrier

import pytest

from proxy_core.limiter import Bucket
from proxy_core.stores.base import BucketSpec
from proxy_core.stores.redis import RedisStore

pytestmark = [pytest.mark.redis, pytest.mark.slow]

RATE = 200.0  # tokens per second
BURST = 200.0  # one second's worth; most of what passes still comes from refill
PROCESSES = 4
THREADS = 4
DURATION_S = 2.0
WS = "T01"
SPEC = BucketSpec("user:U1:requests", Bucket(rate=RATE, burst=BURST), 1.0)

# (first attempt, last attempt) in server time, allowed takes, attempts; one per thread.
Tally = tuple[float, float, int, int]


def hammer(url: str, namespace: str, start: Barrier, results: multiprocessing.Queue[object]) -> None:
    """One worker process: THREADS threads take from the shared bucket until the time is up."""
    try:
        store = RedisStore.from_url(url, namespace=namespace)
        store.ping()  # connect before the start line, not after it
        start.wait(timeout=30)
        deadline = time.monotonic() + DURATION_S

        def run(_: int) -> Tally:
            first = store.now()
            allowed = attempts = 0
            while time.monotonic() < deadline:
                allowed += store.take_tokens(WS, [SPEC]).allowed
                attempts += 1
            return first, store.now(), allowed, attempts

        with ThreadPoolExecutor(max_workers=THREADS) as pool:
            results.put(list(pool.map(run, range(THREADS))))
        store.close()
    except BaseException as exc:
        results.put(f"{type(exc).__name__}: {exc}")
        raise


def test_the_bucket_admits_exactly_its_rate_across_processes(redis_url: str, redis_namespace: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(PROCESSES)
    results: multiprocessing.Queue[object] = ctx.Queue()
    workers = [
        ctx.Process(target=hammer, args=(redis_url, redis_namespace, start, results), daemon=True)
        for _ in range(PROCESSES)
    ]
    for worker in workers:
        worker.start()
    tallies: list[Tally] = []
    peeker = RedisStore.from_url(redis_url, namespace=redis_namespace)
    try:
        for _ in workers:
            try:
                reply = results.get(timeout=60)
            except queue.Empty:
                pytest.fail("a hammer process did not report within 60 s")
            assert isinstance(reply, list), reply
            tallies += reply
        checked = peeker.now()  # the peek below runs no earlier than this, in server time
        (left,) = peeker.take_tokens(WS, [BucketSpec(SPEC.key, SPEC.bucket, 0.0)]).remaining
        for worker in workers:
            worker.join(timeout=30)
            assert worker.exitcode == 0
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.kill()
                worker.join()
        peeker.delete_namespace()
        peeker.close()

    first = min(t[0] for t in tallies)
    last = max(t[1] for t in tallies)
    allowed = sum(t[2] for t in tallies)
    attempts = sum(t[3] for t in tallies)
    ceiling = BURST + RATE * (last - first)
    stats = f"{allowed} allowed of {attempts} attempts in {last - first:.3f} s; ceiling {ceiling:.1f}"
    assert 1.5 < last - first < DURATION_S + 5, stats
    assert attempts > 3 * ceiling, f"the bucket must be the bottleneck for the test to mean anything: {stats}"
    assert allowed <= ceiling + 1e-6, stats

    # The peek came before the bucket could refill to its burst, so no refill was lost to the cap.
    assert checked - last < BURST / RATE, stats
    could = BURST + RATE * (checked - first)
    assert allowed + left >= 0.99 * could, f"{stats}; {left:.1f} left, {could:.1f} admissible by the peek"
