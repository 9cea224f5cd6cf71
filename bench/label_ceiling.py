"""How far a cache can be trusted on a labelled pair file: the share of label-1 pairs among the most
similar pairs. If even near-identical pairs are often labelled 0, no rule can reach a high precision.

    .venv/bin/python -m bench.label_ceiling              # the balanced and the stress QQP files
    .venv/bin/python -m bench.label_ceiling FILE …       # any pair files

Files named without a directory are read from ``$PENNY_PAIRS_DIR`` or ../shared/data (bench/pairs.py);
a missing one stops with a message saying where to put it.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np

from bench.pairs import BALANCED, STRESS, pair_file
from proxy_core.cache import normalize_question
from proxy_core.semantic.decision import load_pairs
from proxy_core.semantic.embedders import WordLlamaEmbedder


def ceiling(path: Path) -> list[str]:
    pairs = load_pairs(path)
    embedder = WordLlamaEmbedder(256)
    a = embedder.embed([p.a for p in pairs])
    b = embedder.embed([p.b for p in pairs])
    sims = np.einsum("ij,ij->i", a, b)
    labels = np.array([p.label for p in pairs])
    out = [
        f"{path.name}: {len(pairs)} pairs, {labels.sum()} labelled 1 (WordLlama cosine)", "",
        "| cosine ≥ | pairs | labelled 1 | recall if all served |", "|---|---|---|---|",
    ]  # fmt: skip
    for t in (0.90, 0.95, 0.97, 0.99):
        m = sims >= t
        share = f"{labels[m].mean():.1%}" if m.any() else "n/a"
        out.append(f"| {t:.2f} | {m.sum()} | {share} | {labels[m].sum() / max(1, labels.sum()):.1%} |")

    def words(s: str) -> frozenset[str]:
        return frozenset(re.findall(r"[a-z0-9]+", s.lower()))

    same_words = np.array([words(p.a) == words(p.b) for p in pairs])
    same_text = np.array([normalize_question(p.a) == normalize_question(p.b) for p in pairs])
    for label, m in (("identical word sets", same_words), ("identical after normalising", same_text)):
        share = f"{labels[m].mean():.1%}" if m.any() else "n/a"
        out.append(f"\n{label}: {m.sum()} pairs, {share} labelled 1")
    return out


def main(argv: list[str]) -> int:
    names = argv or [BALANCED, STRESS]
    for name in names:
        path = Path(name) if Path(name).parent != Path() else pair_file(name)
        print("\n".join(ceiling(path)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
