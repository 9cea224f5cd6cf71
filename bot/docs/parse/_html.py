"""HTML (``.html``, ``.htm``): headings h1-h6 with their ids, the text between them with lists,
tables and ``<pre>`` kept readable, and navigation, scripts and hidden parts dropped."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from bot.docs.parse._model import Block
from bot.docs.parse._normalise import PLACEHOLDER, collapse, replace_overlong_charrefs

__all__ = ["parse_html"]

_DROPPED = frozenset({"script", "style", "nav", "noscript", "template", "svg", "iframe", "object"})
_HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
_VOID = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source", "track", "wbr"}
)
_BLOCKS = frozenset(
    {
        "address", "article", "aside", "blockquote", "body", "caption", "dd", "details", "div", "dl", "dt",
        "fieldset", "figcaption", "figure", "footer", "form", "header", "hr", "html", "main", "p", "section",
        "summary", "table", "tbody", "tfoot", "thead",
    }
)  # fmt: skip


# Break markers in the collected text (control characters never survive decoding): runs of them,
# and the spaces between them, resolve to one line break or one blank line.
_LINE, _PARAGRAPH = "\x01", "\x02"
_BREAKS = re.compile(r"\s*[\x01\x02][\s\x01\x02]*")
_ENDS_HEADING = frozenset({"article", "li", "ol", "p", "pre", "section", "table", "ul"})
# Elements whose end tag HTML lets a page leave out, with the start tags and the end tags that end
# them then: a hidden one ends there too, not at an end tag that may never come.
_CLOSES_P = _BLOCKS | _ENDS_HEADING | frozenset({"dl", "h1", "h2", "h3", "h4", "h5", "h6", "menu", "nav"})
_IMPLIED_END: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "p": (_CLOSES_P, _CLOSES_P | frozenset({"li", "td", "th", "dd"})),
    "li": (frozenset({"li"}), frozenset({"ul", "ol", "menu"})),
    "dt": (frozenset({"dt", "dd"}), frozenset({"dl"})),
    "dd": (frozenset({"dt", "dd"}), frozenset({"dl"})),
    "tr": (frozenset({"tr", "tbody", "tfoot"}), frozenset({"table", "tbody", "thead", "tfoot"})),
    "td": (frozenset({"td", "th", "tr", "tbody", "tfoot"}), frozenset({"tr", "table", "tbody", "thead", "tfoot"})),
    "th": (frozenset({"td", "th", "tr", "tbody", "tfoot"}), frozenset({"tr", "table", "tbody", "thead", "tfoot"})),
}
_COMMENT_START, _COMMENT_END = "<!--", "-->"
# Where a tag, an end tag, a declaration or a processing instruction may start ("<" then anything
# else is text).
_MARKUP_START = re.compile(r"<[A-Za-z/!?]")
_MAX_HEADING_CHARS = 300  # the longest headings in real docs are a long sentence


class _HtmlText(HTMLParser):
    """Collects headings and the text between them; entities are decoded by ``convert_charrefs``."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[Block] = []
        self.title = ""
        self._level, self._heading, self._anchor = 0, "", ""
        self._out: list[str] = []
        self._verbatim: list[str] = []  # <pre> contents, referred to from _out by placeholder
        self._dropping: str | None = None
        self._drop_depth = 0
        self._in_title = False
        self._title_parts: list[str] = []
        self._pre_depth = 0
        self._pre_start = 0
        self._heading_level = 0
        self._heading_parts: list[str] = []
        self._heading_anchor = ""
        self._links: list[tuple[str, int]] = []
        self._lists: list[list[int]] = []  # per open list: [is_ordered, items so far]
        self._cell = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        if self._dropping is not None:
            if self._drop_depth == 1 and tag in _IMPLIED_END.get(self._dropping, ((), ()))[0]:
                self._dropping = None  # a hidden <p> or <li> left open ends here; this tag is seen
            else:
                if tag == self._dropping:
                    self._drop_depth += 1
                return
        if tag in _DROPPED or attributes.get("role") == "navigation" or "hidden" in attributes:
            if tag not in _VOID:
                self._dropping, self._drop_depth = tag, 1
            return
        if self._heading_level and (
            tag in _ENDS_HEADING or (tag in _BLOCKS and "".join(self._heading_parts).strip())
        ):
            # An unclosed heading must not swallow the page; a block after its words ends it too
            # (<h1><div>Title</div></h1> keeps its title).
            self._end_heading()
        if tag == "title":
            self._in_title = True
        elif tag in _HEADINGS:
            if self._heading_level:
                self._end_heading()
            self._heading_level, self._heading_parts = _HEADINGS[tag], []
            self._heading_anchor = attributes.get("id", "")
            self._links = []
        elif self._heading_level:
            if tag == "a":
                self._heading_anchor = self._heading_anchor or attributes.get("id") or attributes.get("name", "")
                self._links.append((attributes.get("href", ""), len(self._heading_parts)))
            elif tag == "br":
                self._heading_parts.append(" ")
        elif tag == "pre":
            self._pre_depth += 1
            if self._pre_depth == 1:
                self._out.append(_PARAGRAPH)
                self._pre_start = len(self._out)
        elif self._pre_depth:
            return  # markup inside <pre> (syntax highlighting spans) adds nothing
        elif tag == "br":
            self._out.append(_LINE)
        elif tag in ("ul", "ol"):
            self._out.append(_LINE if self._lists else _PARAGRAPH)
            self._lists.append([tag == "ol", 0])
        elif tag == "li":
            self._out.append(_LINE)
            if self._lists and self._lists[-1][0]:
                self._lists[-1][1] += 1
                self._out.append(f"{self._lists[-1][1]}. ")
            else:
                self._out.append("- ")
        elif tag == "tr":
            self._out.append(_LINE)
            self._cell = 0
        elif tag in ("td", "th"):
            if self._cell:
                self._out.append(" | ")
            self._cell += 1
        elif tag in _BLOCKS:
            self._out.append(_PARAGRAPH)
        elif tag == "a":
            self._links.append((attributes.get("href", ""), len(self._out)))
        elif tag == "img" and attributes.get("alt"):
            self._out.append(attributes["alt"])
        elif tag == "code":
            self._out.append("`")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in _VOID:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if self._dropping is not None:
            if tag == self._dropping:
                self._drop_depth -= 1
                if not self._drop_depth:
                    self._dropping = None
                return
            if not (self._drop_depth == 1 and tag in _IMPLIED_END.get(self._dropping, ((), ()))[1]):
                return
            self._dropping = None  # the parent of a hidden <p> or <li> left open ends: so does it
        if tag == "title":
            self._in_title = False
            self.title = self.title or collapse("".join(self._title_parts))
        elif self._heading_level:
            if tag in _HEADINGS:
                self._end_heading()
            elif tag == "a" and self._links:
                href, start = self._links.pop()
                if href.startswith("#") and not any(c.isalnum() for c in "".join(self._heading_parts[start:])):
                    # a permalink ("¶", an icon) next to the heading: its target is the heading's anchor
                    del self._heading_parts[start:]
                    self._heading_anchor = self._heading_anchor or href[1:]
        elif tag == "pre" and self._pre_depth:
            self._pre_depth -= 1
            if not self._pre_depth:
                code = "".join(self._out[self._pre_start :])
                del self._out[self._pre_start :]
                self._verbatim.append("```\n" + code.removeprefix("\n").rstrip() + "\n```")
                self._out.append(f"{_PARAGRAPH}\x00{len(self._verbatim) - 1}\x00{_PARAGRAPH}")
        elif self._pre_depth:
            return
        elif tag in ("ul", "ol"):
            if self._lists:
                self._lists.pop()
            self._out.append(_LINE if self._lists else _PARAGRAPH)
        elif tag in ("li", "tr"):
            self._out.append(_LINE)
        elif tag in _BLOCKS:
            self._out.append(_PARAGRAPH)
        elif tag == "a" and self._links:
            href, start = self._links.pop()
            label = collapse("".join(self._out[start:]))
            if href and not href.startswith(("#", "javascript:")) and href != label:
                self._out.append(f" ({href})" if label else href)
        elif tag == "code":
            self._out.append("`")

    def handle_data(self, data: str) -> None:
        if self._dropping is not None:
            return
        if self._in_title:
            self._title_parts.append(data)
        elif self._heading_level:
            self._heading_parts.append(data)
        elif self._pre_depth:
            self._out.append(data)
        else:
            self._out.append(re.sub(r"\s+", " ", data))

    def close(self) -> None:
        super().close()
        if self._heading_level:
            self._end_heading()
        self.blocks.append(Block(self._level, self._heading, self._anchor or None, self._body()))

    def _end_heading(self) -> None:
        heading = collapse("".join(self._heading_parts))
        if len(heading) > _MAX_HEADING_CHARS:  # text left in a heading never closed: it is body text
            self._out.extend([_PARAGRAPH, heading, _PARAGRAPH])
        elif heading:
            self.blocks.append(Block(self._level, self._heading, self._anchor or None, self._body()))
            self._level, self._heading, self._anchor = self._heading_level, heading, self._heading_anchor
            self._out = []
        self._heading_level, self._links = 0, []

    def _body(self) -> str:
        text = _BREAKS.sub(lambda m: "\n\n" if _PARAGRAPH in m.group() else "\n", "".join(self._out))
        lines = (collapse(line) for line in text.split("\n"))
        return PLACEHOLDER.sub(lambda m: self._verbatim[int(m.group(1))], "\n".join(lines))


