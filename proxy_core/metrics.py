"""Prometheus metrics for the gateway.

Labels are low-cardinality and carry no identity or secret: never a user ID, workspace ID, request
ID or key. Who spent what lives in the ledger, not in metrics. Each :class:`Metrics` may get its own
registry so tests (and several gateways in one process) do not collide.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = ["BREAKER_STATES", "Metrics", "serve_metrics"]

BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "penny_requests", "Gateway requests by kind, outcome and cache status.",
            ["kind", "outcome", "cache"], registry=r,
        )
        self.tokens = Counter(
            "penny_tokens", "LLM tokens billed, by kind and type (prompt, cached_prompt, completion).",
            ["kind", "type"], registry=r,
        )
        self.spent = Counter(
            "penny_spent_microdollars", "Money spent upstream, in micro-dollars.", ["kind", "model"], registry=r
        )
        self.saved = Counter(
            "penny_saved_microdollars", "Money the cache saved, in micro-dollars.", ["kind"], registry=r
        )
        self.upstream_latency = Histogram(
            "penny_upstream_latency_seconds", "Latency of successful upstream calls (all attempts).",
            ["kind"], registry=r,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64),
        )
        self.upstream_failures = Counter(
            "penny_upstream_failures",
            "Failed upstream attempts that signal an outage (retried while allowed), by reason.",
            ["kind", "reason"], registry=r,
        )
        # Summed over live workers: a dead worker's spool is adopted by another, so its count must
        # go with it (in multiprocess mode; one process ignores the mode).
        self.spooled = Gauge(
            "penny_ledger_spooled", "Paid calls' ledger writes waiting in the spools of live processes for the store.",
            registry=r, multiprocess_mode="livesum",
        )
        # The breaker is one, shared through the store: the newest state any live worker saw, never a
        # dead worker's last (an "open" that would outlive it).
        self.breaker_state = Gauge(
            "penny_breaker_state", "Circuit breaker state as last seen: 0 closed, 1 half-open, 2 open.",
            registry=r, multiprocess_mode="livemostrecent",
        )
        self.refusals = Counter(
            "penny_refusals", "Requests refused before upstream, by reason.", ["reason"], registry=r
        )


def serve_metrics(metrics: Metrics, port: int, addr: str = "127.0.0.1") -> None:
    """Expose ``/metrics`` on ``addr:port`` from a daemon thread."""
    start_http_server(port, addr=addr, registry=metrics.registry)
