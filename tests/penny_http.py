"""``penny run --http`` in a subprocess, and Slack's side of it: signed events over real TCP.

Used by the HTTP scenario tests and by ``python -m bench.http``. The server runs exactly the
documented command (``python -m bot.cli run --http …``) with its settings in the environment.
"""

from __future__ import annotations

import http.client
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from slack_sdk.signature import SignatureVerifier

from tests.slack_harness import SECRET, TOKEN, event_body, mention

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "examples" / "docs"
KEY = "sk-test-http-0123456789abcdef"
_LISTENING = re.compile(r"listening for Slack events on (http://\S+)")
_WORKER_READY = re.compile(r"Penny worker \d+ is ready")


def penny_env(tmp: Path, *, openai_url: str, slack_url: str, store_url: str | None = None,
              **settings: str) -> dict[str, str]:
    """The environment of a Penny server: fakes, a store in ``tmp`` (or ``store_url``), no limits
    unless ``settings`` (``PENNY_…`` names) say otherwise. Nothing of this process's Penny settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PENNY_", "SLACK_", "OPENAI_"))}
    env.update({
        "PYTHONPATH": str(ROOT),
        "OPENAI_API_KEY": KEY,
        "OPENAI_BASE_URL": openai_url,
        "SLACK_BOT_TOKEN": TOKEN,
        "SLACK_SIGNING_SECRET": SECRET,
        "SLACK_API_URL": slack_url,
        "PENNY_STORE_URL": store_url or f"sqlite:///{tmp / 'penny.db'}",
        "PENNY_SPOOL_DIR": str(tmp / "spool"),
        "PENNY_DOCS_DIR": str(DOCS),
        "PENNY_REQUESTS_PER_MINUTE": "0",
        "PENNY_TOKENS_PER_MINUTE": "0",
        "PENNY_LOG_LEVEL": "WARNING",
    })
    env.update(settings)
    return env


class PennyHTTP:
    """One ``penny run --http`` process on a free port; ``start`` returns once it is ready."""

    def __init__(self, env: Mapping[str, str], cwd: Path, *, workers: int = 1, args: Sequence[str] = (),
                 stderr: Path | None = None) -> None:
        self.env = dict(env)
        self.cwd = cwd
        self.workers = workers
        self.args = list(args)
        self.stderr_path = stderr or cwd / "penny-http.err"
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.port = 0
        self._lines: queue.Queue[str] = queue.Queue()

    def start(self, timeout_s: float = 60.0) -> PennyHTTP:
        command = [sys.executable, "-m", "bot.cli", "run", "--http", "--port", "0",
                   "--workers", str(self.workers), *self.args]
        with self.stderr_path.open("a") as err:
            self.proc = subprocess.Popen(command, env=self.env, cwd=self.cwd, stdout=subprocess.PIPE, stderr=err,
                                         stdin=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()
        try:
            self._wait_until_ready(timeout_s)
        except BaseException:
            with suppress(subprocess.TimeoutExpired):
                self.stop(timeout_s=15)  # a server that did not come up is not left running
            raise
        return self

    def _wait_until_ready(self, timeout_s: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        ready = 0
        while not self.url or ready < self.workers:  # the arbiter listens, then each worker is ready
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"penny run --http did not start: {self.stderr()[-2000:]}") from None
            found = _LISTENING.search(line)
            if found:
                self.url = found.group(1)
            ready += len(_WORKER_READY.findall(line))
        self.port = int(self.url.split(":")[2].split("/")[0])
        while self.get("/readyz")[0] != 200:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"penny run --http is not ready: {self.stderr()[-2000:]}")
            time.sleep(0.1)

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60.0) -> int:
        """Signal the arbiter and wait for its exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def get(self, path: str) -> tuple[int, str]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read().decode()
        except OSError:
            return 0, ""
        finally:
            connection.close()

    def __enter__(self) -> PennyHTTP:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()


def signed_headers(body: str, *, secret: str = SECRET, timestamp: int | None = None,
                   content_type: str = "application/json") -> dict[str, str]:
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    signature = SignatureVerifier(secret).generate_signature(timestamp=stamp, body=body)
    assert signature is not None
    return {"Content-Type": content_type, "X-Slack-Signature": signature, "X-Slack-Request-Timestamp": stamp}


def question_event(text: str, event_id: str, *, user: str, ts: str) -> str:
    """A signed-ready ``app_mention`` body asking ``text``."""
    return event_body(mention(f"<@UPENNY> {text}", ts=ts, user=user), event_id)


def post_event(port: int, body: str, *, headers: Mapping[str, str] | None = None,
               timeout_s: float = 10.0) -> tuple[int, float]:
    """POST a signed body to ``/slack/events`` on a new connection: (status, seconds to the ack)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        started = time.monotonic()
        connection.request("POST", "/slack/events", body=body.encode(),
                           headers={**signed_headers(body), **(headers or {})})
        response = connection.getresponse()
        response.read()
        return response.status, time.monotonic() - started
    finally:
        connection.close()


def raw_request(port: int, data: bytes, *, timeout_s: float = 10.0) -> Any:
    """Send ``data`` as is and read the status line and headers of the answer (socket left open)."""
    import socket

    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    sock.sendall(data)
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response
