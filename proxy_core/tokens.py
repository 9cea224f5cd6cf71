"""Offline upper bounds of the tokens a text encodes to, used to reserve budget and rate before a call.

The real count comes back in the provider's ``usage`` and is what gets billed; these estimates size the
worst-case reservation, so they must never come out *below* the true count, or a budget cap could be
overshot by a client who chooses its text. tiktoken is not used because it downloads its BPE files at
run time, which Penny's hosts cannot do. The bound holds for OpenAI's byte-level BPE tokenizers
``o200k_base`` (gpt-4o, gpt-4.1, gpt-5, o-series) and ``cl100k_base`` (the text-embedding models), for
*any* text, and this is why.

Each tokenizer splits the text into pieces with a regex, then merges each piece's UTF-8 bytes: it
keeps merging two neighbouring parts while their concatenation is a token. So in the result, **no two
neighbouring tokens of one piece concatenate to a token.** The text is cut into segments here, and every
token is charged to the segment holding its first byte; each segment gets a bound of the tokens that can
start in it, whatever the pieces around it are:

* any segment of n bytes: n (every token has a byte);
* a stretch of bytes inside one piece (``_run_bound``): two single-byte tokens can sit side by side only
  where their 2-byte pair is not a token (counted: every pair missing from either vocabulary) or a piece
  boundary falls between them (counted: every place one can - o200k's lower-to-Upper cut, cl100k's "'s"),
  so with b such places in the stretch, and e = 1 unless the stretch is known to end its piece (the last
  token may run on), at most floor((2n + 1 + b + e) / 3) tokens start in it. Random letters cost about
  0.7 per letter this way (the true count is 0.5-0.6); a pair table ships with the word table below;
* a stretch of k copies of one ASCII whitespace character c, where every run of 1..K_c of c is a token
  in both vocabularies (K = 79 for space, 20 tab, 10 newline, 1 for CR, VT and FF): neighbouring tokens
  inside it must together be longer than K_c, so at most 1 + e + 2 * floor(k / (K_c + 1)) (and at most k;
  charged at least k / 24, the density the document chunker counts on).
  The space, tab, VT or FF just before a non-space is a segment of its own or goes with what follows (the
  pre-tokenizers glue it there), so no piece boundary falls inside a stretch, and e = 0 only for the
  last stretch before an ASCII non-space (a line break or ``\\s+(?!\\S)`` ends its piece there);
* a run of ASCII digits: both tokenizers cut digits into groups of 3 from the left and every 1-3 digit
  string is a token, so 1 per group (plus 2 at an edge next to a non-ASCII character, which could be a
  digit shifting the groups), plus 1 for a space in front (a piece of its own);
* a known ASCII word (lowercase, Capitalised or, for the ``upper`` table, ALL-CAPS) standing as a whole
  piece - followed by an ASCII non-letter other than an apostrophe, and preceded by a space (which every
  pre-tokenizer glues to it), nothing, a digit, a line break, or one ASCII punctuation or
  tab/VT/FF character (charged 1 on its own, glued to the word or not): its entry in
  ``proxy_core/data/token_words.json``, the largest true count of that word over both encodings, both
  cases and all those prefixes, measured by ``python -m bench.token_words`` with the real tokenizers.
  This keeps prose tight (about 1.3x its true count); a contracted word ("don't") is one entry;
* any other character (non-ASCII runs, controls): the stretch bound over its bytes, counting every
  character boundary as a place singles may meet (a Cyrillic or Greek letter about 1.7, a CJK ideograph
  2.3-3, an emoji 3-4; bytes is the ceiling).

Everything else falls back to those rules: an unknown word, camelCase, a word touching a non-ASCII
character or an apostrophe, hashes and keys. The bound is checked against both real tokenizers on prose,
code, JSON and a catalogue of hostile texts (random letters in every case, gibberish, glued punctuation,
whitespace runs, digits, every script, emoji) in ``tests/test_tokens.py``; ``python -m bench.token_bounds``
prints the ratios. English prose comes out at about 1.3x the larger true count (1.0-1.7x on short
samples; rare words no vocabulary or source has, like legal terms or German compounds, about 2x), code
and JSON 1.3-1.6x (camelCase identifiers, which o200k cuts at each hump, up to 4x), hostile ASCII
1.0-1.7x, hostile text in other scripts 1.05-1.5x, and non-Latin prose 1.6-3.2x (the price of a bound
that no text can break: a Cyrillic letter is never charged less than 1.7).

It rests on two facts about the tokenizers, not on measurements of text: their pre-tokenizer regexes
(OpenAI's published ``pat_str``) and BPE's stopping rule (tiktoken's and bpe-openai's merge loop), plus
the word table, which is measured. Other tokenizers (non-OpenAI models behind a compatible endpoint) are
not covered. Long texts are estimated paragraph by paragraph, each memoised (see
:func:`estimate_text_tokens`).
"""

