"""One file to one :class:`Document`: pick the parser by the file's suffix, then lay the blocks it
found out as the normalised text, with each section's heading path, anchor and offsets.

Each format parser returns :class:`Block` objects (a heading and the body under it) and knows
nothing of titles, anchors or offsets; this module is the only place those are decided.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path

from bot.docs.parse._html import parse_html
from bot.docs.parse._markdown import parse_markdown
from bot.docs.parse._model import Block, Document, Section, slugify
from bot.docs.parse._normalise import collapse, decode, tidy
from bot.docs.parse._pdf import parse_pdf
from bot.docs.parse._rst import parse_rst
from bot.docs.parse._text import parse_text

__all__ = ["MAX_FILE_BYTES", "MAX_PDF_BYTES", "SUPPORTED_SUFFIXES", "parse_document", "read_source", "within"]

MAX_FILE_BYTES = 2 * 1024 * 1024
"""Files larger than this are not indexed: they are dumps, not docs."""
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


def within(path: Path, root: Path, link_roots: Sequence[Path] = ()) -> bool:
    """Whether ``path``'s real location (symlinks followed) is inside ``root``'s or one of the
    ``link_roots``' (folders outside the docs folder that its owner allowed links into)."""
    return _resolved_within(os.path.realpath(path), root, link_roots)


def _resolved_within(real: str, root: Path, link_roots: Sequence[Path]) -> bool:
    for allowed in (root, *link_roots):
        real_allowed = os.path.realpath(allowed)
        if os.path.commonpath([real_allowed, real]) == real_allowed:
            return True
    return False


def read_source(path: Path, root: Path, link_roots: Sequence[Path] = ()) -> bytes:
    """The bytes of ``path``, a file under ``root``, read as a docs file may be: its real location
    (symlinks followed) inside ``root``'s or a ``link_roots``', a regular file (never a FIFO or a
    device, which could block the run), and no larger than :data:`MAX_FILE_BYTES`
    (:data:`MAX_PDF_BYTES` for a PDF) however it grew since the folder was listed. Raises
    ``ValueError`` when it may not be read, ``OSError`` when it cannot."""
    real = os.path.realpath(path)
    if not _resolved_within(real, root, link_roots):
        raise ValueError("a link to a file outside the docs folder (not read; PENNY_DOCS_LINK_ROOTS allows a folder)")
    limit = MAX_PDF_BYTES if path.suffix.lower() == ".pdf" else MAX_FILE_BYTES
    # O_NOFOLLOW: the real path checked above cannot have become a link since; O_NONBLOCK: a FIFO
    # put in the file's place opens at once (and is refused below) instead of waiting for a writer.
    fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("not a regular file")
        parts: list[bytes] = []
        size = 0
        while size <= limit:
            part = os.read(fd, min(1 << 20, limit + 1 - size))
            if not part:
                break
            parts.append(part)
            size += len(part)
    finally:
        os.close(fd)
    if size > limit:
        raise ValueError(f"larger than {limit // (1024 * 1024)} MB (it grew while the folder was indexed)")
    return b"".join(parts)


def parse_document(path: Path, root: Path, *, raw: bytes | None = None) -> Document:
    """Parse one supported file under ``root`` (see :data:`SUPPORTED_SUFFIXES`); ``raw`` is its
    content when the caller read it already (with :func:`read_source`).

    Bytes that are not valid UTF-8 are replaced (an HTML file's declared charset is honoured
    first), so any text file parses. Raises ``ValueError`` for an unsupported suffix, a ``path``
    outside ``root``, a file :func:`read_source` refuses or a PDF that cannot be read (damaged,
    password-protected, or no pypdf), and ``OSError`` when the file cannot be read.
    """
    kind = _FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"unsupported document type {path.suffix!r}: {path.name}")
    doc_path = path.relative_to(root).as_posix()
    if raw is None:
        raw = read_source(path, root)
    if kind == "pdf":
        blocks, fallback_title = parse_pdf(raw, name=doc_path)
        title = fallback_title or _filename_title(doc_path)
        return _assemble(doc_path, title, blocks, hashlib.sha256(raw).hexdigest())
    text = decode(raw, html_charset=kind == "html")
    if kind == "markdown":
        blocks, fallback_title = parse_markdown(text)
    elif kind == "rst":
        blocks, fallback_title = parse_rst(text), None
    elif kind == "html":
        blocks, fallback_title = parse_html(text)
    else:
        blocks, fallback_title = parse_text(text), None
    first_h1 = next((collapse(b.heading) for b in blocks if b.level == 1 and b.heading.strip()), None)
    title = first_h1 or fallback_title or _filename_title(doc_path)
    return _assemble(doc_path, title, blocks, hashlib.sha256(raw).hexdigest())


def _assemble(doc_path: str, title: str, blocks: list[Block], content_hash: str) -> Document:
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
        heading = collapse(block.heading)
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
        body = tidy(block.body)
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
