"""Text handling every format parser shares: decoding any file's bytes, tidying a body, and the
placeholders an inline pass uses to set text aside (code, URLs) while it strips markup."""

from __future__ import annotations

import codecs
import contextlib
import re

__all__ = ["CONTROL_CHARS", "PLACEHOLDER", "collapse", "decode", "restore", "tidy"]

CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
# "\x00N\x00" stands for the N-th value an inline pass set aside; decoding removed every real \x00.
PLACEHOLDER = re.compile(r"\x00(\d+)\x00")
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?([A-Za-z0-9_.:-]+)""", re.IGNORECASE)


def decode(raw: bytes, *, html_charset: bool) -> str:
    """Text of a file in any encoding; newlines normalised, control characters gone. Raises
    ``ValueError`` for a file that is not text at all (NUL bytes, which no text file in an 8-bit
    encoding or UTF-8 has: an image or an archive named ``.md``), which would otherwise be indexed
    as garbage and quoted in answers. Not UTF-8 and not declared otherwise: Windows-1252 (a superset
    of Latin-1 for text, and what such files mostly are)."""
    if raw.startswith(codecs.BOM_UTF8):
        text = raw[3:].decode("utf-8", "replace")
    elif raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        text = raw.decode("utf-16", "replace")
    elif b"\x00" in raw[:8192]:
        raise ValueError("not a text file (it has NUL bytes)")
    else:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            encoding = "cp1252"  # HTML's default too, when a page declares none
            declared = _META_CHARSET.search(raw[:4096]) if html_charset else None
            if declared:
                with contextlib.suppress(LookupError):  # an unknown charset: Windows-1252
                    encoding = codecs.lookup(declared.group(1).decode("ascii")).name
            text = raw.decode(encoding, "replace")
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\f", "\n")
    return CONTROL_CHARS.sub("", text)


def tidy(body: str) -> str:
    """Trailing spaces and runs of blank lines removed; no blank lines at either end."""
    body = "\n".join(line.rstrip() for line in body.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", body).strip()


def collapse(text: str) -> str:
    """Every run of whitespace one space, none at either end."""
    return " ".join(text.split())


def restore(text: str, stash: list[str]) -> str:
    """Put back the values an inline pass set aside (a value may hold an earlier placeholder)."""
    return PLACEHOLDER.sub(lambda m: restore(stash[int(m.group(1))], stash), text)
