"""The hit decision: policies, ordering and reasons, the calibration and its operating points, and
``evaluate`` on a hand-counted pair file (against the plain cosine rule at the same recall)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from proxy_core.errors import ConfigurationError
from proxy_core.semantic.calibrated import (
    BASE_FEATURES,
    FEATURES,
    Calibration,
    OperatingPoint,
    calibration_for,
    embedder_key,
    features,
)
from proxy_core.semantic.decision import (
    DEFAULT_MAX_WRONG,
    FALLBACK_THRESHOLD,
    CalibratedPolicy,
    Candidate,
    LabelledPair,
    ThresholdPolicy,
    decide,
    default_threshold,
    evaluate,
    format_report,
    hit_policy,
    load_pairs,
)
from proxy_core.semantic.embedders import WordLlamaEmbedder
from proxy_core.semantic.guard import GuardSettings, NearMissGuard
from proxy_core.settings import PennySettings


@pytest.fixture(scope="module")
def guard() -> NearMissGuard:
    return NearMissGuard()


@pytest.fixture(scope="module")
def strict(guard: NearMissGuard) -> ThresholdPolicy:
    return ThresholdPolicy(0.6, guard)


POINTS = (OperatingPoint(0.9, 0.05, 0.2), OperatingPoint(0.8, 0.1, 0.4), OperatingPoint(0.5, 0.25, 0.7))


def cosine_only(guard: NearMissGuard, *, bias: float = -8.0, unmatched: float = 0.0) -> Calibration:
    """p = sigmoid(10·cos + bias), less ``unmatched`` per log(1 + new words without a counterpart)."""
    weights = [0.0] * len(FEATURES)
    weights[FEATURES.index("cosine")] = 10.0
    weights[FEATURES.index("unmatched_new")] = -unmatched
    return Calibration(
        embedder="table",
        features=FEATURES,
        weights=tuple(weights),
        bias=bias,
        bounds=tuple((0.0, 1.0) for _ in FEATURES),
        points=POINTS,
        guard=repr(guard.settings),
        source="test",
    )


def sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


# -- decide ----------------------------------------------------------------------------------------


def test_exact_match_wins_over_more_similar_candidates(strict: ThresholdPolicy) -> None:
    d = decide(
        "How do I deploy?",
        [("How do I deploy to staging?", 0.99, "other"), ("how do i deploy", 0.40, "same")],
        policy=strict,
    )
    assert (d.status, d.reason, d.payload, d.similarity, d.hit) == ("exact", "exact match", "same", 1.0, True)


def test_best_accepted_candidate_above_threshold(strict: ThresholdPolicy) -> None:
    d = decide(
        "How do I enable 2FA?",
        [
            ("How can I enable 2FA?", 0.81, "paraphrase"),
            ("How do I disable 2FA?", 0.97, "opposite"),  # out of order on purpose
            ("What is 2FA?", 0.55, "below"),
        ],
        policy=strict,
    )
    assert d.status == "semantic"
    assert d.payload == "paraphrase"
    assert d.similarity == pytest.approx(0.81)
    assert d.reason == "semantic match at 0.81"
    assert d.matched_question == "How can I enable 2FA?"
    assert [r.question for r in d.rejected] == ["How do I disable 2FA?"]
    assert d.rejected[0].reason == "antonym: disable/enable"


def test_miss_reasons(strict: ThresholdPolicy) -> None:
    assert decide("q?", [], policy=strict).reason == "no cached question in scope"
    below = decide("How do I deploy?", [("Where are the logs?", 0.42, 1)], policy=strict)
    assert (below.status, below.reason, below.payload) == ("miss", "below threshold at 0.42 (< 0.60)", None)
    rejected = decide(
        "How do I stop the dev server?", [Candidate("How do I start the dev server?", 0.9, 1)], policy=strict
    )
    assert rejected.status == "miss" and not rejected.hit
    assert rejected.reason == "rejected: antonym: start/stop (similarity 0.90)"


def test_no_guard_is_the_plain_cosine_rule() -> None:
    rule = ThresholdPolicy(0.95, None)
    d = decide("How do I stop the dev server?", [("How do I start the dev server?", 0.96, 1)], policy=rule)
    assert (d.status, d.payload) == ("semantic", 1)
    assert rule.describe() == "cos >= 0.95, no guard"


def test_stored_analysis_is_used(guard: NearMissGuard, strict: ThresholdPolicy) -> None:
    stored = guard.analyse("How do I start the dev server?")
    d = decide(
        "How do I stop the dev server?",
        [Candidate("How do I start the dev server?", 0.9, 1, stored)],
        policy=strict,
        analysis=guard.analyse("How do I stop the dev server?"),
    )
    assert d.reason.startswith("rejected: antonym")


# -- the calibrated policy -------------------------------------------------------------------------


def test_calibrated_probability_is_the_logistic_of_the_features(guard: NearMissGuard) -> None:
    cal = cosine_only(guard)
    c = guard.compare(guard.analyse("Where are the production logs?"), guard.analyse("Where can I find prod logs?"))
    assert cal.probability(0.9, c) == pytest.approx(sigmoid(10 * 0.9 - 8))
    assert cal.probability(0.3, c) < cal.probability(0.9, c)


def test_operating_point_is_the_loosest_within_the_budget(guard: NearMissGuard) -> None:
    cal = cosine_only(guard)
    assert cal.operating_point(0.10) == OperatingPoint(0.8, 0.1, 0.4)
    assert cal.operating_point(0.12) == OperatingPoint(0.8, 0.1, 0.4)
    assert cal.operating_point(0.30) == OperatingPoint(0.5, 0.25, 0.7)
    assert cal.operating_point(0.01) == OperatingPoint(0.9, 0.05, 0.2)  # none fits: the strictest


def test_candidates_below_the_floor_could_never_reach_the_operating_point(guard: NearMissGuard) -> None:
    cal = cosine_only(guard)
    floor = cal.min_similarity(0.8)
    assert sigmoid(10 * floor - 8) >= 0.8 > sigmoid(10 * (floor - 0.01) - 8)
    policy = CalibratedPolicy(cal, guard, 0.10)
    assert (policy.min_probability, policy.expected_wrong, policy.floor) == (0.8, 0.1, floor)
    # where the calibration pairs served nothing less similar, the floor rises to that
    seen = replace(cal, points=(OperatingPoint(0.8, 0.1, 0.4, min_similarity=0.97),))
    assert CalibratedPolicy(seen, guard, 0.10).floor == 0.97
    assert Calibration.from_json(seen.to_json()).points[0].min_similarity == 0.97


def test_calibrated_policy_vetoes_then_weighs(guard: NearMissGuard) -> None:
    policy = CalibratedPolicy(cosine_only(guard), guard, 0.10)  # serves from p >= 0.8, cos >= 0.94
    hit = decide("Where can I find prod logs?", [("Where are the production logs?", 0.97, "logs")], policy=policy)
    assert hit.status == "semantic" and hit.payload == "logs"
    assert hit.probability == pytest.approx(sigmoid(1.7))
    assert hit.reason == f"semantic match at 0.97 (p = {sigmoid(1.7):.2f})"
    vetoed = decide("How do I disable 2FA?", [("How do I enable 2FA?", 0.99, 1)], policy=policy)
    assert vetoed.reason == "rejected: antonym: enable/disable (similarity 0.99)"
    assert vetoed.probability is None
    floor = policy.floor
    assert decide("Where can I find prod logs?", [("Where are the production logs?", floor, 1)], policy=policy).hit
    below = decide("Where can I find prod logs?", [("Where are the production logs?", floor - 0.02, 1)], policy=policy)
    assert below.reason == f"below threshold at {floor - 0.02:.2f} (< {floor:.2f})"
    weighed = CalibratedPolicy(cosine_only(guard, unmatched=2.0), guard, 0.10)
    d = decide("How do I get a parking badge?", [("How do I get a badge?", 0.96, 1)], policy=weighed)
    p = sigmoid(10 * 0.96 - 8 - 2 * math.log(2))
    assert d.reason == f"rejected: unlikely to serve: p = {p:.2f} < 0.80 (similarity 0.96)"


@pytest.mark.parametrize(
    ("cached", "new"),
    [
        ("Where are the production logs?", "Where can I find prod logs?"),
        ("How do I start the dev server?", "What's the command to run the development server?"),
        ("What's the memory limit for a worker?", "How much RAM can a worker use?"),
        ("Who approves PTO?", "Who approves PTO requests for contractors in Berlin?"),
    ],
)
def test_the_bound_before_aligning_words_never_undercuts_the_probability(guard: NearMissGuard, cached: str,
                                                                          new: str) -> None:  # fmt: skip
    cal = calibration_for("local:wordllama")
    assert cal is not None
    a, b = guard.analyse(cached), guard.analyse(new)
    quick = guard.compare(a, b, align=False)
    assert not quick.aligned and (quick.unmatched_cached, quick.unmatched_new, quick.coverage) == ((), (), 1.0)
    for similarity in (0.5, 0.8, 0.95):
        assert cal.upper_bound(similarity, quick) >= cal.probability(similarity, guard.compare(a, b)) - 1e-12


def test_hit_policy_follows_the_settings() -> None:
    calibrated = hit_policy("local:wordllama")
    assert isinstance(calibrated, CalibratedPolicy) and calibrated.max_wrong == 0.15  # WordLlama's own default
    minilm = hit_policy("openai:all-MiniLM-L6-v2?dimensions=384")
    assert isinstance(minilm, CalibratedPolicy) and minilm.max_wrong == 0.12
    assert calibrated.describe().startswith("calibrated, p >= ")
    assert isinstance(hit_policy("openai:all-MiniLM-L6-v2?dimensions=384", max_wrong=0.05), CalibratedPolicy)
    expert = hit_policy("local:wordllama", threshold=0.7, max_wrong=0.05)
    assert isinstance(expert, ThresholdPolicy) and expert.threshold == 0.7 and expert.guard is not None
    off = hit_policy("local:wordllama", guard=False)
    assert isinstance(off, ThresholdPolicy) and off.guard is None and off.threshold == 0.60
    unknown = hit_policy("openai:text-embedding-3-small")  # no calibration ships for it
    assert isinstance(unknown, ThresholdPolicy) and unknown.threshold == FALLBACK_THRESHOLD
    assert isinstance(hit_policy("local:wordllama?dims=128"), ThresholdPolicy)  # another vector space


def test_default_thresholds() -> None:
    assert default_threshold("local:wordllama") == 0.60
    assert default_threshold("openai:all-MiniLM-L6-v2?dimensions=384") == 0.68
    assert default_threshold("openai:text-embedding-3-small") == FALLBACK_THRESHOLD


def test_each_embedder_has_its_own_default_budget() -> None:
    assert PennySettings().cache_max_wrong is None  # unset: the embedder's calibration says
    wordllama, minilm = calibration_for("local:wordllama"), calibration_for("openai:all-MiniLM-L6-v2")
    assert wordllama is not None and minilm is not None
    assert (wordllama.default_max_wrong, minilm.default_max_wrong) == (0.15, 0.12)
    assert wordllama.default_reason and minilm.default_reason
    assert CalibratedPolicy(wordllama, NearMissGuard()).max_wrong == 0.15
    assert CalibratedPolicy(wordllama, NearMissGuard(), 0.05).max_wrong == 0.05
    # a calibration file without a default (written before there were per-embedder defaults)
    raw = json.loads(wordllama.to_json())
    del raw["default_max_wrong"], raw["default_reason"]
    old = Calibration.from_json(json.dumps(raw))
    assert old.default_max_wrong == DEFAULT_MAX_WRONG == 0.12
    assert Calibration.from_json(wordllama.to_json()) == wordllama


@pytest.mark.parametrize("name", ["local:wordllama", "openai:all-MiniLM-L6-v2"])
def test_shipped_calibrations_match_the_guard_they_were_fitted_with(name: str) -> None:
    cal = calibration_for(name)
    assert cal is not None and cal.embedder == name
    assert embedder_key(name + "?dimensions=384") in {"local-wordllama", "openai-all-MiniLM-L6-v2"}
    # Refit (python -m bench.calibrate) when the guard's defaults change: the evidence would differ.
    assert cal.guard == repr(GuardSettings())
    # WordLlama's model uses the alignment's similarities too; MiniLM's did better without them
    assert cal.features == (FEATURES if name == "local:wordllama" else BASE_FEATURES)
    assert len(cal.weights) == len(cal.features) == len(cal.bounds) == len(cal.columns)
    probabilities = [p.min_probability for p in cal.points]
    assert probabilities == sorted(probabilities, reverse=True)
    wrong = [p.expected_wrong for p in cal.points]
    recall = [p.recall for p in cal.points]
    assert wrong == sorted(wrong) and recall == sorted(recall)  # looser serves more, and more wrongly
    assert Calibration.from_json(cal.to_json()) == cal


def test_a_calibration_with_other_features_is_refused(guard: NearMissGuard) -> None:
    raw = json.loads(cosine_only(guard).to_json())
    raw["features"] = ["cosine"]  # one name, ten weights
    with pytest.raises(ConfigurationError, match="every feature must be one of"):
        Calibration.from_json(json.dumps(raw))
    raw = json.loads(cosine_only(guard).to_json())
    raw["features"][3] = "sentiment"  # not an input Penny computes
    with pytest.raises(ConfigurationError, match="every feature must be one of"):
        Calibration.from_json(json.dumps(raw))


def test_a_calibration_uses_the_features_it_names(guard: NearMissGuard) -> None:
    """A model of a subset of FEATURES takes its inputs by name (MiniLM's model uses the first ten)."""
    full = cosine_only(guard)
    subset = replace(full, features=BASE_FEATURES, weights=full.weights[:10], bounds=full.bounds[:10])
    a, b = guard.analyse("How do I start the dev server?"), guard.analyse("What's the command to run the dev server?")
    c = guard.compare(a, b)
    assert subset.inputs(0.8, c) == features(0.8, c)[:10]
    assert subset.probability(0.8, c) == pytest.approx(full.probability(0.8, c))  # the rest weigh 0 in both


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
    ("What is Penny?", "what is penny", 1, 0.30),  # exact after normalising: Penny hits, cosine is low
    ("Where is the VPN guide?", "How do I get a parking badge?", 0, 0.20),  # nobody hits
]


