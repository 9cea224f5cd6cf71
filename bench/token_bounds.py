"""``python -m bench.token_bounds``: how far ``estimate_text_tokens`` is above the real token counts.

Prints, for a catalogue of hostile texts (what a client of ``penny proxy`` could send to be
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
import random
import string
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from proxy_core import tokens

ROOT = Path(__file__).resolve().parent.parent


def catalogue(seed: int = 3) -> dict[str, str]:
    rng = random.Random(seed)

    def word(lo: int, hi: int, alphabet: str = string.ascii_lowercase) -> str:
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(lo, hi)))

    def words(lo: int, hi: int, case: Callable[[str], str] = str.lower, size: int = 4000) -> str:
        out: list[str] = []
        while sum(map(len, out)) < size:
            out.append(case(word(lo, hi)))
        return " ".join(out)

    def chars(alphabet: str, n: int) -> str:
        return "".join(rng.choice(alphabet) for _ in range(n))

    def block(a: int, b: int) -> str:
        return "".join(chr(c) for c in range(a, b) if chr(c).isprintable())

    gibberish: list[str] = []
    while sum(map(len, gibberish)) < 4000:
        syllables = range(rng.randint(2, 4))
        gibberish.append("".join(rng.choice("bcdfghjklmnprstvwz") + rng.choice("aeiou") for _ in syllables))
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    data = ROOT / "proxy_core" / "data"
    return {
        "random lowercase words 3-12": words(3, 12),
        "random lowercase words 5-8": words(5, 8),
        "random lowercase words 1-4": words(1, 4),
        "pronounceable gibberish": " ".join(gibberish),
        "random Titlecase words 5-8": words(5, 8, str.title),
        "random UPPERCASE words 3-8": words(3, 8, str.upper),
        "4,000 lowercase letters, no spaces": chars(string.ascii_lowercase, 4000),
        "4,000 mixed-case letters, no spaces": chars(string.ascii_letters, 4000),
        "words glued to punctuation": " ".join(
            rng.choice("([{\"'_.-/*#@<`") + word(3, 9) + rng.choice(")]}\"',.;:!?") for _ in range(400)
        ),
        "punctuation and whitespace": chars(string.punctuation + " \t\n\r\x0b\x0c", 3000),
        "digits": chars(string.digits, 3000),
        "letters and digits": chars(string.ascii_letters + string.digits, 3000),
        "2,000 carriage returns": "\r" * 2000,
        "2,000 tabs": "\t" * 2000,
        "any 2-byte characters": chars(block(0x80, 0x800), 1500),
        "accented Latin": chars("àáâãäåçèéêëìíîïñòóôõöùúûüýÿāăąćčďđēėęěğīįıķĺļľłńņňōőœŕřśşšţťūůűųźżž", 1500),
        "Greek": chars(block(0x370, 0x400), 1500),
        "Cyrillic": chars(block(0x400, 0x530), 1500),
        "Arabic": chars(block(0x600, 0x700), 1500),
        "CJK ideographs": chars(block(0x4E00, 0xA000), 1000),
        "any 3-byte characters": chars(block(0x800, 0x10000), 1000),
        "emoji": chars(block(0x1F300, 0x1FA00), 800),
        "Unicode spaces": chars("\u00a0\u2000\u2001\u2002\u2003\u2009\u200a\u3000\u202f\u205f\u1680\u0085", 1000),
        "mixture of all": chars(
            string.printable + block(0x80, 0x800) + block(0x4E00, 0x4F00) + block(0x1F300, 0x1F400), 3000
        ),
        "English prose (README.md, first 8,000 chars)": readme[:8000],
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
