"""``penny run --http``: Penny behind gunicorn, many worker processes, one store.

Gunicorn's threaded (``gthread``) workers serve Bolt through its WSGI adapter
(``slack_bolt.adapter.wsgi.SlackRequestHandler``): Penny's app is synchronous Bolt, so a WSGI server
runs it unchanged, and gunicorn's pre-fork arbiter gives what one Python process cannot (one core, one
GIL): N workers, each restarted when it dies, a graceful ``SIGTERM``, a bounded backlog and per-worker
connection cap, keep-alive, and limits on the request line and headers.

Each worker builds its own Penny after the fork (:meth:`_PennyServer.load`): gateway, store
connection, maintenance thread, answering service and Bolt app. Nothing of that exists in the
arbiter, so no thread or connection is ever copied into a child. Workers share everything else
through the store: event claims (each event answered once, whichever worker or replica gets it),
limits, budgets, ledger, answer cache, docs index.

In front of Bolt, :class:`PennyWSGI` answers ``/healthz``, ``/readyz`` and ``/metrics`` itself, and
runs :func:`~bot.slack.http_guard.parse_request` on ``/slack/events``: a ``Content-Length`` over
1 MiB is refused (413) before a byte of the body is read, malformed input gets its 4xx.
:class:`PennyWorker` changes gunicorn's gthread worker against clients that connect and then send
slowly or nothing: a request reaches a thread only once it has arrived whole (the worker's selector
collects it, within a deadline), and what a thread still reads from a socket it reads by that deadline.
Bolt acks an event as soon as it is verified; its answer starts once the worker has no request left
to ack (:class:`~bot.slack.pacing.AcksFirst`), so a burst is not acked in turns with the answers of
the events before it.

Shutdown: ``SIGTERM`` to the arbiter stops accepting, lets each worker finish its requests, then
the answers its listeners are still writing (up to ``graceful_timeout_s``), closes the gateway (which
writes its spool), and exits 0.
"""

from __future__ import annotations

import errno
import math
import mmap
import os
import re
import selectors
import shutil
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Final, Protocol, TextIO

from gunicorn.app.base import BaseApplication
from gunicorn.workers.gthread import TConn, ThreadWorker
from slack_bolt.adapter.wsgi.http_response import WsgiHttpResponse

from bot.answer_types import Answerer
from bot.settings import BotSettings
from bot.slack.http_guard import MAX_BODY_BYTES, Rejection, content_length, parse_request
from bot.slack.pacing import AcksFirst, DrainingExecutor, WorkTurns, dispatch_acked
from proxy_core import ConfigurationError, Gateway, Store, StoreError, get_logger

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIEnvironment

    from slack_bolt import App, BoltRequest

    from bot.slack.runner import AlertRelay
    from bot.slack.startup import SlackInstallation

__all__ = [
    "Backend", "EarlyAcks", "HTTPOptions", "LogBudget", "PennyWSGI", "PennyWorker", "Served",
    "StoreReadiness", "WorkerLoads", "announce", "ops_reply", "run_arbiter", "serve",
]

EVENTS_PATH: Final = "/slack/events"
_log = get_logger()


@dataclass(frozen=True)
class HTTPOptions:
    """How ``penny run --http`` serves. ``host`` defaults to loopback: Slack only calls HTTPS URLs, so
    a TLS reverse proxy on the same machine is always in front, and ``/metrics`` and ``/readyz`` stay
    off the network (in a container, where the proxy is another host, use ``0.0.0.0``)."""

    host: str = "127.0.0.1"
    port: int = 3000
    workers: int = 1
    threads: int = 16  # per worker, for requests only: Bolt acks at once and answers on its own pool
    backlog: int = 2048  # connections the kernel queues before a worker accepts them
    connections: int = 1000  # per worker, open at once (idle keep-alive ones included)
    keepalive_s: float = 75.0  # longer than a proxy's idle timeout (nginx and AWS ALB: 60 s)
    read_timeout_s: float = 10.0  # a request's headers and body, from its first byte
    graceful_timeout_s: float = 30.0  # after SIGTERM: the answers in flight, then the worker is killed
    log_level: str = "info"
    access_log: str | None = None  # a file, or "-" for stderr: one line per request, with the worker's pid


class Backend(Protocol):
    """What one worker answers with: the service, the store, the gateway (None: extractive answers)
    and the alert relay; ``close`` ends them (the gateway writes its spool)."""

    @property
    def service(self) -> Answerer: ...
    @property
    def store(self) -> Store: ...
    @property
    def gateway(self) -> Gateway | None: ...
    @property
    def alerts(self) -> AlertRelay: ...

    def close(self) -> None: ...


