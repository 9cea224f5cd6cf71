"""The semantic cache's hit decision: question embedders, the near-miss guard, and ``decide``.

The index, storage and sync live with the cache; this package decides what counts as a hit::

    embedder = embedder_from_spec(settings.embedder)          # PENNY_EMBEDDER
    policy = hit_policy(embedder.name, max_wrong=0.12)        # PENNY_CACHE_MAX_WRONG
    decision = decide(question, candidates, policy=policy)
"""

from __future__ import annotations

from proxy_core.semantic.calibrated import Calibration, OperatingPoint, calibration_for
from proxy_core.semantic.decision import (
    COMMON_RULE_THRESHOLD,
    DEFAULT_MAX_WRONG,
    DEFAULT_THRESHOLD,
    CalibratedPolicy,
    Candidate,
    Decision,
    EvalReport,
    HitPolicy,
    Judgement,
    LabelledPair,
    Outcome,
    Rejection,
    ThresholdPolicy,
    decide,
    default_threshold,
    evaluate,
    format_report,
    hit_policy,
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
from proxy_core.semantic.guard import Analysis, Comparison, GuardSettings, NearMissGuard, Verdict, WordVectors

__all__ = [
    "COMMON_RULE_THRESHOLD",
    "DEFAULT_MAX_WRONG",
    "DEFAULT_THRESHOLD",
    "Analysis",
    "CalibratedPolicy",
    "Calibration",
    "Candidate",
    "Comparison",
    "Decision",
    "Embedder",
    "EvalReport",
    "GuardSettings",
    "HitPolicy",
    "Judgement",
    "LabelledPair",
    "NearMissGuard",
    "OpenAICompatibleEmbedder",
    "OpenAIEmbedFn",
    "OperatingPoint",
    "Outcome",
    "Rejection",
    "ThresholdPolicy",
    "Verdict",
    "WordLlamaEmbedder",
    "WordVectors",
    "calibration_for",
    "decide",
    "default_threshold",
    "embedder_from_spec",
    "evaluate",
    "format_report",
    "hit_policy",
    "load_pairs",
    "openai_sdk_embed_fn",
]
