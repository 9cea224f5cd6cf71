"""One crafted line must not stall ``penny index`` or a Slack reply: parsing and rendering are linear.

Each input is a single line of about 200,000 characters on which a pattern used to take minutes,
tried again from every position of a long run or over every way of splitting one (an 80-250 KB
file hung ``penny index`` past 60 s), or, where the cost grew with the lines read before, half a
million short lines. Each call must finish within :data:`LIMIT` seconds; they take
well under one now, so the limit is a liveness guard, not a performance target. The output is
checked too, so a case cannot pass by parsing nothing.

The guard is a timer signal, not a thread: ``re`` holds the GIL for a whole match, so a main thread
waiting on a worker with ``join(timeout)`` does not run again before the match is over (minutes
later, the worker done, the test passed); ``re`` does check for signals as it runs, so SIGALRM stops
it. Without ``setitimer`` (Windows) the calls are made unguarded: a regression hangs there instead.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bot.docs.parse import Document, parse_document
from bot.slack.render import markdown_to_mrkdwn

LIMIT = 20.0  # seconds; the fixed code takes a fraction of one on every case
N = 200_000


class _StillRunning(Exception):
    pass


@contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def alarm(signum: int, frame: object) -> None:
        raise _StillRunning

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except _StillRunning:
        pytest.fail(f"still running after {seconds:.0f} s: super-linear on this input")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _unchanged(text: str) -> Callable[[Document], bool]:
    return lambda doc: doc.text == text.strip()


def _titled(title: str) -> Callable[[Document], bool]:
    return lambda doc: doc.title == title


# (case, file name, content, what the parsed document must be)
DOC_CASES: list[tuple[str, str, str, Callable[[Document], bool]]] = [
    (case, name, text, check or _unchanged(text))
    for case, name, text, check in [
        ("md-code-span-backtick-run", "a.md", "x" + "`" * (N // 2) + "a" * (N // 2), None),
        ("md-open-brackets", "a.md", "[" * N, None),
        ("md-image-openers", "a.md", "![" * (N // 2), None),
        ("md-link-destination-spaces", "a.md", "[a](" + " " * N + "x", None),
        ("md-autolink-email-dots", "a.md", "<a@" + "b." * (N // 2), None),
        ("md-atx-heading-spaces", "a.md", "# a" + " " * N + "b", _titled("a b")),
        ("md-setext-heading-spaces", "a.md", "a" + " " * N + "b\n===", _titled("a b")),
        (
            "md-heading-id-after-spaces",
            "a.md",
            "# a" + " " * N + "b {#x}\n\nbody",
            lambda doc: doc.title == "a b" and doc.sections[0].anchor == "x",
        ),
        ("md-front-matter-title-spaces", "a.md", "---\ntitle: a" + " " * N + "b\n---\nbody", _titled("a b")),
        ("md-table-delimiter-spaces", "a.md", "|-" + " " * N + "x", None),
        ("md-strike-openers", "a.md", "~~a " * (N // 4), None),
        ("md-comment-openers", "a.md", "x" + "<!--" * (N // 4), None),
        # Lines, not one line: each "-" could underline the paragraph above it, and every one of them
        # was checked against the whole paragraph so far (a 2 MB file of them hung penny index).
        ("md-setext-underline-lines", "a.md", "-\n" * (5 * N // 2), _unchanged("-\n" * (5 * N // 2))),
        # Markup never closed at the end of a page: Python's HTML parser read to the end from each "<".
        ("html-unclosed-start-tags", "a.html", "<p>kept</p>" + "<a" * (N // 2), _unchanged("kept")),
        ("html-unclosed-attribute-values", "a.html", "<p>kept</p>" + "<a b='" * (N // 6), _unchanged("kept")),
        ("html-unclosed-end-tags", "a.html", "<p>kept</p>" + "</" * (N // 2), _unchanged("kept")),
        ("html-unclosed-instructions", "a.html", "<p>kept</p>" + "<?" * (N // 2), _unchanged("kept")),
        ("html-unclosed-marked-sections", "a.html", "<p>kept</p>" + "<![if >" * (10 * N // 7), _unchanged("kept")),
        ("rst-role-colons", "a.rst", ":a" * (N // 2), None),
        ("rst-role-content-spaces", "a.rst", ":a:`b" + " " * N + "c`", lambda doc: doc.text == "b" + " " * N + "c"),
        ("rst-strong-openers", "a.rst", "**a " * (N // 4), None),
        ("rst-emphasis-openers", "a.rst", "*a " * (N // 3), None),
        ("rst-embedded-link-spaces", "a.rst", "`" + " " * N + "x", None),
        ("rst-dotted-name", "a.rst", "b." * (N // 2), None),
    ]
]


@pytest.mark.parametrize(("name", "text", "check"), [c[1:] for c in DOC_CASES], ids=[c[0] for c in DOC_CASES])
def test_parsing_a_crafted_line_is_linear(
    tmp_path: Path, name: str, text: str, check: Callable[[Document], bool]
) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with _time_limit(LIMIT):
        doc = parse_document(path, tmp_path)
    assert check(doc), (doc.title[:80], doc.text[:80])


RENDER_CASES: list[tuple[str, str, Callable[[str], bool]]] = [
    ("atx-heading-spaces", "# a" + " " * N + "b", lambda out: out == "*a" + " " * N + "b*"),
    ("table-delimiter-spaces", "a|b\n|-" + " " * N + "x", lambda out: out == "a|b\n|-" + " " * N + "x"),
    ("table-cell-brackets", "a|b\n-|-\n" + "[" * N + "|c", lambda out: "[" * N + " | c" in out),
    ("table-cell-link-destination", "a|b\n-|-\n[a](" + "b" * N + "|c", lambda out: "[a](" + "b" * N + " | c" in out),
]


@pytest.mark.parametrize(("text", "check"), [c[1:] for c in RENDER_CASES], ids=[c[0] for c in RENDER_CASES])
def test_rendering_a_crafted_line_is_linear(text: str, check: Callable[[str], bool]) -> None:
    with _time_limit(LIMIT):
        out = markdown_to_mrkdwn(text)
    assert check(out), out[:80]


# A thread reply is text anyone in the channel wrote; deciding whether it is for Penny reads it once.
REPLY_CASES: list[tuple[str, str]] = [
    ("blank-lines", "\n" * N + "how do I deploy?"),
    ("open-angles", "<" * N + " how do I deploy?"),
    ("unclosed-links", "<http:" * (N // 6) + " how do I deploy?"),
    ("unclosed-group-mentions", "<!here|" * (N // 7) + " how do I deploy?"),
]


@pytest.mark.parametrize("text", [c[1] for c in REPLY_CASES], ids=[c[0] for c in REPLY_CASES])
def test_classifying_a_crafted_thread_reply_is_linear(text: str) -> None:
    from bot.slack.addressing import classify_thread_reply

    with _time_limit(LIMIT):
        addressing = classify_thread_reply(text, bot_user_id="UPENNY")
    assert addressing.for_penny  # the question at its end is still read
