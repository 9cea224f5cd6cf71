"""Turn a docs folder's files into passages ready to embed.

Three pure steps, each usable on its own:

* :func:`walk` lists the supported files under a docs root: sorted, hidden entries, ``node_modules``,
  symlink loops and files over :data:`MAX_FILE_BYTES` (:data:`MAX_PDF_BYTES` for a PDF) skipped;
* :func:`parse_document` reads one Markdown, reStructuredText, HTML or plain-text file into a
  :class:`Document`: its title, its normalised text, and a :class:`Section` per heading. A PDF (with
  the optional ``penny[pdf]`` extra, pypdf) becomes a section per page, headed "Page N" with the
  anchor ``page=N``, which PDF viewers open at that page;
* :func:`chunk` cuts a document's sections into :class:`Passage` objects of at most ``max_tokens``
  (counted with :func:`proxy_core.tokens.estimate_text_tokens`): long sections are split with some
  overlap, tiny ones merged into the passage before them.

The normalised text is each heading on a line of its own followed by its section's body, blocks
separated by a blank line, so every section's and passage's ``text`` is exactly
``document.text[char_start:char_end]`` (a merged passage therefore includes the heading of the tiny
section it absorbed). Bodies are plain text with the light Markdown conventions an LLM reads well
whatever the source format: fenced code blocks, ``- `` list items, inline code in backticks, and a
link's text followed by its URL in brackets.
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import html
import io
import json
import logging
import os
import re
import textwrap
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

from proxy_core.log import get_logger
from proxy_core.tokens import estimate_text_tokens

__all__ = [
    "MAX_FILE_BYTES",
    "MAX_PDF_BYTES",
    "SUPPORTED_SUFFIXES",
    "Document",
    "Passage",
    "Section",
    "chunk",
    "parse_document",
    "passage_hash",
    "pdf_support",
    "slugify",
    "walk",
]

MAX_FILE_BYTES = 2 * 1024 * 1024
"""Files larger than this are skipped by :func:`walk`: they are dumps, not docs."""
MAX_PDF_BYTES = 32 * 1024 * 1024
"""The same for PDFs, whose fonts and images make a few pages of text weigh megabytes."""

_FORMATS = {
    ".md": "markdown",
    ".markdown": "markdown",
    ".rst": "rst",
    ".html": "html",
    ".htm": "html",
    ".txt": "text",
    ".pdf": "pdf",
}
SUPPORTED_SUFFIXES = frozenset(_FORMATS)
_SKIPPED_DIRS = frozenset({"node_modules", "__pycache__"})

_log = get_logger()


# --------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class Section:
    """The body under one heading (or before the first heading, with ``anchor == ""``)."""

    heading_path: tuple[str, ...]  # from the page title down to this section's heading
    anchor: str  # URL fragment of the heading; "" for text above the first heading
    text: str
    char_start: int  # text == document.text[char_start:char_end]
    char_end: int


@dataclass(frozen=True)
class Document:
    """One parsed file. ``content_hash`` is the sha256 of the file's raw bytes."""

    doc_path: str  # POSIX path relative to the docs root
    title: str
    text: str  # the normalised text every offset refers to
    sections: tuple[Section, ...]  # only sections with a non-empty body, in document order
    content_hash: str


@dataclass(frozen=True)
class Passage:
    """A piece of a document small enough to embed and to quote in a prompt."""

    doc_path: str
    title: str
    heading_path: tuple[str, ...]
    anchor: str
    text: str
    index: int  # position among the document's passages, from 0
    char_start: int  # text == document.text[char_start:char_end]
    char_end: int
    content_hash: str = field(default="")  # passage_hash(doc_path, heading_path, text) when empty

    def __post_init__(self) -> None:
        if not self.content_hash:
            # The hash is a pure function of the other fields; filling it here keeps them in step.
            object.__setattr__(self, "content_hash", passage_hash(self.doc_path, self.heading_path, self.text))

    def embedding_text(self) -> str:
        """The text to embed: the heading path as context, then the passage ("A › B\\n\\ntext")."""
        path = self.heading_path if self.heading_path[:1] == (self.title,) else (self.title, *self.heading_path)
        return f"{' › '.join(path)}\n\n{self.text}"


