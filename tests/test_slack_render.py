"""Slack rendering: Markdown → mrkdwn, splitting within Slack's limits, answer and refusal blocks.

Every block built here is also checked with slack_sdk's own block models (``validate_json``),
which enforce Slack's documented per-field limits.
"""

from __future__ import annotations

import random
import re
import time
from collections import Counter
from typing import Any

import pytest
from slack_sdk.models.blocks import Block as SdkBlock

from bot.slack.render import (
    ACTION_FEEDBACK,
    MAX_BLOCKS,
    MAX_SOURCES,
    MESSAGE_BLOCKS_TEXT_BUDGET,
    MESSAGE_TEXT_LIMIT,
    SECTION_TEXT_LIMIT,
    AnswerView,
    Block,
    Chunk,
    Citation,
    answer_blocks,
    blocks_text_length,
    fallback_text,
    markdown_to_mrkdwn,
    message_text,
    refusal_blocks,
    split_chunks,
    split_for_slack,
)

LINK = re.compile(r"<[^<>]*>")


def assert_valid_blocks(blocks: list[Block]) -> None:
    assert 0 < len(blocks) <= MAX_BLOCKS
    assert blocks_text_length(blocks) <= MESSAGE_BLOCKS_TEXT_BUDGET
    for block in blocks:
        SdkBlock.parse(block).validate_json()  # type: ignore[union-attr]
        if block["type"] == "section":
            assert 0 < len(block["text"]["text"]) <= SECTION_TEXT_LIMIT


def assert_balanced(chunk: str) -> None:
    assert chunk.count("```") % 2 == 0, chunk[-200:]
    assert chunk.count("<") == chunk.count(">") == len(LINK.findall(chunk)), chunk


def sections(blocks: list[Block]) -> list[str]:
    return [b["text"]["text"] for b in blocks if b["type"] == "section"]


# ---------------------------------------------------------------------------------------------
# markdown_to_mrkdwn


@pytest.mark.parametrize(
    ("markdown", "mrkdwn"),
    [
        ("**bold** and __bold__", "*bold* and *bold*"),
        ("*italic* and _italic_", "_italic_ and _italic_"),
        ("~~struck~~ text", "~struck~ text"),
        ("***both***", "_*both*_"),
        ("**bold _nested_ bold**", "*bold _nested_ bold*"),
        ("*italic **nested** italic*", "_italic *nested* italic_"),
        ("**Note:** read this", "*Note:* read this"),
        ("**unclosed bold", "**unclosed bold"),
        ("snake_case_name and file_name.py", "snake_case_name and file_name.py"),
        ("2 * 3 * 4 = 24", "2 * 3 * 4 = 24"),
        ("costs ~5 or ~~6~~", "costs ~5 or ~6~"),
        (r"\*literal\* stars", "*literal* stars"),
        ("*SLOs*", "_SLOs_"),
        ("*APIs*", "_APIs_"),
        ("**SLOs**", "*SLOs*"),
        ("*x*", "_x_"),
        ("The *SLOs* dashboard, the **APIs** list", "The _SLOs_ dashboard, the *APIs* list"),
        ("a *stray star and *SLOs* here", "a *stray star and _SLOs_ here"),
    ],
)
def test_emphasis(markdown: str, mrkdwn: str) -> None:
    assert markdown_to_mrkdwn(markdown) == mrkdwn


def test_nothing_is_converted_inside_code_spans() -> None:
    source = "Run `**not bold** _nor italic_ [no](link) ~~x~~ # no` then **bold**"
    assert markdown_to_mrkdwn(source) == ("Run `**not bold** _nor italic_ [no](link) ~~x~~ # no` then *bold*")
    assert markdown_to_mrkdwn("`a < b && c > d`") == "`a &lt; b &amp;&amp; c &gt; d`"
    assert markdown_to_mrkdwn("`` a ` tick ``") == "`a ` tick`"


