"""The in-process vector index behind the semantic cache.

Vectors are L2-normalised float32, partitioned by cache scope: a lookup never sees another scope.
A scope is searched exactly (one matrix–vector product over its rows) while it is small. Once it
holds ``ivf_min`` vectors it becomes an inverted-file index: vectors are clustered around
``√n`` centroids (k-means on a sample) and stored contiguously per cluster, and a lookup scores
the centroids, then only the ``nprobe`` best clusters. It is rebuilt when the scope has grown 4×
since it was last clustered, so the clustering keeps up with the data.

Everything is numpy: no index library won our benchmark by enough to justify a native dependency
(see README, "Semantic cache"). The index is thread-safe behind one lock; searches take
microseconds, so contention is not a concern at a Slack bot's request rates.
"""

from __future__ import annotations

import math
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["IndexedEntry", "ScopeIndex", "VectorIndex"]

F32 = npt.NDArray[np.float32]


class _Block:
    """Rows of vectors and their labels, kept dense by moving the last row into a removed one."""

    __slots__ = ("labels", "mat", "n")

    def __init__(self, dims: int, capacity: int = 8) -> None:
        self.mat: F32 = np.empty((capacity, dims), dtype=np.float32)
        self.labels = np.empty(capacity, dtype=np.int64)
        self.n = 0

    def append(self, label: int, vector: F32) -> int:
        if self.n == len(self.labels):
            grow = max(8, self.n)
            self.mat = np.concatenate([self.mat, np.empty((grow, self.mat.shape[1]), dtype=np.float32)])
            self.labels = np.concatenate([self.labels, np.empty(grow, dtype=np.int64)])
        self.mat[self.n] = vector
        self.labels[self.n] = label
        self.n += 1
        return self.n - 1

    def remove(self, row: int) -> int | None:
        """Remove ``row``; returns the label that moved into it, if any."""
        last = self.n - 1
        moved: int | None = None
        if row != last:
            self.mat[row] = self.mat[last]
            self.labels[row] = self.labels[last]
            moved = int(self.labels[row])
        self.n = last
        if self.n < len(self.labels) // 4 and len(self.labels) > 64:  # give memory back
            keep = max(8, self.n * 2)
            self.mat = self.mat[:keep].copy()
            self.labels = self.labels[:keep].copy()
        return moved

    def vectors(self) -> F32:
        return self.mat[: self.n]