from __future__ import annotations

import functools
import json
import math
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources

__all__ = [
    "MESSAGE_OVERHEAD",
    "NAME_OVERHEAD",
    "REPLY_PRIMING",
    "estimate_chat_tokens",
    "estimate_text_tokens",
    "load_word_table",
]

MESSAGE_OVERHEAD = 4  # tokens wrapping each chat message (OpenAI documents 3; one spare)
NAME_OVERHEAD = 1  # extra token when a message carries a "name"
REPLY_PRIMING = 3  # tokens priming the assistant's reply

_WS = r"\t\n\r\x0b\x0c\ "  # ASCII whitespace (the tokenizers' \s also has non-ASCII spaces, handled as "other")
_PIECES = re.compile(
    rf"""
     (?P<word>\ ?[A-Za-z]+(?:'(?i:[sdmt]|ll|ve|re)(?![A-Za-z]))?)
    |(?P<digits>\ ?[0-9]+)
    |(?P<punct>\ ?[!-/:-@\[-`{{-~]+)
    |(?P<space>[{_WS}]+?(?=[\t\x0b\x0c\ ](?![{_WS}])|(?![{_WS}])))
    |(?P<control>[\x00-\x08\x0e-\x1f\x7f]+)
    |(?P<other>[^\x00-\x7f]+)
    """,
    re.VERBOSE,
)
# A space alone before a non-whitespace character is left to it (the tokenizers glue it there), so a
# whitespace segment is followed by that character, by one such trailing space/tab/VT/FF, or by nothing.
_STRETCHES = re.compile(r"(.)\1*", re.DOTALL)
_CONTRACTIONS = ("s", "d", "m", "t", "ll", "ve", "re")  # both tokenizers split "'s" etc. off after a "'"
# ASCII characters a known word may follow: the word's entry covers them glued on (they cost 1 apart).
_WORD_MAY_FOLLOW = frozenset("0123456789\n\r\t\x0b\x0c!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")

_PARAGRAPH_BREAK = "\n\n"
_SPLIT_FROM = 2_000  # characters: shorter texts are estimated in one pass
_PARAGRAPH_SEPARATOR_TOKENS = 2  # a "\n\n" is 2 bytes: at most 2 tokens start in it


def estimate_text_tokens(text: str) -> int:
    """An upper bound of the tokens ``text`` encodes to under o200k_base and cl100k_base (module doc).

    Long texts are estimated paragraph by paragraph, each paragraph's estimate memoised: a docs
    bot's prompts are made of the same passages in different combinations, so this is the hot path.
    Every token is charged to the segment its first byte is in, so the paragraphs' bounds (each
    assuming nothing about what follows it) plus 2 for each 2-byte break bound the whole.
    """
    if len(text) < _SPLIT_FROM or _PARAGRAPH_BREAK not in text:
        return _estimate(text)
    paragraphs = text.split(_PARAGRAPH_BREAK)
    return sum(_estimate_paragraph(p) for p in paragraphs) + _PARAGRAPH_SEPARATOR_TOKENS * (len(paragraphs) - 1)


@functools.lru_cache(maxsize=8192)
def _estimate_paragraph(paragraph: str) -> int:
    return _estimate(paragraph)


