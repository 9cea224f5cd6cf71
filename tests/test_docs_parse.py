"""bot.docs.parse: headings per format, anchors and paths, chunk sizes and overlap, hashes, walking."""

from __future__ import annotations

import hashlib
import itertools
import os
import random
import sys
from pathlib import Path

import pytest
import structlog

from bot.docs import (
    MAX_FILE_BYTES,
    Document,
    Passage,
    chunk,
    parse_document,
    passage_hash,
    slugify,
    walk,
)
from bot.docs.parse import read_source
from proxy_core.tokens import estimate_text_tokens
from tests.pdf_builder import make_pdf

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "docs"


def parse(tmp_path: Path, name: str, content: str | bytes) -> Document:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    return parse_document(path, tmp_path)


def paths(doc: Document) -> list[tuple[str, ...]]:
    return [section.heading_path for section in doc.sections]


def body(doc: Document, heading: str) -> str:
    return next(section.text for section in doc.sections if section.heading_path[-1] == heading)


def assert_offsets(doc: Document, passages: list[Passage] | None = None) -> None:
    for section in doc.sections:
        assert doc.text[section.char_start : section.char_end] == section.text
    for index, passage in enumerate(passages or []):
        assert passage.index == index
        assert doc.text[passage.char_start : passage.char_end] == passage.text
        assert passage.text == passage.text.strip() and passage.text


# --------------------------------------------------------------------------------------------
# Markdown

MARKDOWN = """\
---
title: Front matter title
tags: [money]
---
# Expenses

Intro with a [link](https://example.com/policy) and **bold**, *emphasis* and `inline code`.

## Meals

Up to €40 a day.

```python
# not a heading
x = 1  # comment
```

~~~
## not a heading either
~~~

### Dinner ##

Receipts needed.

Travel
------

Setext level two.

    # indented code, not a heading

#hashtag is not a heading either

Appendix
========

Setext level one.
"""


def test_markdown_headings_paths_and_code_fences(tmp_path: Path) -> None:
    doc = parse(tmp_path, "policies/expenses.md", MARKDOWN)
    assert doc.doc_path == "policies/expenses.md"
    assert doc.title == "Expenses"  # the first H1 beats the front matter
    assert paths(doc) == [
        ("Expenses",),
        ("Expenses", "Meals"),
        ("Expenses", "Meals", "Dinner"),
        ("Expenses", "Travel"),
        ("Expenses", "Appendix"),  # a second H1 still hangs under the page title
    ]
    assert [s.anchor for s in doc.sections] == ["expenses", "meals", "dinner", "travel", "appendix"]
    meals = body(doc, "Meals")
    assert "```python\n# not a heading\nx = 1  # comment\n```" in meals
    assert "~~~\n## not a heading either\n~~~" in meals
    travel = body(doc, "Travel")
    assert "    # indented code, not a heading" in travel
    assert "#hashtag is not a heading either" in travel
    assert "title:" not in doc.text and "tags:" not in doc.text
    assert_offsets(doc)


def test_markdown_inline_markup_becomes_text_but_keeps_urls(tmp_path: Path) -> None:
    doc = parse(
        tmp_path,
        "a.md",
        "# A\n\n"
        "See [the policy](https://example.com/a_b_c) and [the\nform][form], [Meals](#meals), <https://x.example/y>.\n"
        "![diagram](img/d.png) <kbd>Ctrl</kbd>+<kbd>C</kbd> &amp; &lt;tag&gt; \\*not emphasis\\* ~~old~~ __strong__\n"
        "- [ ] a task\n"
        "- item with `*args` and snake_case_name\n\n"
        "| Plan | Price |\n|------|------:|\n| Team | $10 |\n\n"
        "---\n\n"
        "[form]: https://forms.example/expense\n",
    )
    text = doc.sections[0].text
    assert "See the policy (https://example.com/a_b_c) and the\nform (https://forms.example/expense), Meals," in text
    assert "https://x.example/y." in text
    assert "diagram Ctrl+C & <tag> *not emphasis* old strong" in text
    assert "- [ ] a task\n- item with `*args` and snake_case_name" in text
    assert "| Plan | Price |\n| Team | $10 |" in text  # the alignment row is dropped
    assert "---" not in text and "[form]:" not in text


@pytest.mark.parametrize(
    ("markdown", "text"),
    [
        # The example docs' paragraph: "<name>" is an HTML tag (dropped), and it closes the emphasis.
        ("under *Services → <name>* with p95. The *SLOs* dashboard", "under Services →  with p95. The SLOs dashboard"),
        ("a *stray star and *SLOs* here", "a *stray star and SLOs here"),
        ("a _stray and _SLOs_ here", "a _stray and SLOs here"),
        ("a **stray and **SLOs** here", "a **stray and SLOs here"),
        ("*SLOs* and *APIs*, **SLOs**, __APIs__, *x*", "SLOs and APIs, SLOs, APIs, x"),
        ("2 * 3 * 4 and *SLOs*", "2 * 3 * 4 and SLOs"),
        ("*italic with <b>bold</b>*", "italic with bold"),
    ],
)
def test_markdown_emphasis_pairs_with_the_nearest_opener(tmp_path: Path, markdown: str, text: str) -> None:
    assert parse(tmp_path, "a.md", f"# A\n\n{markdown}\n").sections[0].text == text


def test_markdown_heading_details(tmp_path: Path) -> None:
    doc = parse(
        tmp_path,
        "travel-policy.md",
        "## Use `tw deploy` *now* #\n\nA.\n\n## [Linked](x.md) heading {#custom-id}\n\nB.\n\n"
        "## Use tw deploy now\n\nC.\n\n#\n\nD.\n",
    )
    assert doc.title == "Travel policy"  # no H1: from the file name
    assert paths(doc) == [
        ("Travel policy", "Use tw deploy now"),
        ("Travel policy", "Linked heading"),
        ("Travel policy", "Use tw deploy now"),
    ]
    assert [s.anchor for s in doc.sections] == ["use-tw-deploy-now", "custom-id", "use-tw-deploy-now-1"]
    assert body(doc, "Linked heading") == "B."


