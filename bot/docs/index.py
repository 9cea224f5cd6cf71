"""The docs index, shared by every replica through the store's blobs.

:class:`DocsIndexer` (``penny index``) walks a docs folder, parses and chunks it, embeds only the
passages it has not embedded before, and writes the result in one atomic ``blob_put_many``, made
only if the index's version is still the one it started from: of two runs at once, the one that
finishes second writes nothing and raises :class:`IndexConflict`. A folder with nothing to index
(empty, or the wrong one) raises :class:`NoDocsFound` and writes nothing, unless ``allow_empty``:
indexing it would remove every document from the index.
:class:`DocsIndex` is a replica's in-process copy: passages, their unit vectors as one matrix, and
BM25 statistics; ``refresh_if_changed`` reloads it when another process re-indexed.

Blob layout (``<ns>`` is ``docs`` by default)::

    <ns>:version          ASCII integer, bumped by every run that changed anything
    <ns>:manifest         JSON: version, embedder, dims, and per document its file hash and passage ids
    <ns>:doc:<doc path>   JSON: the document's title and its passages' metadata, in order
    <ns>:vec:<passage id> the passage's embedding, little-endian float32

A passage id is its ``content_hash`` (document path, heading path and text), so an unchanged
passage keeps its vector across runs even when an edit above it moves its offsets.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bot.docs.parse import MAX_FILE_BYTES, MAX_PDF_BYTES, Passage, chunk, parse_document, read_source, walk
from bot.docs.retrieve import Bm25
from proxy_core import BlobStore, ConfigurationError, StoreError, get_logger

__all__ = [
    "DEFAULT_NAMESPACE", "EMBED_BATCH", "DocsIndex", "DocsIndexer", "IndexConflict", "IndexReport", "IndexSnapshot",
    "NoDocsFound",
]

DEFAULT_NAMESPACE = "docs"
EMBED_BATCH = 64
_FORMAT = 1
_LOAD_ATTEMPTS = 5

Embed = Callable[[list[str]], NDArray[Any]]
Progress = Callable[[int, int], None]

_log = get_logger()


class IndexConflict(StoreError):
    """Another run wrote the index while this one was indexing; this run wrote nothing."""


class NoDocsFound(ConfigurationError):
    """The docs folder holds nothing to index (empty, a mistyped path, or one it may not read); this
    run wrote nothing. ``unreadable``: the folders and files under it that could not be read
    (``"."`` for the folder itself), whose pages may be there."""

    def __init__(
        self, root: Path, *, files: int, indexed: int, too_large: int = 0, no_text: int = 0,
        unreadable: Sequence[str] = (),
    ) -> None:
        shown = root if root.is_absolute() else f"{root} ({root.resolve()})"
        names = ", ".join(unreadable[:3]) + (f" and {len(unreadable) - 3} more" if len(unreadable) > 3 else "")
        unread = "it could not be read" if "." in unreadable else f"{names} could not be read"
        found = (f"{unread} (the warning above says why)" if unreadable and not files else
                 f"its {files} supported file(s) have no text" if files and no_text == files else
                 f"none of its {files} supported files could be read" if files else
                 f"its {too_large} supported file(s) are over the size limit ({MAX_FILE_BYTES // 2**20} MB; a PDF "
                 f"{MAX_PDF_BYTES // 2**20} MB)" if too_large else
                 "no Markdown, reStructuredText, HTML, text or PDF files")
        kept = f"; the index keeps its {indexed} documents" if indexed else ""
        super().__init__(f"no docs to index in {shown}: {found}. Nothing was changed{kept}.")
        self.root = root
        self.unreadable = tuple(unreadable)


@dataclass(frozen=True, slots=True)
class IndexReport:
    """What one indexing run did. ``passages`` counts every passage indexed after the run."""

    files: int
    passages: int
    embedded: int
    removed: int
    version: int
    seconds: float


@dataclass(frozen=True, slots=True)
class _DocEntry:
    file_hash: str
    passages: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Manifest:
    version: int
    embedder: str
    dims: int
    docs: dict[str, _DocEntry]

    def to_json(self) -> bytes:
        docs = {path: {"file_hash": d.file_hash, "passages": list(d.passages)} for path, d in sorted(self.docs.items())}
        payload = {"format": _FORMAT, "version": self.version, "embedder": self.embedder, "dims": self.dims,
                   "docs": docs}  # fmt: skip
        return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_json(cls, raw: bytes) -> _Manifest:
        data = json.loads(raw)
        if data.get("format") != _FORMAT:
            raise StoreError(f"docs index: manifest format {data.get('format')!r} is not one this Penny reads")
        docs = {path: _DocEntry(entry["file_hash"], tuple(entry["passages"])) for path, entry in data["docs"].items()}
        return cls(int(data["version"]), str(data["embedder"]), int(data["dims"]), docs)

    def passage_ids(self) -> set[str]:
        return {pid for doc in self.docs.values() for pid in doc.passages}


class _Keys:
    def __init__(self, namespace: str) -> None:
        self.version = f"{namespace}:version"
        self.manifest = f"{namespace}:manifest"
        self.doc_prefix = f"{namespace}:doc:"
        self.vec_prefix = f"{namespace}:vec:"

    def doc(self, doc_path: str) -> str:
        return self.doc_prefix + doc_path

    def vec(self, passage_id: str) -> str:
        return self.vec_prefix + passage_id


def _doc_blob(passages: Iterable[Passage], title: str) -> bytes:
    rows = [
        {"id": p.content_hash, "heading_path": list(p.heading_path), "anchor": p.anchor, "text": p.text,
         "index": p.index, "char_start": p.char_start, "char_end": p.char_end}
        for p in passages
    ]  # fmt: skip
    return json.dumps({"title": title, "passages": rows}, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _doc_passages(doc_path: str, raw: bytes) -> dict[str, Passage]:
    data = json.loads(raw)
    title = str(data["title"])
    return {
        row["id"]: Passage(
            doc_path=doc_path,
            title=title,
            heading_path=tuple(row["heading_path"]),
            anchor=row["anchor"],
            text=row["text"],
            index=int(row["index"]),
            char_start=int(row["char_start"]),
            char_end=int(row["char_end"]),
            content_hash=row["id"],
        )
        for row in data["passages"]
    }


def _read_manifest(store: BlobStore, keys: _Keys) -> _Manifest | None:
    raw = store.blob_get(keys.manifest)
    return None if raw is None else _Manifest.from_json(raw)


def _read_version(store: BlobStore, keys: _Keys) -> int:
    raw = store.blob_get(keys.version)
    return 0 if raw is None else int(raw)


class DocsIndexer:
    """Builds and updates the shared docs index, embedding only what changed.

    ``embed`` turns a batch of texts into one row per text (L2-normalised here regardless);
    ``embedder_name`` is recorded so that vectors of different embedders never mix: a new name
    re-embeds everything.
    """

    def __init__(
        self,
        store: BlobStore,
        embed: Embed,
        *,
        embedder_name: str,
        namespace: str = DEFAULT_NAMESPACE,
        batch_size: int = EMBED_BATCH,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self._store = store
        self._embed = embed
        self._embedder = embedder_name
        self._keys = _Keys(namespace)
        self._batch = batch_size

    def index(
        self,
        root: Path,
        *,
        progress: Progress | None = None,
        allow_empty: bool = False,
        link_roots: Sequence[Path] = (),
    ) -> IndexReport:
        """Bring the index in line with the files under ``root``; see the module docstring.
        ``link_roots``: folders outside ``root`` that its symlinks may lead into (any other link
        out is skipped).

        Raises :class:`NoDocsFound` when ``root`` has no document to index, unless ``allow_empty``
        (then every indexed document is removed)."""
        started = time.perf_counter()
        # The version read first: a run that finishes after this one started makes it stale.
        seen_version = self._store.blob_get(self._keys.version)
        old = _read_manifest(self._store, self._keys)
        reusable = old.docs if old is not None and old.embedder == self._embedder else {}
        reusable_ids = {pid for doc in reusable.values() for pid in doc.passages}
        too_large: list[Path] = []
        unreadable: list[Path] = []
        no_text = 0
        files = list(walk(root, too_large=too_large, unreadable=unreadable, link_roots=link_roots))
        docs: dict[str, _DocEntry] = {}
        puts: dict[str, bytes] = {}
        to_embed: dict[str, Passage] = {}
        for done, path in enumerate(files, start=1):
            doc_path = path.relative_to(root).as_posix()
            try:
                raw = read_source(path, root, link_roots)
                file_hash = hashlib.sha256(raw).hexdigest()
                known = reusable.get(doc_path)
                if known is not None and known.file_hash == file_hash:
                    docs[doc_path] = known
                else:
                    document = parse_document(path, root, raw=raw)
                    passages = _unique(chunk(document))
                    if passages:
                        docs[doc_path] = _DocEntry(document.content_hash, tuple(p.content_hash for p in passages))
                        puts[self._keys.doc(doc_path)] = _doc_blob(passages, document.title)
                        to_embed.update((p.content_hash, p) for p in passages if p.content_hash not in reusable_ids)
                    else:  # empty, blank, or only markup: nothing to answer from
                        _log.info("docs_file_skipped", path=doc_path, reason="no_text", removed=doc_path in reusable)
                        no_text += 1
            except OSError as exc:  # cannot be read now (permissions, gone): an error that may pass
                _log.warning("docs_file_skipped", path=doc_path, reason="unreadable", error=str(exc))
                unreadable.append(path)
            except ValueError as exc:  # may not be indexed as it is now: not text, a damaged PDF, a link out
                _log.warning("docs_file_skipped", path=doc_path, reason="not_indexable", error=str(exc),
                             removed=doc_path in reusable)
            except Exception as exc:  # a parser's failure on this file must not stop the others
                _log.error("docs_file_skipped", path=doc_path, reason="parse_failed",
                           error=f"{type(exc).__name__}: {str(exc)[:200]}", removed=doc_path in reusable)
            if progress is not None:
                progress(done, len(files))
        # What could not be read this time stays as it was indexed rather than vanish from answers.
        for gone in unreadable:
            prefix = gone.relative_to(root).as_posix()
            for doc_path, known in reusable.items():
                if doc_path not in docs and (doc_path == prefix or doc_path.startswith(prefix + "/") or prefix == "."):
                    docs[doc_path] = known

        if not docs and not allow_empty:
            raise NoDocsFound(root, files=len(files), indexed=len(old.docs) if old is not None else 0,
                              too_large=len(too_large), no_text=no_text,
                              unreadable=[path.relative_to(root).as_posix() for path in unreadable])

        dims = old.dims if old is not None and reusable else 0
        pending = list(to_embed.values())
        for start in range(0, len(pending), self._batch):
            batch = pending[start : start + self._batch]
            vectors = self._vectors([p.embedding_text() for p in batch])
            if dims and vectors.shape[1] != dims:
                raise ValueError(f"the embedder returned {vectors.shape[1]}-d vectors, the index holds {dims}-d ones")
            dims = vectors.shape[1]
            for passage, row in zip(batch, vectors, strict=True):
                puts[self._keys.vec(passage.content_hash)] = row.astype("<f4").tobytes()

        new_ids = {pid for doc in docs.values() for pid in doc.passages}
        old_ids = old.passage_ids() if old is not None else set()
        gone_ids = old_ids - new_ids
        deletes = [self._keys.vec(pid) for pid in sorted(gone_ids)]
        if old is not None:
            deletes += [self._keys.doc(path) for path in sorted(set(old.docs) - set(docs))]
        changed = old is None or old.embedder != self._embedder or bool(puts) or bool(deletes)
        version = (old.version if old is not None else 0) + (1 if changed else 0)
        if changed:
            manifest = _Manifest(version, self._embedder, dims, docs)
            puts[self._keys.manifest] = manifest.to_json()
            puts[self._keys.version] = str(version).encode("ascii")
            if not self._store.blob_put_many(puts, deletes, expect=(self._keys.version, seen_version)):
                raise IndexConflict(
                    "the docs index changed while this run was indexing (another `penny index`, or a "
                    "replica's first-run indexing, finished first); nothing was written: run it again"
                )
        report = IndexReport(
            files=len(docs),
            passages=len(new_ids),
            embedded=len(to_embed),
            removed=len(gone_ids),
            version=version,
            seconds=time.perf_counter() - started,
        )
        _log.info("docs_indexed", **{k: getattr(report, k) for k in report.__slots__})
        return report

    def _vectors(self, texts: list[str]) -> NDArray[np.float32]:
        vectors = np.asarray(self._embed(texts), dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(texts):
            raise ValueError(f"the embedder returned shape {vectors.shape} for {len(texts)} texts")
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        unit: NDArray[np.float32] = np.zeros_like(vectors)
        np.divide(vectors, norms, out=unit, where=norms > 0)
        return unit


def _unique(passages: list[Passage]) -> list[Passage]:
    """Passages with distinct ids (a repeated identical passage on one page is indexed once)."""
    seen: set[str] = set()
    out: list[Passage] = []
    for passage in passages:
        if passage.content_hash not in seen:
            seen.add(passage.content_hash)
            out.append(passage)
    return out


@dataclass(frozen=True, slots=True)
class IndexSnapshot:
    """One consistent version of the index: row ``i`` of ``matrix`` is ``passages[i]``'s unit vector."""

    version: int
    embedder: str
    passages: tuple[Passage, ...]
    matrix: NDArray[np.float32]  # (n, dims)
    bm25: Bm25


