"""Markdown (``.md``, ``.markdown``): ATX and setext headings, front matter, and the inline markup
(links, emphasis, HTML) reduced to the plain text an LLM reads well.

The block syntax (fences, headings, rules, list items, table rows) comes from
:mod:`bot.markdown_syntax`, which the Slack renderer reads too.
"""

from __future__ import annotations

import html
import re
from bisect import bisect_right
from collections.abc import Callable
from typing import Literal

from bot.docs.parse._model import Block
from bot.docs.parse._normalise import collapse, replace_overlong_charrefs, restore
from bot.markdown_syntax import (
    ATX_HEADING,
    HTML_BREAK,
    THEMATIC_BREAK,
    closes_fence,
    fence_opening,
    give_up,
    is_list_item,
    is_table_delimiter_row,
    past_bracket,
    sub_tried,
)

__all__ = ["parse_markdown"]

_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
# Lines that cannot belong to the paragraph a setext underline would turn into a heading.
_NOT_PARAGRAPH = re.compile(r"^(?: {4}|\t|\s*(?:[-*+]|\d+[.)])(?:\s|$)|\s*[>|<])")
_REF_DEF = re.compile(r"""^ {0,3}\[([^\]]+)\]:\s*<?(\S+?)>?(?:\s+(?:"[^"]*"|'[^']*'|\([^)]*\)))?\s*$""")
# "{#id}" ending a heading. Tried only after the heading's last "}" but one, and at the start of a
# run of spaces, never inside it: see _heading_id.
_HEADING_ID = re.compile(r"(?<!\s)\s*+\{#([\w:.-]++)[^}]*+\}\s*+$")
# The title's value, its quotes and trailing spaces still on (_front_title strips those).
_FRONT_TITLE = re.compile(r"""^title\s*[:=]\s*["']?(.*+)\s*+$""")

# The patterns below are all linear in the length of the text they read, and must stay so (a file is
# text someone else wrote): nothing that can read a long run twice over, and where re.sub would try
# a pattern again from every position of a long failing run, sub_tried skips the tries that must fail.
_BACKTICKS = re.compile(r"`+")
_ESCAPE = re.compile(r"\\([!-/:-@\[-`{-~])")
_IMAGE = re.compile(r"!\[([^\]]*+)\]\((?:[^()]|\([^()]*\))*\)")
_IMAGE_START = re.compile(r"!\[")
_TITLE = r"""(?:"[^"]*"|'[^']*'|\([^()]*\))"""
# A title follows spaces, or the spaces the empty destination left (the lookbehind): "\s*" then "\s+"
# around an empty destination would share a long run of spaces every possible way.
_LINK = re.compile(
    r"\[([^\]]*+)\]\(\s*+(<[^<>\n]*>|(?:[^()\s]|\([^()\s]*\))*)"
    rf"(?:\s++{_TITLE}|(?<=\s){_TITLE})?\s*+\)"
)
_REF_LINK = re.compile(r"\[([^\]]++)\]\[([^\]]*+)\]")
_SHORTCUT_LINK = re.compile(r"\[([^\]]++)\](?![(\[:])")
_BRACKET = re.compile(r"\[")
# An email's domain holds a dot after its first character and before its last one (the lookahead),
# read once: "[^@]+\.[^@]+" would try every dot of a long domain without a ">" after it.
_AUTOLINK = re.compile(
    r"<((?:https?|ftp|mailto):[^<>\s]++"
    r"|[^<>\s@]++@(?=[^<>\s@][^<>\s@.]*+\.[^<>\s@])[^<>\s@]++)>"
)
_BARE_URL = re.compile(r"\b(?:https?|ftp)://[^\s<>()\x00]+")
_HTML_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_HTML_COMMENT_START = re.compile(r"<!--")
_HTML_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9-]*(?:\s[^<>]*)?/?>")
# Emphasis pairs a closer with the nearest opener before it (CommonMark): a span never runs over
# another delimiter that could open one, so a stray "*" earlier in a paragraph cannot swallow the
# next "*word*" and leave "word" with a lone asterisk.
_STRONG = re.compile(
    r"\*\*(?=\S)((?:(?!\*\*\S).)+?)(?<=\S)\*\*"
    r"|(?<!\w)__(?=\S)((?:(?!(?<!\w)__\S).)+?)(?<=\S)__(?!\w)",
    re.DOTALL,
)
_EMPHASIS = re.compile(
    r"(?<![\w*])\*(?=[^\s*])((?:(?!(?<![\w*])\*[^\s*]).)+?)(?<=[^\s*])\*(?![\w*])"
    r"|(?<![\w_])_(?=[^\s_])((?:(?!(?<![\w_])_[^\s_]).)+?)(?<=[^\s_])_(?![\w_])",
    re.DOTALL,
)
_STRIKE = re.compile(r"~~(?=\S)(.+?)(?<=\S)~~", re.DOTALL)
_STRIKE_START = re.compile(r"(?=~~\S)")