def test_markdown_setext_needs_a_paragraph_and_front_matter_title(tmp_path: Path) -> None:
    doc = parse(tmp_path, "x.md", '---\ntitle: "Handbook"\n---\nIntro.\n\n---\n\n- item\n---\n\nMore.\n')
    assert doc.title == "Handbook"  # no H1: the front matter's title
    assert paths(doc) == [("Handbook",)]  # neither `---` after a blank line nor under a list item is a heading
    assert doc.sections[0].anchor == ""
    assert doc.sections[0].text == "Intro.\n\n- item\n\nMore."


def test_unclosed_fence_runs_to_the_end(tmp_path: Path) -> None:
    doc = parse(tmp_path, "x.md", "# T\n\n```\n# inside\n\n## still inside\n")
    assert paths(doc) == [("T",)]
    assert "## still inside" in doc.sections[0].text


# Code and HTML comments, read the CommonMark way by every pass over a Markdown file: the headings,
# the link reference definitions and each section's body. "See [x]." resolves only if "[x]: …" is
# read as a definition, outside code and comments.
_SEE_X = "See [x].\n\n[x]: https://x.example\n"


@pytest.mark.parametrize(
    "code",
    [
        "````\n```\n## inside\n````",  # a shorter fence does not close a longer one
        "```\n~~~\n## inside\n```",  # nor does the other character
        "~~~\n```\n## inside\n~~~",
        "```\n``` sh\n## inside\n```",  # nor a fence with an info string
        "```\n    ```\n## inside\n```",  # nor one indented four spaces (that line is code)
        "```\n<!--\n## inside\n```",  # "<!--" in code opens no comment
    ],
)
def test_markdown_fenced_code_ends_only_at_its_own_closing_fence(tmp_path: Path, code: str) -> None:
    doc = parse(tmp_path, "x.md", f"# T\n\n{code}\n\n## After\n\n{_SEE_X}")
    assert paths(doc) == [("T",), ("T", "After")]
    assert f"{code}" in body(doc, "T")
    assert body(doc, "After") == "See x (https://x.example)."


@pytest.mark.parametrize(
    "code",
    [
        "```\n[x]: https://code.example\n```",
        "~~~\n```\n[x]: https://code.example\n~~~",
        "````\n[x]: https://code.example\n`````",
    ],
)
def test_markdown_a_link_reference_definition_in_code_is_not_one(tmp_path: Path, code: str) -> None:
    doc = parse(tmp_path, "x.md", f"# T\n\n{code}\n\nSee [x].\n")
    assert "See [x]." in doc.sections[0].text
    assert "[x]: https://code.example" in doc.sections[0].text  # kept verbatim, as code


def test_markdown_inline_code_of_three_backticks_opens_no_fence(tmp_path: Path) -> None:
    # "```a`b```" is inline code (a backtick fence's info string holds no backtick): every pass
    # reads on, so the definition after it still counts.
    doc = parse(tmp_path, "x.md", f"# T\n\n```a`b```\n\n## After\n\n{_SEE_X}")
    assert paths(doc) == [("T",), ("T", "After")]
    assert body(doc, "After") == "See x (https://x.example)."


def test_markdown_a_fence_inside_an_html_comment_opens_nothing(tmp_path: Path) -> None:
    doc = parse(tmp_path, "x.md", f"# T\n\nText.\n\n<!--\n```\n## hidden\n-->\n\n## After\n\n{_SEE_X}")
    assert paths(doc) == [("T",), ("T", "After")]
    assert "hidden" not in doc.text and "```" not in doc.text
    assert body(doc, "After") == "See x (https://x.example)."


def test_markdown_a_link_reference_definition_in_an_html_comment_is_not_one(tmp_path: Path) -> None:
    doc = parse(tmp_path, "x.md", "# T\n\n<!--\n[x]: https://hidden.example\n-->\n\nSee [x].\n")
    assert doc.sections[0].text == "See [x]."


def test_markdown_an_unclosed_html_comment_runs_to_the_end(tmp_path: Path) -> None:
    doc = parse(tmp_path, "x.md", "# T\n\nText.\n\n<!--\n## hidden\n\n[x]: https://hidden.example\n")
    assert paths(doc) == [("T",)]
    assert doc.sections[0].text == "Text."


@pytest.mark.parametrize("indent", ["    ", "\t"])
def test_markdown_a_fence_indented_four_columns_is_indented_code(tmp_path: Path, indent: str) -> None:
    # At the top level a line indented four columns is indented code, "```" or "<!--" included: it
    # opens neither a fence nor a comment that would swallow the rest of the file.
    for code in ("```", "<!-- not a comment"):
        doc = parse(tmp_path, "x.md", f"# T\n\nText.\n\n{indent}{code}\n\n## After\n\n{_SEE_X}")
        assert paths(doc) == [("T",), ("T", "After")]
        assert f"{indent}{code}" in body(doc, "T")
        assert body(doc, "After") == "See x (https://x.example)."


@pytest.mark.parametrize("item", ["1. Run:", "- Run:", "1. Run:\n"])
def test_markdown_a_fence_in_a_list_item_may_be_indented_four_spaces(tmp_path: Path, item: str) -> None:
    # Relative to the item's text that is fewer than four columns: still a fence (CommonMark).
    code = "    ```sh\n    make\n\n    # a shell comment\n    ```"
    doc = parse(tmp_path, "x.md", f"# T\n\n{item}\n{code}\n\n## After\n\n{_SEE_X}")
    assert paths(doc) == [("T",), ("T", "After")]
    assert code in body(doc, "T")
    assert body(doc, "After") == "See x (https://x.example)."


# --------------------------------------------------------------------------------------------
# reStructuredText

RST = """\
.. _top:

===============
 Travel policy
===============

Intro paragraph with a `link <https://travel.example>`_, ``literal``, :ref:`Meals <meals-label>`
and *emphasis*.

.. toctree::
   :maxdepth: 2

   flights

.. This is a comment
   spanning two lines.

Booking
=======

.. note:: Book early.

   Prices rise.

Example::

    tw book --from BER --to YYZ

.. code-block:: python
   :linenos:

   # a comment, not a title
   print("hi")

.. image:: map.png
   :alt: Map

Hotels
------

Caps apply.

Per diems
~~~~~~~~~

Rates.

Visas
=====

Ask People.
"""


