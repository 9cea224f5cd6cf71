"""Wiring shared by every entry point: index the docs, open the answering service.

``penny index``, ``penny ask``, ``penny run`` (Slack or the terminal chat) and the tests build the
same objects here, so the Slack bot and the CLI can never drift apart.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from bot.answer import AnswerService
from bot.docs.index import DocsIndex, DocsIndexer, IndexReport
from bot.docs.retrieve import Retriever
from proxy_core.errors import ConfigurationError
from proxy_core.gateway import Gateway
from proxy_core.log import get_logger
from proxy_core.semantic.embedders import Embedder, embedder_from_spec
from proxy_core.settings import PennySettings
from proxy_core.stores.base import Store

__all__ = ["docs_embedder", "index_docs", "open_answer_service"]

Progress = Callable[[int, int], None]


def docs_embedder(settings: PennySettings) -> Embedder:
    """The embedder for the docs index: the configured one when it is local."""
    if settings.embedder.startswith("openai:"):
        raise ConfigurationError(
            f"PENNY_EMBEDDER={settings.embedder} is not supported yet for the docs index; "
            "use local:wordllama (the default) for now"
        )
    return embedder_from_spec(settings.embedder)


def index_docs(settings: PennySettings, store: Store, root: Path, *, progress: Progress | None = None) -> IndexReport:
    """Bring the shared docs index in line with ``root``. When the version moves, cached answers
    built on the old docs are dropped from every replica's cache."""
    if not root.is_dir():
        raise ConfigurationError(f"PENNY_DOCS_DIR: {root} is not a directory")
    embedder = docs_embedder(settings)
    before = DocsIndex.load(store).version
    report = DocsIndexer(store, embedder.embed, embedder_name=embedder.name).index(root, progress=progress)
    if report.version != before and before:
        gone = store.semantic_delete_where(context_prefix=f"docs:v{before}|")
        get_logger().info("docs_reindexed", version=report.version, cache_entries_dropped=len(gone))
    return report


def open_answer_service(settings: PennySettings, store: Store, gateway: Gateway | None) -> AnswerService:
    """The answering service over the shared index (``gateway`` None: extractive answers only)."""
    embedder = docs_embedder(settings)
    index = DocsIndex.load(store)
    return AnswerService(index, Retriever(index, embedder.embed), gateway, docs_base_url=settings.docs_base_url)
