"""The store contract: what every backend (SQLite, Redis) must do, atomically and durably.

Stores hold all state that must survive a restart or be shared by replicas: idempotency claims,
token buckets, budget counters and reservations, breaker state, the exact-match cache and the
ledger. They decide nothing: the arithmetic lives in ``limiter``, ``budget`` and ``breaker``; a
store applies it atomically with its own clock (injected wall clock for SQLite, Redis ``TIME`` for
Redis unless a clock is injected for tests).

Every method raises :class:`~proxy_core.errors.StoreError` (never a driver exception) when the
backend fails or cannot be reached, within the store's timeout.

All keys a request touches are scoped by ``workspace_id`` so that, on Redis, one request's keys
share a cluster slot (``{w:<workspace>}`` hash tag) and can be changed by one script.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Literal

from proxy_core.breaker import BreakerPolicy, BreakerState, Permit
from proxy_core.budget import BudgetLine
from proxy_core.limiter import Bucket

# Seconds an owned claim's reservation keeps counting after the claim expires, so the reaper
# (every replica runs one) turns it into an unsettled charge before it could lapse.
REAP_GRACE_S = 600.0

__all__ = [
    "REAP_GRACE_S",
    "Admission",
    "AdmitCall",
    "AnswerCacheStore",
    "BlobStore",
    "BreakerRef",
    "BreakerStore",
    "BucketSpec",
    "BudgetDecision",
    "BudgetStore",
    "Claim",
    "ClaimOwner",
    "LedgerEntry",
    "LedgerStore",
    "LimitDecision",
    "LimitStore",
    "Record",
    "RecordStore",
    "RequestStore",
    "SemanticChange",
    "SemanticChanges",
    "SemanticEntry",
    "SemanticStore",
    "SemanticWrite",
    "SettleCall",
    "Store",
    "TopUp",
    "UsageSummary",
    "UsageTotals",
]

CacheStatus = Literal["miss", "exact", "semantic", "bypass"]
Kind = Literal["chat", "embedding"]


@dataclass(frozen=True, slots=True)
class Claim:
    """The outcome of claiming a request ID.

    ``claimed``: this caller owns the request and must ``complete_request`` or ``release_request``.
    ``in_flight``: another caller owns it and has not finished. ``done``: it finished; ``result``
    is the JSON text recorded by ``complete_request`` (None from ``admit`` once it is forgotten
    while the ledger still has the request's entry). ``interrupted``: an admitted call of it
    was never settled or released (its process died mid-call, see :meth:`Store.reap_interrupted`);
    it is charged at its reserved worst case and is not run again under this ID.
    """

    state: Literal["claimed", "in_flight", "done", "interrupted"]
    result: str | None = None


@dataclass(frozen=True, slots=True)
class BucketSpec:
    """Take ``cost`` tokens from the bucket stored at ``key`` (scoped by workspace)."""

    key: str
    bucket: Bucket
    cost: float


@dataclass(frozen=True, slots=True)
class LimitDecision:
    allowed: bool
    retry_after: float  # seconds until the blocking bucket can cover its cost; 0 when allowed
    remaining: tuple[float, ...]  # tokens left in each bucket after this decision
    blocking: int | None  # index into the specs of the bucket that refused


@dataclass(frozen=True, slots=True)
class BudgetDecision:
    """``ok`` or the first line that would be exceeded, with what is spent + reserved on it."""

    ok: bool
    line: BudgetLine | None = None
    spent: int = 0  # micro-dollars spent on that line
    reserved: int = 0  # micro-dollars reserved on that line by other in-flight requests


@dataclass(frozen=True, slots=True)
class Record:
    """One :meth:`RecordStore.record_put`, to be done together with something else."""

    kind: str
    key: str
    value: str
    ttl_s: float


@dataclass(frozen=True, slots=True)
class BreakerRef:
    """A circuit breaker by name, with the policy its transitions follow."""

    name: str
    policy: BreakerPolicy


@dataclass(frozen=True, slots=True)
class ClaimOwner:
    """Who an admitted request is for, kept with its claim: if the call is never settled, the
    claim becomes an unsettled ledger entry for ``user_id`` at the reserved amount. One per
    admission: an admit sent again with the same owner is the same call (a resend after a lost
    reply), admitted again rather than held off by itself."""

    user_id: str
    model: str
    kind: Kind
    started_at: float  # epoch seconds; the unsettled entry is dated by it
    source: str = ""  # the ledger entry's source (see LedgerEntry)
    # This admission's own ID: a release names it (``release_admission``), so a release that comes
    # late (replayed from the spool) never undoes a newer admission of the same request ID.
    call_id: str = field(default_factory=lambda: uuid.uuid4().hex)


@dataclass(frozen=True, slots=True)
class Admission:
    """The outcome of :meth:`Store.admit`.

    ``admitted``: the request is claimed, its tokens taken, its cost reserved, and ``permit``
    lets its first upstream attempt through. ``done`` / ``in_flight`` / ``interrupted``: the
    request ID is held (``result`` is the recorded JSON when done, None once it is forgotten and
    only the ledger entry holds the ID); nothing was taken. ``rate_limited``: ``limit``
    says which bucket and when to retry; nothing was taken. ``over_budget``: ``budget`` names the
    line; nothing was taken. ``circuit_open``: ``permit`` says when to retry; the rate-limit tokens
    were taken (as if the breaker had been asked last, which it is), nothing else is held.
    """

    state: Literal["admitted", "done", "in_flight", "interrupted", "rate_limited", "over_budget", "circuit_open"]
    result: str | None = None
    limit: LimitDecision | None = None
    budget: BudgetDecision | None = None
    permit: Permit | None = None

    @classmethod
    def held(cls, claim: Claim) -> Admission:
        """The admission of a request ``claim`` (``done``, ``in_flight`` or ``interrupted``) already holds."""
        if claim.state == "done":
            return cls("done", result=claim.result)
        return cls("interrupted" if claim.state == "interrupted" else "in_flight")


@dataclass(frozen=True, slots=True)
class TopUp:
    """The outcome of :meth:`RequestStore.top_up_admission`.

    ``topped_up``: the admission's reservation (and its owner record) now holds the new amount, or
    already held as much. ``over_budget``: ``budget`` names the line the new amount would exceed;
    nothing changed. ``not_held``: the admission's own claim no longer holds the request ID
    (settled, released, expired or reaped, or admitted again by another call); nothing changed.
    """

    state: Literal["topped_up", "over_budget", "not_held"]
    budget: BudgetDecision | None = None


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One settled call. Money in integer micro-dollars; ``ts`` is when it settled and ``day`` the
    UTC day it was charged on: the day of the budget lines it counted against (a call admitted
    before midnight that settles after is the earlier day's), else the date of ``ts``.

    ``unsettled``: the call was admitted and never settled (its process died mid-call); the entry
    charges its reserved worst case until the real settle, if it ever arrives, replaces it.
    ``source``: where the call came from besides whose it is: ``""`` for the front end's own calls
    (the Slack bot's, and every entry written before sources existed), else a name the caller gave
    (``penny proxy``: the key's ID), so a user's spend can be split by source.
    """

    request_id: str
    ts: float
    day: str
    workspace_id: str
    user_id: str
    model: str
    kind: Kind
    prompt_tokens: int
    cached_prompt_tokens: int
    completion_tokens: int
    cost_micros: int
    saved_micros: int
    cache_status: CacheStatus
    latency_ms: int
    attempts: int
    unsettled: bool = False
    source: str = ""


@dataclass(slots=True)
class UsageTotals:
    """Ledger totals. ``cost_micros`` includes unsettled charges (at their worst case);
    ``unsettled`` / ``unsettled_micros`` say how many of the requests, and how much of the cost, they are.
    ``embeddings`` says how many of the requests were embedding calls (an ``openai:`` embedder's,
    or a proxy client's): the rest are :attr:`questions`, which cache hits are a share of."""

    requests: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_micros: int = 0
    saved_micros: int = 0
    unsettled: int = 0
    unsettled_micros: int = 0
    embeddings: int = 0

    def add(self, e: LedgerEntry) -> None:
        self.requests += 1
        self.cache_hits += e.cache_status in ("exact", "semantic")
        self.prompt_tokens += e.prompt_tokens
        self.cached_prompt_tokens += e.cached_prompt_tokens
        self.completion_tokens += e.completion_tokens
        self.cost_micros += e.cost_micros
        self.saved_micros += e.saved_micros
        self.unsettled += e.unsettled
        self.unsettled_micros += e.cost_micros if e.unsettled else 0
        self.embeddings += e.kind == "embedding"

    def merge(self, more: UsageTotals) -> None:
        """Add ``more``'s totals to these: how a store sums its per-group or per-day totals into a
        summary, whatever fields the totals grow."""
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(more, f.name))

    @property
    def questions(self) -> int:
        """The chat requests: questions answered, from the cache or the model."""
        return self.requests - self.embeddings

    @property
    def hit_rate(self) -> float:
        return self.cache_hits / self.questions if self.questions else 0.0


