"""Turn a docs folder's files into passages ready to embed.

Three pure steps, each usable on its own:

* :func:`walk` lists the supported files under a docs root: sorted, hidden entries, ``node_modules``,
  symlink loops, links out of the root and files over :data:`MAX_FILE_BYTES` (:data:`MAX_PDF_BYTES`
  for a PDF) skipped; :func:`read_source` reads one the same way (inside the root, a regular file,
  within the limit, however the folder changed since);
* :func:`parse_document` reads one Markdown, reStructuredText, HTML or plain-text file into a
  :class:`Document`: its title, its normalised text, and a :class:`Section` per heading. A PDF (with
  the optional ``penny[pdf]`` extra, pypdf) becomes a section per page, headed "Page N" with the
  anchor ``page=N``, which PDF viewers open at that page;
* :func:`chunk` cuts a document's sections into :class:`Passage` objects of at most ``max_tokens``
  (counted with :func:`proxy_core.estimate_text_tokens`): long sections are split with some
  overlap, tiny ones merged into the passage before them.

The normalised text is each heading on a line of its own followed by its section's body, blocks
separated by a blank line, so every section's and passage's ``text`` is exactly
``document.text[char_start:char_end]`` (a merged passage therefore includes the heading of the tiny
section it absorbed). Bodies are plain text with the light Markdown conventions an LLM reads well
whatever the source format: fenced code blocks, ``- `` list items, inline code in backticks, and a
link's text followed by its URL in brackets.

Where things are: the data types in ``_model``; :func:`walk` in ``_walk``; :func:`parse_document`,
which picks a parser by suffix and assembles the document, in ``_document``; one module per format
(``_markdown``, ``_rst``, ``_html``, ``_text``, ``_pdf``), each turning text into headed blocks;
the decoding and placeholders they share in ``_normalise``; :func:`chunk` in ``_chunk``. The
Markdown block syntax is shared with the Slack renderer in :mod:`bot.markdown_syntax`.
"""

from __future__ import annotations

from bot.docs.parse._chunk import chunk
from bot.docs.parse._document import SUPPORTED_SUFFIXES, parse_document, read_source
from bot.docs.parse._model import Document, Passage, Section, passage_hash, slugify
from bot.docs.parse._pdf import pdf_support
from bot.docs.parse._walk import MAX_FILE_BYTES, MAX_PDF_BYTES, walk

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
    "read_source",
    "slugify",
    "walk",
]