def test_fenced_code_blocks_keep_fences_drop_language_and_convert_nothing() -> None:
    source = "Intro **b**\n```python\nx = '**no**'  # _no_\nif a < b: pass\n- not a bullet\n# not a heading\n```\nAfter"
    assert markdown_to_mrkdwn(source) == (
        "Intro *b*\n```\nx = '**no**'  # _no_\nif a &lt; b: pass\n- not a bullet\n# not a heading\n```\nAfter"
    )


def test_tilde_indented_and_unclosed_fences() -> None:
    assert markdown_to_mrkdwn("~~~\ncode *x*\n~~~") == "```\ncode *x*\n```"
    assert markdown_to_mrkdwn("1. step\n   ```sh\n   make test\n     indented\n   ```") == (
        "1. step\n```\nmake test\n  indented\n```"
    )
    assert markdown_to_mrkdwn("```\nnever closed **x**") == "```\nnever closed **x**\n```"


def test_escaping_and_slack_sequences_show_as_text() -> None:
    assert markdown_to_mrkdwn("a < b > c & d") == "a &lt; b &gt; c &amp; d"
    mentions = "Hi <@U123> in <#C123|general>, <!here> <!channel> <!subteam^S12|@eng> <!date^1392734382^{date}|Feb 18>"
    assert markdown_to_mrkdwn(mentions) == mentions.replace("<", "&lt;").replace(">", "&gt;")
    assert markdown_to_mrkdwn("<b>html</b> <!-- c -->") == "&lt;b&gt;html&lt;/b&gt; &lt;!-- c --&gt;"
    assert markdown_to_mrkdwn("line<br>next") == "line\nnext"


@pytest.mark.parametrize(
    ("markdown", "mrkdwn"),
    [
        ("See [the docs](https://example.com/a?b=1&c=2).", "See the docs (https://example.com/a?b=1&amp;c=2)."),
        ("[Foo](https://en.wikipedia.org/wiki/Foo_(bar)) x", "Foo (https://en.wikipedia.org/wiki/Foo_(bar)) x"),
        ('[t](https://x.io/p "Title")', "t (https://x.io/p)"),
        ("[t](<https://x.io/a b|c>)", "t (https://x.io/a%20b%7Cc)"),
        ("[**Setup** & run](https://x.io)", "*Setup* &amp; run (https://x.io)"),
        ("[a > b](https://x.io)", "a &gt; b (https://x.io)"),
        ("![diagram](https://x.io/d.png)", "diagram (https://x.io/d.png)"),
        ("[https://x.io](https://x.io)", "https://x.io"),
        ("[](https://x.io)", "https://x.io"),
        ("[setup](docs/setup.md)", "setup (`docs/setup.md`)"),
        ("<https://example.com/raw>", "https://example.com/raw"),
        ("<https://example.com|already slack>", "&lt;https://example.com|already slack&gt;"),
        ("[not a link] (x)", "[not a link] (x)"),
        ("[`code` label](https://x.io)", "`code` label (https://x.io)"),
        ("[a [b] c](https://x.io) and [d](https://y.io)", "a [b] c (https://x.io) and d (https://y.io)"),
        ("[`]` odd](https://x.io)", "`]` odd (https://x.io)"),
        ("[unclosed](https://x.io", "[unclosed](https://x.io"),
    ],
)
def test_links_show_their_urls(markdown: str, mrkdwn: str) -> None:
    """A link the model writes is never ``<url|label>``: what a reader clicks is what they read."""
    assert markdown_to_mrkdwn(markdown) == mrkdwn


def test_degenerate_input_converts_in_linear_time() -> None:
    # LLMs sometimes loop on one token; a quadratic parser would take minutes on these.
    started = time.monotonic()
    for text in ("[" * 40_000, "[a](" * 10_000, "*a " * 13_000, "_a *b " * 6_000, "``a`" * 10_000, "<" * 40_000):
        messages = answer_blocks(AnswerView(text=text))
        assert all(len(m) <= MAX_BLOCKS for m in messages)
    assert time.monotonic() - started < 10


