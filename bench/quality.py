"""Quality of the semantic cache's hit decision: Penny (threshold + near-miss guard) vs the
common rule (cosine >= 0.95, no guard), on the labelled pair files, per embedder.

    .venv/bin/python -m bench.quality                       # WordLlama only
    .venv/bin/python -m bench.quality --minilm-url http://127.0.0.1:8765/v1
    .venv/bin/python -m bench.quality --start-minilm        # starts bench/embed_server.py itself

MiniLM runs in the separate ``.venv-quality`` (torch + sentence-transformers) behind
``bench/embed_server.py`` and is reached through Penny's ``OpenAICompatibleEmbedder`` and the
real openai SDK, exactly as an ``openai:`` embedder would be. Prints markdown (bench/QUALITY.md).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from proxy_core.semantic.decision import (
    COMMON_RULE_THRESHOLD,
    DEFAULT_SWEEP,
    EvalReport,
    LabelledPair,
    Outcome,
    default_threshold,
    evaluate,
    load_pairs,
)
from proxy_core.semantic.embedders import (
    Embedder,
    WordLlamaEmbedder,
    embedder_from_spec,
    openai_sdk_embed_fn,
)
from proxy_core.semantic.guard import GuardSettings, NearMissGuard, WordVectors

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("PENNY_PAIRS_DIR", ROOT.parent / "shared" / "data"))
if not DATA.exists():
    DATA = Path("/work/shared/data")
QQP = "cache-pairs-dev.jsonl"
NEARMISS = "cache-pairs-nearmiss-dev.jsonl"
MINILM_SPEC = "openai:all-MiniLM-L6-v2?dimensions=384"


class MemoEmbedder:
    """Embeds each distinct text once per run (ablations re-evaluate the same pairs)."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self._memo: dict[str, NDArray[np.float32]] = {}

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def dims(self) -> int:
        return self.inner.dims

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        missing = [t for t in dict.fromkeys(texts) if t not in self._memo]
        if missing:
            for t, v in zip(missing, self.inner.embed(missing), strict=True):
                self._memo[t] = v
        if not texts:
            return np.zeros((0, self.dims), np.float32)
        return np.stack([self._memo[t] for t in texts])


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def row(file: str, rule: str, o: Outcome | EvalReport) -> str:
    return (
        f"| {file} | {rule} | {o.threshold:.2f} | {pct(o.recall)} | {pct(o.precision)} | "
        f"{pct(o.false_hit_rate)} ({o.false_hits}) |"
    )


def f_beta(o: Outcome, beta: float = 0.5) -> float:
    p = o.precision or 0.0
    r = o.recall
    return 0.0 if p + r == 0 else (1 + beta**2) * p * r / (beta**2 * p + r)


def tune_threshold(report: EvalReport) -> Outcome:
    """The sweep point with the best F0.5 (precision weighted over recall); ties go higher."""
    return max(report.sweep, key=lambda o: (round(f_beta(o), 4), o.threshold))


def split_halves(pairs: Sequence[LabelledPair], seed: int = 7) -> tuple[list[LabelledPair], list[LabelledPair]]:
    shuffled = list(pairs)
    random.Random(seed).shuffle(shuffled)
    half = len(shuffled) // 2
    return shuffled[:half], shuffled[half:]


def at(report: EvalReport, threshold: float) -> Outcome:
    return min(report.sweep, key=lambda o: abs(o.threshold - threshold))


