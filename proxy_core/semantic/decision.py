"""The semantic cache's hit decision, and its measurement on labelled question pairs.

:func:`decide` is pure: given the new question and the index's nearest cached questions (best
first), it returns an exact hit, a semantic hit, or a miss that says why. What counts as a hit is a
:class:`HitPolicy`:

- :class:`CalibratedPolicy` (the default): the guard's vetoes, then the embedder's calibrated
  probability that the cached answer serves (:mod:`proxy_core.semantic.calibrated`) against the
  operating point for ``PENNY_CACHE_MAX_WRONG`` (unset: the embedder's own default budget);
- :class:`ThresholdPolicy`: cosine at or above a threshold and the whole guard (the expert
  override ``PENNY_CACHE_THRESHOLD``, and embedders without a calibration); with no guard it is
  the plain cosine rule.

:func:`evaluate` runs exactly that decision on pairs ``{"a", "b", "label"}`` (a fresh cache holding
only ``a``, looked up with ``b``) and reports recall, precision, the expected and the measured share
of wrong hits, and always next to it the plain cosine rule's precision at the same recall, with
both precision/recall curves.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Generic, Literal, NamedTuple, Protocol, TypeVar

import numpy as np
from numpy.typing import NDArray

from proxy_core.cache import normalize_question
from proxy_core.semantic.calibrated import FALLBACK_MAX_WRONG, Calibration, calibration_for
from proxy_core.semantic.embedders import Embedder
from proxy_core.semantic.guard import Analysis, NearMissGuard

__all__ = [
    "COMMON_RULE_THRESHOLD",
    "DEFAULT_MAX_WRONG",
    "DEFAULT_THRESHOLD",
    "CalibratedPolicy",
    "Candidate",
    "Decision",
    "EvalReport",
    "HitPolicy",
    "Judgement",
    "LabelledPair",
    "Outcome",
    "ThresholdPolicy",
    "decide",
    "default_threshold",
    "evaluate",
    "format_report",
    "hit_policy",
    "load_pairs",
]

P = TypeVar("P")
DecisionStatus = Literal["exact", "semantic", "miss"]

COMMON_RULE_THRESHOLD = 0.95
# The share of served hits that may be wrong when PENNY_CACHE_MAX_WRONG is not set and the
# embedder's calibration names no default budget of its own (each shipped one does:
# Calibration.default_max_wrong).
DEFAULT_MAX_WRONG = FALLBACK_MAX_WRONG
# Cosine thresholds for the threshold policy when PENNY_CACHE_GUARD is off and no threshold is set:
# the best F0.5 with the old strict guard on cache-pairs-dev.jsonl (issue 3; bench/QUALITY.md's
# history). Embedders without a calibration use FALLBACK_THRESHOLD with the guard, a cautious
# guess, not a measurement.
DEFAULT_THRESHOLD: dict[str, float] = {
    "local:wordllama": 0.60,
    "openai:all-MiniLM-L6-v2": 0.68,
}
FALLBACK_THRESHOLD = 0.75


def default_threshold(embedder_name: str) -> float:
    """The measured threshold for an embedder, by its spec with any ``?dimensions=`` ignored."""
    if embedder_name in DEFAULT_THRESHOLD:
        return DEFAULT_THRESHOLD[embedder_name]
    base = embedder_name.split("?", 1)[0]
    return DEFAULT_THRESHOLD.get(base, FALLBACK_THRESHOLD)


# -- policies ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Judgement:
    """A policy's verdict on one candidate; ``probability`` when the policy is calibrated."""

    ok: bool
    reason: str
    probability: float | None = None


class HitPolicy(Protocol):
    """What counts as a hit. ``floor``: candidates less similar than this can never be one."""

    @property
    def guard(self) -> NearMissGuard | None: ...

    @property
    def floor(self) -> float: ...

    def judge(self, similarity: float, cached: Analysis | None, new: Analysis | None) -> Judgement:
        """``cached`` / ``new`` are the guard's analyses (None when the policy has no guard)."""
        ...

    def describe(self) -> str: ...