def test_rst_titles_levels_and_overline(tmp_path: Path) -> None:
    doc = parse(tmp_path, "travel.rst", RST)
    assert doc.title == "Travel policy"
    assert paths(doc) == [
        ("Travel policy",),
        ("Travel policy", "Booking"),
        ("Travel policy", "Booking", "Hotels"),
        ("Travel policy", "Booking", "Hotels", "Per diems"),
        ("Travel policy", "Visas"),
    ]
    assert [s.anchor for s in doc.sections] == ["travel-policy", "booking", "hotels", "per-diems", "visas"]
    assert_offsets(doc)


def test_rst_directives_and_inline_markup(tmp_path: Path) -> None:
    doc = parse(tmp_path, "travel.rst", RST)
    intro = doc.sections[0].text
    assert intro == (
        "Intro paragraph with a link (https://travel.example), `literal`, Meals\nand emphasis."
    )  # the target, the toctree and the comment are gone
    booking = body(doc, "Booking")
    assert "Note: Book early.\n\nPrices rise." in booking
    assert "Example:\n\n```\ntw book --from BER --to YYZ\n```" in booking
    assert '```python\n# a comment, not a title\nprint("hi")\n```' in booking
    assert "linenos" not in booking and "map.png" not in booking


def test_rst_short_underline_and_transition(tmp_path: Path) -> None:
    doc = parse(tmp_path, "x.rst", "Title\n=====\n\nA long line of text\n--\n\nText.\n\n----------\n\nMore.\n")
    assert paths(doc) == [("Title",)]
    assert doc.sections[0].text == "A long line of text\n--\n\nText.\n\nMore."


# --------------------------------------------------------------------------------------------
# HTML

HTML = """\
<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Offices – Handbook</title>
<style>h2 { color: red }</style><script>var x = "<h2>not a heading</h2>";</script></head>
<body>
<nav><h2>Menu</h2><ul><li><a href="/">Home</a></li></ul></nav>
<h1>Offices</h1>
<p>Our offices &amp; <em>hubs</em>,&nbsp;with <a href="https://maps.example/b">maps</a>
and an <a href="#berlin">in-page link</a>.</p>
<h2 id="berlin-office">Berlin <span>office</span> &amp; <code>HQ</code></h2>
<ul><li>Desks: 40</li><li>Opening hours
 <ul><li>weekdays</li></ul></li></ul>
<ol><li>First</li><li>Second</li></ol>
<pre><code>make   dev
  # indented, kept
</code></pre>
<table><tr><th>City</th><th>Cap</th></tr><tr><td>Berlin</td><td>&euro;150</td></tr></table>
<h3>Parking<a class="headerlink" href="#parking-spots" title="Permalink">¶</a></h3>
<p>Two spots.</p>
<h2>Toronto</h2>
<div>Downtown.<br>Near Union.</div>
</body></html>
"""


def test_html_headings_nesting_entities_and_dropped_elements(tmp_path: Path) -> None:
    doc = parse(tmp_path, "offices.html", HTML)
    assert doc.title == "Offices"  # the h1 beats <title>
    assert paths(doc) == [
        ("Offices",),
        ("Offices", "Berlin office & HQ"),
        ("Offices", "Berlin office & HQ", "Parking"),
        ("Offices", "Toronto"),
    ]
    assert [s.anchor for s in doc.sections] == ["offices", "berlin-office", "parking-spots", "toronto"]
    assert doc.sections[0].text == "Our offices & hubs, with maps (https://maps.example/b) and an in-page link."
    for dropped in ("Menu", "Home", "color", "not a heading", "var x"):
        assert dropped not in doc.text
    berlin = body(doc, "Berlin office & HQ")
    assert berlin == (
        "- Desks: 40\n- Opening hours\n- weekdays\n\n1. First\n2. Second\n\n"
        "```\nmake   dev\n  # indented, kept\n```\n\n"
        "City | Cap\nBerlin | €150"
    )
    assert body(doc, "Toronto") == "Downtown.\nNear Union."
    assert_offsets(doc)


def test_html_title_fallback_and_declared_charset(tmp_path: Path) -> None:
    raw = '<html><head><meta charset="iso-8859-1"><title>Caf\xe9 rules</title></head><body><p>Cr\xe8me.</p>'
    doc = parse(tmp_path, "cafe.htm", raw.encode("latin-1"))
    assert doc.title == "Café rules"
    assert doc.sections[0].heading_path == ("Café rules",)
    assert doc.sections[0].text == "Crème."


def test_html_unclosed_heading_does_not_swallow_the_page(tmp_path: Path) -> None:
    doc = parse(tmp_path, "x.html", "<h1>Title<p>Body text.</p><h2></h2><p>More.</p>")
    assert doc.title == "Title"
    assert paths(doc) == [("Title",)]  # the empty h2 is no heading
    assert doc.sections[0].text == "Body text.\n\nMore."


def test_html_unclosed_heading_ends_at_a_block_after_its_words(tmp_path: Path) -> None:
    """An <h1> never closed, then the page in <div>s: the whole page became the title, and with
    no body the file was indexed with no passages at all."""
    doc = parse(tmp_path, "x.html", "<h1>Runbook<div>Restart the worker.</div>" + "<div>Then check it.</div>" * 3)
    assert doc.title == "Runbook"
    assert paths(doc) == [("Runbook",)]
    assert doc.sections[0].text == "Restart the worker.\n\n" + "\n\n".join(["Then check it."] * 3)
    wrapped = parse(tmp_path, "y.html", "<h1><div>Runbook</div></h1><p>Body.</p>")  # a block around a title
    assert paths(wrapped) == [("Runbook",)] and wrapped.sections[0].text == "Body."


def test_html_text_too_long_for_a_heading_is_body_text(tmp_path: Path) -> None:
    words = " ".join(["restart"] * 80)
    doc = parse(tmp_path, "x.html", f"<title>Ops</title><h2>{words}<br>and more")
    assert doc.title == "Ops"
    assert paths(doc) == [("Ops",)]  # a page's text before any heading is under its title
    assert doc.sections[0].text == f"{words} and more"
    assert chunk(doc)


