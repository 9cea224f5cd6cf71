"""What Penny shows while it works on a question, kept off the answer's path.

In a thread (a channel thread, a DM thread, an assistant thread) it is Slack's own status line
under the thread, "Penny is searching the docs…", then "Penny is writing…" once the LLM writes
(``assistant.threads.setStatus``, bot scope ``chat:write``, Slack's special rate tier). Where the
status does not apply (a top-level DM, answered at the top level), or Slack refuses it (an app
without the scope, a conversation it does not support), the question gets the 👀 reaction
(``reactions.add``, ``reactions:write``) instead; a refusal that will not change (missing scope,
unknown method) turns the status off for good, once, with one log line.

:meth:`WorkingIndicator.show` is called when a question arrives and returns a :class:`Working`; its
:meth:`~Working.writing` when the answer starts being written, and :meth:`~Working.done` once the
answer is out. Nothing is shown unless the answer is not out within ``grace_s``: a cached answer, a
refusal or a no-match is out in milliseconds, so it gets no status or reaction that would flicker
on and off, and costs no Slack calls. It is cleared after the answer (``status=""``; Slack also
clears it when Penny replies in the thread, and after two minutes).

Slack calls are made on worker threads, never on the thread that answers, so Slack's round trip is
not added to every answer, and a throttled ``reactions.add`` (Tier 3: about 50 a minute, which a
burst of questions reaches) or status never holds an answer back: a throttled or failed
``reactions.add`` or status is skipped, not retried (it is cosmetic; the answer matters). Taking it
off (``reactions.remove``, the empty status) keeps the client's retry handlers and retries a 5xx too:
a 👀 or status left on an answered question would say Penny is still working. For the same reason an
add that failed in a way that may have taken effect all the same (a 5xx, a connection broken after
the request went out) is taken off after the answer like one that succeeded. The calls of one question are made one at
a time, so "writing" never lands after the status was cleared.

``workers=0`` makes every call at once on the calling thread, in order (shown before the answer,
cleared after it): the call sequence is then fixed, which tests that read it rely on.
"""

from __future__ import annotations

import contextlib
import copy
import heapq
import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Final, Literal

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry import RateLimitErrorRetryHandler

from bot.slack.web_outcome import ServerErrorRetry, may_have_taken_effect
from proxy_core import Clock, get_logger, monotonic

__all__ = ["GRACE_S", "REACTION", "SEARCHING", "WORKERS", "WRITING", "Working", "WorkingIndicator"]

REACTION: Final = "eyes"
SEARCHING: Final = "is searching the docs…"  # Slack shows it after the app's name
WRITING: Final = "is writing…"
# setStatus refusals that mean "not here": this question gets the 👀 instead
STATUS_NOT_HERE: Final = frozenset({"channel_type_not_supported", "channel_not_found", "invalid_thread_ts",
                                    "no_permission", "access_denied", "not_in_channel"})
# ...and those that will not change until Penny's app does: no more statuses until a restart
STATUS_UNAVAILABLE: Final = frozenset({"missing_scope", "unknown_method", "not_allowed_token_type",
                                       "method_deprecated"})
GRACE_S: Final = 0.5  # an answer out sooner gets no reaction
WORKERS: Final = 4  # threads making reactions; a Slack call takes ~0.1-0.3 s

_log = get_logger()

_State = Literal["pending", "adding", "finishing", "shown", "off"]
_Mode = Literal["status", "reaction", "none"]


class Working:
    """What one question shows while Penny works on it. ``writing()`` moves a status on to
    "writing"; ``answered()`` says the answer is out: nothing not shown yet is then shown.
    ``done()`` takes it off (or cancels it); calling any of them again does nothing."""

    def __init__(self, owner: WorkingIndicator, client: WebClient, channel: str, ts: str | None,
                 thread_ts: str | None, mode: _Mode) -> None:
        self._owner = owner
        self._client = client
        self.channel = channel
        self.ts = ts  # the question's message (for the reaction)
        self.thread_ts = thread_ts  # the thread the answer goes to (for the status)
        self.mode: _Mode = mode  # guarded by the owner's lock, like state and text
        self.state: _State = "pending"
        self.text = SEARCHING  # the status to show
        self.sent = ""  # the status last sent to Slack
        self.calls = threading.Lock()  # one Slack call of this question at a time, in order

    def writing(self) -> None:
        self._owner._writing(self)

    def answered(self) -> None:
        self._owner._answered(self)

    def done(self) -> None:
        self._owner._done(self)


