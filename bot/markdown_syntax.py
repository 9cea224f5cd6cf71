"""The Markdown block syntax Penny reads in two places, written once.

The docs parser (:mod:`bot.docs.parse`) reads the team's Markdown files; the Slack renderer
(:mod:`bot.slack.render`) reads the Markdown the LLM writes, often quoting those files. Both must
agree on what opens and closes a code block and what is a heading, a rule, a list item, a table's
delimiter row or a line break, or a passage would read one way in the index and another in Slack.
CommonMark and GitHub Flavored Markdown are the reference.

Inline spans are not here on purpose: the renderer pairs emphasis delimiters the CommonMark way to
write mrkdwn, while the parser only drops them; and the renderer's autolink refuses ``|``, which
would end a Slack link early.
"""

from __future__ import annotations

import re

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
    "is_list_item",
    "is_table_delimiter_row",
]

FENCE_OPEN = re.compile(r"^(\s*)(`{3,}|~{3,})(.*)$")
"""A line that may open a code fence: its indentation, the marker, the info string (see :func:`fence_opening`)."""
FENCE_CLOSE = re.compile(r"^\s*(`{3,}|~{3,})\s*$")
"""A line that may close a code fence (see :func:`closes_fence`)."""
ATX_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
"""``# Heading``: the hashes (the level) and the heading's text, closing hashes dropped."""
THEMATIC_BREAK = re.compile(r"^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$")
"""A rule: three or more ``-``, ``*`` or ``_``, spaces allowed between them."""
BULLET_ITEM = re.compile(r"^(\s*)[-*+][ \t]+(.*)$")
"""``- item``: the indentation and the item's text."""
ORDERED_ITEM = re.compile(r"^(\s*)(\d{1,9})[.)][ \t]+(.*)$")
"""``1. item`` or ``1) item``: the indentation, the number and the item's text."""
TABLE_DELIMITER_ROW = re.compile(r"^\s*\|?\s*:?-+:?\s*(?:\|\s*:?-+:?\s*)*\|?\s*$")
"""``| --- | :-: |``, the row under a table's header (see :func:`is_table_delimiter_row`)."""
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