def passage_hash(doc_path: str, heading_path: tuple[str, ...], text: str) -> str:
    """sha256 of a passage's identity and content: unchanged passages keep their hash across runs."""
    payload = json.dumps([doc_path, list(heading_path), text], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def slugify(heading: str) -> str:
    """GitHub's heading anchor: lowercase, punctuation dropped, each space a hyphen."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


# --------------------------------------------------------------------------------------------
# Walking a docs folder


def walk(root: Path) -> Iterator[Path]:
    """Supported files under ``root`` in sorted order, following symlinks but never in a loop.

    Hidden files and directories (``.git``, ``.venv``, …), ``node_modules`` and ``__pycache__``
    are skipped; so are files over :data:`MAX_FILE_BYTES` and unreadable entries (each logged).
    A directory reached twice through symlinks is walked once. Raises ``NotADirectoryError`` when
    ``root`` is not a directory.
    """
    if not root.is_dir():
        raise NotADirectoryError(f"not a directory: {root}")
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()

    def rel(path: Path) -> str:
        return path.relative_to(root).as_posix()

    def visit(directory: Path) -> None:
        try:
            info = directory.stat()
            entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
        except OSError as exc:
            _log.warning("docs_dir_skipped", path=rel(directory), reason="unreadable", error=str(exc))
            return
        key = (info.st_dev, info.st_ino)
        if key in seen:
            _log.warning("docs_dir_skipped", path=rel(directory), reason="already_walked")
            return
        seen.add(key)
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            try:
                if entry.is_dir():
                    if entry.name not in _SKIPPED_DIRS:
                        visit(path)
                elif entry.is_file() and path.suffix.lower() in SUPPORTED_SUFFIXES:
                    pdf = path.suffix.lower() == ".pdf"
                    if pdf and not pdf_support():
                        _log.warning("docs_file_skipped", path=rel(path), reason="no_pdf_support",
                                     hint="pip install 'penny[pdf]'")
                        continue
                    stat = entry.stat()
                    if stat.st_size > (MAX_PDF_BYTES if pdf else MAX_FILE_BYTES):
                        _log.warning("docs_file_skipped", path=rel(path), reason="too_large", size=stat.st_size)
                    elif (stat.st_dev, stat.st_ino) not in seen:
                        seen.add((stat.st_dev, stat.st_ino))
                        found.append(path)
            except OSError as exc:
                _log.warning("docs_file_skipped", path=rel(path), reason="unreadable", error=str(exc))

    visit(root)
    return iter(sorted(found))


# --------------------------------------------------------------------------------------------
# Parsing one file


@dataclass
class _Block:
    """A heading and the body under it, as a format parser found them."""

    level: int  # 1-6; 0 for text above the first heading
    heading: str
    anchor: str | None  # an explicit id from the source, else the heading's slug is used
    body: str


def parse_document(path: Path, root: Path) -> Document:
    """Parse one supported file under ``root`` (see :data:`SUPPORTED_SUFFIXES`).

    Bytes that are not valid UTF-8 are replaced (an HTML file's declared charset is honoured
    first), so any text file parses. Raises ``ValueError`` for an unsupported suffix, a ``path``
    outside ``root`` or a PDF that cannot be read (damaged, password-protected, or no pypdf), and
    ``OSError`` when the file cannot be read.
    """
    kind = _FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"unsupported document type {path.suffix!r}: {path.name}")
    doc_path = path.relative_to(root).as_posix()
    raw = path.read_bytes()
    if kind == "pdf":
        blocks, fallback_title = _parse_pdf(raw)
        title = fallback_title or _filename_title(doc_path)
        return _assemble(doc_path, title, blocks, hashlib.sha256(raw).hexdigest())
    text = _decode(raw, html_charset=kind == "html")
    if kind == "markdown":
        blocks, fallback_title = _parse_markdown(text)
    elif kind == "rst":
        blocks, fallback_title = _parse_rst(text), None
    elif kind == "html":
        blocks, fallback_title = _parse_html(text)
    else:
        blocks, fallback_title = _parse_text(text), None
    first_h1 = next((_collapse(b.heading) for b in blocks if b.level == 1 and b.heading.strip()), None)
    title = first_h1 or fallback_title or _filename_title(doc_path)
    return _assemble(doc_path, title, blocks, hashlib.sha256(raw).hexdigest())


def _assemble(doc_path: str, title: str, blocks: list[_Block], content_hash: str) -> Document:
    """Lay the blocks out as the normalised text, tracking heading paths, anchors and offsets."""
    parts: list[str] = []
    length = 0
    stack: list[tuple[int, str]] = []
    slugs: dict[str, int] = {}
    sections: list[Section] = []

    def append(text: str) -> tuple[int, int]:
        nonlocal length
        if parts:
            parts.append("\n\n")
            length += 2
        parts.append(text)
        length += len(text)
        return length - len(text), length

    for block in blocks:
        anchor = ""
        heading = _collapse(block.heading)
        if block.level and heading:
            while stack and stack[-1][0] >= block.level:
                stack.pop()
            stack.append((block.level, heading))
            anchor = block.anchor or slugify(heading)
            seen = slugs.get(anchor, 0)
            slugs[anchor] = seen + 1
            if seen and not block.anchor:
                anchor = f"{anchor}-{seen}"
            append(heading)
        body = _tidy(block.body)
        if body:
            path = tuple(heading for _, heading in stack)
            if path[:1] != (title,):
                path = (title, *path)
            start, end = append(body)
            sections.append(Section(path, anchor, body, start, end))
    return Document(doc_path, title, "".join(parts), tuple(sections), content_hash)


def _filename_title(doc_path: str) -> str:
    parts = doc_path.split("/")
    name = parts[-1].rsplit(".", 1)[0]
    if name.lower() in ("index", "readme") and len(parts) > 1:
        name = parts[-2]
    name = re.sub(r"[-_\s]+", " ", name).strip() or doc_path
    return name[:1].upper() + name[1:]


_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?([A-Za-z0-9_.:-]+)""", re.IGNORECASE)


def _decode(raw: bytes, *, html_charset: bool) -> str:
    """Text of a file in any encoding, never raising; newlines normalised, control characters gone."""
    if raw.startswith(codecs.BOM_UTF8):
        text = raw[3:].decode("utf-8", "replace")
    elif raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        text = raw.decode("utf-16", "replace")
    else:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            encoding = "utf-8"
            declared = _META_CHARSET.search(raw[:4096]) if html_charset else None
            if declared:
                with contextlib.suppress(LookupError):  # an unknown charset: fall back to UTF-8
                    encoding = codecs.lookup(declared.group(1).decode("ascii")).name
            text = raw.decode(encoding, "replace")
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\f", "\n")
    return _CONTROL_CHARS.sub("", text)


