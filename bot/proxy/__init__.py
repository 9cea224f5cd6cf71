"""``penny proxy``: Penny's cost controls behind an OpenAI-compatible endpoint, for any LLM client.

Keys map a bearer token (``pk-…``) to a Slack user and workspace (:mod:`bot.proxy.keys`); the WSGI
app (:mod:`bot.proxy.app`) serves OpenAI's wire format through the same :class:`proxy_core.Gateway`
the bot uses.
"""

from __future__ import annotations

from bot.proxy.app import ProxyApp
from bot.proxy.keys import KeyRing, ProxyKey

__all__ = ["KeyRing", "ProxyApp", "ProxyKey"]
