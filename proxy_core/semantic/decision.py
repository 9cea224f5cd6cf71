"""The semantic cache's hit decision, and its measurement on labelled question pairs.

:func:`decide` is pure: given the new question and the index's nearest cached questions (best
first), it returns an exact hit, a semantic hit with its similarity, or a miss that says why.
:func:`evaluate` runs exactly that decision on pairs ``{"a", "b", "label"}`` (a fresh cache
holding only ``a``, looked up with ``b``) and reports recall, precision and false hits, side by
side with the common rule (cosine >= 0.95, no guard).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Generic, Literal, NamedTuple, TypeVar

import numpy as np

from proxy_core.cache import normalize_question
from proxy_core.semantic.embedders import Embedder
from proxy_core.semantic.guard import Analysis, NearMissGuard

__all__ = [
    "COMMON_RULE_THRESHOLD",
    "DEFAULT_SWEEP",
    "DEFAULT_THRESHOLD",
    "Candidate",
    "Decision",
    "EvalReport",
    "LabelledPair",
    "Outcome",
    "decide",
    "default_threshold",
    "evaluate",
    "format_report",
    "load_pairs",
]

P = TypeVar("P")
DecisionStatus = Literal["exact", "semantic", "miss"]

COMMON_RULE_THRESHOLD = 0.95
# Cosine thresholds measured with the default guard: the best F0.5 on the QQP dev pairs, checked
# on held-out halves and on the near-miss pairs (bench/QUALITY.md). Other embedders use
# FALLBACK_THRESHOLD, which is a cautious guess, not a measurement.
DEFAULT_THRESHOLD: dict[str, float] = {
    "local:wordllama": 0.60,
    "openai:all-MiniLM-L6-v2": 0.68,
}
FALLBACK_THRESHOLD = 0.75
DEFAULT_SWEEP = tuple(round(0.50 + 0.02 * i, 2) for i in range(25))  # 0.50 … 0.98


def default_threshold(embedder_name: str) -> float:
    """The measured default for an embedder, by its spec with any ``?dimensions=`` ignored."""
    if embedder_name in DEFAULT_THRESHOLD:
        return DEFAULT_THRESHOLD[embedder_name]
    base = embedder_name.split("?", 1)[0]
    return DEFAULT_THRESHOLD.get(base, FALLBACK_THRESHOLD)


class Candidate(NamedTuple, Generic[P]):
    """A cached question near the new one. ``analysis`` is the guard's view if stored with it."""

    question: str
    similarity: float
    payload: P
    analysis: Analysis | None = None


@dataclass(frozen=True, slots=True)
class Rejection:
    question: str
    similarity: float
    reason: str


@dataclass(frozen=True, slots=True)
class Decision(Generic[P]):
    """What :func:`decide` chose, and why (for logs, metrics and the bot's footer)."""

    status: DecisionStatus
    reason: str
    similarity: float | None = None
    payload: P | None = None
    matched_question: str | None = None
    rejected: tuple[Rejection, ...] = ()

    @property
    def hit(self) -> bool:
        return self.status != "miss"


def decide(
    question: str,
    candidates: Iterable[Candidate[P] | tuple[str, float, P]],
    *,
    threshold: float,
    guard: NearMissGuard | None,
    analysis: Analysis | None = None,
) -> Decision[P]:
    """The hit decision for ``question`` given its nearest cached questions.

    1. A candidate whose normalised text equals the question's is an exact hit.
    2. Otherwise the most similar candidate at or above ``threshold`` that the guard accepts is a
       semantic hit (``guard=None`` accepts everything: the common rule).
    3. Otherwise a miss, saying why: no candidates, below threshold, or the guard's reason.
    """
    cands = sorted((c if isinstance(c, Candidate) else Candidate(*c) for c in candidates), key=lambda c: -c.similarity)
    key = normalize_question(question)
    for c in cands:
        if normalize_question(c.question) == key:
            return Decision("exact", "exact match", 1.0, c.payload, c.question)
    if not cands:
        return Decision("miss", "no cached question in scope")
    rejected: list[Rejection] = []
    for c in cands:
        if c.similarity < threshold:
            break
        if guard is None:
            return Decision("semantic", f"semantic match at {c.similarity:.2f}", c.similarity, c.payload, c.question)
        if analysis is None:
            analysis = guard.analyse(question)
        verdict = guard.check_analysed(c.analysis or guard.analyse(c.question), analysis)
        if verdict.ok:
            return Decision(
                "semantic",
                f"semantic match at {c.similarity:.2f}",
                c.similarity,
                c.payload,
                c.question,
                tuple(rejected),
            )
        rejected.append(Rejection(c.question, c.similarity, verdict.reason))
    if rejected:
        first = rejected[0]
        return Decision(
            "miss", f"rejected: {first.reason} (similarity {first.similarity:.2f})", first.similarity, None, None,
            tuple(rejected),
        )  # fmt: skip
    best = cands[0].similarity
    return Decision("miss", f"below threshold at {best:.2f} (< {threshold:.2f})", best)