def _tidy(body: str) -> str:
    """Trailing spaces and runs of blank lines removed; no blank lines at either end."""
    body = "\n".join(line.rstrip() for line in body.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", body).strip()


def _collapse(text: str) -> str:
    return " ".join(text.split())


def _restore(text: str, stash: list[str]) -> str:
    """Put back the values an inline pass set aside (a value may hold an earlier placeholder)."""
    return _PLACEHOLDER.sub(lambda m: _restore(stash[int(m.group(1))], stash), text)


# --------------------------------------------------------------------------------------------
# Markdown

_MD_FENCE = re.compile(r"^\s*(`{3,}|~{3,})(.*)$")
_MD_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_MD_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_MD_NOT_PARAGRAPH = re.compile(r"^(?: {4}|\t|\s*(?:[-*+]|\d+[.)])(?:\s|$)|\s*[>|<])")
_MD_THEMATIC = re.compile(r"^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$")
_MD_TABLE_RULE = re.compile(r"^\s*\|?(?:\s*:?-+:?\s*\|)+\s*(?::?-+:?)?\s*$|^\s*:?-+:?\s*(?:\|\s*:?-+:?\s*)+\|?\s*$")
_MD_REF_DEF = re.compile(r"""^ {0,3}\[([^\]]+)\]:\s*<?(\S+?)>?(?:\s+(?:"[^"]*"|'[^']*'|\([^)]*\)))?\s*$""")
_MD_LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s")
_MD_HEADING_ID = re.compile(r"\s*\{#([\w:.-]+)[^}]*\}\s*$")
_MD_FRONT_TITLE = re.compile(r"""^title\s*[:=]\s*["']?(.*?)["']?\s*$""")

_MD_CODE_SPAN = re.compile(r"(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.DOTALL)
_MD_ESCAPE = re.compile(r"\\([!-/:-@\[-`{-~])")
_MD_IMAGE = re.compile(r"!\[([^\]]*)\]\((?:[^()]|\([^()]*\))*\)")
_MD_LINK = re.compile(
    r"""\[([^\]]*)\]\(\s*(<[^<>\n]*>|(?:[^()\s]|\([^()\s]*\))*)(?:\s+(?:"[^"]*"|'[^']*'|\([^()]*\)))?\s*\)"""
)
_MD_REF_LINK = re.compile(r"\[([^\]]+)\]\[([^\]]*)\]")
_MD_SHORTCUT_LINK = re.compile(r"\[([^\]]+)\](?![(\[:])")
_AUTOLINK = re.compile(r"<((?:https?|ftp|mailto):[^<>\s]+|[^<>\s@]+@[^<>\s@]+\.[^<>\s@]+)>")
_BARE_URL = re.compile(r"\b(?:https?|ftp)://[^\s<>()\x00]+")
_HTML_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_HTML_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)
_HTML_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9-]*(?:\s[^<>]*)?/?>")
_MD_STRONG = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*|(?<!\w)__(?=\S)(.+?)(?<=\S)__(?!\w)", re.DOTALL)
_MD_EMPHASIS = re.compile(
    r"(?<![\w*])\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?![\w*])|(?<![\w_])_(?=[^\s_])(.+?)(?<=[^\s_])_(?![\w_])",
    re.DOTALL,
)
_MD_STRIKE = re.compile(r"~~(?=\S)(.+?)(?<=\S)~~", re.DOTALL)
_PLACEHOLDER = re.compile(r"\x00(\d+)\x00")


def _parse_markdown(text: str) -> tuple[list[_Block], str | None]:
    """Headings: ATX (``#``) and setext (``===``/``---``) outside fenced code; front matter skipped."""
    lines = text.split("\n")
    start, front_title = _md_front_matter(lines)
    lines = lines[start:]
    refs = _md_references(lines)
    blocks: list[_Block] = []
    level, heading, anchor = 0, "", None
    body: list[str] = []
    paragraph_start: int | None = None  # index in body of the paragraph a setext line would turn into a heading
    fence: str | None = None
    in_comment = False

    def open_block(new_level: int, raw_heading: str) -> None:
        nonlocal level, heading, anchor, body, paragraph_start
        new_heading, new_anchor = _md_heading(raw_heading, refs)
        if not new_heading:
            return
        blocks.append(_Block(level, heading, anchor, _md_body(body, refs)))
        level, heading, anchor, body, paragraph_start = new_level, new_heading, new_anchor, [], None

    for line in lines:
        if fence is not None:
            body.append(line)
            if re.fullmatch(rf"\s*{re.escape(fence[0])}{{{len(fence)},}}\s*", line):
                fence = None
            continue
        if in_comment:
            in_comment = "-->" not in line
            continue
        opening = _MD_FENCE.match(line)
        if opening and not (opening.group(1)[0] == "`" and "`" in opening.group(2)):
            fence, paragraph_start = opening.group(1), None
            body.append(line)
            continue
        if line.lstrip().startswith("<!--") and "-->" not in line:
            in_comment = True
            continue
        atx = _MD_ATX.match(line)
        if atx:
            open_block(len(atx.group(1)), atx.group(2) or "")
            paragraph_start = None
            continue
        setext = _MD_SETEXT.match(line)
        if (
            setext
            and paragraph_start is not None
            and not any(_MD_NOT_PARAGRAPH.match(candidate) for candidate in body[paragraph_start:])
        ):
            raw_heading = " ".join(candidate.strip() for candidate in body[paragraph_start:])
            del body[paragraph_start:]
            open_block(1 if setext.group(1)[0] == "=" else 2, raw_heading)
            paragraph_start = None
            continue
        if not line.strip():
            paragraph_start = None
        elif paragraph_start is None:
            paragraph_start = len(body)
        body.append(line)
    blocks.append(_Block(level, heading, anchor, _md_body(body, refs)))
    return blocks, front_title


def _md_front_matter(lines: list[str]) -> tuple[int, str | None]:
    """Index of the first line after YAML (``---``) or TOML (``+++``) front matter, and its title."""
    if not lines or lines[0].strip() not in ("---", "+++"):
        return 0, None
    closers = ("---", "...") if lines[0].strip() == "---" else ("+++",)
    for index in range(1, len(lines)):
        if lines[index].strip() in closers:
            titles = (_MD_FRONT_TITLE.match(line) for line in lines[1:index])
            title = next((_collapse(m.group(1)) for m in titles if m and m.group(1).strip()), None)
            return index + 1, title
    return 0, None


def _md_references(lines: list[str]) -> dict[str, str]:
    """Link reference definitions (``[label]: url``) outside code, by normalised label."""
    refs: dict[str, str] = {}
    fence: str | None = None
    for line in lines:
        if fence is not None:
            if re.fullmatch(rf"\s*{re.escape(fence[0])}{{{len(fence)},}}\s*", line):
                fence = None
            continue
        opening = _MD_FENCE.match(line)
        if opening:
            fence = opening.group(1)
            continue
        definition = _MD_REF_DEF.match(line)
        if definition:
            refs.setdefault(_collapse(definition.group(1)).lower(), definition.group(2))
    return refs