def test_html_a_stray_marked_section_is_a_bogus_comment_not_a_lost_page(tmp_path: Path) -> None:
    """``<![`` not opening a CDATA or conditional section made Python's parser raise
    ("expected name token"), and the whole page was skipped (``parse_failed``). A browser reads
    any ``<![`` as a bogus comment up to the next ``>``, CDATA too."""
    page = "<h1>Arrays</h1><p>Write <![ x ]> or <![if-x]> or <![1]> here; <![if !IE]>kept<![endif]>.</p>"
    doc = parse(tmp_path, "a.html", page)
    assert doc.title == "Arrays"
    assert doc.sections[0].text == "Write or or here; kept."


_OVERLONG = "&#" + "9" * 5000 + ";"
_CAP = f"The cap is {_OVERLONG} a day, &#x10FFFF0; or &#0065; &amp; more."


@pytest.mark.parametrize(
    ("name", "page"),
    [("a.md", f"# Limits\n\n{_CAP}\n"), ("a.html", f"<h1>Limits</h1><p title='{_OVERLONG}'>{_CAP}")],
)
def test_a_character_reference_thousands_of_digits_long_is_a_replacement_character(
    tmp_path: Path, name: str, page: str
) -> None:
    """It skipped the whole page, logged as "not_indexable: Exceeds the limit (4300 digits) for
    integer string conversion"; like any reference past the last character, it reads as U+FFFD."""
    doc = parse(tmp_path, name, page)
    assert doc.title == "Limits"
    assert doc.sections[0].text == "The cap is \ufffd a day, \ufffd or A & more."


# --------------------------------------------------------------------------------------------
# Plain text


def test_txt_heading_heuristics(tmp_path: Path) -> None:
    doc = parse(
        tmp_path,
        "notes/onboarding.txt",
        "ONBOARDING GUIDE\n\nWelcome aboard.\n\nFirst Week Plan\n\nMeet your buddy.\n\n"
        "Equipment:\n\nA laptop.\n\nthis short line is lowercase\n\nNot a heading.\n\nSo is this sentence.\n\n"
        "Another Title Case Line\nwith a second line right after it.\n\nEnd of the Day\n\nGo home.\n",
    )
    assert doc.title == "ONBOARDING GUIDE"  # a heading on the first line is the title
    assert paths(doc) == [
        ("ONBOARDING GUIDE",),
        ("ONBOARDING GUIDE", "First Week Plan"),
        ("ONBOARDING GUIDE", "First Week Plan", "Equipment"),  # the second style seen nests
        ("ONBOARDING GUIDE", "End of the Day"),  # Title Case again: back to the first style's level
    ]
    equipment = body(doc, "Equipment")
    assert "this short line is lowercase" in equipment and "So is this sentence." in equipment
    assert "Another Title Case Line\nwith a second line" in equipment
    assert [s.anchor for s in doc.sections][1:] == ["first-week-plan", "equipment", "end-of-the-day"]


def test_txt_underlined_headings_win_and_paragraphs_are_dedented(tmp_path: Path) -> None:
    doc = parse(
        tmp_path,
        "probation.txt",
        "Probation\n=========\n\nIntro.\n\nCheck-ins\n---------\n\nYour manager schedules these:\n\n"
        "  Day 30    How is it going?\n  Day 60    Concerns.\n",
    )
    assert paths(doc) == [("Probation",), ("Probation", "Check-ins")]  # the lead-in line is not a heading
    assert body(doc, "Check-ins") == "Your manager schedules these:\n\nDay 30    How is it going?\nDay 60    Concerns."


def test_txt_without_headings_is_one_section(tmp_path: Path) -> None:
    doc = parse(tmp_path, "team/README.txt", "just some notes\nabout the team.\n\nand more notes.\n")
    assert doc.title == "Team"  # a README is named after its folder
    assert paths(doc) == [("Team",)]
    assert doc.sections[0].text == "just some notes\nabout the team.\n\nand more notes."


# --------------------------------------------------------------------------------------------
# Encodings, hashes, anchors


def test_non_utf8_is_read_as_windows_1252_and_odd_bytes_never_crash_and_binary_is_refused(tmp_path: Path) -> None:
    latin = parse(tmp_path, "latin.md", "# Caf\xe9\n\nCr\xe8me br\xfbl\xe9e \u2013 \u20ac5.\n".encode("cp1252"))
    assert latin.title == "Caf\xe9"
    assert "Cr\xe8me br\xfbl\xe9e \u2013 \u20ac5." in latin.sections[0].text
    utf16 = parse(tmp_path, "wide.txt", "Hello There\n\nWide text.\n".encode("utf-16"))
    assert utf16.title == "Hello There" and utf16.sections[0].text == "Wide text."
    bom = parse(tmp_path, "bom.rst", b"\xef\xbb\xbfTitle\n=====\n\nBody\r\nline two\rthree\x00\x07.\n")
    assert bom.title == "Title" and bom.sections[0].text == "Body\nline two\nthree."
    junk = bytes(random.Random(7).randrange(1, 256) for _ in range(5000))  # no NUL: maybe text
    for name in ("junk.md", "junk.rst", "junk.html", "junk.txt"):
        doc = parse(tmp_path, name, junk)
        assert_offsets(doc, chunk(doc))
    with pytest.raises(ValueError, match="not a text file"):  # an image or an archive named .md
        parse(tmp_path, "image.md", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + junk)


def test_content_hashes_are_stable_and_follow_changes(tmp_path: Path) -> None:
    source = "# Expenses\n\nIntro text for the page.\n\n## Meals\n\nUp to 40 a day.\n\n## Hotels\n\nUp to 150.\n"
    first, again = parse(tmp_path, "a.md", source), parse(tmp_path, "a.md", source)
    assert first.content_hash == again.content_hash == hashlib.sha256(source.encode()).hexdigest()
    before, same = chunk(first, min_tokens=0), chunk(again, min_tokens=0)
    assert [p.content_hash for p in before] == [p.content_hash for p in same]
    assert len({p.content_hash for p in before}) == len(before) == 3

    changed = parse(tmp_path, "a.md", source.replace("Up to 40", "Up to 45"))
    after = chunk(changed, min_tokens=0)
    assert changed.content_hash != first.content_hash
    assert [b.content_hash == a.content_hash for b, a in zip(before, after, strict=True)] == [True, False, True]

    moved = chunk(parse(tmp_path, "b.md", source), min_tokens=0)
    assert all(m.content_hash != b.content_hash for m, b in zip(moved, before, strict=True))
    assert passage_hash("a.md", ("A", "B"), "t") != passage_hash("a.md", ("A",), "t")
    assert before[1].content_hash == passage_hash("a.md", ("Expenses", "Meals"), "Up to 40 a day.")


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("Meals & Drinks!", "meals--drinks"),
        ("Café au lait", "café-au-lait"),
        ("API v2.0 (beta)", "api-v20-beta"),
        ("snake_case and kebab-case", "snake_case-and-kebab-case"),
        ("  Trim Me  ", "trim-me"),
    ],
)
def test_slugify_is_github_style(heading: str, anchor: str) -> None:
    assert slugify(heading) == anchor