# -- evaluation ------------------------------------------------------------------------------------


class LabelledPair(NamedTuple):
    """``label`` 1: a cached answer to ``a`` correctly answers ``b``; 0: serving it is a false hit."""

    a: str
    b: str
    label: int


def load_pairs(path: str | Path) -> list[LabelledPair]:
    """Pairs from a JSON Lines file of ``{"a", "b", "label"}``."""
    pairs: list[LabelledPair] = []
    with Path(path).open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                pairs.append(LabelledPair(str(row["a"]), str(row["b"]), int(row["label"])))
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{n}: expected {{'a', 'b', 'label'}} ({exc})") from exc
    return pairs


@dataclass(frozen=True, slots=True)
class Outcome:
    """Hits of one rule at one threshold. ``precision`` is None when nothing was served."""

    threshold: float
    true_hits: int
    false_hits: int
    recall: float
    precision: float | None
    false_hit_rate: float


@dataclass(frozen=True, slots=True)
class EvalReport:
    """Penny's decision (threshold + guard) and the common rule on one set of labelled pairs."""

    embedder: str
    guard: str
    threshold: float
    pairs: int
    positives: int
    negatives: int
    true_hits: int
    false_hits: int
    recall: float
    precision: float | None
    false_hit_rate: float
    sweep: tuple[Outcome, ...]
    rule: Outcome
    rule_sweep: tuple[Outcome, ...]
    reasons: dict[str, int] = field(default_factory=dict)  # why label-1 pairs above threshold missed
    false_hit_examples: tuple[tuple[str, str, float], ...] = ()

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def evaluate(
    pairs: Sequence[LabelledPair],
    embedder: Embedder,
    *,
    threshold: float,
    guard: NearMissGuard | None,
    thresholds_sweep: Sequence[float] = DEFAULT_SWEEP,
    rule_threshold: float = COMMON_RULE_THRESHOLD,
) -> EvalReport:
    """Run :func:`decide` on every pair (cache holds ``a``, look up ``b``) and count."""
    texts = list(dict.fromkeys(t for p in pairs for t in (p.a, p.b)))
    index = {t: i for i, t in enumerate(texts)}
    vectors = embedder.embed(texts)
    a_rows = vectors[[index[p.a] for p in pairs]]
    b_rows = vectors[[index[p.b] for p in pairs]]
    sims = np.einsum("ij,ij->i", a_rows, b_rows).astype(float) if pairs else np.zeros(0)
    labels = np.array([p.label for p in pairs], dtype=int)

    hits = np.zeros(len(pairs), dtype=bool)
    exact = np.zeros(len(pairs), dtype=bool)
    accepted = np.ones(len(pairs), dtype=bool)  # guard verdict, whatever the threshold
    reasons: Counter[str] = Counter()
    false_examples: list[tuple[str, str, float]] = []
    for i, p in enumerate(pairs):
        sim = float(sims[i])
        decision = decide(p.b, [Candidate(p.a, sim, None)], threshold=threshold, guard=guard)
        hits[i] = decision.hit
        exact[i] = decision.status == "exact"
        if guard is not None and not exact[i]:
            accepted[i] = guard.check(p.a, p.b).ok
        if decision.hit and p.label == 0:
            false_examples.append((p.a, p.b, round(sim, 4)))
        if not decision.hit and p.label == 1 and decision.rejected:
            reasons[_reason_kind(decision.rejected[0].reason)] += 1

    def outcome(t: float, served: np.ndarray) -> Outcome:
        return _outcome(t, served, labels)

    penny = outcome(threshold, hits)
    sweep = tuple(outcome(t, exact | ((sims >= t) & accepted)) for t in thresholds_sweep)
    rule_sweep = tuple(outcome(t, exact | (sims >= t)) for t in thresholds_sweep)
    rule = outcome(rule_threshold, exact | (sims >= rule_threshold))
    return EvalReport(
        embedder=embedder.name,
        guard="off" if guard is None else _describe_guard(guard),
        threshold=threshold,
        pairs=len(pairs),
        positives=int(labels.sum()),
        negatives=int(len(labels) - labels.sum()),
        true_hits=penny.true_hits,
        false_hits=penny.false_hits,
        recall=penny.recall,
        precision=penny.precision,
        false_hit_rate=penny.false_hit_rate,
        sweep=sweep,
        rule=rule,
        rule_sweep=rule_sweep,
        reasons=dict(reasons.most_common()),
        false_hit_examples=tuple(false_examples[:20]),
    )