@dataclass(slots=True)
class UsageSummary:
    """Ledger totals over a range of days, overall and broken down by user, model and day."""

    totals: UsageTotals = field(default_factory=UsageTotals)
    by_user: dict[str, UsageTotals] = field(default_factory=dict)
    by_model: dict[str, UsageTotals] = field(default_factory=dict)
    by_day: dict[str, UsageTotals] = field(default_factory=dict)

    def add(self, e: LedgerEntry) -> None:
        self.totals.add(e)
        self.by_user.setdefault(e.user_id, UsageTotals()).add(e)
        self.by_model.setdefault(e.model, UsageTotals()).add(e)
        self.by_day.setdefault(e.day, UsageTotals()).add(e)


@dataclass(frozen=True, slots=True)
class SemanticEntry:
    """One cached answer of the semantic cache.

    ``vector`` is the question's embedding as little-endian float32 bytes, L2-normalised. ``answer``
    is the CachedAnswer JSON; it may be ``""`` where a method says it loads entries without answers
    (the in-process index needs only id, scope, question, vector and expiry).
    """

    entry_id: str
    scope: str  # CacheScope.id(): only entries of the same scope may ever be served
    context: str  # the caller's context fingerprint, for invalidation by context prefix
    question: str
    vector: bytes
    answer: str
    created_at: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class SemanticChange:
    """One event of the semantic cache's change log, which replicas tail to keep their index in sync.

    ``put`` carries the entry (without its answer); ``delete`` carries the entry id and scope.
    """

    op: Literal["put", "delete"]
    entry_id: str
    scope: str
    entry: SemanticEntry | None = None


