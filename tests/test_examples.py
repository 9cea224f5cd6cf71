"""The example handbook and its question sets are consistent with each other.

Checks the shape promised in ``examples/README.md``: 22–26 pages in four formats, each split into
headed sections; every question names a page and a heading that exist; every page is asked about;
every paraphrase points at a real question and its page.
"""

from __future__ import annotations

import html
import json
import re
from collections import Counter
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
DOCS = EXAMPLES / "docs"
FORMATS = (".md", ".rst", ".html", ".txt")

# An underline (reStructuredText, and the plain-text pages' convention): one punctuation
# character repeated, at least as long as the heading text above it.
_UNDERLINE = re.compile(r"^([=\-~^\"'`#*+:.])\1+\s*$")
_MD_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$")
_HTML_HEADING = re.compile(r"<h([1-6])[^>]*>(.*?)</h\1>", re.S | re.I)
_TAG = re.compile(r"<[^>]+>")


def _pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*") if p.is_file())


def _rel(page: Path) -> str:
    return page.relative_to(DOCS).as_posix()


def headings(page: Path) -> list[str]:
    """Heading texts of a page, in order, the first being the page title."""
    text = page.read_text(encoding="utf-8")
    if page.suffix == ".md":
        found: list[str] = []
        in_fence = False
        for line in text.splitlines():
            if line.startswith("```"):
                in_fence = not in_fence
            elif not in_fence and (m := _MD_HEADING.match(line)):
                found.append(m.group(1))
        return found
    if page.suffix == ".html":
        return [html.unescape(_TAG.sub("", m.group(2))).strip() for m in _HTML_HEADING.finditer(text)]
    lines = text.splitlines()
    return [
        above.strip()
        for above, below in pairwise(lines)
        if above.strip()
        and not above.startswith((" ", "\t"))
        and not _UNDERLINE.match(above)
        and _UNDERLINE.match(below)
        and len(below.strip()) >= len(above.strip())
    ]


def words(page: Path) -> int:
    text = page.read_text(encoding="utf-8")
    if page.suffix == ".html":
        text = html.unescape(_TAG.sub(" ", text))
    return len(text.split())


def _jsonl(name: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for number, line in enumerate((EXAMPLES / name).read_text(encoding="utf-8").splitlines(), 1):
        assert line.strip(), f"{name}:{number} is blank"
        row = json.loads(line)
        assert isinstance(row, dict), f"{name}:{number} is not an object"
        rows.append(row)
    return rows


@pytest.fixture(scope="module")
def questions() -> list[dict[str, Any]]:
    rows = _jsonl("questions.jsonl")
    for row in rows:
        assert set(row) == {"question", "page", "section"}, row
        assert all(isinstance(v, str) and v.strip() for v in row.values()), row
    return rows


@pytest.fixture(scope="module")
def paraphrases() -> list[dict[str, Any]]:
    rows = _jsonl("paraphrases.jsonl")
    for row in rows:
        assert set(row) == {"question", "paraphrase_of", "page"}, row
        assert all(isinstance(v, str) and v.strip() for v in row.values()), row
    return rows


def test_page_count_and_format_mix() -> None:
    pages = _pages()
    assert 22 <= len(pages) <= 26
    formats = Counter(p.suffix for p in pages)
    assert set(formats) <= set(FORMATS), formats
    assert formats[".md"] > len(pages) / 2
    assert all(formats[ext] >= 2 for ext in (".rst", ".html", ".txt")), formats
    folders = {p.parent for p in pages} - {DOCS}
    assert len(folders) >= 3


@pytest.mark.parametrize("page", _pages(), ids=_rel)
def test_page_has_sections_and_a_sensible_length(page: Path) -> None:
    assert page.stat().st_size > 0
    found = headings(page)
    assert len(found) >= 4, f"title plus at least 3 section headings, got {found}"
    assert len(set(found)) == len(found), f"duplicate headings make sections ambiguous: {found}"
    assert 300 <= words(page) <= 1200


def test_questions_point_at_existing_pages_and_sections(questions: list[dict[str, Any]]) -> None:
    assert len(questions) >= 60
    assert len({q["question"] for q in questions}) == len(questions), "duplicate questions"
    for q in questions:
        page = DOCS / q["page"]
        assert page.is_file(), q
        assert q["section"] in headings(page), q


def test_every_page_is_asked_about(questions: list[dict[str, Any]]) -> None:
    asked = {q["page"] for q in questions}
    assert {_rel(p) for p in _pages()} - asked == set()


def test_paraphrases_follow_their_originals(questions: list[dict[str, Any]], paraphrases: list[dict[str, Any]]) -> None:
    page_of = {q["question"]: q["page"] for q in questions}
    per_original = Counter(p["paraphrase_of"] for p in paraphrases)
    assert len(per_original) == 20
    assert set(per_original.values()) == {2}
    for p in paraphrases:
        assert p["paraphrase_of"] in page_of, p
        assert p["page"] == page_of[p["paraphrase_of"]], p
        assert (DOCS / p["page"]).is_file(), p
        assert p["question"] not in page_of, f"a paraphrase repeats a question verbatim: {p}"
    assert len({p["question"] for p in paraphrases}) == len(paraphrases)