@dataclass(frozen=True)
class ThresholdPolicy:
    """Cosine at or above ``threshold`` and the whole near-miss guard (``guard=None``: cosine alone)."""

    threshold: float
    guard: NearMissGuard | None

    @property
    def floor(self) -> float:
        return self.threshold

    def judge(self, similarity: float, cached: Analysis | None, new: Analysis | None) -> Judgement:
        if similarity < self.threshold:
            return Judgement(False, f"below threshold at {similarity:.2f} (< {self.threshold:.2f})")
        if self.guard is None or cached is None or new is None:
            return Judgement(True, f"semantic match at {similarity:.2f}")
        verdict = self.guard.check_analysed(cached, new)
        if not verdict.ok:
            return Judgement(False, verdict.reason)
        return Judgement(True, f"semantic match at {similarity:.2f}")

    def describe(self) -> str:
        return f"cos >= {self.threshold:.2f}" + (" + guard" if self.guard is not None else ", no guard")


@dataclass(frozen=True)
class CalibratedPolicy:
    """The guard's vetoes, then the calibrated probability against the operating point for
    ``max_wrong`` (the largest share of served hits that may be wrong; None: the calibration's
    own default, which ``max_wrong`` then holds)."""

    calibration: Calibration
    guard: NearMissGuard
    max_wrong: float | None = None
    min_probability: float = field(init=False)
    expected_wrong: float = field(init=False)  # at the operating point, on the calibration pairs
    floor: float = field(init=False)

    def __post_init__(self) -> None:
        if self.max_wrong is None:
            object.__setattr__(self, "max_wrong", self.calibration.default_max_wrong)
        point = self.calibration.operating_point(self.budget)
        object.__setattr__(self, "min_probability", point.min_probability)
        object.__setattr__(self, "expected_wrong", point.expected_wrong)
        object.__setattr__(self, "floor", self.calibration.floor(point))

    @property
    def budget(self) -> float:
        """``max_wrong`` as set, or the calibration's default."""
        return self.calibration.default_max_wrong if self.max_wrong is None else self.max_wrong

    def probability(self, similarity: float, cached: Analysis, new: Analysis) -> tuple[float | None, str | None]:
        """The probability that ``cached``'s answer serves ``new``, or None and the guard's veto."""
        comparison = self.guard.compare(cached, new)
        if comparison.veto is not None:
            return None, comparison.veto
        return self.calibration.probability(similarity, comparison), None

    def judge(self, similarity: float, cached: Analysis | None, new: Analysis | None) -> Judgement:
        if similarity < self.floor or cached is None or new is None:
            return Judgement(False, f"below threshold at {similarity:.2f} (< {self.floor:.2f})")
        # The vetoes and evidence that need no word alignment first: most candidates end there.
        quick = self.guard.compare(cached, new, align=False)
        if quick.veto is not None:
            return Judgement(False, quick.veto)
        bound = self.calibration.upper_bound(similarity, quick)
        if bound < self.min_probability:
            return Judgement(False, f"unlikely to serve: p <= {bound:.2f} < {self.min_probability:.2f}", bound)
        p, veto = self.probability(similarity, cached, new)
        if p is None:
            return Judgement(False, veto or "vetoed")
        if p < self.min_probability:
            return Judgement(False, f"unlikely to serve: p = {p:.2f} < {self.min_probability:.2f}", p)
        return Judgement(True, f"semantic match at {similarity:.2f} (p = {p:.2f})", p)

    def describe(self) -> str:
        return f"calibrated, p >= {self.min_probability:.2f} (max wrong {100 * self.budget:.3g}%) + guard"


def hit_policy(
    embedder_name: str, *, threshold: float | None = None, max_wrong: float | None = None, guard: bool = True
) -> HitPolicy:
    """The policy the settings ask for: a set threshold (or the guard switched off) is the
    threshold policy; otherwise the embedder's calibration, if one ships, at ``max_wrong`` (None:
    the calibration's own default budget)."""
    if not guard:
        return ThresholdPolicy(threshold if threshold is not None else default_threshold(embedder_name), None)
    if threshold is not None:
        return ThresholdPolicy(threshold, NearMissGuard())
    calibration = calibration_for(embedder_name)
    if calibration is None:
        return ThresholdPolicy(default_threshold(embedder_name), NearMissGuard())
    return CalibratedPolicy(calibration, NearMissGuard(), max_wrong)


# -- the decision -----------------------------------------------------------------------------------


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
    probability: float | None = None

    @property
    def hit(self) -> bool:
        return self.status != "miss"


