"""What parsing produces: a :class:`Document` of :class:`Section` objects, cut into :class:`Passage` objects.

Kept apart from the format parsers so the index and retrieval (which only handle passages) and
each parser (which only produces :class:`Block` objects) import these without importing each other.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field

__all__ = ["Block", "Document", "Passage", "Section", "passage_hash", "slugify"]


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


@dataclass
class Block:
    """A heading and the body under it, as a format parser found them (the input of assembly)."""

    level: int  # 1-6; 0 for text above the first heading
    heading: str
    anchor: str | None  # an explicit id from the source, else the heading's slug is used
    body: str


def passage_hash(doc_path: str, heading_path: tuple[str, ...], text: str) -> str:
    """sha256 of a passage's identity and content: unchanged passages keep their hash across runs."""
    payload = json.dumps([doc_path, list(heading_path), text], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def slugify(heading: str) -> str:
    """GitHub's heading anchor: lowercase, punctuation dropped, each space a hyphen."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
