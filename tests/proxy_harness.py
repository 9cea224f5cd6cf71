"""The proxy's WSGI app over a real gateway and the fake OpenAI upstream, served in-process on a
loopback wsgiref server so the real ``openai`` SDK can talk to it."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import openai
from prometheus_client import CollectorRegistry

from bot.proxy.app import ProxyApp
from bot.proxy.keys import KeyRing
from proxy_core import Gateway, ManualClock, Metrics, PennySettings, Store
from proxy_core.upstream import OpenAIUpstream
from tests.fake_openai import FakeOpenAI

API_KEY = "sk-upstream-DoNotEcho-42"


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class Proxy:
    """A gateway, a key ring and the proxy app on one store, served at :attr:`base_url`."""

    def __init__(self, store: Store, fake: FakeOpenAI, clock: ManualClock, **overrides: Any) -> None:
        params: dict[str, Any] = {"openai_api_key": API_KEY, "openai_base_url": fake.base_url,
                                  "request_timeout_s": 2.0, "requests_per_minute": 0, "tokens_per_minute": 0}
        params.update(overrides)
        settings = PennySettings(**params)
        self.store = store
        self.clock = clock
        self.gateway = Gateway(settings, store=store, metrics=Metrics(CollectorRegistry()),
                               upstream=OpenAIUpstream(api_key=API_KEY, base_url=fake.base_url, timeout_s=2.0),
                               clock=clock, wall=clock, sleep=clock.sleep, rand=lambda: 0.5)
        self.keys = KeyRing(store, clock=clock)
        self.app = ProxyApp(self.gateway, self.keys, clock=clock)
        self._server: WSGIServer = make_server("127.0.0.1", 0, self.app, handler_class=_Quiet)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.01},
                                        daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}/v1"

    def client(self, key: str) -> openai.OpenAI:
        return openai.OpenAI(api_key=key, base_url=self.base_url, max_retries=0, timeout=10.0)

    def close(self) -> None:
        self._server.shutdown()
        self._thread.join(timeout=5)
        self._server.server_close()
        self.gateway.close()


@contextmanager
def serve_proxy(store: Store, fake: FakeOpenAI, clock: ManualClock, **overrides: Any) -> Iterator[Proxy]:
    proxy = Proxy(store, fake, clock, **overrides)
    try:
        yield proxy
    finally:
        proxy.close()


def http(method: str, url: str, *, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    """One raw request (for what the SDK will not send): the status and the JSON body."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
