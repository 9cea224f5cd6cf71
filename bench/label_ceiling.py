"""How far a cache can be trusted on a labelled pair file: the share of label-1 pairs among the most
similar pairs. If even near-identical pairs are often labelled 0, no rule can reach a high precision.

``.venv/bin/python -m bench.label_ceiling [FILE]`` (default: ../shared/data/cache-pairs-dev.jsonl).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np

from proxy_core.semantic.decision import load_pairs
from proxy_core.semantic.embedders import WordLlamaEmbedder

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "cache-pairs-dev.jsonl"


def main(path: Path) -> None:
    pairs = load_pairs(path)
    embedder = WordLlamaEmbedder(256)
    a = embedder.embed([p.a for p in pairs])
    b = embedder.embed([p.b for p in pairs])
    sims = np.einsum("ij,ij->i", a, b)
    labels = np.array([p.label for p in pairs])
    print(f"{path.name}: {len(pairs)} pairs, {labels.sum()} labelled 1")
    print("| cosine ≥ | pairs | labelled 1 | recall if all served |")
    print("|---|---|---|---|")
    for t in (0.90, 0.95, 0.97, 0.99):
        m = sims >= t
        print(f"| {t:.2f} | {m.sum()} | {labels[m].mean():.1%} | {labels[m].sum() / labels.sum():.1%} |")

    def words(s: str) -> frozenset[str]:
        return frozenset(re.findall(r"[a-z0-9]+", s.lower()))

    same = np.array([words(p.a) == words(p.b) for p in pairs])
    print(f"identical word sets: {same.sum()} pairs, {labels[same].mean():.1%} labelled 1")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT)