class ScopeIndex:
    """The vectors of one scope: exact while small, inverted-file once large."""

    def __init__(self, dims: int, *, ivf_min: int = 5_000, nprobe: int = 8, seed: int = 0) -> None:
        self.dims = dims
        self.ivf_min = ivf_min
        self.nprobe = nprobe
        self._rng = np.random.default_rng(seed)
        self._blocks: list[_Block] = [_Block(dims)]
        self._centroids: F32 | None = None
        self._where: dict[int, tuple[int, int]] = {}  # label -> (block, row)
        self._clustered_n = 0

    def __len__(self) -> int:
        return len(self._where)

    @property
    def clustered(self) -> bool:
        return self._centroids is not None

    def add(self, label: int, vector: F32) -> None:
        if label in self._where:
            self.remove(label)
        block = 0 if self._centroids is None else int(np.argmax(self._centroids @ vector))
        row = self._blocks[block].append(label, vector)
        self._where[label] = (block, row)
        n = len(self._where)
        if n >= self.ivf_min and (self._centroids is None or n >= 4 * self._clustered_n):
            self._cluster(*self._all())

    def add_many(self, labels: Sequence[int], vectors: F32) -> None:
        """Bulk insert (start-up load). A scope that ends up large is clustered once, straight from
        ``vectors``, instead of growing one block row by row: that keeps peak memory near 2× the data."""
        if self._centroids is None and len(self._where) + len(labels) >= self.ivf_min:
            if self._where:
                old = self._blocks[0]
                labels = [*(int(x) for x in old.labels[: old.n]), *labels]
                vectors = np.concatenate([old.vectors(), vectors])
            self._cluster(np.asarray(labels, dtype=np.int64), vectors)
            return
        for label, vector in zip(labels, vectors, strict=True):
            self.add(label, vector)

    def remove(self, label: int) -> bool:
        loc = self._where.pop(label, None)
        if loc is None:
            return False
        block, row = loc
        moved = self._blocks[block].remove(row)
        if moved is not None:
            self._where[moved] = (block, row)
        return True

    def search(self, query: F32, k: int) -> list[tuple[int, float]]:
        """The ``k`` labels with the highest cosine similarity to ``query``, best first."""
        if not self._where:
            return []
        if self._centroids is None:
            blocks = [self._blocks[0]]
        else:
            centroid_scores = self._centroids @ query
            probe = min(self.nprobe, len(self._blocks))
            best = np.argpartition(-centroid_scores, probe - 1)[:probe]
            blocks = [self._blocks[int(b)] for b in best]
        live = [b for b in blocks if b.n]
        scores = np.concatenate([b.vectors() @ query for b in live]) if len(live) > 1 else live[0].vectors() @ query
        labels = np.concatenate([b.labels[: b.n] for b in live]) if len(live) > 1 else live[0].labels
        take = min(k, len(scores))
        top = np.argpartition(-scores, take - 1)[:take]
        top = top[np.argsort(-scores[top])]
        return [(int(labels[i]), float(scores[i])) for i in top]

    def _all(self) -> tuple[npt.NDArray[np.int64], F32]:
        return (np.concatenate([b.labels[: b.n] for b in self._blocks]),
                np.concatenate([b.vectors() for b in self._blocks]))

    def _cluster(self, labels: npt.NDArray[np.int64], vectors: F32) -> None:
        n = len(labels)
        nlist = max(1, int(math.sqrt(n)))
        centroids = _kmeans(vectors, nlist, self._rng)
        assign = _assign(vectors, centroids)
        blocks = [_Block(self.dims, capacity=max(8, int(np.count_nonzero(assign == c)) + 8)) for c in range(nlist)]
        where: dict[int, tuple[int, int]] = {}
        for label, vector, c in zip(labels, vectors, assign, strict=True):
            where[int(label)] = (int(c), blocks[int(c)].append(int(label), vector))
        self._blocks, self._where, self._centroids, self._clustered_n = blocks, where, centroids, n


def _assign(vectors: F32, centroids: F32, chunk: int = 8192) -> npt.NDArray[np.int64]:
    out = np.empty(len(vectors), dtype=np.int64)
    for start in range(0, len(vectors), chunk):
        out[start : start + chunk] = np.argmax(vectors[start : start + chunk] @ centroids.T, axis=1)
    return out


def _kmeans(vectors: F32, k: int, rng: np.random.Generator, iterations: int = 8, sample: int = 64) -> F32:
    """Spherical k-means on a sample of ``sample`` points per centroid (enough to place them)."""
    pick = rng.choice(len(vectors), size=min(len(vectors), k * sample), replace=False)
    points = vectors[pick]
    centroids = points[rng.choice(len(points), size=k, replace=False)].copy()
    for _ in range(iterations):
        assign = _assign(points, centroids)
        sums = np.zeros_like(centroids)
        np.add.at(sums, assign, points)
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        empty = norms[:, 0] == 0
        sums[~empty] /= norms[~empty]
        sums[empty] = points[rng.choice(len(points), size=int(empty.sum()))]  # reseed empty clusters
        centroids = sums.astype(np.float32)
    return centroids


@dataclass(frozen=True, slots=True)
class IndexedEntry:
    """What the index knows of a cached entry: enough to decide, not the answer itself."""

    label: int
    entry_id: str
    scope: str
    context: str
    question: str
    key: int  # hash of the normalised question: exact matches without keeping a second string
    expires_at: float