class WorkingIndicator:
    """Shows slow questions' status (or 👀) and takes it off after their answers (see the module doc).

    ``clock`` (monotonic) times the grace period; ``sleep`` waits between the retries of a removal
    Slack answered with a 5xx. :meth:`close` cancels reactions not made yet and waits for those
    under way, removals included.
    """

    def __init__(self, *, grace_s: float = GRACE_S, workers: int = WORKERS, clock: Clock = monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if grace_s < 0 or workers < 0:
            raise ValueError("grace_s and workers must not be negative")
        self.grace_s = grace_s
        self._clock = clock
        self._sleep = sleep
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="penny-working") if workers else None
        self._lock = threading.Condition()
        self._due: list[tuple[float, int, Working]] = []
        self._seq = itertools.count()
        self._timer: threading.Thread | None = None
        self._closed = False
        self.status_off = False  # Slack refused a status for good: reactions only from now on

    def show(self, client: WebClient, channel: str, ts: str | None, *, thread_ts: str | None = None) -> Working:
        """Start showing that Penny works on the message ``ts`` in ``channel``: a status in
        ``thread_ts`` (the thread the answer goes to), or, without one, a reaction on ``ts``."""
        with self._lock:
            mode: _Mode = "status" if thread_ts and not self.status_off else "reaction" if ts else "none"
        working = Working(self, client, channel, ts, thread_ts, mode)
        if mode == "none":
            working.state = "off"
            return working
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

    def _writing(self, working: Working) -> None:
        with self._lock:
            if working.text == WRITING:
                return
            working.text = WRITING  # a status not shown yet will show this
            if working.state != "shown" or working.mode != "status":
                return
        if self._pool is None:
            self._retext(working)
        else:
            with contextlib.suppress(RuntimeError):  # closed: "writing" is not worth a call any more
                self._pool.submit(self._retext, working)

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
        if self._done_before_added(working):  # done while queued behind other calls: nothing to show now
            return
        with working.calls:
            if working.mode == "status":
                added = self._add_status(client, working)  # falls back to the reaction where it does not apply
            else:
                added = self._add_reaction(client, working)
        with self._lock:
            finishing = working.state == "finishing"
            working.state = "shown" if added and not finishing else "off"
            # "writing" came while the status was on its way: show it now
            stale = added and not finishing and working.mode == "status" and working.text != working.sent
        if added and finishing:
            self._remove(working)
        elif stale:
            self._retext(working)

    def _done_before_added(self, working: Working) -> bool:
        """Whether ``working`` was done before its add started (then it is off)."""
        with self._lock:
            if working.state != "finishing":
                return False
            working.state = "off"
            return True

    def _add_status(self, client: WebClient, working: Working) -> bool:
        """Show the status; on a refusal that means "not here", fall back to the reaction."""
        assert working.thread_ts is not None
        with self._lock:
            text = working.sent = working.text
        try:
            client.assistant_threads_setStatus(channel_id=working.channel, thread_ts=working.thread_ts, status=text)
            return True
        except SlackApiError as exc:
            error = str(exc.response.get("error") or "")
            _log.warning("slack.status_failed", error=error or exc)
            if error in STATUS_UNAVAILABLE:
                with self._lock:
                    first, self.status_off = not self.status_off, True
                if first:
                    _log.warning("slack.status_off", error=error,
                                 note="the eyes reaction shows Penny is working until Penny restarts")
            elif error not in STATUS_NOT_HERE:
                # Throttled or failing: skipped, like a reaction (cleared after, if it may be on).
                return may_have_taken_effect(exc)
        except Exception as exc:  # cosmetic: the answer matters
            _log.warning("slack.status_failed", error=exc)
            return may_have_taken_effect(exc)
        with self._lock:
            working.mode = "reaction" if working.ts else "none"
        return working.mode == "reaction" and self._add_reaction(client, working)

    @staticmethod
    def _add_reaction(client: WebClient, working: Working) -> bool:
        if working.ts is None:
            return False
        try:
            client.reactions_add(channel=working.channel, timestamp=working.ts, name=REACTION)
            return True
        except Exception as exc:  # cosmetic: the answer matters
            if isinstance(exc, SlackApiError) and exc.response.get("error") == "already_reacted":
                return True  # a retry of an add that went through: it is on
            _log.warning("slack.reaction_failed", method="reactions.add", error=exc)
            # A 5xx or a broken connection may have put it on all the same: then it is taken off
            # after the answer like any other (Slack says ``no_reaction`` if it was not).
            return may_have_taken_effect(exc)

    def _retext(self, working: Working) -> None:
        client = copy.copy(working._client)
        client.retry_handlers = [h for h in client.retry_handlers if not isinstance(h, RateLimitErrorRetryHandler)]
        with working.calls:
            with self._lock:
                if working.state != "shown" or working.mode != "status" or working.thread_ts is None:
                    return  # cleared meanwhile: a late "writing" would bring it back
                text, thread_ts = working.text, working.thread_ts
                working.sent = text
            try:
                client.assistant_threads_setStatus(channel_id=working.channel, thread_ts=thread_ts, status=text)
            except Exception as exc:
                _log.warning("slack.status_failed", error=exc)

    def _remove(self, working: Working) -> None:
        # Taking it off is safe to repeat, so a 5xx is retried too: left on, it would say Penny is
        # still working on a question it has answered.
        client = copy.copy(working._client)
        client.retry_handlers = [*client.retry_handlers, ServerErrorRetry(sleep=self._sleep)]
        with working.calls:
            try:
                if working.mode == "status" and working.thread_ts is not None:
                    client.assistant_threads_setStatus(channel_id=working.channel, thread_ts=working.thread_ts,
                                                       status="")
                else:
                    client.reactions_remove(channel=working.channel, timestamp=working.ts, name=REACTION)
            except Exception as exc:
                if isinstance(exc, SlackApiError) and exc.response.get("error") == "no_reaction":
                    return  # an add that failed in a way that might have put it on had not
                _log.warning("slack.working_clear_failed", mode=working.mode, error=exc)
