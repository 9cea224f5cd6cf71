"""Wiring shared by every entry point: index the docs, open the answering service.

``penny index``, ``penny ask``, ``penny run`` (Slack or the terminal chat) and the tests build the
same objects here, so the Slack bot and the CLI can never drift apart.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from bot.answer import AnswerService
from bot.docs.index import DocsIndex, DocsIndexer, IndexReport
from bot.docs.retrieve import Retriever
from bot.settings import BotSettings
from proxy_core import (
    CachedAnswers,
    ConfigurationError,
    Embedder,
    Gateway,
    PennySettings,
    RateLimited,
    Store,
    embedder_from_spec,
    get_logger,
)

__all__ = ["INDEX_USER", "docs_embedder", "index_docs", "link_roots_problem", "open_answer_service"]

Progress = Callable[[int, int], None]


# Who pays, in the ledger, for embedding the docs with an ``openai:`` embedder.
INDEX_USER = "penny:index"
INDEX_WORKSPACE = "penny"


def docs_embedder(settings: PennySettings, gateway: Gateway | None, *, purpose: str = "index") -> Embedder:
    """The embedder of the docs index. A local one runs in process; an ``openai:`` one calls the
    API through ``gateway`` (every call metered and in the ledger): ``purpose="index"`` bills the
    embedding of the docs to ``penny:index``, ``purpose="search"`` bills a question's embedding to
    the person asking (inside :meth:`Gateway.billed_to`)."""
    if not settings.embedder.startswith("openai:"):
        return embedder_from_spec(settings.embedder)
    if gateway is None:
        raise ConfigurationError(
            f"PENNY_EMBEDDER={settings.embedder} embeds the docs with the OpenAI API, which needs "
            "OPENAI_API_KEY; set it, or use PENNY_EMBEDDER=local:wordllama (the default, no key needed)"
        )
    if purpose == "search":
        return embedder_from_spec(settings.embedder, openai_embed_fn=gateway.caller_embed_fn("search-embedding"))
    return embedder_from_spec(settings.embedder, openai_embed_fn=_waiting_out_rate_limits(
        gateway.embed_fn(INDEX_USER, INDEX_WORKSPACE), gateway.sleep))


def _waiting_out_rate_limits(embed: Callable[..., list[list[float]]], sleep: Callable[[float], None],
                             attempts: int = 20) -> Callable[..., list[list[float]]]:
    """Indexing is a batch job: when a batch is rate limited it waits as told and goes on, rather
    than fail a long run halfway (budgets and other refusals still stop it, with their message)."""

    def embed_patiently(texts: list[str], *, model: str, dimensions: int | None) -> list[list[float]]:
        for attempt in range(attempts):
            try:
                return embed(texts, model=model, dimensions=dimensions)
            except RateLimited as exc:
                if attempt == attempts - 1:
                    raise
                # At least a millisecond: a shortfall of a few millionths of a token (float rounding at
                # epoch-second timestamps) gets a wait too short to move the clock, and would retry forever.
                sleep(max(exc.retry_after, 0.001))
        raise AssertionError("unreachable")

    return embed_patiently


def link_roots_problem(link_roots: Sequence[Path]) -> str | None:
    """What is wrong with ``PENNY_DOCS_LINK_ROOTS`` (its folders that are not directories), or None."""
    missing = [str(folder) for folder in link_roots if not folder.is_dir()]
    return f"PENNY_DOCS_LINK_ROOTS: {', '.join(missing)} is not a directory" if missing else None


def index_docs(
    settings: PennySettings, store: Store, root: Path, *, progress: Progress | None = None,
    gateway: Gateway | None = None, allow_empty: bool = False, link_roots: Sequence[Path] = (),
) -> IndexReport:
    """Bring the shared docs index in line with ``root``. When the version moves, cached answers
    built on the old docs are dropped from every replica's cache. ``gateway`` embeds with an
    ``openai:`` embedder (local embedders need none). A folder with nothing to index raises
    :class:`~bot.docs.index.NoDocsFound` and changes nothing, unless ``allow_empty``.
    ``link_roots`` (``PENNY_DOCS_LINK_ROOTS``): folders outside ``root`` its symlinks may lead into."""
    if not root.is_dir():
        raise ConfigurationError(f"PENNY_DOCS_DIR: {root} is not a directory")
    too_wide = _too_wide(root)
    if too_wide:
        raise ConfigurationError(f"{root} is {too_wide}: Penny would answer from every file under it, notes and "
                                 "keys included. Point it at the docs folder. Nothing was changed.")
    problem = link_roots_problem(link_roots)
    if problem:
        raise ConfigurationError(problem)
    embedder = docs_embedder(settings, gateway)
    before = DocsIndex.load(store).version
    indexer = DocsIndexer(store, embedder.embed, embedder_name=embedder.name)
    report = indexer.index(root, progress=progress, allow_empty=allow_empty, link_roots=link_roots)
    if report.version != before and before:
        gone = CachedAnswers(store).forget(f"docs:v{before}|")
        get_logger().info("docs_reindexed", version=report.version, cache_entries_dropped=gone)
    return report


def _too_wide(root: Path) -> str | None:
    """What ``root`` is, if it is no docs folder but the whole filesystem or a home folder (a typo
    or a slip: ``penny index /``, ``penny index ~``)."""
    resolved = root.resolve()
    if resolved == Path(resolved.anchor):
        return "the whole filesystem"
    try:
        home = Path.home().resolve()
    except (RuntimeError, KeyError):  # no home folder to compare with
        return None
    return "your home folder" if resolved == home else None


def open_answer_service(settings: BotSettings, store: Store, gateway: Gateway | None) -> AnswerService:
    """The answering service over the shared index (``gateway`` None: extractive answers only)."""
    embedder = docs_embedder(settings, gateway, purpose="search")
    index = DocsIndex.load(store)
    built_with = index.snapshot.embedder
    if index.snapshot.passages and built_with != embedder.name:
        raise ConfigurationError(
            f"PENNY_EMBEDDER is {embedder.name!r}, but the docs index was built with {built_with!r}, whose vectors "
            "it cannot search: run `penny index` to embed the docs again, or set PENNY_EMBEDDER back")
    return AnswerService(index, Retriever(index, embedder.embed, embedder_name=embedder.name), gateway,
                         docs_base_url=settings.docs_base_url)