def parse_markdown(text: str) -> tuple[list[Block], str | None]:
    """Headings: ATX (``#``) and setext (``===``/``---``) outside fenced code; front matter skipped.
    Returns the blocks and the front matter's title, if any."""
    lines = text.split("\n")
    start, front_title = _front_matter(lines)
    lines = lines[start:]
    refs = _references(lines)
    blocks: list[Block] = []
    level, heading, anchor = 0, "", None
    body: list[str] = []
    paragraph_start: int | None = None  # index in body of the paragraph a setext line would turn into a heading
    # Whether no line of that paragraph is one that cannot belong to one (kept as lines come, not
    # checked again over the whole paragraph at each candidate underline: a file of "-" lines).
    paragraph_plain = True
    code = _CodeReader()

    def open_block(new_level: int, raw_heading: str) -> None:
        nonlocal level, heading, anchor, body, paragraph_start
        new_heading, new_anchor = _heading(raw_heading, refs)
        if not new_heading:
            return
        blocks.append(Block(level, heading, anchor, _body(body, refs)))
        level, heading, anchor, body, paragraph_start = new_level, new_heading, new_anchor, [], None

    for line in lines:
        kind = code.read(line)
        if kind == "comment":
            continue
        if kind == "code":
            body.append(line)
            paragraph_start = None
            continue
        atx = ATX_HEADING.match(line)
        if atx:
            open_block(len(atx.group(1)), atx.group(2) or "")
            paragraph_start = None
            continue
        setext = _SETEXT.match(line)
        if setext and paragraph_start is not None and paragraph_plain:
            raw_heading = " ".join(candidate.strip() for candidate in body[paragraph_start:])
            del body[paragraph_start:]
            open_block(1 if setext.group(1)[0] == "=" else 2, raw_heading)
            paragraph_start = None
            continue
        if not line.strip():
            paragraph_start = None
        else:
            if paragraph_start is None:
                paragraph_start, paragraph_plain = len(body), True
            paragraph_plain = paragraph_plain and not _NOT_PARAGRAPH.match(line)
        body.append(line)
    blocks.append(Block(level, heading, anchor, _body(body, refs)))
    return blocks, front_title


class _CodeReader:
    """Which lines of a Markdown file are fenced code or an HTML comment, read line by line in order.

    Every pass over a file (headings, link reference definitions, a section's body) reads it with
    one of these, so they agree on what is code. CommonMark: a fence closes only at a line of its
    own character, at least as many, alone; an unclosed fence or comment runs to the end. A fence
    or ``<!--`` indented four columns is indented code (or a paragraph's text) at the top level,
    but in a list item, whose text is indented, it is not. List items are not read as containers:
    a list runs from an item to the next line at column 0 that is neither an item nor a comment.
    """

    def __init__(self) -> None:
        self._fence: str | None = None
        self._max_close_indent = 0
        self._in_comment = False
        self._in_list = False

    def read(self, line: str) -> Literal["code", "comment", "text"]:
        """The next line's kind: ``code`` for a fence and the lines in it, ``comment`` for the lines
        of an HTML comment that spans lines, ``text`` for anything else."""
        if self._fence is not None:
            if closes_fence(line, self._fence) and _indent(line) <= self._max_close_indent:
                self._fence = None
            return "code"
        if self._in_comment:
            self._in_comment = "-->" not in line
            return "comment"
        if not line.strip():
            return "text"
        indent = _indent(line)
        starts_block = indent < 4 or self._in_list
        if starts_block and line.lstrip().startswith("<!--"):
            self._in_comment = "-->" not in line
            return "comment" if self._in_comment else "text"
        if starts_block and is_list_item(line):
            self._in_list = True
        elif indent == 0:
            self._in_list = False
        opening = fence_opening(line) if starts_block else None
        if opening is None:
            return "text"
        self._fence = opening.group(2)
        self._max_close_indent = indent + 3 if self._in_list else 3
        return "code"


