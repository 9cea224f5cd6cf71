"""PDF (``.pdf``), with the optional ``penny[pdf]`` extra (pypdf): a section per page, headed
"Page N" with the anchor ``page=N``, which PDF viewers open at that page."""

from __future__ import annotations

import io
import logging

from bot.docs.parse._model import Block
from bot.docs.parse._normalise import CONTROL_CHARS, collapse
from proxy_core import get_logger

__all__ = ["MAX_PDF_PAGES", "MAX_PDF_TEXT_CHARS", "parse_pdf", "pdf_support"]

# A PDF yields no more text than a text file may hold (2 MB), from at most this many pages: a small
# file can describe thousands of pages sharing one content stream, each slow to extract.
MAX_PDF_TEXT_CHARS = 2 * 1024 * 1024
MAX_PDF_PAGES = 2000

_log = get_logger()


def pdf_support() -> bool:
    """Whether PDFs can be read here (pypdf is installed)."""
    try:
        import pypdf  # noqa: F401
    except ImportError:
        return False
    return True


def parse_pdf(raw: bytes, *, name: str = "") -> tuple[list[Block], str | None]:
    """A block per page with text ("Page N", anchor ``page=N``) and the title from the file's
    metadata. A PDF has no reliable headings: its outline, when there is one, points at pages, not
    at places in the text. Past :data:`MAX_PDF_PAGES` pages or :data:`MAX_PDF_TEXT_CHARS` of text,
    the rest is left out (logged with ``name``)."""
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
        pages: list[str] = []
        chars = 0
        for page in reader.pages:
            if len(pages) >= MAX_PDF_PAGES or chars >= MAX_PDF_TEXT_CHARS:
                # The pages read so far are indexed; the rest of a document this long is not.
                _log.warning("docs_pdf_truncated", path=name, pages_read=len(pages), pages=len(reader.pages),
                             max_pages=MAX_PDF_PAGES, max_chars=MAX_PDF_TEXT_CHARS)
                break
            text = page.extract_text() or ""
            pages.append(text)
            chars += len(text)
    except ValueError:
        raise
    except Exception as exc:  # pypdf raises many types on damaged files; none of them is a crash of ours
        raise ValueError(f"unreadable PDF ({type(exc).__name__})") from exc
    blocks = []
    for number, text in enumerate(pages, start=1):
        body = CONTROL_CHARS.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
        if body.strip():
            blocks.append(Block(2, f"Page {number}", f"page={number}", body))
    return blocks, collapse(title) if isinstance(title, str) and title.strip() else None