def table_of(rows: Sequence[tuple[str, str, int, float]]) -> TableEmbedder:
    table = {}
    for a, b, _, sim in rows:
        table[a] = np.array([1.0, 0.0], dtype=np.float32)
        table[b] = unit(sim)
    return TableEmbedder(table)


def test_evaluate_matches_hand_counts(tmp_path: Path, guard: NearMissGuard) -> None:
    pairs = load_pairs_from(tmp_path, PAIRS)
    report = evaluate(pairs, table_of(PAIRS), policy=ThresholdPolicy(0.75, guard))

    assert (report.pairs, report.positives, report.negatives) == (6, 3, 3)
    # Penny at 0.75: hits pairs 1, 3, 5 — all label 1
    assert (report.true_hits, report.false_hits) == (3, 0)
    assert (report.recall, report.precision, report.false_hit_rate) == (1.0, 1.0, 0.0)
    assert report.measured_wrong == 0.0 and report.expected_wrong is None and report.max_wrong is None
    # plain cosine needs every pair down to cos 0.30 for 3 duplicates: 3 of its 5 hits are right
    assert report.baseline_precision_at_recall == pytest.approx(3 / 5)
    assert report.baseline_threshold == pytest.approx(0.30, abs=1e-6)
    assert report.lift == pytest.approx(1 - 3 / 5)
    # the common rule (cos >= 0.95, no guard): pairs 1 and 2
    rule = report.rule
    assert (rule.true_hits, rule.false_hits) == (1, 1)
    # curves: Penny's over the cosine under the guard, the baseline's over the cosine alone
    penny = {o.threshold: o for o in report.curve}
    assert (penny[0.85].true_hits, penny[0.85].false_hits) == (2, 0)  # pair 3 (0.80) drops out
    assert (penny[0.5].true_hits, penny[0.5].false_hits) == (3, 0)
    base = {o.threshold: o for o in report.baseline_curve}
    assert (base[0.85].true_hits, base[0.85].false_hits) == (1, 2)
    assert (base[0.5].true_hits, base[0.5].false_hits) == (2, 2)

    text = format_report(report)
    assert "decision: cos >= 0.75 + guard" in text
    assert "plain cosine, same recall (cos >= 0.300)" in text and "+40.0 pt" in text
    decoded = json.loads(report.to_json())
    assert decoded["true_hits"] == 3 and decoded["baseline_precision_at_recall"] == pytest.approx(0.6)
    assert {"curve", "baseline_curve", "lift", "expected_wrong", "measured_wrong"} <= decoded.keys()