def _md_heading(raw: str, refs: dict[str, str]) -> tuple[str, str | None]:
    """The plain text of a heading, and its explicit ``{#id}`` if it has one."""
    explicit = _MD_HEADING_ID.search(raw)
    if explicit:
        raw = raw[: explicit.start()]
    return _collapse(_md_inline(raw, refs, plain=True)), explicit.group(1) if explicit else None


def _md_body(lines: list[str], refs: dict[str, str]) -> str:
    """Markdown body lines as plain-ish text: code kept verbatim, inline markup resolved."""
    out: list[str] = []
    prose: list[str] = []  # the lines of the current paragraph: links and emphasis may span them

    def flush() -> None:
        if prose:
            out.append(_md_inline("\n".join(prose), refs, plain=False))
            prose.clear()

    fence: str | None = None
    previous_blank = True
    in_indented_code = False
    for line in lines:
        if fence is not None:
            out.append(line)
            if re.fullmatch(rf"\s*{re.escape(fence[0])}{{{len(fence)},}}\s*", line):
                fence = None
            continue
        opening = _MD_FENCE.match(line)
        if opening and not (opening.group(1)[0] == "`" and "`" in opening.group(2)):
            flush()
            fence = opening.group(1)
            out.append(line)
            continue
        if not line.strip():
            flush()
            out.append("")
            previous_blank = True
            continue
        indented = line.startswith(("    ", "\t")) and not _MD_LIST_ITEM.match(line)
        in_indented_code = indented and (previous_blank or in_indented_code)
        previous_blank = False
        if in_indented_code:
            flush()
            out.append(line)
        elif not (_MD_REF_DEF.match(line) or _MD_THEMATIC.match(line) or _MD_TABLE_RULE.match(line)):
            prose.append(line)
    flush()
    return "\n".join(out)


def _code_span(code: str, plain: bool) -> str:
    code = code.replace("\n", " ").strip()
    return code if plain else f"`{code}`"


def _md_inline(text: str, refs: dict[str, str], *, plain: bool) -> str:
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
        url = refs.get(_collapse(match.group(2) or label).lower())
        return link(label, url) if url else label

    def shortcut(match: re.Match[str]) -> str:
        url = refs.get(_collapse(match.group(1)).lower())
        return link(match.group(1), url) if url else match.group(0)

    text = _MD_CODE_SPAN.sub(lambda m: keep(_code_span(m.group(2), plain)), text)
    text = _MD_ESCAPE.sub(lambda m: keep(m.group(1)), text)
    text = _HTML_COMMENT.sub("", text)
    text = _MD_IMAGE.sub(lambda m: m.group(1), text)
    text = _MD_LINK.sub(lambda m: link(m.group(1), m.group(2).strip("<>")), text)
    text = _MD_REF_LINK.sub(reference, text)
    text = _MD_SHORTCUT_LINK.sub(shortcut, text)
    text = _AUTOLINK.sub(lambda m: keep(m.group(1)), text)
    text = _BARE_URL.sub(lambda m: keep(m.group(0)), text)
    text = _HTML_BR.sub(" ", text)
    text = _HTML_TAG.sub("", text)
    text = _MD_STRONG.sub(lambda m: m.group(1) or m.group(2), text)
    text = _MD_EMPHASIS.sub(lambda m: m.group(1) or m.group(2), text)
    text = _MD_STRIKE.sub(r"\1", text)
    text = html.unescape(text)
    return _restore(text, stash)


# --------------------------------------------------------------------------------------------
# reStructuredText

_RST_ADORNMENT = re.compile(r"""([=\-~^"'`#*+])\1{2,}[ \t]*""")
_RST_EXPLICIT = re.compile(r"^(\s*)\.\.(?:\s+(.*))?$")
_RST_DIRECTIVE = re.compile(r"([\w:.+-]+)::(?:\s+(.*))?$")
_RST_TARGET = re.compile(r"^\s*\.\.\s+_(`[^`]+`|[^:]+):\s*(\S+)\s*$")
_RST_OPTION = re.compile(r"^:[\w-]+:")
_RST_DOC_FIELD = re.compile(r"^:(?:orphan|nocomments|nosearch|tocdepth)\b")
_RST_CODE_DIRECTIVES = frozenset({"code", "code-block", "sourcecode"})
_RST_ADMONITIONS = frozenset(
    {"attention", "caution", "danger", "error", "hint", "important", "note", "tip", "warning", "seealso"}
)
_RST_VERSION_NOTES = {
    "versionadded": "New in version",
    "versionchanged": "Changed in version",
    "deprecated": "Deprecated since version",
}
_RST_BODY_ONLY = frozenset({"only", "ifconfig", "container", "figure", "compound", "glossary"})
_RST_DROPPED = frozenset(
    {
        "toctree", "contents", "include", "literalinclude", "raw", "index", "meta", "highlight", "sectnum",
        "image", "class", "role", "default-role", "title", "header", "footer", "target-notes",
        "tabularcolumns", "currentmodule", "module", "program", "cssclass",
    }
)  # fmt: skip

_RST_LITERAL = re.compile(r"``(.+?)``", re.DOTALL)
_RST_ROLE = re.compile(r":[\w:.+-]+:`([^`]+)`")
_RST_EMBEDDED_LINK = re.compile(r"`([^`<]*?)\s*<([^<>`]+)>`__?")
_RST_NAMED_REF = re.compile(r"`([^`]+)`__?")
_RST_INTERPRETED = re.compile(r"`([^`]+)`(?::[\w:.+-]+:)?")
_RST_SIMPLE_REF = re.compile(r"(?<![\w`])([A-Za-z0-9][\w.-]*?)__?(?=[\s.,;:!?)\]'\"]|$)")
_RST_FOOTNOTE_REF = re.compile(r"\[([#*]?[\w-]*)\]_")
_RST_STRONG = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*", re.DOTALL)
_RST_EMPHASIS = re.compile(r"(?<![\w*])\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?![\w*])", re.DOTALL)
_RST_ESCAPE = re.compile(r"\\(.)")


