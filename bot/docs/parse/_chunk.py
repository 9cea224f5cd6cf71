"""Cutting a :class:`Document` into :class:`Passage` objects that fit an embedding and a prompt.

Apart from the parsers because it knows nothing of formats: it works on the normalised text and
the sections' offsets only, counting tokens with :func:`proxy_core.estimate_text_tokens`.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections.abc import Callable

from bot.docs.parse._model import Document, Passage, Section
from proxy_core import estimate_text_tokens

__all__ = ["chunk"]

_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
_SENTENCE_BREAK = re.compile(r"[.!?…][\"'”’)\]]*\s+|\n\s*")
_WORD_BREAK = re.compile(r"\s+")
# estimate_text_tokens counts at least one token per 24 characters (a long run of spaces); nothing
# denser exists, so a piece ending further than this many characters per token cannot fit.
_MAX_CHARS_PER_TOKEN = 25


def chunk(
    document: Document, *, max_tokens: int = 350, overlap_tokens: int = 50, min_tokens: int = 30
) -> list[Passage]:
    """Cut a document into passages of at most ``max_tokens`` estimated tokens.

    A section that fits is one passage. A longer one is split at paragraph breaks, else sentence
    ends or line breaks, else between words (mid-word only for a word longer than the limit), and
    each piece after the first starts with about ``overlap_tokens`` of the end of the piece before
    it. A section under ``min_tokens`` joins the passage before it on the same page, headings
    included, when the result still fits. Raises ``ValueError`` for ``max_tokens`` under 8 or an
    overlap outside ``0..max_tokens // 2``.
    """
    if max_tokens < 8:
        raise ValueError(f"max_tokens must be at least 8, not {max_tokens}")
    if not 0 <= overlap_tokens <= max_tokens // 2:
        raise ValueError(f"overlap_tokens must be between 0 and max_tokens // 2, not {overlap_tokens}")
    pieces: list[tuple[Section, int, int]] = []  # section, then document offsets
    for section in document.sections:
        spans = _split(section.text, max_tokens, overlap_tokens)
        if len(spans) == 1 and pieces and estimate_text_tokens(section.text) < min_tokens:
            owner, start, _ = pieces[-1]
            if estimate_text_tokens(document.text[start : section.char_end]) <= max_tokens:
                pieces[-1] = (owner, start, section.char_end)
                continue
        pieces.extend((section, section.char_start + start, section.char_start + end) for start, end in spans)
    return [
        Passage(
            doc_path=document.doc_path,
            title=document.title,
            heading_path=section.heading_path,
            anchor=section.anchor,
            text=document.text[start:end],
            index=index,
            char_start=start,
            char_end=end,
        )
        for index, (section, start, end) in enumerate(pieces)
    ]


def _split(text: str, max_tokens: int, overlap_tokens: int) -> list[tuple[int, int]]:
    """Spans of ``text`` (stripped, non-empty) of at most ``max_tokens``, consecutive ones overlapping."""
    if estimate_text_tokens(text) <= max_tokens:
        return [(0, len(text))]
    levels = [_unit_starts(pattern, text) for pattern in (_PARAGRAPH_BREAK, _SENTENCE_BREAK, _WORD_BREAK)]
    spans: list[tuple[int, int]] = []
    start, previous_end = 0, 0
    density = _Density()
    while True:
        end = _piece_end(text, start, previous_end, levels, max_tokens, density)
        if end is None:  # the overlap left no room for anything new: carry on without one
            start = _skip_space(text, previous_end)
            end = _piece_end(text, start, previous_end, levels, max_tokens, density)
            if end is None:  # cannot happen with max_tokens >= 8: one character costs at most 4
                raise AssertionError("no progress while splitting a section")
        spans.append((start, end))
        if end >= len(text):
            return spans
        start, previous_end = _overlap_start(text, start, end, levels, overlap_tokens, density), end


class _Density:
    """Characters per token in the pieces cut so far: where the next piece will probably end.

    Only a hint: every search still tests the ends it returns with the token count itself, so the
    pieces are the ones an unhinted search finds. A section of a long page reads alike from one
    piece to the next, so the hint is usually within a unit or two of the answer, and a piece
    costs a few token counts instead of the ~14 of a search from its start (a 2 MB page of one
    paragraph took 10-28 s to cut).
    """

    def __init__(self) -> None:
        self.chars_per_token = 4.0  # English prose, before anything is measured

    def measured(self, chars: int, tokens: int) -> None:
        if chars > 0 and tokens > 0:
            self.chars_per_token = chars / tokens

    def reach(self, position: int, tokens: int) -> int:
        """About where ``tokens`` tokens of this section's text starting at ``position`` end."""
        return position + int(self.chars_per_token * tokens)


