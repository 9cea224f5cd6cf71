"""proxy_core: the per-user LLM cost-control engine behind Penny.

This package's public surface is what it exports here; the modules behind it are its implementation
(as httpx exports its client from ``httpx/__init__.py``). The Slack bot (``bot/``) imports from
``proxy_core`` only: the gateway every LLM call goes through, its results and errors, the read side
of the cost controls (:class:`Accounts`: usage, spend by source, headroom, budget status), a call's
source (:class:`CallSource`: a proxy key, with its own daily budget), the cached answers
(:class:`CachedAnswers`: count, forget), a rate shared by every replica (:class:`SharedRate`),
settings, stores by URL and the store capabilities a front end keeps its own records in, the
question embedders and the cache's calibration tools, and the few utilities a front end needs
(logging, metrics, money and wait formatting, token estimates, budget alert text).

    from proxy_core import Gateway, load_settings

    gateway = Gateway.from_settings(load_settings())
    result = gateway.chat(user_id="U1", workspace_id="T1", request_id="evt-1",
                          messages=[{"role": "user", "content": "How do I deploy?"}])
    print(result.content, result.cost_micros)
"""

from __future__ import annotations

from proxy_core import errors
from proxy_core.accounts import Accounts, BudgetStatus, Headroom
from proxy_core.alerts import BudgetAlert, alert_text
from proxy_core.budget import BudgetLine, CallSource, budget_lines, period_window
from proxy_core.cache import StandaloneQuestion, has_lone_surrogate
from proxy_core.cached_answers import CachedAnswers
from proxy_core.clock import Clock, ManualClock, monotonic
from proxy_core.errors import *  # noqa: F403  (the error tree, whole: errors.__all__ is its one list)
from proxy_core.errors import format_wait
from proxy_core.gateway import AnswerStream, ChatRequest, EmbedRequest, Gateway, ReplayReport
from proxy_core.log import configure_logging, get_logger, redact
from proxy_core.metrics import Metrics, serve_metrics
from proxy_core.money import format_usd
from proxy_core.prices import PriceTable
from proxy_core.rates import LimitDecision, SharedRate
from proxy_core.results import ChatResult, EmbeddingResult
from proxy_core.semantic.decision import EvalReport, evaluate, format_report, hit_policy, load_pairs
from proxy_core.semantic.embedders import Embedder, embedder_from_spec
from proxy_core.settings import MAX_BUDGET_USD, PennySettings, load_settings, load_settings_as
from proxy_core.spool import count_pending, unreadable_files
from proxy_core.stores import missing_store, store_from_url
from proxy_core.stores.base import (
    BlobStore,
    LedgerEntry,
    LimitStore,
    Record,
    RecordStore,
    RequestStore,
    Store,
    UsageSummary,
    UsageTotals,
)
from proxy_core.tokens import estimate_text_tokens
from proxy_core.upstream import openai_request_fields

__all__ = [
    "MAX_BUDGET_USD",
    "Accounts",
    "AnswerStream",
    "BlobStore",
    "BudgetAlert",
    "BudgetLine",
    "BudgetStatus",
    "CachedAnswers",
    "CallSource",
    "ChatRequest",
    "ChatResult",
    "Clock",
    "EmbedRequest",
    "Embedder",
    "EmbeddingResult",
    "EvalReport",
    "Gateway",
    "Headroom",
    "LedgerEntry",
    "LimitDecision",
    "LimitStore",
    "ManualClock",
    "Metrics",
    "PennySettings",
    "PriceTable",
    "Record",
    "RecordStore",
    "ReplayReport",
    "RequestStore",
    "SharedRate",
    "StandaloneQuestion",
    "Store",
    "UsageSummary",
    "UsageTotals",
    "alert_text",
    "budget_lines",
    "configure_logging",
    "count_pending",
    "embedder_from_spec",
    "estimate_text_tokens",
    "evaluate",
    "format_report",
    "format_usd",
    "format_wait",
    "get_logger",
    "has_lone_surrogate",
    "hit_policy",
    "load_pairs",
    "load_settings",
    "load_settings_as",
    "missing_store",
    "monotonic",
    "openai_request_fields",
    "period_window",
    "redact",
    "serve_metrics",
    "store_from_url",
    "unreadable_files",
]
__all__ += errors.__all__
