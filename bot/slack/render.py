"""Slack rendering as pure functions of data: Markdown → mrkdwn, splitting, and Block Kit messages.

Nothing here talks to Slack; every function maps plain data to strings or block dicts, so the Bolt
listeners stay thin and all of this is tested without a network.

Text the LLM writes (and doc passages quoted in an extractive answer) cannot ping or phish: ``&``,
``<`` and ``>`` are always escaped, so ``<!channel>``, ``<@U…>`` or ``<url|label>`` show as text,
and a link the model writes shows its URL, never hides it behind a label. The only ``<url|label>``
links in a message are Penny's own (its citations and the closest docs of a refusal).
:func:`safe_markdown_text` does the same for the standard Markdown a streamed answer carries.

Slack limits used (Slack's Block Kit reference; slack_sdk's block models check the same numbers):

- a section block's ``text``: 3,000 characters (:data:`SECTION_TEXT_LIMIT`);
- blocks per message: 50 (:data:`MAX_BLOCKS`);
- a message's top-level ``text``: 40,000 characters, Slack truncates beyond it (:data:`MESSAGE_TEXT_LIMIT`);
- a context block: 10 elements; a button's text: 75 characters; a button's ``value``: 2,000 characters.

One limit is not documented: ``chat.postMessage`` answers ``msg_blocks_too_long`` once the text of
all blocks together passes roughly 12,000 characters (slackapi/bolt-js#2509, #2867). Each message
built here therefore keeps its blocks' text under :data:`MESSAGE_BLOCKS_TEXT_BUDGET` (10,000) and a
long answer becomes several messages.
"""

from __future__ import annotations

import re
import string
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, NamedTuple

from bot.markdown_syntax import (
    ATX_HEADING,
    BULLET_ITEM,
    HTML_BREAK,
    ORDERED_ITEM,
    THEMATIC_BREAK,
    closes_fence,
    fence_opening,
    is_table_delimiter_row,
    past_bracket,
    sub_tried,
)

__all__ = [
    "ACTION_FEEDBACK",
    "ACTION_FEEDBACK_DOWN",
    "ACTION_FEEDBACK_UP",
    "FEEDBACK_BLOCK_ID",
    "MAX_BLOCKS",
    "MESSAGE_BLOCKS_TEXT_BUDGET",
    "MESSAGE_TEXT_LIMIT",
    "SECTION_TEXT_LIMIT",
    "AnswerView",
    "Block",
    "Chunk",
    "Citation",
    "RefusalKind",
    "answer_blocks",
    "blocks_text_length",
    "defuse_broadcasts",
    "escape_mrkdwn",
    "fallback_text",
    "markdown_to_mrkdwn",
    "message_text",
    "refusal_blocks",
    "safe_markdown_text",
    "split_chunks",
    "split_for_slack",
    "user_mrkdwn",
]

SECTION_TEXT_LIMIT: Final = 3000
MAX_BLOCKS: Final = 50
MESSAGE_TEXT_LIMIT: Final = 40_000
MESSAGE_BLOCKS_TEXT_BUDGET: Final = 10_000
FOOTER_LIMIT: Final = 1000  # a context element may hold 3,000; a cost line needs far less
BUTTON_VALUE_LIMIT: Final = 2000
MAX_SOURCES: Final = 20
MAX_REFUSAL_LINKS: Final = 10

ACTION_FEEDBACK: Final = "penny_feedback"  # Slack's feedback buttons; value "up:<entry_id>" / "down:<entry_id>"
ACTION_FEEDBACK_UP: Final = "penny_feedback_up"  # the plain buttons of answers posted before them
ACTION_FEEDBACK_DOWN: Final = "penny_feedback_down"
FEEDBACK_BLOCK_ID: Final = "penny_feedback"

FENCE: Final = "```"
_REOPEN: Final = FENCE + "\n"
_TRUNCATION_NOTE: Final = "\n\n… (truncated; the full text is in the message)"

Block = dict[str, Any]


# ---------------------------------------------------------------------------------------------
# Escaping and links


