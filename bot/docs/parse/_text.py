"""Plain text (``.txt``): no markup to go by, so headings are found by how they look: an
underlined line, or a short line standing alone in Title Case, ALL CAPS or ending with a colon."""

from __future__ import annotations

import re
import textwrap

from bot.docs.parse._model import Block

__all__ = ["parse_text"]

_UNDERLINE = re.compile(r"([=\-~*#])\1{2,}")
_SMALL_WORDS = frozenset(
    {"a", "an", "and", "as", "at", "but", "by", "for", "from", "in", "into", "is", "nor", "of", "on", "or", "per",
     "the", "to", "via", "vs", "with"}
)  # fmt: skip
_WORD = re.compile(r"[^\W\d_][\w'’-]*")


def _heading_style(line: str) -> str | None:
    """How a short stand-alone line reads as a heading ("caps", "title", "colon"), or None."""
    if len(line) > 72 or len(line.split()) > 10 or line[0] in "-*•+>|#(" or "://" in line:
        return None
    if line.endswith(":"):
        return "colon" if len(line.split()) <= 5 else None
    if line[-1] in ".,;!":
        return None
    letters = [c for c in line if c.isalpha()]
    if len(letters) < 2:
        return None
    if all(c.isupper() for c in letters):
        return "caps"
    words = _WORD.findall(line)
    if words and words[0][0].isupper() and all(w[0].isupper() or w.lower() in _SMALL_WORDS for w in words[1:]):
        return "title"
    return None


def parse_text(text: str) -> list[Block]:
    """Headings by heuristic: an underlined line, else a short line between blank lines in Title Case,
    ALL CAPS or ending with ':'. Levels follow the order styles appear; a first-line heading is the title."""
    lines = text.split("\n")
    headings: dict[int, tuple[str, str, int]] = {}  # line index -> (heading, style, lines it takes)
    for index, raw in enumerate(lines[:-1]):
        line = raw.strip()
        if not line or (index and lines[index - 1].strip()):
            continue
        underline = _UNDERLINE.fullmatch(lines[index + 1].strip())
        if underline and not _UNDERLINE.fullmatch(line):
            headings[index] = (line, underline.group(1), 2)
        elif not lines[index + 1].strip():
            style = _heading_style(line)
            if style:
                headings[index] = (line.rstrip(":").strip(), style, 1)
    if any(taken == 2 for _, _, taken in headings.values()):
        # The author underlines headings: other short lines are list lead-ins and labels, not headings.
        headings = {index: found for index, found in headings.items() if found[2] == 2}
    first_line = next((i for i, line in enumerate(lines) if line.strip()), -1)
    styles: list[str] = []
    blocks: list[Block] = []
    level, heading = 0, ""
    body: list[str] = []
    index = 0
    while index < len(lines):
        if index not in headings:
            body.append(lines[index])
            index += 1
            continue
        new_heading, style, taken = headings[index]
        if index == first_line and style != "colon":
            new_level = 1
        else:
            if style not in styles:
                styles.append(style)
            new_level = styles.index(style) + 2
        blocks.append(Block(level, heading, None, _dedent_paragraphs(body)))
        level, heading, body = new_level, new_heading, []
        index += taken
    blocks.append(Block(level, heading, None, _dedent_paragraphs(body)))
    return blocks


def _dedent_paragraphs(lines: list[str]) -> str:
    """Each paragraph without the indentation all its lines share (aligned columns stay aligned)."""
    paragraphs = re.split(r"\n[ \t]*\n", "\n".join(lines))
    return "\n\n".join(textwrap.dedent(paragraph) for paragraph in paragraphs)
