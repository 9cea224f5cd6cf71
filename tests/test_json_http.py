"""OpenAIUpstream's plain chat over kept-alive connections: one connection for many calls, and a
connection the server closed while idle replaced before it is used (never a failed call)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator

import openai
import pytest

from proxy_core._json_http import KEEPALIVE_S
from proxy_core.clock import ManualClock
from proxy_core.upstream import OpenAIUpstream

COMPLETION = {"id": "c1", "object": "chat.completion", "model": "gpt-4o-mini",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 3, "completion_tokens": 1}}


class CountingServer:
    """Answers every POST with one completion; counts connections. ``close_after_reply`` closes each
    connection right after its reply, without saying so (as a server's idle timeout does)."""

    def __init__(self, *, close_after_reply: bool) -> None:
        self.close_after_reply = close_after_reply
        self.connections = 0
        self.closed = threading.Semaphore(0)  # released as each connection is closed after its reply
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as reader:
            while True:
                head = [reader.readline()]
                while head[-1] not in (b"\r\n", b""):
                    head.append(reader.readline())
                if head[-1] == b"":
                    return
                length = next(int(line.split(b":")[1]) for line in head if line.lower().startswith(b"content-length"))
                reader.read(length)
                body = json.dumps(COMPLETION).encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                             + str(len(body)).encode() + b"\r\n\r\n" + body)
                if self.close_after_reply:
                    conn.shutdown(socket.SHUT_RDWR)
                    self.closed.release()
                    return

    def close(self) -> None:
        self._listener.close()


@pytest.fixture(params=[False, True], ids=["kept-alive", "closed-while-idle"])
def server(request: pytest.FixtureRequest) -> Iterator[CountingServer]:
    served = CountingServer(close_after_reply=request.param)
    yield served
    served.close()


def test_calls_share_a_connection_and_one_closed_while_idle_is_replaced(server: CountingServer) -> None:
    up = OpenAIUpstream(api_key="sk-test-keepalive", base_url=f"http://127.0.0.1:{server.port}/v1", timeout_s=2.0)
    try:
        for i in range(3):
            if server.close_after_reply and i:  # the server has closed the idle connection by now
                assert server.closed.acquire(timeout=5)
            assert up.chat(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=5
                           ).content == "hi"
    finally:
        up.close()
    assert server.connections == (3 if server.close_after_reply else 1)


class IdleClosingServer(CountingServer):
    """Keeps connections alive until ``idle_timer_fired()``: then the next request on a connection
    that has answered before finds it closed by the server's idle timer, whose close crossed the
    request on the wire (as a server's keep-alive timeout does when a client reuses the connection
    at that moment): the request is never read, never answered."""

    def __init__(self) -> None:
        super().__init__(close_after_reply=False)
        self.fired = threading.Event()
        self.lost = 0  # requests that arrived on a connection the idle timer had closed

    def idle_timer_fired(self) -> None:
        self.fired.set()

    def _serve(self, conn: socket.socket) -> None:
        answered = False
        with conn, conn.makefile("rb") as reader:
            while True:
                first = reader.readline()
                if first == b"":
                    return
                if answered and self.fired.is_set():
                    self.lost += 1
                    return  # closed with the request unread: the client sees a reset or an EOF
                head = [first]
                while head[-1] not in (b"\r\n", b""):
                    head.append(reader.readline())
                length = next(int(line.split(b":")[1]) for line in head if line.lower().startswith(b"content-length"))
                reader.read(length)
                body = json.dumps(COMPLETION).encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                             + str(len(body)).encode() + b"\r\n\r\n" + body)
                answered = True


def test_a_connection_idle_past_the_keep_alive_window_is_not_reused() -> None:
    """A connection idle as long as a server's keep-alive timeout (5 s for uvicorn or Node) may be
    closed by the server just as Penny sends on it: the request is lost, and looks sent whole and
    unanswered, which the gateway charges (the provider never saw it). One idle past the window is
    replaced before it is used, as the SDK's httpx does; one idle less is kept."""
    server = IdleClosingServer()
    clock = ManualClock()
    up = OpenAIUpstream(api_key="sk-test-keepalive", base_url=f"http://127.0.0.1:{server.port}/v1", timeout_s=2.0,
                        clock=clock)
    ask = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    try:
        assert up.chat(**ask).content == "hi"  # type: ignore[arg-type]
        clock.advance(3.0)
        assert up.chat(**ask).content == "hi"  # type: ignore[arg-type]
        assert server.connections == 1  # idle 3 s: kept
        clock.advance(5.0)
        server.idle_timer_fired()
        assert up.chat(**ask).content == "hi"  # type: ignore[arg-type]
    finally:
        up.close()
        server.close()
    assert (server.connections, server.lost) == (2, 0)


def test_the_sdk_client_for_streams_and_embeddings_expires_idle_connections_as_the_poster_does() -> None:
    """Streams and embeddings go through the openai SDK's client, whose pool expires idle
    connections after 5 s by default: as long as a common server keep-alive timeout, so a request
    could cross the server's idle close (the race the test above shows for the poster). Its pool is
    given ``KEEPALIVE_S``. The pool's clock cannot be injected, so its setting is read (an httpx2
    internal: should it move, this test fails rather than passing unchecked)."""
    up = OpenAIUpstream(api_key="sk-test-keepalive", base_url="http://127.0.0.1:9/v1", timeout_s=2.0)
    try:
        pool = up._client._client._transport._pool  # type: ignore[attr-defined]
        assert pool._keepalive_expiry == KEEPALIVE_S < 5.0
        defaults = openai.DEFAULT_CONNECTION_LIMITS
        assert (pool._max_connections, pool._max_keepalive_connections) == (
            defaults.max_connections, defaults.max_keepalive_connections)
    finally:
        up.close()
