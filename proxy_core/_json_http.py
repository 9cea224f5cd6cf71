"""A lean JSON-over-HTTP poster on kept-alive connections, for the gateway's hottest upstream call.

The openai SDK spends about a millisecond of CPU per request building and checking it (httpx, its
options, its hooks) — as much as the rest of a cache miss through ``penny proxy``. One
``http.client`` connection per thread, kept alive, does the same POST in a fifth of that. It only
sends and receives: the caller (:mod:`proxy_core.upstream`) translates every failure once, as it
does the SDK's. What it raises:

    JSONStatus            a response outside 2xx (status, headers, decoded body or its text)
    Unanswered            the whole request was sent and no whole response came back: a read
                          timeout, or the connection dropped (``__cause__`` says which)
    TimeoutError          connecting or sending took longer than ``timeout_s``
    OSError, HTTPException the connection failed before the request was wholly sent
    ValueError            a 2xx whose body is not JSON

``Unanswered`` is told apart because the provider bills such a request: it has the prompt and may
be writing the answer when the connection gives up on it. One that was never wholly sent it never saw.

A kept-alive connection idle longer than ``KEEPALIVE_S`` is not reused: a server closes idle
connections after its own keep-alive timeout (5 s for uvicorn or Node, more for nginx, load
balancers and OpenAI's edge), and a request sent as that close crosses it on the wire is never read,
yet fails as ``Unanswered``, charged for a prompt the provider never saw. The SDK's client, which
carries streams and embeddings, is given the same expiry (:mod:`proxy_core.upstream`). A POST that
fails so is not sent again here, as browsers do: it is not idempotent, and within the window a
connection that ends unanswered was not closed for idleness, so the server had the request; the
gateway's retry policy decides on another attempt.
"""

from __future__ import annotations

import http.client
import json
import select
import ssl
import threading
import urllib.request
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from proxy_core.clock import Clock, monotonic

__all__ = ["KEEPALIVE_S", "JSONPoster", "JSONStatus", "Unanswered", "direct_route"]

# Seconds a connection may sit idle and still be reused: under the shortest common server
# keep-alive timeout (5 s), with room for the request's way there.
KEEPALIVE_S = 4.0


class Unanswered(Exception):
    """The whole request went out and no whole response came back (``__cause__``: the timeout or
    the dropped connection). ``status`` is the response's status when its head arrived before the
    body broke off, else None."""

    def __init__(self, status: int | None) -> None:
        super().__init__("no answer" if status is None else f"HTTP {status}, body cut off")
        self.status = status


class JSONStatus(Exception):
    """A response outside 2xx: its ``status``, ``headers`` (names lower-case) and ``body`` (decoded
    JSON, else the text)."""

    def __init__(self, status: int, headers: Mapping[str, str], body: object) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.headers = dict(headers)
        self.body = body


def direct_route(url: str) -> bool:
    """Whether ``url`` is reached without a proxy (no ``HTTP(S)_PROXY``/``ALL_PROXY`` applies to it):
    the SDK honours those variables, and the poster does not, so the SDK keeps such routes."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    if not (proxies.get(parts.scheme) or proxies.get("all")):
        return True
    return bool(urllib.request.proxy_bypass(parts.hostname or ""))


class JSONPoster:
    """POSTs JSON to ``base_url`` + a path; one kept-alive connection per calling thread. A pooled
    connection the server has closed (or that has unread bytes), or one idle longer than
    ``KEEPALIVE_S`` by ``clock`` (monotonic), is replaced before it is used."""

    def __init__(self, base_url: str, *, headers: Mapping[str, str], timeout_s: float,
                 clock: Clock = monotonic) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url}")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._headers = {**headers, "Content-Type": "application/json", "Accept": "application/json"}
        self._timeout_s = timeout_s
        self._clock = clock
        self._ssl: ssl.SSLContext | None = _ssl_context() if self._https else None
        self._local = threading.local()
        self._open: set[http.client.HTTPConnection] = set()
        self._lock = threading.Lock()

    def post(self, path: str, body: Mapping[str, Any]) -> object:
        """The decoded JSON of a 2xx answer to ``body`` POSTed at ``path``."""
        data = json.dumps(body, separators=(",", ":")).encode("utf-8")
        connection = self._connection()
        status: int | None = None
        try:
            connection.request("POST", self._prefix + path, body=data, headers=self._headers)
        except BaseException:
            self._drop(connection)
            raise
        try:
            response = connection.getresponse()
            status = response.status
            payload = response.read()
        except (OSError, http.client.HTTPException) as exc:  # TimeoutError is an OSError
            self._drop(connection)
            raise Unanswered(status) from exc
        except BaseException:
            self._drop(connection)
            raise
        self._local.idle_since = self._clock()
        if not 200 <= response.status < 300:
            raise JSONStatus(response.status, {k.lower(): v for k, v in response.getheaders()}, _decoded(payload))
        return json.loads(payload)

    def close(self) -> None:
        with self._lock:
            connections, self._open = self._open, set()
        for connection in connections:
            connection.close()

    def _connection(self) -> http.client.HTTPConnection:
        connection: http.client.HTTPConnection | None = getattr(self._local, "connection", None)
        if connection is not None and connection.sock is not None and (
            self._clock() - self._local.idle_since > KEEPALIVE_S or _closed_by_peer(connection.sock)
        ):
            connection.close()  # reopened by the next request
        if connection is None:
            if self._https:
                connection = http.client.HTTPSConnection(self._host, self._port, timeout=self._timeout_s,
                                                         context=self._ssl)
            else:
                connection = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout_s)
            self._local.connection = connection
            with self._lock:
                self._open.add(connection)
        return connection

    def _drop(self, connection: http.client.HTTPConnection) -> None:
        connection.close()
        self._local.connection = None
        with self._lock:
            self._open.discard(connection)


def _closed_by_peer(sock: Any) -> bool:
    """An idle kept-alive socket is readable only when the server closed it (or broke protocol)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def _decoded(payload: bytes) -> object:
    text = payload.decode("utf-8", "replace").strip()
    try:
        return json.loads(text)
    except ValueError:
        return text


def _ssl_context() -> ssl.SSLContext:
    """Certificates as httpx (the SDK's client) finds them: certifi's bundle when installed."""
    try:
        import certifi
    except ImportError:
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=certifi.where())
