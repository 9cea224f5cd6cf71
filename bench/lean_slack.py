"""A lean fake Slack Web API for ``python -m bench.http``.

``tests.fake_slack.FakeSlack`` records every call in full (headers, parameters, answers, message
history) on a thread per connection: right for tests, and about 4 ms of CPU per call. On a
2-core machine that fake takes a good part of the core the second Penny worker needs, so a
1-worker / 2-worker comparison would measure the fake. This one answers on one asyncio loop,
keeps connections alive, and remembers only what the benchmark reads: when each final answer
(``chat.postMessage`` / ``chat.update``) arrived, and how many messages each thread got.

It answers ``auth.test`` (with the token's scopes in ``x-oauth-scopes``, as Slack does) and
``chat.postMessage`` with what Penny reads from them; any other method with ``{"ok": true}`` and
the ``channel`` / ``ts`` it was given.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl

__all__ = ["LeanSlack"]

_FIRST_TS = 1_700_000_000


class LeanSlack:
    """The server on a loop of its own thread; :meth:`wait` and :meth:`answers` read what it saw."""

    def __init__(self, *, team_id: str, app_id: str, bot_user_id: str, bot_id: str, scopes: Sequence[str],
                 final: Sequence[str] = ("chat.postMessage", "chat.update")) -> None:
        self._auth = {"ok": True, "url": "https://penny-bench.slack.com/", "team": "Bench", "user": "penny",
                      "team_id": team_id, "user_id": bot_user_id, "bot_id": bot_id, "app_id": app_id,
                      "is_enterprise_install": False}
        self._scopes = ",".join(scopes)
        self._final = frozenset(final)
        self._serial = itertools.count(1)
        self._changed = threading.Condition()
        self._arrivals: list[float] = []  # time.monotonic() of each final answer
        self._threads: Counter[str] = Counter()  # messages posted per thread_ts
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.port = 0
        threading.Thread(target=self._run, name="lean-slack", daemon=True).start()
        self._ready.wait(10)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    def wait(self, count: int, timeout_s: float) -> float:
        """time.monotonic() at which the ``count``-th final answer arrived; AssertionError after
        ``timeout_s``."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._arrivals) >= count, timeout=timeout_s):
                raise AssertionError(f"waited {timeout_s}s for {count} answers, got {len(self._arrivals)}")
            return self._arrivals[count - 1]

    def answers(self) -> dict[str, int]:
        """Messages posted per thread (an update changes a message, it adds none)."""
        with self._changed:
            return dict(self._threads)

    def reset(self) -> None:
        with self._changed:
            self._arrivals.clear()
            self._threads.clear()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0, backlog=2048))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1]
                headers = {name.strip().lower(): value.strip()
                           for name, _, value in (line.partition(":") for line in lines[1:] if line)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                method = path.split("/api/", 1)[-1].split("?", 1)[0]
                answer, extra = self._answer(method, _params(body, headers.get("content-type", "")))
                data = json.dumps(answer).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
                             + extra + b"Content-Length: %d\r\n\r\n" % len(data) + data)
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    break
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, IndexError, ValueError):
            pass
        finally:
            writer.close()

    def _answer(self, method: str, params: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        if method == "auth.test":
            return self._auth, f"x-oauth-scopes: {self._scopes}\r\n".encode()
        serial = next(self._serial)
        ts = str(params.get("ts") or f"{_FIRST_TS + serial}.{serial:06d}")
        if method in self._final:
            with self._changed:
                self._arrivals.append(time.monotonic())
                if method == "chat.postMessage":
                    self._threads[str(params.get("thread_ts"))] += 1
                self._changed.notify_all()
        return {"ok": True, "channel": params.get("channel"), "ts": ts, "message": {"ts": ts}}, b""


def _params(body: bytes, content_type: str) -> dict[str, Any]:
    if not body:
        return {}
    if "json" in content_type:
        parsed = json.loads(body)
        return parsed if isinstance(parsed, dict) else {}
    return dict(parse_qsl(body.decode("utf-8")))