def test_evaluate_reports_expected_and_measured_wrong_hits(tmp_path: Path, guard: NearMissGuard) -> None:
    rows = [
        ("How do I reset my password?", "How can I reset my password?", 1, 0.99),
        ("Where are the production logs?", "Where can I find prod logs?", 1, 0.97),
        ("What is Kafka?", "What's Kafka?", 0, 0.96),  # served: a false hit
        ("How do I enable 2FA?", "How do I disable 2FA?", 0, 0.99),  # vetoed whatever p
        ("How do I get a badge?", "How do I get a parking badge?", 1, 0.96),  # too unlikely (p 0.55)
    ]
    pairs = load_pairs_from(tmp_path, rows)
    policy = CalibratedPolicy(cosine_only(guard, unmatched=2.0), guard, 0.10)
    report = evaluate(pairs, table_of(rows), policy=policy)
    assert (report.true_hits, report.false_hits) == (2, 1)
    assert report.max_wrong == 0.10
    served = [sigmoid(10 * s - 8) for s in (0.99, 0.97, 0.96)]
    assert report.expected_wrong == pytest.approx(sum(1 - p for p in served) / 3)
    assert report.measured_wrong == pytest.approx(1 / 3)
    assert report.reasons == {"unlikely to serve": 1}
    text = format_report(report)
    assert "wrong hits: at most 10.0% allowed (PENNY_CACHE_MAX_WRONG)" in text
    assert "on this file: 3 hits served, expected" in text and "measured 33.3% (1 wrong)" in text
    penny = {o.threshold: o for o in report.curve}
    assert (penny[0.5].true_hits, penny[0.5].false_hits) == (3, 1)  # the badge pair joins at p >= 0.5