def test_headings_become_bold_lines() -> None:
    source = "# One\n## Two ##\n### **Three** _x_\n###### Six\n#hashtag\n####### seven"
    assert markdown_to_mrkdwn(source) == "*One*\n*Two*\n*Three _x_*\n*Six*\n#hashtag\n####### seven"


def test_lists_quotes_and_rules() -> None:
    source = "- one\n* two **b**\n+ three\n  - nested\n1. first\n2) second\n- [ ] todo\n- [x] done\n> quoted *it*\n---"
    assert markdown_to_mrkdwn(source) == (
        "• one\n• two *b*\n• three\n  • nested\n1. first\n2. second\n• ☐ todo\n• ☑ done\n> quoted _it_\n──────────"
    )


def test_nested_quotes_keep_their_depth_however_deep() -> None:
    """Each level of "> > x" was converted by a call within a call: ~1,000 levels (from a model's
    answer or a docs page shown in Slack) raised RecursionError instead of rendering."""
    assert markdown_to_mrkdwn("> > quoted **b**\n>> two\n> >\n>\n> # Title\n> - item") == (
        "> > quoted *b*\n> two\n> >\n>\n> *Title*\n> • item"
    )
    deep = "> " * 5000
    assert markdown_to_mrkdwn(deep + "x") == deep + "x"
    assert markdown_to_mrkdwn(deep) == "> " * 4999 + ">"


def test_tables_become_aligned_code_blocks() -> None:
    source = "Limits:\n| Plan | Cost |\n|------|-----:|\n| **Free** | 0 |\n| [Pro](https://x.io) & co | 1000 |\nDone"
    width = len("Pro (https://x.io) & co")
    assert markdown_to_mrkdwn(source) == "\n".join(
        [
            "Limits:",
            "```",
            f"{'Plan'.ljust(width)} | Cost",
            f"{'-' * width}-+-----",
            f"{'Free'.ljust(width)} |    0",
            "Pro (https://x.io) &amp; co | 1000",
            "```",
            "Done",
        ]
    )


def test_line_structure_is_kept() -> None:
    assert markdown_to_mrkdwn("a\r\nb\n\n\nc  ") == "a\nb\n\n\nc"


# ---------------------------------------------------------------------------------------------
# split_for_slack


def test_short_text_is_one_chunk() -> None:
    assert split_for_slack("hello *world*") == ["hello *world*"]
    assert split_for_slack("") == []


def test_prefers_paragraph_then_line_then_word_boundaries() -> None:
    paragraphs = "\n\n".join("p" * 900 for _ in range(6))
    chunks = split_for_slack(paragraphs, limit=2000)
    assert "".join(chunks) == paragraphs
    assert all(c.endswith("\n\n") for c in chunks[:-1])

    lines = "\n".join("l" * 900 for _ in range(6))
    chunks = split_for_slack(lines, limit=2000)
    assert "".join(chunks) == lines
    assert all(c.endswith("\n") for c in chunks[:-1])

    words = " ".join("w" * 9 for _ in range(600))
    chunks = split_for_slack(words, limit=2000)
    assert "".join(chunks) == words
    assert all(c.endswith(" ") and len(c) <= 2000 for c in chunks[:-1])


def test_text_without_any_boundary_is_cut_hard_and_losslessly() -> None:
    text = "x" * 10_000
    chunks = split_for_slack(text)
    assert "".join(chunks) == text
    assert all(len(c) <= SECTION_TEXT_LIMIT for c in chunks)


def test_never_cuts_inside_links_or_entities() -> None:
    link = "<https://example.com/some/long/path?with=query&and=more|a link label with several words>"
    for offset in range(0, 120, 7):
        text = "a" * (1950 + offset) + " " + link + " &amp; " + link + " tail"
        chunks = split_for_slack(text, limit=2000)
        assert "".join(chunks) == text
        for chunk in chunks:
            assert_balanced(chunk)
            assert not re.search(r"&[a-z]*$", chunk) and not re.match(r"^[a-z]*;", chunk)
        assert Counter(LINK.findall("".join(chunks))) == Counter({link: 2})


