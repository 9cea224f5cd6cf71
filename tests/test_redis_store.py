"""What only the Redis store does: server time, script reloading, key layout and expiry,
persistence across a restart, error translation. The shared behaviour is in test_store_contract.py.

Tests on the shared server (``redis_url``) use a private namespace that is deleted afterwards; tests
that restart Redis or flush its script cache start a private ``redis-server`` (tests/redis_server.py).
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.crc import key_slot
from redis_server import RedisServer, free_port, redis_server_binary

from proxy_core.breaker import BreakerPolicy, BreakerState
from proxy_core.budget import BudgetLine, budget_lines
from proxy_core.clock import ManualClock
from proxy_core.errors import ConfigurationError, StoreError
from proxy_core.limiter import Bucket
from proxy_core.stores import store_from_url
from proxy_core.stores.base import BreakerRef, BucketSpec, Claim, LedgerEntry
from proxy_core.stores.redis import KEEP_AFTER_RESET_S, RedisStore
from tests.budgeting import reserve

pytestmark = pytest.mark.redis

WS = "T01"
SECRET = "hunter2-redis-password"


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def server_time_store(redis_url: str, redis_namespace: str) -> Iterator[RedisStore]:
    """A store on the shared server with no injected clock: scripts read the server's TIME."""
    store = RedisStore.from_url(redis_url, namespace=redis_namespace)
    yield store
    try:
        store.delete_namespace()
    finally:
        store.close()