@dataclass(frozen=True, slots=True)
class SemanticChanges:
    """A batch of changes after a cursor. ``reset`` means the cursor fell out of the retained log (or
    the log was lost): the caller must reload everything with ``semantic_scan``."""

    cursor: str
    changes: tuple[SemanticChange, ...] = ()
    reset: bool = False


@dataclass(frozen=True, slots=True)
class SemanticWrite:
    """What :meth:`SemanticStore.semantic_write` did: the ids it evicted, and the change-log cursors
    just before its events (``logged_after``) and at its last one (``logged_through``). Nothing
    else was logged in between, so a follower whose cursor is ``logged_after`` can move to
    ``logged_through`` without reading the writer's own put and evictions back."""

    evicted: list[str]
    logged_after: str
    logged_through: str


@dataclass(frozen=True, slots=True)
class AdmitCall:
    """One :meth:`RequestStore.admit` call as a value: the public method takes the long keyword
    list once, here, and hands each backend this one object."""

    workspace_id: str
    request_id: str
    ttl_s: float
    buckets: Sequence[BucketSpec]
    lines: Sequence[BudgetLine]
    amount: int
    breaker: BreakerRef | None
    owner: ClaimOwner | None

    @property
    def reserved_for_s(self) -> float:
        """How long the reservation is held: the claim's TTL, plus :data:`REAP_GRACE_S` for an owned claim."""
        return self.ttl_s + (REAP_GRACE_S if self.owner is not None else 0.0)