def test_code_fences_are_closed_and_reopened_across_chunks() -> None:
    code = "\n".join(f"line {i} <x> & y" for i in range(500))
    text = "Before\n```\n" + escape(code) + "\n```\nAfter"
    parts = split_chunks(text, limit=1000)
    assert len(parts) > 5
    assert "".join(p.text for p in parts) == text
    rendered = [p.render() for p in parts]
    for chunk in rendered:
        assert len(chunk) <= 1000
        assert_balanced(chunk)
    assert parts[0].close and not parts[0].reopen
    assert all(p.reopen and p.close for p in parts[1:-1])
    assert parts[-1].reopen and not parts[-1].close
    assert rendered[1].startswith("```\nline ")
    assert rendered[0].endswith("\n```")
    # code lines are kept whole: every cut inside the block falls after a newline
    assert all(p.text.endswith("\n") for p in parts[:-1])


def test_no_empty_code_block_when_a_cut_lands_before_the_closing_fence() -> None:
    body = "c" * 70 + "\n"
    for count in range(10, 16):
        text = "```\n" + body * count + "```\n" + "tail " * 30
        for chunk in split_for_slack(text, limit=400):
            assert "```\n```" not in chunk
            assert_balanced(chunk)


def test_chunk_render_markers() -> None:
    assert Chunk("a\n", reopen=True, close=True).render() == "```\na\n```"
    assert Chunk("a", close=True).render() == "a\n```"
    assert Chunk("a").render() == "a"


def test_limit_must_leave_room_for_fences() -> None:
    with pytest.raises(ValueError, match="limit"):
        split_for_slack("abc", limit=8)


def escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def random_answer(seed: int, size: int = 40_000) -> str:
    """An LLM-ish Markdown answer of exactly ``size`` characters."""
    rng = random.Random(seed)
    words = [
        "penny",
        "budget",
        "**bold**",
        "_it_",
        "`code <x>`",
        "[the docs](https://docs.example.com/setup?a=1&b=2)",
        "Q&A",
        "<@U123>",
        "a<b",
        "snake_case",
    ]
    parts: list[str] = []
    while sum(len(p) for p in parts) < size:
        roll = rng.random()
        if roll < 0.08:
            lines = [f"    call({i}) -> **{i}** <tag> & x" for i in range(rng.randint(1, 150))]
            parts.append("```python\n" + "\n".join(lines) + "\n```\n\n")
        elif roll < 0.12:
            parts.append("## Heading " + str(rng.randint(1, 99)) + "\n")
        elif roll < 0.16:
            parts.append("| a | b |\n|---|---|\n| 1 | **2** |\n\n")
        elif roll < 0.22:
            parts.append(" ".join(rng.choice(words) for _ in range(rng.randint(300, 800))) + "\n\n")
        elif roll < 0.4:
            parts.append("".join(f"- item {rng.choice(words)}\n" for _ in range(rng.randint(1, 8))) + "\n")
        else:
            sentence = " ".join(rng.choice(words) for _ in range(rng.randint(5, 90)))
            parts.append(sentence + ("\n\n" if rng.random() < 0.6 else "\n"))
    text = "".join(parts)[:size]
    return text.rsplit(" ", 1)[0]  # do not end inside a construct


