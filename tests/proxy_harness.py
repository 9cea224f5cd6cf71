"""``penny proxy`` for tests and benchmarks: the WSGI app over a real gateway and the fake OpenAI
upstream, served in-process on a loopback wsgiref server (:class:`Proxy`), or the documented command
in a subprocess on the production stack (:class:`ProxyProcess`); the real ``openai`` SDK talks to either."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socketserver
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import openai
from prometheus_client import CollectorRegistry

from bot.proxy.app import ProxyApp
from bot.proxy.keys import KeyRing
from proxy_core import Gateway, ManualClock, Metrics, PennySettings, Store
from proxy_core.upstream import OpenAIUpstream
from tests.fake_openai import FakeOpenAI

API_KEY = "sk-upstream-DoNotEcho-42"
ROOT = Path(__file__).resolve().parents[1]


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    """One thread per request, as gunicorn's threads serve concurrent clients (tests of concurrent calls)."""

    daemon_threads = True
    request_queue_size = 128  # socketserver's 5 would refuse a burst of concurrent clients


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
                               upstream=OpenAIUpstream(api_key=API_KEY, base_url=fake.base_url,
                                                        timeout_s=settings.request_timeout_s),
                               clock=clock, wall=clock, sleep=clock.sleep, rand=lambda: 0.5)
        self.keys = KeyRing(store, clock=clock)
        self.app = ProxyApp(self.gateway, self.keys, clock=clock)
        self._server: WSGIServer = make_server("127.0.0.1", 0, self.app, server_class=_ThreadingServer,
                                               handler_class=_Quiet)
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


ROOT = Path(__file__).resolve().parents[1]
UPSTREAM_KEY = "sk-test-proxy-0123456789abcdef"
_LISTENING = re.compile(r"listening on (http://\S+)")


def proxy_env(tmp: Path, openai_url: str, store_url: str | None = None) -> dict[str, str]:
    """The environment of a ``penny proxy`` process: the fake upstream, a store in ``tmp`` (or
    ``store_url``), no rate limits; nothing of this process's Penny settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PENNY_", "SLACK_", "OPENAI_"))}
    env.update({"PYTHONPATH": str(ROOT), "OPENAI_API_KEY": UPSTREAM_KEY, "OPENAI_BASE_URL": openai_url,
                "PENNY_STORE_URL": store_url or f"sqlite:///{tmp / 'penny.db'}", "PENNY_SPOOL_DIR": str(tmp / "spool"),
                "PENNY_REQUESTS_PER_MINUTE": "0", "PENNY_TOKENS_PER_MINUTE": "0", "PENNY_LOG_LEVEL": "INFO"})
    return env


class ProxyProcess:
    """``penny proxy`` (the documented command) on a free port; returns once every worker is ready."""

    def __init__(self, env: dict[str, str], cwd: Path, *, workers: int = 1) -> None:
        self.err = cwd / "proxy.err"
        with self.err.open("w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "bot.cli", "proxy", "--port", "0",
                                          "--workers", str(workers)],
                                         env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=err,
                                         stdin=subprocess.DEVNULL, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        assert self.proc.stdout is not None
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()
        self.url = ""
        deadline = time.monotonic() + 60
        ready = 0
        while not self.url or ready < workers:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"penny proxy did not start: {self.err.read_text()[-2000:]}") from None
            found = _LISTENING.search(line)
            self.url = found.group(1) if found else self.url
            ready += line.count("Penny worker")
        self.root = self.url.removesuffix("/v1")

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line)

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.root + path, timeout=10) as reply:
                return reply.status, reply.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)
