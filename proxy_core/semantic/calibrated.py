"""How likely a cached answer serves a new question, and the operating point for a wrong-hit budget.

The hit decision combines the embedder's cosine with the near-miss guard's evidence
(:class:`~proxy_core.semantic.guard.Comparison`) in one logistic model per embedder::

    p = 1 / (1 + exp(-(bias + weights · features(cosine, comparison))))

fitted offline by ``python -m bench.calibrate`` on one part of the balanced QQP dev pairs and shipped
as ``calibrations/<embedder>.json``. The same file holds the *operating points*: for each minimum
probability, the share of served hits expected to be wrong (the mean of ``1 - p`` over the hits it
serves, on held-apart folds of the fitting part) and the recall it reached there. Given the
operator's ``PENNY_CACHE_MAX_WRONG``, :meth:`Calibration.operating_point` picks the loosest point
whose expected share of wrong hits stays within it; unset, the embedder's own default budget
(``default_max_wrong``, chosen by ``bench.calibrate``) applies. The guard's vetoes are not
features: a vetoed candidate is never served, whatever its probability.

"Wrong" means what the calibration pairs' labels say: on random Quora question pairs, half of them
duplicates. A workload with more true rephrasings among near questions sees fewer wrong hits.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

from proxy_core.errors import ConfigurationError
from proxy_core.semantic.guard import Comparison

__all__ = [
    "BASE_FEATURES", "FALLBACK_MAX_WRONG", "FEATURES", "Calibration", "OperatingPoint", "calibration_for",
    "embedder_key", "expected_wrong", "features",
]  # fmt: skip

# Every input a model may use, in order; a calibration names the ones it uses. Cheap on purpose:
# the cosine, and counts and similarities the guard already made.
FEATURES = (
    "cosine",  # the embedder's cosine between the two questions
    "cosine_sq",  # its square: the evidence grows faster near 1
    "question_type",  # 1 if why / when / where / who differ
    "modality",  # 1 if one asks for advice and the other for a fact
    "unmatched_cached",  # log(1 + content words of the cached question with no counterpart)
    "unmatched_new",  # log(1 + … of the new question)
    "coverage",  # mean best match of every content word in the other question
    "overlap",  # Dice overlap of the token sets
    "words",  # log(1 + content words of both)
    "content_similarity",  # cosine of the mean word vectors of the two questions' content words
    # From the word-by-word alignment: how well the worst-aligned words are matched (a rewording
    # matches every word by something; a related question leaves one unmatched)
    "worst_match",  # the lowest best match of any content word of either question (1 = all by form)
    "worst_match_cached",  # … of the cached question's words
    "worst_match_new",  # … of the new question's words
    "poorly_matched",  # log(1 + content words whose best match is below 0.5)
    "lexical_share",  # share of the content words matched by a word form
    "reworded_similarity",  # mean best match of the words no word form matches (1 if none)
)
# The inputs of the models fitted before the alignment's similarities were added (and MiniLM's:
# they did not help it out of fold, bench/QUALITY.md).
BASE_FEATURES = FEATURES[:10]

# Known only after aligning words.
_ALIGNMENT = frozenset(
    {"unmatched_cached", "unmatched_new", "coverage", "worst_match", "worst_match_cached", "worst_match_new",
     "poorly_matched", "lexical_share", "reworded_similarity"}
)  # fmt: skip

# The budget for a calibration file that names no default of its own (files written before
# per-embedder defaults).
FALLBACK_MAX_WRONG = 0.12


def features(similarity: float, c: Comparison) -> list[float]:
    """Every input for one candidate, in the order of :data:`FEATURES`."""
    return [
        similarity,
        similarity * similarity,
        0.0 if c.question_type is None else 1.0,
        0.0 if c.modality is None else 1.0,
        math.log1p(len(c.unmatched_cached)),
        math.log1p(len(c.unmatched_new)),
        c.coverage,
        c.overlap,
        math.log1p(c.words),
        c.content_similarity,
        min(c.worst_cached, c.worst_new),
        c.worst_cached,
        c.worst_new,
        math.log1p(c.poorly_matched),
        c.lexical_share,
        c.reworded_similarity,
    ]


@dataclass(frozen=True, slots=True)
class OperatingPoint:
    """Serve a candidate when its probability is at least ``min_probability``; on the calibration
    pairs that served ``recall`` of the duplicates, of which ``expected_wrong`` were wrong.

    ``min_similarity``: no calibration pair less similar than this was served here (less a margin),
    so candidates below it are not examined — the cheap first cut, like the old threshold.
    """

    min_probability: float
    expected_wrong: float
    recall: float
    min_similarity: float = 0.0


@dataclass(frozen=True, slots=True)
class Calibration:
    """One embedder's fitted model and operating points (loaded from package data)."""

    embedder: str
    features: tuple[str, ...]
    weights: tuple[float, ...]
    bias: float
    bounds: tuple[tuple[float, float], ...]  # range of each feature seen in fitting
    points: tuple[OperatingPoint, ...]  # by min_probability, highest first
    guard: str  # repr of the GuardSettings the model was fitted with
    source: str  # what it was fitted on, and how
    # The budget when PENNY_CACHE_MAX_WRONG is not set: each embedder's own (bench/calibrate.py
    # says how it was chosen), since one number does not suit both embedders' curves.
    default_max_wrong: float = FALLBACK_MAX_WRONG
    default_reason: str = ""
    columns: tuple[int, ...] = field(init=False, repr=False, compare=False)  # of each feature in FEATURES

    def __post_init__(self) -> None:
        unknown = [n for n in self.features if n not in FEATURES]
        if unknown or len(self.weights) != len(self.features) or len(self.bounds) != len(self.features):
            raise ConfigurationError(
                f"calibration for {self.embedder}: features {self.features} ({len(self.weights)} weights, "
                f"{len(self.bounds)} bounds); every feature must be one of {FEATURES}"
            )
        object.__setattr__(self, "columns", tuple(FEATURES.index(n) for n in self.features))

    def inputs(self, similarity: float, comparison: Comparison) -> list[float]:
        """This model's inputs for one candidate, in the order of ``features``."""
        every = features(similarity, comparison)
        return [every[k] for k in self.columns]

    def probability(self, similarity: float, comparison: Comparison) -> float:
        """The estimated probability that the cached answer serves the new question."""
        z = self.bias + sum(w * x for w, x in zip(self.weights, self.inputs(similarity, comparison), strict=True))
        return _sigmoid(z)

    def upper_bound(self, similarity: float, comparison: Comparison) -> float:
        """The highest probability the candidate could have once its words are aligned, from a
        comparison made without the alignment (``aligned`` False): the alignment's features at
        their most favourable values seen in fitting."""
        if comparison.aligned:
            return self.probability(similarity, comparison)
        z = self.bias
        for name, w, x, (lo, hi) in zip(
            self.features, self.weights, self.inputs(similarity, comparison), self.bounds, strict=True
        ):
            z += max(w * lo, w * hi) if name in _ALIGNMENT else w * x
        return _sigmoid(z)

    def operating_point(self, max_wrong: float) -> OperatingPoint:
        """The loosest point whose expected share of wrong hits is at most ``max_wrong`` (the
        strictest point when none is)."""
        best = self.points[0]
        for point in self.points:
            if point.expected_wrong <= max_wrong:
                best = point
            else:
                break
        return best

    def floor(self, point: OperatingPoint) -> float:
        """The cosine below which the decision at ``point`` does not look: the lower of what the
        calibration pairs needed and what any candidate could need (``min_similarity``)."""
        return max(point.min_similarity, self.min_similarity(point.min_probability))

    def min_similarity(self, min_probability: float) -> float:
        """The lowest cosine at which any candidate could reach ``min_probability``, whatever the
        guard's evidence (within the ranges seen in fitting): below it, no need to look."""
        target = _logit(min_probability)
        i_cos, i_sq = self.features.index("cosine"), self.features.index("cosine_sq")
        rest = self.bias + sum(
            max(w * lo, w * hi)
            for k, (w, (lo, hi)) in enumerate(zip(self.weights, self.bounds, strict=True))
            if k not in (i_cos, i_sq)
        )
        for step in range(0, 201):
            cos = step / 200
            if rest + self.weights[i_cos] * cos + self.weights[i_sq] * cos * cos >= target:
                return cos
        return 1.0

    # -- package data ---------------------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps(
            {
                "embedder": self.embedder,
                "source": self.source,
                "guard": self.guard,
                "default_max_wrong": self.default_max_wrong,
                "default_reason": self.default_reason,
                "features": list(self.features),
                "weights": [round(w, 6) for w in self.weights],
                "bias": round(self.bias, 6),
                "bounds": [[round(lo, 6), round(hi, 6)] for lo, hi in self.bounds],
                "operating_points": [
                    {"min_probability": p.min_probability, "expected_wrong": round(p.expected_wrong, 4),
                     "recall": round(p.recall, 4), "min_similarity": round(p.min_similarity, 4)}
                    for p in self.points
                ],
            },
            indent=1,
        ) + "\n"  # fmt: skip

    @classmethod
    def from_json(cls, text: str) -> Calibration:
        raw: dict[str, Any] = json.loads(text)
        names = tuple(str(n) for n in raw["features"])
        points = tuple(
            OperatingPoint(float(p["min_probability"]), float(p["expected_wrong"]), float(p["recall"]),
                           float(p.get("min_similarity", 0.0)))
            for p in raw["operating_points"]
        )
        return cls(
            embedder=str(raw["embedder"]),
            features=names,
            weights=tuple(float(w) for w in raw["weights"]),
            bias=float(raw["bias"]),
            bounds=tuple((float(lo), float(hi)) for lo, hi in raw["bounds"]),
            points=tuple(sorted(points, key=lambda p: -p.min_probability)),
            guard=str(raw["guard"]),
            source=str(raw["source"]),
            default_max_wrong=float(raw.get("default_max_wrong", FALLBACK_MAX_WRONG)),
            default_reason=str(raw.get("default_reason", "")),
        )


def embedder_key(embedder_name: str) -> str:
    """The calibration file's name for an embedder: its spec without ``?…``, ``:`` as ``-``."""
    return embedder_name.split("?", 1)[0].replace(":", "-").replace("/", "-")


@lru_cache(maxsize=16)
def calibration_for(embedder_name: str) -> Calibration | None:
    """The shipped calibration of an embedder (by its spec, ``?dimensions=`` ignored), if any."""
    if "?dims=" in embedder_name:  # a truncated WordLlama is another vector space
        return None
    path = resources.files("proxy_core.semantic").joinpath("calibrations", f"{embedder_key(embedder_name)}.json")
    if not path.is_file():
        return None
    return Calibration.from_json(path.read_text(encoding="utf-8"))


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def _logit(p: float) -> float:
    p = min(max(p, 1e-9), 1 - 1e-9)
    return math.log(p / (1 - p))


def expected_wrong(probabilities: Sequence[float]) -> float | None:
    """The share of hits expected to be wrong among hits with these probabilities."""
    if not probabilities:
        return None
    return sum(1.0 - p for p in probabilities) / len(probabilities)