# --------------------------------------------------------------------------------------------
# Chunking

_WORDS = [
    "the", "policy", "covers", "meals", "travel", "hotels", "receipts", "approval", "manager", "budget", "limit",
    "team", "office", "reimbursement", "within", "days", "and", "of", "for", "to", "a", "is", "are", "with", "by",
    "on",
]  # fmt: skip


def _prose(rng: random.Random, sentences: int) -> str:
    return " ".join(
        " ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 18))).capitalize() + "." for _ in range(sentences)
    )


def _long_markdown(rng: random.Random, paragraphs: int) -> str:
    return "# Handbook\n\n## Long\n\n" + "\n\n".join(_prose(rng, rng.randint(1, 5)) for _ in range(paragraphs)) + "\n"


def assert_split_well(doc: Document, passages: list[Passage], max_tokens: int, overlap_tokens: int) -> None:
    assert_offsets(doc, passages)
    assert all(estimate_text_tokens(p.text) <= max_tokens for p in passages)
    for earlier, later in itertools.pairwise(passages):
        if earlier.heading_path == later.heading_path:
            assert later.char_start > earlier.char_start and later.char_end > earlier.char_end
            assert not doc.text[earlier.char_end : later.char_start].strip()  # nothing skipped but spaces
            if overlap_tokens:
                overlap = doc.text[later.char_start : earlier.char_end]
                assert overlap and estimate_text_tokens(overlap) <= overlap_tokens
    covered = [False] * len(doc.text)
    for passage in passages:
        covered[passage.char_start : passage.char_end] = [True] * (passage.char_end - passage.char_start)
    for section in doc.sections:  # every character of every section is in some passage
        assert all(covered[i] or doc.text[i].isspace() for i in range(section.char_start, section.char_end))


def test_short_sections_are_one_passage_each(tmp_path: Path) -> None:
    doc = parse(tmp_path, "a.md", "# Expenses\n\n" + _prose(random.Random(1), 4) + "\n\n## Meals\n\n"
                + _prose(random.Random(2), 4) + "\n")  # fmt: skip
    passages = chunk(doc)
    assert [p.heading_path for p in passages] == [("Expenses",), ("Expenses", "Meals")]
    assert [p.text for p in passages] == [s.text for s in doc.sections]
    assert passages[1].anchor == "meals" and passages[1].title == "Expenses" and passages[1].doc_path == "a.md"
    assert passages[1].embedding_text() == f"Expenses › Meals\n\n{passages[1].text}"
    assert_offsets(doc, passages)


def test_long_section_splits_at_paragraphs_with_overlap(tmp_path: Path) -> None:
    doc = parse(tmp_path, "a.md", _long_markdown(random.Random(3), 60))
    passages = chunk(doc, max_tokens=200, overlap_tokens=40)
    assert len(passages) > 5
    assert_split_well(doc, passages, 200, 40)
    assert {p.heading_path for p in passages} == {("Handbook", "Long")}
    assert {p.anchor for p in passages} == {"long"}
    # pieces end at paragraph ends, and fill at least half the limit
    assert all(doc.text[p.char_end : p.char_end + 2] in ("\n\n", "") for p in passages)
    assert all(2 * estimate_text_tokens(p.text) >= 200 for p in passages[:-1])
    # the overlap is a real one: close to the requested size, not a word or two
    overlaps = [estimate_text_tokens(doc.text[b.char_start : a.char_end]) for a, b in itertools.pairwise(passages)]
    assert min(overlaps) >= 10 and sum(overlaps) / len(overlaps) >= 20


def test_paragraph_without_breaks_splits_at_sentences_then_words(tmp_path: Path) -> None:
    rng = random.Random(4)
    doc = parse(tmp_path, "a.md", "# T\n\n" + _prose(rng, 80) + "\n")
    passages = chunk(doc, max_tokens=120, overlap_tokens=40)
    assert_split_well(doc, passages, 120, 40)
    assert all(p.text.endswith(".") for p in passages)
    starts = [p.text[0].isupper() for p in passages]
    assert sum(starts) >= 0.8 * len(starts)  # overlaps start at a sentence when one keeps half the overlap

    words = parse(tmp_path, "b.md", "# T\n\n" + " ".join(rng.choice(_WORDS) for _ in range(3000)) + "\n")
    passages = chunk(words, max_tokens=100, overlap_tokens=10)
    assert len(passages) > 10
    assert_split_well(words, passages, 100, 10)


def test_a_giant_word_is_cut_without_breaking_the_limit(tmp_path: Path) -> None:
    doc = parse(tmp_path, "a.txt", "Q4\n\nkey: " + "a1B2c3D4" * 2000 + " end\n")
    passages = chunk(doc, max_tokens=64, overlap_tokens=16)
    assert len(passages) > 50
    assert_offsets(doc, passages)
    assert all(estimate_text_tokens(p.text) <= 64 for p in passages)
    assert passages[-1].text.endswith("end")


def test_zero_overlap_gives_disjoint_pieces(tmp_path: Path) -> None:
    doc = parse(tmp_path, "a.md", _long_markdown(random.Random(5), 40))
    passages = chunk(doc, max_tokens=150, overlap_tokens=0)
    assert_split_well(doc, passages, 150, 0)
    assert all(b.char_start > a.char_end for a, b in itertools.pairwise(passages))