def _parse_rst(text: str) -> list[_Block]:
    """Section titles are underlined (optionally also overlined); levels follow the order styles appear."""
    lines = text.split("\n")
    targets: dict[str, str] = {}
    for line in lines:
        target = _RST_TARGET.match(line)
        if target and not target.group(2).endswith("_"):
            targets[target.group(1).strip("`").lower()] = target.group(2)
    styles: list[tuple[str, bool]] = []
    blocks: list[_Block] = []
    level, heading = 0, ""
    body: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        nxt = lines[index + 1] if index + 1 < len(lines) else ""
        title: str | None = None
        if (
            _RST_ADORNMENT.fullmatch(line)
            and index + 2 < len(lines)
            and nxt.strip()
            and not _RST_ADORNMENT.fullmatch(nxt)
            and _RST_ADORNMENT.fullmatch(lines[index + 2])
            and lines[index + 2][0] == line[0]
        ):
            title, style, consumed = nxt.strip(), (line[0], True), 3
        elif (
            line.strip()
            and not line[0].isspace()
            and not _RST_ADORNMENT.fullmatch(line)
            and not _RST_EXPLICIT.match(line)
            and _RST_ADORNMENT.fullmatch(nxt)
            and len(nxt.rstrip()) >= min(len(line.rstrip()), 4)
        ):
            title, style, consumed = line.strip(), (nxt[0], False), 2
        if title is None:
            body.append(line)
            index += 1
            continue
        new_heading = _collapse(_rst_inline(title, targets, plain=True))
        if new_heading:
            if style not in styles:
                styles.append(style)
            blocks.append(_Block(level, heading, None, _rst_body(body, targets)))
            level, heading, body = styles.index(style) + 1, new_heading, []
        index += consumed
    blocks.append(_Block(level, heading, None, _rst_body(body, targets)))
    return blocks


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _indented_block_end(lines: list[str], start: int, parent_indent: int) -> int:
    """Index just past the last line, from ``start``, indented more than ``parent_indent``."""
    end = start
    for index in range(start, len(lines)):
        if lines[index].strip():
            if _indent(lines[index]) <= parent_indent:
                break
            end = index + 1
    return end


def _rst_body(lines: list[str], targets: dict[str, str]) -> str:
    """reST body lines as plain-ish text: directives resolved or dropped, literal blocks fenced."""
    out: list[str] = []
    prose: list[str] = []  # the lines of the current paragraph: inline markup may span them

    def flush() -> None:
        if prose:
            out.append(_rst_inline("\n".join(prose), targets, plain=False))
            prose.clear()

    literal_indent: int | None = None  # indentation of a paragraph that ended with "::"
    index = 0
    while index < len(lines):
        line = lines[index]
        if not line.strip():
            flush()
            out.append("")
            index += 1
            continue
        if literal_indent is not None and _indent(line) > literal_indent:
            flush()
            end = _indented_block_end(lines, index, literal_indent)
            out.extend(["```", textwrap.dedent("\n".join(lines[index:end])), "```"])
            literal_indent, index = None, end
            continue
        literal_indent = None
        explicit = _RST_EXPLICIT.match(line)
        if explicit:
            flush()
            end = _indented_block_end(lines, index + 1, len(explicit.group(1)))
            content = textwrap.dedent("\n".join(lines[index + 1 : end])).split("\n")
            out.extend(_rst_explicit(explicit.group(2) or "", content, targets))
            index = end
            continue
        index += 1
        if _RST_ADORNMENT.fullmatch(line) or _RST_DOC_FIELD.match(line):
            continue  # a transition, or page metadata
        stripped = line.rstrip()
        if stripped.endswith("::"):
            literal_indent = _indent(line)
            stripped = stripped[:-3] if stripped.endswith(" ::") or stripped.strip() == "::" else stripped[:-1]
            if not stripped.strip():
                continue
        prose.append(stripped)
    flush()
    return "\n".join(out)


def _rst_explicit(markup: str, content: list[str], targets: dict[str, str]) -> list[str]:
    """Text for an explicit markup block (``.. something``): directives, footnotes, comments."""
    directive = _RST_DIRECTIVE.match(markup)
    if markup.startswith(("_", "|")) or (not directive and not markup.startswith("[")):
        return []  # a hyperlink target, a substitution definition or a comment
    if not directive:
        footnote = re.match(r"\[([^\]]+)\]\s*(.*)$", markup)
        label, text = (footnote.group(1), footnote.group(2)) if footnote else ("", markup)
        return [_rst_inline(f"[{label}] {text}".rstrip(), targets, plain=False), _rst_body(content, targets)]
    name, argument = directive.group(1).lower(), (directive.group(2) or "").strip()
    options = 0
    while options < len(content) and _RST_OPTION.match(content[options]):
        options += 1
    language = next((c.split(":", 2)[2].strip() for c in content[:options] if c.startswith(":language:")), "")
    content = content[options:]
    if name in _RST_CODE_DIRECTIVES:
        return ["```" + (argument or language), "\n".join(content).strip("\n"), "```"]
    if name in _RST_DROPPED or name.startswith("auto"):
        return []
    body = _rst_body(content, targets)
    if name in _RST_BODY_ONLY:
        return [body]
    if name in _RST_ADMONITIONS or name == "admonition":
        label = argument if name == "admonition" else "See also" if name == "seealso" else name.capitalize()
        lead = _rst_inline(argument, targets, plain=False) if argument and name != "admonition" else ""
        return [f"{label}: {lead}".rstrip(), body]
    if name in _RST_VERSION_NOTES:
        return [f"{_RST_VERSION_NOTES[name]} {argument}:".replace(" :", ":"), body]
    return [_rst_inline(argument, targets, plain=False), body] if argument else [body]