@dataclass(frozen=True)
class _Vocabulary:
    """What ``proxy_core/data/token_words.json`` says about the two vocabularies (bench/token_words.py)."""

    words: dict[str, int]  # lowercase word -> worst count of it and its Capitalised form, bare or glued
    upper: dict[str, int]  # ALL-CAPS word -> the same for that form
    ascii_pairs: frozenset[str]  # 2-character ASCII strings that are a token in both vocabularies
    byte_pairs: frozenset[bytes]  # the same for every 2-byte token
    runs: dict[str, int]  # ASCII whitespace character -> K: every run of 1..K of it is a token in both


_vocabulary: _Vocabulary | None = None
_vocabulary_lock = threading.Lock()


def load_word_table() -> None:
    """Read the word table now (tens of milliseconds, once per process), so that the first estimate
    a server makes, on a user's first question, does not wait for it."""
    _load()


def _load() -> _Vocabulary:
    global _vocabulary
    if _vocabulary is None:
        with _vocabulary_lock:
            if _vocabulary is None:
                text = resources.files("proxy_core").joinpath("data", "token_words.json").read_text(encoding="ascii")
                data = json.loads(text)
                hex_pairs: str = data["pairs"]
                byte_pairs = frozenset(bytes.fromhex(hex_pairs[i : i + 4]) for i in range(0, len(hex_pairs), 4))
                _vocabulary = _Vocabulary(
                    words={w: int(n) for n, ws in data["words"].items() for w in ws.split()},
                    upper={w: int(n) for n, ws in data["upper"].items() for w in ws.split()},
                    ascii_pairs=frozenset(p.decode() for p in byte_pairs if p.isascii()),
                    byte_pairs=byte_pairs,
                    runs={str(c): int(k) for c, k in data["runs"].items()},
                )
    return _vocabulary


def _estimate(text: str) -> int:
    vocabulary = _vocabulary or _load()
    words = vocabulary.words
    pairs = vocabulary.ascii_pairs
    total = 0
    length = len(text)
    for match in _PIECES.finditer(text):
        kind = match.lastgroup
        piece = match.group()
        if kind == "word":
            end = match.end()
            after = text[end] if end < length else ""
            if piece[0] == " " and (after == "" or (after < "\x80" and after != "'")) and piece.islower():
                known = words.get(piece[1:])  # the common case, a known lowercase word after a space
                total += known if known is not None else _run_bound(piece, pairs, 0, "'" in piece)
                continue
            start = match.start()
            total += _word_tokens(piece, text[start - 1] if start else "", after, vocabulary)
        elif kind == "punct":
            if len(piece) == 1:
                total += 1
                continue
            # The run is one piece (a lone character may be glued to a word after it); it runs on
            # into line breaks, controls and non-ASCII symbols.
            end = match.end()
            after = text[end] if end < length else ""
            ends = after != "" and after < "\x80" and after not in "\r\n" and after.isprintable()
            if len(piece) == 2:  # " (", "),": (4 + 1 + lone pairs + runs on) // 3
                total += 1 if ends and piece in pairs else 2
            else:
                total += _run_bound(piece, pairs, 0 if ends else 1)
        elif kind == "digits":
            start, end = match.span()
            total += _digits_tokens(piece, text[start - 1] if start else "", text[end] if end < length else "")
        elif kind == "space":
            total += _space_tokens(piece, text, match.end(), vocabulary.runs)
        elif kind == "control":
            total += len(piece)
        else:
            total += _other_tokens(piece, vocabulary.byte_pairs)
    return total