def parse_html(text: str) -> tuple[list[Block], str | None]:
    """Headings are h1-h6; script, style and nav are dropped; the ``<title>`` is the fallback title."""
    parser = _HtmlText()
    text = _without_unclosed_markup(_without_comments(replace_overlong_charrefs(text)))
    # A browser reads "<![" (outside SVG and MathML) as a bogus comment up to the next ">"; "<! [" is
    # one to Python's parser too, which reads "<![" as an SGML marked section instead: one it does
    # not know ("<![ x ]>") raises, and each left unclosed is searched for to the end of the page.
    parser.feed(text.replace("<![", "<! ["))
    parser.close()
    return parser.blocks, parser.title or None


def _without_unclosed_markup(text: str) -> str:
    """``text`` without the markup left open at its end, and what follows it, as a browser reads it:
    a tag the file ends in is dropped, a declaration or instruction hides the rest. Python's parser
    (before 3.13.5) shows it as text instead, trying again from each "<" and reading on to the end
    every time: a few hundred KB of "<a" took minutes. Every "<" after the last ">" is left open."""
    tail = text.rfind(">") + 1
    opened = _MARKUP_START.search(text, tail)
    return text if opened is None else text[: opened.start()]


def _without_comments(text: str) -> str:
    """``text`` without its comments, as a browser reads it: one that never ends hides the rest
    (``html.parser`` would hand that over as text, markup and all), and ``<!-->`` is a whole, empty
    one (which this Python's parser shows as text)."""
    kept: list[str] = []
    start = 0
    while (opened := text.find(_COMMENT_START, start)) >= 0:
        kept.append(text[start:opened])
        closed = text.find(_COMMENT_END, opened + 2)
        if closed < 0:
            return "".join(kept)
        start = closed + len(_COMMENT_END)
    kept.append(text[start:])
    return "".join(kept)
