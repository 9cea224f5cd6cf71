"""Shared fixtures: a manual clock, and the stores the contract suite runs against.

``store`` is parametrised over SQLite and Redis; both share the test's :class:`ManualClock`, so tests
move time with ``clock.advance(...)``. Redis runs against the real server at ``PENNY_TEST_REDIS_URL``
(default ``redis://127.0.0.1:6379/0``) inside a private key namespace that is deleted afterwards;
without a server those tests skip, or fail under ``CI=true``.

The store contract modules set ``STORES = tests.redis_targets.EVERY_BACKEND`` (see
:func:`pytest_generate_tests`), which adds a Redis Cluster (3 primaries + 3 replicas, started once
per session) and a TLS-only Redis with a client certificate (also once per session); both log
Penny in as the README's ACL user.

``fake`` is the fake OpenAI server and ``slack`` the fake Slack Web API, one each per test; ``make_gateway``
builds gateways on the test's store, clock and ``fake``. A module changes what they start from by
overriding a small fixture (``fake_answer``, ``gateway_settings``), never by redefining them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import uuid4

import pytest
from prometheus_client import CollectorRegistry

from proxy_core.alerts import BudgetAlert
from proxy_core.clock import ManualClock, Sleep
from proxy_core.gateway import Gateway
from proxy_core.metrics import Metrics
from proxy_core.settings import PennySettings
from proxy_core.stores.base import Store
from proxy_core.stores.redis_connect import RedisOptions
from proxy_core.stores.sqlite import SqliteStore
from proxy_core.upstream import OpenAIUpstream

if TYPE_CHECKING:  # tests.* is imported where used: plain ``pytest`` puts tests/, not the repo, on sys.path
    from tests.fake_openai import FakeOpenAI
    from tests.fake_slack import FakeSlack

GatewayFactory = Callable[..., Gateway]


@pytest.fixture(autouse=True)
def _spool_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Paid calls a test's store fails to record are spooled under its tmp_path, never in the repo
    (the default spool sits beside ``penny.db`` in the working directory)."""
    monkeypatch.setenv("PENNY_SPOOL_DIR", str(tmp_path / "penny-spool"))


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """What the ``penny`` command sees in a test: an empty working directory, no Penny, OpenAI or
    Slack variables, and a SQLite store in tmp_path (its URL is the value)."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.upper().startswith(("PENNY_", "OPENAI_", "SLACK_")):
            monkeypatch.delenv(name)
    url = f"sqlite:///{tmp_path / 'penny.db'}"
    monkeypatch.setenv("PENNY_STORE_URL", url)
    yield url
    # main() points structlog at the test's captured stderr; do not leave that to other tests.
    import structlog

    structlog.reset_defaults()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def fake_answer() -> str | None:
    """What ``fake`` answers every chat with; None is its own echo of the question. Override per module."""
    return None


@pytest.fixture
def fake(fake_answer: str | None) -> Iterator[FakeOpenAI]:
    """The fake OpenAI server over loopback (``tests.fake_openai``)."""
    from tests.fake_openai import FakeOpenAI

    with FakeOpenAI(answer=fake_answer) as server:
        yield server


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    """The fake Slack Web API over loopback (``tests.fake_slack``), as workspace T0PENNY with bot UPENNY."""
    from tests.fake_slack import FakeSlack

    with FakeSlack() as server:
        yield server


@pytest.fixture
def gateway_settings() -> dict[str, Any]:
    """Settings ``make_gateway`` puts over its defaults (before the call's own). Override per module."""
    return {}


@pytest.fixture
def make_gateway(store: Store, clock: ManualClock, fake: FakeOpenAI,
                 gateway_settings: dict[str, Any]) -> Iterator[GatewayFactory]:
    """``make_gateway(store_=None, *, sleep=None, on_budget_alert=None, waiting=None, **settings)``: a gateway on the
    test's store (or ``store_``), clock and fake OpenAI, with no rate limits, a 2 s timeout and retry
    jitter fixed at 0.5. After the test each one's cache is closed (its sync threads stop); the store
    fixtures close the stores."""
    from tests.fake_openai import API_KEY

    made: list[Gateway] = []

    def make(store_: Store | None = None, *, sleep: Sleep | None = None,
             on_budget_alert: Callable[[BudgetAlert], None] | None = None,
             waiting: Callable[[], AbstractContextManager[object]] = nullcontext, **overrides: Any) -> Gateway:
        params: dict[str, Any] = {
            "openai_api_key": API_KEY,
            "openai_base_url": fake.base_url,
            "request_timeout_s": 2.0,
            "requests_per_minute": 0,
            "tokens_per_minute": 0,
            **gateway_settings,
            **overrides,
        }
        settings = PennySettings(**params)
        key = settings.openai_api_key
        upstream = OpenAIUpstream(api_key=key.get_secret_value() if key is not None else None,
                                  base_url=fake.base_url, timeout_s=settings.request_timeout_s)
        gateway = Gateway(
            settings, store=store_ or store, upstream=upstream, metrics=Metrics(CollectorRegistry()),
            clock=clock, wall=clock, sleep=sleep or clock.sleep, rand=lambda: 0.5, on_budget_alert=on_budget_alert,
            waiting=waiting,
        )
        made.append(gateway)
        return gateway

    yield make
    for gateway in made:
        if gateway.cache is not None:
            gateway.cache.close()


@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "penny.db"


@pytest.fixture
def sqlite_store(sqlite_path: Path, clock: ManualClock) -> Iterator[SqliteStore]:
    store = SqliteStore(sqlite_path, clock=clock)
    yield store
    store.close()


def _redis_answers(url: str) -> bool:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get("PENNY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    if not _redis_answers(url):
        message = "Redis does not answer at PENNY_TEST_REDIS_URL (default redis://127.0.0.1:6379/0)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return url


@pytest.fixture
def redis_namespace() -> str:
    return f"penny-test-{uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A local Redis Cluster (3 primaries + 3 replicas) for the session, with the README's ACL user."""
    from tests.redis_targets import LocalCluster, readme_acl, require_redis_tools

    require_redis_tools()

    with LocalCluster(tmp_path_factory.mktemp("cluster"), acl=readme_acl()) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def redis_cluster_target(redis_cluster: Any) -> Any:
    """Penny on the session's cluster: the ACL user, and every write that moves money waits for a replica
    (up to 1 s: production's 100 ms is a latency budget that a loaded 2-core CI host can miss)."""
    from tests.redis_targets import ACL_PASSWORD, ACL_USER, RedisTarget

    return RedisTarget(redis_cluster.url(user=ACL_USER, password=ACL_PASSWORD),
                       RedisOptions(wait_replicas=1, wait_timeout_ms=1000))


@pytest.fixture(scope="session")
def redis_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A TLS-only Redis for the session (throwaway CA, client certificate, the README's ACL user)."""
    from tests.redis_targets import TlsRedis, readme_acl, require_redis_tools

    require_redis_tools()

    server = TlsRedis(tmp_path_factory.mktemp("tls"), acl=readme_acl())
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def redis_tls_target(redis_tls: Any) -> Any:
    from tests.redis_targets import RedisTarget

    return RedisTarget(redis_tls.url(), redis_tls.options())


def _opened_in_namespace(request: pytest.FixtureRequest, backend: str, clock: ManualClock) -> Iterator[Store]:
    from tests.redis_targets import redis_target

    target = redis_target(request, backend)
    namespace = request.getfixturevalue("redis_namespace")
    store = target.open(clock=clock, namespace=namespace)
    yield store
    store.close()
    cleanup = target.open(clock=clock, namespace=namespace)
    try:
        cleanup.delete_namespace()
    finally:
        cleanup.close()


@pytest.fixture
def redis_cluster_store(request: pytest.FixtureRequest, clock: ManualClock) -> Iterator[Store]:
    yield from _opened_in_namespace(request, "redis_cluster", clock)


@pytest.fixture
def redis_tls_store(request: pytest.FixtureRequest, clock: ManualClock) -> Iterator[Store]:
    yield from _opened_in_namespace(request, "redis_tls", clock)


@pytest.fixture
def redis_store(redis_url: str, redis_namespace: str, clock: ManualClock) -> Iterator[Store]:
    from proxy_core.stores.redis import RedisStore

    store = RedisStore.from_url(redis_url, clock=clock, namespace=redis_namespace)
    yield store
    store.close()
    # A fresh client cleans up, so a test may close (or break) its own store.
    cleanup = RedisStore.from_url(redis_url, clock=clock, namespace=redis_namespace)
    try:
        cleanup.delete_namespace()
    finally:
        cleanup.close()


@pytest.hookimpl(tryfirst=True)  # the mark must be there before pytest reads the parametrize marks
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A module that sets ``STORES`` (e.g. ``tests.redis_targets.EVERY_BACKEND``) runs its tests that
    take ``store`` on those backends instead of the default two (as if each were marked
    ``@pytest.mark.parametrize("store", STORES, indirect=True)``)."""
    stores = getattr(metafunc.module, "STORES", None)
    if stores is not None and "store" in metafunc.fixturenames:
        metafunc.definition.add_marker(pytest.mark.parametrize("store", stores, indirect=True))


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def store(request: pytest.FixtureRequest) -> Store:
    """Each backend in turn, on a fresh database / namespace."""
    backend: str = request.param
    result: Store = request.getfixturevalue(f"{backend}_store")
    return result


@pytest.fixture
def open_twin(request: pytest.FixtureRequest, store: Store, clock: ManualClock) -> Iterator[Callable[[], Store]]:
    """Open another store instance on the same backend data as ``store`` (same file / namespace).

    Stands in for a second process or replica; every twin opened is closed after the test.
    """
    backend = request.node.callspec.params["store"]
    opened: list[Store] = []

    def open_() -> Store:
        twin: Store
        if backend == "sqlite":
            twin = SqliteStore(request.getfixturevalue("sqlite_path"), clock=clock)
        else:
            from tests.redis_targets import redis_target

            namespace = request.getfixturevalue("redis_namespace")
            twin = redis_target(request, backend).open(clock=clock, namespace=namespace)
        opened.append(twin)
        return twin

    yield open_
    for twin in opened:
        twin.close()


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """One line per reason tests were skipped, with how many: without Redis that is one line, not one
    per test (pyproject's ``-r`` flags report failures and errors in full, skips through this hook)."""
    from collections import Counter

    reportchars = str(config.getoption("reportchars", default="") or "")
    if any(c in reportchars for c in "sSaA"):
        return  # asked for pytest's own line per skipped test
    reasons: Counter[str] = Counter()
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
        reasons[reason.removeprefix("Skipped: ")] += 1
    for reason, count in reasons.most_common():
        terminalreporter.write_line(f"SKIPPED [{count}] {reason}")
