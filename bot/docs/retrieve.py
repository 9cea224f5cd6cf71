"""Hybrid retrieval over the docs index: BM25 over words, cosine over embeddings, fused.

Everything here is pure: :func:`tokenize` and :class:`Bm25` are built from passages,
:func:`search` ranks one snapshot for one question and its query vector. :class:`Retriever` only
adds the embedder (callers run ``DocsIndex.refresh_if_changed`` on their own schedule).

Ranking fuses the two with an equally weighted sum of their min-max normalised scores
(``bench/retrieval.py`` measured it against reciprocal-rank fusion: hit@1 0.93 against 0.89 on the
handbook). A fused value says nothing absolute, so each hit also gets a calibrated ``score`` in
[0, 1] from absolute signals: the geometric mean of how much of the question's (idf-weighted)
vocabulary the passage contains and its cosine rescaled to the embedder's useful range; both must
be present for a high score. A best score under :data:`NO_MATCH_THRESHOLD` means "not in the docs".
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from numpy.typing import NDArray

from bot.docs.parse import Passage
from proxy_core import get_logger

if TYPE_CHECKING:
    from bot.docs.index import DocsIndex, IndexSnapshot

__all__ = [
    "NO_MATCH_THRESHOLD",
    "Bm25",
    "Fusion",
    "Hit",
    "Mode",
    "Retriever",
    "calibrated_score",
    "search",
    "tokenize",
]

Mode = Literal["hybrid", "bm25", "embedding"]
Fusion = Literal["rrf", "weighted"]

# Measured on examples/questions.jsonl with local:wordllama (bench/retrieval.py): 121 of the 122
# handbook questions' best score is above it (the lowest ones 0.15, 0.22, 0.24), ten off-topic
# probes are all below (the highest 0.18).
NO_MATCH_THRESHOLD = 0.2
# The cosine range mapped onto [0, 1] in the calibrated score (local:wordllama, passages vs
# questions): off-topic questions' best cosine is 0.14-0.19, a handbook question's median 0.44.
# Another embedder has another range: measure it again with bench/retrieval.py.
COSINE_FLOOR = 0.15
COSINE_CEILING = 0.55
_RRF_K = 60
_WEIGHTED_BM25 = 0.5
_HEADING_REPEAT = 2  # heading words count this many times: a section's heading names its topic

_WORD = re.compile(r"[a-z0-9]+")
_STOP_WORDS_TEXT = """
    a about above after again all am an and any are as at be been before being below between both but by
    can could did do does doing down during each few for from further had has have having he her here hers
    how i if in into is it its itself just me more most my no nor not of off on once only or other our ours
    out over own same she should so some such than that the their theirs them then there these they this
    those through to too under until up very was we were what when where which while who whom why will with
    would you your yours s t d ll m re ve don doesn isn aren wasn weren won wouldn shouldn couldn get got
    need want please tell know whats hows whos wheres whens im ive id dont cant doesnt isnt"""
_STOP_WORDS = frozenset(_STOP_WORDS_TEXT.split())


def _stem(word: str) -> str:
    """A light suffix stripper: plurals, -ing, -ed (enough to match "refunds" with "refund")."""
    if len(word) <= 3 or word.isdigit():
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith("sses"):
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    for suffix in ("ing", "ed"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            stem = word[: -len(suffix)]
            if len(stem) > 3 and stem[-1] == stem[-2] and stem[-1] not in "lsz":
                stem = stem[:-1]  # "stopped" -> "stop"
            return stem
    return word


def tokenize(text: str) -> list[str]:
    """Lowercased words and numbers, stop words dropped, lightly stemmed."""
    return [_stem(w) for w in _WORD.findall(text.lower()) if w not in _STOP_WORDS]


def _passage_terms(passage: Passage) -> list[str]:
    return tokenize(passage.text) + tokenize(" ".join(passage.heading_path)) * _HEADING_REPEAT


@dataclass(frozen=True, slots=True)
class Bm25:
    """Okapi BM25 as postings: per term, the passages holding it and their precomputed weights."""

    count: int
    vocabulary: dict[str, int]
    idf: NDArray[np.float64]
    rows: tuple[NDArray[np.int32], ...]  # per term: passage rows holding it
    weights: tuple[NDArray[np.float32], ...]  # per term: its BM25 contribution in each of those rows

    @classmethod
    def build(cls, passages: Sequence[Passage], *, k1: float = 1.2, b: float = 0.75) -> Bm25:
        counts = [Counter(_passage_terms(p)) for p in passages]
        lengths = np.array([sum(c.values()) for c in counts], dtype=np.float64)
        average = float(lengths.mean()) if len(counts) and lengths.mean() > 0 else 1.0
        postings: dict[str, tuple[list[int], list[float]]] = {}
        for row, terms in enumerate(counts):
            norm = k1 * (1 - b + b * lengths[row] / average)
            for term, tf in terms.items():
                rows, tfs = postings.setdefault(term, ([], []))
                rows.append(row)
                tfs.append(tf * (k1 + 1) / (tf + norm))
        vocabulary = {term: i for i, term in enumerate(postings)}
        n = len(counts)
        idf = np.array([_idf(n, len(rows)) for rows, _ in postings.values()], dtype=np.float64)
        return cls(
            count=n,
            vocabulary=vocabulary,
            idf=idf,
            rows=tuple(np.array(rows, dtype=np.int32) for rows, _ in postings.values()),
            weights=tuple((np.array(tfs) * idf[i]).astype(np.float32) for i, (_, tfs) in enumerate(postings.values())),
        )

    def score(self, question: str) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """(BM25 score, idf-weighted share of the question's terms present) for every passage.

        A question term the docs never use weighs as the rarest term possible: a question about
        something absent cannot reach full coverage.
        """
        scores = np.zeros(self.count, dtype=np.float32)
        matched = np.zeros(self.count, dtype=np.float32)
        total = 0.0
        unknown = _idf(self.count, 0)
        for term in set(tokenize(question)):
            i = self.vocabulary.get(term)
            if i is None:
                total += unknown
                continue
            total += float(self.idf[i])
            scores[self.rows[i]] += self.weights[i]
            matched[self.rows[i]] += np.float32(self.idf[i])
        coverage = matched / np.float32(total) if total > 0 else matched
        return scores, coverage


def _idf(n: int, df: int) -> float:
    return math.log(1 + (n - df + 0.5) / (df + 0.5))


@dataclass(frozen=True, slots=True)
class Hit:
    """One retrieved passage: ``score`` is calibrated in [0, 1]; ``bm25`` and ``cosine`` are raw."""

    passage: Passage
    score: float
    bm25: float
    cosine: float


def calibrated_score(coverage: NDArray[Any], cosine: NDArray[Any]) -> NDArray[np.float32]:
    """Absolute relevance in [0, 1]: the geometric mean of idf-weighted term coverage and the
    rescaled cosine (a shared word or a vague semantic likeness alone scores low)."""
    scaled = np.clip((cosine - COSINE_FLOOR) / (COSINE_CEILING - COSINE_FLOOR), 0.0, 1.0)
    return np.asarray(np.sqrt(np.clip(coverage, 0.0, 1.0) * scaled), dtype=np.float32)


def _ranks(values: NDArray[Any]) -> NDArray[np.float64]:
    """1-based rank of each value, highest first."""
    order = np.argsort(-values, kind="stable")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(1, len(values) + 1)
    return ranks


def _minmax(values: NDArray[Any]) -> NDArray[np.float64]:
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(len(values), dtype=np.float64)
    return (values.astype(np.float64) - low) / (high - low)


def search(
    snapshot: IndexSnapshot,
    question: str,
    query_vector: NDArray[Any] | None,
    *,
    k: int = 5,
    mode: Mode = "hybrid",
    fusion: Fusion = "weighted",
) -> list[Hit]:
    """The ``k`` best passages of ``snapshot`` for ``question`` (``query_vector``: its unit
    embedding, by the index's embedder; only ``mode="bm25"`` may omit it)."""
    n = len(snapshot.passages)
    if n == 0 or k <= 0:
        return []
    bm25, coverage = snapshot.bm25.score(question)
    if query_vector is None:
        if mode != "bm25":
            raise ValueError(f"mode {mode!r} needs the question's embedding")
        cosine = np.zeros(n, dtype=np.float32)
    else:
        cosine = snapshot.matrix @ np.asarray(query_vector, dtype=np.float32).reshape(-1)
    if mode == "bm25":
        fused: NDArray[Any] = bm25
    elif mode == "embedding":
        fused = cosine
    elif fusion == "rrf":
        # Passages without any question word get no BM25 rank at all.
        fused = 1.0 / (_RRF_K + _ranks(cosine)) + np.where(bm25 > 0, 1.0 / (_RRF_K + _ranks(bm25)), 0.0)
    else:
        fused = _WEIGHTED_BM25 * _minmax(bm25) + (1 - _WEIGHTED_BM25) * _minmax(cosine)
    k = min(k, n)
    top = np.argpartition(-fused, k - 1)[:k]
    top = top[np.argsort(-fused[top], kind="stable")]
    scores = calibrated_score(coverage[top], cosine[top])
    return [
        Hit(snapshot.passages[i], float(score), float(bm25[i]), float(cosine[i]))
        for i, score in zip(top.tolist(), scores.tolist(), strict=True)
    ]


class Retriever:
    """Answers "which passages answer this?" against a :class:`DocsIndex`'s current snapshot.
    ``embed`` must be the embedder the index was built with; with ``embedder_name``, an index built
    by another (re-indexed under a new ``PENNY_EMBEDDER`` while this replica runs) is searched by
    its words alone until this replica restarts, rather than failing every question."""

    def __init__(
        self, index: DocsIndex, embed: Callable[[list[str]], NDArray[Any]], *, fusion: Fusion = "weighted",
        embedder_name: str | None = None,
    ) -> None:
        self._index = index
        self._embed = embed
        self._fusion: Fusion = fusion
        self._embedder_name = embedder_name
        self._warned = False

    def search(self, question: str, *, k: int = 5, mode: Mode = "hybrid") -> list[Hit]:
        snapshot = self._index.snapshot
        if self._embedder_name is not None and snapshot.passages and snapshot.embedder != self._embedder_name:
            if not self._warned:
                self._warned = True
                get_logger().warning("docs_index_other_embedder", index=snapshot.embedder, ours=self._embedder_name)
            mode = "bm25"
        vector = None if mode == "bm25" else np.asarray(self._embed([question]), dtype=np.float32)[0]
        return search(snapshot, question, vector, k=k, mode=mode, fusion=self._fusion)
