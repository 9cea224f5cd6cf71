"""``penny run --http`` for real: the command in a subprocess (gunicorn, Bolt's WSGI adapter, Penny's
guard), signed Slack events over loopback TCP, the fake Slack and fake OpenAI recording what it did,
the store read back afterwards. Nothing of Penny is replaced; nothing here is timed beyond generous
bounds (the load figures are ``python -m bench.http``'s)."""

from __future__ import annotations

import http.client
import io
import json
import operator
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Executor, Future, ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar
from urllib.parse import urlencode

import pytest
import yaml  # type: ignore[import-untyped]  # PyYAML ships no stubs
from slack_bolt import App
from slack_sdk import WebClient

from bot.docs.index import DocsIndex
from bot.slack.app import SlackSettings, build_app, make_client
from bot.slack.feedback import ACTION_FRESH_ANSWER, FRESH_BLOCK_PREFIX
from bot.slack.pacing import ACK_LISTENERS, AcksFirst, DrainingExecutor, WorkTurns
from bot.slack.server import (
    BUFFERED_REQUEST_BYTES,
    EarlyAcks,
    HTTPOptions,
    PennyWSGI,
    Served,
    WorkerLoads,
    _DeadlineSocket,
    _PennyServer,
    request_complete,
)
from bot.slack.working import WorkingIndicator
from bot.workspaces import served_workspaces
from proxy_core import Accounts, PennySettings
from proxy_core.stores import store_from_url
from proxy_core.stores.sqlite import SqliteStore
from tests.bot_harness import Inline
from tests.fake_openai import FakeOpenAI, Fault
from tests.fake_slack import FakeSlack
from tests.penny_http import ROOT, PennyHTTP, penny_env, post_event, question_event, raw_request, signed_headers
from tests.polling import until
from tests.redis_server import RedisServer, redis_server_binary
from tests.slack_harness import BOT_ID, BOT_USER, SECRET, TEAM, TOKEN, HeldAnswers, block_action

pytestmark = pytest.mark.slow