class Served(Protocol):
    """What one worker process serves on this stack (the Slack bot, or ``penny proxy``): its WSGI
    app, and how it stops (``close`` waits up to ``timeout_s`` for work still running)."""

    @property
    def wsgi(self) -> Callable[[WSGIEnvironment, StartResponse], Iterable[bytes]]: ...

    def pending(self) -> int:
        """Work taken on and not finished beyond the requests gunicorn is serving (the answers
        still being written after their acks): part of how busy the worker is (:class:`WorkerLoads`)."""
        ...

    def close(self, timeout_s: float) -> None: ...


# -- the WSGI application ------------------------------------------------------------------------


def ops_reply(environ: WSGIEnvironment, start_response: StartResponse, *, ready: Callable[[], str | None],
              metrics: Callable[[], bytes] | None) -> list[bytes] | None:
    """``GET /healthz`` (the process answers), ``/readyz`` (``ready()`` returns no problem) and
    ``/metrics``, answered; None for any other request."""
    method = environ.get("REQUEST_METHOD", "GET")
    if method not in ("GET", "HEAD"):
        return None
    head = method == "HEAD"
    path = environ.get("PATH_INFO", "")
    if path == "/healthz":
        return _reply(start_response, 200, b"ok\n", head=head)
    if path == "/readyz":
        problem = ready()
        return _reply(start_response, 503 if problem else 200, f"{problem or 'ready'}\n".encode(), head=head)
    if path == "/metrics" and metrics is not None:
        from prometheus_client import CONTENT_TYPE_LATEST

        return _reply(start_response, 200, metrics(), CONTENT_TYPE_LATEST, head=head)
    return None


