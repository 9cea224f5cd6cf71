"""The ledger's keeper: every paid call reaches the ledger, even when the store blips.

The gateway settles each call itself; when the store does not confirm a write (down, full, or
timed out, when it may have been applied), it hands the write to :meth:`LedgerKeeper.keep`, which
appends it to the durable spool (``spool.py``) before the answer is returned. The keeper replays
spooled writes through the same idempotent store calls, adopts the spool files of processes that
exited, and reaps interrupted calls (``Store.reap_interrupted``): on a maintenance thread in a
running Penny, by hand in ``penny ledger replay``, directly in tests.

Only a write still pending after several replay rounds and a minute raises the alarm
(``ledger_entries_pending``): a timed-out settle that went through after all is not a failure.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass

from proxy_core.clock import Clock
from proxy_core.errors import StoreError
from proxy_core.log import get_logger
from proxy_core.metrics import Metrics
from proxy_core.spool import SettleSpool, SpoolRecord, count_pending
from proxy_core.stores.base import LedgerEntry, Store

__all__ = ["LedgerKeeper", "ReplayReport"]

# A spooled write still pending after this many replay rounds and this long raises the alarm.
_ALARM_AFTER_ROUNDS = 3
_ALARM_AFTER_S = 60.0
# A replay round stops after the store refused writes of this many requests.
_FAILURES_PER_ROUND = 3


@dataclass(frozen=True, slots=True)
class ReplayReport:
    """What one replay of the spool did: writes ``applied``, writes the store ``already`` had
    (a timed-out settle that went through after all), and writes still ``pending``."""

    applied: int = 0
    already: int = 0
    pending: int = 0
    error: str | None = None


class LedgerKeeper:
    """The spool, its replay and the reaper, for one gateway. Thread-safe.

    ``on_settled`` is called with each settle a replay wrote (the gateway's budget alerts).
    ``maintenance`` starts the daemon thread that replays as soon as the store answers and reaps
    every ``reap_every_s``. ``store`` may be replaced (tests bring a store back).
    """

    def __init__(
        self,
        store: Store,
        spool: SettleSpool,
        *,
        metrics: Metrics,
        clock: Clock = time.monotonic,
        on_settled: Callable[[SpoolRecord], None] | None = None,
        maintenance: bool = False,
        reap_every_s: float = 30.0,
    ) -> None:
        self.store = store
        self.spool = spool
        self._metrics = metrics
        self._clock = clock
        self._on_settled = on_settled
        self._log = get_logger()
        self._lock = threading.Lock()
        self._rounds: dict[str, tuple[int, float]] = {}  # record key -> (failed rounds, first seen)
        self._alarmed: set[str] = set()
        self._adopt()
        self._thread = _Maintenance(self, reap_every_s=reap_every_s) if maintenance else None
        if self._thread is not None:
            self._thread.start()

    def keep(self, record: SpoolRecord, exc: StoreError) -> None:
        """Spool a write the store did not confirm; the maintenance thread replays it. Should the
        disk refuse it too (full, read-only), it is held in memory and replayed all the same, and
        written to the spool as soon as the disk takes it; only until then can a crash lose it."""
        try:
            self.spool.append(record)
        except OSError as spool_exc:
            # Neither the store nor the local disk took it: until one does, the log line is its
            # only durable record.
            self._log.error("ledger_write_failed", error=str(exc), spool_error=str(spool_exc),
                            op=record.op, **asdict(record.entry))
        else:
            self._log.warning("ledger_write_spooled", request_id=record.entry.request_id, op=record.op,
                              error=str(exc))
        self._metrics.spooled.inc()
        if self._thread is not None:
            self._thread.kick()

    def replay(self) -> ReplayReport:
        """Apply the spooled writes through the same idempotent store calls, oldest first, each
        request's in the order they were spooled. Adopts the spool files of exited processes first.

        A write the store refuses does not hold up the others: the request's later writes wait for
        the next round, the rest go on, and writes that failed before go last. Only after
        :data:`_FAILURES_PER_ROUND` refusals in one round does the round stop (the store is likely
        down, and each further try could take a whole timeout)."""
        with self._lock:
            self._adopt()
            with suppress(OSError):  # the disk is still full: they stay in memory
                self.spool.write_unwritten()
            applied = already = 0
            error: str | None = None
            failed: set[tuple[str, str]] = set()  # requests with a write refused this round
            unapplied: list[SpoolRecord] = []
            records = self._in_replay_order(self.spool.pending())
            for i, record in enumerate(records):
                request = (record.entry.workspace_id, record.entry.request_id)
                if request in failed:
                    unapplied.append(record)
                    continue
                try:
                    written = self._apply(record)
                except StoreError as exc:
                    error = str(exc)
                    failed.add(request)
                    unapplied.append(record)
                    if len(failed) >= _FAILURES_PER_ROUND:
                        unapplied.extend(records[i + 1:])
                        break
                    continue
                self.spool.done(record)
                self._rounds.pop(record.key, None)
                self._alarmed.discard(record.key)
                if written:
                    applied += 1
                else:
                    already += 1
            self._note_pending(unapplied)
            pending = len(self.spool.pending())
        self._metrics.spooled.set(pending)
        if applied or already:
            self._log.info("spool_replayed", applied=applied, already=already, pending=pending)
        if failed:
            self._log.warning("spool_replay_refused", refused=len(failed), pending=pending, error=error)
        return ReplayReport(applied=applied, already=already, pending=pending, error=error)

    def _in_replay_order(self, records: Sequence[SpoolRecord]) -> list[SpoolRecord]:
        """Oldest first, except that requests a replay failed on go after the others (fewest failed
        rounds first), so one write the store keeps refusing cannot hold up every later paid call;
        each request's own writes keep their order."""
        groups: dict[tuple[str, str], list[SpoolRecord]] = {}
        for record in records:
            groups.setdefault((record.entry.workspace_id, record.entry.request_id), []).append(record)

        def failed_rounds(group: list[SpoolRecord]) -> int:
            return max(self._rounds.get(record.key, (0, 0.0))[0] for record in group)

        ordered = sorted(groups.values(), key=failed_rounds)  # stable: oldest first among equals
        return [record for group in ordered for record in group]

    def reap(self) -> list[LedgerEntry]:
        """Charge calls whose process died mid-call at their reserved worst case (unsettled)."""
        reaped = self.store.reap_interrupted()
        for entry in reaped:
            self._log.warning("call_interrupted_charged", request_id=entry.request_id, user_id=entry.user_id,
                              workspace_id=entry.workspace_id, cost_micros=entry.cost_micros)
        return reaped

    def pending_writes(self) -> int:
        """Spooled writes not yet in the store, across every process sharing the spool directory."""
        return count_pending(self.spool.directory) + len(self.spool.pending_unwritten())

    def close(self) -> None:
        """Stop the thread and try once more; whatever the store has not taken stays on disk, for
        the next start (or any other process, or ``penny ledger replay``) to adopt and replay."""
        if self._thread is not None:
            self._thread.stop()
        self.replay()
        for record in self.spool.pending_unwritten():
            # Neither the store nor the disk took it, and this process is going: the log is all that is left.
            self._log.error("ledger_write_lost", op=record.op, **asdict(record.entry))
        self.spool.close()

    def _adopt(self) -> None:
        try:
            self.spool.adopt()
        except OSError as exc:
            self._log.warning("spool_adopt_failed", path=str(self.spool.directory), error=str(exc))

    def _apply(self, record: SpoolRecord) -> bool:
        entry = record.entry
        if record.op == "release":
            if record.call_id is not None:
                self.store.release_admission(entry.workspace_id, entry.request_id, record.lines,
                                             call_id=record.call_id)
            else:  # spooled before releases named their admission
                self.store.release(entry.workspace_id, entry.request_id, record.lines)
                self.store.release_request(entry.workspace_id, entry.request_id)
            return True
        written = self.store.settle(entry, reservation_id=record.reservation_id, lines=record.lines,
                                    result=record.result, result_ttl_s=record.result_ttl_s)
        if written:
            self._log.info("ledger_replayed", request_id=entry.request_id, cost_micros=entry.cost_micros)
            if self._on_settled is not None:
                self._on_settled(record)
        return written

    def _note_pending(self, records: Sequence[SpoolRecord]) -> None:
        now = self._clock()
        for record in records:
            rounds, first = self._rounds.get(record.key, (0, now))
            rounds += 1
            self._rounds[record.key] = (rounds, first)
            if rounds >= _ALARM_AFTER_ROUNDS and now - first >= _ALARM_AFTER_S and record.key not in self._alarmed:
                self._alarmed.add(record.key)
                self._log.error("ledger_entries_pending", request_id=record.entry.request_id, op=record.op,
                                rounds=rounds, pending_s=round(now - first, 1), spool=str(self.spool.directory))


class _Maintenance:
    """The keeper's background duties, on one daemon thread: replay the spool as soon as the store
    answers again (backing off from 0.5 s to 30 s while it does not), and reap interrupted calls
    every ``reap_every_s``. Real time on purpose: this is the product's own pacing; tests call
    ``replay`` and ``reap`` directly."""

    def __init__(self, keeper: LedgerKeeper, *, reap_every_s: float) -> None:
        self._keeper = keeper
        self._reap_every_s = reap_every_s
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="penny-ledger-keeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def kick(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        log = get_logger()
        backoff = 0.5
        next_reap = time.monotonic()
        while not self._stopping.is_set():
            wait = self._reap_every_s
            try:
                if self._keeper.spool.pending():
                    if self._keeper.replay().pending:
                        wait, backoff = backoff, min(backoff * 2, 30.0)
                    else:
                        backoff = 0.5
                if time.monotonic() >= next_reap:
                    next_reap = time.monotonic() + self._reap_every_s
                    self._keeper.reap()
            except StoreError as exc:
                log.warning("maintenance_store_unavailable", error=str(exc))
            except Exception as exc:  # never let the thread die: it is what replays paid calls
                log.error("maintenance_failed", error=repr(exc))
            self._wake.wait(min(wait, max(0.0, next_reap - time.monotonic())))
            self._wake.clear()