def _rst_inline(text: str, targets: dict[str, str], *, plain: bool) -> str:
    """Inline reST markup as text. ``plain`` (for titles) also drops URLs and code backticks."""
    stash: list[str] = []

    def keep(value: str) -> str:
        stash.append(value)
        return f"\x00{len(stash) - 1}\x00"

    def link(label: str, url: str | None) -> str:
        label = label.strip()
        if plain or not url or url.endswith("_") or url == label:
            return label or (url or "").rstrip("_")
        return f"{label} ({url})" if label else url

    def role(match: re.Match[str]) -> str:
        content = match.group(1)
        explicit = re.fullmatch(r"(.*?)\s*<([^<>]+)>", content, re.DOTALL)
        if explicit:
            return explicit.group(1) or explicit.group(2)
        content = content.lstrip("!")
        return content[1:].rsplit(".", 1)[-1] if content.startswith("~") else content

    text = _RST_LITERAL.sub(lambda m: keep(m.group(1) if plain else f"`{m.group(1)}`"), text)
    text = _RST_ESCAPE.sub(lambda m: keep(m.group(1)) if m.group(1) != " " else "", text)
    text = _RST_ROLE.sub(lambda m: keep(role(m)), text)
    text = _RST_EMBEDDED_LINK.sub(lambda m: keep(link(m.group(1), m.group(2))), text)
    text = _RST_NAMED_REF.sub(lambda m: keep(link(m.group(1), targets.get(m.group(1).lower()))), text)
    text = _RST_INTERPRETED.sub(lambda m: keep(m.group(1)), text)
    text = _RST_FOOTNOTE_REF.sub(r"[\1]", text)
    text = _RST_SIMPLE_REF.sub(lambda m: keep(link(m.group(1), targets.get(m.group(1).lower()))), text)
    text = _RST_STRONG.sub(r"\1", text)
    text = _RST_EMPHASIS.sub(r"\1", text)
    return _restore(text, stash)


# --------------------------------------------------------------------------------------------
# HTML

_HTML_DROPPED = frozenset({"script", "style", "nav", "noscript", "template", "svg", "iframe", "object"})
_HTML_HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
_HTML_VOID = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source", "track", "wbr"}
)
_HTML_BLOCKS = frozenset(
    {
        "address", "article", "aside", "blockquote", "body", "caption", "dd", "details", "div", "dl", "dt",
        "fieldset", "figcaption", "figure", "footer", "form", "header", "hr", "html", "main", "p", "section",
        "summary", "table", "tbody", "tfoot", "thead",
    }
)  # fmt: skip


# Break markers in the collected text (control characters never survive decoding): runs of them,
# and the spaces between them, resolve to one line break or one blank line.
_LINE, _PARAGRAPH = "\x01", "\x02"
_HTML_BREAKS = re.compile(r"\s*[\x01\x02][\s\x01\x02]*")
_HTML_ENDS_HEADING = frozenset({"article", "li", "ol", "p", "pre", "section", "table", "ul"})


