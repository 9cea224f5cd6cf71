"""bot.markdown_syntax: the block syntax the docs parser and the Slack renderer share, and their agreement."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.docs import parse_document
from bot.markdown_syntax import (
    ATX_HEADING,
    THEMATIC_BREAK,
    closes_fence,
    fence_opening,
    is_list_item,
    is_table_delimiter_row,
)
from bot.slack.render import markdown_to_mrkdwn


@pytest.mark.parametrize(
    ("line", "marker", "info"),
    [("```", "```", ""), ("```python", "```", "python"), ("  ~~~~ sh", "~~~~", " sh"), ("~~~ a`b", "~~~", " a`b")],
)
def test_a_fence_opens_with_three_backticks_or_tildes(line: str, marker: str, info: str) -> None:
    opening = fence_opening(line)
    assert opening is not None
    assert (opening.group(2), opening.group(3)) == (marker, info)


@pytest.mark.parametrize("line", ["``", "``` a`b", "```code```", "text ```", "~~"])
def test_not_a_fence(line: str) -> None:
    assert fence_opening(line) is None


def test_a_fence_closes_with_the_same_character_at_least_as_many_times() -> None:
    assert closes_fence("```", "```")
    assert closes_fence("  `````  ", "```")
    assert not closes_fence("``", "```")
    assert not closes_fence("~~~", "```")
    assert not closes_fence("```", "````")
    assert not closes_fence("``` python", "```")


def test_headings_rules_and_list_items() -> None:
    heading = ATX_HEADING.match("## Deploys ##")
    assert heading is not None and (heading.group(1), heading.group(2)) == ("##", "Deploys")
    assert ATX_HEADING.match("#hashtag") is None
    assert THEMATIC_BREAK.match("* * *") and THEMATIC_BREAK.match("---") and not THEMATIC_BREAK.match("--")
    assert is_list_item("- a") and is_list_item("  2) b") and is_list_item("* c")
    assert not is_list_item("-a") and not is_list_item("2.b") and not is_list_item("**bold**")


@pytest.mark.parametrize("line", ["|---|---|", "| :-- | --: |", "---|---", "|---", "| :-: |"])
def test_a_table_delimiter_row(line: str) -> None:
    assert is_table_delimiter_row(line)


@pytest.mark.parametrize("line", ["---", "| a | b |", "|", "- | -x"])
def test_not_a_table_delimiter_row(line: str) -> None:
    assert not is_table_delimiter_row(line)


def test_the_parser_and_the_renderer_read_the_same_code_block(tmp_path: Path) -> None:
    # A tilde fence may carry backticks in its info string: both see a code block, not text.
    markdown = "Run:\n\n~~~sh `bash`\n# not a heading\n- not an item\n~~~\n"
    (tmp_path / "run.md").write_text(markdown, encoding="utf-8")
    doc = parse_document(tmp_path / "run.md", tmp_path)
    assert [section.heading_path for section in doc.sections] == [("Run",)]
    assert "# not a heading\n- not an item" in doc.sections[0].text
    assert markdown_to_mrkdwn(markdown) == "Run:\n\n```\n# not a heading\n- not an item\n```\n"


def test_an_example_docs_passage_reaches_slack_without_a_lone_asterisk() -> None:
    # "*Services → <name>*" then "*SLOs*" in one paragraph used to leave "The *SLOs dashboard" in the
    # index, quoted as such by extractive answers and by the LLM.
    docs = Path(__file__).resolve().parent.parent / "examples" / "docs"
    doc = parse_document(docs / "engineering" / "logs-and-observability.md", docs)
    text = next(section.text for section in doc.sections if "SLOs" in section.text)
    assert "The SLOs dashboard" in text
    assert "*" not in text
    assert "The SLOs dashboard" in markdown_to_mrkdwn(text)