def decide(
    question: str,
    candidates: Iterable[Candidate[P] | tuple[str, float, P]],
    *,
    policy: HitPolicy,
    analysis: Analysis | None = None,
) -> Decision[P]:
    """The hit decision for ``question`` given its nearest cached questions.

    1. A candidate whose normalised text equals the question's is an exact hit.
    2. Otherwise the most similar candidate the policy accepts is a semantic hit (candidates below
       the policy's floor are not examined).
    3. Otherwise a miss, saying why: no candidates, below threshold, a veto, or too unlikely.
    """
    cands = sorted((c if isinstance(c, Candidate) else Candidate(*c) for c in candidates), key=lambda c: -c.similarity)
    key = normalize_question(question)
    for c in cands:
        if normalize_question(c.question) == key:
            return Decision("exact", "exact match", 1.0, c.payload, c.question)
    if not cands:
        return Decision("miss", "no cached question in scope")
    guard = policy.guard
    rejected: list[Rejection] = []
    for c in cands:
        if c.similarity < policy.floor:
            break
        if guard is not None and analysis is None:
            analysis = guard.analyse(question)
        cached = None if guard is None else c.analysis or guard.analyse(c.question)
        judgement = policy.judge(c.similarity, cached, analysis)
        if judgement.ok:
            return Decision("semantic", judgement.reason, c.similarity, c.payload, c.question,
                            tuple(rejected), judgement.probability)  # fmt: skip
        rejected.append(Rejection(c.question, c.similarity, judgement.reason))
    if rejected:
        first = rejected[0]
        return Decision(
            "miss", f"rejected: {first.reason} (similarity {first.similarity:.2f})", first.similarity, None, None,
            tuple(rejected),
        )  # fmt: skip
    best = cands[0].similarity
    return Decision("miss", f"below threshold at {best:.2f} (< {policy.floor:.2f})", best)


# -- evaluation ------------------------------------------------------------------------------------


class LabelledPair(NamedTuple):
    """``label`` 1: a cached answer to ``a`` correctly answers ``b``; 0: serving it is a false hit."""

    a: str
    b: str
    label: int


_PAIR_LINE = ('each line is {"a": "a question", "b": "another", "label": 1} '
              "(1: an answer to a also answers b, 0: it does not)")


def load_pairs(path: str | Path) -> list[LabelledPair]:
    """Pairs from a JSON Lines file of ``{"a", "b", "label"}``. ``ValueError`` names the file and
    line of anything else, and a file with no pair: an evaluation of nothing reported every rate
    as 0% and passed."""
    pairs: list[LabelledPair] = []
    with Path(path).open("rb") as fh:
        for n, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:  # the bytes are not echoed: this is the user's data
                raise ValueError(f"{path}:{n}: not UTF-8 text; save the file as UTF-8") from None
            if line.strip():
                pairs.append(_pair(line, f"{path}:{n}"))
    if not pairs:
        raise ValueError(f"{path}: no pairs to evaluate; {_PAIR_LINE}")
    return pairs


def _pair(line: str, where: str) -> LabelledPair:
    row: object = None
    try:
        row = json.loads(line)
        pair = LabelledPair(str(row["a"]), str(row["b"]), int(row["label"]))  # type: ignore[index]
    except (ValueError, KeyError, TypeError) as exc:
        why = (f"it has no {exc} (its keys: {', '.join(row)})" if isinstance(exc, KeyError)
               and isinstance(row, dict) else str(exc))
        raise ValueError(f"{where}: {_PAIR_LINE}; {why}") from exc
    if pair.label not in (0, 1):  # any other number counted as a label of 0 in every rate
        raise ValueError(f"{where}: {_PAIR_LINE}; its label is {pair.label}")
    return pair


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
    """Penny's decision on one set of labelled pairs, next to the plain cosine rule.

    ``curve`` is Penny's precision/recall curve over its own score (the calibrated probability, or
    the cosine under the guard for the threshold policy); ``baseline_curve`` the plain cosine rule's
    over the cosine. ``baseline_precision_at_recall`` is the plain cosine rule's precision when it
    serves as many duplicates as Penny did (``baseline_threshold`` is where that happens).
    """

    embedder: str
    policy: str
    pairs: int
    positives: int
    negatives: int
    true_hits: int
    false_hits: int
    recall: float
    precision: float | None
    false_hit_rate: float
    max_wrong: float | None  # the setting (calibrated policy only)
    expected_wrong: float | None  # mean of 1 - p over the hits served (calibrated policy only)
    measured_wrong: float | None  # false hits / hits
    baseline_precision_at_recall: float | None
    baseline_threshold: float | None
    curve: tuple[Outcome, ...]
    baseline_curve: tuple[Outcome, ...]
    rule: Outcome  # the common rule, cos >= 0.95 without guard
    reasons: dict[str, int] = field(default_factory=dict)  # why label-1 pairs that came close missed
    false_hit_examples: tuple[tuple[str, str, float], ...] = ()

    @property
    def lift(self) -> float | None:
        """Penny's precision minus the plain cosine rule's at the same recall."""
        if self.precision is None or self.baseline_precision_at_recall is None:
            return None
        return self.precision - self.baseline_precision_at_recall

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "lift": self.lift}, indent=2)


