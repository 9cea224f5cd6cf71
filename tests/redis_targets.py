"""The Redis deployments the store contract runs against, started on loopback by the tests.

- :class:`LocalCluster`: a Redis Cluster of ``redis-server`` processes (3 primaries + 3 replicas by
  default) joined with ``redis-cli --cluster create``, as an operator would run one.
- :class:`TlsRedis`: one ``redis-server`` that speaks only TLS to Penny, with a throwaway CA, a
  server certificate for ``localhost`` and a client certificate, all made here with ``openssl``.

Both can carry the ACL user the README ships (:func:`readme_acl`), so the contract suite proves
that those commands are all Penny needs. :class:`RedisTarget` is what a test opens a store with.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
import redis

from proxy_core.clock import Clock
from proxy_core.stores.redis import RedisStore
from proxy_core.stores.redis_connect import RedisOptions
from tests.redis_server import RedisServer

__all__ = [
    "ACL_PASSWORD",
    "ACL_USER",
    "EVERY_BACKEND",
    "LocalCluster",
    "RedisTarget",
    "TlsRedis",
    "make_certificates",
    "readme_acl",
    "redis_target",
    "require_redis_tools",
]

ROOT = Path(__file__).resolve().parent.parent
ACL_USER = "penny"
ACL_PASSWORD = "acl-test-p4ss"
# Every test namespace starts with this; the README's key pattern (~penny:*) is narrowed to it.
TEST_KEY_PATTERN = "~penny-test-*"
_CLUSTER_READY_TIMEOUT_S = 30.0

# The contract modules run against all of these (the rest of the suite: SQLite and plain Redis).
EVERY_BACKEND = [
    "sqlite",
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("redis_cluster", marks=pytest.mark.redis),
    pytest.param("redis_tls", marks=pytest.mark.redis),
]


@dataclass(frozen=True)
class RedisTarget:
    """Where a Redis store lives and how to reach it: its URL and its TLS / WAIT options."""

    url: str
    options: RedisOptions = field(default_factory=RedisOptions)

    def open(self, *, clock: Clock | None = None, namespace: str = "penny", **kwargs: Any) -> RedisStore:
        return RedisStore.from_url(self.url, clock=clock, namespace=namespace, options=self.options, **kwargs)


def require_redis_tools() -> None:
    """Skip the calling test when redis-server, redis-cli or openssl is missing; fail under CI=true."""
    if any(shutil.which(tool) is None for tool in ("redis-server", "redis-cli", "openssl")):
        message = "redis-server, redis-cli and openssl are needed for the cluster and TLS stores"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def redis_target(request: pytest.FixtureRequest, backend: str) -> RedisTarget:
    """The target of a Redis backend of the ``store`` fixture (redis, redis_cluster, redis_tls)."""
    if backend == "redis":
        return RedisTarget(request.getfixturevalue("redis_url"))
    target: RedisTarget = request.getfixturevalue(f"{backend}_target")
    return target


def readme_acl() -> list[str]:
    """The README's ``ACL SETUSER penny …`` line as arguments, with the test password and key pattern."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith(f"ACL SETUSER {ACL_USER} ")]
    if len(lines) != 1:
        raise AssertionError(f"README.md must hold exactly one 'ACL SETUSER {ACL_USER} …' line, found {len(lines)}")
    words = lines[0].split()[3:]
    return [f">{ACL_PASSWORD}" if w.startswith(">") else TEST_KEY_PATTERN if w.startswith("~") else w for w in words]


def _admin(port: int, **kwargs: Any) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5, socket_connect_timeout=5, decode_responses=True,
                       **kwargs)


