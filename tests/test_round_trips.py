"""How many round trips to Redis each path of the gateway takes: on a shared Redis a round trip
costs more than the rest of the pipeline, so these counts are the gateway's latency budget.

A round trip is one write to the socket by the request's own thread (a pipeline of several
scripts is one); the cache's sync thread is not counted. Real Redis, real openai SDK, fake server.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry

from proxy_core.budget import CallSource
from proxy_core.clock import ManualClock
from proxy_core.errors import CircuitOpen
from proxy_core.gateway import Gateway
from proxy_core.metrics import Metrics
from proxy_core.semantic.layer import SemanticCache
from proxy_core.settings import PennySettings
from proxy_core.stores.redis import RedisStore
from proxy_core.upstream import OpenAIUpstream
from tests.fake_openai import FakeOpenAI, Fault

API_KEY = "sk-test-round-trips"


class _Trips:
    """Socket writes made by one thread (set ``thread`` to the one being measured)."""

    def __init__(self) -> None:
        self.thread = threading.get_ident()
        self.count = 0

    def take(self) -> int:
        count, self.count = self.count, 0
        return count


TRIPS = _Trips()


class CountingConnection(redis.Connection):
    """Counts the commands the measured thread sends, not a new connection's handshake (HELLO,
    CLIENT SETINFO): the pool opens one whenever the gateway's own threads hold the others, which
    depends on timing, not on the path being measured."""

    _connecting = False

    def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True) -> None:
        self._connecting = True
        try:
            super().connect_check_health(check_health, retry_socket_connect)
        finally:
            self._connecting = False

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if threading.get_ident() == TRIPS.thread and not self._connecting:
            TRIPS.count += 1
        super().send_packed_command(command, check_health)


@pytest.fixture
def counted_store(redis_url: str, redis_namespace: str, clock: ManualClock) -> Iterator[RedisStore]:
    pool = redis.BlockingConnectionPool.from_url(redis_url, connection_class=CountingConnection,
                                                 decode_responses=True)
    store = RedisStore(redis.Redis(connection_pool=pool), clock=clock, namespace=redis_namespace)
    store.ping()  # connect before counting: the first command also sends the handshake
    yield store
    store.delete_namespace()
    store.close()


def gateway(store: RedisStore, clock: ManualClock, fake: FakeOpenAI, **overrides: Any) -> Gateway:
    params: dict[str, Any] = {"openai_api_key": API_KEY, "openai_base_url": fake.base_url,
                              "user_daily_budget_usd": 5, "workspace_monthly_budget_usd": 100}
    params.update(overrides)
    settings = PennySettings(**params)
    gw = Gateway(settings, store=store, metrics=Metrics(CollectorRegistry()), clock=clock, wall=clock,
                 sleep=clock.sleep, upstream=OpenAIUpstream(api_key=API_KEY, base_url=fake.base_url, timeout_s=2.0))
    # Warm up: the server learns every script (a first EVALSHA is answered NOSCRIPT and loads it).
    ask(gw, "A warm-up question about parking", "warm-1")
    ask(gw, "A warm-up question about parking", "warm-2")
    return gw


def ask(gw: Gateway, question: str, request_id: str) -> Any:
    return gw.chat(user_id="U1", workspace_id="W1", request_id=request_id,
                   messages=[{"role": "user", "content": question}])


def test_semantic_cache_a_hit_is_one_round_trip_and_a_miss_two(
    counted_store: RedisStore, clock: ManualClock, fake: FakeOpenAI
) -> None:
    gw = gateway(counted_store, clock, fake)
    try:
        TRIPS.thread = threading.get_ident()
        TRIPS.take()
        assert ask(gw, "How do I deploy the API?", "ev1").cache_status == "miss"
        assert TRIPS.take() == 2  # admit (+ breaker peek), settle (+ breaker success)
        cache = gw.cache
        assert isinstance(cache, SemanticCache)
        assert cache.flush()  # the cache write went to the writer thread, behind the answer
        assert counted_store.semantic_count() == 2  # the warm-up's entry and this one
        TRIPS.take()
        hit = ask(gw, "how do I deploy the API", "ev2")
        assert hit.cache_status == "exact"
        assert TRIPS.take() == 1  # record_hit: claim, ledger entry and result at once
        assert ask(gw, "how do I deploy the API", "ev2").replayed
        assert TRIPS.take() == 1  # the same request again: the one call finds its result
        assert fake.count("chat") == 2  # the warm-up's and this miss's
    finally:
        gw.close()


def test_exact_cache_alone_a_hit_is_two_round_trips(
    counted_store: RedisStore, clock: ManualClock, fake: FakeOpenAI
) -> None:
    gw = gateway(counted_store, clock, fake, semantic_cache=False, requests_per_minute=60, tokens_per_minute=0)
    try:
        TRIPS.thread = threading.get_ident()
        TRIPS.take()
        assert ask(gw, "How do I deploy the API?", "ev1").cache_status == "miss"
        assert TRIPS.take() == 4  # cache read, admit (with the rate limit), settle, cache write (with its entry record)
        assert ask(gw, "How do I deploy the API?", "ev2").cache_status == "exact"
        assert TRIPS.take() == 2  # cache read, record_hit
    finally:
        gw.close()


def test_an_open_breaker_refuses_in_two_round_trips_without_calling_upstream(
    counted_store: RedisStore, clock: ManualClock, fake: FakeOpenAI
) -> None:
    gw = gateway(counted_store, clock, fake, semantic_cache=False, retry_max_attempts=1)
    try:
        fake.script(*[Fault.status(503)] * 5)
        for i in range(5):
            with pytest.raises(Exception):  # noqa: B017 - the upstream errors, then the breaker
                ask(gw, f"question {i}", f"fail{i}")
        calls = fake.count("chat")
        TRIPS.thread = threading.get_ident()
        TRIPS.take()
        with pytest.raises(CircuitOpen):
            ask(gw, "one more question", "ev-open")
        # cache read; admit with the breaker's peek; giving back the claim and the reservation
        assert TRIPS.take() == 3
        assert fake.count("chat") == calls
    finally:
        gw.close()


def test_a_call_with_a_sources_own_budget_takes_no_more_round_trips(
    counted_store: RedisStore, clock: ManualClock, fake: FakeOpenAI
) -> None:
    # A proxy key's daily budget is one more line in the same admit and settle scripts.
    gw = gateway(counted_store, clock, fake)
    key = CallSource("key_rt", daily_budget_micros=1_000_000)
    try:
        TRIPS.thread = threading.get_ident()
        TRIPS.take()
        miss = gw.chat(user_id="U1", workspace_id="W1", request_id="proxy:key_rt:1", source=key,
                       messages=[{"role": "user", "content": "How do I rotate the signing keys?"}])
        assert miss.cache_status == "miss"
        assert TRIPS.take() == 2  # admit (three budget lines, + breaker peek), settle (+ breaker success)
        assert gw.accounts.source_budget("W1", key).spent == miss.cost_micros > 0
        TRIPS.take()
        hit = gw.chat(user_id="U1", workspace_id="W1", request_id="proxy:key_rt:2", source=key,
                      messages=[{"role": "user", "content": "how do I rotate the signing keys"}])
        assert hit.cache_status == "exact"
        assert TRIPS.take() == 1  # record_hit
    finally:
        gw.close()