@pytest.mark.parametrize("seed", range(6))
def test_forty_thousand_character_answer(seed: int) -> None:
    markdown = random_answer(seed)
    assert len(markdown) > 39_000
    mrkdwn = markdown_to_mrkdwn(markdown)
    parts = split_chunks(mrkdwn)
    assert "".join(p.text for p in parts) == mrkdwn  # no text lost
    for part in parts:
        chunk = part.render()
        assert len(chunk) <= SECTION_TEXT_LIMIT
        assert_balanced(chunk)  # fences balanced, links whole
    assert Counter(LINK.findall("".join(p.render() for p in parts))) == Counter(LINK.findall(mrkdwn))

    view = AnswerView(
        text=markdown,
        citations=[Citation(1, "Setup", "Install", "https://docs.example.com/setup", "docs/setup.md")],
        footer="gpt-4o-mini · 9,000 tokens · $0.0041",
        entry_id="e-42",
    )
    messages = answer_blocks(view)
    assert len(messages) > 1
    for message in messages:
        assert_valid_blocks(message)
    body = [text for message in messages for text in sections(message) if not text.startswith("*Sources*")]
    assert body == [p.render().strip("\n") for p in parts if p.text.strip()]


# ---------------------------------------------------------------------------------------------
# answer_blocks


def block_types(blocks: list[Block]) -> list[str]:
    return [b["type"] for b in blocks]


def test_short_answer_is_one_message_with_sources_footer_and_buttons() -> None:
    view = AnswerView(
        text="Use **penny** with `--dry-run`.",
        citations=[
            (2, "Runbook", "", None, "docs/runbook.md"),
            Citation(1, "Setup & install", "Tokens", "https://docs.example.com/setup", "docs/setup.md"),
        ],
        footer="gpt-4o-mini · 812 tokens · $0.0004",
        entry_id="entry-7",
    )
    [message] = answer_blocks(view)
    assert_valid_blocks(message)
    assert block_types(message) == ["section", "section", "context", "context_actions"]
    assert message[0]["text"] == {"type": "mrkdwn", "text": "Use *penny* with `--dry-run`."}
    assert message[1]["text"]["text"] == (
        "*Sources*\n<https://docs.example.com/setup|[1] Setup &amp; install › Tokens>\n[2] Runbook · `docs/runbook.md`"
    )
    assert message[2]["elements"] == [{"type": "mrkdwn", "text": "gpt-4o-mini · 812 tokens · $0.0004"}]
    [feedback] = message[3]["elements"]  # Slack's native feedback buttons: one action, the value says which
    assert (feedback["type"], feedback["action_id"]) == ("feedback_buttons", ACTION_FEEDBACK)
    buttons = [feedback["positive_button"], feedback["negative_button"]]
    assert [b["value"] for b in buttons] == ["up:entry-7", "down:entry-7"]
    assert [b["text"]["text"] for b in buttons] == ["👍", "👎"]


def test_cached_answer_without_entry_id_or_citations() -> None:
    [message] = answer_blocks(AnswerView(text="Cached.", footer="$0", cached=True))
    assert block_types(message) == ["section", "context"]
    assert message[1]["elements"][0]["text"] == ":zap: cached answer · $0"
    [bare] = answer_blocks(AnswerView(text="Just text."))
    assert block_types(bare) == ["section"]


def test_citation_urls_with_pipes_and_titles_with_brackets_stay_one_link() -> None:
    view = AnswerView(text="x", citations=[(1, "A <b> | c", "S", "https://x.io/a|b c", "p.md")])
    text = answer_blocks(view)[0][1]["text"]["text"]
    assert text == "*Sources*\n<https://x.io/a%7Cb%20c|[1] A &lt;b&gt; | c › S>"
    assert_balanced(text)


def test_citations_without_url_title_or_section() -> None:
    view = AnswerView(
        text="x",
        citations=[(1, "", "Intro", None, "docs/a.md"), (2, "B", "", None, ""), (3, "C", "S", "", "docs/c.md")],
    )
    assert answer_blocks(view)[0][1]["text"]["text"] == (
        "*Sources*\n[1] docs/a.md › Intro\n[2] B\n[3] C › S · `docs/c.md`"
    )