class _HtmlText(HTMLParser):
    """Collects headings and the text between them; entities are decoded by ``convert_charrefs``."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[_Block] = []
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
            if tag == self._dropping:
                self._drop_depth += 1
            return
        if tag in _HTML_DROPPED or attributes.get("role") == "navigation" or "hidden" in attributes:
            if tag not in _HTML_VOID:
                self._dropping, self._drop_depth = tag, 1
            return
        if self._heading_level and tag in _HTML_ENDS_HEADING:
            self._end_heading()  # an unclosed heading must not swallow the page
        if tag == "title":
            self._in_title = True
        elif tag in _HTML_HEADINGS:
            if self._heading_level:
                self._end_heading()
            self._heading_level, self._heading_parts = _HTML_HEADINGS[tag], []
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
        elif tag in _HTML_BLOCKS:
            self._out.append(_PARAGRAPH)
        elif tag == "a":
            self._links.append((attributes.get("href", ""), len(self._out)))
        elif tag == "img" and attributes.get("alt"):
            self._out.append(attributes["alt"])
        elif tag == "code":
            self._out.append("`")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in _HTML_VOID:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if self._dropping is not None:
            if tag == self._dropping:
                self._drop_depth -= 1
                if not self._drop_depth:
                    self._dropping = None
            return
        if tag == "title":
            self._in_title = False
            self.title = self.title or _collapse("".join(self._title_parts))
        elif self._heading_level:
            if tag in _HTML_HEADINGS:
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
        elif tag in _HTML_BLOCKS:
            self._out.append(_PARAGRAPH)
        elif tag == "a" and self._links:
            href, start = self._links.pop()
            label = _collapse("".join(self._out[start:]))
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
        self.blocks.append(_Block(self._level, self._heading, self._anchor or None, self._body()))

    def _end_heading(self) -> None:
        heading = _collapse("".join(self._heading_parts))
        if heading:
            self.blocks.append(_Block(self._level, self._heading, self._anchor or None, self._body()))
            self._level, self._heading, self._anchor = self._heading_level, heading, self._heading_anchor
            self._out = []
        self._heading_level, self._links = 0, []

    def _body(self) -> str:
        text = _HTML_BREAKS.sub(lambda m: "\n\n" if _PARAGRAPH in m.group() else "\n", "".join(self._out))
        lines = (_collapse(line) for line in text.split("\n"))
        return _PLACEHOLDER.sub(lambda m: self._verbatim[int(m.group(1))], "\n".join(lines))


def _parse_html(text: str) -> tuple[list[_Block], str | None]:
    """Headings are h1-h6; script, style and nav are dropped; the ``<title>`` is the fallback title."""
    parser = _HtmlText()
    parser.feed(text)
    parser.close()
    return parser.blocks, parser.title or None


# --------------------------------------------------------------------------------------------
# Plain text

_TXT_UNDERLINE = re.compile(r"([=\-~*#])\1{2,}")
_TXT_SMALL_WORDS = frozenset(
    {"a", "an", "and", "as", "at", "but", "by", "for", "from", "in", "into", "is", "nor", "of", "on", "or", "per",
     "the", "to", "via", "vs", "with"}
)  # fmt: skip
_TXT_WORD = re.compile(r"[^\W\d_][\w'’-]*")


def _txt_heading_style(line: str) -> str | None:
    """How a short stand-alone line reads as a heading ("caps", "title", "colon"), or None."""
    if len(line) > 72 or len(line.split()) > 10 or line[0] in "-*•+>|#(" or "://" in line:
        return None
    if line.endswith(":"):
        return "colon" if len(line.split()) <= 5 else None
    if line[-1] in ".,;!":
        return None
    letters = [c for c in line if c.isalpha()]
    if len(letters) < 2:
        return None
    if all(c.isupper() for c in letters):
        return "caps"
    words = _TXT_WORD.findall(line)
    if words and words[0][0].isupper() and all(w[0].isupper() or w.lower() in _TXT_SMALL_WORDS for w in words[1:]):
        return "title"
    return None


def _parse_text(text: str) -> list[_Block]:
    """Headings by heuristic: an underlined line, else a short line between blank lines in Title Case,
    ALL CAPS or ending with ':'. Levels follow the order styles appear; a first-line heading is the title."""
    lines = text.split("\n")
    headings: dict[int, tuple[str, str, int]] = {}  # line index -> (heading, style, lines it takes)
    for index, raw in enumerate(lines[:-1]):
        line = raw.strip()
        if not line or (index and lines[index - 1].strip()):
            continue
        underline = _TXT_UNDERLINE.fullmatch(lines[index + 1].strip())
        if underline and not _TXT_UNDERLINE.fullmatch(line):
            headings[index] = (line, underline.group(1), 2)
        elif not lines[index + 1].strip():
            style = _txt_heading_style(line)
            if style:
                headings[index] = (line.rstrip(":").strip(), style, 1)
    if any(taken == 2 for _, _, taken in headings.values()):
        # The author underlines headings: other short lines are list lead-ins and labels, not headings.
        headings = {index: found for index, found in headings.items() if found[2] == 2}
    first_line = next((i for i, line in enumerate(lines) if line.strip()), -1)
    styles: list[str] = []
    blocks: list[_Block] = []
    level, heading = 0, ""
    body: list[str] = []
    index = 0
    while index < len(lines):
        if index not in headings:
            body.append(lines[index])
            index += 1
            continue
        new_heading, style, taken = headings[index]
        if index == first_line and style != "colon":
            new_level = 1
        else:
            if style not in styles:
                styles.append(style)
            new_level = styles.index(style) + 2
        blocks.append(_Block(level, heading, None, _dedent_paragraphs(body)))
        level, heading, body = new_level, new_heading, []
        index += taken
    blocks.append(_Block(level, heading, None, _dedent_paragraphs(body)))
    return blocks


def _dedent_paragraphs(lines: list[str]) -> str:
    """Each paragraph without the indentation all its lines share (aligned columns stay aligned)."""
    paragraphs = re.split(r"\n[ \t]*\n", "\n".join(lines))
    return "\n\n".join(textwrap.dedent(paragraph) for paragraph in paragraphs)


# --------------------------------------------------------------------------------------------
# Chunking

_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
_SENTENCE_BREAK = re.compile(r"[.!?…][\"'”’)\]]*\s+|\n\s*")
_WORD_BREAK = re.compile(r"\s+")
# estimate_text_tokens counts at least one token per 24 characters (a long run of spaces); nothing
# denser exists, so a piece ending further than this many characters per token cannot fit.
_MAX_CHARS_PER_TOKEN = 25


def chunk(
    document: Document, *, max_tokens: int = 350, overlap_tokens: int = 50, min_tokens: int = 30
) -> list[Passage]:
    """Cut a document into passages of at most ``max_tokens`` estimated tokens.

    A section that fits is one passage. A longer one is split at paragraph breaks, else sentence
    ends or line breaks, else between words (mid-word only for a word longer than the limit), and
    each piece after the first starts with about ``overlap_tokens`` of the end of the piece before
    it. A section under ``min_tokens`` joins the passage before it on the same page, headings
    included, when the result still fits. Raises ``ValueError`` for ``max_tokens`` under 8 or an
    overlap outside ``0..max_tokens // 2``.
    """
    if max_tokens < 8:
        raise ValueError(f"max_tokens must be at least 8, not {max_tokens}")
    if not 0 <= overlap_tokens <= max_tokens // 2:
        raise ValueError(f"overlap_tokens must be between 0 and max_tokens // 2, not {overlap_tokens}")
    pieces: list[tuple[Section, int, int]] = []  # section, then document offsets
    for section in document.sections:
        spans = _split(section.text, max_tokens, overlap_tokens)
        if len(spans) == 1 and pieces and estimate_text_tokens(section.text) < min_tokens:
            owner, start, _ = pieces[-1]
            if estimate_text_tokens(document.text[start : section.char_end]) <= max_tokens:
                pieces[-1] = (owner, start, section.char_end)
                continue
        pieces.extend((section, section.char_start + start, section.char_start + end) for start, end in spans)
    return [
        Passage(
            doc_path=document.doc_path,
            title=document.title,
            heading_path=section.heading_path,
            anchor=section.anchor,
            text=document.text[start:end],
            index=index,
            char_start=start,
            char_end=end,
        )
        for index, (section, start, end) in enumerate(pieces)
    ]


def _split(text: str, max_tokens: int, overlap_tokens: int) -> list[tuple[int, int]]:
    """Spans of ``text`` (stripped, non-empty) of at most ``max_tokens``, consecutive ones overlapping."""
    if estimate_text_tokens(text) <= max_tokens:
        return [(0, len(text))]
    levels = [_unit_starts(pattern, text) for pattern in (_PARAGRAPH_BREAK, _SENTENCE_BREAK, _WORD_BREAK)]
    spans: list[tuple[int, int]] = []
    start, previous_end = 0, 0
    while True:
        end = _piece_end(text, start, previous_end, levels, max_tokens)
        if end is None:  # the overlap left no room for anything new: carry on without one
            start = _skip_space(text, previous_end)
            end = _piece_end(text, start, previous_end, levels, max_tokens)
            if end is None:  # cannot happen with max_tokens >= 8: one character costs at most 4
                raise AssertionError("no progress while splitting a section")
        spans.append((start, end))
        if end >= len(text):
            return spans
        start, previous_end = _overlap_start(text, start, end, levels, overlap_tokens), end


def _unit_starts(pattern: re.Pattern[str], text: str) -> list[int]:
    """Where each unit after a break begins, then the end of the text."""
    return [*(m.end() for m in pattern.finditer(text) if 0 < m.end() < len(text)), len(text)]


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position].isspace():
        position += 1
    return position


def _trim_end(text: str, start: int, end: int) -> int:
    while end > start and text[end - 1].isspace():
        end -= 1
    return end


def _last_true(low: int, high: int, predicate: Callable[[int], bool]) -> int | None:
    """The largest i in [low, high) with predicate(i), for a predicate that is true then false.

    Gallops from ``low`` before bisecting, so the probes stay near the answer: each probe of a
    piece's end costs a token count of the piece.
    """
    if low >= high or not predicate(low):
        return None
    good, step = low, 1
    while True:
        probe = min(good + step, high - 1)
        if probe == good:
            return good
        if not predicate(probe):
            bad = probe
            break
        good, step = probe, step * 2
    while bad - good > 1:
        middle = (good + bad) // 2
        if predicate(middle):
            good = middle
        else:
            bad = middle
    return good


def _piece_end(text: str, start: int, min_end: int, levels: list[list[int]], max_tokens: int) -> int | None:
    """The end of the piece starting at ``start``: past ``min_end``, within ``max_tokens``, cut at
    the coarsest break that still fills at least half the limit."""

    def fits(end: int) -> bool:
        return estimate_text_tokens(text[start:end]) <= max_tokens

    reach = start + _MAX_CHARS_PER_TOKEN * (max_tokens + 1)  # no piece of max_tokens is longer
    best: int | None = None
    for starts in levels:
        end = _farthest_fit(text, start, starts, bisect_right(starts, reach), fits)
        if end is None or end <= min_end:
            continue
        if end == len(text) or 2 * estimate_text_tokens(text[start:end]) >= max_tokens:
            return end
        best = max(best or 0, end)
    if best is not None:
        return best
    found = _last_true(start + 1, min(len(text), reach) + 1, fits)  # a word longer than the limit
    end = _trim_end(text, start, found) if found is not None else start
    return end if end > min_end else None


def _farthest_fit(text: str, start: int, starts: list[int], high: int, fits: Callable[[int], bool]) -> int | None:
    """The farthest end that fits among ``starts[:high]`` after ``start`` (trailing space trimmed)."""
    first = bisect_right(starts, start)
    found = _last_true(first, high, lambda i: fits(_trim_end(text, start, starts[i])))
    return None if found is None else _trim_end(text, start, starts[found])


def _overlap_start(text: str, start: int, end: int, levels: list[list[int]], overlap_tokens: int) -> int:
    """Where the piece after ``text[start:end]`` begins: a word (ideally a sentence) start inside it
    leaving about ``overlap_tokens`` of overlap, or the next word after it."""
    following = _skip_space(text, end)
    if overlap_tokens <= 0:
        return following
    words = levels[2]
    low, high = bisect_right(words, start), bisect_left(words, end)
    found = _last_true(0, high - low, lambda k: estimate_text_tokens(text[words[high - 1 - k] : end]) <= overlap_tokens)
    if found is None:
        return following
    begin = words[high - 1 - found]
    sentences = levels[1]
    nearest = bisect_left(sentences, begin)
    if (
        nearest < len(sentences)
        and sentences[nearest] < end
        and 2 * estimate_text_tokens(text[sentences[nearest] : end]) >= overlap_tokens
    ):
        begin = sentences[nearest]
    return begin


# --------------------------------------------------------------------------------------------
# PDF (optional: pypdf, the ``penny[pdf]`` extra)


def pdf_support() -> bool:
    """Whether PDFs can be read here (pypdf is installed)."""
    try:
        import pypdf  # noqa: F401
    except ImportError:
        return False
    return True


def _parse_pdf(raw: bytes) -> tuple[list[_Block], str | None]:
    """A block per page with text ("Page N", anchor ``page=N``) and the title from the file's
    metadata. A PDF has no reliable headings: its outline, when there is one, points at pages, not
    at places in the text."""
    try:
        from pypdf import PdfReader
    except ImportError as exc:
        raise ValueError("PDF support is not installed: pip install 'penny[pdf]'") from exc
    # pypdf warns on stderr about each flaw it works around; the indexer logs a file it cannot use
    # once, with its path, which is what an operator needs.
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    try:
        reader = PdfReader(io.BytesIO(raw))
        if reader.is_encrypted and not reader.decrypt(""):
            raise ValueError("the PDF is password-protected")
        metadata = reader.metadata
        title = metadata.title if metadata is not None else None
        pages = [page.extract_text() or "" for page in reader.pages]
    except ValueError:
        raise
    except Exception as exc:  # pypdf raises many types on damaged files; none of them is a crash of ours
        raise ValueError(f"unreadable PDF ({type(exc).__name__})") from exc
    blocks = []
    for number, text in enumerate(pages, start=1):
        body = _CONTROL_CHARS.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
        if body.strip():
            blocks.append(_Block(2, f"Page {number}", f"page={number}", body))
    return blocks, _collapse(title) if isinstance(title, str) and title.strip() else None
