"""The semantic cache's hit decision: question embedders, the near-miss guard, and ``decide``.

The index, storage and sync live with the cache; this package decides what counts as a hit::

    embedder = embedder_from_spec(settings.embedder)          # PENNY_EMBEDDER
    guard = NearMissGuard()                                   # GuardSettings() defaults
    decision = decide(question, candidates, threshold=default_threshold(embedder.name), guard=guard)
"""

from __future__ import annotations

from proxy_core.semantic.decision import (
    COMMON_RULE_THRESHOLD,
    DEFAULT_THRESHOLD,
    Candidate,
    Decision,
    EvalReport,
    LabelledPair,
    Outcome,
    Rejection,
    decide,
    default_threshold,
    evaluate,
    format_report,
    load_pairs,
)
from proxy_core.semantic.embedders import (
    Embedder,
    OpenAICompatibleEmbedder,
    OpenAIEmbedFn,
    WordLlamaEmbedder,
    embedder_from_spec,
    openai_sdk_embed_fn,
)
from proxy_core.semantic.guard import Analysis, GuardSettings, NearMissGuard, Verdict, WordVectors

__all__ = [
    "COMMON_RULE_THRESHOLD",
    "DEFAULT_THRESHOLD",
    "Analysis",
    "Candidate",
    "Decision",
    "Embedder",
    "EvalReport",
    "GuardSettings",
    "LabelledPair",
    "NearMissGuard",
    "OpenAICompatibleEmbedder",
    "OpenAIEmbedFn",
    "Outcome",
    "Rejection",
    "Verdict",
    "WordLlamaEmbedder",
    "WordVectors",
    "decide",
    "default_threshold",
    "embedder_from_spec",
    "evaluate",
    "format_report",
    "load_pairs",
    "openai_sdk_embed_fn",
]