@dataclass(frozen=True, slots=True)
class SettleCall:
    """One :meth:`RequestStore.settle` call as a value (``breaker`` None, for a cache hit's
    :meth:`RequestStore.record_hit` too), as the backends take it."""

    entry: LedgerEntry
    reservation_id: str | None
    lines: Sequence[BudgetLine]
    result: str | None
    result_ttl_s: float
    breaker: BreakerRef | None = None


class RequestStore(ABC):
    """Requests, from admission to settlement: the gateway's one- and two-round-trip path."""

    @abstractmethod
    def claim_request(self, workspace_id: str, request_id: str, ttl_s: float) -> Claim:
        """Claim ``request_id`` for ``ttl_s`` seconds (a crashed owner's claim expires then)."""

    @abstractmethod
    def complete_request(
        self, workspace_id: str, request_id: str, result: str, ttl_s: float, *, records: Sequence[Record] = ()
    ) -> None:
        """Record the finished result (JSON text) of a claimed request; kept ``ttl_s`` seconds.
        ``records`` are stored in the same step (one transaction on SQLite, one round trip on
        Redis), as :meth:`RecordStore.record_put` would: what the caller learned while handling it."""

    @abstractmethod
    def release_request(self, workspace_id: str, request_id: str) -> None:
        """Give up a claim without a result (the call failed), so a retry may run it again."""

    def admit(
        self,
        workspace_id: str,
        request_id: str,
        *,
        ttl_s: float,
        buckets: Sequence[BucketSpec],
        lines: Sequence[BudgetLine],
        amount: int,
        breaker: BreakerRef | None,
        owner: ClaimOwner | None = None,
    ) -> Admission:
        """Everything a request needs before its upstream call, in one step (one round trip on
        Redis): claim ``request_id`` for ``ttl_s``, take ``buckets`` (``take_tokens``), reserve
        ``amount`` on ``lines`` under the request ID, and acquire ``breaker``
        (``breaker_acquire``) — in that order, stopping at the first refusal. See
        :class:`Admission` for what each outcome holds.

        With ``owner``, the claim remembers who the call is for, ``amount`` and every line: a
        claim that expires neither settled nor released is turned into an unsettled charge by
        :meth:`reap_interrupted`, and until then its reservation keeps counting (it is held for
        ``ttl_s`` plus :data:`REAP_GRACE_S`). A request ID whose owned claim expired is
        ``interrupted``: never admitted again. Nor is one the ledger has an entry for once its
        result is forgotten: ``interrupted`` while the entry is an unsettled charge, else ``done``
        without a result (a second call under the ID could not be recorded).
        """
        return self._admit(AdmitCall(workspace_id, request_id, ttl_s, buckets, lines, amount, breaker, owner))

    @abstractmethod
    def _admit(self, call: AdmitCall) -> Admission:
        """:meth:`admit`, on this backend."""

    @abstractmethod
    def release_admission(self, workspace_id: str, request_id: str, lines: Sequence[BudgetLine], *,
                          call_id: str) -> None:
        """Give back what the admission ``call_id`` (its :attr:`ClaimOwner.call_id`) took: its
        reservation on ``lines`` and its claim, so a retry may run the request again; in one step.
        Only while that admission's own claim holds the ID: once the request was settled, released,
        or admitted again by another call (a client's retry while this release waited in the
        spool), nothing changes. A reaped claim stays (its unsettled charge is what may have been
        spent), as with :meth:`release_request`."""

    @abstractmethod
    def top_up_admission(self, workspace_id: str, request_id: str, lines: Sequence[BudgetLine], *,
                         owner: ClaimOwner, amount: int) -> TopUp:
        """Raise what the admission of ``owner`` (its :attr:`ClaimOwner.call_id`) reserves on
        ``lines`` to ``amount`` in all, in one step, checking every line as :meth:`admit` does: the
        whole ``amount`` must fit beside what is spent and what other calls reserve, or nothing
        changes (``over_budget``). The amount in the claim's owner record rises with it, so a call
        whose process dies afterwards is reaped (:meth:`reap_interrupted`) at the raised amount, and
        :meth:`settle` and :meth:`release_admission` drop the whole of it. Only while that
        admission's own live claim holds the ID (``not_held`` otherwise: an expired claim is the
        reaper's). Never lowers a reservation, so a resend changes nothing: how a call that
        retries after attempts the provider billed keeps its reservation above what it may spend."""

    def settle(
        self,
        entry: LedgerEntry,
        *,
        reservation_id: str | None,
        lines: Sequence[BudgetLine],
        result: str | None,
        result_ttl_s: float,
        breaker: BreakerRef | None = None,
    ) -> bool:
        """Atomically: drop the reservation, add ``entry.cost_micros`` to every line, append the
        ledger entry, and complete the request with ``result`` (if given).

        Idempotent by ``entry.request_id``: if the ledger already holds it, nothing changes and
        the call returns False. Returns True when the entry was written. An *unsettled* entry
        (see :meth:`reap_interrupted`) is the exception: the real entry replaces it, and every
        line's spend moves from the reserved worst case to ``entry.cost_micros``; that returns
        True too. ``breaker``: also record a successful upstream call on it (``breaker_record``),
        in the same round trip.
        """
        return self._settle(SettleCall(entry, reservation_id, lines, result, result_ttl_s, breaker))

    @abstractmethod
    def _settle(self, call: SettleCall) -> bool:
        """:meth:`settle`, on this backend."""

    @abstractmethod
    def reap_interrupted(self, *, limit: int = 500) -> list[LedgerEntry]:
        """Turn up to ``limit`` owned claims (see :meth:`admit`) that expired neither settled nor
        released into unsettled charges: each gets a ledger entry at its reserved amount
        (``unsettled=True``), that amount is added to every one of its budget lines, its
        reservation is dropped, and its request ID becomes ``interrupted``. Returns the entries
        written. Safe to run from every replica at once: each claim is reaped once."""

    @abstractmethod
    def record_hit(self, entry: LedgerEntry, *, result: str, result_ttl_s: float) -> Claim:
        """Claim, settle and complete a request in one step: a cache hit, which has no upstream
        call to guard. Returns ``claimed`` when this call recorded ``entry`` and ``result`` (or
        the ledger already held the entry), else the claim or result that holds the request ID
        (``in_flight``, ``done``), with nothing written."""


