"""Redis over TLS with an ACL user: the CA, the client certificate and hostname checking as an
operator sets them, what happens when one is wrong, and what the README's ACL user may not do.

The server (``redis_tls``, once per session) speaks TLS only to Penny, asks for a client
certificate, and has a throwaway CA made by the test with openssl. The store contract runs on it
too (test_store_contract.py and friends).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from proxy_core.errors import ConfigurationError, StoreError
from proxy_core.settings import load_settings
from proxy_core.stores.redis import RedisStore
from proxy_core.stores.redis_connect import RedisOptions
from tests.redis_targets import (
    ACL_PASSWORD,
    ACL_USER,
    LocalCluster,
    TlsRedis,
    make_certificates,
    require_redis_tools,
)

pytestmark = pytest.mark.redis


@pytest.fixture
def opened() -> Iterator[list[RedisStore]]:
    stores: list[RedisStore] = []
    yield stores
    for store in stores:
        store.close()


def ping(url: str, options: RedisOptions, opened: list[RedisStore]) -> None:
    store = RedisStore.from_url(url, options=options, timeout_s=2.0)
    opened.append(store)
    store.ping()


def test_the_test_ca_and_a_client_certificate_reach_the_server(redis_tls: TlsRedis, opened: list[RedisStore]) -> None:
    ping(redis_tls.url(), redis_tls.options(), opened)


@pytest.mark.parametrize(("case", "changes"), [
    ("an unknown CA", {"ca_file": "other-ca.crt"}),
    ("no client certificate", {"cert_file": None, "key_file": None}),
])  # fmt: skip
def test_a_wrong_trust_setting_is_a_store_error_quickly_without_the_password(
    redis_tls: TlsRedis, opened: list[RedisStore], case: str, changes: dict[str, Any]
) -> None:
    changes = {k: (str(redis_tls.certs[v]) if isinstance(v, str) else v) for k, v in changes.items()}
    started = time.monotonic()
    with pytest.raises(StoreError) as raised:
        ping(redis_tls.url(), redis_tls.options(**changes), opened)
    assert time.monotonic() - started < 5, case
    assert ACL_PASSWORD not in str(raised.value)


def test_the_hostname_is_checked_unless_turned_off(redis_tls: TlsRedis, opened: list[RedisStore]) -> None:
    # The server's certificate names localhost only.
    with pytest.raises(StoreError, match=r"match|certificate"):
        ping(redis_tls.url("127.0.0.1"), redis_tls.options(), opened)
    ping(redis_tls.url("127.0.0.1"), redis_tls.options(check_hostname=False), opened)


def test_a_wrong_password_is_refused_and_never_shown(redis_tls: TlsRedis, opened: list[RedisStore]) -> None:
    wrong = "n0t-the-p4ssword"
    with pytest.raises(StoreError) as raised:
        ping(redis_tls.url(password=wrong), redis_tls.options(), opened)
    assert wrong not in str(raised.value) and "AuthenticationError" in str(raised.value)


def test_tls_files_with_a_plain_url_are_refused_rather_than_ignored(redis_tls: TlsRedis) -> None:
    with pytest.raises(ConfigurationError, match="not rediss"):
        RedisStore.from_url(f"redis://localhost:{redis_tls.tls_port}/0", options=redis_tls.options())


def test_the_readme_acl_user_can_do_nothing_else(redis_tls: TlsRedis) -> None:
    options = redis_tls.options()
    client = redis.Redis(host="localhost", port=redis_tls.tls_port, username=ACL_USER, password=ACL_PASSWORD,
                         ssl=True, ssl_ca_certs=options.ca_file, ssl_certfile=options.cert_file,
                         ssl_keyfile=options.key_file, socket_timeout=2)
    try:
        client.set("penny-test-acl:probe", "1")  # its own keys
        for forbidden in (lambda: client.flushall(), lambda: client.config_get("*"), lambda: client.keys("*"),
                          lambda: client.get("someone-else:key"), lambda: client.eval("return 1", 0)):
            with pytest.raises(redis.exceptions.NoPermissionError):
                forbidden()
        client.delete("penny-test-acl:probe")
    finally:
        client.close()


def test_the_settings_reach_the_store(redis_tls: TlsRedis, monkeypatch: pytest.MonkeyPatch) -> None:
    options = redis_tls.options()
    monkeypatch.setenv("PENNY_STORE_URL", redis_tls.url())
    monkeypatch.setenv("PENNY_REDIS_CA_FILE", str(options.ca_file))
    monkeypatch.setenv("PENNY_REDIS_CERT_FILE", str(options.cert_file))
    monkeypatch.setenv("PENNY_REDIS_KEY_FILE", str(options.key_file))
    settings = load_settings(_env_file=None)
    assert ACL_PASSWORD not in repr(settings)
    store = settings.open_store()
    try:
        store.ping()
    finally:
        store.close()
    monkeypatch.setenv("PENNY_STORE_URL", redis_tls.url("127.0.0.1"))
    monkeypatch.setenv("PENNY_REDIS_CHECK_HOSTNAME", "false")
    store = load_settings(_env_file=None).open_store()
    try:
        store.ping()
    finally:
        store.close()


@pytest.mark.parametrize(("env", "problem"), [
    ({"PENNY_STORE_URL": "redis://localhost:6379/0", "PENNY_REDIS_CA_FILE": "ca.crt"}, "not rediss"),
    ({"PENNY_STORE_URL": "rediss://localhost:6379/0", "PENNY_REDIS_CERT_FILE": "client.crt"}, "go together"),
    ({"PENNY_STORE_URL": "rediss://localhost:6379/0", "PENNY_REDIS_CA_FILE": "missing.crt"}, "does not exist"),
    ({"PENNY_REDIS_WAIT_TIMEOUT_MS": "5000"}, "below PENNY_STORE_TIMEOUT_S"),
    ({"PENNY_REDIS_WAIT_REPLICAS": "-1"}, "PENNY_REDIS_WAIT_REPLICAS"),
])  # fmt: skip
def test_bad_redis_settings_are_named(redis_tls: TlsRedis, monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
                                      problem: str) -> None:
    monkeypatch.chdir(redis_tls.certs["ca.crt"].parent)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError, match=problem):
        load_settings(_env_file=None)


def test_a_cluster_url_is_a_known_store_and_its_password_is_masked() -> None:
    settings = load_settings(_env_file=None, store_url="rediss+cluster://penny:s3cret@10.0.0.1:7000,10.0.0.2:7000")
    assert "s3cret" not in repr(settings) and "10.0.0.2:7000" in repr(settings)


def test_a_tls_cluster_is_reached_with_rediss_cluster(tmp_path: Path) -> None:
    require_redis_tools()
    # A cluster announces its nodes by IP address: their certificate must name it (or, less safely,
    # PENNY_REDIS_CHECK_HOSTNAME=false).
    certs = make_certificates(tmp_path / "tls", server_names="DNS:localhost,IP:127.0.0.1")
    with LocalCluster(tmp_path / "cluster", replicas=0, tls=certs) as cluster:
        options = RedisOptions(ca_file=str(certs["ca.crt"]), cert_file=str(certs["client.crt"]),
                               key_file=str(certs["client.key"]))
        store = RedisStore.from_url(cluster.url(tls=True), options=options, namespace="penny-test-tls-cluster")
        try:
            store.ping()  # every primary, over TLS
            for ws in ("T01", "T02", "T03", "T04"):
                assert store.admit(ws, "r1", ttl_s=60, buckets=[], lines=[], amount=1, breaker=None).state == "admitted"
            assert store.admit("T01", "r1", ttl_s=60, buckets=[], lines=[], amount=1,
                               breaker=None).state == "in_flight"
        finally:
            store.close()
        with pytest.raises(StoreError):  # the plain URL on the TLS ports: no TLS handshake, no cluster
            RedisStore.from_url(cluster.url(tls=True).replace("rediss+", "redis+"), timeout_s=1.0).ping()