class VectorIndex:
    """Every scope's vectors plus per-scope exact lookup by normalised question."""

    def __init__(self, dims: int, *, ivf_min: int = 5_000, nprobe: int = 8) -> None:
        self.dims = dims
        self._ivf_min = ivf_min
        self._nprobe = nprobe
        self._lock = threading.RLock()
        self._scopes: dict[str, ScopeIndex] = {}
        self._entries: dict[int, IndexedEntry] = {}
        self._labels: dict[str, int] = {}  # entry_id -> label
        self._exact: dict[tuple[str, int], int] = {}  # (scope, hash of normalised question) -> label
        self._next_label = 0

    def __len__(self) -> int:
        return len(self._entries)

    def upsert(
        self, *, entry_id: str, scope: str, context: str, question: str, normalized: str,
        vector: F32, expires_at: float,
    ) -> None:
        self.upsert_many([(entry_id, scope, context, question, normalized, expires_at)], vector[None, :])

    def upsert_many(self, rows: list[tuple[str, str, str, str, str, float]], vectors: F32) -> None:
        """Insert or replace entries: rows of (entry_id, scope, context, question, normalized, expires_at)."""
        if vectors.shape != (len(rows), self.dims):
            raise ValueError(f"expected vectors of shape ({len(rows)}, {self.dims}), got {vectors.shape}")
        with self._lock:
            by_scope: dict[str, tuple[list[int], list[int]]] = {}
            for i, (entry_id, scope, context, question, normalized, expires_at) in enumerate(rows):
                self._remove(entry_id)
                label = self._next_label
                self._next_label += 1
                # Many entries share a scope and a context: keep one copy of each string.
                scope, context = sys.intern(scope), sys.intern(context)
                entry = IndexedEntry(label, entry_id, scope, context, question, hash(normalized), expires_at)
                self._entries[label] = entry
                self._labels[entry_id] = label
                self._exact[(scope, entry.key)] = label
                labels, positions = by_scope.setdefault(scope, ([], []))
                labels.append(label)
                positions.append(i)
            for scope, (labels, positions) in by_scope.items():
                index = self._scopes.get(scope)
                if index is None:
                    index = self._scopes[scope] = ScopeIndex(self.dims, ivf_min=self._ivf_min, nprobe=self._nprobe)
                index.add_many(labels, vectors[positions])

    def remove(self, entry_id: str) -> IndexedEntry | None:
        with self._lock:
            return self._remove(entry_id)

    def clear(self) -> None:
        with self._lock:
            self._scopes.clear()
            self._entries.clear()
            self._labels.clear()
            self._exact.clear()

    def get(self, entry_id: str) -> IndexedEntry | None:
        with self._lock:
            label = self._labels.get(entry_id)
            return None if label is None else self._entries[label]

    def exact(self, scope: str, normalized: str, now: float) -> IndexedEntry | None:
        with self._lock:
            label = self._exact.get((scope, hash(normalized)))
            entry = None if label is None else self._entries[label]
            return entry if entry is not None and entry.expires_at > now else None

    def nearest(self, scope: str, query: F32, k: int, now: float) -> list[tuple[IndexedEntry, float]]:
        """Up to ``k`` live entries of ``scope`` closest to ``query``, best first."""
        with self._lock:
            index = self._scopes.get(scope)
            if index is None:
                return []
            # Ask for a few extra so expired entries awaiting deletion do not hide live ones.
            found = index.search(query, k + 4)
            out = [(self._entries[label], score) for label, score in found]
        return [(e, s) for e, s in out if e.expires_at > now][:k]

    def entries(self) -> list[IndexedEntry]:
        with self._lock:
            return list(self._entries.values())

    def _remove(self, entry_id: str) -> IndexedEntry | None:
        label = self._labels.pop(entry_id, None)
        if label is None:
            return None
        entry = self._entries.pop(label)
        if self._exact.get((entry.scope, entry.key)) == label:
            del self._exact[(entry.scope, entry.key)]
        index = self._scopes[entry.scope]
        index.remove(label)
        if not len(index):
            del self._scopes[entry.scope]
        return entry
