"""Docs retrieval quality and speed on the sample handbook.

Indexes ``examples/docs`` with ``local:wordllama`` into a temporary SQLite store, runs every
question of ``examples/questions.jsonl`` and prints hit@1/3/5 (the expected page among the top k
distinct pages) for BM25 alone, embeddings alone and both hybrid fusions; query latency; latency at
10k passages (the handbook duplicated with perturbed text and vectors); and how the calibrated
score separates handbook questions from off-topic ones. Prints, asserts nothing.

Run with ``.venv/bin/python -m bench.retrieval``.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from bot.docs.index import DocsIndex, DocsIndexer, IndexSnapshot
from bot.docs.retrieve import NO_MATCH_THRESHOLD, Bm25, Fusion, Mode, search
from proxy_core.log import configure_logging
from proxy_core.semantic.embedders import embedder_from_spec
from proxy_core.stores.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "examples" / "docs"
QUESTIONS = ROOT / "examples" / "questions.jsonl"
OFF_TOPIC = (
    "What's the capital of Peru?",
    "Write me a poem about cats",
    "How do I bake sourdough bread?",
    "Who won the world cup in 2018?",
    "what is the weather tomorrow",
    "translate hello into french",
    "what's 17 times 23",
    "recommend a good sci-fi novel",
    "how tall is mount everest",
    "tell me a joke about programmers",
)
KS = (1, 3, 5)
CONFIGS: tuple[tuple[str, Mode, Fusion], ...] = (
    ("bm25", "bm25", "weighted"),
    ("embeddings", "embedding", "weighted"),
    ("hybrid (rrf)", "hybrid", "rrf"),
    ("hybrid (weighted, default)", "hybrid", "weighted"),
)


def load_questions(path: Path = QUESTIONS) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def distinct_pages(doc_paths: Sequence[str]) -> list[str]:
    """Pages in order of their first appearance."""
    return list(dict.fromkeys(doc_paths))


def hit_rates(
    snapshot: IndexSnapshot,
    questions: Sequence[dict[str, str]],
    vectors: NDArray[np.float32],
    *,
    mode: Mode = "hybrid",
    fusion: Fusion = "weighted",
) -> dict[int, float]:
    """hit@k for each k in :data:`KS`: the share of questions whose page is among the top k pages."""
    hits = dict.fromkeys(KS, 0)
    for question, vector in zip(questions, vectors, strict=True):
        found = search(snapshot, question["question"], vector, k=30, mode=mode, fusion=fusion)
        pages = distinct_pages([h.passage.doc_path for h in found])
        for k in KS:
            hits[k] += question["page"] in pages[:k]
    return {k: hits[k] / len(questions) for k in KS}


def best_scores(snapshot: IndexSnapshot, questions: Sequence[str], vectors: NDArray[np.float32]) -> list[float]:
    pairs = zip(questions, vectors, strict=True)
    return [max((h.score for h in search(snapshot, q, v, k=10)), default=0.0) for q, v in pairs]


def synthesise(snapshot: IndexSnapshot, size: int, seed: int = 0) -> IndexSnapshot:
    """``size`` passages: the snapshot's, repeated with shuffled words and noisy vectors."""
    rng = np.random.default_rng(seed)
    base = snapshot.passages
    passages = []
    rows = []
    for i in range(size):
        source = base[i % len(base)]
        words = source.text.split()
        if i >= len(base):
            rng.shuffle(words)
            words = words[: max(5, int(len(words) * rng.uniform(0.6, 1.0)))]
        passages.append(replace(source, text=" ".join(words), content_hash=f"synthetic-{i}"))
        rows.append(i % len(base))
    matrix = snapshot.matrix[rows] + 0.03 * rng.standard_normal((size, snapshot.matrix.shape[1])).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    return IndexSnapshot(snapshot.version, snapshot.embedder, tuple(passages), matrix, Bm25.build(passages))


def p50_ms(samples: Sequence[float]) -> float:
    return statistics.median(samples) * 1000


def time_search(snapshot: IndexSnapshot, questions: Sequence[str], vectors: NDArray[np.float32]) -> float:
    samples = []
    for _ in range(3):
        for question, vector in zip(questions, vectors, strict=True):
            start = time.perf_counter()
            search(snapshot, question, vector, k=5)
            samples.append(time.perf_counter() - start)
    return p50_ms(samples)


def main(argv: Sequence[str] | None = None) -> int:
    configure_logging("WARNING", json=False)
    embedder = embedder_from_spec("local:wordllama")
    questions = load_questions()
    texts = [q["question"] for q in questions]
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp) / "penny.db")
        try:
            report = DocsIndexer(store, embedder.embed, embedder_name=embedder.name).index(DOCS)
            snapshot = DocsIndex.load(store).snapshot
        finally:
            store.close()
    print(
        f"indexed {report.files} files, {report.passages} passages, {report.embedded} embedded "
        f"in {report.seconds:.2f}s (version {report.version})"
    )
    vectors = embedder.embed(texts)

    print(f"\n{len(questions)} questions          hit@1  hit@3  hit@5")
    for name, mode, fusion in CONFIGS:
        rates = hit_rates(snapshot, questions, vectors, mode=mode, fusion=fusion)
        print(f"  {name:<26} " + "  ".join(f"{rates[k]:.3f}" for k in KS))

    embed_samples: list[float] = []
    for text in texts:
        start = time.perf_counter()
        embedder.embed([text])
        embed_samples.append(time.perf_counter() - start)
    print(f"\nlatency p50: search {time_search(snapshot, texts, vectors):.2f} ms at {len(snapshot.passages)} passages; "
          f"embedding the question {p50_ms(embed_samples):.2f} ms")  # fmt: skip
    big = synthesise(snapshot, 10_000)
    print(f"latency p50: search {time_search(big, texts, vectors):.2f} ms at {len(big.passages)} passages")

    scores = best_scores(snapshot, texts, vectors)
    under = [(s, q) for s, q in zip(scores, texts, strict=True) if s < NO_MATCH_THRESHOLD]
    print(f"\nno-match threshold {NO_MATCH_THRESHOLD}: {len(under)} of {len(texts)} handbook questions fall under it")
    for score, question in sorted(under):
        print(f"  {score:.3f}  {question}")
    print(f"  lowest handbook best scores: {', '.join(f'{s:.3f}' for s in sorted(scores)[:5])}")
    off_scores = best_scores(snapshot, list(OFF_TOPIC), embedder.embed(list(OFF_TOPIC)))
    print("off-topic best scores (should be under the threshold):")
    for question, score in zip(OFF_TOPIC, off_scores, strict=True):
        print(f"  {score:.3f}  {'under' if score < NO_MATCH_THRESHOLD else 'OVER '}  {question}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
