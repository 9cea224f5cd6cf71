"""The hit decision: ordering and reasons, and ``evaluate`` on a hand-counted pair file."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from proxy_core.semantic.decision import (
    FALLBACK_THRESHOLD,
    Candidate,
    LabelledPair,
    decide,
    default_threshold,
    evaluate,
    format_report,
    load_pairs,
)
from proxy_core.semantic.embedders import WordLlamaEmbedder
from proxy_core.semantic.guard import NearMissGuard


@pytest.fixture(scope="module")
def guard() -> NearMissGuard:
    return NearMissGuard()


def test_exact_match_wins_over_more_similar_candidates(guard: NearMissGuard) -> None:
    d = decide(
        "How do I deploy?",
        [("How do I deploy to staging?", 0.99, "other"), ("how do i deploy", 0.40, "same")],
        threshold=0.6,
        guard=guard,
    )
    assert (d.status, d.reason, d.payload, d.similarity, d.hit) == ("exact", "exact match", "same", 1.0, True)


def test_best_accepted_candidate_above_threshold(guard: NearMissGuard) -> None:
    d = decide(
        "How do I enable 2FA?",
        [
            ("How can I enable 2FA?", 0.81, "paraphrase"),
            ("How do I disable 2FA?", 0.97, "opposite"),  # out of order on purpose
            ("What is 2FA?", 0.55, "below"),
        ],
        threshold=0.6,
        guard=guard,
    )
    assert d.status == "semantic"
    assert d.payload == "paraphrase"
    assert d.similarity == pytest.approx(0.81)
    assert d.reason == "semantic match at 0.81"
    assert d.matched_question == "How can I enable 2FA?"
    assert [r.question for r in d.rejected] == ["How do I disable 2FA?"]
    assert d.rejected[0].reason == "antonym: disable/enable"


def test_miss_reasons(guard: NearMissGuard) -> None:
    assert decide("q?", [], threshold=0.6, guard=guard).reason == "no cached question in scope"
    below = decide("How do I deploy?", [("Where are the logs?", 0.42, 1)], threshold=0.6, guard=guard)
    assert (below.status, below.reason, below.payload) == ("miss", "below threshold at 0.42 (< 0.60)", None)
    rejected = decide(
        "How do I stop the dev server?",
        [Candidate("How do I start the dev server?", 0.9, 1)],
        threshold=0.6,
        guard=guard,
    )
    assert rejected.status == "miss" and not rejected.hit
    assert rejected.reason == "rejected: antonym: start/stop (similarity 0.90)"


def test_no_guard_is_the_common_rule() -> None:
    d = decide(
        "How do I stop the dev server?", [("How do I start the dev server?", 0.96, 1)], threshold=0.95, guard=None
    )
    assert (d.status, d.payload) == ("semantic", 1)


def test_stored_analysis_is_used(guard: NearMissGuard) -> None:
    stored = guard.analyse("How do I start the dev server?")
    d = decide(
        "How do I stop the dev server?",
        [Candidate("How do I start the dev server?", 0.9, 1, stored)],
        threshold=0.6,
        guard=guard,
        analysis=guard.analyse("How do I stop the dev server?"),
    )
    assert d.reason.startswith("rejected: antonym")


def test_default_thresholds() -> None:
    assert default_threshold("local:wordllama") == 0.60
    assert default_threshold("openai:all-MiniLM-L6-v2?dimensions=384") == 0.68
    assert default_threshold("openai:text-embedding-3-small") == FALLBACK_THRESHOLD


# -- evaluate --------------------------------------------------------------------------------------


class TableEmbedder:
    """Vectors from a table, so each pair's cosine is known exactly (stands in for a model)."""

    name = "table"
    dims = 2

    def __init__(self, vectors: dict[str, NDArray[np.float32]]) -> None:
        self.vectors = vectors

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        return np.stack([self.vectors[t] for t in texts]) if texts else np.zeros((0, 2), np.float32)


def unit(similarity: float) -> NDArray[np.float32]:
    angle = math.acos(similarity)
    return np.array([math.cos(angle), math.sin(angle)], dtype=np.float32)


