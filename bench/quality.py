"""Quality of the semantic cache's hit decision, always next to the plain cosine rule at the same
recall, per embedder. Prints the markdown of bench/QUALITY.md and draws bench/quality-curves.png.

    .venv/bin/python -m bench.quality                 # WordLlama
    .venv/bin/python -m bench.quality --minilm        # and all-MiniLM-L6-v2 (bench/embed_server.py, .venv-quality)

The pair files come from ``$PENNY_PAIRS_DIR`` or ../shared/data (bench/pairs.py). The balanced QQP
file is split as bench/calibrate.py split it: the decision was fitted, and every setting chosen, on
the fit part; the numbers here are from the held-out part, the near-miss file and the stress file.
The curves need matplotlib (``pip install -e '.[bench]'``); without it the tables still print.
MiniLM runs in the separate ``.venv-quality`` (torch + sentence-transformers) behind
bench/embed_server.py and is reached through Penny's ``openai:`` embedder and the real openai SDK.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from bench.pairs import BALANCED, NEARMISS, STRESS, CachedEmbedder, embedders, pairs, split
from proxy_core.cache import normalize_question
from proxy_core.semantic.calibrated import calibration_for
from proxy_core.semantic.decision import (
    CalibratedPolicy,
    Candidate,
    EvalReport,
    HitPolicy,
    LabelledPair,
    ThresholdPolicy,
    decide,
    default_threshold,
    evaluate,
    load_pairs,
)
from proxy_core.semantic.guard import GuardSettings, NearMissGuard, WordVectors
from proxy_core.semantic.index import VectorIndex

ROOT = Path(__file__).resolve().parent.parent
PLOT = ROOT / "bench" / "quality-curves.png"
PROBES = ROOT / "bench" / "data" / "class-probes.jsonl"
BUDGETS = (0.05, 0.08, 0.10, 0.12, 0.15, 0.20, 0.25)
# Each veto class, switched off alone, to see what it costs (recall) and what it buys (false hits).
CLASSES: tuple[tuple[str, dict[str, object]], ...] = (
    ("negation", {"negation": False}),
    ("numbers, dates, periods, codes", {"numbers": False}),
    ("relations around numbers and times", {"relations": False}),
    ("quantifiers", {"quantifiers": False}),
    ("scope of the asker", {"scope": False}),
    ("opposites (list, morphology, scales)", {"antonyms": False}),
    ("… of which scale sides by word vectors", {"scale_similarity": None}),
    ("swapped roles", {"roles": False}),
    ("entities", {"entities": False}),
    ("a word swapped in a minimal pair", {"substitution_veto": False}),
    ("a condition only one side adds", {"conditions": False}),
    ("a qualifier only one side adds", {"modifiers": False}),
)
# The reasons each class gives (the first veto found is the one reported).
REASONS = {
    "negation": {"negation differs"},
    "numbers, dates, periods, codes": {"number differs", "date differs", "period differs", "code differs",
                                       "version differs"},
    "relations around numbers and times": {"relation differs"},
    "quantifiers": {"quantifier differs"},
    "scope of the asker": {"scope differs"},
    "opposites (list, morphology, scales)": {"antonym"},
    "… of which scale sides by word vectors": set(),
    "swapped roles": {"roles differ"},
    "entities": {"entity differs"},
    "a word swapped in a minimal pair": {"word differs"},
    "a condition only one side adds": {"condition added"},
    "a qualifier only one side adds": {"modifier added"},
}  # fmt: skip


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def lift(r: EvalReport) -> str:
    return "n/a" if r.lift is None else f"{100 * r.lift:+.1f} pt"


def summary(name: str, reports: dict[str, EvalReport]) -> list[str]:
    out = [
        f"### {name}", "",
        "| file | decision | recall | precision | false hits | plain cosine, same recall | Penny − cosine | "
        "wrong hits expected / measured |",
        "|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for label, r in reports.items():
        expected = pct(r.expected_wrong) if r.expected_wrong is not None else "—"
        out.append(
            f"| {label} | {r.policy} | {pct(r.recall)} | {pct(r.precision)} | {r.false_hits} / {r.negatives} | "
            f"{pct(r.baseline_precision_at_recall)}"
            f"{'' if r.baseline_threshold is None else f' (cos ≥ {r.baseline_threshold:.3f})'} | {lift(r)} | "
            f"{expected} / {pct(r.measured_wrong)} |"
        )
    return out


def budgets(embedder: CachedEmbedder, guard: NearMissGuard, held: Sequence[LabelledPair],
            nearmiss: Sequence[LabelledPair]) -> list[str]:  # fmt: skip
    calibration = calibration_for(embedder.name)
    assert calibration is not None
    out = [
        f"{embedder.name.split('?')[0]}:", "",
        "| PENNY_CACHE_MAX_WRONG | serves from p ≥ | held-out recall | precision | plain cosine, same recall | "
        "Penny − cosine | wrong expected / measured | near-miss recall | near-miss false hits |",
        "|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for budget in sorted({*BUDGETS, calibration.default_max_wrong}):
        policy = CalibratedPolicy(calibration, guard, budget)
        h = evaluate(held, embedder, policy=policy)
        n = evaluate(nearmiss, embedder, policy=policy)
        mark = " (default)" if budget == calibration.default_max_wrong else ""
        label = f"{budget:.2f}" if round(budget, 2) == budget else f"{budget:.3f}"
        out.append(
            f"| {label}{mark} | {policy.min_probability:.2f} | {pct(h.recall)} | {pct(h.precision)} | "
            f"{pct(h.baseline_precision_at_recall)} | {lift(h)} | {pct(h.expected_wrong)} / {pct(h.measured_wrong)} | "
            f"{n.true_hits} / {n.positives} | {n.false_hits} / {n.negatives} |"
        )
    return out


def classes(embedder: CachedEmbedder, vectors: WordVectors, files: dict[str, Sequence[LabelledPair]]) -> list[str]:
    """What each veto class does, whatever the operating point: among the pairs that reach the
    decision (cosine at or above the default policy's floor), those this class vetoes and no
    other does — duplicates it turns away (the recall it can cost) / non-duplicates it turns away
    (the false hits it can remove)."""
    calibration = calibration_for(embedder.name)
    assert calibration is not None
    base = GuardSettings()
    floor = CalibratedPolicy(calibration, NearMissGuard(base, word_vectors=vectors)).floor
    guards = {label: NearMissGuard(replace(base, **change), word_vectors=vectors)  # type: ignore[arg-type]
              for label, change in CLASSES}  # fmt: skip
    default = NearMissGuard(base, word_vectors=vectors)
    counts = {label: {name: [0, 0] for name in files} for label, _ in CLASSES}
    given = {label: {name: [0, 0] for name in files} for label, _ in CLASSES}
    for name, rows in files.items():
        a = embedder.embed([p.a for p in rows])
        b = embedder.embed([p.b for p in rows])
        for p, sim in zip(rows, (a * b).sum(axis=1), strict=True):
            if sim < floor or normalize_question(p.a) == normalize_question(p.b):
                continue
            cached, new = default.analyse(p.a), default.analyse(p.b)
            veto = default.compare(cached, new).veto
            if veto is None:
                continue
            kind = veto.split(":", 1)[0]
            for label, guard in guards.items():
                if kind in REASONS[label]:
                    given[label][name][p.label] += 1
                if guard.compare(guard.analyse(p.a), guard.analyse(p.b)).veto is None:
                    counts[label][name][p.label] += 1
    head = " | ".join(f"{name}" for name in files)
    out = [f"| veto class | {head} |", "|---|" + "---|" * len(files)]
    for label, _ in CLASSES:
        cells = zip(given[label].values(), counts[label].values(), strict=True)
        out.append(f"| {label} | " + " | ".join(f"{g[1]} / {g[0]} ({c[1]} / {c[0]})" for g, c in cells) + " |")
    return out


def speed(embedder: CachedEmbedder, held: Sequence[LabelledPair], n: int = 500) -> list[str]:
    """In process: embed one question, look up the 4 nearest among 1,000 cached ones, decide."""
    inner = embedder.inner  # time the model itself, not the bench's vector cache
    cached = list(dict.fromkeys(p.a for p in held))[:1000]
    asked = [p.b for p in held if p.b not in cached][:n]
    index = VectorIndex(embedder.dims)
    index.upsert_many([(f"e{i}", "s", "", q, normalize_question(q), 1e12) for i, q in enumerate(cached)],
                      inner.embed(cached))  # fmt: skip
    out = ["| decision | new question: p50 / p95 | the same question again: p50 / p95 |", "|---|---|---|"]
    policies: list[tuple[str, HitPolicy]] = [
        (f"calibrated (max wrong {calibration_for(embedder.name).default_max_wrong:g})",  # type: ignore[union-attr]
         CalibratedPolicy(calibration_for(embedder.name), NearMissGuard())),  # type: ignore[arg-type]
        (f"threshold {default_threshold(embedder.name):.2f} + guard",
         ThresholdPolicy(default_threshold(embedder.name), NearMissGuard())),
    ]  # fmt: skip
    for label, policy in policies:
        assert policy.guard is not None
        for q in cached + asked:
            policy.guard.analyse(q)  # per-word vectors warm, as in a running process
        for q in asked:
            policy.guard._memo.pop(q, None)  # … but the asked questions are new

        def once(q: str, policy: HitPolicy = policy) -> float:
            t = time.perf_counter()
            found = index.nearest("s", inner.embed([q])[0], 4, 0.0)
            decide(q, [Candidate(e.question, s, e) for e, s in found], policy=policy)
            return (time.perf_counter() - t) * 1e6

        new = sorted(once(q) for q in asked)
        again = sorted(once(q) for q in asked)
        out.append(f"| {label} | {statistics.median(new):.0f} / {new[int(0.95 * len(new))]:.0f} µs | "
                   f"{statistics.median(again):.0f} / {again[int(0.95 * len(again))]:.0f} µs |")  # fmt: skip
    return out


def plot(curves: dict[str, dict[str, EvalReport]], path: Path) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "(no plot: matplotlib is not installed; pip install -e '.[bench]')"
    fig, axes = plt.subplots(1, len(curves), figsize=(6.5 * len(curves), 5), squeeze=False)
    for ax, (name, reports) in zip(axes[0], curves.items(), strict=True):
        for (label, r), style in zip(reports.items(), ("-", "--"), strict=False):
            # points serving fewer than 20 pairs are noise, not a curve
            penny = [(o.recall, o.precision) for o in r.curve if o.true_hits + o.false_hits >= 20]
            base = [(o.recall, o.precision) for o in r.baseline_curve if o.true_hits + o.false_hits >= 20]
            ax.plot(*zip(*penny, strict=True), style, color="tab:blue", label=f"Penny, {label}")
            ax.plot(*zip(*base, strict=True), style, color="tab:gray", label=f"plain cosine, {label}")
            ax.plot([r.recall], [r.precision], "o", color="tab:red")
            ax.annotate(f"max wrong {r.max_wrong:.2f}", (r.recall, r.precision or 0), textcoords="offset points",
                        xytext=(6, 6), fontsize=8, color="tab:red")  # fmt: skip
        ax.set_title(name)
        ax.set_xlabel("recall (duplicates served)")
        ax.set_ylabel("precision (served hits that are right)")
        ax.set_xlim(0, 1)
        ax.set_ylim(0.5, 1.0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"![precision/recall curves]({path.name})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Semantic-cache hit quality: Penny vs the plain cosine rule.")
    parser.add_argument("--minilm", action="store_true", help="also all-MiniLM-L6-v2 via bench/embed_server.py")
    parser.add_argument("--minilm-url", help="an embed server already running, e.g. http://127.0.0.1:8765/v1")
    parser.add_argument("--plot", type=Path, default=PLOT, help=f"where to draw the curves (default {PLOT})")
    parser.add_argument("--no-classes", action="store_true", help="skip the veto-class table (the slow part)")
    args = parser.parse_args(argv)

    fit, held = split(pairs(BALANCED))
    nearmiss, stress, probes = pairs(NEARMISS), pairs(STRESS), load_pairs(PROBES)
    vectors = WordVectors.wordllama()
    guard = NearMissGuard(GuardSettings(), word_vectors=vectors)
    lines = [
        "## Penny next to the plain cosine rule", "",
        "Defaults: `PENNY_CACHE_MAX_WRONG` unset, so each embedder's own default budget (below), guard "
        f"`{GuardSettings()}`.", "",
        f"Files: the held-out part of `{BALANCED}` ({len(held)} pairs; fitted on the other {len(fit)}), "
        f"`{NEARMISS}` ({len(nearmiss)}), `{STRESS}` ({len(stress)}, hard negatives on purpose).", "",
    ]  # fmt: skip
    curves: dict[str, dict[str, EvalReport]] = {}
    with embedders(minilm=args.minilm, minilm_url=args.minilm_url) as models:
        for embedder in models:
            name = embedder.name.split("?")[0]
            policy = CalibratedPolicy(calibration_for(name), guard)  # type: ignore[arg-type]
            reports = {
                "held-out QQP": evaluate(held, embedder, policy=policy),
                "near-miss dev": evaluate(nearmiss, embedder, policy=policy),
                "stress dev": evaluate(stress, embedder, policy=policy),
            }
            curves[name] = {"held-out QQP": reports["held-out QQP"], "stress dev": reports["stress dev"]}
            lines += [*summary(name, reports), ""]
        lines += ["## Curves", "", plot(curves, args.plot), ""]
        lines += ["## The budget in user terms", "",
                  "Each `PENNY_CACHE_MAX_WRONG` and the operating point it picks, on the held-out part and the "
                  "near-miss file:", ""]  # fmt: skip
        for embedder in models:
            lines += [*budgets(embedder, guard, held, nearmiss), ""]
        if not args.no_classes:
            lines += ["## What each veto class does", "",
                      "Among the pairs that reach the decision (cosine at or above the default policy's floor): "
                      "duplicates / non-duplicates each class turns away as the reason given (the first veto "
                      "found), and in brackets those it alone turns away (no other class would) — the recall it "
                      "can cost / the false hits it can remove. `class probes` are docs-style pairs written for "
                      "the new "
                      f"classes ({PROBES.relative_to(ROOT)}; a demonstration, not a measurement of unseen pairs).",
                      ""]  # fmt: skip
            for embedder in models:
                files = {"QQP fit part": fit, "near-miss": nearmiss, "stress": stress, "class probes": probes}
                lines += [f"{embedder.name.split('?')[0]}:", "", *classes(embedder, vectors, files), ""]
        lines += ["## Speed", "",
                  "In process, one question: embed it, find the 4 nearest of 1,000 cached questions, decide "
                  f"(medians over {min(500, len(held))} held-out questions on this machine; the cached side's analysis "
                  "is stored with the entry):", ""]  # fmt: skip
        for embedder in models[:1]:
            lines += [f"{embedder.name}:", "", *speed(embedder, held), ""]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