class PennyWSGI:
    """One worker's WSGI application: ``POST /slack/events`` (guard, then Bolt), ``GET /healthz``
    (the process answers), ``GET /readyz`` (``ready()`` returns no problem), ``GET /metrics``. With
    ``signing_secret`` the guard verifies a request's signature before its body is parsed."""

    def __init__(self, app: App, *, ready: Callable[[], str | None], metrics: Callable[[], bytes] | None = None,
                 path: str = EVENTS_PATH, acks_first: AcksFirst | None = None,
                 early_acks: EarlyAcks | None = None, signing_secret: str | None = None) -> None:
        from slack_sdk.signature import SignatureVerifier

        self._app = app
        self._verifier = SignatureVerifier(signing_secret) if signing_secret else None
        self.acks_first = acks_first or AcksFirst()
        self._ready = ready
        self._metrics = metrics
        self._path = path
        self._early_acks = early_acks
        self._rejected_lines = LogBudget()  # anyone who reaches the port can cause these

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "")
        if path == self._path and method == "POST":
            with self.acks_first.request():
                return self._slack(environ, start_response)
        ops = ops_reply(environ, start_response, ready=self._ready, metrics=self._metrics)
        return ops if ops is not None else _reply(start_response, 404, b"Not Found\n", head=method == "HEAD")

    def _slack(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        length = content_length(environ.get("CONTENT_LENGTH"))
        if isinstance(length, Rejection):
            return _reject(start_response, length, self._rejected_lines)  # the body is never read
        stream = environ["wsgi.input"]
        chunked = "chunked" in str(environ.get("HTTP_TRANSFER_ENCODING", "")).lower()
        try:
            body: bytes = stream.read(MAX_BODY_BYTES + 1) if chunked else stream.read(length)
        except OSError:  # the read deadline passed, or the client went away
            return _reject(start_response, Rejection(408, "the body did not arrive in time"), self._rejected_lines)
        if len(body) > MAX_BODY_BYTES:
            return _reject(start_response, Rejection(413, f"the body is larger than {MAX_BODY_BYTES} bytes"),
                           self._rejected_lines)
        if not chunked and len(body) < length:
            return _reject(start_response, Rejection(400, "the body is shorter than its Content-Length"),
                           self._rejected_lines)
        headers = {name[5:].replace("_", "-").lower(): str(value) for name, value in environ.items()
                   if name.startswith("HTTP_")}
        if "CONTENT_TYPE" in environ:
            headers["content-type"] = str(environ["CONTENT_TYPE"])
        headers["content-length"] = str(len(body))
        request = parse_request(headers, body, str(environ.get("QUERY_STRING", "")), verifier=self._verifier)
        if isinstance(request, Rejection):
            return _reject(start_response, request, self._rejected_lines)
        if self._early_acks is not None and self._early_acks.take(request, body, headers, self._app):
            return _reply(start_response, 200, b"")  # Bolt's own ack of an event: an empty 200
        # What Bolt's WSGI adapter does with a POST to its path, without parsing the body again.
        with self.acks_first.awaiting_ack():
            response = self._app.dispatch(request)
        wsgi = WsgiHttpResponse(status=response.status, headers=response.headers, body=response.body)
        start_response(wsgi.status, wsgi.get_headers())
        return wsgi.get_body()


class EarlyAcks:
    """Acks an Events API delivery before Bolt sees it, and has Bolt handle it after the acks.

    Bolt acks every ``event_callback`` with an empty 200 whatever its listeners do, once it has
    run its middleware and matched a listener: half of an ack's CPU. For a delivery whose signature
    and timestamp :meth:`take` verifies itself (as Bolt's request verification does), that 200 is
    sent at once and Bolt's whole dispatch runs on ``later`` (the listener pool, which holds it
    until the worker has no more acks to send). Anything else — a bad signature, ``url_verification``,
    slash commands and interactivity, whose acks can carry a body — goes to Bolt as before."""

    def __init__(self, signing_secret: str, later: Executor) -> None:
        from slack_sdk.signature import SignatureVerifier

        self._verifier = SignatureVerifier(signing_secret)
        self._later = later

    def take(self, request: BoltRequest, body: bytes, headers: dict[str, str], app: App) -> bool:
        """Whether the request was taken (the caller answers 200): a verified event delivery."""
        payload = request.body
        if not (isinstance(payload, dict) and payload.get("type") == "event_callback"):
            return False
        if not self._verifier.is_valid_request(body, headers):
            return False  # Bolt answers it (401), and logs why
        self._later.submit(dispatch_acked, app, request)
        return True


def _reply(start_response: StartResponse, status: int, body: bytes,
           content_type: str = "text/plain; charset=utf-8", *, head: bool = False) -> list[bytes]:
    """Answer ``body``; to a HEAD, its headers only (gunicorn logs a warning for every body it must drop)."""
    from http import HTTPStatus

    start_response(f"{status} {HTTPStatus(status).phrase}",
                   [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [] if head else [body]


class LogBudget:
    """At most ``lines`` log lines of one kind per ``window_s`` seconds: lines that anyone who can
    reach the port can cause (a rejected request, a readiness probe while the store is down) must
    not let a flood of requests fill the disk that the ledger's spool shares. Past the budget they
    are counted, and the next line logged says how many were left out. Thread-safe."""

    def __init__(self, lines: int = 100, window_s: float = 10.0, *, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self._lines = lines
        self._window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._window_end = 0.0
        self._logged = 0
        self._left_out = 0

    def take(self) -> dict[str, int] | None:
        """The fields to add to a line that may be logged now (``left_out``, if lines were), or None
        when this one is over the budget (it is counted)."""
        with self._lock:
            now = self._clock()
            if now >= self._window_end:
                self._window_end, self._logged = now + self._window_s, 0
            if self._logged >= self._lines:
                self._left_out += 1
                return None
            self._logged += 1
            left_out, self._left_out = self._left_out, 0
            return {"left_out": left_out} if left_out else {}


class StoreReadiness:
    """``/readyz``'s store check: the store answers, or "store unreachable". The reply goes to
    whoever reaches the port, so the store's host, port and driver error go to the log as ``event``,
    one line per 10 s (a load balancer probes every few seconds; one line says it)."""

    def __init__(self, store: Store, event: str) -> None:
        self._store = store
        self._event = event
        self._lines = LogBudget(lines=1)

    def problem(self) -> str | None:
        try:
            self._store.ping()
        except StoreError as exc:
            logged = self._lines.take()
            if logged is not None:
                _log.warning(self._event, error=str(exc), **logged)
            return "store unreachable"
        return None


def _reject(start_response: StartResponse, rejection: Rejection, budget: LogBudget) -> list[bytes]:
    import json

    logged = budget.take()
    if logged is not None:
        _log.warning("slack.http_rejected", status=rejection.status, reason=rejection.message, **logged)
    return _reply(start_response, rejection.status, json.dumps({"error": rejection.message}).encode(),
                  "application/json")


class _Worker:
    """One worker process's Penny: its backend, its Bolt app and the pool answers are written on."""

    def __init__(self, backend: Backend, settings: BotSettings, *, metrics: Callable[[], bytes] | None,
                 installation: SlackInstallation | None = None, turns: WorkTurns | None = None) -> None:
        from bot.slack.app import make_client
        from bot.slack.runner import LISTENER_THREADS, penny_app, slack_settings

        self.backend = backend
        self._store_ready = StoreReadiness(backend.store, "slack.not_ready")
        acks_first = AcksFirst()
        self.listeners = DrainingExecutor(LISTENER_THREADS, acks_first=acks_first, turns=turns)
        self.listeners.start_threads()
        config = slack_settings(settings)
        client = make_client(config, waiting=turns.waiting if turns is not None else None)
        app = penny_app(backend.service, backend.store, backend.gateway, config, settings=settings, client=client,
                        listener_executor=self.listeners, installation=installation)
        backend.alerts.attach(app.client)
        early = EarlyAcks(config.signing_secret, self.listeners) if config.signing_secret else None
        self.wsgi = PennyWSGI(app, ready=self.ready, metrics=metrics, acks_first=acks_first, early_acks=early,
                              signing_secret=config.signing_secret)

    def ready(self) -> str | None:
        """Why this worker cannot answer yet (store unreachable, no docs index), or None."""
        problem = self._store_ready.problem()
        if problem is not None:
            return problem
        index = getattr(self.backend.service, "index", None)
        if index is not None and index.version == 0:
            return "no docs index loaded yet"
        return None

    def pending(self) -> int:
        return self.listeners.pending()

    def close(self, timeout_s: float) -> None:
        left = self.listeners.drain(timeout_s)
        if left:
            _log.warning("slack.http_shutdown_cut_answers", running=left, waited_s=timeout_s)
        self.listeners.shutdown(wait=False)
        self.backend.close()


# -- gunicorn: the worker and the arbiter --------------------------------------------------------


class _DeadlineSocket(socket.socket):
    """A client connection whose blocking reads share one deadline, set each time gunicorn starts a
    request on it (``setblocking(True)``): a client that trickles its headers or body a byte at a
    time loses the connection when the deadline passes, instead of holding a thread."""

    _limit_s: float
    _deadline: float | None
    expired: bool

    @classmethod
    def adopt(cls, sock: socket.socket, limit_s: float) -> _DeadlineSocket:
        conn = cls(sock.family, sock.type, sock.proto, fileno=sock.detach())
        conn._limit_s = limit_s
        conn._deadline = None
        conn.expired = False
        return conn

    def setblocking(self, flag: bool) -> None:
        if flag:
            self._deadline = time.monotonic() + self._limit_s
            super().settimeout(self._limit_s)
        else:
            self._deadline = None
            super().setblocking(False)

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        self._arm()
        try:
            return super().recv(bufsize, flags)
        except TimeoutError:
            if self._deadline is not None and time.monotonic() >= self._deadline:
                raise self._expire() from None
            raise  # a shorter timeout of the caller's own (gunicorn's drains): theirs to handle

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        self._arm()
        try:
            return super().recv_into(buffer, nbytes, flags)
        except TimeoutError:
            if self._deadline is not None and time.monotonic() >= self._deadline:
                raise self._expire() from None
            raise

    def _arm(self) -> None:
        if self._deadline is None:
            return
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise self._expire()
        current = self.gettimeout()
        if current is None or current > remaining:
            super().settimeout(remaining)

    def _expire(self) -> ConnectionResetError:
        # gunicorn drops a reset connection quietly; one line of ours says why.
        if not self.expired:
            self.expired = True
            _log.warning("slack.http_read_timeout", limit_s=self._limit_s)
        return ConnectionResetError(errno.ECONNRESET, f"request not received within {self._limit_s:g} s")


ACCEPTS_AT_ONCE: Final = 64
BALANCE_SLACK: Final = 4  # how much busier than the least busy other worker a worker may get in one go
ACCEPT_PAUSE_S: Final = 0.001  # how long a busier worker leaves the backlog to the others


class WorkerLoads:
    """How busy each worker is, in memory the arbiter maps before it forks them, so that every
    worker sees the others' (one signed 64-bit slot each; -1: no worker).

    All workers accept from one listening socket, and the kernel wakes them all for a connection:
    left alone, whichever worker wins the wake-ups of a burst takes most of it (600 cache hits at
    once on 2 workers split 445 : 155, and 2 workers answered 1.14× as fast as one). So a worker
    takes connections only while it is no busier than the least busy other worker plus
    :data:`BALANCE_SLACK`; past that it stops accepting for :data:`ACCEPT_PAUSE_S` and leaves the
    backlog to the others (:class:`PennyWorker`). Busy is the worker's open connections plus its
    answers not yet written (:meth:`Served.pending`): least connections, as a load balancer in front
    would count. A slot is a hint, read without a lock: a worker publishes its load at each turn of
    its loop and each connection it takes."""

    ABSENT: Final = -1

    def __init__(self, slots: int = 64) -> None:
        self._slots = slots
        self._all = struct.Struct(f"{slots}q")
        self._memory = mmap.mmap(-1, self._all.size)  # anonymous and shared: forked workers see one copy
        self._all.pack_into(self._memory, 0, *([self.ABSENT] * slots))

    def claim(self, taken: Collection[int]) -> int | None:
        """The arbiter, before forking a worker: a free slot (none when all are taken). It stays
        absent until the worker publishes its first load, as its accept loop starts: a booting worker
        (building Penny, loading the index, starting its threads) takes no connection, and counted as
        idle it would make the others pause for it through its whole boot."""
        free = next((slot for slot in range(self._slots) if slot not in taken), None)
        if free is not None:
            self.release(free)
        return free

    def publish(self, slot: int, load: int) -> None:
        struct.pack_into("q", self._memory, 8 * slot, load)

    def release(self, slot: int) -> None:
        """The arbiter, once the worker has exited."""
        self.publish(slot, self.ABSENT)

    def least_other(self, slot: int | None) -> int | None:
        """The load of the least busy worker other than ``slot``'s; None if there is none."""
        loads = [load for other, load in enumerate(self._all.unpack_from(self._memory))
                 if other != slot and load != self.ABSENT]
        return min(loads) if loads else None


BUFFERED_REQUEST_BYTES: Final = 256 * 1024  # larger requests (never Slack's) are read on a thread
UNREAD_BODY_DRAIN_S: Final = 0.1  # after a response, how long the rest of a body the app did not read may take
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)


def request_complete(data: bytes) -> bool:
    """Whether ``data``, the bytes of a request received so far, can go to a thread: the whole
    request is there, or it is one a thread must read itself (chunked, over
    :data:`BUFFERED_REQUEST_BYTES`, or sent with ``Expect: 100-continue``, whose body comes only
    once a thread says to go on), or it is malformed (the thread answers it with a 4xx)."""
    head_end = data.find(b"\r\n\r\n")
    if head_end < 0:
        return len(data) > BUFFERED_REQUEST_BYTES  # gunicorn refuses headers this long
    head = data[: head_end + 2]
    lowered = head.lower()
    if b"transfer-encoding:" in lowered or b"\r\nexpect:" in lowered:
        return True
    lengths = _CONTENT_LENGTH.findall(head)
    if len(lengths) != 1:
        return True  # no body, or several lengths (which gunicorn refuses)
    length = int(lengths[0])
    return length > BUFFERED_REQUEST_BYTES or len(data) >= head_end + 4 + length


class PennyWorker(ThreadWorker):  # type: ignore[misc]  # gunicorn ships no type hints
    """gunicorn's gthread worker, except that a request reaches a thread only once it has arrived
    whole: the worker's selector collects its bytes (:func:`request_complete`) and closes the
    connection if that takes longer than ``read_timeout_s`` (gunicorn waits for a first byte on a
    pool thread, up to five seconds, then reads the rest there without a deadline). Idle or slow
    clients hold a file descriptor, never a thread; what a thread still reads from the socket
    (a chunked or unusually large body) it reads by the same deadline (:class:`_DeadlineSocket`)."""

    read_timeout_s: float = HTTPOptions.read_timeout_s
    loads: WorkerLoads | None = None
    penny_slot: int | None = None  # this worker's in ``loads``, given by the arbiter before the fork
    # The worker's first load is published as its loop starts (``notify``): not while it boots.
    _closer: ThreadPoolExecutor
    _made_room_lines: LogBudget  # at the connection cap: one line per 10 s, counting the connections closed

    def init_process(self) -> None:
        self._closer = ThreadPoolExecutor(max_workers=4, thread_name_prefix="penny-close")
        self._made_room_lines = LogBudget(lines=1)
        super().init_process()  # runs the worker until it stops

    def _keepalive_after(self, conn: TConn, keepalive: bool) -> bool:
        """Whether the connection serves another request. A body the app did not read (a request it
        refused first: no valid key, too large) is drained only if it is already here: gunicorn
        waits up to five seconds for the rest on one of the worker's threads, so a client without a
        key that declares a large body and sends it slowly could hold every thread."""
        if not keepalive:
            return False
        return bool(conn.parser.finish_body(deadline=time.monotonic() + UNREAD_BODY_DRAIN_S))

    def accept(self, listener: socket.socket) -> None:
        # A burst is taken from the backlog in one go (gunicorn takes one connection per wake-up),
        # while this worker is no busier than the others (WorkerLoads); past that it pauses.
        for _ in range(ACCEPTS_AT_ONCE):
            if self.nr_conns >= self.worker_connections and not self._make_room():
                super().set_accept_enabled(False)  # every connection is a request being served
                break
            if self._busier_than_others() and not self._resumed:
                self._pause_accepting()
                break
            self._resumed = False
            try:
                client, address = listener.accept()
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                    break
                raise
            self.nr_conns += 1
            conn = TConn(self.cfg, _DeadlineSocket.adopt(client, self.read_timeout_s), address,
                         listener.getsockname())
            self._collect(conn)
            self._publish_load()

    # -- sharing a burst with the other workers (WorkerLoads) ----------------------------------------

    _paused_until: float = 0.0
    _resumed: bool = False

    def _busier_than_others(self) -> bool:
        if self.loads is None:
            return False
        least = self.loads.least_other(self.penny_slot)
        return least is not None and self._load() > least + BALANCE_SLACK

    def _pause_accepting(self) -> None:
        """Leave the backlog to the other workers for :data:`ACCEPT_PAUSE_S`; after it this worker
        takes at least one connection whatever the loads say, so a stuck worker's stale load slows
        the others down but never stops them."""
        self._paused_until = time.monotonic() + ACCEPT_PAUSE_S
        super().set_accept_enabled(False)

    # -- at the connection cap (HTTPOptions.connections) ---------------------------------------------

    def _can_make_room(self) -> bool:
        return bool(self.keepalived_conns or self.pending_conns)

    def _make_room(self) -> bool:
        """At the cap, close the connection that has waited longest without a request being served
        on it: an idle kept-alive one first (a client may close those at any time, and reconnects),
        else the one that has taken longest to send its request. Otherwise a client holding the cap's
        worth of idle or trickling connections (a few hundred requests a minute) would keep every
        other client out. As nginx does; a connection a thread is serving is never closed."""
        waiting = self.keepalived_conns or self.pending_conns
        if not waiting:
            return False
        conn = waiting.popleft()
        with suppress(OSError, KeyError, ValueError):
            self.poller.unregister(conn.sock)
        self.nr_conns -= 1
        conn.close()
        logged = self._made_room_lines.take()
        if logged is not None:
            _log.warning("http.connections_full", closed_waiting=1 + logged.get("left_out", 0),
                         cap=self.worker_connections, pid=os.getpid())
        return True

    def set_accept_enabled(self, enabled: bool) -> None:
        if not enabled and self.alive and self._can_make_room():
            enabled = True  # gunicorn's loop turns accepting off at the cap: room can be made (accept)
        # gunicorn's loop re-enables accepting at each turn: not while paused.
        if enabled and not self._accepting:
            if time.monotonic() < self._paused_until:
                return
            self._resumed = self._paused_until > 0
            self._paused_until = 0.0
        if not enabled and not self.alive and self.loads is not None and self.penny_slot is not None:
            self.loads.release(self.penny_slot)  # stopping: no longer one of the workers to balance with
            self.penny_slot = None
        super().set_accept_enabled(enabled)

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        # Paused: the loop turns again when the pause ends, and that turn accepts again. A pause
        # already over (the worker is at its connection cap) waits as gunicorn would.
        remaining = self._paused_until - time.monotonic() if self._paused_until else 0.0
        super().wait_for_and_dispatch_events(min(timeout, remaining) if remaining > 0 else timeout)

    def notify(self) -> None:
        super().notify()  # once per turn of the worker's loop: the arbiter's heartbeat
        if not self._accepting and self.nr_conns >= self.worker_connections:
            self.set_accept_enabled(False)  # stopped at the cap while every connection was busy: room now?
        self._publish_load()

    def _load(self) -> int:
        server: _PennyServer = self.app
        return int(self.nr_conns) + server.pending()

    def _publish_load(self) -> None:
        if self.loads is not None and self.penny_slot is not None:
            self.loads.publish(self.penny_slot, self._load())

    def enqueue_req(self, conn: TConn) -> None:
        # From here until finish_request the request counts as being acked (AcksFirst), queued or not.
        acks_first = getattr(self.wsgi, "acks_first", None)
        if acks_first is not None:
            acks_first.begin()
            conn.acking = acks_first
        super().enqueue_req(conn)

    def on_client_socket_readable(self, conn: TConn, client: socket.socket) -> None:
        """A kept-alive connection starts its next request: collect it like a new one's."""
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._collect(conn)
        self._receive(conn, client)

    def _collect(self, conn: TConn) -> None:
        conn.received = b""
        conn.timeout = time.monotonic() + self.read_timeout_s  # murder_pending closes it after that
        self.pending_conns.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._receive, conn))

    def _receive(self, conn: TConn, client: socket.socket) -> None:
        try:
            data = conn.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        conn.received += data
        if data and not request_complete(conn.received):
            return
        self.poller.unregister(client)
        self.pending_conns.remove(conn)
        conn.data_ready = True
        self.enqueue_req(conn)

    def handle(self, conn: TConn) -> Any:
        received, conn.received = getattr(conn, "received", b""), b""
        if received:
            conn.init()
            conn.parser.unreader.unread(received)
        return super().handle(conn)

    def finish_request(self, conn: TConn, fs: Future[Any]) -> None:
        acking, conn.acking = getattr(conn, "acking", None), None
        if acking is not None:
            acking.end()
        # gunicorn closes a finished connection on its selector thread, lingering up to two seconds
        # for the client to close first: a client that never does would stall every connection of
        # this worker. That linger happens on a small pool here; a timed-out one is just closed.
        try:
            closing = fs.cancelled() or not fs.result()
        except Exception:
            closing = True
        if not closing:
            super().finish_request(conn, fs)
            return
        self.nr_conns -= 1
        if getattr(conn.sock, "expired", False):
            conn.close()
        else:
            self._closer.submit(conn.close, graceful=True)


class _PennyServer(BaseApplication):  # type: ignore[misc]  # gunicorn ships no type hints
    """The gunicorn arbiter's application: configuration in, and one :class:`_Worker` per worker
    process, built in that process (``load`` runs after the fork)."""

    def __init__(self, options: HTTPOptions, build: Callable[[], Served], on_ready: Callable[[str], None],
                 metrics_dir: str, *, url_path: str = EVENTS_PATH) -> None:
        self._options = options
        self._build = build
        self._on_ready = on_ready
        self._metrics_dir = metrics_dir
        self._url_path = url_path
        self._worker: Served | None = None
        self._loads = WorkerLoads()
        super().__init__()

    def pending(self) -> int:
        """This worker process's :meth:`Served.pending` (0 before it is built)."""
        return self._worker.pending() if self._worker is not None else 0

    def load_config(self) -> None:
        o = self._options
        host = f"[{o.host}]" if ":" in o.host else o.host
        worker = type("PennyWorker", (PennyWorker,), {"read_timeout_s": o.read_timeout_s, "loads": self._loads})
        for key, value in {
            "bind": [f"{host}:{o.port}"],
            "workers": o.workers,
            "worker_class": worker,
            "threads": o.threads,
            "worker_connections": o.connections,
            "backlog": o.backlog,
            "keepalive": math.ceil(o.keepalive_s),
            "graceful_timeout": math.ceil(o.graceful_timeout_s) + 15,  # the worker's own deadline comes first
            "timeout": 30,
            "limit_request_line": 4094,
            "limit_request_fields": 100,
            "limit_request_field_size": 8190,
            "loglevel": o.log_level.lower(),
            "proc_name": "penny",
            "accesslog": o.access_log,
            # The path without its query: a client may put a key there (?api_key=…), and no route reads one.
            "access_log_format": '%(h)s %(p)s "%(m)s %(U)s %(H)s" %(s)s %(B)s %(M)sms',
            "control_socket_disable": True,  # two Pennys on one host would share its default path
            "when_ready": self._when_ready,
            "pre_fork": self._pre_fork,
            "post_worker_init": self._post_worker_init,
            "worker_exit": self._worker_exit,
            "child_exit": self._child_exit,
        }.items():
            self.cfg.set(key, value)

    def load(self) -> Callable[[WSGIEnvironment, StartResponse], Iterable[bytes]]:
        self._worker = self._build()
        return self._worker.wsgi

    def _post_worker_init(self, worker: Any) -> None:
        self._on_ready(f"worker {worker.pid}")

    def _when_ready(self, arbiter: Any) -> None:
        host, port = arbiter.LISTENERS[0].sock.getsockname()[:2]
        self._on_ready(f"http://{host}:{port}{self._url_path}")

    def _pre_fork(self, arbiter: Any, worker: Any) -> None:
        taken = {other.penny_slot for other in arbiter.WORKERS.values() if other.penny_slot is not None}
        worker.penny_slot = self._loads.claim(taken)

    def _worker_exit(self, arbiter: Any, worker: Any) -> None:
        if self._worker is not None:
            self._worker.close(self._options.graceful_timeout_s)

    def _child_exit(self, arbiter: Any, worker: Any) -> None:
        from prometheus_client import multiprocess

        # The slot first: a dead worker left in the balance would slow the others down for good.
        if worker.penny_slot is not None:
            self._loads.release(worker.penny_slot)
        multiprocess.mark_process_dead(worker.pid, self._metrics_dir)  # type: ignore[no-untyped-call]


def _multiprocess_metrics() -> tuple[str, Callable[[], bytes]]:
    """Metrics summed over every worker (prometheus_client's multiprocess mode): values live in
    files in a fresh directory, which must be chosen before any worker creates a metric."""
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess, values

    directory = tempfile.mkdtemp(prefix="penny-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]

    def render() -> bytes:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, directory)  # type: ignore[no-untyped-call]
        return bytes(generate_latest(registry))

    return directory, render


def serve(settings: BotSettings, options: HTTPOptions, open_backend: Callable[[WorkTurns], Backend], *,
          out: TextIO, metrics_port: int = 0, installation: SlackInstallation | None = None) -> int:
    """Run the arbiter until it stops; its exit status (0 after SIGTERM or SIGINT). Workers call
    ``open_backend`` after the fork, with the worker's :class:`WorkTurns` (whose ``waiting`` the
    gateway enters around its waits on the LLM); ``metrics_port`` also serves the summed metrics from the
    arbiter on 127.0.0.1; ``installation`` is what the start-up check of the bot token found
    (requests from another workspace or app are dropped)."""
    from bot.slack.runner import slack_settings
    from bot.slack.startup import check_slack

    check_slack(slack_settings(settings))  # auth.test and the token's scopes, before a port is bound

    def build(render: Callable[[], bytes]) -> _Worker:
        turns = WorkTurns()
        return _Worker(open_backend(turns), settings, metrics=render, installation=installation, turns=turns)

    def on_listening(url: str) -> None:
        workers = f"{options.workers} worker{'s' if options.workers != 1 else ''}"
        announce(out, f"Penny is listening for Slack events on {url} ({workers}). SIGTERM stops it gracefully.")

    return run_arbiter(options, build, on_listening, out=out, metrics_port=metrics_port)


def announce(out: TextIO, line: str) -> None:
    """Write one line of the server's own output in one write. The workers print theirs at the same
    moment on the stdout they share, and ``print`` writes a line's text and its newline apart when
    the stream is unbuffered (``PYTHONUNBUFFERED``): two workers' lines then interleaved into one,
    and whatever read them (a supervisor, a test waiting for each worker) missed a worker."""
    out.write(line + "\n")
    out.flush()


def run_arbiter(options: HTTPOptions, build: Callable[[Callable[[], bytes]], Served],
                on_listening: Callable[[str], None], *, out: TextIO, metrics_port: int = 0,
                url_path: str = EVENTS_PATH) -> int:
    """Run gunicorn's arbiter with Penny's worker until it stops; its exit status (0 after SIGTERM
    or SIGINT). Each worker calls ``build`` after the fork, with the renderer of the metrics summed
    over every worker; ``on_listening`` hears the listening URL (ending in ``url_path``), and each
    worker, once ready, says so on ``out`` ("Penny worker <pid> is ready")."""
    check_listen_address(options.host, options.port)
    check_access_log(options.access_log)
    arbiter_pid = os.getpid()

    def on_ready(what: str) -> None:
        if what.startswith("worker "):
            announce(out, f"Penny {what} is ready")
        else:
            on_listening(what)

    metrics_dir, render = _multiprocess_metrics()
    try:
        if metrics_port:
            _serve_arbiter_metrics(render, metrics_port)
            announce(out, f"metrics on http://127.0.0.1:{metrics_port}/metrics")
        _PennyServer(options, partial(build, render), on_ready, metrics_dir, url_path=url_path).run()
        return 0
    except SystemExit as exc:
        if os.getpid() != arbiter_pid:
            raise  # a worker process leaving: it must not run the arbiter's clean-up
        return exc.code if isinstance(exc.code, int) else 1
    finally:
        if os.getpid() == arbiter_pid:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def check_listen_address(host: str, port: int) -> None:
    """Raise a :class:`ConfigurationError` naming ``--host`` or ``--port`` when the server could not
    listen there, before gunicorn tries: it would retry for five seconds, then exit naming neither."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    except (socket.gaierror, UnicodeError) as exc:
        raise ConfigurationError(f"--host {host!r}: not an address of this machine ({_reason(exc)})") from None
    try:
        socket.create_server((host, port), family=family).close()  # SO_REUSEADDR, as gunicorn binds
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ConfigurationError(f"--port {port}: {host}:{port} is in use (another Penny, or another server); "
                                     "stop it or choose another port") from None
        if exc.errno == errno.EACCES:
            raise ConfigurationError(f"--port {port}: this user may not listen on ports below 1024; choose "
                                     "another port (a reverse proxy can serve 443)") from None
        raise ConfigurationError(f"--host {host}: cannot listen on {host}:{port} ({_reason(exc)})") from None


def check_access_log(path: str | None) -> None:
    """Raise a :class:`ConfigurationError` naming ``--access-log`` when its file cannot be written
    (gunicorn would stop with "Error: '…' isn't writable", naming no flag)."""
    if path is None or path == "-":
        return
    try:
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as exc:
        raise ConfigurationError(f"--access-log {path}: cannot write there ({_reason(exc)})") from None


def _reason(exc: Exception) -> str:
    number = getattr(exc, "errno", None)
    if isinstance(number, int) and number > 0:
        return os.strerror(number)  # without create_server's "(while attempting to bind …)"
    return getattr(exc, "strerror", None) or str(exc)


def _serve_arbiter_metrics(render: Callable[[], bytes], port: int) -> None:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = render() if self.path.split("?")[0] == "/metrics" else b""
            self.send_response(200 if body else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet."""

    try:
        server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    except OSError as exc:
        raise ConfigurationError(
            f"PENNY_METRICS_PORT: cannot serve metrics on 127.0.0.1:{port} ({exc.strerror})"
        ) from exc
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="penny-metrics", daemon=True).start()