CURVE_THRESHOLDS = tuple(round(0.30 + 0.01 * i, 2) for i in range(71))  # cosine 0.30 … 1.00
PROBABILITY_THRESHOLDS = (*(round(0.05 * i, 2) for i in range(1, 20)), 0.97, 0.99)


def evaluate(pairs: Sequence[LabelledPair], embedder: Embedder, *, policy: HitPolicy) -> EvalReport:
    """Run :func:`decide` on every pair (cache holds ``a``, look up ``b``) and count."""
    texts = list(dict.fromkeys(t for p in pairs for t in (p.a, p.b)))
    index = {t: i for i, t in enumerate(texts)}
    vectors = embedder.embed(texts)
    a_rows = vectors[[index[p.a] for p in pairs]]
    b_rows = vectors[[index[p.b] for p in pairs]]
    sims = np.einsum("ij,ij->i", a_rows, b_rows).astype(float) if pairs else np.zeros(0)
    labels = np.array([p.label for p in pairs], dtype=int)

    n = len(pairs)
    hits = np.zeros(n, dtype=bool)
    exact = np.zeros(n, dtype=bool)
    score = np.full(n, -np.inf)  # Penny's score for the curve: -inf when vetoed
    served_p: list[float] = []
    reasons: Counter[str] = Counter()
    false_examples: list[tuple[str, str, float]] = []
    guard = policy.guard
    calibrated = policy if isinstance(policy, CalibratedPolicy) else None
    for i, p in enumerate(pairs):
        sim = float(sims[i])
        decision = decide(p.b, [Candidate(p.a, sim, None)], policy=policy)
        hits[i] = decision.hit
        exact[i] = decision.status == "exact"
        if decision.hit and decision.probability is not None:
            served_p.append(decision.probability)
        elif exact[i] and calibrated is not None:
            served_p.append(1.0)
        if exact[i]:
            score[i] = np.inf
        elif calibrated is not None:
            if sim >= calibrated.calibration.floor(calibrated.calibration.points[-1]):  # the loosest point's
                prob, _ = calibrated.probability(sim, calibrated.guard.analyse(p.a), calibrated.guard.analyse(p.b))
                score[i] = -np.inf if prob is None else prob
        elif guard is None or guard.check(p.a, p.b).ok:
            score[i] = sim
        if decision.hit and p.label == 0:
            false_examples.append((p.a, p.b, round(sim, 4)))
        if not decision.hit and p.label == 1 and decision.rejected:
            reasons[_reason_kind(decision.rejected[0].reason)] += 1

    penny = _outcome(policy.floor, hits, labels)
    grid = PROBABILITY_THRESHOLDS if calibrated is not None else CURVE_THRESHOLDS
    curve = tuple(_outcome(t, score >= t, labels) for t in grid)
    baseline_curve = tuple(_outcome(t, sims >= t, labels) for t in CURVE_THRESHOLDS)
    base_precision, base_threshold = _precision_at_recall(sims, labels, penny.true_hits)
    return EvalReport(
        embedder=embedder.name,
        policy=policy.describe(),
        pairs=n,
        positives=int(labels.sum()),
        negatives=int(n - labels.sum()),
        true_hits=penny.true_hits,
        false_hits=penny.false_hits,
        recall=penny.recall,
        precision=penny.precision,
        false_hit_rate=penny.false_hit_rate,
        max_wrong=None if calibrated is None else calibrated.budget,
        expected_wrong=None if calibrated is None or not served_p else sum(1 - x for x in served_p) / len(served_p),
        measured_wrong=None if penny.precision is None else 1 - penny.precision,
        baseline_precision_at_recall=base_precision,
        baseline_threshold=base_threshold,
        curve=curve,
        baseline_curve=baseline_curve,
        rule=_outcome(COMMON_RULE_THRESHOLD, sims >= COMMON_RULE_THRESHOLD, labels),
        reasons=dict(reasons.most_common()),
        false_hit_examples=tuple(false_examples[:20]),
    )


