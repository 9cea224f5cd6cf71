"""Docs ingestion: find a docs folder's files, parse them, and cut them into passages to embed."""

from __future__ import annotations

from bot.docs.parse import (
    MAX_FILE_BYTES,
    SUPPORTED_SUFFIXES,
    Document,
    Passage,
    Section,
    chunk,
    parse_document,
    passage_hash,
    slugify,
    walk,
)

__all__ = [
    "MAX_FILE_BYTES",
    "SUPPORTED_SUFFIXES",
    "Document",
    "Passage",
    "Section",
    "chunk",
    "parse_document",
    "passage_hash",
    "slugify",
    "walk",
]