class LimitStore(ABC):
    """Token buckets (``limiter``), applied atomically."""

    @abstractmethod
    def take_tokens(self, workspace_id: str, specs: Sequence[BucketSpec]) -> LimitDecision:
        """Atomically debit every bucket or none (``limiter.take``). A cost of 0 only peeks."""


class BudgetStore(ABC):
    """Budget lines: reservations and what is spent (``budget``)."""

    @abstractmethod
    def release(self, workspace_id: str, reservation_id: str, lines: Sequence[BudgetLine]) -> None:
        """Drop a reservation without spending (the call failed or was refused later)."""

    @abstractmethod
    def spent(self, workspace_id: str, line: BudgetLine) -> tuple[int, int]:
        """(spent, reserved) micro-dollars on ``line`` now."""


class BreakerStore(ABC):
    """Circuit breakers (``breaker``), shared by every replica."""

    @abstractmethod
    def breaker_acquire(self, name: str, policy: BreakerPolicy) -> Permit:
        """Apply ``breaker.acquire`` atomically at the store's clock."""

    @abstractmethod
    def breaker_record(self, name: str, policy: BreakerPolicy, *, success: bool, pending: int = 0) -> BreakerState:
        """Apply ``breaker.record`` atomically at the store's clock; returns the new state.
        ``pending``: the caller's other upstream attempts still in flight."""

    @abstractmethod
    def breaker_state(self, name: str) -> BreakerState: ...