T = TypeVar("T")
QUESTIONS = [json.loads(line)["question"] for line in
             (ROOT / "examples" / "questions.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def openai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


@pytest.fixture(scope="module")
def slack() -> Iterator[FakeSlack]:
    with FakeSlack(team_id=TEAM, bot_user_id=BOT_USER, bot_id=BOT_ID) as server:
        yield server


@pytest.fixture
def fakes(openai: FakeOpenAI, slack: FakeSlack) -> tuple[FakeOpenAI, FakeSlack]:
    openai.reset()
    slack.reset()
    return openai, slack


@pytest.fixture(scope="module")
def server(openai: FakeOpenAI, slack: FakeSlack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PennyHTTP]:
    """One worker on SQLite, shared by the tests that only talk to it."""
    tmp = tmp_path_factory.mktemp("http")
    env = penny_env(tmp, openai_url=openai.base_url, slack_url=slack.base_url)
    with PennyHTTP(env, tmp) as penny:
        yield penny


FINAL = ("chat.postMessage", "chat.update")  # an answer posted, or streamed and then replaced


def answers_by_thread(slack: FakeSlack) -> Counter[str]:
    return Counter(str(m.get("thread_ts")) for m in slack.messages())


def paid_calls(store_url: str) -> int:
    """The ledger's LLM calls (its entries less its cache hits)."""
    store = store_from_url(store_url)
    try:
        totals = store.usage(TEAM, "2000-01-01", "2100-01-01", None).totals
    finally:
        store.close()
    return totals.requests - totals.cache_hits


def workers_that_answered(access_log: Path) -> set[str]:
    return set(re.findall(r"<(\d+)> \"POST /slack/events", access_log.read_text()))


# -- start-up ------------------------------------------------------------------------------------


def test_http_without_a_signing_secret_exits_2_naming_it(tmp_path: Path) -> None:
    env = penny_env(tmp_path, openai_url="http://127.0.0.1:9/v1", slack_url="http://127.0.0.1:9/")
    del env["SLACK_SIGNING_SECRET"]
    done = subprocess.run([sys.executable, "-m", "bot.cli", "run", "--http", "--port", "0"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert done.returncode == 2
    assert "SLACK_SIGNING_SECRET" in done.stderr
    assert "SLACK_BOT_TOKEN" not in done.stderr  # only what is missing
    assert "terminal chat" not in done.stdout
    assert not (tmp_path / "penny.db").exists()  # refused before anything was opened


# -- one worker ----------------------------------------------------------------------------------


def test_the_store_it_created_is_logged_and_the_workspace_served_recorded_for_the_cli(server: PennyHTTP) -> None:
    path = server.env["PENNY_STORE_URL"].removeprefix("sqlite:///")
    assert [line for line in server.stderr().splitlines() if "store_created" in line and path in line]
    store = store_from_url(server.env["PENNY_STORE_URL"], create=False)
    try:
        assert [(w.id, w.name) for w in served_workspaces(store)] == [(TEAM, "Penny Test")]
    finally:
        store.close()


def test_health_readiness_and_metrics_are_served_beside_slack(server: PennyHTTP) -> None:
    assert server.get("/healthz") == (200, "ok\n")
    assert server.get("/readyz") == (200, "ready\n")
    status, metrics = server.get("/metrics")
    assert status == 200 and "penny_ledger_spooled" in metrics
    assert server.get("/slack/events")[0] == 404  # Slack only POSTs


def test_a_head_request_gets_its_headers_and_no_body_and_no_warning(server: PennyHTTP) -> None:
    """Load balancers check health with HEAD too: each one used to log gunicorn's "WSGI app sent body
    bytes on a no-body response" warning, as the app wrote the GET's body for gunicorn to drop."""
    before = server.stderr().count("no-body response")
    for path, status in (("/healthz", 200), ("/readyz", 200), ("/slack/events", 404), ("/nowhere", 404)):
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        connection.request("HEAD", path)
        response = connection.getresponse()
        assert response.status == status and response.read() == b""
        connection.close()
    assert server.get("/healthz") == (200, "ok\n")
    assert server.stderr().count("no-body response") == before


def test_idle_and_slow_connections_do_not_hold_up_a_signed_event(server: PennyHTTP, fakes: tuple[FakeOpenAI, FakeSlack]
                                                                  ) -> None:
    _, slack = fakes
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(50)]
    slow = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(30)]  # more than the 16 threads
    try:
        for sock in slow:
            sock.sendall(b"POST /slack/events HTTP/1.1\r\nHost: penny\r\nContent-Length: 300\r\n\r\n{")
        time.sleep(0.3)  # every slow request is being read by now
        status, seconds = post_event(server.port, question_event("where are the production logs?", "EvIdle1",
                                                                 user="U1", ts="1700000001.000100"))
        assert status == 200
        assert seconds < 2.0  # not 5 s (gunicorn's wait for a first byte) nor 10 s (the read deadline)
        slack.wait_for(("chat.postMessage", "chat.update"), 1, timeout=30)
    finally:
        for sock in idle + slow:
            sock.close()


def test_a_client_holding_every_connection_idle_or_silent_does_not_keep_others_out(server: PennyHTTP) -> None:
    """A worker takes ``HTTPOptions.connections`` at once. One client that opened that many and
    left them idle after a request each (kept alive for 75 s) and then as many that send nothing
    used to keep every other client waiting in the backlog; the connections that waited longest
    without a request being served now make room, and the new client is answered at once."""
    cap = HTTPOptions.connections
    held: list[socket.socket] = []
    try:
        for _ in range(cap):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: penny\r\n\r\n")
            held.append(sock)
        for sock in held:  # each answered, then idle and kept alive
            received = b""
            while not received.endswith(b"ok\n"):
                chunk = sock.recv(4096)
                assert chunk, "the server closed a connection that was under its cap"
                received += chunk
        held += [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(cap)]
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        started = time.monotonic()
        connection.request("GET", "/healthz")
        response = connection.getresponse()
        assert (response.status, response.read()) == (200, b"ok\n")
        assert time.monotonic() - started < 3.0  # not 10 s (the silent ones' read deadline) nor 75 s
        connection.close()
    finally:
        for sock in held:
            sock.close()
    assert "http.connections_full" in server.stderr()
    assert server.get("/healthz") == (200, "ok\n")


def test_an_oversized_body_is_refused_with_413_before_it_is_read(server: PennyHTTP) -> None:
    head = (b"POST /slack/events HTTP/1.1\r\nHost: penny\r\nContent-Type: application/json\r\n"
            b"Content-Length: 104857600\r\n\r\n")
    response = raw_request(server.port, head + b"{" * 65536)  # 64 KiB of a claimed 100 MB
    assert response.status == 413
    assert "larger than 1048576" in response.read().decode()
    chunk = b"x" * 65536
    chunked = (b"POST /slack/events HTTP/1.1\r\nHost: penny\r\nContent-Type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n" + (b"10000\r\n" + chunk + b"\r\n") * 17 + b"0\r\n\r\n")
    assert raw_request(server.port, chunked).status == 413  # no length given: still cut at 1 MiB
    assert server.get("/healthz")[0] == 200


def test_bad_input_gets_its_4xx_and_a_forged_signature_401(server: PennyHTTP, fakes: tuple[FakeOpenAI, FakeSlack]
                                                           ) -> None:
    openai, slack = fakes
    body = question_event("how do I deploy?", "EvForged", user="U1", ts="1700000002.000100")
    assert post_event(server.port, body, headers={"X-Slack-Request-Timestamp": "soon"})[0] == 401
    assert post_event(server.port, "{not json", headers=signed_headers("{not json"))[0] == 400
    assert post_event(server.port, body, headers={"X-Slack-Signature": "v0=" + "0" * 64})[0] == 401
    assert openai.count() == 0 and slack.count("chat.postMessage") == 0


def test_a_trickling_client_loses_its_connection_at_the_read_deadline() -> None:
    ours, theirs = socket.socketpair()
    conn = _DeadlineSocket.adopt(ours, 0.3)
    try:
        conn.setblocking(True)  # a request starts
        started = time.monotonic()
        reads = 0
        try:
            while True:
                theirs.sendall(b"x")  # a byte every 50 ms: each read returns, the deadline still passes
                reads += len(conn.recv(10))
                time.sleep(0.05)
        except ConnectionResetError:
            pass
        assert reads >= 3
        assert 0.25 < time.monotonic() - started < 2.0
        assert conn.expired
    finally:
        conn.close()
        theirs.close()


def test_a_request_goes_to_a_thread_once_it_has_arrived_whole() -> None:
    head = b"POST /slack/events HTTP/1.1\r\nHost: penny\r\nContent-Length: 10\r\n"
    assert not request_complete(b"POST /slack/ev")
    assert not request_complete(head)
    assert not request_complete(head + b"\r\n{\"a\": ")
    assert request_complete(head + b"\r\n{\"a\": 123}")
    assert request_complete(b"GET /healthz HTTP/1.1\r\nHost: penny\r\n\r\n")  # no body
    assert request_complete(b"POST / HTTP/1.1\r\ncontent-length:  104857600\r\n\r\n")  # refused unread
    assert request_complete(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")  # a thread reads it
    # The client sends its body only once told to go on (curl waited a second, then sent it anyway).
    assert request_complete(head + b"Expect: 100-continue\r\n\r\n")
    assert request_complete(b"GET /" + b"x" * BUFFERED_REQUEST_BYTES)  # headers too long: gunicorn refuses them


def test_a_listener_starts_its_answer_once_the_acks_in_flight_are_done() -> None:
    acks_first = AcksFirst(quiet_s=0.0, max_wait_s=60.0)
    started = threading.Event()
    with acks_first.request():
        waiter = threading.Thread(target=lambda: (acks_first.wait(), started.set()))
        waiter.start()
        assert not started.wait(0.1)  # held while a request is being acked
    assert started.wait(5)  # and let go as soon as none is
    waiter.join()


def test_a_listener_waits_for_acks_at_most_max_wait() -> None:
    ticks = iter(range(100, 200))  # each look at the clock finds a second gone
    acks_first = AcksFirst(quiet_s=0.02, max_wait_s=1.0, clock=lambda: float(next(ticks)))
    with acks_first.request():
        acks_first.wait()  # returns at its deadline: under sustained traffic answers still start


class _SeenWaiting(AcksFirst):
    """AcksFirst that says when someone has started waiting on it."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.waiting = threading.Event()

    def wait(self) -> None:
        self.waiting.set()
        super().wait()


def test_answers_wait_in_a_queue_while_acks_are_in_flight_then_run_on_the_pool() -> None:
    acks_first = _SeenWaiting(quiet_s=0.0, max_wait_s=60.0)
    pool = DrainingExecutor(4, acks_first=acks_first)
    ran: list[int] = []
    try:
        with acks_first.request():
            futures = [pool.submit(ran.append, i) for i in range(20)]
            assert acks_first.waiting.wait(5)  # the dispatcher waits for the acks before it hands any over
            assert ran == [] and not any(f.done() for f in futures)  # held: no thread ran an answer
            assert pool.drain(0.0) == 20  # a stopping worker still waits for them
        assert [f.result(timeout=5) for f in futures] == [None] * 20
        assert sorted(ran) == list(range(20)) and pool.drain(5) == 0
        failing = pool.submit(operator.truediv, 1, 0)
        with pytest.raises(ZeroDivisionError):
            failing.result(timeout=5)  # the answer's own error reaches its future
    finally:
        pool.shutdown()


def test_turns_bound_the_listeners_running_at_once() -> None:
    listeners = DrainingExecutor(16, thread_name_prefix="penny-turns", turns=WorkTurns(2))
    running, most, lock = [0], [0], threading.Lock()
    two_running = threading.Event()  # each listener stays until two run at once: overlap without sleeping

    def work() -> None:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
            if running[0] == 2:
                two_running.set()
        two_running.wait(timeout=5)
        with lock:
            running[0] -= 1

    try:
        for future in [listeners.submit(work) for _ in range(8)]:
            future.result(timeout=10)
        assert most[0] == 2
    finally:
        listeners.shutdown()


def test_a_listener_waiting_on_something_slow_lends_its_turn_and_gets_one_back() -> None:
    turns = WorkTurns(1)
    listeners = DrainingExecutor(4, thread_name_prefix="penny-turns", turns=turns)
    answered = threading.Event()

    def slow() -> str:
        with turns.waiting():  # the LLM: the one turn goes to the other listener meanwhile
            assert answered.wait(timeout=10)
        return "slow"

    try:
        first = listeners.submit(slow)
        second = listeners.submit(answered.set)  # runs only if the first lent its turn
        assert second.result(timeout=10) is None and first.result(timeout=10) == "slow"
        with turns.waiting():  # outside a listener's turn: nothing to lend, nothing taken
            pass
        assert listeners.submit(lambda: "again").result(timeout=10) == "again"  # still one turn, free
    finally:
        listeners.shutdown()


def test_a_listener_back_from_a_wait_gets_a_turn_before_listeners_that_have_not_started() -> None:
    turns = WorkTurns(1)
    listeners = DrainingExecutor(4, thread_name_prefix="penny-back", turns=turns)
    order: list[str] = []
    lent, answered, running, finish = threading.Event(), threading.Event(), threading.Event(), threading.Event()

    def answer() -> None:
        with turns.waiting():  # the LLM call
            lent.set()
            assert answered.wait(timeout=5)
        order.append("answer written")

    def busy() -> None:
        running.set()
        assert finish.wait(timeout=5)
        order.append("busy")

    try:
        first = listeners.submit(answer)
        assert lent.wait(timeout=5)
        second = listeners.submit(busy)  # on the turn the answer lent
        assert running.wait(timeout=5)
        third = listeners.submit(order.append, "new arrival")
        until(lambda: turns.queued() == 1)
        answered.set()  # the LLM answered: the first listener wants a turn back, after the new arrival
        until(lambda: turns.queued() == 2)
        finish.set()
        for future in (first, second, third):
            future.result(timeout=5)
    finally:
        listeners.shutdown()
    assert order == ["busy", "answer written", "new arrival"]


def test_after_close_a_listener_not_started_never_starts_and_one_back_from_a_wait_finishes() -> None:
    turns = WorkTurns(1)
    listeners = DrainingExecutor(4, thread_name_prefix="penny-close", turns=turns)
    lent, answered, busy_running, finish = threading.Event(), threading.Event(), threading.Event(), threading.Event()
    started: list[str] = []

    def answer() -> str:
        with turns.waiting():  # the LLM call, under way when the worker gives up
            lent.set()
            assert answered.wait(timeout=5)
        return "recorded"  # back from the wait: it goes on (a paid call to record)

    def busy() -> None:
        busy_running.set()
        assert finish.wait(timeout=5)

    try:
        first = listeners.submit(answer)
        assert lent.wait(timeout=5)
        listeners.submit(busy)  # holds the one turn
        assert busy_running.wait(timeout=5)
        queued = listeners.submit(lambda: started.append("queued"))
        until(lambda: turns.queued() == 1)
        listeners.shutdown(wait=False, cancel_futures=True)
        with pytest.raises(CancelledError):
            queued.result(timeout=5)
        answered.set()  # back while the one turn is still held: it does not wait for it
        assert first.result(timeout=5) == "recorded"
        with pytest.raises(CancelledError):  # and nothing new starts
            turns.run(lambda: started.append("late"))
        assert started == []
    finally:
        finish.set()
        answered.set()


def test_start_threads_starts_every_pool_thread_at_once() -> None:
    listeners = DrainingExecutor(8, thread_name_prefix="penny-start")
    try:
        listeners.start_threads()
        deadline = time.monotonic() + 10
        while sum(t.name.startswith("penny-start_") for t in threading.enumerate()) < 8 or \
                sum(t.name.startswith("penny-start-ack_") for t in threading.enumerate()) < ACK_LISTENERS:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        listeners.shutdown()


def test_answers_still_waiting_at_shutdown_are_cancelled_and_counted_done() -> None:
    acks_first = AcksFirst(quiet_s=0.0, max_wait_s=60.0)
    pool = DrainingExecutor(2, acks_first=acks_first)
    with acks_first.request():
        future = pool.submit(time.sleep, 0)
        pool.shutdown(wait=False, cancel_futures=True)
        assert future.cancelled() and pool.drain(0.0) == 0
        with pytest.raises(RuntimeError):
            pool.submit(time.sleep, 0)


class _Later(Executor):
    """Holds what is submitted until the test runs it."""

    def __init__(self) -> None:
        self.held: list[Callable[[], Any]] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.held.append(lambda: fn(*args, **kwargs))
        return Future()


def _post(wsgi: PennyWSGI, body: str, headers: dict[str, str]) -> tuple[str, bytes]:
    data = body.encode()
    environ: dict[str, Any] = {"REQUEST_METHOD": "POST", "PATH_INFO": "/slack/events", "QUERY_STRING": "",
                               "CONTENT_LENGTH": str(len(data)), "wsgi.input": io.BytesIO(data)}
    for name, value in headers.items():
        key = name.upper().replace("-", "_")
        environ[key if key == "CONTENT_TYPE" else f"HTTP_{key}"] = value
    answer: list[str] = []
    chunks = wsgi(environ, lambda status, _headers, _exc=None: answer.append(status))  # type: ignore[arg-type]
    return answer[0], b"".join(chunks)


def test_an_event_delivery_is_acked_before_bolt_handles_it_and_anything_else_goes_to_bolt(slack: FakeSlack) -> None:
    app = App(signing_secret=SECRET, client=WebClient(token=TOKEN, base_url=slack.base_url),
              token_verification_enabled=False, listener_executor=Inline())
    heard: list[str] = []
    app.event("app_mention")(lambda event: heard.append(event["text"]))
    later = _Later()
    wsgi = PennyWSGI(app, ready=lambda: None, early_acks=EarlyAcks(SECRET, later))

    event = question_event("how do I deploy?", "EvEarly1", user="U1", ts="1700000000.000100")
    assert _post(wsgi, event, signed_headers(event)) == ("200 OK", b"")
    assert heard == [] and len(later.held) == 1  # acked; Bolt has not seen it yet
    later.held.pop()()
    assert heard == ["<@UPENNY> how do I deploy?"]

    # A bad signature is Bolt's to refuse; nothing is acked early, nothing is held.
    bad = {**signed_headers(event), "X-Slack-Signature": "v0=" + "0" * 64}
    assert _post(wsgi, event, bad)[0].startswith("401") and not later.held
    # A url_verification's ack carries the challenge: Bolt answers it.
    challenge = json.dumps({"type": "url_verification", "challenge": "c-123", "token": "t"})
    status, answer = _post(wsgi, challenge, {**signed_headers(challenge), "Content-Type": "application/json"})
    assert status == "200 OK" and b"c-123" in answer and not later.held


class _Busy:
    """A worker's Slack app on the HTTP front door with both turns held by answers that are busy
    and six more answers queued, more than the pool has threads: nothing moves until ``release``."""

    def __init__(self, slack: FakeSlack, store: SqliteStore) -> None:
        slack.reset()
        self.slack = slack
        self.turns, acks_first, self.answers = WorkTurns(2), AcksFirst(), HeldAnswers()
        self.listeners = DrainingExecutor(4, thread_name_prefix="penny-held", acks_first=acks_first, turns=self.turns)
        settings = SlackSettings(bot_token=TOKEN, signing_secret=SECRET, api_url=slack.base_url)
        app = build_app(answerer=self.answers, store=store, settings=settings,
                        client=make_client(settings, waiting=self.turns.waiting), listener_executor=self.listeners,
                        accounts=Accounts(store, PennySettings(_env_file=None)),  # type: ignore[call-arg]
                        working=WorkingIndicator(workers=0))
        self.wsgi = PennyWSGI(app, ready=lambda: None, acks_first=acks_first,
                              early_acks=EarlyAcks(SECRET, self.listeners))
        for i in range(8):
            event = question_event(f"question {i}", f"EvHeld{i}", user=f"U{i}", ts=f"17000007{i:02d}.000100")
            assert _post(self.wsgi, event, signed_headers(event)) == ("200 OK", b"")
        until(lambda: self.answers.started == 2 and self.turns.queued() >= 2)
        self.in_progress = self.listeners.pending()

    def post_form(self, form: str) -> float:
        """Post a signed form; how long its ack took."""
        started = time.monotonic()
        status, _ = _post(self.wsgi, form, signed_headers(form, content_type="application/x-www-form-urlencoded"))
        assert status == "200 OK"
        return time.monotonic() - started

    def release(self, answers: int) -> None:
        """Let the answers go; ``answers`` are posted, never more than two at once."""
        self.answers.release.set()
        self.slack.wait_for("chat.postMessage", answers)
        assert self.listeners.drain(10) == 0 and self.answers.most == 2
        self.listeners.shutdown()


def test_with_every_turn_held_and_answers_queued_a_slash_command_is_acked_at_once(
    slack: FakeSlack, sqlite_store: SqliteStore
) -> None:
    busy = _Busy(slack, sqlite_store)
    try:
        form = urlencode({"command": "/cost", "text": "", "team_id": TEAM, "user_id": "U1", "channel_id": "C1",
                          "api_app_id": "A0PENNY", "trigger_id": "trigger-1",
                          "response_url": f"{slack.base_url}commands/{TEAM}/1/hook"})
        assert busy.post_form(form) < 1.0  # Slack allows 3 s
        [reply] = slack.wait_for(f"commands/{TEAM}/1/hook")
        assert reply.params["response_type"] == "ephemeral"
        until(lambda: busy.listeners.pending() == busy.in_progress)  # and it finished, its reply's wait included
        assert busy.answers.started == 2  # the command's turn, past the bound, let no other answer start
    finally:
        busy.release(8)


def test_with_every_turn_held_a_fresh_answer_click_is_acked_at_once_and_its_answer_waits_for_a_turn(
    slack: FakeSlack, sqlite_store: SqliteStore
) -> None:
    busy = _Busy(slack, sqlite_store)
    try:
        click = block_action({"action_id": ACTION_FRESH_ANSWER, "block_id": FRESH_BLOCK_PREFIX + "1700000700.000100",
                              "value": "question 0"}, message_ts="1700000799.000001")
        assert busy.post_form(urlencode({"payload": json.dumps(click)})) < 1.0
        until(lambda: busy.listeners.pending() == busy.in_progress + 1)  # acked; the answer is left
        assert busy.answers.started == 2
    finally:
        busy.release(9)  # never more than two at once, the click's answer included
    # The LLM call the click asks for is an answer like the others, on the answers' pool and
    # turns: it ran at once, past the bound, on the pool that must stay free for acks.
    [(fresh, thread)] = [(question, thread) for question, thread in busy.answers.asked if question.fresh]
    assert fresh.text == "question 0" and thread.startswith("penny-held_")


def test_the_http_manifest_is_the_socket_mode_one_with_request_urls() -> None:
    socket_mode = yaml.safe_load((ROOT / "manifest.yml").read_text(encoding="utf-8"))
    over_http = yaml.safe_load((ROOT / "manifest.http.yml").read_text(encoding="utf-8"))
    url = "https://penny.example.com/slack/events"
    settings = over_http["settings"]
    assert settings["socket_mode_enabled"] is False and socket_mode["settings"]["socket_mode_enabled"] is True
    assert settings["event_subscriptions"].pop("request_url") == url
    assert settings["interactivity"].pop("request_url") == url
    [cost] = over_http["features"]["slash_commands"]
    assert cost.pop("url") == url
    settings["socket_mode_enabled"] = True
    assert over_http == socket_mode  # the same events, scopes and command: only the transport differs


def test_the_readmes_systemd_unit_runs_exactly_the_documented_command() -> None:
    from bot.cli import _parser

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    [documented] = re.findall(r"Run `(\.venv/bin/penny run --http[^`]*)`", readme)
    [directory] = re.findall(r"^\s*WorkingDirectory=(\S+)$", readme, re.M)
    [exec_start] = re.findall(r"^\s*ExecStart=(.+)$", readme, re.M)
    assert exec_start == f"{directory}/{documented}"
    args = _parser().parse_args(documented.split()[1:])
    assert args.http and args.workers >= 1


# -- stopping and restarting ---------------------------------------------------------------------


def test_sigterm_with_answers_in_flight_delivers_each_once_and_a_restart_answers_no_retry(
    fakes: tuple[FakeOpenAI, FakeSlack], tmp_path: Path
) -> None:
    openai, slack = fakes
    openai.fail_all(Fault.ok(delay_s=1.5))
    env = penny_env(tmp_path, openai_url=openai.base_url, slack_url=slack.base_url)
    bodies = [question_event(QUESTIONS[i], f"EvTerm{i}", user=f"U{i}", ts=f"17000001{i:02d}.000100")
              for i in range(6)]
    first = PennyHTTP(env, tmp_path, workers=2).start()
    with ThreadPoolExecutor(6) as pool:
        assert [status for status, _ in pool.map(lambda b: post_event(first.port, b), bodies)] == [200] * 6
    assert slack.count("chat.postMessage") + slack.count("chat.update") < 6  # answers in flight
    assert first.stop(signal.SIGTERM) == 0  # waited for the answers in flight, then exited 0
    assert sorted(answers_by_thread(slack).values()) == [1] * 6
    assert openai.count("chat") == 6
    with pytest.raises(OSError):  # the port is closed
        socket.create_connection(("127.0.0.1", first.port), timeout=2).close()

    with PennyHTTP(env, tmp_path) as second:  # Slack retries every event on the restarted server
        retry = {"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"}
        assert [post_event(second.port, b, headers=retry)[0] for b in bodies] == [200] * 6
        post_event(second.port, question_event(QUESTIONS[7], "EvTermLast", user="U9", ts="1700000199.000100"))
        slack.wait_for(("chat.postMessage", "chat.update"), 1, timeout=30)  # the new event's answer …
        deadline = time.monotonic() + 30
        while "1700000199.000100" not in answers_by_thread(slack) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        assert sorted(answers_by_thread(slack).values()) == [1] * 7  # … and none for the retries
        assert openai.count("chat") == 7
    assert paid_calls(env["PENNY_STORE_URL"]) == 7


# -- many workers, many replicas -----------------------------------------------------------------


def deliver_twice(port_a: int, port_b: int, bodies: list[str]) -> list[int]:
    """Each body delivered twice at once (Slack's duplicate deliveries), to ``port_a`` and ``port_b``."""
    with ThreadPoolExecutor(32) as pool:
        futures = [pool.submit(post_event, port, body) for body in bodies for port in (port_a, port_b)]
        return [future.result()[0] for future in futures]


def test_two_workers_and_one_store_answer_each_event_once_and_keep_one_bill(
    fakes: tuple[FakeOpenAI, FakeSlack], tmp_path: Path
) -> None:
    openai, slack = fakes
    openai.fail_all(Fault.ok(delay_s=0.2))
    env = penny_env(tmp_path, openai_url=openai.base_url, slack_url=slack.base_url, PENNY_CACHE_ENABLED="false",
                    PENNY_REQUESTS_PER_MINUTE="3", PENNY_REQUEST_BURST="3")
    bodies = [question_event(QUESTIONS[i], f"EvTwo{i}", user=f"U{i}", ts=f"17000002{i:02d}.000100")
              for i in range(20)]
    bodies += [question_event(QUESTIONS[20 + i], f"EvHot{i}", user="UHOT", ts=f"17000003{i:02d}.000100")
               for i in range(6)]  # one user over the shared limit of 3 a minute
    log = tmp_path / "access.log"
    with PennyHTTP(env, tmp_path, workers=2, args=["--access-log", str(log)]) as penny:
        assert deliver_twice(penny.port, penny.port, bodies) == [200] * 52
        slack.wait_for(("chat.postMessage", "chat.update"), 23, timeout=60)
        slack.wait_for("chat.postEphemeral", 3, timeout=30)
        time.sleep(0.5)
    answered = answers_by_thread(slack)
    assert len(answered) == 23 and set(answered.values()) == {1}  # 20 + the hot user's 3; each once
    assert slack.count("chat.postEphemeral") == 3  # the hot user's other 3: rate limited, whichever worker
    assert openai.count("chat") == 23 == paid_calls(env["PENNY_STORE_URL"])
    assert len(workers_that_answered(log)) == 2


def test_a_stopped_worker_slows_the_other_one_down_but_never_stops_it(
    fakes: tuple[FakeOpenAI, FakeSlack], tmp_path: Path
) -> None:
    openai, slack = fakes
    openai.fail_all(Fault.ok(delay_s=2.0))
    env = penny_env(tmp_path, openai_url=openai.base_url, slack_url=slack.base_url, PENNY_CACHE_ENABLED="false")
    bodies = [question_event(QUESTIONS[i], f"EvStop{i}", user=f"U{i}", ts=f"1700005{i:03d}.000100") for i in range(40)]
    with PennyHTTP(env, tmp_path, workers=2) as penny:
        assert penny.proc is not None
        stopped = int(Path(f"/proc/{penny.proc.pid}/task/{penny.proc.pid}/children").read_text().split()[0])
        os.kill(stopped, signal.SIGSTOP)  # its slot says idle, for ever: the other worker is the busier one
        try:
            acks = all_at_once(lambda body: post_event(penny.port, body), bodies)
        finally:
            os.kill(stopped, signal.SIGCONT)
        assert [status for status, _ in acks] == [200] * 40
        assert max(seconds for _, seconds in acks) < 3.0  # Slack's limit; paused a millisecond per connection
        slack.wait_for(FINAL, 40, timeout=60)


def all_at_once(send: Callable[[str], T], bodies: list[str]) -> list[T]:
    """``send`` each body from a thread of its own, all released at once (a burst of new connections)."""
    start = threading.Barrier(len(bodies))

    def one(body: str) -> T:
        start.wait(timeout=30)
        return send(body)

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(one, bodies))


def test_worker_loads_are_shared_with_forked_workers_and_name_the_least_busy_other() -> None:
    loads = WorkerLoads(slots=4)
    first, second = loads.claim(()), loads.claim({0})
    assert (first, second) == (0, 1) and loads.claim({0, 1, 2, 3}) is None
    assert loads.least_other(first) is None  # claimed, not counted: no worker has published yet
    loads.publish(first, 0)
    assert loads.least_other(second) == 0 and loads.least_other(None) == 0
    child = os.fork()
    if child == 0:  # a worker: publishes its load, which the arbiter's memory shows
        loads.publish(1, 7)
        os._exit(0)
    os.waitpid(child, 0)
    loads.publish(0, 3)
    assert loads.least_other(0) == 7 and loads.least_other(1) == 3
    loads.release(1)  # that worker exited: no other worker to balance with
    assert loads.least_other(0) is None and loads.claim({0}) == 1


@pytest.mark.skipif(redis_server_binary() is None, reason="redis-server is not installed")
def test_readyz_says_the_store_is_unreachable_without_its_address(
    fakes: tuple[FakeOpenAI, FakeSlack], tmp_path: Path
) -> None:
    """``/readyz`` answers whoever reaches the port (a load balancer, anyone behind it): it used to
    print the store's error, which names its host and port (``Error 111 connecting to …``)."""
    openai, slack = fakes
    with RedisServer(tmp_path / "redis") as redis:
        env = penny_env(tmp_path, openai_url=openai.base_url, slack_url=slack.base_url, store_url=redis.url,
                        PENNY_STORE_TIMEOUT_S="0.5")
        with PennyHTTP(env, tmp_path) as server:
            assert server.get("/readyz") == (200, "ready\n")
            redis.kill()
            status, body = server.get("/readyz")
    assert (status, body) == (503, "store unreachable\n")
    assert str(redis.port) not in body


@pytest.mark.skipif(redis_server_binary() is None, reason="redis-server is not installed")
def test_two_replicas_on_redis_are_one_penny(fakes: tuple[FakeOpenAI, FakeSlack], tmp_path: Path) -> None:
    openai, slack = fakes
    openai.fail_all(Fault.ok(prompt_tokens=1000, completion_tokens=50))  # $0.00048 a call at gpt-4.1-mini
    with RedisServer(tmp_path / "redis") as redis:
        env = penny_env(tmp_path, openai_url=openai.base_url, slack_url=slack.base_url, store_url=redis.url,
                        PENNY_USER_LIMIT_OVERRIDES=json.dumps({"U60": {"requests_per_minute": 2, "request_burst": 2}}),
                        PENNY_USER_BUDGET_OVERRIDES=json.dumps({"U70": "0.004"}), PENNY_MAX_OUTPUT_TOKENS="60",
                        PENNY_ALERT_CHANNEL="CALERTS")
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        with PennyHTTP(env, tmp_path / "a") as a, PennyHTTP(env, tmp_path / "b") as b:
            # Every event delivered to both replicas at once: answered once.
            bodies = [question_event(QUESTIONS[i], f"EvRep{i}", user=f"U{i}", ts=f"17000004{i:02d}.000100")
                      for i in range(10)]
            assert deliver_twice(a.port, b.port, bodies) == [200] * 20
            answers = 10
            slack.wait_for(FINAL, answers, timeout=60)
            # The answer cache is shared: a question answered through A is a hit through B.
            post_event(b.port, question_event(QUESTIONS[0], "EvRepCached", user="U50", ts="1700000500.000100"))
            answers += 1
            slack.wait_for(FINAL, answers, timeout=30)
            # So are the limits: two a minute for U60, whichever replica asks.
            for i, port in enumerate((a.port, b.port, a.port)):
                post_event(port, question_event(QUESTIONS[30 + i], f"EvRepLim{i}", user="U60",
                                                ts=f"17000006{i:02d}.000100"))
            answers += 2
            slack.wait_for("chat.postEphemeral", 1, timeout=30)
            slack.wait_for(FINAL, answers, timeout=30)
            # And the budgets and their alerts: U70 asks through A and B in turn until the budget refuses.
            for i in range(12):
                refusals, ts = slack.count("chat.postEphemeral"), f"17000007{i:02d}.000100"
                post_event((a.port, b.port)[i % 2], question_event(QUESTIONS[40 + i], f"EvRepBudget{i}", user="U70",
                                                                   ts=ts))
                deadline = time.monotonic() + 30
                while not any(m.get("thread_ts") == ts and not m.get("streaming") for m in slack.messages("C1")) \
                        and slack.count("chat.postEphemeral") == refusals and time.monotonic() < deadline:
                    time.sleep(0.02)
                if slack.count("chat.postEphemeral") > refusals:
                    break
                answers += 1
            time.sleep(1.0)  # alerts go out from a thread of their own
        answered = Counter(str(m.get("thread_ts")) for m in slack.messages("C1"))
        assert len(answered) == answers and set(answered.values()) == {1}
        assert slack.count("chat.postEphemeral") == 2  # U60's third question, and U70's last
        assert openai.count("chat") == answers - 1  # the cached answer cost no call
        assert paid_calls(redis.url) == openai.count("chat")
        alerts = Counter(re.findall(r"<@U70> has used (\d+)%", json.dumps(slack.messages("CALERTS"))))
        assert alerts["50"] == 1 and set(alerts.values()) == {1}  # each threshold announced once, by one replica
        store = store_from_url(redis.url)
        try:
            assert DocsIndex.load(store).version == 1  # indexed once, by the first replica to start
        finally:
            store.close()


def test_a_worker_counts_in_the_balance_from_its_first_load_until_it_has_exited(tmp_path: Path) -> None:
    server = _PennyServer(HTTPOptions(), build=_never_built, on_ready=lambda _what: None, metrics_dir=str(tmp_path))
    loads: WorkerLoads = server.cfg.worker_class.loads
    arbiter = SimpleNamespace(WORKERS={})
    survivor, respawned = SimpleNamespace(pid=4001, penny_slot=None), SimpleNamespace(pid=4002, penny_slot=None)
    server._pre_fork(arbiter, survivor)
    arbiter.WORKERS[survivor.pid] = survivor
    loads.publish(survivor.penny_slot, 12)  # busy while the other worker is respawned
    server._pre_fork(arbiter, respawned)
    assert respawned.penny_slot not in (None, survivor.penny_slot)
    assert loads.least_other(survivor.penny_slot) is None  # booting: not an idle worker to make way for
    loads.publish(respawned.penny_slot, 0)  # its accept loop has started
    assert loads.least_other(survivor.penny_slot) == 0

    # Its metrics cannot be marked dead (a directory where prometheus_client removes a file): the
    # slot is released all the same, before that fails.
    (tmp_path / f"gauge_livesum_{respawned.pid}.db").mkdir()
    with pytest.raises(OSError):
        server._child_exit(arbiter, respawned)
    assert loads.least_other(survivor.penny_slot) is None


def _never_built() -> Served:
    raise AssertionError("the arbiter builds no worker")


def _worker_metrics(directory: Path, script: str) -> int:
    """Run ``script`` (with ``m``, a :class:`~proxy_core.metrics.Metrics`) in a process of its own
    writing multiprocess metrics into ``directory``, as a worker does; its pid."""
    code = "import os\nfrom proxy_core.metrics import Metrics\nm = Metrics()\n" + script + "\nprint(os.getpid())\n"
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)},
                          cwd=ROOT, capture_output=True, text=True, check=True, timeout=60)
    return int(done.stdout.strip())