def _escape_controls(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def escape_mrkdwn(text: str) -> str:
    """Escape the three characters Slack reserves for control sequences (``&``, ``<``, ``>``), and
    defuse a plain ``@here``, ``@channel`` or ``@everyone`` (see :func:`defuse_broadcasts`)."""
    return _escape_controls(defuse_broadcasts(text))


# The word joiner: invisible, and it keeps "@" and "here" from being read as one word.
WORD_JOINER: Final = "\u2060"
_BROADCAST_PREFIXES = "|".join(
    re.escape(word[:n]) for word in ("here", "channel", "everyone") for n in range(len(word))
)
# "@" (not inside a word or an address) before a broadcast word, or before the start of one at the
# end of the text (a streamed piece can end there: what follows it comes in the next piece).
_BROADCAST = re.compile(
    rf"(?<!\w)@(?=(?:here|channel|everyone)(?!\w)|(?:{_BROADCAST_PREFIXES})\Z)", re.IGNORECASE
)


def defuse_broadcasts(text: str, *, after: str = "") -> str:
    """``text`` with a word joiner after the ``@`` of every ``@here``, ``@channel`` and ``@everyone``.

    With ``verbatim`` left false (Slack's default for a text object, and what ``markdown_text``
    gets), Slack parses some plain mentions itself, so escaping ``<…>`` alone does not keep a model
    from pinging a whole channel with a plain ``@here``. The joiner is invisible; the words read the
    same. ``after`` is the raw text sent just before ``text`` (a streamed piece's last dozen or so
    characters): a broadcast word begun there was defused when it was sent (an ``@`` that ends a
    piece, or ``@ch``, gets its joiner then: what follows may complete the word).
    """
    joined = after + text
    cut = len(after)
    points = [m.end() - cut for m in _BROADCAST.finditer(joined) if m.end() > cut]
    if not points:
        return text
    parts, last = [], 0
    for point in points:
        parts.append(text[last:point])
        last = point
    parts.append(text[last:])
    return WORD_JOINER.join(parts)


_SLACK_USER_ID = re.compile(r"[UW][A-Z0-9]+")


def user_mrkdwn(user_id: str) -> str:
    """A user as mrkdwn: a Slack user ID as ``<@U…>`` (Slack shows their name), anything else (a
    proxy key's user, ``cli:alice``) as escaped code, which neither mentions nor pings."""
    return f"<@{user_id}>" if _SLACK_USER_ID.fullmatch(user_id) else f"`{escape_mrkdwn(user_id)}`"


_LINK_TARGET_AFTER_BRACKET = re.compile(r"(?<=\])([(:])")


def safe_markdown_text(text: str, *, after: str = "") -> str:
    """The model's Markdown made safe for a streamed message's ``markdown_text`` (standard Markdown).

    ``&``, ``<`` and ``>`` become entities, as in mrkdwn, so no mention, Slack link, autolink or
    HTML can be written; and a ``(`` or ``:`` right after ``]`` is backslash-escaped, so
    ``[label](url)`` and ``[ref]: url`` show as written, the URL visible. Text is streamed in
    pieces: ``after`` is what was sent just before ``text`` (its end matters: a ``]`` that ended the
    previous piece, an ``@here`` split between two pieces).
    """
    escaped = _LINK_TARGET_AFTER_BRACKET.sub(r"\\\1", _escape_controls(defuse_broadcasts(text, after=after)))
    if after.endswith("]") and escaped[:1] in ("(", ":"):
        escaped = "\\" + escaped
    return escaped


_URL_UNSAFE = {" ": "%20", "|": "%7C", "<": "%3C", ">": "%3E", "\n": "", "\t": "%09"}
_HAS_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")


def _link(url: str, label_mrkdwn: str) -> str:
    """``<url|label>``, for Penny's own links only; characters that would end the link early are
    percent-encoded in the URL."""
    safe_url = "".join(_URL_UNSAFE.get(ch, ch) for ch in url.strip())
    if not label_mrkdwn:
        return f"<{safe_url}>"
    return f"<{safe_url}|{label_mrkdwn}>"


# ---------------------------------------------------------------------------------------------
# Markdown → mrkdwn: inline spans

_PUNCTUATION = frozenset(string.punctuation)
# A Markdown autolink, ``<https://…>``: shown as its URL. Anything else in ``<…>`` (Slack's own
# mentions and ``<url|label>`` links included) is escaped and shows as the text the model wrote.
_AUTOLINK = re.compile(r"<((?:https?|mailto|ftp):[^\s<>|]+)>")


@dataclass
class _Delimiter:
    """A run of ``*``, ``_`` or ``~~`` that may open or close emphasis (CommonMark's delimiter run)."""

    char: str
    length: int
    count: int
    can_open: bool
    can_close: bool
    opens: list[str] = field(default_factory=list)
    closes: list[str] = field(default_factory=list)


def _inline(text: str, *, bold: str = "*", links: bool = True) -> str:
    """Convert one line's inline Markdown. ``bold`` is the marker for strong emphasis ('' inside a
    heading, which is bold already); ``links`` is False inside a link label (no links in links)."""
    tokens = _tokenize(text, bold=bold, links=links)
    _match_emphasis([t for t in tokens if isinstance(t, _Delimiter)], bold=bold)
    out: list[str] = []
    for token in tokens:
        if isinstance(token, str):
            out.append(token)
        else:
            out.extend(token.closes)
            out.append(token.char * token.count)
            out.extend(reversed(token.opens))
    return "".join(out)


class _Tokens:
    """The tokens of one line as they are found: plain characters gather into one escaped string
    until a code span, link or delimiter run needs a token of its own."""

    def __init__(self) -> None:
        self.tokens: list[str | _Delimiter] = []
        self._plain: list[str] = []

    def plain(self, text: str) -> None:
        self._plain.append(text)

    def token(self, token: str | _Delimiter) -> None:
        self._flush()
        self.tokens.append(token)

    def finish(self) -> list[str | _Delimiter]:
        self._flush()
        return self.tokens

    def _flush(self) -> None:
        if self._plain:
            self.tokens.append(escape_mrkdwn("".join(self._plain)))
            self._plain.clear()


# A step reads the construct starting at ``text[i]`` into ``out`` and returns where it ends, or
# None when there is none there (the character is then plain text).
_Step = Callable[[str, int, _Tokens], int | None]


def _tokenize(text: str, *, bold: str, links: bool) -> list[str | _Delimiter]:
    """Split one line into escaped text, finished spans (code, autolinks, links) and emphasis
    delimiter runs still to be paired. Each construct is told by its first character."""
    steps: dict[str, _Step] = {
        "\\": _escaped_punctuation,
        "`": _code_span,
        "<": _html_break_or_autolink,
        "*": _emphasis_run,
        "_": _emphasis_run,
        "~": _emphasis_run,
    }
    if links:
        pairs = _Pairs.of(text) if "[" in text else _Pairs({}, {})

        def link(text: str, i: int, out: _Tokens) -> int | None:
            return _link_span(text, i, out, pairs=pairs, bold=bold)

        steps["["] = steps["!"] = link
    out = _Tokens()
    i, n = 0, len(text)
    while i < n:
        step = steps.get(text[i])
        end = step(text, i, out) if step is not None else None
        if end is None:
            out.plain(text[i])
            end = i + 1
        i = end
    return out.finish()


def _escaped_punctuation(text: str, i: int, out: _Tokens) -> int | None:
    """``\\*``: the punctuation character itself, as plain text."""
    if i + 1 < len(text) and text[i + 1] in _PUNCTUATION:
        out.plain(text[i + 1])
        return i + 2
    return None


def _code_span(text: str, i: int, out: _Tokens) -> int | None:
    """A code span, kept in backticks with nothing converted inside; an unclosed run is plain."""
    run_end = _run_end(text, i, "`")
    close = _find_backtick_run(text, run_end, run_end - i)
    if close < 0:
        out.plain(text[i:run_end])
        return run_end
    content = text[run_end:close]
    if len(content) > 2 and content[0] == " " and content[-1] == " " and content.strip():
        content = content[1:-1]
    out.token("`" + escape_mrkdwn(content) + "`")
    return close + (run_end - i)


def _html_break_or_autolink(text: str, i: int, out: _Tokens) -> int | None:
    """``<br>`` as a line break, ``<https://…>`` as its visible URL; any other ``<`` is plain."""
    match = HTML_BREAK.match(text, i)
    if match:
        out.plain("\n")
        return match.end()
    match = _AUTOLINK.match(text, i)
    if match:
        out.token(_visible_url(match.group(1)))
        return match.end()
    return None


def _link_span(text: str, i: int, out: _Tokens, *, pairs: _Pairs, bold: str) -> int | None:
    """``[label](url)`` or ``![alt](url)``, rendered with its URL visible (see :func:`_render_link`)."""
    if text[i] == "!":
        if not text.startswith("[", i + 1):
            return None
        i += 1
    parsed = _parse_link(text, i, pairs)
    if parsed is None:
        return None
    label, url, end = parsed
    out.token(_render_link(label, url, bold=bold))
    return end


def _emphasis_run(text: str, i: int, out: _Tokens) -> int | None:
    """A run of ``*``, ``_`` or ``~~``, as a delimiter that CommonMark's flanking rules say may open
    or close emphasis; a ``~`` run of other than two is plain."""
    ch = text[i]
    run_end = _run_end(text, i, ch)
    length = run_end - i
    if ch == "~" and length != 2:
        out.plain(text[i:run_end])
        return run_end
    before = text[i - 1] if i > 0 else " "
    after = text[run_end] if run_end < len(text) else " "
    left = not after.isspace() and (after not in _PUNCTUATION or before.isspace() or before in _PUNCTUATION)
    right = not before.isspace() and (before not in _PUNCTUATION or after.isspace() or after in _PUNCTUATION)
    if ch == "_":  # no intraword emphasis with underscores: snake_case stays as written
        can_open = left and (not right or before in _PUNCTUATION)
        can_close = right and (not left or after in _PUNCTUATION)
    else:
        can_open, can_close = left, right
    out.token(_Delimiter(ch, length, length, can_open, can_close))
    return run_end


def _run_end(text: str, start: int, ch: str) -> int:
    end = start
    while end < len(text) and text[end] == ch:
        end += 1
    return end


def _find_backtick_run(text: str, start: int, length: int) -> int:
    """Start of the next run of exactly ``length`` backticks at or after ``start``, or -1."""
    i = start
    while True:
        i = text.find("`", i)
        if i < 0:
            return -1
        end = _run_end(text, i, "`")
        if end - i == length:
            return i
        i = end


def _match_emphasis(delimiters: list[_Delimiter], *, bold: str) -> None:
    """Pair openers with closers, CommonMark style (including the rule of three).

    Per-character stacks keep this linear on ordinary text; a match discards the unmatched
    delimiters between opener and closer, which then stay literal.
    """
    stacks: dict[str, list[int]] = {"*": [], "_": [], "~": []}
    for index, closer in enumerate(delimiters):
        if closer.can_close:
            while closer.count > 0:
                stack = stacks[closer.char]
                found = -1
                for pos in range(len(stack) - 1, -1, -1):
                    opener = delimiters[stack[pos]]
                    both = opener.can_close or closer.can_open
                    if (
                        both
                        and (opener.length + closer.length) % 3 == 0
                        and not (opener.length % 3 == 0 and closer.length % 3 == 0)
                    ):
                        continue
                    found = pos
                    break
                if found < 0:
                    break
                opener_index = stack[found]
                opener = delimiters[opener_index]
                use = 2 if opener.count >= 2 and closer.count >= 2 else 1
                if closer.char == "~":
                    marker = "~"
                elif use == 2:
                    marker = bold
                else:
                    marker = "_"
                opener.opens.append(marker)
                closer.closes.append(marker)
                opener.count -= use
                closer.count -= use
                for other in stacks.values():
                    while other and other[-1] > opener_index:
                        other.pop()
                if opener.count == 0:
                    stack.pop()
        if closer.can_open and closer.count > 0:
            stacks[closer.char].append(index)


@dataclass(frozen=True)
class _Pairs:
    """Matching ``[``/``]`` and ``(``/``)`` positions of one line, found in a single pass (outside
    code spans and backslash escapes), so parsing links stays linear even on unbalanced input."""

    brackets: dict[int, int]
    parens: dict[int, int]

    @staticmethod
    def of(text: str) -> _Pairs:
        brackets: dict[int, int] = {}
        parens: dict[int, int] = {}
        open_brackets: list[int] = []
        open_parens: list[int] = []
        i, n = 0, len(text)
        while i < n:
            ch = text[i]
            if ch == "\\":
                i += 2
                continue
            if ch == "`":
                run_end = _run_end(text, i, "`")
                close = _find_backtick_run(text, run_end, run_end - i)
                i = run_end if close < 0 else close + (run_end - i)
                continue
            if ch == "[":
                open_brackets.append(i)
            elif ch == "]" and open_brackets:
                brackets[open_brackets.pop()] = i
            elif ch == "(":
                open_parens.append(i)
            elif ch == ")" and open_parens:
                parens[open_parens.pop()] = i
            i += 1
        return _Pairs(brackets, parens)


def _parse_link(text: str, start: int, pairs: _Pairs) -> tuple[str, str, int] | None:
    """Parse ``[label](destination "title")`` at ``start`` (a ``[``); (label, url, end) or None."""
    label_end = pairs.brackets.get(start)
    if label_end is None or not text.startswith("(", label_end + 1):
        return None
    close = pairs.parens.get(label_end + 1)
    if close is None:
        return None
    inner = text[label_end + 2 : close].strip(" \t")
    if inner.startswith("<"):
        end_url = inner.find(">")
        if end_url < 0:
            return None
        url, rest = inner[1:end_url], inner[end_url + 1 :].strip(" \t")
    else:
        url, _, rest = inner.partition(" ")
        rest = rest.strip(" \t")
    if not url or (rest and not (len(rest) >= 2 and rest[0] + rest[-1] in ('""', "''", "()"))):
        return None
    return text[start + 1 : label_end], url, close + 1


def _render_link(label: str, url: str, *, bold: str) -> str:
    """A Markdown link the model wrote, as text: its label, then where it really goes. A label never
    hides a URL (``[the IT portal](https://evil.example)`` would otherwise look like Penny vouching
    for it); Slack still makes the visible URL clickable."""
    label_mrkdwn = _inline(label, bold=bold, links=False).strip()
    if not _HAS_SCHEME.match(url):
        # A relative link (a docs path) cannot be clicked in Slack: show it instead.
        shown = escape_mrkdwn(url)
        return f"{label_mrkdwn} (`{shown}`)" if label_mrkdwn else f"`{shown}`"
    shown = _visible_url(url)
    if not label_mrkdwn or label.strip() == url.strip():
        return shown
    return f"{label_mrkdwn} ({shown})"


# An "@" in a URL before a broadcast word: shown as "%40", which leads to the same place.
_URL_BROADCAST = re.compile(r"(?<!\w)@(?=(?:here|channel|everyone)(?!\w))", re.IGNORECASE)


def _visible_url(url: str) -> str:
    """``url`` as text a reader sees whole: spaces (any Unicode space) and ``|<>`` percent-encoded
    (Slack would end the link it makes of it there), ``&`` escaped, and the ``@`` of an ``@here``,
    ``@channel`` or ``@everyone`` in it percent-encoded (``/?to=@here`` is a plain word to Slack
    where its link ends, and the model chooses where that is)."""
    encoded = "".join(_URL_UNSAFE[ch] if ch in _URL_UNSAFE else _percent(ch) if ch.isspace() else ch
                      for ch in url.strip())
    return _escape_controls(_URL_BROADCAST.sub("%40", encoded))


def _percent(ch: str) -> str:
    return "".join(f"%{byte:02X}" for byte in ch.encode("utf-8", "surrogatepass"))


# ---------------------------------------------------------------------------------------------
# Markdown → mrkdwn: lines and blocks

# Block syntax the docs parser reads too comes from bot.markdown_syntax; only the renderer reads these.
_QUOTE = re.compile(r"^ {0,3}>+ ?(.*)$")
_TASK = re.compile(r"^\[([ xX])\][ \t]+(.*)$")
# Possessive runs, and tried only where a try can succeed (sub_tried): a cell is text the model wrote.
_TABLE_LINK = re.compile(r"!?\[([^\]]*+)\]\(([^)\s]*+)[^)]*+\)")
_TABLE_LINK_START = re.compile(r"!(?=\[)|\[")
_TABLE_MARKUP = re.compile(r"\*\*|__|~~|`")


def markdown_to_mrkdwn(text: str) -> str:
    """Convert the Markdown an LLM writes into Slack mrkdwn.

    Bold, italic, strikethrough, headings (a bold line), bullets (``•``), numbered lists, quotes
    and rules are converted; fenced code keeps its ``` fences (the language tag is dropped) and
    inline code its backticks, with nothing converted inside either; tables become a code block
    with aligned columns. A link becomes ``label (url)`` and an autolink its URL: the model's URLs
    are shown, never hidden behind a label. ``&``, ``<`` and ``>`` are escaped everywhere, code
    included (Slack parses ``<…>`` sequences even inside code and shows the entities as the
    characters), so Slack's ``<!channel>``, ``<@U…>``, ``<#C…>``, ``<!subteam^…>`` and
    ``<url|label>`` written by the model show as text: nothing it writes can ping anyone.
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = fence_opening(line)
        if fence:
            indent, marker = len(fence.group(1).expandtabs(4)), fence.group(2)
            body: list[str] = []
            i += 1
            while i < len(lines):
                if closes_fence(lines[i], marker):
                    i += 1
                    break
                body.append(escape_mrkdwn(_dedent(lines[i], indent)))
                i += 1
            out.append("\n".join([FENCE, *body, FENCE]))
            continue
        if "|" in line and i + 1 < len(lines) and is_table_delimiter_row(lines[i + 1]):
            header = line
            alignments = _table_cells(lines[i + 1])
            rows = [header]
            i += 2
            while i < len(lines) and "|" in lines[i] and lines[i].strip():
                rows.append(lines[i])
                i += 1
            out.append(_render_table([_table_cells(row) for row in rows], alignments))
            continue
        out.append(_convert_line(line))
        i += 1
    return "\n".join(out)


def _dedent(line: str, width: int) -> str:
    expanded = line.expandtabs(4)
    strip = min(width, len(expanded) - len(expanded.lstrip(" ")))
    return expanded[strip:]


def _convert_line(line: str) -> str:
    # Quotes nest ("> > x"): each level is peeled off here, in a loop, since a model or a page can
    # nest thousands of them (recursing once per level overflowed Python's stack at ~1,000).
    depth = 0
    while (trimmed := line.rstrip()) and not THEMATIC_BREAK.match(trimmed) and not ATX_HEADING.match(trimmed):
        quote = _QUOTE.match(trimmed)
        if not quote:
            break
        depth += 1
        line = quote.group(1)
    rest = _convert_unquoted(line)
    if not depth:
        return rest
    return "> " * depth + rest if rest else "> " * (depth - 1) + ">"


def _convert_unquoted(line: str) -> str:
    if not line.strip():
        return ""
    line = line.rstrip()
    if THEMATIC_BREAK.match(line):
        return "──────────"
    heading = ATX_HEADING.match(line)
    if heading:
        content = _inline(heading.group(2) or "", bold="").strip()
        return f"*{content}*" if content else ""
    bullet = BULLET_ITEM.match(line)
    if bullet:
        indent, rest = bullet.group(1).expandtabs(4), bullet.group(2)
        task = _TASK.match(rest)
        if task:
            box = "☐" if task.group(1) == " " else "☑"
            return f"{indent}• {box} {_inline(task.group(2))}"
        return f"{indent}• {_inline(rest)}"
    ordered = ORDERED_ITEM.match(line)
    if ordered:
        indent = ordered.group(1).expandtabs(4)
        return f"{indent}{ordered.group(2)}. {_inline(ordered.group(3))}"
    return _inline(line)


def _table_cells(row: str) -> list[str]:
    body = row.strip()
    if body.startswith("|"):
        body = body[1:]
    if body.endswith("|") and not body.endswith("\\|"):
        body = body[:-1]
    cells = re.split(r"(?<!\\)\|", body)
    return [_plain_cell(cell) for cell in cells]


def _plain_cell(cell: str) -> str:
    cell = cell.strip().replace("\\|", "|")
    cell = HTML_BREAK.sub(" ", cell)
    cell = sub_tried(
        _TABLE_LINK,
        lambda m: f"{m.group(1)} ({m.group(2)})" if m.group(2) else m.group(1),
        cell,
        starts=_TABLE_LINK_START,
        skip=past_bracket,
    )
    return _TABLE_MARKUP.sub("", cell)


def _render_table(rows: list[list[str]], alignments: list[str]) -> str:
    columns = max(len(row) for row in rows)
    grid = [row + [""] * (columns - len(row)) for row in rows]
    widths = [max(1, *(len(row[c]) for row in grid)) for c in range(columns)]
    right = [
        c < len(alignments) and alignments[c].endswith(":") and not alignments[c].startswith(":")
        for c in range(columns)
    ]

    def render_row(row: list[str]) -> str:
        cells = [row[c].rjust(widths[c]) if right[c] else row[c].ljust(widths[c]) for c in range(columns)]
        return " | ".join(cells).rstrip()

    lines = [render_row(grid[0]), "-+-".join("-" * w for w in widths)]
    lines.extend(render_row(row) for row in grid[1:])
    return "\n".join([FENCE, *(escape_mrkdwn(line) for line in lines), FENCE])


# ---------------------------------------------------------------------------------------------
# Splitting


@dataclass(frozen=True)
class Chunk:
    """One slice of a split text. ``reopen``: it starts inside a code block, so ``render`` opens a
    fence first; ``close``: it ends inside one, so ``render`` closes it. The slices, joined,
    are exactly the input."""

    text: str
    reopen: bool = False
    close: bool = False

    def render(self) -> str:
        prefix = _REOPEN if self.reopen else ""
        suffix = ""
        if self.close:
            suffix = FENCE if self.text.endswith("\n") else "\n" + FENCE
        return prefix + self.text + suffix


class _Layout:
    """Where a text may be cut: never inside ``<…>``, an ``&…;`` entity or a ``` marker."""

    _PROTECTED = re.compile(r"<[^<>]*>|&(?:#\d+|#x[0-9a-fA-F]+|[A-Za-z]+);|```")

    def __init__(self, text: str) -> None:
        self.text = text
        self.fences = [m.start() for m in re.finditer(FENCE, text)]
        starts: list[int] = []
        ends: list[int] = []
        for match in self._PROTECTED.finditer(text):
            if starts and match.start() < ends[-1]:
                ends[-1] = max(ends[-1], match.end())
            else:
                starts.append(match.start())
                ends.append(match.end())
        self.starts = starts
        self.ends = ends

    def in_fence(self, position: int) -> bool:
        return bisect_left(self.fences, position) % 2 == 1

    def protected_start(self, position: int) -> int | None:
        """Start of the protected span that ``position`` falls strictly inside, if any."""
        index = bisect_right(self.starts, position) - 1
        if index >= 0 and self.starts[index] < position < self.ends[index]:
            return self.starts[index]
        return None

    def can_cut(self, position: int) -> bool:
        if self.protected_start(position) is not None:
            return False
        # Cutting just before a closing fence would leave an empty code block in the next chunk.
        return not (self.in_fence(position) and self.text.startswith(FENCE, position))

    def cut(self, start: int, limit: int) -> int:
        """The best cut in ``(start, limit]``: after a paragraph break, else a line break, else a space."""
        text = self.text
        for separator in ("\n\n", "\n", " "):
            found = text.rfind(separator, start, limit)
            while found >= 0:
                position = found + len(separator)
                if position > start and self.can_cut(position):
                    return position
                found = text.rfind(separator, start, found + len(separator) - 1)
        inside = self.protected_start(limit)
        if inside is not None and inside > start:
            return inside
        return limit


def split_chunks(mrkdwn: str, limit: int = SECTION_TEXT_LIMIT) -> list[Chunk]:
    """Split ``mrkdwn`` into chunks whose rendering fits ``limit`` characters (see :func:`split_for_slack`)."""
    if limit < 4 * len(_REOPEN):
        raise ValueError(f"limit must be at least {4 * len(_REOPEN)} characters, got {limit}")
    layout = _Layout(mrkdwn)
    chunks: list[Chunk] = []
    position, total = 0, len(mrkdwn)
    while position < total:
        reopen = layout.in_fence(position)
        overhead = len(_REOPEN) if reopen else 0
        ends_open = layout.in_fence(total)
        if total - position + overhead + (len(_REOPEN) if ends_open else 0) <= limit:
            chunks.append(Chunk(mrkdwn[position:], reopen, ends_open))
            break
        # Reserve room for a closing fence whether or not this cut lands inside a code block.
        end = layout.cut(position, position + limit - overhead - len(_REOPEN))
        chunks.append(Chunk(mrkdwn[position:end], reopen, layout.in_fence(end)))
        position = end
    return chunks


def split_for_slack(mrkdwn: str, limit: int = SECTION_TEXT_LIMIT) -> list[str]:
    """Split mrkdwn into chunks that each fit a section block (3,000 characters by default).

    Cuts prefer a paragraph break, then a line break, then a space, and never fall inside a
    ``<url|text>`` link, a mention or an ``&amp;`` entity. A chunk cut inside a code block is
    closed with ``` and the next one reopens it, so every chunk's fences balance. Without the
    added fence markers (see :class:`Chunk`), the chunks joined are exactly the input.
    """
    return [chunk.render() for chunk in split_chunks(mrkdwn, limit)]


# ---------------------------------------------------------------------------------------------
# Answers


class Citation(NamedTuple):
    """A cited doc: ``[number] title › section``, linked to ``url`` or shown as its ``path``."""

    number: int
    title: str
    section: str
    url: str | None
    path: str


CitationTuple = tuple[int, str, str, str | None, str]


@dataclass(frozen=True)
class AnswerView:
    """What an answer message shows. ``text`` is the model's Markdown; ``footer`` is plain text
    (the cost line); ``entry_id`` identifies the answer for feedback (no buttons without it)."""

    text: str
    citations: Sequence[CitationTuple] = ()
    footer: str = ""
    entry_id: str | None = None
    cached: bool = False


def _section(mrkdwn: str) -> Block:
    return {"type": "section", "text": {"type": "mrkdwn", "text": mrkdwn}}


def _context(mrkdwn: str) -> Block:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": mrkdwn}]}


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _citation_line(citation: CitationTuple) -> str:
    number, title, section, url, path = citation
    label = f"[{number}] {title or path}"
    if section:
        label += f" › {section}"
    if url:
        return _link(url, escape_mrkdwn(_clip(label, 300)))
    if not title or not path or path == title:  # the label already shows the path, or there is none
        return escape_mrkdwn(label)
    return f"{escape_mrkdwn(label)} · `{escape_mrkdwn(path)}`"


def _sources_blocks(citations: Sequence[CitationTuple], shown: int) -> list[Block]:
    if not citations:
        return []
    ordered = sorted(citations, key=lambda c: c[0])
    lines = [_citation_line(c) for c in ordered[:shown]]
    if len(ordered) > shown:
        lines.append(f"…and {len(ordered) - shown} more")
    text = "*Sources*\n" + "\n".join(lines)
    return [_section(chunk.strip("\n")) for chunk in split_for_slack(text) if chunk.strip()]


def _feedback_block(entry_id: str) -> Block:
    """Slack's native feedback buttons (a ``feedback_buttons`` element in a ``context_actions``
    block), one action whose value says the vote and the answer."""
    if len("down:" + entry_id) > BUTTON_VALUE_LIMIT:
        raise ValueError(f"entry_id is longer than Slack's {BUTTON_VALUE_LIMIT}-character button value allows")

    def button(emoji: str, vote: str, label: str) -> Block:
        return {"text": {"type": "plain_text", "text": emoji}, "value": f"{vote}:{entry_id}",
                "accessibility_label": label}

    return {
        "type": "context_actions",
        "elements": [{
            "type": "feedback_buttons",
            "action_id": ACTION_FEEDBACK,
            "positive_button": button("👍", "up", "Helpful answer"),
            "negative_button": button("👎", "down", "Unhelpful answer"),
        }],
    }


def blocks_text_length(blocks: Sequence[Block]) -> int:
    """Characters of text in ``blocks`` (every ``text`` string), what Slack's cumulative limit counts."""
    total = 0
    for block in blocks:
        total += sum(len(s) for s in _text_values(block))
    return total


def _text_values(value: object) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "text" and isinstance(item, str):
                yield item
            else:
                yield from _text_values(item)
    elif isinstance(value, list):
        for item in value:
            yield from _text_values(item)


def _fits(blocks: Sequence[Block]) -> bool:
    return len(blocks) <= MAX_BLOCKS and blocks_text_length(blocks) <= MESSAGE_BLOCKS_TEXT_BUDGET


def answer_blocks(answer: AnswerView) -> list[list[Block]]:
    """The message(s) for one answer, each a list of blocks within Slack's limits.

    The answer text (converted and split into section blocks) comes first, then a *Sources*
    section, a context block with the footer (and a cached marker), then Slack's 👍 / 👎 feedback
    buttons (``penny_feedback``, value ``up:``/``down:`` + ``entry_id``). When it all does not
    fit one message, the text spills over several; only the last carries sources, footer and buttons.
    """
    body = [_section(chunk.strip("\n")) for chunk in split_for_slack(markdown_to_mrkdwn(answer.text)) if chunk.strip()]
    footer = escape_mrkdwn(_clip(answer.footer.strip(), FOOTER_LIMIT))
    if answer.cached:
        footer = f":zap: cached answer · {footer}" if footer else ":zap: cached answer"
    end: list[Block] = []
    if footer:
        end.append(_context(footer))
    if answer.entry_id is not None:
        end.append(_feedback_block(answer.entry_id))
    shown = MAX_SOURCES
    tail = [*_sources_blocks(answer.citations, shown), *end]
    while shown > 0 and not _fits(tail):  # only absurdly long citations get here
        shown -= 1
        tail = [*_sources_blocks(answer.citations, shown), *end]

    messages: list[list[Block]] = [[]]
    for block in body:
        if messages[-1] and not _fits([*messages[-1], block]):
            messages.append([])
        messages[-1].append(block)
    if _fits([*messages[-1], *tail]):
        messages[-1].extend(tail)
    else:
        # The tail goes in a message of its own, taking along the last text block when that fits.
        last: list[Block] = []
        if len(messages[-1]) > 1 and _fits([messages[-1][-1], *tail]):
            last.append(messages[-1].pop())
        messages.append([*last, *tail])
    return [message for message in messages if message] or [[_section("_(empty answer)_")]]


# ---------------------------------------------------------------------------------------------
# Refusals and fallback text

RefusalKind = Literal["rate_limited", "over_budget", "breaker_open", "upstream_error", "store_unavailable", "no_match"]

_REFUSALS: dict[str, tuple[str, str]] = {
    "rate_limited": (":hourglass_flowing_sand:", "Slow down a little"),
    "over_budget": (":money_with_wings:", "The budget is used up"),
    "breaker_open": (":construction:", "The AI service is having trouble"),
    "upstream_error": (":warning:", "Penny couldn't get an answer"),
    "store_unavailable": (":warning:", "Penny can't answer right now"),
    "no_match": (":mag:", "No docs match your question"),
}
_REFUSAL_DEFAULT = (":warning:", "Penny can't answer right now")


def _doc_link(title: str, target: str) -> str:
    if _HAS_SCHEME.match(target):
        return _link(target, escape_mrkdwn(_clip(title or target, 300)))
    if title:
        return f"{escape_mrkdwn(title)} · `{escape_mrkdwn(target)}`"
    return f"`{escape_mrkdwn(target)}`"


def refusal_blocks(kind: str, message: str, links: Sequence[tuple[str, str]] = ()) -> list[Block]:
    """Blocks for an ephemeral refusal (``kind`` is a :data:`RefusalKind`; anything else gets a
    generic heading): the reason in plain words, then up to 10 of the closest docs, each
    ``(title, url or path)``."""
    emoji, heading = _REFUSALS.get(kind, _REFUSAL_DEFAULT)
    intro = f"{emoji} *{heading}*"
    text = escape_mrkdwn(message.strip())
    if text:
        intro += "\n" + text
    blocks = [_section(chunk.strip("\n")) for chunk in split_for_slack(intro) if chunk.strip()]
    if links:
        lines = [f"• {_doc_link(title, target)}" for title, target in links[:MAX_REFUSAL_LINKS]]
        doc_text = "*Closest docs*\n" + "\n".join(lines)
        blocks.extend(_section(chunk.strip("\n")) for chunk in split_for_slack(doc_text) if chunk.strip())
    return blocks


def _truncate(mrkdwn: str, limit: int) -> str:
    if len(mrkdwn) <= limit:
        return mrkdwn
    head = split_chunks(mrkdwn, limit - len(_TRUNCATION_NOTE))[0].render()
    return head.rstrip() + _TRUNCATION_NOTE


def fallback_text(markdown: str, *, limit: int = MESSAGE_TEXT_LIMIT) -> str:
    """The top-level ``text`` for notifications and screen readers: ``markdown`` as mrkdwn, cut at
    a clean boundary with a note when longer than ``limit`` (the blocks carry the full text)."""
    return _truncate(markdown_to_mrkdwn(markdown).strip(), limit)


def message_text(blocks: Sequence[Block], *, limit: int = MESSAGE_TEXT_LIMIT) -> str:
    """A ``text`` for a message that is already rendered: its section texts joined, within ``limit``."""
    parts = [b["text"]["text"] for b in blocks if b.get("type") == "section" and isinstance(b.get("text"), dict)]
    return _truncate("\n\n".join(str(p) for p in parts), limit)