class DocsIndex:
    """A replica's in-process copy of the shared docs index.

    Readers take :attr:`snapshot` once per query; :meth:`refresh_if_changed` swaps in a new one,
    so a query never sees half of two versions.
    """

    def __init__(self, store: BlobStore, snapshot: IndexSnapshot, *, namespace: str = DEFAULT_NAMESPACE) -> None:
        self._store = store
        self._keys = _Keys(namespace)
        self._snapshot = snapshot

    @classmethod
    def load(cls, store: BlobStore, *, namespace: str = DEFAULT_NAMESPACE) -> DocsIndex:
        """Load the index from ``store`` (an empty index, version 0, when nothing was indexed yet)."""
        return cls(store, _load_snapshot(store, _Keys(namespace)), namespace=namespace)

    @property
    def snapshot(self) -> IndexSnapshot:
        return self._snapshot

    @property
    def version(self) -> int:
        return self._snapshot.version

    @property
    def embedder(self) -> str:
        return self._snapshot.embedder

    def __len__(self) -> int:
        return len(self._snapshot.passages)

    def refresh_if_changed(self) -> bool:
        """Reload when the shared version moved (one small read otherwise). True when reloaded."""
        if _read_version(self._store, self._keys) == self._snapshot.version:
            return False
        self._snapshot = _load_snapshot(self._store, self._keys)
        return True


