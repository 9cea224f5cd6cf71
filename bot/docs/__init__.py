"""Docs ingestion: find a docs folder's files, parse them, and cut them into passages to embed.

Its public names are :mod:`bot.docs.parse`'s, re-exported whole: that package's ``__all__`` is the one
list of them."""

from __future__ import annotations

from bot.docs import parse
from bot.docs.parse import *  # noqa: F403

__all__ = list(parse.__all__)
