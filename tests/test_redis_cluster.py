"""What only a Redis Cluster asks of the store: finding the cluster from one node, where keys live,
scripts a primary forgot, slots that move (ASK, then MOVED), scans that must visit every primary,
and writes no replica acknowledged. The shared behaviour runs on the cluster in the contract suite.

The cluster (``redis_cluster``: 3 primaries + 3 replicas on loopback, started once per session) logs
Penny in as the README's ACL user. Each test keeps to a namespace of its own.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from proxy_core.breaker import BreakerPolicy
from proxy_core.budget import BudgetLine
from proxy_core.clock import ManualClock
from proxy_core.errors import ConfigurationError, StoreError
from proxy_core.limiter import Bucket
from proxy_core.stores import store_from_url
from proxy_core.stores.base import REAP_GRACE_S, BreakerRef, BucketSpec, ClaimOwner, LedgerEntry, SemanticEntry
from proxy_core.stores.redis import RedisStore
from proxy_core.stores.redis_connect import RedisOptions, parse_cluster_url
from tests.redis_targets import ACL_PASSWORD, ACL_USER, LocalCluster, RedisTarget, redis_target

pytestmark = pytest.mark.redis

DAY = "2026-01-01"  # ManualClock starts at 2026-01-01T00:00:00Z
LINE = BudgetLine("user:U1:day:2026-01-01", 1_000_000, "U1 daily", 1767312000.0)
BREAKER = BreakerRef("openai", BreakerPolicy())


# -- the URL ---------------------------------------------------------------------------------


def test_a_cluster_url_names_any_number_of_nodes_a_user_and_a_password() -> None:
    parsed = parse_cluster_url("rediss+cluster://penny:p%40ss@10.0.0.1:7000,redis-2.internal:7001,[::1]:7002")
    assert parsed.tls
    assert parsed.nodes == (("10.0.0.1", 7000), ("redis-2.internal", 7001), ("::1", 7002))
    assert (parsed.username, parsed.password) == ("penny", "p@ss")
    plain = parse_cluster_url("redis+cluster://127.0.0.1:7000/0")
    assert (plain.tls, plain.nodes, plain.username, plain.password) == (False, (("127.0.0.1", 7000),), None, None)


@pytest.mark.parametrize("url", [
    "redis+cluster://:s3cret@127.0.0.1",            # no port
    "redis+cluster://:s3cret@127.0.0.1:7000,:7001",  # no host
    "redis+cluster://:s3cret@127.0.0.1:99999",
    "redis+cluster://:s3cret@127.0.0.1:7000/3",      # a cluster has only db 0
    "redis+cluster://:s3cret@127.0.0.1:7000?ssl_cert_reqs=none",
])  # fmt: skip
def test_a_bad_cluster_url_is_a_configuration_error_without_the_password(url: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        store_from_url(url)
    assert "s3cret" not in str(raised.value)


# -- the cluster ---------------------------------------------------------------------------------


def workspaces_by_primary(cluster: LocalCluster, count: int = 3) -> dict[int, list[str]]:
    """``count`` workspace IDs served by each primary (a workspace's slot is its ``{w:<id>}`` tag's)."""
    found: dict[int, list[str]] = {port: [] for port in cluster.primary_ports()}
    for n in itertools.count():
        ws = f"T{n:04d}"
        port = cluster.port_of_key(f"{{w:{ws}}}")
        if len(found[port]) < count:
            found[port].append(ws)
        if all(len(v) == count for v in found.values()):
            return found
    raise AssertionError("unreachable")


@pytest.fixture
def target(redis_cluster_target: RedisTarget, redis_cluster: LocalCluster) -> RedisTarget:
    return redis_cluster_target


@pytest.fixture
def open_store(target: RedisTarget, redis_namespace: str, clock: ManualClock) -> Iterator[Any]:
    """Open stores in this test's namespace (``options`` may change the target's); all closed, and
    the namespace deleted, afterwards."""
    opened: list[RedisStore] = []

    def open_(url: str | None = None, **options: Any) -> RedisStore:
        values = {f: getattr(target.options, f) for f in RedisOptions.__dataclass_fields__}
        store = RedisTarget(url or target.url, RedisOptions(**{**values, **options})).open(
            clock=clock, namespace=redis_namespace)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()
    cleanup = target.open(clock=clock, namespace=redis_namespace)
    cleanup.delete_namespace()
    cleanup.close()


def entry(ws: str, request_id: str, cost: int = 1_000) -> LedgerEntry:
    return LedgerEntry(
        request_id=request_id, ts=1767225600.0, day=DAY, workspace_id=ws, user_id="U1", model="gpt-4.1-mini",
        kind="chat", prompt_tokens=10, cached_prompt_tokens=0, completion_tokens=5, cost_micros=cost, saved_micros=0,
        cache_status="miss", latency_ms=100, attempts=1,
    )


def admit_and_settle(store: RedisStore, ws: str, request_id: str, cost: int = 1_000) -> None:
    admission = store.admit(ws, request_id, ttl_s=60, buckets=[BucketSpec("user:U1:requests", Bucket(10, 100), 1)],
                            lines=[LINE], amount=5_000, breaker=BREAKER)
    assert admission.state == "admitted"
    assert store.settle(entry(ws, request_id, cost), reservation_id=request_id, lines=[LINE], result="{}",
                        result_ttl_s=60, breaker=BREAKER)


def keys_by_port(cluster: LocalCluster, namespace: str) -> dict[int, list[str]]:
    """Every key of ``namespace``, by the port of the primary holding it."""
    keys: dict[int, list[str]] = {}
    for port in cluster.primary_ports():
        client = redis.Redis(port=port, decode_responses=True)
        keys[port] = sorted(client.scan_iter(match=f"{namespace}:*", count=1000))
        client.close()
    return keys


def test_one_node_is_enough_to_reach_every_primary_and_a_workspace_stays_in_one_slot(
    redis_cluster: LocalCluster, open_store: Any, redis_namespace: str
) -> None:
    by_primary = workspaces_by_primary(redis_cluster)
    # The URL names one node; the cluster tells the client about the rest.
    store = open_store(redis_cluster.url(user=ACL_USER, password=ACL_PASSWORD, nodes=1))
    for workspaces in by_primary.values():
        for ws in workspaces:
            admit_and_settle(store, ws, f"{ws}-r1")
            assert store.usage(ws, DAY, DAY).totals.requests == 1
    keys_on = keys_by_port(redis_cluster, redis_namespace)
    for port, workspaces in by_primary.items():
        for ws in workspaces:
            tag = f"{redis_namespace}:{{w:{ws}}}:"
            # Claim, bucket, budget line, reservation, ledger entry, usage: all on the workspace's primary.
            mine = [key for key in keys_on[port] if key.startswith(tag)]
            assert len(mine) >= 6
            assert not any(key.startswith(tag) for other, keys in keys_on.items() if other != port for key in keys)
    # The breaker has a slot of its own, on exactly one primary.
    assert sum(f"{redis_namespace}:breaker:{{openai}}" in keys for keys in keys_on.values()) == 1


def test_a_primary_that_forgot_the_scripts_gets_them_again(redis_cluster: LocalCluster, open_store: Any) -> None:
    waiting, plain = open_store(), open_store(wait_replicas=0)
    ws = workspaces_by_primary(redis_cluster, 1)
    first = [workspaces[0] for workspaces in ws.values()]
    for store in (waiting, plain):
        admit_and_settle(store, first[0], f"warm-{id(store)}")
    for port in redis_cluster.primary_ports():  # as after a failover to a replica that never ran them
        redis.Redis(port=port).script_flush()
    for n, store in enumerate((waiting, plain)):
        for workspace in first:
            admit_and_settle(store, workspace, f"after-flush-{n}")  # pipelined with the breaker
            assert store.cache_get("answers", f"k{n}") is None  # a script on its own
    entry_ = SemanticEntry("e1", "T:public", "docs:v1", "How?", b"\0" * 32, "{}", 1.0, 4e9)
    for port in redis_cluster.primary_ports():
        redis.Redis(port=port).script_flush()
    assert plain.semantic_put(entry_, max_entries=0) == []  # the semantic scripts: undecoded replies
    assert plain.semantic_get("e1") is not None


def test_the_reaper_and_namespace_scans_reach_every_primary(
    redis_cluster: LocalCluster, open_store: Any, clock: ManualClock, redis_namespace: str
) -> None:
    store = open_store()
    workspaces = [ws for found in workspaces_by_primary(redis_cluster, 2).values() for ws in found]
    owner = ClaimOwner("U1", "gpt-4.1-mini", "chat", clock())
    for ws in workspaces:
        assert store.admit(ws, "lost", ttl_s=60, buckets=[], lines=[LINE], amount=7_000, breaker=None,
                           owner=owner).state == "admitted"
    clock.advance(60 + REAP_GRACE_S / 2)  # every claim expired, none settled: their processes died
    reaped = store.reap_interrupted()
    assert sorted(e.workspace_id for e in reaped) == sorted(workspaces)
    assert all(store.spent(ws, LINE) == (7_000, 0) for ws in workspaces)
    assert store.delete_namespace() > 0
    assert keys_by_port(redis_cluster, redis_namespace) == {port: [] for port in redis_cluster.primary_ports()}


def test_a_write_fewer_replicas_acknowledged_is_not_counted_as_done(
    redis_cluster: LocalCluster, open_store: Any
) -> None:
    ws = next(iter(workspaces_by_primary(redis_cluster, 1).values()))[0]
    strict = open_store(wait_replicas=2, wait_timeout_ms=100)  # each primary has one replica: never two
    with pytest.raises(StoreError, match="1 of 2 replica"):
        strict.admit(ws, "r1", ttl_s=60, buckets=[], lines=[LINE], amount=5_000, breaker=BREAKER)
    # The primary did apply it: what the gateway's spool is for. Replaying the release (or, for a
    # settle, the settle) is idempotent, and counts once a replica has it.
    normal = open_store()
    with pytest.raises(StoreError, match="acknowledged"):
        strict.settle(entry(ws, "r1"), reservation_id="r1", lines=[LINE], result="{}", result_ttl_s=60)
    assert normal.ledger_entry(ws, "r1") is not None
    assert not normal.settle(entry(ws, "r1"), reservation_id="r1", lines=[LINE], result="{}", result_ttl_s=60)
    assert normal.spent(ws, LINE) == (1_000, 0) and normal.usage(ws, DAY, DAY).totals.requests == 1


@pytest.mark.parametrize("wait_replicas", [0, 1])
def test_a_workspace_whose_slot_moves_follows_ask_then_moved(
    redis_cluster: LocalCluster, open_store: Any, redis_namespace: str, wait_replicas: int
) -> None:
    store = open_store(wait_replicas=wait_replicas)
    ws = f"T-moving-{wait_replicas}"
    tag = f"{redis_namespace}:{{w:{ws}}}"
    admit_and_settle(store, ws, "r1")
    assert store.admit(ws, "held", ttl_s=60, buckets=[], lines=[LINE], amount=5_000, breaker=None).state == "admitted"
    source = redis_cluster.port_of_key(tag)
    dest = next(port for port in redis_cluster.primary_ports() if port != source)
    src, dst = redis.Redis(port=source, decode_responses=True), redis.Redis(port=dest, decode_responses=True)
    slot = int(src.execute_command("CLUSTER", "KEYSLOT", tag))
    src_id, dst_id = src.execute_command("CLUSTER", "MYID"), dst.execute_command("CLUSTER", "MYID")
    dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
    src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
    keys = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
    src.execute_command("MIGRATE", "127.0.0.1", dest, "", 0, 5000, "KEYS", *keys)

    # Half moved: the source answers ASK for the keys it gave away, and the client asks the new node.
    assert store.ledger_entry(ws, "r1") is not None
    assert store.usage(ws, DAY, DAY).totals.requests == 1
    store.release(ws, "held", [LINE])  # a write (confirmed by a replica when asked to) on moved keys
    store.release_request(ws, "held")
    # A script that would create keys in the moving slot is refused (TRYAGAIN) until the move ends:
    # within a bounded time, and it applied nothing.
    with pytest.raises(StoreError):
        store.admit(ws, "r2", ttl_s=60, buckets=[], lines=[LINE], amount=5_000, breaker=None)

    for port in redis_cluster.primary_ports():
        redis.Redis(port=port).execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
    # Moved: the source now answers MOVED, and the client follows it to the slot's new primary.
    admit_and_settle(store, ws, "r2")
    assert store.usage(ws, DAY, DAY).totals.requests == 2
    assert store.spent(ws, LINE) == (2_000, 0)
    assert redis_cluster.port_of_key(tag) == dest
    assert not src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 10)
    src.close()
    dst.close()


@pytest.mark.parametrize("backend", ["redis", "redis_cluster"])
def test_an_admission_sent_twice_by_the_client_holds_once_and_is_admitted(
    request: pytest.FixtureRequest, backend: str, redis_namespace: str, clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """redis-py sends a command again when its connection drops before the reply (and a cluster
    client after a timeout): the first copy ran. The second must not find the call "in flight"
    behind itself, nor take its tokens and budget twice."""
    store = redis_target(request, backend).open(clock=clock, namespace=redis_namespace)
    sent_twice = RedisStore._pipelined

    def lost_reply(self: RedisStore, *calls: Any, **kwargs: Any) -> list[Any]:
        if calls[-1][0] == "admit":
            sent_twice(self, *calls, **kwargs)  # applied; its reply never arrives
        return sent_twice(self, *calls, **kwargs)

    bucket = BucketSpec("user:U1:requests", Bucket(rate=0.001, burst=2), 1)
    owner = ClaimOwner("U1", "gpt-4.1-mini", "chat", clock())
    try:
        with monkeypatch.context() as patched:
            patched.setattr(RedisStore, "_pipelined", lost_reply)
            first = store.admit("T01", "r1", ttl_s=60, buckets=[bucket], lines=[LINE], amount=5_000, breaker=BREAKER,
                                owner=owner)
        assert first.state == "admitted"
        assert store.spent("T01", LINE) == (0, 5_000)  # reserved once
        assert store.take_tokens("T01", [bucket]).remaining == (0.0,)  # one token taken by r1, this one now
        # Another call of the same request ID (not a resend) is still held off.
        again = store.admit("T01", "r1", ttl_s=60, buckets=[], lines=[LINE], amount=5_000, breaker=None,
                            owner=ClaimOwner("U1", "gpt-4.1-mini", "chat", clock()))  # a call of its own
        assert again.state == "in_flight"
        assert store.settle(entry("T01", "r1"), reservation_id="r1", lines=[LINE], result="{}", result_ttl_s=60)
        assert store.spent("T01", LINE) == (1_000, 0)
    finally:
        store.delete_namespace()
        store.close()
