"""The 👀 on a question while Penny works on it, kept off the answer's path.

:meth:`WorkingIndicator.show` is called when a question arrives and returns a :class:`Working`; its
:meth:`~Working.done` is called once the answer is out. The reaction goes on only if the answer is
not out within ``grace_s``: a cached answer, a refusal or a no-match is out in milliseconds, so it
gets no reaction that would flicker on and off, and costs no Slack calls. It comes off after the
answer.

Reactions are made on worker threads, never on the thread that answers, so Slack's round trip is
not added to every answer, and a throttled ``reactions.add`` (Tier 3: about 50 a minute, which a
burst of questions reaches) never holds an answer back: a throttled or failed ``reactions.add`` is
skipped, not retried (the reaction is cosmetic; the answer matters). ``reactions.remove`` keeps the
client's retry handlers: a 👀 left on an answered question would say Penny is still working.

``workers=0`` makes every reaction at once on the calling thread, in order (add before the answer,
remove after it): the call sequence is then fixed, which tests that read it rely on.
"""

from __future__ import annotations

import copy
import heapq
import itertools
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Final, Literal

from slack_sdk import WebClient
from slack_sdk.http_retry import RateLimitErrorRetryHandler

from proxy_core.clock import Clock, monotonic
from proxy_core.log import get_logger

__all__ = ["GRACE_S", "REACTION", "WORKERS", "Working", "WorkingIndicator"]

REACTION: Final = "eyes"
GRACE_S: Final = 0.5  # an answer out sooner gets no reaction
WORKERS: Final = 4  # threads making reactions; a Slack call takes ~0.1-0.3 s

_log = get_logger()

_State = Literal["pending", "adding", "finishing", "shown", "off"]


class Working:
    """The 👀 of one question. ``answered()`` says the answer is out: a reaction not made yet is then
    never made. ``done()`` takes it off (or cancels it); calling either again does nothing."""

    def __init__(self, owner: WorkingIndicator, client: WebClient, channel: str, ts: str) -> None:
        self._owner = owner
        self._client = client
        self.channel = channel
        self.ts = ts
        self.state: _State = "pending"  # guarded by the owner's lock

    def answered(self) -> None:
        self._owner._answered(self)

    def done(self) -> None:
        self._owner._done(self)


class WorkingIndicator:
    """Puts 👀 on slow questions' messages and takes it off after their answers (see the module doc).

    ``clock`` (monotonic) times the grace period. :meth:`close` cancels reactions not made yet and
    waits for those under way, removals included.
    """

    def __init__(self, *, grace_s: float = GRACE_S, workers: int = WORKERS, clock: Clock = monotonic) -> None:
        if grace_s < 0 or workers < 0:
            raise ValueError("grace_s and workers must not be negative")
        self.grace_s = grace_s
        self._clock = clock
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="penny-working") if workers else None
        self._lock = threading.Condition()
        self._due: list[tuple[float, int, Working]] = []
        self._seq = itertools.count()
        self._timer: threading.Thread | None = None
        self._closed = False

    def show(self, client: WebClient, channel: str, ts: str) -> Working:
        """Start showing that Penny works on the message ``ts`` in ``channel``."""
        working = Working(self, client, channel, ts)
        if self._pool is None:
            working.state = "adding"
            self._add(working)
            return working
        with self._lock:
            if self._closed:
                working.state = "off"
                return working
            if self.grace_s == 0:
                working.state = "adding"
                self._pool.submit(self._add, working)
                return working
            heapq.heappush(self._due, (self._clock() + self.grace_s, next(self._seq), working))
            if self._timer is None:
                self._timer = threading.Thread(target=self._run_timer, name="penny-working-timer", daemon=True)
                self._timer.start()
            elif self._due[0][2] is working:
                self._lock.notify()
        return working

    def wake(self) -> None:
        """Look at the clock again now: an injected clock moves without the timer knowing."""
        with self._lock:
            self._lock.notify()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for _, _, working in self._due:
                if working.state == "pending":
                    working.state = "off"
            self._due.clear()
            self._lock.notify()
        if self._timer is not None:
            self._timer.join(timeout=5)
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    # -- internals ---------------------------------------------------------------------------

    def _run_timer(self) -> None:
        """Hand each reaction whose grace period is over to the workers, unless it was cancelled."""
        assert self._pool is not None
        with self._lock:
            while not self._closed:
                now = self._clock()
                while self._due and self._due[0][0] <= now:
                    _, _, working = heapq.heappop(self._due)
                    if working.state == "pending":
                        working.state = "adding"
                        self._pool.submit(self._add, working)
                self._lock.wait(self._due[0][0] - now if self._due else None)

    def _answered(self, working: Working) -> None:
        with self._lock:
            if working.state == "pending":
                working.state = "off"  # cancelled: the timer skips it

    def _done(self, working: Working) -> None:
        with self._lock:
            state = working.state
            if state == "pending":
                working.state = "off"  # cancelled: the timer skips it
                return
            if state == "adding":
                working.state = "finishing"  # the worker adding it takes it off after
                return
            if state != "shown":
                return
            working.state = "off"
        if self._pool is None:
            self._remove(working)
        else:
            try:
                self._pool.submit(self._remove, working)
            except RuntimeError:  # closed: take it off here rather than leave it on
                self._remove(working)

    def _add(self, working: Working) -> None:
        # A throttled add is skipped rather than waited out: a worker sleeping on Retry-After
        # would hold up every reaction behind it.
        client = copy.copy(working._client)
        client.retry_handlers = [h for h in client.retry_handlers if not isinstance(h, RateLimitErrorRetryHandler)]
        try:
            client.reactions_add(channel=working.channel, timestamp=working.ts, name=REACTION)
            added = True
        except Exception as exc:  # cosmetic: the answer matters
            _log.warning("slack.reaction_failed", method="reactions.add", error=exc)
            added = False
        with self._lock:
            finishing = working.state == "finishing"
            working.state = "shown" if added and not finishing else "off"
        if added and finishing:
            self._remove(working)

    def _remove(self, working: Working) -> None:
        try:
            working._client.reactions_remove(channel=working.channel, timestamp=working.ts, name=REACTION)
        except Exception as exc:
            _log.warning("slack.reaction_failed", method="reactions.remove", error=exc)