PAIRS = [
    # (a, b, label, cosine)
    ("How do I reset my password?", "How can I reset my password?", 1, 0.99),  # both hit
    ("How do I enable 2FA?", "How do I disable 2FA?", 0, 0.97),  # rule false hit; guard rejects
    ("Where are the production logs?", "Where can I find prod logs?", 1, 0.80),  # only Penny hits
    ("What's the price?", "What's the price after discount?", 0, 0.90),  # guard rejects; rule below 0.95
    ("What is Penny?", "what is penny", 1, 0.30),  # exact after normalising: both hit
    ("Where is the VPN guide?", "How do I get a parking badge?", 0, 0.20),  # nobody hits
]


def test_evaluate_matches_hand_counts(tmp_path: Path, guard: NearMissGuard) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"a": a, "b": b, "label": y}) + "\n" for a, b, y, _ in PAIRS))
    pairs = load_pairs(path)
    table = {}
    for a, b, _, sim in PAIRS:
        table[a] = np.array([1.0, 0.0], dtype=np.float32)
        table[b] = unit(sim)
    report = evaluate(pairs, TableEmbedder(table), threshold=0.75, guard=guard, thresholds_sweep=(0.5, 0.85, 0.95))

    assert (report.pairs, report.positives, report.negatives) == (6, 3, 3)
    # Penny at 0.75: hits pairs 1, 3, 5 — all label 1
    assert (report.true_hits, report.false_hits) == (3, 0)
    assert (report.recall, report.precision, report.false_hit_rate) == (1.0, 1.0, 0.0)
    # common rule (cos >= 0.95, no guard): pairs 1, 2, 5
    rule = report.rule
    assert (rule.true_hits, rule.false_hits) == (2, 1)
    assert rule.recall == pytest.approx(2 / 3) and rule.precision == pytest.approx(2 / 3)
    assert rule.false_hit_rate == pytest.approx(1 / 3)
    # sweep, Penny: at 0.85 pair 3 (0.80) drops out; rule at 0.85 adds pair 4
    by_t = {o.threshold: o for o in report.sweep}
    assert (by_t[0.85].true_hits, by_t[0.85].false_hits) == (2, 0)
    assert (by_t[0.5].true_hits, by_t[0.5].false_hits) == (3, 0)
    rule_by_t = {o.threshold: o for o in report.rule_sweep}
    assert (rule_by_t[0.85].true_hits, rule_by_t[0.85].false_hits) == (2, 2)
    assert (rule_by_t[0.5].true_hits, rule_by_t[0.5].false_hits) == (3, 2)

    text = format_report(report)
    assert "penny: cos >= 0.75 + guard" in text and "common: cos >= 0.95, no guard" in text
    decoded = json.loads(report.to_json())
    assert decoded["true_hits"] == 3 and decoded["rule"]["false_hits"] == 1


def test_evaluate_without_guard_is_the_rule_at_that_threshold(tmp_path: Path) -> None:
    pairs = load_pairs_from(tmp_path, PAIRS)
    table = {t: v for a, b, _, s in PAIRS for t, v in ((a, np.array([1.0, 0.0], np.float32)), (b, unit(s)))}
    report = evaluate(pairs, TableEmbedder(table), threshold=0.95, guard=None)
    assert (report.true_hits, report.false_hits) == (report.rule.true_hits, report.rule.false_hits)
    assert report.guard == "off"


def test_evaluate_with_wordllama_runs_end_to_end(tmp_path: Path, guard: NearMissGuard) -> None:
    pairs = load_pairs_from(tmp_path, PAIRS)
    report = evaluate(pairs, WordLlamaEmbedder(), threshold=0.6, guard=guard)
    assert report.false_hits == 0
    assert report.embedder == "local:wordllama"


def test_load_pairs_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": "x", "b": "y", "label": 1}\n\n{"a": "x"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:3"):
        load_pairs(path)


def load_pairs_from(tmp_path: Path, rows: Sequence[tuple[str, str, int, float]]) -> list[LabelledPair]:
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"a": a, "b": b, "label": y}) + "\n" for a, b, y, _ in rows))
    return load_pairs(path)
