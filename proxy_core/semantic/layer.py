"""The semantic cache: a :class:`~proxy_core.cache.CacheLayer` that also catches rephrasings.

Entries live in the store, shared by every replica; each replica keeps an in-process
:class:`VectorIndex` of them (no answers, just what the decision needs). At start-up it takes the
change log's head, loads every entry, then a daemon thread tails the log so an entry stored by one
replica is a hit on another within about a second — without scanning keys on the request path.

A lookup: exact match on the normalised question within the scope (no embedding needed), else the
nearest cached questions of the scope, judged by :func:`~proxy_core.semantic.decision.decide` with
the hit policy (the near-miss guard's vetoes and the calibrated probability that the answer
serves). The answer is fetched from the store only for a hit, and then kept in a bounded
in-process copy (``answer_copies``), so a hot answer costs no store round trip: the copy goes
whenever the entry leaves the index (a delete by any replica arrives through the change log,
within one round trip of it), and the hits it serves are reported to the store in batches by the
sync thread, which keeps the store's LRU order (eviction under ``max_entries``) true.

A put is written behind: this replica's index and copy take the new answer at once (so it is a
hit here immediately) and a writer thread stores it, so the request does not wait for the write.
The store says where in the change log the write went; when nothing came between, the sync
thread steps over those events instead of reading its own put (and evictions) back.
Deletes wait for a write in progress and cancel queued ones, so nothing deleted comes back. A
write that fails takes the entry out of this replica's index too (it never reached the others).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

from proxy_core.cache import CachedAnswer, CacheDecision, CacheScope, normalize_question, well_formed
from proxy_core.clock import Clock
from proxy_core.errors import PennyError, StoreError
from proxy_core.log import get_logger
from proxy_core.semantic.decision import Candidate, HitPolicy, decide
from proxy_core.semantic.embedders import Embedder
from proxy_core.semantic.index import F32, IndexedEntry, VectorIndex
from proxy_core.stores.base import SemanticChange, SemanticEntry, Store

__all__ = ["SemanticCache"]

# How many of this replica's stored writes it remembers for stepping over in the change log.
_OWN_WRITES_KEPT = 1024
# Longer questions are matched exactly only: never embedded, never compared word by word (the
# guard's alignment grows with the product of the two questions' words). The longest question in
# the labelled pair files has 354 characters.
MAX_SEMANTIC_CHARS = 2_000


class SemanticCache:
    """Exact + semantic answer cache, scoped, guarded, shared through the store."""

    def __init__(
        self,
        store: Store,
        embedder: Embedder,
        *,
        ttl_s: float,
        max_entries: int,
        policy: HitPolicy,
        top_k: int = 4,
        clock: Clock = time.time,
        sync_block_s: float = 0.25,
        own_writes_pause_s: float = 0.02,
        sweep_every_s: float = 60.0,
        ivf_min: int = 5_000,
        answer_copies: int = 2_048,
        max_semantic_chars: int = MAX_SEMANTIC_CHARS,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.policy = policy
        self.top_k = top_k
        self.max_semantic_chars = max_semantic_chars
        self.index = VectorIndex(embedder.dims, ivf_min=ivf_min)
        self._clock = clock
        self._sync_block_s = sync_block_s
        self._own_writes_pause_s = own_writes_pause_s
        self._sweep_every_s = sweep_every_s
        self._cursor: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Lock order, outer first: _sync_lock (applying the change log) and _write_lock (writes and
        # deletes reaching the store) are never held together; _pending_cv and _answers_lock are
        # taken inside _write_lock, each briefly and never one inside the other; the index's own
        # lock (VectorIndex) is innermost. No thread takes a lock listed before one it holds.
        # _own_lock guards _own_writes alone and is held only briefly, with no other lock taken inside.
        self._sync_lock = threading.Lock()
        # This replica's stored writes by the log cursor just before them: (the cursor at their last
        # event, the entry as indexed, the ids evicted). The sync thread steps over them.
        self._own_writes: dict[str, tuple[str, SemanticEntry, list[str]]] = {}
        self._own_lock = threading.Lock()
        # Answers of recently served or stored entries (LRU, at most answer_copies), and the ids
        # served from them since the last report to the store.
        self._answer_copies = answer_copies
        self._answers: OrderedDict[str, CachedAnswer] = OrderedDict()
        self._served: dict[str, None] = {}
        self._answers_lock = threading.Lock()
        # Write-behind: entries waiting for the writer thread, in order. The write lock is held by
        # the writer while it takes and writes one, and by deletes, so they never interleave.
        self._pending: OrderedDict[str, SemanticEntry] = OrderedDict()
        self._pending_cv = threading.Condition()
        self._writing = False
        self._writes_done = 0
        self._write_lock = threading.Lock()
        self._writer: threading.Thread | None = None
        self._writer_stop = False
        self._log = get_logger()
        # Vectors of different embedders are not comparable: each embedder gets scopes of its own.
        self._tag = hashlib.blake2b(embedder.name.encode(), digest_size=4).hexdigest()

    def scope_id(self, scope: CacheScope) -> str:
        return f"{scope.id()}.{self._tag}"

    # -- lifecycle ------------------------------------------------------------------------------

    def load(self) -> int:
        """(Re)load every entry from the store; returns how many. Changes made meanwhile are kept:
        the log's head is taken first and replayed from by :meth:`sync_once`."""
        with self._sync_lock:
            head = self.store.semantic_changes(None).cursor
            # One matrix sized from the store's count, handed to the index in one piece: loading
            # 100k entries then costs about twice their vectors at the peak, not a growth series.
            matrix = np.empty((max(1, self.store.semantic_count()), self.index.dims), dtype=np.float32)
            rows: list[tuple[str, str, str, str, str, float]] = []
            for entry in self.store.semantic_scan():
                vector = self._vector_of(entry)
                if vector is None:
                    continue
                if len(rows) == len(matrix):
                    matrix = np.concatenate([matrix, np.empty_like(matrix)])
                matrix[len(rows)] = vector
                rows.append(_row(entry))
            self.index.clear()
            self._forget_answers(None)
            self.index.upsert_many(rows, matrix[: len(rows)])
            self._cursor = head
            with self._own_lock:
                self._own_writes.clear()
            return len(rows)

    def start(self) -> None:
        """Load, then follow other replicas' changes from a daemon thread. If the store is down,
        the thread keeps trying to load; until then lookups simply miss."""
        try:
            self.load()
        except StoreError as exc:
            self._log.warning("cache_load_failed", error=str(exc))
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._follow, name="penny-cache-sync", daemon=True)
            self._thread.start()
        if self._writer is None:
            self._writer_stop = False
            self._writer = threading.Thread(target=self._write_behind, name="penny-cache-writer", daemon=True)
            self._writer.start()

    def close(self) -> None:
        """Stop following changes, finish the queued writes, and wait for both threads to leave
        (the sync thread after its current read, at most ``sync_block_s``), so the store can be
        closed safely afterwards."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._sync_block_s + 5.0)
            self._thread = None
        if self._writer is not None:
            with self._pending_cv:
                self._writer_stop = True
                self._pending_cv.notify_all()
            self._writer.join(timeout=10.0)
            self._writer = None
        try:
            self.report_served()
        except StoreError as exc:
            self._log.warning("cache_touch_failed", error=str(exc))

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every queued write has reached the store; False if ``timeout_s`` passed first.
        (Waits for the writer thread, not for time to pass: it returns as soon as the queue drains.)"""
        deadline = time.monotonic() + timeout_s
        with self._pending_cv:
            while self._pending or self._writing:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._pending_cv.wait(left)
        return True

    def report_served(self) -> int:
        """Tell the store which entries were served from in-process answers since the last report
        (they become most recently used there). Called by the sync thread; returns how many.

        A hit came after every put queued before it, so while writes are queued the report waits
        for the last of them, which carries it (``_store_put``)."""
        if not self._served:  # the common case, every sync: no lock needed to know it
            return 0
        with self._write_lock:
            with self._pending_cv:
                if self._pending:
                    return 0
            with self._answers_lock:
                served, self._served = list(self._served), {}
            try:
                return self.store.semantic_touch(served) if served else 0
            except BaseException:
                with self._answers_lock:
                    self._served.update(dict.fromkeys(served))  # report them later
                raise

    def sync_once(self, block_s: float = 0.0) -> int:
        """Report served entries, then apply the store's changes since the last sync; returns how
        many changes were applied."""
        self.report_served()
        if self._cursor is None:  # never loaded (the store was down at start-up)
            return self.load()
        with self._sync_lock:
            self._step_over_own_writes()
            batch = self.store.semantic_changes(self._cursor, block_s=block_s)
            if batch.reset:
                self._log.warning("cache_sync_reset")
                reload = True
            else:
                reload = False
                for change in batch.changes:
                    self._apply(change)
                self._cursor = batch.cursor
        if reload:
            return self.load()
        return len(batch.changes)

    def _wait_for_changes(self, block_s: float) -> None:
        """Wait, at most ``block_s``, until the log may hold events this replica has not applied:
        events of its own writes wake the wait, are stepped over, and it waits on — after a pause
        of ``own_writes_pause_s``, so that a replica writing steadily (a miss, a write) wakes this
        thread once per pause, not once per write. Other replicas' changes then arrive up to that
        much later while this one writes."""
        deadline = time.monotonic() + block_s
        while (remaining := deadline - time.monotonic()) > 0 and not self._stop.is_set():
            cursor = self._cursor
            if cursor is None:
                return
            self.store.semantic_wait(cursor, remaining)
            self._await_write_in_flight()
            with self._sync_lock:
                if not self._step_over_own_writes():
                    return
            self._stop.wait(self._own_writes_pause_s)

    def _await_write_in_flight(self, timeout_s: float = 0.1) -> None:
        """Wait for the write being stored, if any, to finish: the change-log event that woke the
        sync thread may be its own, and the writer then says where it went."""
        with self._pending_cv:
            done = self._writes_done

            def finished() -> bool:
                return not self._writing or self._writes_done != done

            self._pending_cv.wait_for(finished, timeout=timeout_s)

    def _step_over_own_writes(self) -> bool:
        """Move the cursor past this replica's own stored writes that directly follow it (call
        with the sync lock held); True if it moved. A write is read back instead when the index no
        longer holds the entry as written (a change from elsewhere was applied meanwhile)."""
        moved = False
        while self._cursor is not None:
            with self._own_lock:
                own = self._own_writes.pop(self._cursor, None)
            if own is None:
                return moved
            through, entry, evicted = own
            known = self.index.get(entry.entry_id)
            if known is None or (known.expires_at, known.question, known.scope) != (
                entry.expires_at, entry.question, entry.scope
            ):
                return moved  # read back: the next read applies it
            for entry_id in evicted:
                self._remove(entry_id)
            self._cursor = through
            moved = True
        return moved

    def _follow(self) -> None:
        next_sweep = self._clock() + self._sweep_every_s
        while not self._stop.is_set():
            try:
                if self._cursor is not None:
                    self._wait_for_changes(self._sync_block_s)
                self.sync_once()
                if self._clock() >= next_sweep:
                    next_sweep = self._clock() + self._sweep_every_s
                    self.store.semantic_delete_where(expired=True)
            except StoreError as exc:
                if self._stop.is_set():  # the store was closed under us on shutdown
                    return
                self._log.warning("cache_sync_failed", error=str(exc))
                self._stop.wait(1.0)
            except Exception as exc:  # never let the sync thread die silently
                self._log.error("cache_sync_crashed", error=repr(exc))
                self._stop.wait(1.0)

    # -- the CacheLayer protocol ------------------------------------------------------------------

    def lookup(self, scope: CacheScope, question: str) -> CacheDecision:
        now = self._clock()
        sid = self.scope_id(scope)
        same = self.index.exact(sid, normalize_question(question), now)
        if same is not None:
            answer = self._fetch(same)
            if answer is not None:
                return CacheDecision("exact", "exact match", answer, 1.0)
        if len(question) > self.max_semantic_chars:
            return CacheDecision("miss", f"too long for a semantic match ({len(question):,} characters > "
                                         f"{self.max_semantic_chars:,}): exact match only")
        try:
            vector = self.embedder.embed([question])[0]
        except PennyError as exc:
            # With a billed embedder the user may be out of budget: exact hits still work.
            return CacheDecision("miss", f"semantic lookup unavailable ({type(exc).__name__})")
        found = self.index.nearest(sid, vector, self.top_k, now)
        decision = decide(
            question,
            [Candidate(e.question, sim, e) for e, sim in found if len(e.question) <= self.max_semantic_chars],
            policy=self.policy,
        )
        if decision.payload is not None:
            answer = self._fetch(decision.payload)
            if answer is not None:
                return CacheDecision(decision.status, decision.reason, answer, decision.similarity, vector=vector)
            return CacheDecision("miss", "matched entry expired or was invalidated", vector=vector)
        return CacheDecision("miss", decision.reason, None, decision.similarity, vector=vector)

    def put(
        self, scope: CacheScope, question: str, answer: CachedAnswer, decision: CacheDecision | None = None
    ) -> None:
        question = well_formed(question)  # stored as text: a lone surrogate cannot be encoded
        vector = decision.vector if decision is not None and decision.vector is not None else None
        if vector is None and len(question) > self.max_semantic_chars:
            vector = np.zeros(self.index.dims, dtype=np.float32)  # exact matches only: no embedding
        elif vector is None:
            vector = self.embedder.embed([question])[0]
        now = self._clock()
        entry = SemanticEntry(
            entry_id=answer.entry_id,
            scope=self.scope_id(scope),
            context=scope.context,
            question=question,
            vector=np.asarray(vector, dtype="<f4").tobytes(),
            answer=answer.to_json(),
            created_at=now,
            expires_at=now + self.ttl_s,
        )
        self.index.upsert(
            entry_id=entry.entry_id, scope=entry.scope, context=entry.context, question=question,
            normalized=normalize_question(question), vector=np.asarray(vector, dtype=np.float32),
            expires_at=entry.expires_at,
        )
        self._keep_answer(answer)
        if self._writer is None:  # not started: no writer thread, so write now
            with self._write_lock:
                self._store_put(entry)
            return
        with self._pending_cv:
            self._pending[entry.entry_id] = entry
            self._pending_cv.notify_all()

    def _write_behind(self) -> None:
        while True:
            with self._pending_cv:
                while not self._pending and not self._writer_stop:
                    self._pending_cv.wait()
                if not self._pending:
                    return  # stopped, and every queued write is done
            with self._write_lock:
                with self._pending_cv:
                    if not self._pending:
                        continue  # a delete cancelled it meanwhile
                    _, entry = self._pending.popitem(last=False)
                    self._writing = True
                try:
                    self._store_put(entry)
                except StoreError as exc:
                    self._log.warning("cache_write_failed", entry_id=entry.entry_id, error=str(exc))
                except Exception as exc:  # never let the writer die silently
                    self._log.error("cache_writer_crashed", entry_id=entry.entry_id, error=repr(exc))
                finally:
                    with self._pending_cv:
                        self._writing = False
                        self._writes_done += 1
                        self._pending_cv.notify_all()

    def _store_put(self, entry: SemanticEntry) -> None:
        """Write one entry (with the write lock held); the last queued write also reports the hits
        served since the last report, which came after it. On failure the entry leaves this
        replica too: it never reached the store, so no other replica has it."""
        served: list[str] = []
        with self._pending_cv:
            last = not self._pending
        if last:
            with self._answers_lock:
                served, self._served = list(self._served), {}
        try:
            written = self.store.semantic_write(entry, max_entries=self.max_entries, touched=served)
        except BaseException:
            with self._answers_lock:
                self._served.update(dict.fromkeys(served))  # report them later
            self._remove(entry.entry_id)
            raise
        for entry_id in written.evicted:
            self._remove(entry_id)
        if written.logged_after:
            with self._own_lock:
                self._own_writes[written.logged_after] = (written.logged_through, entry, written.evicted)
                if len(self._own_writes) > _OWN_WRITES_KEPT:  # ones the sync thread read past instead
                    del self._own_writes[next(iter(self._own_writes))]

    def _cancel_pending(self, wanted: Callable[[SemanticEntry], bool]) -> list[str]:
        """Drop queued writes of entries ``wanted`` says go (call with the write lock held)."""
        with self._pending_cv:
            gone = [entry_id for entry_id, entry in self._pending.items() if wanted(entry)]
            for entry_id in gone:
                del self._pending[entry_id]
            self._pending_cv.notify_all()
        return gone

    # -- invalidation beyond one scope --------------------------------------------------------------

    def invalidate_entry(self, entry_id: str) -> bool:
        """Forget one entry (the bot's 👎 button): gone for every replica at once."""
        return self._delete([entry_id]) > 0

    def invalidate_context(self, prefix: str) -> int:
        """Forget every entry whose context fingerprint starts with ``prefix`` (a docs re-index)."""
        with self._write_lock:
            cancelled = self._cancel_pending(lambda entry: entry.context.startswith(prefix))
            ids = self.store.semantic_delete_where(context_prefix=prefix)
        for entry_id in [*ids, *cancelled]:
            self._remove(entry_id)
        return len(ids) + len(cancelled)

    def clear(self) -> int:
        return self.invalidate_context("")

    # -- helpers ------------------------------------------------------------------------------------

    def _fetch(self, entry: IndexedEntry) -> CachedAnswer | None:
        with self._answers_lock:
            answer = self._answers.get(entry.entry_id)
            if answer is not None:
                self._answers.move_to_end(entry.entry_id)
                self._served[entry.entry_id] = None
                return answer
        stored = self.store.semantic_get(entry.entry_id, touch=True)
        if stored is None or not stored.answer:
            self._remove(entry.entry_id)
            return None
        answer = CachedAnswer.from_json(stored.answer)
        if self.index.get(entry.entry_id) is not None:  # not deleted meanwhile
            self._keep_answer(answer)
        return answer

    def _keep_answer(self, answer: CachedAnswer) -> None:
        if self._answer_copies <= 0:
            return
        with self._answers_lock:
            self._answers[answer.entry_id] = answer
            self._answers.move_to_end(answer.entry_id)
            while len(self._answers) > self._answer_copies:
                self._answers.popitem(last=False)

    def _forget_answers(self, entry_id: str | None) -> None:
        """Drop the in-process answer of ``entry_id`` (None: of every entry)."""
        with self._answers_lock:
            if entry_id is None:
                self._answers.clear()
            else:
                self._answers.pop(entry_id, None)

    def _remove(self, entry_id: str) -> None:
        self.index.remove(entry_id)
        self._forget_answers(entry_id)

    def _delete(self, ids: list[str]) -> int:
        if not ids:
            return 0
        wanted = set(ids)
        with self._write_lock:
            cancelled = self._cancel_pending(lambda entry: entry.entry_id in wanted)
            removed = self.store.semantic_delete(ids)
        for entry_id in ids:
            self._remove(entry_id)
        return removed + len(cancelled)

    def _apply(self, change: SemanticChange) -> None:
        if change.op == "delete":
            self._remove(change.entry_id)
            return
        entry = change.entry
        known = self.index.get(change.entry_id)
        if entry is not None and known is not None and (known.expires_at, known.question, known.scope) == (
            entry.expires_at, entry.question, entry.scope
        ):
            return  # this replica's own put, echoed back: already in the index, copy still good
        self._forget_answers(change.entry_id)  # a replaced entry's kept answer is stale
        vector = None if entry is None else self._vector_of(entry)
        if entry is not None and vector is not None:
            self.index.upsert_many([_row(entry)], vector[None, :])

    def _vector_of(self, entry: SemanticEntry) -> F32 | None:
        vector = np.frombuffer(entry.vector, dtype="<f4")
        if vector.shape != (self.index.dims,):
            # Written with another embedder (PENNY_EMBEDDER changed): unusable here, skip it.
            return None
        return vector.astype(np.float32, copy=False)


def _row(entry: SemanticEntry) -> tuple[str, str, str, str, str, float]:
    return (entry.entry_id, entry.scope, entry.context, entry.question, normalize_question(entry.question),
            entry.expires_at)

