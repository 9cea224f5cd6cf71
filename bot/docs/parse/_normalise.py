"""Text handling every format parser shares: decoding any file's bytes, tidying a body, and the
placeholders an inline pass uses to set text aside (code, URLs) while it strips markup."""

from __future__ import annotations

import codecs
import re

__all__ = ["CONTROL_CHARS", "PLACEHOLDER", "collapse", "decode", "replace_overlong_charrefs", "restore", "tidy"]

CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
# "\x00N\x00" stands for the N-th value an inline pass set aside; decoding removed every real \x00.
PLACEHOLDER = re.compile(r"\x00(\d+)\x00")
# A decimal character reference of more digits than the last character's (U+10FFFF is 1114111).
_OVERLONG_CHARREF = re.compile(r"&#0*+[0-9]{8,}+;?")
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?([A-Za-z0-9_.:-]+)""", re.IGNORECASE)


def decode(raw: bytes, *, html_charset: bool) -> str:
    """Text of a file in any encoding; newlines normalised, control characters gone. Raises
    ``ValueError`` for a file that is not text at all (NUL bytes anywhere, which no text file in an
    8-bit encoding or UTF-8 has: an image or an archive named ``.md``), which would otherwise be
    indexed as garbage and quoted in answers. Not UTF-8: the charset an HTML page declares (a text
    encoding Python knows), else UTF-8 with the odd bad byte replaced when the file is mostly
    UTF-8 (one stray byte must not turn every accent into mojibake), else Windows-1252 (a superset
    of Latin-1 for text, and what such files mostly are)."""
    if raw.startswith(codecs.BOM_UTF8):
        text = raw[3:].decode("utf-8", "replace")
    elif raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        text = raw.decode("utf-16", "replace")
    elif b"\x00" in raw:
        raise ValueError("not a text file (it has NUL bytes)")
    else:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            declared = _declared(raw) if html_charset else None
            if declared is not None:
                text = declared
            else:
                utf8 = raw.decode("utf-8", "replace")
                bad = utf8.count("\ufffd")
                good = sum(1 for ch in utf8 if ch > "\x7f") - bad
                text = utf8 if good > bad else raw.decode("cp1252", "replace")
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\f", "\n")
    return CONTROL_CHARS.sub("", text)


def _declared(raw: bytes) -> str | None:
    """``raw`` decoded in the charset its ``<meta>`` declares; None when it declares none, or one that
    is not a text encoding Python has (``base64`` is a codec, but not of text)."""
    declared = _META_CHARSET.search(raw[:4096])
    if not declared:
        return None
    try:
        return raw.decode(codecs.lookup(declared.group(1).decode("ascii")).name, "replace")
    except (LookupError, ValueError):  # not a text encoding; or one that fails even with "replace" (idna)
        return None


def replace_overlong_charrefs(text: str) -> str:
    """``text`` with each decimal character reference too long to name a character replaced by
    U+FFFD, as ``html.unescape`` replaces any past U+10FFFF: it reads them as integers, and Python
    refuses to read one of over 4,300 digits (a ``ValueError`` that lost the whole page)."""
    return _OVERLONG_CHARREF.sub("\ufffd", text)


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