def test_evaluate_without_guard_is_the_plain_rule_at_that_threshold(tmp_path: Path) -> None:
    pairs = load_pairs_from(tmp_path, PAIRS)
    report = evaluate(pairs, table_of(PAIRS), policy=ThresholdPolicy(0.95, None))
    assert (report.true_hits, report.false_hits) == (2, 1)  # the exact pair, and cos >= 0.95
    assert report.policy == "cos >= 0.95, no guard"


def test_evaluate_with_wordllama_and_the_default_policy(tmp_path: Path) -> None:
    pairs = load_pairs_from(tmp_path, PAIRS)
    report = evaluate(pairs, WordLlamaEmbedder(), policy=hit_policy("local:wordllama"))
    assert report.false_hits == 0
    assert report.embedder == "local:wordllama"
    assert report.expected_wrong is not None and report.max_wrong == 0.15


def test_load_pairs_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": "x", "b": "y", "label": 1}\n\n{"a": "x"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:3"):
        load_pairs(path)


def test_a_guard_with_other_settings_changes_the_evidence(guard: NearMissGuard) -> None:
    loose = NearMissGuard(replace(guard.settings, conditions=False))
    a, b = loose.analyse("How do I get VPN access?"), loose.analyse("How do I get VPN access as a contractor?")
    assert loose.compare(a, b).veto is None and guard.compare(a, b).veto == "condition added: as a contractor"


def load_pairs_from(tmp_path: Path, rows: Sequence[tuple[str, str, int, float]]) -> list[LabelledPair]:
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"a": a, "b": b, "label": y}) + "\n" for a, b, y, _ in rows))
    return load_pairs(path)


@pytest.mark.parametrize(("content", "why"), [
    (b"", "pairs.jsonl: no pairs to evaluate"),  # was an evaluation of nothing: every rate 0%, exit 0
    (b"\n  \n", "pairs.jsonl: no pairs to evaluate"),
    (b'{"a": "x", "b": "y", "label": 1}\n\xff\xfe\n', "pairs.jsonl:2: not UTF-8 text"),  # named no file or line
    (b'{"a": "x", "b": "y", "label": 2}\n', "pairs.jsonl:1: each line is"),  # was counted as a 0
])
def test_load_pairs_refuses_a_file_with_no_pairs_or_unreadable_lines(content: bytes, why: str,
                                                                     tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(why)):
        load_pairs(path)