def test_tiny_sections_merge_into_the_previous_passage(tmp_path: Path) -> None:
    rng = random.Random(6)
    long_intro = _prose(rng, 6)
    doc = parse(
        tmp_path,
        "a.md",
        f"# Page\n\nTiny first.\n\n## Big\n\n{long_intro}\n\n## Small\n\nJust this.\n\n### Smaller\n\nAnd this.\n\n"
        f"## Huge\n\n{_prose(rng, 30)}\n\n## Tail\n\nEnd.\n",
    )
    passages = chunk(doc, max_tokens=300, overlap_tokens=30)
    assert_offsets(doc, passages)
    assert passages[0].text == "Tiny first."  # nothing before it to join
    assert passages[1].heading_path == ("Page", "Big")
    assert passages[1].text == f"{long_intro}\n\nSmall\n\nJust this.\n\nSmaller\n\nAnd this."  # headings kept
    huge = [p for p in passages if p.heading_path == ("Page", "Huge")]
    assert len(huge) >= 2  # "Tail" joined the last piece of "Huge" only if that still fits
    tail = passages[-1]
    assert tail.text.endswith("End.")
    assert estimate_text_tokens(tail.text) <= 300

    separate = chunk(doc, max_tokens=300, overlap_tokens=30, min_tokens=0)
    assert [p.heading_path[-1] for p in separate][:5] == ["Page", "Big", "Small", "Smaller", "Huge"]


def test_tiny_section_stays_alone_when_joining_would_overflow(tmp_path: Path) -> None:
    big = _prose(random.Random(8), 12)
    doc = parse(tmp_path, "a.md", f"# P\n\n## Big\n\n{big}\n\n## Small\n\nJust this.\n")
    limit = estimate_text_tokens(big) + 2
    passages = chunk(doc, max_tokens=limit, overlap_tokens=10)
    assert [p.heading_path[-1] for p in passages] == ["Big", "Small"]


