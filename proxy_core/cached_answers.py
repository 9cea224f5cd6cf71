"""The answer cache as an operator or a front end sees it: how many answers it holds, and
forgetting those made in a context (``penny cache clear``, or the docs bot once its docs change).

A forgotten semantic answer leaves every replica's cache within a second, through the store's
change log. Answers are forgotten by their context fingerprint's prefix, which the caller chose
when it asked (:attr:`proxy_core.ChatRequest.context`); ``""`` is every answer, the exact cache's
included. The exact cache keeps no context it can be searched by (its scope is a digest of it), and
needs none: a new context is a new scope, so a docs change never serves its old answers.
"""

from __future__ import annotations

from proxy_core.stores.base import Store

__all__ = ["CachedAnswers"]


class CachedAnswers:
    """Queries over the cached answers in ``store``, without a running cache."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def count(self) -> int:
        """How many answers are cached, semantic and exact (expired ones not yet swept included)."""
        return self._store.semantic_count() + self._store.cache_count()

    def forget(self, context_prefix: str = "") -> int:
        """Forget every cached answer whose context starts with ``context_prefix``; ``""``: all of
        them, the exact cache's too. How many went."""
        gone = len(self._store.semantic_delete_where(context_prefix=context_prefix))
        return gone + (self._store.cache_clear() if not context_prefix else 0)
