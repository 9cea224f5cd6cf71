"""The semantic answer cache as an operator or a front end sees it: how many answers it holds, and
forgetting those made in a context (``penny cache clear``, or the docs bot once its docs change).

A forgotten answer leaves every replica's cache within a second, through the store's change log.
Answers are forgotten by their context fingerprint's prefix, which the caller chose when it asked
(:attr:`proxy_core.ChatRequest.context`); ``""`` is every answer.
"""

from __future__ import annotations

from proxy_core.stores.base import SemanticStore

__all__ = ["CachedAnswers"]


class CachedAnswers:
    """Queries over the cached answers in ``store``, without a running cache."""

    def __init__(self, store: SemanticStore) -> None:
        self._store = store

    def count(self) -> int:
        """How many answers are cached (expired ones not yet swept included)."""
        return self._store.semantic_count()

    def forget(self, context_prefix: str = "") -> int:
        """Forget every cached answer whose context starts with ``context_prefix`` (``""``: all of
        them); how many went."""
        return len(self._store.semantic_delete_where(context_prefix=context_prefix))