def test_only_the_last_message_carries_sources_footer_and_buttons() -> None:
    view = AnswerView(
        text="\n\n".join(f"Paragraph {i}: " + "word " * 500 for i in range(12)),
        citations=[(1, "Doc", "Sec", "https://x.io", "d.md")],
        footer="footer",
        entry_id="e1",
    )
    messages = answer_blocks(view)
    assert len(messages) >= 3
    for message in messages[:-1]:
        assert set(block_types(message)) == {"section"}
        assert not any("*Sources*" in t for t in sections(message))
        assert_valid_blocks(message)
    assert block_types(messages[-1])[-3:] == ["section", "context", "context_actions"]
    assert sections(messages[-1])[-1].startswith("*Sources*")
    assert sections(messages[-1])[0].startswith("Paragraph")  # the tail does not travel alone


def test_many_citations_are_capped() -> None:
    citations = [(i, f"Doc {i}", "", f"https://x.io/{i}", f"d{i}.md") for i in range(1, 31)]
    [message] = answer_blocks(AnswerView(text="x", citations=citations))
    sources = message[1]["text"]["text"]
    assert sources.count("<https://x.io/") == MAX_SOURCES
    assert sources.endswith(f"…and {30 - MAX_SOURCES} more")


def test_empty_answer_still_renders() -> None:
    [message] = answer_blocks(AnswerView(text="", entry_id="e"))
    assert block_types(message) == ["context_actions"]
    assert answer_blocks(AnswerView(text="  ")) == [
        [{"type": "section", "text": {"type": "mrkdwn", "text": "_(empty answer)_"}}]
    ]


def test_entry_id_longer_than_a_button_value_is_refused() -> None:
    with pytest.raises(ValueError, match="entry_id"):
        answer_blocks(AnswerView(text="x", entry_id="e" * 2001))


# ---------------------------------------------------------------------------------------------
# refusals and fallback text


@pytest.mark.parametrize(
    ("kind", "heading"),
    [
        ("rate_limited", ":hourglass_flowing_sand: *Slow down a little*"),
        ("over_budget", ":money_with_wings: *The budget is used up*"),
        ("breaker_open", ":construction: *The AI service is having trouble*"),
        ("upstream_error", ":warning: *Penny couldn't get an answer*"),
        ("no_match", ":mag: *No docs match your question*"),
        ("something_new", ":warning: *Penny can't answer right now*"),
    ],
)
def test_refusal_blocks(kind: str, heading: str) -> None:
    blocks = refusal_blocks(
        kind,
        "Try again in 12s <soon> & relax.",
        [("Budgets & limits", "https://docs.example.com/budgets"), ("Runbook", "docs/runbook.md")],
    )
    assert_valid_blocks(blocks)
    assert sections(blocks) == [
        f"{heading}\nTry again in 12s &lt;soon&gt; &amp; relax.",
        "*Closest docs*\n• <https://docs.example.com/budgets|Budgets &amp; limits>\n• Runbook · `docs/runbook.md`",
    ]


def test_refusal_without_links_and_with_too_many() -> None:
    assert len(refusal_blocks("no_match", "Nothing found.", [])) == 1
    many = [(f"Doc {i}", f"https://x.io/{i}") for i in range(25)]
    text = sections(refusal_blocks("no_match", "Nothing found.", many))[1]
    assert text.count("• ") == 10


def test_fallback_text_converts_and_truncates_cleanly() -> None:
    assert fallback_text("**Hi** [docs](https://x.io)") == "*Hi* docs (https://x.io)"
    link = "[the docs](https://docs.example.com/page)"
    long_answer = " ".join([link] * 3000) + "\n```\n" + "code\n" * 3000 + "```"
    text = fallback_text(long_answer)
    assert len(text) <= MESSAGE_TEXT_LIMIT
    assert text.endswith("(truncated; the full text is in the message)")
    assert_balanced(text)
    short = fallback_text("word " * 100, limit=200)
    assert len(short) <= 200 and short.startswith("word word")


def test_message_text_joins_sections() -> None:
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": "one"}},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": "footer"}]},
        {"type": "section", "text": {"type": "mrkdwn", "text": "two"}},
    ]
    assert message_text(blocks) == "one\n\ntwo"
