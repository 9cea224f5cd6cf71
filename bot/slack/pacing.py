"""How one Penny process paces Slack's deliveries, over HTTP (:mod:`bot.slack.server`) and Socket Mode
(:func:`bot.slack.app.socket_mode_handler`) alike: acks before answers (:class:`AcksFirst`), a bound on
the answers running at once that a listener waiting on the LLM or on Slack lends (:class:`WorkTurns`),
and a listener pool that runs what Slack awaits an ack from at once and can be drained when the
process stops (:class:`DrainingExecutor`)."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Executor, Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from proxy_core import get_logger

if TYPE_CHECKING:
    from slack_bolt import App, BoltRequest

__all__ = ["ACK_LISTENERS", "ANSWER_TURNS", "AcksFirst", "DrainingExecutor", "WorkTurns", "dispatch_acked"]

_log = get_logger()


def dispatch_acked(app: App, request: BoltRequest) -> None:
    """Bolt's dispatch of a delivery Penny has already acked (an event: Bolt would ack it with an
    empty 200 whatever its listeners do)."""
    response = app.dispatch(request)
    if response.status != 200:  # Bolt's ack would have said so; it was sent as a 200
        _log.warning("slack.event_not_handled", status=response.status, body=str(response.body)[:200])


class AcksFirst:
    """Slack wants each delivery acked within 3 s; answering it can wait a moment. One process has
    one GIL: a burst of events would otherwise be acked in turns with the answers of the events
    before it. Requests are counted while Bolt handles them (:meth:`request`); the answers waiting
    to start (:class:`DrainingExecutor`) wait (:meth:`wait`) until no request has been in flight for
    ``quiet_s``, at most ``max_wait_s``."""

    def __init__(self, *, quiet_s: float = 0.02, max_wait_s: float = 1.0, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self._quiet_s = quiet_s
        self._max_wait_s = max_wait_s
        self._clock = clock
        self._changed = threading.Condition()
        self._active = 0
        self._last = -quiet_s
        self._here = threading.local()

    @contextmanager
    def awaiting_ack(self) -> Iterator[None]:
        """Bolt dispatches a request on this thread and waits (up to 3 s) for its listener to ack
        it: a slash command, a button, a form. The listener it starts meanwhile is part of that ack
        (:meth:`takes_the_ack`), not an answer to hold back."""
        self._here.awaiting = True
        try:
            yield
        finally:
            self._here.awaiting = False

    def takes_the_ack(self) -> bool:
        """Whether a listener started now, on this thread, is the one Bolt awaits the ack from: the
        first started in :meth:`awaiting_ack`. Bolt starts a listener's lazy functions after its
        ack function, from the same thread: they are work like an answer (the "Get a fresh answer"
        click's LLM call), not part of the ack."""
        if not getattr(self._here, "awaiting", False):
            return False
        self._here.awaiting = False
        return True

    @contextmanager
    def request(self) -> Iterator[None]:
        self.begin()
        try:
            yield
        finally:
            self.end()

    def begin(self) -> None:
        with self._changed:
            self._active += 1

    def end(self) -> None:
        with self._changed:
            self._active -= 1
            self._last = self._clock()
            if self._active == 0:
                self._changed.notify_all()

    def wait(self) -> None:
        deadline = self._clock() + self._max_wait_s
        with self._changed:
            while True:
                now = self._clock()
                if now >= deadline or (self._active == 0 and now - self._last >= self._quiet_s):
                    return
                pause = deadline - now if self._active else min(deadline - now, self._last + self._quiet_s - now)
                self._changed.wait(timeout=pause)


ANSWER_TURNS: Final = 16  # a worker's listeners running at once; more wait for a turn


class WorkTurns:
    """At most ``turns`` of a worker's listeners run at once; one waiting on the LLM gives its turn
    to another meanwhile (:meth:`waiting`, entered by the gateway around the upstream call). Turns
    go in order of arrival, except that a listener back from a wait goes first, and one Slack awaits
    an ack from never waits (:meth:`run_now`).

    A worker keeps 256 listener threads so that 200 questions each waiting a second on the LLM
    are all in flight at once. When answers are CPU-bound instead (cache hits), 256 of them in
    progress at once all run slower: 600 cache hits at once on Redis ran at 404–414 answers/s on
    2 workers with 256 threads and 496–565 with 32 (on SQLite 433 and 526), but with 32 threads
    200 one-second questions took 7.4 s. Turns keep the threads for waiting and bound the answers
    that run; with the threads started at boot (:meth:`DrainingExecutor.start_threads`), 8, 16 and
    32 turns gave 476–536, 449–463 and 376–516 answers/s on Redis and 450–499, 483–524 and 455–522
    on SQLite (three runs or more each). A turn is kept across store calls (short); it is lent
    during a listener's Slack calls too (``make_client(waiting=…)``, whose waiting client
    ``build_app`` gives every request's listeners), whose rate-limit retries sleep out
    ``Retry-After``."""

    def __init__(self, turns: int = ANSWER_TURNS) -> None:
        self._turns = turns
        self._lock = threading.Lock()
        self._taken = 0
        # Listeners waiting for a turn, each on a lock of its own that a listener giving its turn
        # up releases (handing the turn over). Those back from a wait go first: their answer is
        # under way, and behind a burst of new arrivals it would wait for all of them.
        self._returning: deque[threading.Lock] = deque()
        self._arriving: deque[threading.Lock] = deque()
        self._mine = threading.local()
        self._closed = False
        self._dismissed: set[threading.Lock] = set()  # released by close(), not handed a turn

    def run(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``, once a turn is free for it: after the listeners that arrived
        before it and every one coming back from a wait."""
        self._take(self._arriving)
        return self._hold(False, fn, args, kwargs)

    def run_now(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` on a turn taken at once, past the bound if none is free, and
        taken back the same way after each wait: a listener Slack awaits an ack from never waits
        for a turn. While it holds one, other listeners start only once fewer than ``turns`` do."""
        self._take_now()
        return self._hold(True, fn, args, kwargs)

    def close(self) -> None:
        """The process is stopping and gave up waiting for its answers: a listener that has not
        started never will (:meth:`run` raises ``CancelledError``, now or when it would have had its
        turn), and one back from a wait goes on without waiting for a turn (it may have a paid call
        to record)."""
        with self._lock:
            self._closed = True
            dismissed = [*self._returning, *self._arriving]
            self._returning.clear()
            self._arriving.clear()
            self._dismissed.update(dismissed)
        for handed in dismissed:
            handed.release()

    def queued(self) -> int:
        """Listeners waiting for a turn (arrived, or back from a wait)."""
        with self._lock:
            return len(self._returning) + len(self._arriving)

    @contextmanager
    def waiting(self) -> Iterator[None]:
        """A block that waits on something slow: the calling listener's turn goes to another one
        meanwhile, and it waits for a turn again after, ahead of listeners that have not started.
        Outside a listener's turn, nothing."""
        if not getattr(self._mine, "held", False):
            yield
            return
        self._mine.held = False
        self._give()
        try:
            yield
        finally:
            if self._mine.at_once:
                self._take_now()
            else:
                self._take(self._returning)
            self._mine.held = True

    def _hold(self, at_once: bool, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self._mine.held, self._mine.at_once = True, at_once
        try:
            return fn(*args, **kwargs)
        finally:
            self._mine.held = False
            self._give()

    def _take(self, queue: deque[threading.Lock]) -> None:
        with self._lock:
            if self._closed:
                self._take_closed(queue)
                return
            if self._taken < self._turns:  # then nobody is queued: turns go to the queued first
                self._taken += 1
                return
            handed = threading.Lock()
            handed.acquire()
            queue.append(handed)
        handed.acquire()  # until _give hands this listener its turn, or close() dismisses it
        with self._lock:
            if handed in self._dismissed:
                self._dismissed.discard(handed)
                self._take_closed(queue)

    def _take_closed(self, queue: deque[threading.Lock]) -> None:
        if queue is self._arriving:
            raise CancelledError("the worker is stopping: this listener was not started")
        self._taken += 1  # back from a wait: it finishes, past the bound

    def _take_now(self) -> None:
        with self._lock:
            self._taken += 1

    def _give(self) -> None:
        with self._lock:
            queue = self._returning or self._arriving
            if queue and self._taken <= self._turns:  # (over the bound after run_now: not handed over)
                queue.popleft().release()  # the turn changes hands; as many are taken
            else:
                self._taken -= 1


ACK_LISTENERS: Final = 32  # a worker's listeners Slack awaits an ack from, running at once (16 request threads)


class DrainingExecutor(Executor):
    """Bolt's listener pool, counting the listeners not finished yet so a stopping worker can wait
    for them (:meth:`drain`) instead of cutting answers off.

    With ``acks_first``, listeners are held back while requests are being acked (:class:`AcksFirst`):
    they wait in a queue, and one dispatcher thread hands them to the pool once the acks are done.
    Only the dispatcher waits on the acks, so a burst of events does not wake hundreds of waiting
    threads at each ack, and the pool's threads are started off the ack's path. With ``turns``, a
    listener runs once it has a turn (:class:`WorkTurns`).

    The listener Bolt starts while a request thread awaits its ack (:meth:`AcksFirst.awaiting_ack`:
    ``/cost``, a button, a form) must ack within Slack's 3 s, and priority in a queue would not do:
    every turn can be held by answers that are busy, not waiting. It is part of that ack: it runs at
    once, on a pool of its own (the answers' threads may all be waiting for turns, with more queued
    behind them) and a turn taken past the bound if none is free (:meth:`WorkTurns.run_now`). Answers
    stay bounded: none starts while ``turns`` listeners, these included, hold a turn. Work that a
    click starts (Bolt's lazy listeners, which it starts after the ack listener) is not part of the
    ack: it waits for the acks and for a turn as an answer does."""

    def __init__(self, max_workers: int, *, thread_name_prefix: str = "penny-slack",
                 acks_first: AcksFirst | None = None, turns: WorkTurns | None = None,
                 ack_workers: int = ACK_LISTENERS) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=thread_name_prefix)
        self._acking = ThreadPoolExecutor(max_workers=ack_workers, thread_name_prefix=f"{thread_name_prefix}-ack")
        self._ack_workers = ack_workers
        self._max_workers = max_workers
        self._turns = turns
        self._thread_name_prefix = thread_name_prefix
        self._idle = threading.Condition()
        self._running = 0
        self._acks_first = acks_first
        self._waiting: deque[_WaitingListener] = deque()
        self._arrived = threading.Condition()
        self._dispatcher: threading.Thread | None = None
        self._closed = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        acking = self._acks_first is not None and self._acks_first.takes_the_ack()
        if self._turns is not None:
            fn, args = (self._turns.run_now if acking else self._turns.run), (fn, *args)
        with self._idle:
            self._running += 1
        try:
            if acking:
                future = self._acking.submit(fn, *args, **kwargs)
            elif self._acks_first is None:
                future = self._pool.submit(fn, *args, **kwargs)
            else:
                future = self._hold(fn, args, kwargs)
        except BaseException:
            self._finished(None)
            raise
        future.add_done_callback(self._finished)
        return future

    def pending(self) -> int:
        """Listeners submitted and not finished (waiting for the acks, queued or running)."""
        return self._running

    def start_threads(self, timeout_s: float = 10.0) -> None:
        """Start every thread of both pools now (a worker booting), not during the first burst:
        the pool starts one per task while none is idle, and ``Thread.start`` waits for the new
        thread to run, behind every busy thread's turn on the GIL. Together with turns, 600 cache
        hits at once on 2 workers (Redis) went from 393–411 to 450–455 answers/s."""
        for pool, threads in ((self._pool, self._max_workers), (self._acking, self._ack_workers)):
            started = threading.Barrier(threads, timeout=timeout_s)
            for _ in range(threads):
                pool.submit(_arrive, started)

    def drain(self, timeout_s: float) -> int:
        """Wait until no listener runs or waits, at most ``timeout_s``; the number still running."""
        with self._idle:
            self._idle.wait_for(lambda: self._running == 0, timeout=timeout_s)
            return self._running

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """As a pool's; with ``cancel_futures``, listeners waiting for the acks or for a turn never
        start (:meth:`WorkTurns.close`): the pool's threads are all started, so they would otherwise
        be waiting for a turn on one, and run when it came."""
        if cancel_futures and self._turns is not None:
            self._turns.close()
        with self._arrived:
            self._closed = True
            cancelled = list(self._waiting) if cancel_futures else []
            if cancel_futures:
                self._waiting.clear()
            self._arrived.notify_all()
        for item in cancelled:
            item.future.cancel()
        if self._dispatcher is not None and wait:
            self._dispatcher.join()
        self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)
        self._acking.shutdown(wait=wait, cancel_futures=cancel_futures)

    def _hold(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Future[Any]:
        item = _WaitingListener(Future(), fn, args, kwargs)
        with self._arrived:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._waiting.append(item)
            if self._dispatcher is None:
                self._dispatcher = threading.Thread(target=self._dispatch, name=f"{self._thread_name_prefix}-dispatch",
                                                    daemon=True)
                self._dispatcher.start()
            self._arrived.notify()
        return item.future

    def _dispatch(self) -> None:
        assert self._acks_first is not None
        while True:
            with self._arrived:
                self._arrived.wait_for(lambda: bool(self._waiting) or self._closed)
                if not self._waiting:
                    return  # closed, nothing left
            if not self._closed:
                self._acks_first.wait()
            with self._arrived:
                batch = list(self._waiting)
                self._waiting.clear()
            for item in batch:
                try:
                    self._pool.submit(item.run)
                except RuntimeError:  # the pool was shut down without waiting: this answer is not written
                    item.future.cancel()

    def _finished(self, _future: Future[Any] | None) -> None:
        with self._idle:
            self._running -= 1
            if self._running == 0:
                self._idle.notify_all()


def _arrive(started: threading.Barrier) -> None:
    with suppress(threading.BrokenBarrierError):  # a thread that could not start: the others go on
        started.wait()


@dataclass(frozen=True, slots=True)
class _WaitingListener:
    """A listener waiting for the acks in flight: run on the pool with its own future."""

    future: Future[Any]
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    def run(self) -> None:
        if not self.future.set_running_or_notify_cancel():
            return
        try:
            result = self.fn(*self.args, **self.kwargs)
        except BaseException as exc:
            self.future.set_exception(exc)
        else:
            self.future.set_result(result)