def _precision_at_recall(
    sims: NDArray[np.float64], labels: NDArray[np.int_], true_hits: int
) -> tuple[float | None, float | None]:
    """The plain cosine rule's precision, and its threshold, when it first serves ``true_hits``
    duplicates (serving everything at or above the cosine of that duplicate)."""
    if true_hits <= 0:
        return None, None
    order = np.argsort(-sims, kind="stable")
    found = np.cumsum(labels[order])
    k = int(np.searchsorted(found, true_hits))
    if k >= len(order):
        return None, None
    threshold = float(sims[order[k]])
    served = sims >= threshold
    return float((served & (labels == 1)).sum() / served.sum()), threshold


def _outcome(threshold: float, served: NDArray[np.bool_], labels: NDArray[np.int_]) -> Outcome:
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


def _pct(x: float | None) -> str:
    return "  n/a" if x is None or math.isnan(x) else f"{100 * x:5.1f}%"


def format_report(report: EvalReport, *, curves: bool = True) -> str:
    """Plain text: Penny next to the plain cosine rule at the same recall, then both curves."""
    lines = [
        f"{report.pairs} pairs ({report.positives} label 1, {report.negatives} label 0), embedder {report.embedder}",
        f"decision: {report.policy}",
        "",
        f"{'':<40} {'recall':>7} {'precision':>9} {'false hits':>16}",
        f"{'penny':<40} {_pct(report.recall):>7} {_pct(report.precision):>9} "
        f"{_pct(report.false_hit_rate):>7} ({report.false_hits:>4})",
    ]
    if report.baseline_precision_at_recall is not None and report.baseline_threshold is not None:
        label = f"plain cosine, same recall (cos >= {report.baseline_threshold:.3f})"
        lines.append(f"{label:<40} {_pct(report.recall):>7} {_pct(report.baseline_precision_at_recall):>9}")
        lift = report.lift
        if lift is not None:
            lines.append(f"{'penny minus plain cosine':<40} {'':>7} {100 * lift:+8.1f} pt")
    rule = report.rule
    lines.append(
        f"{f'common rule: cos >= {rule.threshold:.2f}, no guard':<40} {_pct(rule.recall):>7} {_pct(rule.precision):>9} "
        f"{_pct(rule.false_hit_rate):>7} ({rule.false_hits:>4})"
    )
    if report.max_wrong is not None:
        served = report.true_hits + report.false_hits
        lines += [
            "",
            f"wrong hits: at most {_pct(report.max_wrong).strip()} allowed (PENNY_CACHE_MAX_WRONG) "
            "on the calibration's questions",
            f"  on this file: {served:,} {'hit' if served == 1 else 'hits'} served, "
            f"expected {_pct(report.expected_wrong).strip()} wrong (the mean of 1 - p over them), "
            f"measured {_pct(report.measured_wrong).strip()} ({report.false_hits:,} wrong)",
        ]
    if curves:
        lines += ["", "precision/recall curves:", f"{'penny':>8}  {'recall':>7} {'precision':>9} | "
                  f"{'plain cos':>9}  {'recall':>7} {'precision':>9}"]  # fmt: skip
        baseline = [o for o in report.baseline_curve if round(o.threshold * 100) % 5 == 0 or o.threshold >= 0.9]
        for k in range(max(len(report.curve), len(baseline))):
            left = report.curve[k] if k < len(report.curve) else None
            right = baseline[k] if k < len(baseline) else None
            lines.append(
                (f"{left.threshold:>8.2f}  {_pct(left.recall):>7} {_pct(left.precision):>9}" if left else " " * 27)
                + " | "
                + (f"{right.threshold:>9.2f}  {_pct(right.recall):>7} {_pct(right.precision):>9}" if right else "")
            )
    if report.reasons:
        lines += ["", "label-1 pairs that came close but missed, by reason:"]
        lines += [f"  {k}: {v}" for k, v in report.reasons.items()]
    return "\n".join(lines)