@pytest.fixture
def private_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of our own, persisting to an append-only file in ``tmp_path``."""
    if redis_server_binary() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is not installed")
        pytest.skip("redis-server is not installed")
    with RedisServer(tmp_path / "redis", "--appendonly", "yes") as server:
        yield server


def entry(
    request_id: str,
    *,
    user: str = "U1",
    model: str = "gpt-4o-mini",
    day: str = "2026-01-01",
    cost: int = 1_000,
    cache_status: str = "miss",
) -> LedgerEntry:
    return LedgerEntry(
        request_id=request_id,
        ts=1_767_225_600.123456,
        day=day,
        workspace_id=WS,
        user_id=user,
        model=model,
        kind="chat",
        prompt_tokens=120,
        cached_prompt_tokens=20,
        completion_tokens=30,
        cost_micros=cost,
        saved_micros=7 if cache_status != "miss" else 0,
        cache_status=cache_status,  # type: ignore[arg-type]
        latency_ms=250,
        attempts=1,
    )


def lines_at(now: float) -> list[BudgetLine]:
    return budget_lines(WS, "U1", now, user_daily=5_000_000, workspace_monthly=0)


def namespace_keys(client: redis.Redis, namespace: str) -> list[str]:
    return sorted(str(k) for k in client.scan_iter(match=f"{namespace}:*", count=500))


# -- server time ----------------------------------------------------------------------------


def test_now_is_the_server_time(server_time_store: RedisStore) -> None:
    # The server runs on this machine, so its TIME and ours agree closely.
    assert server_time_store.now() == pytest.approx(time.time(), abs=1.0)


def test_buckets_refill_by_server_time(
    server_time_store: RedisStore, redis_url: str, redis_namespace: str, raw: redis.Redis
) -> None:
    # A huge rate refills a whole token within a microsecond of server time: no waiting needed.
    spec = BucketSpec("user:U1:requests", Bucket(rate=1e9, burst=1.0), 1.0)
    first = server_time_store.take_tokens(WS, [spec])
    assert first.allowed
    assert first.remaining == (0.0,)
    assert server_time_store.take_tokens(WS, [spec]).allowed
    # (That bucket is forgotten a microsecond after each take; a slow one shows the stamp.)
    server_time_store.take_tokens(WS, [BucketSpec("slow", Bucket(rate=1.0, burst=10.0), 1.0)])
    stored = raw.hgetall(f"{redis_namespace}:{{w:{WS}}}:bucket:slow")
    assert float(stored["updated"]) == pytest.approx(time.time(), abs=1.0)

    # The same bucket under a frozen injected clock does not refill: time really came from TIME.
    frozen = RedisStore.from_url(redis_url, clock=ManualClock(time.time() + 3600), namespace=redis_namespace)
    try:
        assert frozen.take_tokens(WS, [spec]).allowed
        refused = frozen.take_tokens(WS, [spec])
        assert not refused.allowed
        assert refused.retry_after == 0.001  # 1 ns to wait, rounded up to a whole millisecond
    finally:
        frozen.close()


def test_breaker_and_claims_are_timed_by_the_server(
    server_time_store: RedisStore, redis_namespace: str, raw: redis.Redis
) -> None:
    policy = BreakerPolicy(failure_threshold=2)
    server_time_store.breaker_record("openai", policy, success=False)
    opened = server_time_store.breaker_record("openai", policy, success=False)
    assert opened.state == "open"
    assert opened.opened_at == pytest.approx(time.time(), abs=1.0)
    permit = server_time_store.breaker_acquire("openai", policy)
    assert not permit.allowed
    assert permit.retry_after == pytest.approx(policy.cooldown_s, abs=1.0)

    assert server_time_store.claim_request(WS, "r1", 60).state == "claimed"
    key = f"{redis_namespace}:{{w:{WS}}}:req:r1"
    assert float(raw.hget(key, "expires_at") or 0) == pytest.approx(time.time() + 60, abs=1.0)
    # Without an injected clock the real expiry is the logical one: no slack.
    assert 59_000 < raw.pttl(key) <= 60_000


def test_a_breaker_hash_from_before_the_backoff_is_read_and_backs_off(
    redis_url: str, redis_namespace: str, raw: redis.Redis
) -> None:
    # A hash written before failed_probes existed: the missing field reads as 0.
    clock = ManualClock()
    store = RedisStore.from_url(redis_url, clock=clock, namespace=redis_namespace)
    try:
        raw.hset(f"{redis_namespace}:breaker:{{openai}}", mapping={
            "state": "open", "consecutive_failures": 0, "window_start": clock(), "window_calls": 0,
            "window_failures": 0, "opened_at": clock(), "probe_deadline": 0})
        assert store.breaker_state("openai") == BreakerState(state="open", window_start=clock(), opened_at=clock())
        policy = BreakerPolicy(cooldown_s=30)
        clock.advance(30)
        assert store.breaker_acquire("openai", policy).probe
        assert store.breaker_record("openai", policy, success=False).failed_probes == 1
        assert store.breaker_acquire("openai", policy).retry_after == 60
    finally:
        store.delete_namespace()
        store.close()


def test_an_injected_clock_pads_real_expiry_but_decides_logically(
    redis_url: str, redis_namespace: str, raw: redis.Redis
) -> None:
    clock = ManualClock()
    store = RedisStore.from_url(redis_url, clock=clock, namespace=redis_namespace)
    try:
        store.cache_put("answers", "k", '"v"', ttl_s=1)
        key = f"{redis_namespace}:cache:{{answers}}:k"
        # Redis expires keys by its own time; the padding keeps it from forgetting them early.
        assert raw.pttl(key) > 30_000
        clock.advance(1)
        assert store.cache_get("answers", "k") is None
    finally:
        store.delete_namespace()
        store.close()


# -- scripts --------------------------------------------------------------------------------


def test_scripts_are_reloaded_after_script_flush(private_server: RedisServer, clock: ManualClock) -> None:
    store = RedisStore.from_url(private_server.url, clock=clock)
    client = redis.Redis.from_url(private_server.url)
    try:
        spec = BucketSpec("user:U1:requests", Bucket(rate=1.0, burst=10.0), 1.0)
        assert store.take_tokens(WS, [spec]).remaining == (9.0,)
        assert store.claim_request(WS, "r1", 60).state == "claimed"
        used = [store._scripts["take_tokens"].sha, store._scripts["claim_request"].sha]
        assert all(client.script_exists(*used))

        client.script_flush()  # a private server: flushing its script cache disturbs nobody else
        assert not any(client.script_exists(*used))

        assert store.take_tokens(WS, [spec]).remaining == (8.0,)
        assert store.claim_request(WS, "r1", 60).state == "in_flight"
        assert all(client.script_exists(*used))
    finally:
        client.close()
        store.close()


def test_pipelined_scripts_are_reloaded_after_script_flush(private_server: RedisServer, clock: ManualClock) -> None:
    # admit and settle(breaker=...) send several scripts in one round trip; a NOSCRIPT reply for
    # one of them means it did not run, so it alone is loaded and run again.
    store = RedisStore.from_url(private_server.url, clock=clock)
    client = redis.Redis.from_url(private_server.url)
    policy = BreakerPolicy(failure_threshold=5, failure_ratio=0.5, min_calls=20, window_s=60, cooldown_s=30)
    ref = BreakerRef("openai", policy)
    try:
        client.script_flush()
        admitted = store.admit(WS, "r1", ttl_s=60, buckets=[], lines=[], amount=1, breaker=ref)
        assert admitted.state == "admitted"
        client.script_flush()
        entry = LedgerEntry(
            request_id="r1", ts=clock(), day="2026-01-01", workspace_id=WS, user_id="U1", model="m",
            kind="chat", prompt_tokens=1, cached_prompt_tokens=0, completion_tokens=1, cost_micros=3,
            saved_micros=0, cache_status="miss", latency_ms=1, attempts=1,
        )
        assert store.settle(entry, reservation_id="r1", lines=[], result='"ok"', result_ttl_s=60, breaker=ref)
        assert store.breaker_state("openai").window_calls == 1
        assert store.claim_request(WS, "r1", 60) == Claim("done", '"ok"')
    finally:
        client.close()
        store.close()


def test_scripts_are_files_in_the_package() -> None:
    from importlib import resources

    lua = resources.files("proxy_core.stores") / "lua"
    names = {p.name for p in lua.iterdir() if p.name.endswith(".lua")}
    assert {
        "take_tokens.lua",
        "release.lua",
        "settle.lua",
        "breaker.lua",
        "claim_request.lua",
        "complete_request.lua",
        "release_request.lua",
    } <= names


# -- key layout and expiry -------------------------------------------------------------------


def test_every_key_carries_its_hash_tag(
    redis_url: str, redis_namespace: str, raw: redis.Redis, clock: ManualClock
) -> None:
    store = RedisStore.from_url(redis_url, clock=clock, namespace=redis_namespace)
    try:
        lines = lines_at(clock())
        store.take_tokens(WS, [BucketSpec("user:U1:requests", Bucket.per_minute(10), 1)])
        assert reserve(store, WS, "r1", lines, 500, 60).ok
        assert reserve(store, WS, "r2", lines, 500, 60).ok
        assert store.settle(entry("r1"), reservation_id="r1", lines=lines, result='"ok"', result_ttl_s=60)
        store.breaker_record("openai", BreakerPolicy(), success=False)
        store.cache_put("answers:v1", "abc", '"cached"', 60)

        keys = namespace_keys(raw, redis_namespace)
        ns = re.escape(redis_namespace)
        workspace = [k for k in keys if re.match(rf"{ns}:\{{w:{WS}\}}:", k)]
        assert len(workspace) >= 8  # request, bucket, spent/reservations, ledger, aggregates
        assert {key_slot(k.encode()) for k in workspace} == {key_slot(f"w:{WS}".encode())}
        rest = sorted(set(keys) - set(workspace))
        assert rest == [
            f"{redis_namespace}:breaker:{{openai}}",
            f"{redis_namespace}:cache:{{answers:v1}}:abc",
        ]
    finally:
        store.delete_namespace()
        store.close()


def test_keys_expire_when_they_stop_mattering_and_the_ledger_never(
    redis_url: str, redis_namespace: str, raw: redis.Redis, clock: ManualClock
) -> None:
    store = RedisStore.from_url(redis_url, clock=clock, namespace=redis_namespace)
    ws = f"{redis_namespace}:{{w:{WS}}}"
    try:
        # A bucket is forgotten once it would be full again, and not before a day (plus the
        # injected-clock slack): a rate lowered meanwhile would refill it slower.
        store.take_tokens(WS, [BucketSpec("b", Bucket(rate=1.0, burst=10.0), 4)])
        assert 86_400_000 + 59_000 < raw.pttl(f"{ws}:bucket:b") <= 86_400_000 + 60_000
        store.take_tokens(WS, [BucketSpec("slow", Bucket(rate=1e-4, burst=10.0), 10)])  # ~28 h to refill
        assert 100_000_000 + 60_000 - 1_000 < raw.pttl(f"{ws}:bucket:slow") <= 100_000_000 + 60_000

        lines = lines_at(clock())
        day_line = lines[0]
        assert reserve(store, WS, "r1", lines, 100, 60).ok
        assert store.settle(entry("r1"), reservation_id=None, lines=lines, result=None, result_ttl_s=60)
        keep_ms = (day_line.resets_at - clock() + KEEP_AFTER_RESET_S) * 1000
        for kind in ("spent", "resv", "resv-exp"):
            assert raw.pttl(f"{ws}:{kind}:{day_line.key}") == pytest.approx(keep_ms + 60_000, abs=5_000)

        for durable in (f"{ws}:ledger:r1", f"{ws}:usage:2026-01-01", f"{ws}:usage:2026-01-01:user:U1"):
            assert raw.exists(durable)
            assert raw.ttl(durable) == -1
    finally:
        store.delete_namespace()
        store.close()


def test_delete_namespace_touches_no_other_namespace(redis_url: str, redis_namespace: str) -> None:
    # Glob characters in the namespace are literal: 'x*' must not delete 'xy'.
    starry = RedisStore.from_url(redis_url, namespace=f"{redis_namespace}*")
    plain = RedisStore.from_url(redis_url, namespace=f"{redis_namespace}y")
    try:
        starry.cache_put("s", "k", "1", 60)
        plain.cache_put("s", "k", "2", 60)
        assert starry.delete_namespace() == 1
        assert plain.cache_get("s", "k") == "2"
        assert starry.cache_get("s", "k") is None
    finally:
        plain.delete_namespace()
        starry.close()
        plain.close()


def test_cache_scope_delete_treats_glob_characters_literally(server_time_store: RedisStore) -> None:
    server_time_store.cache_put("a*", "k", "1", 60)
    server_time_store.cache_put("ab", "k", "2", 60)
    assert server_time_store.cache_delete("a*") == 1
    assert server_time_store.cache_get("ab", "k") == "2"


def test_usage_keeps_ids_with_separators_apart(server_time_store: RedisStore) -> None:
    # Aggregate fields are '<dimension>:<metric>:<id>'; an id may itself contain ':'.
    store = server_time_store
    store.settle(entry("a", user="U:1", model="org/m:v2"), reservation_id=None, lines=[], result=None, result_ttl_s=60)
    store.settle(
        entry("b", user="U", model="m", cache_status="exact"),
        reservation_id=None,
        lines=[],
        result=None,
        result_ttl_s=60,
    )
    usage = store.usage(WS, "2026-01-01", "2026-01-31")
    assert set(usage.by_user) == {"U:1", "U"}
    assert set(usage.by_model) == {"org/m:v2", "m"}
    assert usage.totals.requests == 2
    assert usage.totals.cache_hits == 1
    mine = store.usage(WS, "2026-01-01", "2026-01-31", user_id="U:1")
    assert set(mine.by_user) == {"U:1"}
    assert set(mine.by_model) == {"org/m:v2"}
    assert mine.totals.cost_micros == 1_000
    assert mine.by_day["2026-01-01"].requests == 1


# -- persistence -----------------------------------------------------------------------------


@pytest.mark.slow
def test_ledger_survives_a_restart(private_server: RedisServer, clock: ManualClock) -> None:
    store = RedisStore.from_url(private_server.url, clock=clock)
    lines = lines_at(clock())
    for i, (user, model) in enumerate([("U1", "gpt-4o-mini"), ("U2", "gpt-4o"), ("U1", "gpt-4o")]):
        assert store.settle(
            entry(f"r{i}", user=user, model=model, cost=1_000 * (i + 1)),
            reservation_id=None,
            lines=lines,
            result=None,
            result_ttl_s=60,
        )
    before = store.usage(WS, "2026-01-01", "2026-01-31")
    before_u1 = store.usage(WS, "2026-01-01", "2026-01-31", user_id="U1")
    entries = [store.ledger_entry(WS, f"r{i}") for i in range(3)]
    spent = store.spent(WS, lines[1])
    store.close()

    private_server.restart()  # same port, same directory: the append-only file is read back
    # Snapshots are off (--save ""), so what comes back came from the append-only file.
    assert (private_server.directory / "appendonlydir").is_dir()
    assert not (private_server.directory / "dump.rdb").exists()

    again = RedisStore.from_url(private_server.url, clock=clock)
    try:
        assert [again.ledger_entry(WS, f"r{i}") for i in range(3)] == entries
        assert again.usage(WS, "2026-01-01", "2026-01-31") == before
        assert again.usage(WS, "2026-01-01", "2026-01-31", user_id="U1") == before_u1
        assert again.spent(WS, lines[1]) == spent == (6_000, 0)
        # Settling again is still recognised as a duplicate.
        assert not again.settle(entry("r0"), reservation_id=None, lines=lines, result=None, result_ttl_s=60)
    finally:
        again.close()


# -- errors ----------------------------------------------------------------------------------


def test_a_dead_port_is_a_store_error_not_a_hang() -> None:
    store = store_from_url(f"redis://:{SECRET}@127.0.0.1:{free_port()}/0", timeout_s=0.3)
    started = time.monotonic()
    with pytest.raises(StoreError) as raised:
        store.take_tokens(WS, [BucketSpec("b", Bucket(1.0, 1.0), 1)])
    assert time.monotonic() - started < 2
    assert SECRET not in str(raised.value)
    assert isinstance(raised.value.__cause__, redis.ConnectionError)
    store.close()


def test_a_server_that_never_answers_times_out_into_a_store_error() -> None:
    # Accepts connections (the kernel completes the handshake) but never replies.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        store = RedisStore.from_url(f"redis://:{SECRET}@127.0.0.1:{port}/0", timeout_s=0.3)
        started = time.monotonic()
        with pytest.raises(StoreError) as raised:
            store.claim_request(WS, "r1", 60)
        assert time.monotonic() - started < 2
        assert SECRET not in str(raised.value)
        assert isinstance(raised.value.__cause__, redis.TimeoutError)
        store.close()


def test_a_server_error_is_a_store_error(server_time_store: RedisStore, redis_namespace: str, raw: redis.Redis) -> None:
    raw.set(f"{redis_namespace}:{{w:{WS}}}:bucket:b", "not a hash")
    with pytest.raises(StoreError, match="WRONGTYPE") as raised:
        server_time_store.take_tokens(WS, [BucketSpec("b", Bucket(1.0, 1.0), 1)])
    assert isinstance(raised.value.__cause__, redis.ResponseError)


@pytest.mark.parametrize("url", ["redis://:pw@127.0.0.1:notaport/0", "http://:pw@127.0.0.1:6379/0"])
def test_a_malformed_url_is_a_configuration_error(url: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        RedisStore.from_url(url)
    assert "pw" not in str(raised.value)


def test_a_namespace_cannot_break_the_hash_tags(redis_url: str) -> None:
    with pytest.raises(ConfigurationError):
        RedisStore.from_url(redis_url, namespace="pen{ny}")


def test_a_private_server_whose_port_was_taken_starts_on_fresh_ports_and_keeps_them_across_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A port probed free can be taken before redis-server binds it (CI saw a cluster bus port taken
    three times in a row, because the retries reused it). Every port is picked again per attempt."""
    import redis_server as helper

    if redis_server_binary() is None:
        pytest.skip("redis-server is not installed")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        picks = iter([free_port(), taken])  # the first attempt's main port, then its bus port
        monkeypatch.setattr(helper, "free_port", lambda: next(picks, None) or free_port())
        with RedisServer(tmp_path / "redis", "--cluster-enabled", "yes", port_options=("--cluster-port",)) as server:
            bus = server.option_ports["--cluster-port"]
            assert bus != taken
            port = server.port
            server.restart()
            assert (server.port, server.option_ports["--cluster-port"]) == (port, bus)
            assert redis.Redis.from_url(server.url).ping()
