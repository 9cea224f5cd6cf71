"""The Markdown block syntax Penny reads in two places, written once.

The docs parser (:mod:`bot.docs.parse`) reads the team's Markdown files; the Slack renderer
(:mod:`bot.slack.render`) reads the Markdown the LLM writes, often quoting those files. Both must
agree on what opens and closes a code block and what is a heading, a rule, a list item, a table's
delimiter row or a line break, or a passage would read one way in the index and another in Slack.
CommonMark and GitHub Flavored Markdown are the reference.

Inline spans are not here on purpose: the renderer pairs emphasis delimiters the CommonMark way to
write mrkdwn, while the parser only drops them; and the renderer's autolink refuses ``|``, which
would end a Slack link early. What is here for inline patterns is :func:`sub_tried`, the
substitution both use to keep a pattern from reading a long line again from every position.

Every pattern here matches in time linear in the line's length: a file or an answer is text someone
else wrote, and one crafted line must not stall indexing or rendering.
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = [
    "ATX_HEADING",
    "BULLET_ITEM",
    "FENCE_CLOSE",
    "FENCE_OPEN",
    "HTML_BREAK",
    "ORDERED_ITEM",
    "TABLE_DELIMITER_ROW",
    "THEMATIC_BREAK",
    "closes_fence",
    "fence_opening",
    "give_up",
    "is_list_item",
    "is_table_delimiter_row",
    "past_bracket",
    "sub_tried",
]

FENCE_OPEN = re.compile(r"^(\s*)(`{3,}|~{3,})(.*)$")
"""A line that may open a code fence: its indentation, the marker, the info string (see :func:`fence_opening`)."""
FENCE_CLOSE = re.compile(r"^\s*(`{3,}|~{3,})\s*$")
"""A line that may close a code fence (see :func:`closes_fence`)."""
ATX_HEADING = re.compile(r"^ {0,3}(#{1,6}+)(?:[ \t]++((?:.*?[^ \t\n])?))?(?:[ \t]++#++)?[ \t]*+$")
"""``# Heading``: the hashes (the level) and the heading's text, closing hashes dropped.

The text can only end at a character other than a blank, and the possessive runs (``++``, ``*+``)
never give blanks or hashes back, so matching is linear: a lazy text followed by "blanks to the
end" would read a long run of spaces again after each of its characters."""
THEMATIC_BREAK = re.compile(r"^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$")
"""A rule: three or more ``-``, ``*`` or ``_``, spaces allowed between them."""
BULLET_ITEM = re.compile(r"^(\s*)[-*+][ \t]+(.*)$")
"""``- item``: the indentation and the item's text."""
ORDERED_ITEM = re.compile(r"^(\s*)(\d{1,9})[.)][ \t]+(.*)$")
"""``1. item`` or ``1) item``: the indentation, the number and the item's text."""
TABLE_DELIMITER_ROW = re.compile(r"^\s*+\|?\s*+:?-++:?\s*+(?:\|\s*+:?-++:?\s*+)*+\|?\s*+$")
"""``| --- | :-: |``, the row under a table's header (see :func:`is_table_delimiter_row`).

Its runs are possessive: two runs of spaces side by side would otherwise try every way of sharing
a long run of spaces between them."""
HTML_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
"""``<br>``, ``<br/>``, ``<br />``: a line break written as HTML, common inside table cells."""


def fence_opening(line: str) -> re.Match[str] | None:
    """``line`` opening a code fence (groups: indentation, marker, info string), or None.

    A backtick fence's info string may not hold a backtick (CommonMark), so a line such as
    ````` ```a`b``` ````` is inline code, not a fence.
    """
    match = FENCE_OPEN.match(line)
    if match is None or (match.group(2)[0] == "`" and "`" in match.group(3)):
        return None
    return match


def closes_fence(line: str, marker: str) -> bool:
    """Whether ``line`` closes a fence opened by ``marker``: the same character, at least as many, alone."""
    match = FENCE_CLOSE.match(line)
    return match is not None and match.group(1)[0] == marker[0] and len(match.group(1)) >= len(marker)


def is_list_item(line: str) -> bool:
    """Whether ``line`` starts a bulleted or numbered list item."""
    return BULLET_ITEM.match(line) is not None or ORDERED_ITEM.match(line) is not None


def is_table_delimiter_row(line: str) -> bool:
    """Whether ``line`` is a table's delimiter row: dashes (optionally with colons) between pipes.

    At least one ``|`` is required, so a lone ``---`` stays a rule or a setext underline.
    """
    return "|" in line and TABLE_DELIMITER_ROW.match(line) is not None


def sub_tried(
    pattern: re.Pattern[str],
    repl: Callable[[re.Match[str]], str],
    text: str,
    *,
    starts: re.Pattern[str],
    skip: Callable[[str, int], int],
) -> str:
    """``pattern.sub(repl, text)``, without trying ``pattern`` where it is known to fail.

    ``pattern`` is tried only where ``starts`` finds a match (every position where ``pattern`` can
    match must be one), and after it fails at ``i`` not again before ``skip(text, i)``: the caller
    promises that ``pattern`` fails at every position in between too. That keeps a pattern such as
    a link's (a ``[``, then anything but ``]`` up to a ``]``, then more) linear: ``re.sub`` tries it
    again at each ``[`` of a line of ``[`` and reads on to the line's end every time, though every
    one of those tries fails for the same reason. ``pattern`` must not match the empty string.
    """
    out: list[str] = []
    done = 0  # text[:done] is in out
    resume = 0  # no match starts before this
    end = len(text)
    for start in starts.finditer(text):
        i = start.start()
        if resume >= end:
            break
        if i < resume:
            continue
        match = pattern.match(text, i)
        if match is None:
            resume = skip(text, i)
            continue
        out.append(text[done:i])
        out.append(repl(match))
        done = resume = match.end()
    out.append(text[done:])
    return "".join(out)


def give_up(text: str, i: int) -> int:
    """A ``skip`` for :func:`sub_tried` when a failure at ``i`` means no match anywhere after it
    (a span whose closing delimiter, wherever it opens, is missing from the rest of the text)."""
    return len(text)


def past_bracket(text: str, i: int) -> int:
    """A ``skip`` for :func:`sub_tried` when the pattern reads ``[`` then anything but ``]`` up to a
    ``]``: every ``[`` before that ``]`` reaches the same ``]``, so fails the same way."""
    close = text.find("]", i)
    return len(text) if close < 0 else close