def quality_section(embedder: MemoEmbedder, guard: NearMissGuard, qqp: list[LabelledPair],
                    nearmiss: list[LabelledPair]) -> list[str]:  # fmt: skip
    name = embedder.name
    threshold = default_threshold(name)
    out = [f"### {name}", ""]
    out += ["| file | rule | threshold | recall | precision | false hits (n) |", "|---|---|---|---|---|---|"]
    for label, pairs in (("QQP dev (4000)", qqp), ("near-miss dev (30)", nearmiss)):
        r = evaluate(pairs, embedder, threshold=threshold, guard=guard)
        out.append(row(label, f"common: cos ≥ {COMMON_RULE_THRESHOLD}, no guard", r.rule))
        out.append(row(label, "Penny: cos ≥ t + guard", r))

    # threshold sweep, both files side by side
    rq = evaluate(qqp, embedder, threshold=threshold, guard=guard)
    rn = evaluate(nearmiss, embedder, threshold=threshold, guard=guard)
    out += ["", "Sweep (Penny with guard | common rule without guard):", ""]
    out += [
        "| t | QQP recall | QQP precision | QQP rule recall | QQP rule precision | near-miss recall | "
        "near-miss false hits | near-miss rule recall | near-miss rule false hits |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for pq, rq_, pn, rn_ in zip(rq.sweep, rq.rule_sweep, rn.sweep, rn.rule_sweep, strict=True):
        if round(pq.threshold * 100) % 4 and pq.threshold not in (0.66, 0.74, 0.78, 0.98):
            continue
        out.append(
            f"| {pq.threshold:.2f} | {pct(pq.recall)} | {pct(pq.precision)} | {pct(rq_.recall)} | "
            f"{pct(rq_.precision)} | {pct(pn.recall)} | {pct(pn.false_hit_rate)} | {pct(rn_.recall)} | "
            f"{pct(rn_.false_hit_rate)} |"
        )

    # cross-check: tune on one half of QQP, report on the other
    tune, test = split_halves(qqp)
    out += ["", "Cross-check: threshold tuned for F0.5 on one random half of QQP, reported on the other:", ""]
    out += [
        "| tuned on | t | tuning half recall / precision | held-out recall / precision "
        "| near-miss recall / false hits |",
        "|---|---|---|---|---|",
    ]
    for a, b, label in ((tune, test, "half A"), (test, tune, "half B")):
        best = tune_threshold(evaluate(a, embedder, threshold=threshold, guard=guard))
        held = evaluate(b, embedder, threshold=best.threshold, guard=guard)
        nm = evaluate(nearmiss, embedder, threshold=best.threshold, guard=guard)
        out.append(
            f"| {label} | {best.threshold:.2f} | {pct(best.recall)} / {pct(best.precision)} | "
            f"{pct(held.recall)} / {pct(held.precision)} | "
            f"{pct(nm.recall)} / {pct(nm.false_hit_rate)} ({nm.false_hits}) |"
        )
    if rq.reasons:
        out += ["", "Why the guard turned away label-1 QQP pairs above the threshold: "
                + ", ".join(f"{k} {v}" for k, v in rq.reasons.items()) + "."]  # fmt: skip
    return out


def ablation_section(embedder: MemoEmbedder, base: GuardSettings, vectors: WordVectors,
                     qqp: list[LabelledPair], nearmiss: list[LabelledPair]) -> list[str]:  # fmt: skip
    threshold = default_threshold(embedder.name)
    variants: list[tuple[str, GuardSettings | None]] = [
        ("no guard", None),
        ("default guard", base),
        ("no rewording allowance (every content word needs a counterpart)", replace(base, rewording_overlap=None)),
        ("rewording allowance at Dice < 0.4", replace(base, rewording_overlap=0.4)),
        ("rewording allowance at Dice < 0.6", replace(base, rewording_overlap=0.6)),
        ("word vectors off (word forms only)", replace(base, word_similarity=None)),
        ("word similarity 0.5", replace(base, word_similarity=0.5)),
        ("similar words only among leftovers", replace(base, similar_to_any=False)),
        ("no question-type check", replace(base, question_type=False)),
        ("no modality check", replace(base, modality=False)),
        ("no unmatched-word check", replace(base, unmatched_words=False)),
    ]
    out = [f"Ablations with {embedder.name} at t = {threshold:.2f}:", ""]
    out += ["| guard | QQP recall | QQP precision | near-miss recall | near-miss false hits |", "|---|---|---|---|---|"]
    for label, settings in variants:
        guard = None if settings is None else NearMissGuard(settings, word_vectors=vectors)
        rq = evaluate(qqp, embedder, threshold=threshold, guard=guard, thresholds_sweep=())
        rn = evaluate(nearmiss, embedder, threshold=threshold, guard=guard, thresholds_sweep=())
        out.append(
            f"| {label} | {pct(rq.recall)} | {pct(rq.precision)} | {pct(rn.recall)} | "
            f"{pct(rn.false_hit_rate)} ({rn.false_hits}) |"
        )
    return out


def check_speed_us(guard: NearMissGuard, pairs: Sequence[LabelledPair], rounds: int = 3) -> float:
    """Median over ``rounds`` of the mean µs per ``check_analysed`` on pre-analysed pairs."""
    analysed = [(guard.analyse(p.a), guard.analyse(p.b)) for p in pairs]
    repeat = max(1, 4000 // max(1, len(analysed)))
    runs = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(repeat):
            for a, b in analysed:
                guard.check_analysed(a, b)
        runs.append((time.perf_counter() - t0) / (repeat * len(analysed)) * 1e6)
    return statistics.median(runs)


def speed_section(
    guard: NearMissGuard, embedders: Sequence[Embedder], qqp: list[LabelledPair], nearmiss: list[LabelledPair]
) -> list[str]:
    questions = list(dict.fromkeys(t for p in qqp for t in (p.a, p.b)))
    for q in questions:  # warm the word-vector cache so analysis timing is the steady state
        guard.analyse(q)
    t0 = time.perf_counter()
    cold = NearMissGuard(guard.settings, word_vectors=guard._vectors)
    for q in questions:
        cold.analyse(q)
    analyse_us = (time.perf_counter() - t0) / len(questions) * 1e6
    check_us = check_speed_us(guard, qqp)
    short_us = check_speed_us(guard, nearmiss)
    lengths = [len(q.split()) for q in questions]
    out = [
        f"Guard `check_analysed`: {short_us:.1f} µs per pair on the near-miss file (short docs questions), "
        f"{check_us:.1f} µs on the {len(qqp)} QQP pairs (median question {statistics.median(lengths):.0f} words); "
        f"medians of 3 runs. `analyse`: {analyse_us:.1f} µs per question, once per question (memoised; store it "
        "with the entry), word vectors cached per word.",
        "",
        "| embedder | batch of 256 questions, µs per question | one question, µs |",
        "|---|---|---|",
    ]
    sample = questions[:256]
    for e in embedders:
        inner = e.inner if isinstance(e, MemoEmbedder) else e
        inner.embed(sample[:8])
        t0 = time.perf_counter()
        inner.embed(sample)
        batch_us = (time.perf_counter() - t0) / len(sample) * 1e6
        singles = []
        for q in sample[:50]:
            t0 = time.perf_counter()
            inner.embed([q])
            singles.append((time.perf_counter() - t0) * 1e6)
        out.append(f"| {inner.name} | {batch_us:.0f} | {statistics.median(singles):.0f} |")
    return out


def start_minilm(port: int) -> subprocess.Popen[bytes]:
    python = ROOT / ".venv-quality" / "bin" / "python"
    if not python.exists():
        sys.exit(f"{python} not found; see bench/QUALITY.md for how to create .venv-quality")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen(
        [str(python), str(ROOT / "bench" / "embed_server.py"), "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2):
                return proc
        except OSError:
            if proc.poll() is not None:
                sys.exit("embed_server.py exited; run it by hand to see why")
            time.sleep(1)
    proc.terminate()
    sys.exit("embed_server.py did not answer within 120 s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Semantic-cache hit quality: Penny vs the common rule.")
    parser.add_argument("--minilm-url", help="base URL of bench/embed_server.py, e.g. http://127.0.0.1:8765/v1")
    parser.add_argument("--start-minilm", action="store_true", help="start bench/embed_server.py from .venv-quality")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--no-ablations", action="store_true")
    args = parser.parse_args(argv)

    qqp = load_pairs(DATA / QQP)
    nearmiss = load_pairs(DATA / NEARMISS)
    settings = GuardSettings()
    vectors = WordVectors.wordllama()
    guard = NearMissGuard(settings, word_vectors=vectors)

    embedders: list[MemoEmbedder] = [MemoEmbedder(WordLlamaEmbedder())]
    server = start_minilm(args.port) if args.start_minilm else None
    url = args.minilm_url or (f"http://127.0.0.1:{args.port}/v1" if server else None)
    try:
        if url:
            import openai

            client = openai.OpenAI(base_url=url, api_key="not-used", max_retries=0, timeout=120)
            embedders.append(MemoEmbedder(embedder_from_spec(MINILM_SPEC, openai_embed_fn=openai_sdk_embed_fn(client))))

        lines = ["## Quality: Penny vs the common rule", ""]
        lines += [f"Guard settings: `{settings}`", ""]
        for e in embedders:
            lines += [*quality_section(e, guard, qqp, nearmiss), ""]
        if not args.no_ablations:
            for e in embedders:
                lines += [*ablation_section(e, settings, vectors, qqp, nearmiss), ""]
        lines += ["## Speed", "", *speed_section(guard, embedders, qqp, nearmiss)]
        print("\n".join(lines))
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())


__all__ = ["DEFAULT_SWEEP", "main"]