def _unit_starts(pattern: re.Pattern[str], text: str) -> list[int]:
    """Where each unit after a break begins, then the end of the text."""
    return [*(m.end() for m in pattern.finditer(text) if 0 < m.end() < len(text)), len(text)]


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position].isspace():
        position += 1
    return position


def _trim_end(text: str, start: int, end: int) -> int:
    while end > start and text[end - 1].isspace():
        end -= 1
    return end


def _last_true(low: int, high: int, predicate: Callable[[int], bool], hint: int | None = None) -> int | None:
    """The largest i in [low, high) with predicate(i), for a predicate that is true then false.

    Gallops from ``hint`` (else ``low``), up or down, before bisecting, so the probes stay near
    the answer: each probe of a piece's end costs a token count of the piece.
    """
    if low >= high or not predicate(low):
        return None
    good, step = low, 1
    if hint is not None and low < hint < high:
        if predicate(hint):
            good = hint
        else:  # the answer is below the hint: gallop down to a true probe
            bad = hint
            while True:
                probe = max(bad - step, low)
                if probe == low or predicate(probe):
                    good = probe
                    break
                bad, step = probe, step * 2
            step = 0
    while step:
        probe = min(good + step, high - 1)
        if probe == good:
            return good
        if not predicate(probe):
            bad = probe
            break
        good, step = probe, step * 2
    while bad - good > 1:
        middle = (good + bad) // 2
        if predicate(middle):
            good = middle
        else:
            bad = middle
    return good


def _piece_end(
    text: str, start: int, min_end: int, levels: list[list[int]], max_tokens: int, density: _Density
) -> int | None:
    """The end of the piece starting at ``start``: past ``min_end``, within ``max_tokens``, cut at
    the coarsest break that still fills at least half the limit."""
    counted: dict[int, int] = {}

    def tokens(end: int) -> int:
        if end not in counted:
            counted[end] = estimate_text_tokens(text[start:end])
        return counted[end]

    def fits(end: int) -> bool:
        return tokens(end) <= max_tokens

    reach = start + _MAX_CHARS_PER_TOKEN * (max_tokens + 1)  # no piece of max_tokens is longer
    likely = density.reach(start, max_tokens)
    best: int | None = None
    for starts in levels:
        end = _farthest_fit(text, start, starts, bisect_right(starts, reach), fits, likely)
        if end is None or end <= min_end:
            continue
        if end == len(text) or 2 * tokens(end) >= max_tokens:
            density.measured(end - start, tokens(end))
            return end
        best = max(best or 0, end)
    if best is not None:
        return best
    found = _last_true(start + 1, min(len(text), reach) + 1, fits, likely)  # a word longer than the limit
    end = _trim_end(text, start, found) if found is not None else start
    if end <= min_end:
        return None
    density.measured(end - start, tokens(end))
    return end


def _farthest_fit(
    text: str, start: int, starts: list[int], high: int, fits: Callable[[int], bool], likely: int
) -> int | None:
    """The farthest end that fits among ``starts[:high]`` after ``start`` (trailing space trimmed),
    searched from the unit ending nearest ``likely``."""
    first = bisect_right(starts, start)
    hint = bisect_right(starts, likely, first, high) - 1
    found = _last_true(first, high, lambda i: fits(_trim_end(text, start, starts[i])), hint)
    return None if found is None else _trim_end(text, start, starts[found])


def _overlap_start(
    text: str, start: int, end: int, levels: list[list[int]], overlap_tokens: int, density: _Density
) -> int:
    """Where the piece after ``text[start:end]`` begins: a word (ideally a sentence) start inside it
    leaving about ``overlap_tokens`` of overlap, or the next word after it."""
    following = _skip_space(text, end)
    if overlap_tokens <= 0:
        return following
    words = levels[2]
    low, high = bisect_right(words, start), bisect_left(words, end)
    hint = high - 1 - bisect_left(words, end - (density.reach(0, overlap_tokens)), low, high)
    found = _last_true(
        0, high - low, lambda k: estimate_text_tokens(text[words[high - 1 - k] : end]) <= overlap_tokens, hint
    )
    if found is None:
        return following
    begin = words[high - 1 - found]
    sentences = levels[1]
    nearest = bisect_left(sentences, begin)
    if (
        nearest < len(sentences)
        and sentences[nearest] < end
        and 2 * estimate_text_tokens(text[sentences[nearest] : end]) >= overlap_tokens
    ):
        begin = sentences[nearest]
    return begin
