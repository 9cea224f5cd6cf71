"""``penny proxy``: the OpenAI-compatible endpoint on the bot's production HTTP stack.

The same gunicorn arbiter and gthread worker as ``penny run --http``
(:func:`bot.slack.server.run_arbiter`): N pre-forked workers, each request collected whole before a
thread takes it, bounded backlog and connections, a graceful ``SIGTERM``, ``/healthz``, ``/readyz``
and ``/metrics`` (summed over workers). Each worker opens its own gateway after the fork; workers
and replicas share keys, limits, budgets, the ledger and the answer cache through the store.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Literal, TextIO

from bot._cli_common import announce_new_store
from bot.proxy.app import ProxyApp
from bot.proxy.keys import PROXY_KEY_CACHE_S, KeyRing
from bot.slack.server import HTTPOptions, StoreReadiness, announce, ops_reply, run_arbiter
from proxy_core import ConfigurationError, Gateway, PennySettings, get_logger

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIEnvironment

__all__ = ["DEFAULT_PORT", "ProxyWorker", "serve_proxy"]

DEFAULT_PORT = 8787
API_PATH = "/v1"


class ProxyWorker:
    """One worker process's proxy: its gateway, the key ring on the gateway's store, the app."""

    def __init__(self, settings: PennySettings, *, metrics: Callable[[], bytes] | None,
                 cache_scope: Literal["user", "workspace"] = "user") -> None:
        self.gateway = Gateway.from_settings(settings)
        self.app = ProxyApp(self.gateway, KeyRing(self.gateway.store, cache_s=PROXY_KEY_CACHE_S),
                            cache_scope=cache_scope)
        self._metrics = metrics
        self._metrics_token = settings.metrics_token
        self._store_ready = StoreReadiness(self.gateway.store, "proxy_not_ready")

    def wsgi(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        metrics = self._metrics if self._may_scrape(environ) else None  # else: the API's own 404
        ops = ops_reply(environ, start_response, ready=self.ready, metrics=metrics)
        return ops if ops is not None else self.app(environ, start_response)

    def _may_scrape(self, environ: WSGIEnvironment) -> bool:
        """``/metrics`` on the API's port: the team's spend per model is not for every key holder,
        so only a peer on this host (a Prometheus agent, ``curl`` in the container) or the bearer of
        ``PENNY_METRICS_TOKEN`` reads it. A reverse proxy on the same host must forward ``/v1/``
        only, or its clients would all be loopback peers."""
        if environ.get("PATH_INFO") != "/metrics":
            return True
        if self._metrics_token is not None:
            sent = str(environ.get("HTTP_AUTHORIZATION", ""))
            expected = f"Bearer {self._metrics_token.get_secret_value()}"
            if hmac.compare_digest(sent.encode(), expected.encode()):
                return True
        try:
            return ipaddress.ip_address(str(environ.get("REMOTE_ADDR", "")).removeprefix("::ffff:")).is_loopback
        except ValueError:  # a Unix socket, or no peer address at all
            return False

    def ready(self) -> str | None:
        return self._store_ready.problem()

    def pending(self) -> int:
        # A request is answered on its own thread: gunicorn's open connections count it (a streamed
        # call whose client left is waited for in close(), not counted here: those whose client is
        # still there would count twice in the workers' balance).
        return 0

    def close(self, timeout_s: float) -> None:
        """Requests are answered on the request's own thread, and gunicorn has finished them by now;
        a streamed call whose client left may still be running: it is paid for, so it is waited
        for (up to ``timeout_s``) to be settled before the gateway closes."""
        left = self.app.streams.wait(timeout_s)
        if left:
            get_logger().warning("proxy_streams_cut", running=left)
        self.gateway.close()


def serve_proxy(settings: PennySettings, options: HTTPOptions, *, out: TextIO,
                cache_scope: Literal["user", "workspace"] = "user") -> int:
    """Run the proxy until SIGTERM or SIGINT; the arbiter's exit status."""
    if settings.openai_api_key is None:
        raise ConfigurationError("OPENAI_API_KEY: penny proxy calls the LLM for its clients and needs the key")
    announce_new_store(settings)
    store = settings.open_store()  # an unreachable store fails here, before a port is bound
    try:
        store.ping()
    finally:
        store.close()

    def on_listening(url: str) -> None:
        workers = f"{options.workers} worker{'s' if options.workers != 1 else ''}"
        announce(out, f"Penny proxy is listening on {url} ({workers}); point an OpenAI client's base_url there "
                      "with a key from penny keys create. SIGTERM stops it gracefully.")

    return run_arbiter(options, lambda render: ProxyWorker(settings, metrics=render, cache_scope=cache_scope),
                       on_listening, out=out, metrics_port=settings.metrics_port, url_path=API_PATH)