def _word_tokens(piece: str, before: str, after: str, vocabulary: _Vocabulary) -> int:
    """A run of ASCII letters, with the space in front of it if there is one."""
    spaced = piece[0] == " "
    run = piece[1:] if spaced else piece
    ends_piece = after == "" or (after < "\x80" and after != "'")
    # cl100k cuts "'s", "'ll" ... off the letters after an apostrophe (o200k glues them to the letters
    # before it): a piece boundary inside the run, so not a known word's piece, and one more place
    # where single-byte tokens may meet. A contracted word ("don't") is two pieces in cl100k too.
    boundaries = (not spaced and before == "'" and run.lower().startswith(_CONTRACTIONS)) + ("'" in run)
    if ends_piece and boundaries == ("'" in run) and (spaced or before == "" or before in _WORD_MAY_FOLLOW):
        if run.islower():
            known = vocabulary.words.get(run)
        elif run[0].isupper() and run[1:].islower():
            known = vocabulary.words.get(run.lower())
        elif run.isupper() and len(run) > 1:
            known = vocabulary.upper.get(run)
        else:
            known = vocabulary.words.get(run.lower()) if len(run) == 1 else None
        if known is not None:
            return known
    return _run_bound(piece, vocabulary.ascii_pairs, 0 if ends_piece else 1, boundaries)


def _run_bound(run: str, pairs: frozenset[str], runs_on: int, boundaries: int = 0) -> int:
    """Tokens that can start in an ASCII stretch of one piece (see the module doc)."""
    n = len(run)
    if n <= 1:
        return n
    lone = boundaries + runs_on
    for i in range(n - 1):
        if run[i : i + 2] not in pairs:
            lone += 1
    return min(n, (2 * n + 1 + lone) // 3)


def _digits_tokens(piece: str, before: str, after: str) -> int:
    spaced = piece[0] == " "
    digits = len(piece) - spaced
    total = spaced + math.ceil(digits / 3)  # " 42" is " " + "42": the space is a piece of its own
    # A non-ASCII neighbour may be a digit too (\p{N}), shifting the groups of 3: up to 2 more.
    if not spaced and before >= "\x80":
        total += 2
    if after >= "\x80":
        total += 2
    return min(total, len(piece))


def _space_tokens(piece: str, text: str, end: int, runs: Mapping[str, int]) -> int:
    # The piece's last stretch ends a tokenizer piece when an ASCII character other than whitespace or
    # "/" (which o200k lets run on after punctuation and line breaks) follows, directly or after the
    # one space/tab left to it.
    follower = text[end : end + 2]
    follower = follower[1:] if follower[:1] in ("\t", "\x0b", "\x0c", " ") else follower[:1]
    last_ends = follower != "" and "!" <= follower < "\x7f" and follower != "/"
    if len(piece) == 1:
        return 1
    stretches = [m.group() for m in _STRETCHES.finditer(piece)]
    total = 0
    for i, stretch in enumerate(stretches):
        k = len(stretch)
        runs_on = 0 if (last_ends and i == len(stretches) - 1) else 1
        # The last term keeps at least 1 per 24 characters, which bot/docs/parse/_chunk.py relies on.
        total += min(k, max(1 + runs_on + 2 * (k // (runs[stretch[0]] + 1)), -(-k // 24)))
    return total


@functools.lru_cache(maxsize=4096)
def _char_weight(char: str, pairs: frozenset[bytes]) -> int:
    """3x a character's share of the stretch bound: 2 per byte, 1 for the boundary after it, 1 per
    pair of its own bytes that is not a token of both vocabularies."""
    if _SURROGATE.match(char):
        # A lone surrogate (JSON can carry one) reaches the tokenizer as U+FFFD (3 bytes) or, at the
        # most, as its 6-character escape: counted as 6 bytes none of whose pairs merge.
        return 2 * _SURROGATE_BYTES + 1 + (_SURROGATE_BYTES - 1)
    data = char.encode("utf-8")
    lone = sum(1 for i in range(len(data) - 1) if data[i : i + 2] not in pairs)
    return 2 * len(data) + 1 + lone


def _other_tokens(piece: str, pairs: frozenset[bytes]) -> int:
    weight = sum(_char_weight(char, pairs) for char in piece)
    size = len(piece.encode("utf-8", "surrogatepass")) + (_SURROGATE_BYTES - 3) * len(_SURROGATE.findall(piece))
    return min(size, (weight + 1) // 3)


_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_BYTES = 6  # "\\udxxx"


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
