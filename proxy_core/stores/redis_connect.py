"""Opening the Redis client a store URL names: one server or a cluster, plain or TLS, with a user.

URLs (``PENNY_STORE_URL``)::

    redis://[user:password@]host:port/db          one server (also unix:///path.sock?db=0)
    rediss://[user:password@]host:port/db         one server over TLS
    redis+cluster://[user:password@]host:port[,host:port…]     a Redis Cluster; any one node is
    rediss+cluster://[user:password@]host:port[,host:port…]    enough, the client finds the rest

TLS files and hostname checking come from :class:`RedisOptions` (``PENNY_REDIS_CA_FILE``,
``PENNY_REDIS_CERT_FILE``, ``PENNY_REDIS_KEY_FILE``, ``PENNY_REDIS_CHECK_HOSTNAME``), not from the
URL, so a URL stays short enough to paste and its password is the only secret in it.

The client's retries are deliberately few: one immediate retry of a command whose connection
dropped, so a store call fails within its timeout (and the gateway refuses or spools) rather than
riding out a failover inside a Slack question. A cluster client asks the cluster for its new
layout after such an error, so the calls after a failover reach the promoted replica.

Commands to one server are packed by :class:`HiredisPacker`: redis-py's own packer runs each argument through a
Python encoder first, which for a script call's 40–70 arguments cost a penny proxy worker a
quarter of a cache hit's CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import hiredis
import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry

from proxy_core.errors import ConfigurationError

__all__ = [
    "CLUSTER_SCHEMES", "TLS_SCHEMES", "ClusterUrl", "HiredisPacker", "RedisOptions", "client_password", "connect",
    "parse_cluster_url",
]

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
TLS_SCHEMES = ("rediss", "rediss+cluster")
_URL_HELP = "expected redis://[user:password@]host:port/db or redis+cluster://[user:password@]host:port[,host:port…]"


@dataclass(frozen=True, slots=True)
class RedisOptions:
    """How to reach Redis beyond its URL. The defaults suit a Redis on the same host.

    ``ca_file``/``cert_file``/``key_file``: PEM files for TLS (``rediss://``): the CA that signed
    the server's certificate (unset = the system's CAs), and a client certificate and key when
    the server asks for one. ``check_hostname``: the server's certificate must name the host in
    the URL. ``wait_replicas``: a write that moves money (admit, settle, an interrupted call's
    charge) counts as done only once this many replicas have it (``WAIT``), within
    ``wait_timeout_ms``; otherwise it is refused or spooled like any store failure. 0 = don't wait.
    """

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    check_hostname: bool = True
    wait_replicas: int = 0
    wait_timeout_ms: int = 100

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigurationError("Redis TLS: a client certificate needs its key, and a key its certificate")
        if self.wait_replicas < 0 or self.wait_timeout_ms < 1:
            raise ConfigurationError("Redis WAIT: replicas must be 0 or more and the timeout at least 1 ms")

    @property
    def has_tls_files(self) -> bool:
        return any(f is not None for f in (self.ca_file, self.cert_file, self.key_file))


@dataclass(frozen=True, slots=True)
class ClusterUrl:
    """A ``redis+cluster://`` URL, taken apart."""

    tls: bool
    nodes: tuple[tuple[str, int], ...]
    username: str | None
    password: str | None