class AnswerCacheStore(ABC):
    """The exact-match answer cache: JSON text by scope and key, with a TTL."""

    @abstractmethod
    def cache_get(self, scope: str, key: str) -> str | None:
        """The cached value (JSON text) for ``key`` within ``scope``, unless expired."""

    @abstractmethod
    def cache_put(self, scope: str, key: str, value: str, ttl_s: float, *, records: Sequence[Record] = ()) -> None:
        """Store (or replace) ``value`` for ``ttl_s`` seconds. ``records`` are stored in the same
        step (one transaction on SQLite, one round trip on Redis), as :meth:`RecordStore.record_put`
        would: where the cache keeps the entry, so it can be found again by something else than its key."""

    @abstractmethod
    def cache_delete(self, scope: str, key: str | None = None) -> int:
        """Delete one key, or the whole scope when ``key`` is None; returns how many went."""

    @abstractmethod
    def cache_drop(self, scope: str, key: str, value: str) -> bool:
        """Delete the entry ``key`` if it is live and holds ``value``, atomically: what was read
        is evicted, never a newer value put there since. Returns whether it deleted."""

    @abstractmethod
    def cache_clear(self) -> int:
        """Delete every entry of every scope (``penny cache clear``); returns how many went."""

    @abstractmethod
    def cache_count(self) -> int:
        """How many entries there are, in every scope (expired ones not yet swept included)."""


class LedgerStore(ABC):
    """The ledger: one entry per settled call, and totals over days."""

    @abstractmethod
    def ledger_entry(self, workspace_id: str, request_id: str) -> LedgerEntry | None: ...

    @abstractmethod
    def usage(
        self, workspace_id: str, first_day: str, last_day: str, user_id: str | None = None
    ) -> UsageSummary:
        """Totals over the UTC days ``first_day``..``last_day`` (inclusive, 'YYYY-MM-DD')."""

    @abstractmethod
    def usage_by_source(
        self, workspace_id: str, first_day: str, last_day: str, user_id: str | None = None
    ) -> dict[str, UsageTotals]:
        """Totals over the same days as :meth:`usage`, by the entries' ``source`` (``""``: the
        front end's own calls); only sources with entries in the range appear."""


class SemanticStore(ABC):
    """The semantic cache's entries and change log."""

    # Entries are shared by every replica; each replica keeps an in-process vector index, loaded
    # with ``semantic_scan`` at start-up and kept in sync by tailing ``semantic_changes``. Every
    # mutation below appends to the change log in the same atomic step as the mutation.

    def semantic_put(self, entry: SemanticEntry, *, max_entries: int, touched: Sequence[str] = ()) -> list[str]:
        """Store (or replace) ``entry`` as the most recently used one, then evict least recently
        used entries while more than ``max_entries`` remain (0 = no cap). Returns evicted ids.
        ``touched`` are marked used after the put and before the eviction, as by
        :meth:`semantic_touch` (hits served since the last report, which came after the put)."""
        return self.semantic_write(entry, max_entries=max_entries, touched=touched).evicted

    @abstractmethod
    def semantic_write(self, entry: SemanticEntry, *, max_entries: int, touched: Sequence[str] = ()) -> SemanticWrite:
        """:meth:`semantic_put`, also saying where its events went in the change log, so the
        writer's own follower can step over what it already applied."""

    @abstractmethod
    def semantic_get(self, entry_id: str, *, touch: bool = True) -> SemanticEntry | None:
        """The entry, with its answer, unless missing or expired by the store's clock. ``touch``
        marks it most recently used (a served hit)."""

    @abstractmethod
    def semantic_touch(self, entry_ids: Sequence[str]) -> int:
        """Mark these entries most recently used, in order (hits served from a replica's copy of
        the answer, reported in batches); missing ones are skipped. Returns how many were."""

    @abstractmethod
    def semantic_delete(self, entry_ids: Sequence[str]) -> int:
        """Delete these entries; returns how many existed."""

    @abstractmethod
    def semantic_delete_where(
        self, *, context_prefix: str | None = None, expired: bool = False
    ) -> list[str]:
        """Delete entries whose context starts with ``context_prefix`` (``""`` = every entry), or,
        with ``expired=True``, those past ``expires_at`` by the store's clock. Returns deleted ids."""

    @abstractmethod
    def semantic_scan(self, *, batch: int = 1000) -> Iterator[SemanticEntry]:
        """Every live entry, without answers (``answer == ""``), in batches (start-up load)."""

    @abstractmethod
    def semantic_changes(self, cursor: str | None, *, block_s: float = 0.0, limit: int = 1000) -> SemanticChanges:
        """Changes after ``cursor``, waiting up to ``block_s`` for one. ``cursor=None`` returns the
        current head with no changes: take it before ``semantic_scan`` so nothing is missed."""

    @abstractmethod
    def semantic_wait(self, cursor: str, block_s: float) -> None:
        """Return once the change log may hold events after ``cursor``, or after ``block_s``.
        (A cheap wait, no read: :meth:`semantic_changes` reads, and says whether to reload.)"""

    @abstractmethod
    def semantic_count(self) -> int:
        """How many entries are stored (expired ones not yet deleted included)."""


