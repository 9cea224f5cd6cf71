"""Counts in the words people read: "1 question", "2 questions", "1,024 tokens".

One helper for every line Penny prints or posts with a number of things in it (the CLI, /cost and
the App Home), so none of them says "1 questions".
"""

from __future__ import annotations

__all__ = ["counted"]


def counted(n: int, singular: str, plural: str | None = None) -> str:
    """``n`` with thousands separators and the noun in the number it takes (``plural`` defaults
    to ``singular`` + "s")."""
    return f"{n:,} {singular if n == 1 else plural or singular + 's'}"