def _outcome(threshold: float, served: np.ndarray, labels: np.ndarray) -> Outcome:
    positives = int(labels.sum())
    negatives = int(len(labels) - positives)
    tp = int((served & (labels == 1)).sum())
    fp = int((served & (labels == 0)).sum())
    return Outcome(
        threshold=threshold,
        true_hits=tp,
        false_hits=fp,
        recall=tp / positives if positives else 0.0,
        precision=tp / (tp + fp) if tp + fp else None,
        false_hit_rate=fp / negatives if negatives else 0.0,
    )


def _reason_kind(reason: str) -> str:
    return reason.split(":", 1)[0]


def _describe_guard(guard: NearMissGuard) -> str:
    s = guard.settings
    return ", ".join(f"{k}={getattr(s, k)}" for k in s.__dataclass_fields__)


def _pct(x: float | None) -> str:
    return "  n/a" if x is None or math.isnan(x) else f"{100 * x:5.1f}%"


def format_report(report: EvalReport, *, sweep: bool = True) -> str:
    """A plain-text table: Penny vs the common rule, then the threshold sweep."""
    lines = [
        f"{report.pairs} pairs ({report.positives} label 1, {report.negatives} label 0), embedder {report.embedder}",
        "",
        f"{'rule':<34} {'recall':>7} {'precision':>9} {'false hits':>16}",
    ]
    rule = report.rule
    lines.append(
        f"{f'common: cos >= {rule.threshold:.2f}, no guard':<34} {_pct(rule.recall):>7} {_pct(rule.precision):>9} "
        f"{_pct(rule.false_hit_rate):>7} ({rule.false_hits:>4})"
    )
    lines.append(
        f"{f'penny: cos >= {report.threshold:.2f} + guard':<34} {_pct(report.recall):>7} "
        f"{_pct(report.precision):>9} {_pct(report.false_hit_rate):>7} ({report.false_hits:>4})"
    )
    if sweep and report.sweep:
        lines += ["", f"{'threshold':>9} | {'penny recall':>12} {'precision':>9} {'false hits':>10} | "
                  f"{'rule recall':>11} {'precision':>9} {'false hits':>10}"]  # fmt: skip
        for p, r in zip(report.sweep, report.rule_sweep, strict=True):
            lines.append(
                f"{p.threshold:>9.2f} | {_pct(p.recall):>12} {_pct(p.precision):>9} {_pct(p.false_hit_rate):>10} | "
                f"{_pct(r.recall):>11} {_pct(r.precision):>9} {_pct(r.false_hit_rate):>10}"
            )
    if report.reasons:
        lines += ["", "label-1 pairs above threshold that the guard rejected, by reason:"]
        lines += [f"  {k}: {v}" for k, v in report.reasons.items()]
    return "\n".join(lines)