def _indent(line: str) -> int:
    """How many columns ``line`` is indented, a tab reaching the next multiple of four."""
    expanded = line.expandtabs(4)
    return len(expanded) - len(expanded.lstrip(" "))


def _front_matter(lines: list[str]) -> tuple[int, str | None]:
    """Index of the first line after YAML (``---``) or TOML (``+++``) front matter, and its title."""
    if not lines or lines[0].strip() not in ("---", "+++"):
        return 0, None
    closers = ("---", "...") if lines[0].strip() == "---" else ("+++",)
    for index in range(1, len(lines)):
        if lines[index].strip() in closers:
            titles = (_front_title(line) for line in lines[1:index])
            title = next((collapse(value) for value in titles if value.strip()), None)
            return index + 1, title
    return 0, None


def _front_title(line: str) -> str:
    """The value of a ``title:`` (or ``title =``) line, without its quotes, or ``""``."""
    match = _FRONT_TITLE.match(line)
    if match is None:
        return ""
    value = match.group(1).rstrip()
    return value[:-1] if value.endswith(("'", '"')) else value


def _references(lines: list[str]) -> dict[str, str]:
    """Link reference definitions (``[label]: url``) outside code and comments, by normalised label."""
    refs: dict[str, str] = {}
    code = _CodeReader()
    for line in lines:
        definition = _REF_DEF.match(line) if code.read(line) == "text" else None
        if definition:
            refs.setdefault(collapse(definition.group(1)).lower(), definition.group(2))
    return refs


def _heading(raw: str, refs: dict[str, str]) -> tuple[str, str | None]:
    """The plain text of a heading, and its explicit ``{#id}`` if it has one."""
    explicit = _heading_id(raw)
    if explicit:
        raw = raw[: explicit.start()]
    return collapse(_inline(raw, refs, plain=True)), explicit.group(1) if explicit else None


def _heading_id(raw: str) -> re.Match[str] | None:
    """``_HEADING_ID.search(raw)``: the ``{#id}`` must end the heading, so its ``}`` is the last
    character but spaces and it holds no other; the search starts after the ``}`` before it."""
    last = len(raw.rstrip()) - 1
    if last < 0 or raw[last] != "}":
        return None
    return _HEADING_ID.search(raw, raw.rfind("}", 0, last) + 1)


def _body(lines: list[str], refs: dict[str, str]) -> str:
    """Markdown body lines as plain-ish text: code kept verbatim, inline markup resolved."""
    out: list[str] = []
    prose: list[str] = []  # the lines of the current paragraph: links and emphasis may span them

    def flush() -> None:
        if prose:
            out.append(_inline("\n".join(prose), refs, plain=False))
            prose.clear()

    code = _CodeReader()
    previous_blank = True
    in_indented_code = False
    for line in lines:
        if code.read(line) != "text":  # comments never reach a body: parse_markdown drops them
            flush()
            out.append(line)
            continue
        if not line.strip():
            flush()
            out.append("")
            previous_blank = True
            continue
        indented = line.startswith(("    ", "\t")) and not is_list_item(line)
        in_indented_code = indented and (previous_blank or in_indented_code)
        previous_blank = False
        if in_indented_code:
            flush()
            out.append(line)
        elif not (_REF_DEF.match(line) or THEMATIC_BREAK.match(line) or is_table_delimiter_row(line)):
            prose.append(line)
    flush()
    return "\n".join(out)