class LocalCluster:
    """``primaries`` × (1 + ``replicas``) cluster nodes on loopback; see the module docstring.

    ``node_timeout_ms`` is how long a primary may be unreachable before its replica takes over.
    ``acl``: arguments of an ``ACL SETUSER`` applied on every node (the default user stays open
    for the test's own administration). ``tls``: certificates from :func:`make_certificates`; the
    nodes then also listen on TLS ports, talk TLS among themselves, and announce their TLS ports
    to clients (``url(tls=True)``); the plain ports stay for the test's own administration.
    """

    def __init__(
        self,
        directory: Path | None = None,
        *,
        primaries: int = 3,
        replicas: int = 1,
        node_timeout_ms: int = 1000,
        acl: Sequence[str] = (),
        options: Sequence[str] = (),
        tls: dict[str, Path] | None = None,
    ) -> None:
        if shutil.which("redis-cli") is None:
            raise RuntimeError("redis-cli is not installed")
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if directory is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="penny-cluster-")
            directory = Path(self._tmp.name)
        self.directory = directory
        self.primaries, self.replicas = primaries, replicas
        self.node_timeout_ms = node_timeout_ms
        self.acl = list(acl)
        self.tls = tls
        self.nodes = [
            RedisServer(
                directory / f"node{i}",
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(node_timeout_ms),
                # A replica starts syncing at once, not after the default 5 s wait for others.
                "--repl-diskless-sync-delay", "0",
                *(self._tls_options() if tls else ()),
                *options,
                port_options=("--cluster-port", "--tls-port") if tls else ("--cluster-port",),
            )
            for i in range(primaries * (1 + replicas))
        ]

    @property
    def tls_ports(self) -> list[int]:
        return [node.option_ports["--tls-port"] for node in self.nodes if "--tls-port" in node.option_ports]

    def _tls_options(self) -> list[str]:
        assert self.tls is not None
        return ["--tls-cluster", "yes", "--tls-replication", "yes",
                "--tls-cert-file", str(self.tls["server.crt"]), "--tls-key-file", str(self.tls["server.key"]),
                "--tls-ca-cert-file", str(self.tls["ca.crt"]), "--tls-auth-clients", "optional"]

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes if node.port is not None]

    def url(self, *, user: str | None = None, password: str | None = None, nodes: int = 1, tls: bool = False) -> str:
        """``redis+cluster://`` naming the first ``nodes`` nodes (one is enough to find the rest);
        ``rediss+cluster://`` on their TLS ports with ``tls``."""
        auth = f"{user or ''}:{password}@" if password else ""
        scheme, ports = ("rediss+cluster", self.tls_ports) if tls else ("redis+cluster", self.ports)
        return f"{scheme}://{auth}" + ",".join(f"127.0.0.1:{port}" for port in ports[:nodes])

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        tls_flags: list[str] = []
        addresses = [f"127.0.0.1:{port}" for port in self.ports]
        if self.tls:
            tls_flags = ["--tls", "--cacert", str(self.tls["ca.crt"]), "--cert", str(self.tls["client.crt"]),
                         "--key", str(self.tls["client.key"])]
            addresses = [f"127.0.0.1:{port}" for port in self.tls_ports]
        subprocess.run(
            ["redis-cli", *tls_flags, "--cluster", "create", *addresses, "--cluster-replicas", str(self.replicas),
             "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        self.wait_until_ready()
        for port in self.ports:
            if self.acl:
                _admin(port).execute_command("ACL", "SETUSER", ACL_USER, *self.acl)

    def wait_until_ready(self, timeout_s: float = _CLUSTER_READY_TIMEOUT_S) -> None:
        """Until every running node says the cluster is ok, agrees on who serves each slot, and
        every replica is in sync with its primary (polls other processes; bounded)."""
        deadline = time.monotonic() + timeout_s
        while not self._ready():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster in {self.directory} did not become ready in {timeout_s:.0f} s")
            time.sleep(0.05)

    def _ready(self) -> bool:
        layouts = set()
        try:
            for node in self.nodes:
                if not node.running or node.port is None:
                    continue
                client = _admin(node.port)
                try:
                    if "cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
                        return False
                    role = client.info("replication")
                    if role["role"] == "slave" and role.get("master_link_status") != "up":
                        return False
                    layouts.add(_slot_layout(client.execute_command("CLUSTER", "SLOTS")))
                finally:
                    client.close()
        except redis.RedisError:
            return False
        return len(layouts) == 1

    def primary_ports(self) -> list[int]:
        with self.admin() as client:
            return sorted({int(primary[1]) for _, _, primary, *_ in client.execute_command("CLUSTER", "SLOTS")})

    def port_of_key(self, key: str) -> int:
        """The port of the primary serving ``key``'s slot."""
        with self.admin() as client:
            slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
            for first, last, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if int(first) <= slot <= int(last):
                    return int(primary[1])
        raise AssertionError(f"no primary serves the slot of {key!r}")

    def node(self, port: int) -> RedisServer:
        return next(node for node in self.nodes if node.port == port)

    def admin(self) -> redis.Redis:
        """A plain client (default user) on a running node."""
        port = next(node.port for node in self.nodes if node.running and node.port is not None)
        return _admin(port)

    def close(self) -> None:
        for node in self.nodes:
            node.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> LocalCluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _slot_layout(slots: Any) -> tuple[tuple[int, int, int], ...]:
    return tuple(sorted((int(first), int(last), int(primary[1])) for first, last, primary, *_ in slots))


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certificates(directory: Path, *, server_names: str = "DNS:localhost") -> dict[str, Path]:
    """A throwaway CA, a server certificate for ``server_names`` and a client certificate, signed by
    it; and a second CA that signed nothing (a wrong trust anchor). Returns the files by role."""
    directory.mkdir(parents=True, exist_ok=True)
    for ca in ("ca", "other-ca"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.crt",
                 "-days", "2", "-subj", f"/CN=penny test {ca}", cwd=directory)
    (directory / "server.ext").write_text(f"subjectAltName={server_names}\n")
    (directory / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for who, subject in (("server", "/CN=localhost"), ("client", "/CN=penny")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{who}.key", "-out", f"{who}.csr",
                 "-subj", subject, cwd=directory)
        _openssl("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{who}.crt", "-days", "2", "-extfile", f"{who}.ext", cwd=directory)
    return {name: directory / f"{name}" for name in
            ("ca.crt", "other-ca.crt", "server.crt", "server.key", "client.crt", "client.key")}


class TlsRedis:
    """A ``redis-server`` whose TLS port asks for a client certificate; its plain port is for the
    test's own administration only. ``acl``: arguments of an ``ACL SETUSER`` for Penny's user."""

    def __init__(self, directory: Path, *, acl: Sequence[str] = ()) -> None:
        self.directory = directory
        self.certs = make_certificates(directory / "tls")
        self.acl = list(acl)
        self.server = RedisServer(
            directory / "redis",
            "--tls-cert-file", str(self.certs["server.crt"]),
            "--tls-key-file", str(self.certs["server.key"]),
            "--tls-ca-cert-file", str(self.certs["ca.crt"]),
            "--tls-auth-clients", "yes",
            port_options=("--tls-port",),
        )  # fmt: skip

    @property
    def tls_port(self) -> int:
        return self.server.option_ports["--tls-port"]

    def start(self) -> None:
        self.server.start()
        if self.acl:
            assert self.server.port is not None
            _admin(self.server.port).execute_command("ACL", "SETUSER", ACL_USER, *self.acl)

    def url(self, host: str = "localhost", *, user: str = ACL_USER, password: str = ACL_PASSWORD) -> str:
        return f"rediss://{user}:{password}@{host}:{self.tls_port}/0"

    def options(self, **changes: Any) -> RedisOptions:
        """Options that trust the test CA and present the client certificate; ``changes`` override."""
        values: dict[str, Any] = {"ca_file": str(self.certs["ca.crt"]), "cert_file": str(self.certs["client.crt"]),
                                  "key_file": str(self.certs["client.key"])}
        values.update(changes)
        return RedisOptions(**values)

    def close(self) -> None:
        self.server.close()
