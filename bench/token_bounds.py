"""``python -m bench.token_bounds``: how far ``estimate_text_tokens`` is above the real token counts.

Prints, for the tests' catalogue of hostile texts (what a client of ``penny proxy`` could send to be
under-reserved) and for prose and code, the estimate over the larger of the true ``o200k_base`` and
``cl100k_base`` counts (below 1.00 would let a budget cap be overshot), then the estimator's time on a
docs-bot prompt, cold (first sight of each paragraph) and memoised, and the word table's load time
and memory. ``--compare FILE`` adds a column for another version of ``proxy_core/tokens.py``, e.g.
``git show main:proxy_core/tokens.py > /tmp/old.py``. Needs the ``dev`` extra (bpe-openai).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import sys
import time
import tracemalloc
from pathlib import Path
from types import ModuleType

from proxy_core import tokens
from tests.true_tokens import hostile_catalogue

ROOT = Path(__file__).resolve().parent.parent


def catalogue() -> dict[str, str]:
    """The tests' hostile texts (tests/true_tokens.py), then prose, code and JSON of this repository."""
    data = ROOT / "proxy_core" / "data"
    return {
        **hostile_catalogue(),
        "English prose (README.md, first 8,000 chars)": (ROOT / "README.md").read_text(encoding="utf-8")[:8000],
        "English prose (docs/architecture.md)": (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")[:8000],
        "Python (proxy_core/gateway.py)": (ROOT / "proxy_core" / "gateway.py").read_text(encoding="utf-8")[:8000],
        "JSON (proxy_core/data/prices.json)": (data / "prices.json").read_text(encoding="utf-8"),
    }


def docs_prompt() -> str:
    """A docs-bot prompt: a system line, a few README passages and a question (~5,000 characters)."""
    paragraphs = [p for p in (ROOT / "README.md").read_text(encoding="utf-8").split("\n\n") if len(p) > 200]
    return "\n\n".join(["You are Penny. Answer from these passages only.", *paragraphs[3:15], "How do budgets work?"])


def load_module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("tokens_compared", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def timings(module: ModuleType, prompt: str, repeat: int = 200) -> tuple[float, float]:
    """(cold, memoised) µs per ``estimate_text_tokens(prompt)``."""
    estimate = module.estimate_text_tokens
    estimate(prompt)  # loads whatever it loads once
    cold = []
    for _ in range(repeat):
        module._estimate_paragraph.cache_clear()
        started = time.perf_counter()
        estimate(prompt)
        cold.append(time.perf_counter() - started)
    started = time.perf_counter()
    for _ in range(repeat * 10):
        estimate(prompt)
    warm = (time.perf_counter() - started) / (repeat * 10)
    return sorted(cold)[len(cold) // 2] * 1e6, warm * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Estimate / true token count on hostile text, prose and code.")
    parser.add_argument("--compare", type=Path, help="another tokens.py to show beside this one")
    args = parser.parse_args(argv)
    import bpe_openai

    # Load time and memory of the word table, on a fresh module state.
    gc.collect()
    tracemalloc.start()
    started = time.perf_counter()
    tokens._load()
    load_ms = (time.perf_counter() - started) * 1e3
    memory = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()

    encodings = [bpe_openai.get_encoding(name) for name in ("o200k_base", "cl100k_base")]
    other = load_module(args.compare) if args.compare else None
    header = f"{'text':46s} {'true':>6s} {'estimate':>9s} {'ratio':>6s}"
    print(header + (f" {'compared':>9s} {'ratio':>6s}" if other else ""))
    for name, text in catalogue().items():
        true = max(len(enc.encode_ordinary(text)) for enc in encodings)
        estimate = tokens.estimate_text_tokens(text)
        line = f"{name:46s} {true:6d} {estimate:9d} {estimate / true:6.2f}"
        if other is not None:
            old = other.estimate_text_tokens(text)
            line += f" {old:9d} {old / true:6.2f}"
        print(line)
    prompt = docs_prompt()
    for label, module in [("this", tokens), *([("compared", other)] if other else [])]:
        cold, warm = timings(module, prompt)
        print(f"{label}: docs-bot prompt of {len(prompt):,} chars: cold {cold:,.0f} µs, memoised {warm:,.1f} µs")
    print(f"word table: {len(tokens._load().words):,} words + {len(tokens._load().upper):,} ALL-CAPS, "
          f"loaded in {load_ms:.0f} ms, {memory / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
