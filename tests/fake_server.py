"""What the loopback fakes (``tests.fake_openai``, ``tests.fake_slack``) share: a threaded HTTP server
on 127.0.0.1 and a free port, started and stopped with the fake (a context manager), a quiet request
handler that writes whole responses, and header dicts whose repr hides credentials.

A fake subclasses :class:`FakeServer` with its own handler class (a :class:`QuietHandler`); the
handler reaches the fake as ``self.server.fake``.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

__all__ = ["FakeServer", "LoopbackServer", "QuietHandler", "RedactedHeaders"]

_SECRET_HEADERS = frozenset({"authorization", "api-key", "cookie"})


class RedactedHeaders(dict[str, str]):
    """Header dict whose repr hides credentials (pytest prints reprs on failed asserts)."""

    def __repr__(self) -> str:
        return repr({k: ("<redacted>" if k.lower() in _SECRET_HEADERS else v) for k, v in self.items()})

    def get_ci(self, name: str) -> str | None:
        """Case-insensitive lookup."""
        lowered = name.lower()
        for key, value in self.items():
            if key.lower() == lowered:
                return value
        return None


class LoopbackServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    # socketserver's default backlog is 5: hundreds of clients connecting at once (the concurrency
    # benchmark) would wait out SYN retransmits (a second each), which a real API never makes them do.
    request_queue_size = 1024
    fake: Any  # the FakeServer this serves, for its handler

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out and hung up makes our late write fail; that is expected.
        return


class QuietHandler(BaseHTTPRequestHandler):
    """Logs nothing (requests carry credentials) and writes each response in one go."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle on, the body waits for the client's
    # delayed ACK (40 ms on Linux), which no real API server makes its clients wait.
    disable_nagle_algorithm = True
    server: LoopbackServer

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send_raw(
        self, status: int, payload: bytes, content_type: str, headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        """``payload`` with its length and ``headers``; a client that hung up closes the connection."""
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
            self.wfile.flush()
        except OSError:
            self.close_connection = True


class FakeServer:
    """A fake's server lifecycle: serve on a free loopback port from ``start()`` (or ``with``) until
    ``stop()``. ``stopping`` is set first, so handlers that wait or hold a connection give up."""

    url_path = "/"  # what ``base_url`` adds after the port

    def __init__(self, handler: type[QuietHandler]) -> None:
        self.stopping = threading.Event()
        self._server = LoopbackServer(("127.0.0.1", 0), handler)
        self._server.fake = self
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self._release_waiters()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def _release_waiters(self) -> None:
        """Let requests the fake holds go (before the server waits for its handlers); none by default."""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.url_path}"