def parse_cluster_url(url: str) -> ClusterUrl:
    """The parts of ``redis+cluster://[user:password@]host:port[,host:port…][/0]``.

    Errors never echo the URL: it may carry a password.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in CLUSTER_SCHEMES:
        raise ConfigurationError(f"PENNY_STORE_URL: not a Redis Cluster URL; {_URL_HELP}")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    if query or path not in ("", "0"):
        raise ConfigurationError("PENNY_STORE_URL: a Redis Cluster has only database 0 and takes no options in the URL")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    nodes: list[tuple[str, int]] = []
    for node in hosts.split(","):
        host, colon, port = node.strip().rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigurationError(f"PENNY_STORE_URL: every cluster node needs host:port; {_URL_HELP}")
        nodes.append((host, int(port)))
    return ClusterUrl(scheme.lower() == "rediss+cluster", tuple(nodes), username, password)


def _tls_kwargs(options: RedisOptions, tls: bool) -> dict[str, Any]:
    if not tls:
        if options.has_tls_files:
            raise ConfigurationError(
                "PENNY_REDIS_CA_FILE/CERT_FILE/KEY_FILE are set but PENNY_STORE_URL is not rediss:// "
                "or rediss+cluster://: the connection would not use TLS"
            )
        return {}
    kwargs: dict[str, Any] = {"ssl_cert_reqs": "required", "ssl_check_hostname": options.check_hostname}
    if options.ca_file is not None:
        kwargs["ssl_ca_certs"] = options.ca_file
    if options.cert_file is not None:
        kwargs["ssl_certfile"] = options.cert_file
        kwargs["ssl_keyfile"] = options.key_file
    return kwargs


class HiredisPacker:
    """Packs a command with one call to ``hiredis.pack_command``, which encodes str (UTF-8), bytes,
    int and float itself, byte for byte as redis-py's packer does after its per-argument encoder.
    Anything else (bool, memoryview, …) goes to redis-py's own packer, with its errors."""

    def __init__(self) -> None:
        # redis-py's own serializer, for what hiredis refuses: internals of redis-py (5.x-8.x), so
        # ``hiredis_packer`` falls back to redis-py's default packer wherever they are missing.
        from redis._parsers import Encoder
        from redis.connection import HiredisRespSerializer, PythonRespSerializer

        encoder = Encoder("utf-8", "strict", True)  # type: ignore[no-untyped-call]  # every store client's encoding
        self._fallback = HiredisRespSerializer(  # type: ignore[no-untyped-call]
            PythonRespSerializer(6000, encoder.encode).pack, encoder.encode)

    def pack(self, *args: Any) -> list[bytes]:
        name = args[0]
        if isinstance(name, str):
            head = tuple(name.encode().split())  # "SCRIPT LOAD" is two words on the wire
        elif b" " in name:
            head = tuple(name.split())
        else:
            head = (name,)
        try:
            return [hiredis.pack_command(head + args[1:])]
        except TypeError:
            return list(self._fallback.pack(*args))


def hiredis_packer() -> HiredisPacker | None:
    """A :class:`HiredisPacker`, or None (redis-py's default packer) where this redis-py lacks the
    internals it builds on."""
    try:
        return HiredisPacker()
    except (ImportError, AttributeError, TypeError):
        return None


def connect(url: str, options: RedisOptions, *, timeout_s: float, max_connections: int) -> redis.Redis | RedisCluster:
    """A client for ``url``: :class:`redis.Redis` for one server, :class:`RedisCluster` for a cluster.

    A cluster client reads the cluster's layout from the first node that answers, so it fails
    here (a ``redis.RedisError``) when none does; a one-server client connects on first use.
    """
    common: dict[str, Any] = {
        "decode_responses": True,
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        # A bot runs a thread per question in flight: they wait (up to the timeout) for one of a
        # bounded set of connections (per node) instead of failing once the pool is full.
        "max_connections": max_connections,
        "timeout": timeout_s,
    }
    scheme = url.partition("://")[0].lower()
    if scheme in CLUSTER_SCHEMES:
        parts = parse_cluster_url(url)
        cluster_kwargs: dict[str, Any] = {
            "username": parts.username,
            "password": parts.password,
            "connection_pool_class": redis.BlockingConnectionPool,
            **({"ssl": True} if parts.tls else {}),
            **_tls_kwargs(options, parts.tls),
            **common,
        }
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in parts.nodes],  # type: ignore[no-untyped-call]
            # One immediate retry after a dropped connection or a moved primary, once the
            # client has asked the cluster for its layout again (see the module docstring).
            retry=Retry(NoBackoff(), 1),
            # Start (and keep serving the healthy slots) while one shard is failing over.
            require_full_coverage=False,
            **cluster_kwargs,
        )
    try:
        pool = redis.BlockingConnectionPool.from_url(
            url,
            health_check_interval=30,
            # One immediate retry on a dropped connection (a pooled socket the server closed).
            # Never on a timeout: the script may have run, and a store call must fail within
            # its timeout rather than redis-py's default ten backed-off attempts.
            retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
            **({"command_packer": packer} if (packer := hiredis_packer()) else {}),  # a cluster client takes none
            **_tls_kwargs(options, scheme in TLS_SCHEMES),
            **common,
        )
    except ValueError as exc:
        # The URL is not echoed: it may carry a password.
        raise ConfigurationError(f"PENNY_STORE_URL: not a valid Redis URL; {_URL_HELP}") from exc
    return redis.Redis(connection_pool=pool)


def client_password(client: redis.Redis | RedisCluster) -> str | None:
    """The password the client authenticates with, so errors can mask it."""
    kwargs = (client.get_connection_kwargs()  # type: ignore[no-untyped-call]
              if isinstance(client, RedisCluster) else client.connection_pool.connection_kwargs)
    password = kwargs.get("password")
    return None if password is None else str(password)