class BlobStore(ABC):
    """Opaque bytes by key (the docs index)."""

    # A small generic key -> bytes space shared by every replica (the docs index lives here). Keys
    # are plain strings; callers group them by prefix. Values are opaque bytes, never expiring.

    @abstractmethod
    def blob_get(self, key: str) -> bytes | None:
        """The bytes stored at ``key``, or None."""

    @abstractmethod
    def blob_put_many(
        self, items: Mapping[str, bytes], delete: Sequence[str] = (), *, expect: tuple[str, bytes | None] | None = None
    ) -> bool:
        """Atomically delete the ``delete`` keys and store every item: readers see all or nothing.

        A key both deleted and put ends up holding its new value. With ``expect=(key, value)``
        nothing is written unless ``key`` holds ``value`` (None: no value) at that moment, so two
        writers that started from the same state cannot both write (the docs index's version).
        Returns whether it wrote.
        """

    @abstractmethod
    def blob_scan(self, prefix: str) -> Iterator[tuple[str, bytes]]:
        """Every (key, bytes) whose key starts with ``prefix`` (``""`` = all), in batches, in no
        promised order. Not a snapshot: keys changed during the scan may be seen old or new."""


class RecordStore(ABC):
    """Small keyed records with a TTL for a front end's own bookkeeping (the Slack bot: which threads
    Penny is in, which answer a message carries). Not the answer cache: a record is never served
    as an answer, and clearing the cache leaves records alone."""

    @abstractmethod
    def record_get(self, kind: str, key: str) -> str | None:
        """The record ``key`` of ``kind``, unless missing or expired."""

    @abstractmethod
    def record_put(self, kind: str, key: str, value: str, ttl_s: float) -> None:
        """Store (or replace) the record ``key`` of ``kind`` for ``ttl_s`` seconds."""

    @abstractmethod
    def record_add(self, kind: str, key: str, value: str, ttl_s: float) -> str | None:
        """Store the record ``key`` of ``kind`` for ``ttl_s`` seconds unless a live one holds the
        key, in one atomic step (two callers racing for a key: exactly one stores). Returns None
        when it stored ``value``, else the live record's value, left as it was."""

    @abstractmethod
    def record_drop(self, kind: str, key: str, value: str) -> bool:
        """Delete the record ``key`` of ``kind`` if it holds ``value`` (and is live), atomically:
        a claim made with :meth:`record_add` is given up only by a holder of that claim, never
        after someone else replaced it. Returns whether it deleted."""


class Store(
    RequestStore, LimitStore, BudgetStore, BreakerStore, AnswerCacheStore, LedgerStore, SemanticStore, BlobStore,
    RecordStore, ABC,
):
    """A backend for Penny's shared state: every capability above, on one SQLite file or one Redis.
    Thread-safe; may be shared by many processes. A caller depends on the capability it uses
    (``Accounts`` on ledger, limits and budgets; the docs index on blobs; the bot on records and
    requests); each backend implements them all, with the fused one-round-trip operations."""

    @abstractmethod
    def now(self) -> float:
        """The store's clock, in epoch seconds (shared state is timed by it, not by the caller)."""

    @abstractmethod
    def ping(self) -> None:
        """Raise StoreError unless the backend answers."""

    @abstractmethod
    def close(self) -> None: ...