def _load_snapshot(store: BlobStore, keys: _Keys) -> IndexSnapshot:
    # Writes are atomic but a load is several reads: read the version before and after, and retry
    # when a writer got in between, so the snapshot is exactly one version.
    for _ in range(_LOAD_ATTEMPTS):
        before = _read_version(store, keys)
        manifest = _read_manifest(store, keys)
        if manifest is None:
            if before == 0:
                return IndexSnapshot(0, "", (), np.zeros((0, 0), dtype=np.float32), Bm25.build([]))
            continue
        by_id: dict[str, Passage] = {}
        for key, raw in store.blob_scan(keys.doc_prefix):
            doc_path = key[len(keys.doc_prefix) :]
            if doc_path in manifest.docs:
                by_id.update(_doc_passages(doc_path, raw))
        vectors = {key[len(keys.vec_prefix) :]: raw for key, raw in store.blob_scan(keys.vec_prefix)}
        if _read_version(store, keys) != before or manifest.version != before:
            continue
        ids = [pid for _, doc in sorted(manifest.docs.items()) for pid in doc.passages]
        missing = [pid for pid in ids if pid not in by_id or pid not in vectors]
        if missing:
            raise StoreError(f"docs index version {before} is incomplete: {len(missing)} passages missing")
        passages = tuple(by_id[pid] for pid in ids)
        matrix = np.zeros((len(ids), manifest.dims), dtype=np.float32)
        for row, pid in enumerate(ids):
            matrix[row] = np.frombuffer(vectors[pid], dtype="<f4")
        return IndexSnapshot(before, manifest.embedder, passages, matrix, Bm25.build(passages))
    raise StoreError(f"docs index kept changing while loading ({_LOAD_ATTEMPTS} attempts)")