def _code_span(code: str, plain: bool) -> str:
    code = code.replace("\n", " ").strip()
    return code if plain else f"`{code}`"


def _code_spans(text: str, replace: Callable[[str], str]) -> str:
    """``text`` with each code span's backticks and code replaced by ``replace(code)``.

    A span opens with the end of a run of backticks, and closes at the next run of as many, whose
    first backtick the span's code may not end with: the longest such opening wins, the backticks
    before it stay. (What ``(`+)(?!`)(.+?)(?<!`)\\1(?!`)`` finds, read here run by run: that pattern
    tries every backtick of a long run and reads on to the end of the text from each.)
    """
    runs = [(m.start(), m.end()) for m in _BACKTICKS.finditer(text)]
    if len(runs) < 2:
        return text
    by_length: dict[int, list[int]] = {}  # a run length: the indexes of the runs that long, in order
    for index, (start, end) in enumerate(runs):
        by_length.setdefault(end - start, []).append(index)
    out: list[str] = []
    done = 0  # text[:done] is in out
    index = 0
    while index < len(runs):
        start, end = runs[index]
        closing = None
        for length in range(end - start, 0, -1):
            same = by_length.get(length, [])
            after = bisect_right(same, index)
            if after < len(same):
                closing = same[after]
                break
        if closing is None:
            index += 1
            continue
        close_start, close_end = runs[closing]
        out.append(text[done : end - (close_end - close_start)])
        out.append(replace(text[end:close_start]))
        done = close_end
        index = closing + 1
    out.append(text[done:])
    return "".join(out)


def _inline(text: str, refs: dict[str, str], *, plain: bool) -> str:
    """Inline Markdown as text. ``plain`` (for headings) also drops URLs and code backticks."""
    stash: list[str] = []

    def keep(value: str) -> str:
        stash.append(value)
        return f"\x00{len(stash) - 1}\x00"

    def link(label: str, url: str) -> str:
        label = label.strip()
        if plain or not url or url.startswith("#") or url == label:
            return label or url
        return f"{label} ({keep(url)})" if label else keep(url)

    def reference(match: re.Match[str]) -> str:
        label = match.group(1)
        url = refs.get(collapse(match.group(2) or label).lower())
        return link(label, url) if url else label

    def shortcut(match: re.Match[str]) -> str:
        url = refs.get(collapse(match.group(1)).lower())
        return link(match.group(1), url) if url else match.group(0)

    text = _code_spans(text, lambda code: keep(_code_span(code, plain)))
    text = _ESCAPE.sub(lambda m: keep(m.group(1)), text)
    text = sub_tried(_HTML_COMMENT, lambda m: "", text, starts=_HTML_COMMENT_START, skip=give_up)
    text = sub_tried(_IMAGE, lambda m: m.group(1), text, starts=_IMAGE_START, skip=past_bracket)
    text = sub_tried(
        _LINK, lambda m: link(m.group(1), m.group(2).strip("<>")), text, starts=_BRACKET, skip=past_bracket
    )
    text = sub_tried(_REF_LINK, reference, text, starts=_BRACKET, skip=past_bracket)
    text = sub_tried(_SHORTCUT_LINK, shortcut, text, starts=_BRACKET, skip=past_bracket)
    text = _AUTOLINK.sub(lambda m: keep(m.group(1)), text)
    text = _BARE_URL.sub(lambda m: keep(m.group(0)), text)
    text = HTML_BREAK.sub(" ", text)
    text = _HTML_TAG.sub(lambda m: keep(""), text)  # gone, but not before emphasis sees "*<name>*" closed
    text = _STRONG.sub(lambda m: m.group(1) or m.group(2), text)
    text = _EMPHASIS.sub(lambda m: m.group(1) or m.group(2), text)
    text = sub_tried(_STRIKE, lambda m: m.group(1), text, starts=_STRIKE_START, skip=give_up)
    text = html.unescape(replace_overlong_charrefs(text))
    return restore(text, stash)