@pytest.mark.parametrize("seed", range(6))
def test_random_documents_keep_every_invariant(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    blocks = ["# Random page"]
    for index in range(rng.randint(3, 12)):
        blocks.append("#" * rng.randint(2, 4) + f" Section {index}")
        for _ in range(rng.randint(0, 8)):
            kind = rng.random()
            if kind < 0.6:
                blocks.append(_prose(rng, rng.randint(1, 8)))
            elif kind < 0.8:
                blocks.append("\n".join(f"- {_prose(rng, 1)}" for _ in range(rng.randint(1, 6))))
            else:
                blocks.append("```\n" + "\n".join(f"    call({i}, '{rng.choice(_WORDS)}')" for i in range(9)) + "\n```")
    doc = parse(tmp_path, "r.md", "\n\n".join(blocks) + "\n")
    max_tokens = rng.choice([40, 90, 350])
    overlap = rng.choice([0, max_tokens // 8, max_tokens // 2])
    assert_split_well(doc, chunk(doc, max_tokens=max_tokens, overlap_tokens=overlap), max_tokens, overlap)


def test_a_search_from_a_hint_finds_what_a_search_from_the_start_finds() -> None:
    """Cutting a long section searches from where the last pieces' density says the cut will be:
    the answer must not depend on the hint, only the number of token counts it takes."""
    from bot.docs.parse._chunk import _last_true

    rng = random.Random(11)
    for _ in range(3000):
        low = rng.randint(0, 5)
        high = low + rng.randint(0, 40)
        answer = rng.randint(low - 1, high)  # predicate(i) is i <= answer: true, then false

        def predicate(i: int, low: int = low, high: int = high, answer: int = answer) -> bool:
            assert low <= i < high, (low, high, i)  # never probes outside the range
            return i <= answer

        expected = None if low >= high or answer < low else min(answer, high - 1)
        assert _last_true(low, high, predicate) == expected
        for hint in (None, low - 3, low, answer, answer + 1, rng.randint(low - 2, high + 2), high, high + 5):
            assert _last_true(low, high, predicate, hint) == expected, (low, high, answer, hint)


def test_a_long_page_of_one_paragraph_is_cut_in_few_token_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 2 MB page of one paragraph took 10-28 s to cut: each piece was searched for from its
    start. Alike pieces now take about half the token counts."""
    import bot.docs.parse._chunk as chunking

    rng = random.Random(12)
    doc = parse(tmp_path, "a.md", "# T\n\n" + " ".join(_prose(rng, 1) for _ in range(400)) + "\n")
    counts: list[int] = []
    monkeypatch.setattr(chunking, "estimate_text_tokens", lambda text: counts.append(1) or estimate_text_tokens(text))
    passages = chunk(doc, max_tokens=120, overlap_tokens=30)
    assert_split_well(doc, passages, 120, 30)
    assert len(passages) > 30
    assert len(counts) / len(passages) < 10  # 18 per piece searching from its start, 7.7 from the hint

    counts.clear()  # a run with no spaces is cut between characters, from the hint too
    giant = parse(tmp_path, "b.md", "# T\n\n" + "[a](" * 5000 + "\n")
    passages = chunk(giant, max_tokens=120, overlap_tokens=30)
    assert_offsets(giant, passages)
    assert len(passages) > 30 and all(estimate_text_tokens(p.text) <= 120 for p in passages)
    assert len(counts) / len(passages) < 10  # 17 per piece searching from its start


def test_chunk_rejects_unworkable_limits(tmp_path: Path) -> None:
    doc = parse(tmp_path, "a.md", "# A\n\nText.\n")
    with pytest.raises(ValueError, match="max_tokens"):
        chunk(doc, max_tokens=4)
    with pytest.raises(ValueError, match="overlap_tokens"):
        chunk(doc, max_tokens=100, overlap_tokens=60)
    with pytest.raises(ValueError, match="overlap_tokens"):
        chunk(doc, overlap_tokens=-1)
    assert chunk(parse(tmp_path, "empty.md", "# Only a title\n")) == []


def test_unsupported_suffix_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unsupported"):
        parse(tmp_path, "a.docx", b"PK\x03\x04")


# --------------------------------------------------------------------------------------------
# Walking


def touch(path: Path, content: str = "# Doc\n\nText.\n") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)


def test_walk_lists_supported_files_sorted_and_skips_the_rest(tmp_path: Path) -> None:
    for name in (
        "b.md", "a.rst", "Guide.MD", "c.txt", "d.html", "e.htm", "f.markdown", "sub/z.md", "sub/deeper/y.txt",
        ".hidden.md", ".git/config.md", ".venv/lib/x.md", "node_modules/pkg/readme.md", "sub/__pycache__/m.txt",
        "image.png", "notes.pdf", "slides.docx", "script.py",
    ):  # fmt: skip
        touch(tmp_path / name)
    found = [p.relative_to(tmp_path).as_posix() for p in walk(tmp_path)]
    assert found == sorted(found, key=lambda name: Path(name).parts)
    assert set(found) == {
        "Guide.MD", "a.rst", "b.md", "c.txt", "d.html", "e.htm", "f.markdown", "notes.pdf", "sub/deeper/y.txt",
        "sub/z.md",
    }  # fmt: skip


def test_walk_skips_large_files_and_logs_them(tmp_path: Path) -> None:
    touch(tmp_path / "ok.md")
    with (tmp_path / "dump.txt").open("wb") as handle:
        handle.truncate(MAX_FILE_BYTES + 1)  # sparse: instant, no 2 MB written
    with structlog.testing.capture_logs() as logs:
        found = list(walk(tmp_path))
    assert found == [tmp_path / "ok.md"]
    assert {"event": "docs_file_skipped", "path": "dump.txt", "reason": "too_large",
            "size": MAX_FILE_BYTES + 1, "log_level": "warning"} in logs  # fmt: skip


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_walk_survives_symlink_loops_walks_aliases_once_and_never_leaves_the_folder(tmp_path: Path) -> None:
    touch(tmp_path / "docs" / "a.md")
    touch(tmp_path / "docs" / "sub" / "b.md")
    touch(tmp_path / "elsewhere" / "c.md")
    (tmp_path / "docs" / "sub" / "loop").symlink_to(tmp_path / "docs", target_is_directory=True)
    (tmp_path / "docs" / "alias").symlink_to(tmp_path / "docs" / "sub", target_is_directory=True)
    (tmp_path / "docs" / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "docs" / "broken.md").symlink_to(tmp_path / "missing.md")
    (tmp_path / "elsewhere" / ".env").write_text("OPENAI_API_KEY=sk-not-for-slack\n")
    (tmp_path / "docs" / "settings.md").symlink_to(tmp_path / "elsewhere" / ".env")
    with structlog.testing.capture_logs() as logs:
        found = [p.relative_to(tmp_path / "docs").as_posix() for p in walk(tmp_path / "docs")]
    assert found == ["a.md", "alias/b.md"]  # "alias" sorts before "sub": the alias is walked
    # Links out of the folder are neither walked nor read: a docs repo must not publish a .env.
    assert {(log["path"], log["reason"]) for log in logs if log["event"] == "docs_file_skipped"} == {
        ("broken.md", "link_outside_docs_folder"), ("linked", "link_outside_docs_folder"),
        ("settings.md", "link_outside_docs_folder")}
    with pytest.raises(ValueError, match="outside the docs folder"):
        parse_document(tmp_path / "docs" / "settings.md", tmp_path / "docs")
    assert parse_document(tmp_path / "docs" / "alias" / "b.md", tmp_path / "docs").doc_path == "alias/b.md"


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_links_lead_only_into_the_folders_the_owner_allowed(tmp_path: Path) -> None:
    """A monorepo keeps its API docs beside the code (docs/api -> ../src/api/docs): allowed by
    name, that folder is walked and read; a link anywhere else still is not."""
    touch(tmp_path / "docs" / "a.md")
    touch(tmp_path / "src" / "api" / "docs" / "ref.md")
    (tmp_path / "src" / ".env").write_text("OPENAI_API_KEY=sk-not-for-slack\n")
    (tmp_path / "docs" / "api").symlink_to(tmp_path / "src" / "api" / "docs", target_is_directory=True)
    (tmp_path / "docs" / "env.md").symlink_to(tmp_path / "src" / ".env")
    allowed = [tmp_path / "src" / "api"]
    with structlog.testing.capture_logs() as logs:
        found = [p.relative_to(tmp_path / "docs").as_posix() for p in walk(tmp_path / "docs", link_roots=allowed)]
    assert found == ["a.md", "api/ref.md"]
    assert [(log["path"], log["reason"]) for log in logs if log["event"] == "docs_file_skipped"] == [
        ("env.md", "link_outside_docs_folder")]
    assert read_source(tmp_path / "docs" / "api" / "ref.md", tmp_path / "docs", allowed) == b"# Doc\n\nText.\n"
    with pytest.raises(ValueError, match="PENNY_DOCS_LINK_ROOTS allows a folder"):
        read_source(tmp_path / "docs" / "api" / "ref.md", tmp_path / "docs")
    with pytest.raises(ValueError, match="outside the docs folder"):
        read_source(tmp_path / "docs" / "env.md", tmp_path / "docs", allowed)
    # A sibling whose name starts the same is not inside the allowed folder.
    touch(tmp_path / "src" / "api-secrets" / "keys.md")
    (tmp_path / "docs" / "keys").symlink_to(tmp_path / "src" / "api-secrets", target_is_directory=True)
    assert "keys/keys.md" not in [p.relative_to(tmp_path / "docs").as_posix()
                                  for p in walk(tmp_path / "docs", link_roots=allowed)]


def test_walk_refuses_a_file_or_missing_root(tmp_path: Path) -> None:
    touch(tmp_path / "a.md")
    with pytest.raises(NotADirectoryError):
        walk(tmp_path / "a.md")
    with pytest.raises(NotADirectoryError):
        walk(tmp_path / "missing")


# --------------------------------------------------------------------------------------------
# The sample handbook


@pytest.mark.skipif(not EXAMPLES.is_dir(), reason="no examples/docs")
def test_every_example_document_parses_into_passages() -> None:
    files = list(walk(EXAMPLES))
    assert files
    for path in files:
        doc = parse_document(path, EXAMPLES)
        passages = chunk(doc)
        assert passages, doc.doc_path
        assert_offsets(doc, passages)
        assert all(estimate_text_tokens(p.text) <= 350 for p in passages), doc.doc_path
        assert all(p.heading_path[0] == doc.title for p in passages), doc.doc_path


# --------------------------------------------------------------------------------------------
# PDF (pypdf, the penny[pdf] extra; in the dev extras so these run in CI)


def test_a_pdf_is_a_section_per_page_titled_from_its_metadata(tmp_path: Path) -> None:
    pdf = make_pdf([["Security handbook", "Rotate keys every 90 days."], [], ["Report incidents to"
                    " security@example.com within one hour."]], title="Security Handbook 2026")
    doc = parse(tmp_path, "policies/security.pdf", pdf)
    assert doc.title == "Security Handbook 2026"
    assert paths(doc) == [("Security Handbook 2026", "Page 1"), ("Security Handbook 2026", "Page 3")]  # 2 is blank
    assert [s.anchor for s in doc.sections] == ["page=1", "page=3"]  # file.pdf#page=3 opens page 3
    assert "Rotate keys every 90 days." in body(doc, "Page 1")
    assert "security@example.com within one hour." in body(doc, "Page 3")
    assert_offsets(doc, chunk(doc))
    assert doc.content_hash == hashlib.sha256(pdf).hexdigest()
    untitled = parse(tmp_path, "runbooks/on-call_rota.pdf", make_pdf([["Week 1: Ana"]]))
    assert untitled.title == "On call rota"


def test_a_damaged_or_locked_pdf_is_a_clear_error_not_a_crash(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unreadable PDF"):
        parse(tmp_path, "broken.pdf", b"%PDF-1.4\nthis is not a PDF body at all")
    with pytest.raises(ValueError, match="unreadable PDF"):
        parse(tmp_path, "truncated.pdf", make_pdf([["some text"]])[:60])


def test_pdfs_are_walked_only_where_they_can_be_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a.md").write_text("# A\n\ntext\n")
    (tmp_path / "b.pdf").write_bytes(make_pdf([["text"]]))
    assert [p.name for p in walk(tmp_path)] == ["a.md", "b.pdf"]
    monkeypatch.setitem(sys.modules, "pypdf", None)  # importing it now fails, as without the penny[pdf] extra
    with structlog.testing.capture_logs() as logs:
        assert [p.name for p in walk(tmp_path)] == ["a.md"]
    assert any(log.get("reason") == "no_pdf_support" and "penny[pdf]" in log.get("hint", "") for log in logs)
    with pytest.raises(ValueError, match=r"pip install 'penny\[pdf\]'"):
        parse_document(tmp_path / "b.pdf", tmp_path)


# --------------------------------------------------------------------------------------------
# Messy and hostile files (found by trying a real folder's worst): each is read, skipped or cut
# as a reader would expect, and none stops the run.


def test_a_declared_charset_that_is_no_text_encoding_falls_back_instead_of_crashing(tmp_path: Path) -> None:
    for charset in ("base64", "rot13", "zlib", "idna"):
        page = f'<meta charset="{charset}"><h1>Caf\xe9</h1><p>Cr\xe8me br\xfbl\xe9e.</p>'.encode("cp1252")
        doc = parse(tmp_path, f"{charset}.html", page)
        assert doc.title == "Café" and "Crème brûlée." in doc.text, charset


def test_one_stray_byte_in_a_utf8_file_is_replaced_not_a_reason_for_mojibake(tmp_path: Path) -> None:
    raw = "# Café menu\n\nCrème brûlée, 日本語 and a stray byte: ".encode() + b"\xff" + b".\n"
    doc = parse(tmp_path, "menu.md", raw)
    assert doc.title == "Café menu" and "Crème brûlée, 日本語" in doc.text and "\ufffd" in doc.text
    latin = parse(tmp_path, "latin.md", "# Café\n\nCrème brûlée.\n".encode("cp1252"))
    assert latin.title == "Café" and "Crème brûlée." in latin.text  # a Windows-1252 file is still read as one


def test_a_nul_byte_anywhere_makes_a_file_not_text(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="NUL"):
        parse(tmp_path, "notes.md", b"# Notes\n\n" + b"plain text " * 2000 + bytes(range(256)) * 80)


def test_an_unterminated_html_comment_hides_the_rest_as_a_browser_does(tmp_path: Path) -> None:
    doc = parse(tmp_path, "page.html", "<h1>Deploy</h1><p>Run make deploy.</p><!-- empty --><!-->"
                "<p>Shown.</p><!-- TODO remove: <p>admin password is hunter2</p>")
    assert "Run make deploy." in doc.text and "Shown." in doc.text
    assert "hunter2" not in doc.text and "<!--" not in doc.text


def test_a_hidden_element_left_open_hides_only_itself(tmp_path: Path) -> None:
    doc = parse(tmp_path, "page.html", "<h1>Guide</h1><p hidden>draft<p>Visible paragraph."
                "<ul><li hidden>secret item<li>Shown item</ul><div><p hidden>gone</div><p>After the div.</p>")
    assert "Visible paragraph." in doc.text and "Shown item" in doc.text and "After the div." in doc.text
    assert "draft" not in doc.text and "secret item" not in doc.text and "gone" not in doc.text


def test_a_pdf_with_thousands_of_pages_is_cut_at_the_page_limit_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bot.docs.parse import _pdf

    monkeypatch.setattr(_pdf, "MAX_PDF_PAGES", 3)
    with structlog.testing.capture_logs() as logs:
        doc = parse(tmp_path, "manual.pdf", make_pdf([[f"Page text {n}"] for n in range(1, 8)]))
    assert [s.heading_path[-1] for s in doc.sections] == ["Page 1", "Page 2", "Page 3"]
    assert [(log["path"], log["pages_read"], log["pages"]) for log in logs
            if log["event"] == "docs_pdf_truncated"] == [("manual.pdf", 3, 7)]
    monkeypatch.setattr(_pdf, "MAX_PDF_PAGES", 100)
    monkeypatch.setattr(_pdf, "MAX_PDF_TEXT_CHARS", 20)  # "Page text N" is 11 characters
    assert len(parse(tmp_path, "manual2.pdf", make_pdf([[f"Page text {n}"] for n in range(1, 8)])).sections) == 2


def test_a_file_that_grew_past_the_limit_or_became_a_fifo_after_the_listing_is_refused(tmp_path: Path) -> None:
    from bot.docs.parse import read_source

    grown = tmp_path / "grown.md"
    grown.write_bytes(b"# Grown\n\n" + b"x" * (MAX_FILE_BYTES + 10))
    with pytest.raises(ValueError, match="larger than 2 MB"):
        read_source(grown, tmp_path)
    fifo = tmp_path / "swapped.md"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):  # opened at once, never waits for a writer
        read_source(fifo, tmp_path)