def test_a_dead_workers_gauges_leave_metrics_and_its_counters_stay(tmp_path: Path) -> None:
    """A worker that died with the breaker open and a write in its spool: its respawn sees the
    breaker closed and has nothing spooled (the dead worker's spool is adopted). The summed metrics
    must say so, not keep the dead worker's open breaker and spool for as long as the server runs."""
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess

    def scrape() -> str:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, str(tmp_path))  # type: ignore[no-untyped-call]
        return generate_latest(registry).decode()

    counted = "m.requests.labels('chat', 'ok', 'miss').inc()"
    dead = _worker_metrics(tmp_path, f"m.breaker_state.set(2); m.spooled.inc(); {counted}")
    server = _PennyServer(HTTPOptions(), build=_never_built, on_ready=lambda _what: None, metrics_dir=str(tmp_path))
    server._child_exit(SimpleNamespace(WORKERS={}), SimpleNamespace(pid=dead, penny_slot=None))
    _worker_metrics(tmp_path, f"m.breaker_state.set(0); m.spooled.set(0); {counted}")

    text = scrape()
    assert re.findall(r"^penny_breaker_state\S* (\S+)$", text, re.M) == ["0.0"]
    assert re.findall(r"^penny_ledger_spooled\S* (\S+)$", text, re.M) == ["0.0"]
    assert 'penny_requests_total{cache="miss",kind="chat",outcome="ok"} 2.0' in text  # the dead one's still count
