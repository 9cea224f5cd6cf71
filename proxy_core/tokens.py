"""Conservative offline token estimates, used to reserve budget and rate before a call.

The real count comes back in the provider's ``usage`` and is what gets billed; these estimates
only size the worst-case reservation, so they must not come out *below* the true count for
realistic text, or a budget cap could be overshot. tiktoken is not used because it downloads its
BPE files at run time, which Penny's hosts cannot do.

The rule mirrors how OpenAI's tokenizers (``o200k_base`` for the gpt-4o, gpt-4.1, gpt-5 and
o-series chat models, ``cl100k_base`` for the text-embedding models) first split text into
pieces, then prices each piece by what it is:

* a lowercase or Capitalised word: 1 token up to 4 letters, + 1 per 4 more up to 8, and 1 per 3
  letters beyond that (long words are often rare words that split into many tokens);
* a run of digits: 1 per group of 3 (both tokenizers split digits into groups of at most 3), and
  1 more for a space in front of it (which the tokenizers keep as a token of its own);
* an ALL-CAPS run: 1 + 1 per 2.5 letters beyond 2; camelCase is split into its parts;
* a letter-and-digit run of 10+ characters that mixes digits in, or is at least 30 % upper case
  with lower case too (hashes, base64, keys, IDs): 0.75 per character, because such noise barely
  merges (measured 0.6-0.71 tokens per character);
* ASCII punctuation: 1 per character; whitespace: 1 per stretch of one repeated character (a newline
  then indentation is 2) plus 1 per 24 characters;
* other characters by their UTF-8 length: 1 per 2-byte character (accented Latin, Greek,
  Cyrillic, Hebrew, Arabic), 2.5 per 3-byte one (CJK, kana, Hangul, Indic, Thai, most symbols)
  and 3.5 per 4-byte one (emoji, rare ideographs): cl100k spends up to ~2.5 tokens on a rare
  ideograph and ~2.75 on an emoji, and these must never be underestimated.

The total is rounded up. Checked against both real tokenizers on English prose, licence text,
Python source, JSON, Markdown, URLs, numbers, CSV, UUIDs, hashes, base64, random keys, CJK,
Hangul, kana, Cyrillic, Arabic, Hindi, Thai, emoji (including ZWJ sequences) and whitespace: it
is never below the larger of the two counts, and on English prose it is 1.1-1.8x the true count
(code and JSON 1.2-2x; CJK and other scripts up to ~2.7x of cl100k and more of o200k, the price
of never undercounting rare characters). The one known undercount is long random lowercase
letters with no digits or case changes (about 0.65x), which no realistic text contains.

It is one regex pass with a little work per piece; no per-character Python loop over long text.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Mapping, Sequence

__all__ = [
    "MESSAGE_OVERHEAD",
    "NAME_OVERHEAD",
    "REPLY_PRIMING",
    "estimate_chat_tokens",
    "estimate_text_tokens",
]

MESSAGE_OVERHEAD = 4  # tokens wrapping each chat message (OpenAI documents 3; one spare)
NAME_OVERHEAD = 1  # extra token when a message carries a "name"
REPLY_PRIMING = 3  # tokens priming the assistant's reply

_PIECES = re.compile(
    r"""
     (?P<alnum>\ ?[A-Za-z0-9]+)
    |(?P<punct>\ ?[!-/:-@\[-`{-~]+)
    |(?P<space>\s+)
    |(?P<control>[\x00-\x1f\x7f]+)
    |(?P<utf8_2>[\u0080-\u07ff]+)
    |(?P<utf8_3>[\u0800-\uffff]+)
    |(?P<utf8_4>[\U00010000-\U0010ffff]+)
    """,
    re.VERBOSE,
)
_SUBWORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
_UPPER = re.compile(r"[A-Z]")
_DIGIT = re.compile(r"[0-9]")
_SAME_SPACE = re.compile(r"(\s)\1*")

_NOISE_MIN_LENGTH = 10
_NOISE_PER_CHAR = 0.75
_PER_CHAR_BY_UTF8_LENGTH = {"utf8_2": 1.0, "utf8_3": 2.5, "utf8_4": 3.5}


_PARAGRAPH_BREAK = "\n\n"
_SPLIT_FROM = 2_000  # characters: shorter texts are estimated in one pass
_PARAGRAPH_SEPARATOR_TOKENS = 2  # a "\n\n" is at most this many tokens wherever it falls


def estimate_text_tokens(text: str) -> int:
    """An upper bound, for realistic text, of the tokens ``text`` encodes to (see the module doc).

    Long texts are estimated paragraph by paragraph, each paragraph's estimate memoised: a docs
    bot's prompts are made of the same passages in different combinations, so this is the hot path.
    The paragraphs' bounds plus a bound for each break are a bound for the whole.
    """
    if len(text) < _SPLIT_FROM or _PARAGRAPH_BREAK not in text:
        return _estimate(text)
    paragraphs = text.split(_PARAGRAPH_BREAK)
    return sum(_estimate_paragraph(p) for p in paragraphs) + _PARAGRAPH_SEPARATOR_TOKENS * (len(paragraphs) - 1)


@functools.lru_cache(maxsize=8192)
def _estimate_paragraph(paragraph: str) -> int:
    return _estimate(paragraph)


def _estimate(text: str) -> int:
    total = 0.0
    for match in _PIECES.finditer(text):
        kind = match.lastgroup
        piece = match.group()
        if kind == "alnum":
            if piece[0] == " ":
                piece = piece[1:]
                if piece[0].isdigit():
                    total += 1  # " 42" is " " + "42": the space does not merge into digits
            total += _alnum_tokens(piece)
        elif kind == "punct":
            total += len(piece) - (piece[0] == " ")
        elif kind == "space":
            total += len(_SAME_SPACE.findall(piece)) + len(piece) / 24
        elif kind == "control":
            total += len(piece)
        else:
            total += _PER_CHAR_BY_UTF8_LENGTH[str(kind)] * len(piece)
    return math.ceil(total)


def estimate_chat_tokens(messages: Sequence[Mapping[str, object]]) -> int:
    """An upper bound of the prompt tokens a chat request with ``messages`` is billed for.

    Each message costs :data:`MESSAGE_OVERHEAD` plus its role, its content (a string, or a list
    of ``{"type": "text", "text": ...}`` parts) and any other field (``name`` plus
    :data:`NAME_OVERHEAD`; ``tool_calls`` and the like as their JSON text); the reply adds
    :data:`REPLY_PRIMING`. Image, audio and file parts cannot be bounded offline, so they raise
    ``ValueError`` rather than being guessed low.
    """
    total = REPLY_PRIMING
    for message in messages:
        total += MESSAGE_OVERHEAD
        for key, value in message.items():
            if value is None:
                continue
            if key == "content":
                total += _content_tokens(value)
            elif isinstance(value, str):
                total += estimate_text_tokens(value) + (NAME_OVERHEAD if key == "name" else 0)
            else:
                total += estimate_text_tokens(json.dumps(value, ensure_ascii=False, default=str))
    return total


def _content_tokens(content: object) -> int:
    if isinstance(content, str):
        return estimate_text_tokens(content)
    if not isinstance(content, Sequence):
        raise ValueError(f"message content must be a string or a list of parts, not {type(content).__name__}")
    total = 0
    for part in content:
        if isinstance(part, str):
            total += estimate_text_tokens(part)
            continue
        if not isinstance(part, Mapping):
            raise ValueError(f"a content part must be an object, not {type(part).__name__}")
        kind = part.get("type")
        text = part.get("text") if kind == "text" else part.get("refusal") if kind == "refusal" else None
        if not isinstance(text, str):
            raise ValueError(
                f"cannot estimate tokens for a {kind!r} content part offline; only text parts are supported"
            )
        total += estimate_text_tokens(text)
    return total


def _alnum_tokens(run: str) -> float:
    """Tokens for a run of ASCII letters and digits (no leading space)."""
    if run.isalpha() and (run.islower() or run.istitle()):
        return _word_tokens(len(run))
    if run.isdigit():
        return math.ceil(len(run) / 3)
    length = len(run)
    if length >= _NOISE_MIN_LENGTH:
        digits = len(_DIGIT.findall(run))
        upper = len(_UPPER.findall(run))
        letters = length - digits
        if 0 < digits < length or 0.3 * letters <= upper < letters:
            return _NOISE_PER_CHAR * length
    total = 0.0
    for part in _SUBWORDS.findall(run):
        if part.isdigit():
            total += math.ceil(len(part) / 3)
        elif part.isupper():
            total += 1 + max(0, len(part) - 2) / 2.5
        else:
            total += _word_tokens(len(part))
    return total


def _word_tokens(length: int) -> float:
    if length <= 8:
        return 1 + max(0, length - 4) / 4
    return length / 3
