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
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["IndexedEntry", "ScopeIndex", "VectorIndex"]

F32 = npt.NDArray[np.float32]


class _Block:
    """Rows of vectors and their labels, kept dense by moving the last row into a removed one.

    A quantised block keeps each row as int8 with one float32 scale (a quarter of the memory; cosines
    move by about 1e-3); scoring widens only this block's rows.
    """

    __slots__ = ("labels", "mat", "n", "scales")

    def __init__(self, dims: int, capacity: int = 8, *, quantized: bool = False) -> None:
        self.mat: npt.NDArray[Any] = np.empty((capacity, dims), dtype=np.int8 if quantized else np.float32)
        self.scales: F32 | None = np.empty(capacity, dtype=np.float32) if quantized else None
        self.labels = np.empty(capacity, dtype=np.int64)
        self.n = 0

    def append(self, label: int, vector: F32) -> int:
        if self.n == len(self.labels):
            self._resize(len(self.labels) + max(8, self.n))
        self.labels[self.n] = label
        if self.scales is None:
            self.mat[self.n] = vector
        else:
            scale = _scale(vector[None, :])[0]
            self.mat[self.n] = np.round(vector / scale)
            self.scales[self.n] = scale
        self.n += 1
        return self.n - 1

    def fill(self, labels: npt.NDArray[np.int64], vectors: F32) -> None:
        """Set the block's rows in bulk (it must be empty and large enough)."""
        count = len(labels)
        self.labels[:count] = labels
        if self.scales is None:
            self.mat[:count] = vectors
        else:
            scales = _scale(vectors)
            self.mat[:count] = np.round(vectors / scales[:, None])
            self.scales[:count] = scales
        self.n = count

    def remove(self, row: int) -> int | None:
        """Remove ``row``; returns the label that moved into it, if any."""
        last = self.n - 1
        moved: int | None = None
        if row != last:
            self.mat[row] = self.mat[last]
            self.labels[row] = self.labels[last]
            if self.scales is not None:
                self.scales[row] = self.scales[last]
            moved = int(self.labels[row])
        self.n = last
        if self.n < len(self.labels) // 4 and len(self.labels) > 64:  # give memory back
            self._resize(max(8, self.n * 2))
        return moved

    def scores(self, query: F32) -> F32:
        if self.scales is None:
            return self.mat[: self.n] @ query
        return (self.mat[: self.n].astype(np.float32) @ query) * self.scales[: self.n]

    def vectors(self) -> F32:
        if self.scales is None:
            return self.mat[: self.n]
        return self.mat[: self.n].astype(np.float32) * self.scales[: self.n, None]

    def _resize(self, capacity: int) -> None:
        keep = min(self.n, capacity)
        mat = np.empty((capacity, self.mat.shape[1]), dtype=self.mat.dtype)
        mat[:keep] = self.mat[:keep]
        labels = np.empty(capacity, dtype=np.int64)
        labels[:keep] = self.labels[:keep]
        self.mat, self.labels = mat, labels
        if self.scales is not None:
            scales = np.empty(capacity, dtype=np.float32)
            scales[:keep] = self.scales[:keep]
            self.scales = scales


def _scale(vectors: F32) -> F32:
    peak = np.abs(vectors).max(axis=1)
    return np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)


class ScopeIndex:
    """The vectors of one scope: exact while small, inverted-file once large."""

    def __init__(self, dims: int, *, ivf_min: int = 5_000, nprobe: int = 8, seed: int = 0) -> None:
        self.dims = dims
        self.ivf_min = ivf_min
        self.nprobe = nprobe
        self._rng = np.random.default_rng(seed)
        self._blocks: list[_Block] = [_Block(dims)]
        self._centroids: F32 | None = None
        self._where: dict[int, int] = {}  # label -> block << 32 | row (no tuple per entry)
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
        self._where[label] = block << 32 | row
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
        block, row = loc >> 32, loc & 0xFFFFFFFF
        moved = self._blocks[block].remove(row)
        if moved is not None:
            self._where[moved] = loc
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
        scores = np.concatenate([b.scores(query) for b in live]) if len(live) > 1 else live[0].scores(query)
        labels = np.concatenate([b.labels[: b.n] for b in live]) if len(live) > 1 else live[0].labels
        take = min(k, len(scores))
        top = np.argpartition(-scores, take - 1)[:take]
        top = top[np.argsort(-scores[top])]
        return [(int(labels[i]), float(scores[i])) for i in top]

    def _all(self) -> tuple[npt.NDArray[np.int64], F32]:
        return (np.concatenate([b.labels[: b.n] for b in self._blocks]),
                np.concatenate([b.vectors() for b in self._blocks]))

    def _cluster(self, labels: npt.NDArray[np.int64], vectors: F32) -> None:
        """Cluster the scope. Clustered vectors are kept quantised (int8 + a scale per row): a quarter
        of the memory, and a lookup only widens the few hundred rows of the probed clusters."""
        n = len(labels)
        nlist = max(1, int(math.sqrt(n)))
        centroids = _kmeans(vectors, nlist, self._rng)
        assign = _assign(vectors, centroids)
        order = np.argsort(assign, kind="stable")
        counts = np.bincount(assign, minlength=nlist)
        blocks: list[_Block] = []
        packed = np.empty(n, dtype=np.int64)
        start = 0
        for c, count in enumerate(counts.tolist()):
            rows = order[start : start + count]
            block = _Block(self.dims, capacity=count + 8, quantized=True)
            block.fill(labels[rows], vectors[rows])
            packed[rows] = (c << 32) | np.arange(count, dtype=np.int64)
            blocks.append(block)
            start += count
        where = dict(zip(labels.tolist(), packed.tolist(), strict=True))
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
        self._exact: dict[int, int] = {}  # hash of (scope, normalised question) -> label; verified on use
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
                self._exact[hash((scope, entry.key))] = label
                labels, positions = by_scope.setdefault(scope, ([], []))
                labels.append(label)
                positions.append(i)
            for scope, (labels, positions) in by_scope.items():
                index = self._scopes.get(scope)
                if index is None:
                    index = self._scopes[scope] = ScopeIndex(self.dims, ivf_min=self._ivf_min, nprobe=self._nprobe)
                # One scope holding every row (a start-up load) takes the matrix itself, not a copy.
                index.add_many(labels, vectors if len(by_scope) == 1 else vectors[positions])

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
            key = hash(normalized)
            label = self._exact.get(hash((scope, key)))
            entry = None if label is None else self._entries[label]
            if entry is None or entry.scope != scope or entry.key != key:  # never across scopes
                return None
            return entry if entry.expires_at > now else None

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
        slot = hash((entry.scope, entry.key))
        if self._exact.get(slot) == label:
            del self._exact[slot]
        index = self._scopes[entry.scope]
        index.remove(label)
        if not len(index):
            del self._scopes[entry.scope]
        return entry
