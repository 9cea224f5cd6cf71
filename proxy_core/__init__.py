"""proxy_core: the per-user LLM cost-control engine behind Penny.

This package's public surface is what it exports here; the modules behind it are its implementation
(as httpx exports its client from ``httpx/__init__.py``). The Slack bot (``bot/``) imports from
``proxy_core`` only: the gateway every LLM call goes through, its results and errors, the read side
of the cost controls (:class:`Accounts`: usage, headroom, budget status), settings, stores by URL,
and the few utilities a front end needs (logging, metrics, money formatting, token estimates).

    from proxy_core import Gateway, load_settings

    gateway = Gateway.from_settings(load_settings())
    result = gateway.chat(user_id="U1", workspace_id="T1", request_id="evt-1",
                          messages=[{"role": "user", "content": "How do I deploy?"}])
    print(result.content, result.cost_micros)
"""

from __future__ import annotations

from proxy_core.accounts import Accounts, BudgetStatus, Headroom
from proxy_core.alerts import BudgetAlert
from proxy_core.budget import BudgetLine, budget_lines
from proxy_core.cache import CacheAs
from proxy_core.clock import Clock, ManualClock, monotonic
from proxy_core.errors import (
    BudgetExceeded,
    CircuitOpen,
    ConfigurationError,
    PennyError,
    RateLimited,
    Refused,
    RequestInFlight,
    RequestInterrupted,
    StoreError,
    UpstreamError,
    UpstreamRejected,
)
from proxy_core.gateway import AnswerStream, ChatRequest, EmbedRequest, Gateway, ReplayReport
from proxy_core.log import configure_logging, get_logger
from proxy_core.metrics import Metrics, serve_metrics
from proxy_core.money import format_usd
from proxy_core.prices import PriceTable
from proxy_core.results import ChatResult, EmbeddingResult
from proxy_core.settings import PennySettings, ThreadReplies, load_settings
from proxy_core.spool import count_pending
from proxy_core.stores import store_from_url
from proxy_core.stores.base import CacheItem, LedgerEntry, Store, UsageSummary, UsageTotals
from proxy_core.tokens import estimate_text_tokens

__all__ = [
    "Accounts",
    "AnswerStream",
    "BudgetAlert",
    "BudgetExceeded",
    "BudgetLine",
    "BudgetStatus",
    "CacheAs",
    "CacheItem",
    "ChatRequest",
    "ChatResult",
    "CircuitOpen",
    "Clock",
    "ConfigurationError",
    "EmbedRequest",
    "EmbeddingResult",
    "Gateway",
    "Headroom",
    "LedgerEntry",
    "ManualClock",
    "Metrics",
    "PennyError",
    "PennySettings",
    "PriceTable",
    "RateLimited",
    "Refused",
    "ReplayReport",
    "RequestInFlight",
    "RequestInterrupted",
    "Store",
    "StoreError",
    "ThreadReplies",
    "UpstreamError",
    "UpstreamRejected",
    "UsageSummary",
    "UsageTotals",
    "budget_lines",
    "configure_logging",
    "count_pending",
    "estimate_text_tokens",
    "format_usd",
    "get_logger",
    "load_settings",
    "monotonic",
    "serve_metrics",
    "store_from_url",
]
