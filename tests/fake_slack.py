"""A fake Slack Web API on loopback, for tests that drive the real slack_sdk / Bolt over real HTTP.

Usage::

    with FakeSlack() as fake:
        client = WebClient(base_url=fake.base_url, token="xoxb-test")
        fake.rate_limit("chat.postMessage", retry_after=0)
        ...
        fake.wait_for("chat.postMessage", 2)
        assert fake.last("chat.postMessage").params["channel"] == "C1"

``base_url`` is ``http://127.0.0.1:PORT/``. The server answers POST (and GET) on ``/api/<method>``
and on ``/<method>`` (what ``WebClient(base_url=fake.base_url)`` requests); any other path is
recorded too, with the path as its method name (e.g. a ``response_url`` pointed here).

Bodies may be form-encoded, multipart or JSON (the SDK sends all three); query-string parameters
are merged in. Every call is recorded (with the status it got) before its answer is sent, so
``count`` is exactly the number of HTTP requests that reached the server, 429s included. Recorded
headers and params hide the token in their ``repr`` so assertion output never prints one.

Answers (``{"ok": true, ...}``):

- ``auth.test``: ``team_id``, ``user_id`` (``UPENNY``), ``bot_id``, ``app_id``, ``url``, ``team``, ``user``,
  and like Slack the token's granted scopes in the ``x-oauth-scopes`` header (``scopes=``,
  :meth:`FakeSlack.set_scopes`; every scope Penny's manifest declares by default);
- ``chat.postMessage``: a ``ts`` unique per call, ``channel`` and the ``message`` as posted;
- ``chat.postEphemeral``: ``message_ts``; ``chat.update`` / ``chat.delete``: ``channel``, ``ts``;
- ``chat.startStream``: a new ``ts`` and ``channel``; ``chat.appendStream`` / ``chat.stopStream``:
  ``channel``, ``ts``. Like Slack, the fake refuses a stream without ``thread_ts``
  (``invalid_arguments``), one outside a DM (``D…``) without ``recipient_user_id`` /
  ``recipient_team_id`` (``missing_recipient_…``), and an append or stop to a message that is not
  streaming (``message_not_in_streaming_state``);
- ``views.publish``: the ``view``; ``users.info``: a user, ``is_admin`` only for configured admins;
- ``conversations.replies``: the messages set with :meth:`FakeSlack.set_replies` (else none),
  paged like Slack by ``limit`` and ``cursor`` (``response_metadata.next_cursor``, ``has_more``);
- ``assistant.threads.setStatus`` (``channel_id``, ``thread_ts``, ``status``; ``""`` clears it, and
  so does a message the app posts or streams in that thread, as in Slack), ``.setSuggestedPrompts``
  (``channel_id``, at most 4 ``prompts`` of ``title`` and ``message``, ``thread_ts`` optional: without
  it they sit at the top of the DM), ``.setTitle`` (``channel_id``, ``thread_ts``, ``title``): a
  missing argument is ``invalid_arguments``; :meth:`FakeSlack.status`,
  :meth:`FakeSlack.suggested_prompts` and :meth:`FakeSlack.title` show what a thread shows now;
- ``views.open``: the ``view`` with an ``id``;
- ``apps.connections.open``: a ``ws://`` URL of this server, where a WebSocket handshake succeeds
  and pings get pongs (recorded as ``websocket``), so Bolt's Socket Mode client really connects;
  :meth:`FakeSlack.deliver` sends it an envelope as Slack does, and each ack the client sends back is
  recorded as a call ``socket_mode.ack`` (``envelope_id``, and ``payload`` when it carries one);
- anything else (``reactions.add``, …): ``{"ok": true}``.

Faults are scripted per method and consumed one per call, in order: :meth:`FakeSlack.rate_limit`
(HTTP 429 with ``Retry-After``), :meth:`FakeSlack.fail` (``{"ok": false, "error": ...}``, HTTP
200 like Slack, or another status), :meth:`FakeSlack.hang_up` (the call takes effect, then the
connection closes before the answer, as when a connection drops once Slack has the request).
:meth:`FakeSlack.respond` overrides a method's answer for good. The server prints nothing and is thread-safe.

:meth:`FakeSlack.messages` replays the recorded calls into what a channel would show now: posted
and streamed messages, with appends, stops, updates and deletions applied.
"""

from __future__ import annotations

import base64
import dataclasses
import email.parser
import email.policy
import hashlib
import json
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.fake_server import FakeServer, QuietHandler, RedactedHeaders

__all__ = ["FakeSlack", "SlackCall", "SlackFault"]

_SECRET_PARAMS = frozenset({"token", "client_secret", "refresh_token"})
# What auth.test reports as granted unless a test says otherwise: every scope Penny's manifest declares.
DEFAULT_SCOPES = (
    "app_mentions:read", "assistant:write", "channels:history", "chat:write", "commands", "groups:history",
    "im:history", "mpim:history", "reactions:write", "users:read",
)
_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455's key suffix for Sec-WebSocket-Accept

Responder = Callable[["SlackCall"], Mapping[str, Any]]


class _RedactedParams(dict[str, Any]):
    """Params dict whose repr hides a token sent in the body."""

    def __repr__(self) -> str:
        return repr({k: ("<redacted>" if k in _SECRET_PARAMS else v) for k, v in self.items()})


@dataclass(frozen=True, repr=False)
class SlackCall:
    """One request the fake received. ``params`` are the decoded body and query parameters."""

    method: str
    params: _RedactedParams
    headers: RedactedHeaders
    http_method: str
    path: str
    at: float  # time.monotonic() when it arrived
    status: int = 200  # what the fake answered (filled in before the response is sent)
    response: Mapping[str, Any] | None = None  # the body it answered (filled in likewise)

    def header(self, name: str) -> str | None:
        return self.headers.get_ci(name)

    @property
    def token(self) -> str | None:
        """The token the caller sent (``Authorization: Bearer …`` or a ``token`` param)."""
        auth = self.header("Authorization") or ""
        if auth.startswith("Bearer "):
            return auth[len("Bearer ") :]
        value = self.params.get("token")
        return value if isinstance(value, str) else None

    def json_param(self, name: str) -> Any:
        """A parameter that carries JSON (``blocks``, ``view``…), decoded whichever way it was sent."""
        value = self.params.get(name)
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                return value
        return value

    @property
    def blocks(self) -> list[dict[str, Any]]:
        value = self.json_param("blocks")
        return value if isinstance(value, list) else []

    def __repr__(self) -> str:
        return f"SlackCall({self.method!r}, params={self.params!r}, status={self.status})"


@dataclass(frozen=True)
class SlackFault:
    """What the fake answers instead of success for one call."""

    status: int = 200
    body: Mapping[str, Any] = field(default_factory=lambda: {"ok": False, "error": "internal_error"})
    headers: tuple[tuple[str, str], ...] = ()
    hang_up: bool = False  # answer as usual (the call takes effect), but close without sending it


@dataclass
class _State:
    lock: threading.Lock = field(default_factory=threading.Lock)
    changed: threading.Condition = field(init=False)
    calls: list[SlackCall] = field(default_factory=list)
    faults: dict[str, deque[SlackFault]] = field(default_factory=dict)
    responders: dict[str, Responder] = field(default_factory=dict)
    replies: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    admins: set[str] = field(default_factory=set)
    streaming: set[tuple[str, str]] = field(default_factory=set)  # (channel, ts) of open streams
    statuses: dict[tuple[str, str], str] = field(default_factory=dict)  # (channel, thread_ts) -> status shown
    prompts: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)  # (channel, thread_ts|"")
    titles: dict[tuple[str, str], str] = field(default_factory=dict)
    scopes: tuple[str, ...] = DEFAULT_SCOPES
    next_ts: int = 0
    websocket: tuple[socket.socket, threading.Lock] | None = None  # the open Socket Mode connection, if any

    def __post_init__(self) -> None:
        self.changed = threading.Condition(self.lock)


class FakeSlack(FakeServer):
    """A loopback Slack Web API; see the module docstring. Use as a context manager."""

    def __init__(
        self,
        *,
        team_id: str = "T0PENNY",
        team: str = "Penny Test",
        bot_id: str = "B0PENNY",
        bot_user_id: str = "UPENNY",
        bot_name: str = "penny",
        app_id: str = "A0PENNY",
        admins: Iterable[str] = (),
        scopes: Iterable[str] = DEFAULT_SCOPES,
        first_ts: int = 1_700_000_000,
    ) -> None:
        self.team_id = team_id
        self.team = team
        self.bot_id = bot_id
        self.bot_user_id = bot_user_id
        self.bot_name = bot_name
        self.app_id = app_id
        self._first_ts = first_ts
        self._state = _State()
        self._state.admins.update(admins)
        self._state.scopes = tuple(scopes)
        super().__init__(_Handler)  # WebSocket connections end when ``stopping`` is set

    @property
    def workspace_url(self) -> str:
        return f"https://{self.team.lower().replace(' ', '-')}.slack.com/"

    # -- scripting ---------------------------------------------------------------------------

    def rate_limit(self, method: str, *, retry_after: int = 1, times: int = 1) -> None:
        """Answer the next ``times`` calls to ``method`` with HTTP 429 and ``Retry-After``."""
        fault = SlackFault(429, {"ok": False, "error": "ratelimited"}, (("Retry-After", str(retry_after)),))
        self._script(method, fault, times)

    def fail(self, method: str, error: str = "internal_error", *, times: int = 1, status: int = 200) -> None:
        """Answer the next ``times`` calls to ``method`` with ``{"ok": false, "error": error}``."""
        self._script(method, SlackFault(status, {"ok": False, "error": error}), times)

    def hang_up(self, method: str, *, times: int = 1) -> None:
        """Carry out the next ``times`` calls to ``method``, then close their connections unanswered."""
        self._script(method, SlackFault(hang_up=True), times)

    def script(self, method: str, *faults: SlackFault) -> None:
        """Queue arbitrary faults for ``method``, one per call."""
        with self._state.lock:
            self._state.faults.setdefault(method, deque()).extend(faults)

    def _script(self, method: str, fault: SlackFault, times: int) -> None:
        self.script(method, *([fault] * times))

    def respond(self, method: str, answer: Mapping[str, Any] | Responder) -> None:
        """Always answer ``method`` with ``answer`` (a body, or a callable of the call), until ``reset``."""
        if callable(answer):
            responder: Responder = answer
        else:
            body = dict(answer)

            def responder(_call: SlackCall) -> Mapping[str, Any]:
                return body

        with self._state.lock:
            self._state.responders[method] = responder

    def set_replies(self, channel: str, thread_ts: str, messages: Iterable[Mapping[str, Any]]) -> None:
        """What ``conversations.replies`` returns for this thread."""
        with self._state.lock:
            self._state.replies[(channel, thread_ts)] = [dict(m) for m in messages]

    def set_user(self, user_id: str, **fields: Any) -> None:
        """Extra or overriding fields of ``users.info`` for ``user_id`` (e.g. ``tz``, ``real_name``)."""
        with self._state.lock:
            self._state.users.setdefault(user_id, {}).update(fields)

    def set_admin(self, user_id: str, admin: bool = True) -> None:
        with self._state.lock:
            if admin:
                self._state.admins.add(user_id)
            else:
                self._state.admins.discard(user_id)

    def set_scopes(self, scopes: Iterable[str]) -> None:
        """The scopes auth.test reports as granted to the token from now on."""
        with self._state.lock:
            self._state.scopes = tuple(scopes)

    def status(self, channel: str, thread_ts: str) -> str:
        """The status the thread shows now (``""``: none)."""
        with self._state.lock:
            return self._state.statuses.get((channel, thread_ts), "")

    def suggested_prompts(self, channel: str, thread_ts: str | None = None) -> list[dict[str, Any]]:
        """The prompts set on the thread (or, with no ``thread_ts``, at the top of the DM)."""
        with self._state.lock:
            return list(self._state.prompts.get((channel, thread_ts or ""), []))

    def title(self, channel: str, thread_ts: str) -> str | None:
        with self._state.lock:
            return self._state.titles.get((channel, thread_ts))

    def pending(self, method: str) -> int:
        """Scripted faults for ``method`` not consumed yet."""
        with self._state.lock:
            return len(self._state.faults.get(method, ()))

    def reset(self) -> None:
        """Forget calls, faults, responders, open streams and configured replies/users (admins stay)."""
        with self._state.lock:
            self._state.calls.clear()
            self._state.faults.clear()
            self._state.responders.clear()
            self._state.replies.clear()
            self._state.users.clear()
            self._state.streaming.clear()
            self._state.statuses.clear()
            self._state.prompts.clear()
            self._state.titles.clear()

    # -- inspection --------------------------------------------------------------------------

    def deliver(self, envelope: dict[str, Any], timeout: float = 5.0) -> None:
        """Send ``envelope`` (``envelope_id``, ``type``, ``payload``, …) over the open Socket Mode
        connection, waiting up to ``timeout`` for one to open."""
        deadline = time.monotonic() + timeout
        with self._state.changed:
            while self._state.websocket is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError("no Socket Mode connection is open")
                self._state.changed.wait(remaining)
            sock, lock = self._state.websocket
        with lock:
            sock.sendall(_ws_frame(0x1, json.dumps(envelope).encode()))

    def calls(self, method: str | None = None) -> list[SlackCall]:
        with self._state.lock:
            return [c for c in self._state.calls if method is None or c.method == method]

    def count(self, method: str | None = None) -> int:
        return len(self.calls(method))

    def last(self, method: str) -> SlackCall:
        found = self.calls(method)
        if not found:
            raise AssertionError(f"no call to {method}; calls so far: {self._summary()}")
        return found[-1]

    def wait_for(self, method: str | tuple[str, ...], count: int = 1, timeout: float = 5.0, *,
                 where: Callable[[SlackCall], bool] | None = None) -> list[SlackCall]:
        """Block until ``method`` (or any of several) has been called ``count`` times (returns as
        soon as it has), counting only calls ``where`` accepts; the calls so far. Raises
        AssertionError after ``timeout`` seconds."""
        methods = (method,) if isinstance(method, str) else method
        deadline = time.monotonic() + timeout
        with self._state.changed:
            while True:
                found = [c for c in self._state.calls if c.method in methods and (where is None or where(c))]
                if len(found) >= count:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._state.changed.wait(remaining)
        raise AssertionError(
            f"waited {timeout}s for {count} call(s) to {method}, got {len(found)}; calls so far: {self._summary()}"
        )

    def messages(self, channel: str | None = None) -> list[dict[str, Any]]:
        """The messages the calls so far left in ``channel`` (every channel if None), oldest
        first: ``ts``, ``channel``, ``thread_ts``, ``text``, ``blocks``, ``markdown`` (the streamed
        text) and ``streaming`` (a stream not stopped yet). Failed calls change nothing."""
        shown: dict[tuple[str, str], dict[str, Any]] = {}
        for call in self.calls():
            answer = call.response or {}
            if call.status != 200 or not answer.get("ok"):
                continue
            where = str(call.params.get("channel", ""))
            key = (where, str(answer.get("ts") or call.params.get("ts") or ""))
            if call.method in ("chat.postMessage", "chat.startStream"):
                shown[key] = {
                    "ts": key[1],
                    "channel": where,
                    "thread_ts": call.params.get("thread_ts"),
                    "text": str(call.params.get("text", "")),
                    "blocks": call.blocks,
                    "markdown": str(call.params.get("markdown_text", "")),
                    "streaming": call.method == "chat.startStream",
                }
            elif key in shown and call.method in ("chat.appendStream", "chat.stopStream"):
                shown[key]["markdown"] += str(call.params.get("markdown_text", ""))
                if call.method == "chat.stopStream":
                    shown[key]["streaming"] = False
                    shown[key]["blocks"] = shown[key]["blocks"] + call.blocks
            elif key in shown and call.method == "chat.update":
                shown[key].update(text=str(call.params.get("text", "")), blocks=call.blocks, markdown="")
            elif call.method == "chat.delete":
                shown.pop(key, None)
        return [m for m in shown.values() if channel is None or m["channel"] == channel]

    def _summary(self) -> str:
        with self._state.lock:
            return ", ".join(c.method for c in self._state.calls) or "none"

    # -- request handling (server threads) ---------------------------------------------------

    def _record(self, call: SlackCall) -> tuple[int, Mapping[str, Any], tuple[tuple[str, str], ...], bool]:
        """Record ``call`` and decide the answer: (status, body, headers, whether to hang up instead)."""
        with self._state.changed:
            faults = self._state.faults.get(call.method)
            fault = faults.popleft() if faults else None
            responder = self._state.responders.get(call.method)
            self._state.next_ts += 1
            serial = self._state.next_ts
        if fault is not None and not fault.hang_up:
            status, body, headers = fault.status, fault.body, fault.headers
        elif responder is not None:
            status, body, headers = 200, responder(call), ()
        else:
            status, body, headers = 200, self._answer(call, serial), self._headers(call)
        with self._state.changed:
            self._state.calls.append(dataclasses.replace(call, status=status, response=body))
            self._state.changed.notify_all()
        return status, body, headers, fault is not None and fault.hang_up

    def _headers(self, call: SlackCall) -> tuple[tuple[str, str], ...]:
        if call.method == "auth.test":
            with self._state.lock:
                return (("x-oauth-scopes", ",".join(self._state.scopes)),)
        return ()

    def _ts(self, serial: int) -> str:
        return f"{self._first_ts + serial}.{serial:06d}"

    def _answer(self, call: SlackCall, serial: int) -> dict[str, Any]:
        p = call.params
        method = call.method
        if method == "auth.test":
            return {
                "ok": True,
                "url": self.workspace_url,
                "team": self.team,
                "user": self.bot_name,
                "team_id": self.team_id,
                "user_id": self.bot_user_id,
                "bot_id": self.bot_id,
                "app_id": self.app_id,
                "is_enterprise_install": False,
            }
        if method == "chat.postMessage":
            ts = self._ts(serial)
            self._clear_status(p)
            return {"ok": True, "channel": p.get("channel"), "ts": ts, "message": self._message(call, ts)}
        if method == "chat.postEphemeral":
            return {"ok": True, "message_ts": self._ts(serial)}
        if method == "chat.update":
            updated = str(p.get("ts"))
            message = self._message(call, updated)
            return {
                "ok": True,
                "channel": p.get("channel"),
                "ts": updated,
                "text": p.get("text", ""),
                "message": message,
            }
        if method == "chat.delete":
            with self._state.lock:
                self._state.streaming.discard((str(p.get("channel")), str(p.get("ts"))))
            return {"ok": True, "channel": p.get("channel"), "ts": p.get("ts")}
        if method in ("chat.startStream", "chat.appendStream", "chat.stopStream"):
            return self._stream_answer(call, serial)
        if method.startswith("assistant.threads."):
            return self._assistant_answer(call)
        if method == "views.open":
            view = call.json_param("view")
            view = dict(view) if isinstance(view, dict) else {}
            view.update({"id": f"V{serial:08d}", "team_id": self.team_id, "app_id": self.app_id})
            return {"ok": True, "view": view}
        if method == "apps.connections.open":
            return {"ok": True, "url": f"ws://127.0.0.1:{self.port}/link/?ticket=t{serial}"}
        if method == "views.publish":
            view = call.json_param("view")
            view = dict(view) if isinstance(view, dict) else {}
            view.setdefault("type", "home")
            view.update({"id": f"V{serial:08d}", "team_id": self.team_id, "app_id": "A0PENNY"})
            return {"ok": True, "view": view}
        if method == "users.info":
            return {"ok": True, "user": self._user(str(p.get("user", "")))}
        if method == "conversations.replies":
            with self._state.lock:
                messages = list(self._state.replies.get((str(p.get("channel")), str(p.get("ts"))), []))
            return _replies_page(messages, limit=p.get("limit"), cursor=p.get("cursor"))
        return {"ok": True}

    def _assistant_answer(self, call: SlackCall) -> dict[str, Any]:
        p = call.params
        channel, thread_ts = str(p.get("channel_id") or ""), str(p.get("thread_ts") or "")
        if not channel:
            return {"ok": False, "error": "invalid_arguments"}
        if call.method == "assistant.threads.setStatus":
            if not thread_ts or "status" not in p:
                return {"ok": False, "error": "invalid_arguments"}
            with self._state.lock:
                self._state.statuses[(channel, thread_ts)] = str(p["status"])
            return {"ok": True}
        if call.method == "assistant.threads.setSuggestedPrompts":
            prompts = call.json_param("prompts")
            if not isinstance(prompts, list) or not 0 < len(prompts) <= 4 or not all(
                isinstance(q, dict) and q.get("title") and q.get("message") for q in prompts
            ):
                return {"ok": False, "error": "invalid_arguments"}
            with self._state.lock:
                self._state.prompts[(channel, thread_ts)] = [dict(q) for q in prompts]
            return {"ok": True}
        if call.method == "assistant.threads.setTitle":
            if not thread_ts or not p.get("title"):
                return {"ok": False, "error": "invalid_arguments"}
            with self._state.lock:
                self._state.titles[(channel, thread_ts)] = str(p["title"])
            return {"ok": True}
        return {"ok": False, "error": "unknown_method"}

    def _clear_status(self, params: Mapping[str, Any]) -> None:
        """A message the app posts in a thread ends the status shown there, as in Slack."""
        thread_ts = params.get("thread_ts")
        if thread_ts:
            with self._state.lock:
                self._state.statuses.pop((str(params.get("channel", "")), str(thread_ts)), None)

    def _stream_answer(self, call: SlackCall, serial: int) -> dict[str, Any]:
        p = call.params
        channel = str(p.get("channel", ""))
        if call.method == "chat.startStream":
            if not p.get("thread_ts"):
                return {"ok": False, "error": "invalid_arguments"}
            if not channel.startswith("D"):  # Slack needs the recipient outside a DM
                for name in ("recipient_user_id", "recipient_team_id"):
                    if not p.get(name):
                        return {"ok": False, "error": f"missing_{name}"}
            ts = self._ts(serial)
            with self._state.lock:
                self._state.streaming.add((channel, ts))
            self._clear_status(p)
            return {"ok": True, "channel": channel, "ts": ts}
        ts = str(p.get("ts", ""))
        with self._state.lock:
            if (channel, ts) not in self._state.streaming:
                return {"ok": False, "error": "message_not_in_streaming_state"}
            if call.method == "chat.stopStream":
                self._state.streaming.discard((channel, ts))
        return {"ok": True, "channel": channel, "ts": ts}

    def _message(self, call: SlackCall, ts: str) -> dict[str, Any]:
        message: dict[str, Any] = {
            "type": "message",
            "user": self.bot_user_id,
            "bot_id": self.bot_id,
            "team": self.team_id,
            "text": call.params.get("text", ""),
            "ts": ts,
        }
        if call.blocks:
            message["blocks"] = call.blocks
        thread_ts = call.params.get("thread_ts")
        if thread_ts:
            message["thread_ts"] = thread_ts
        return message

    def _user(self, user_id: str) -> dict[str, Any]:
        with self._state.lock:
            extra = dict(self._state.users.get(user_id, {}))
            admin = user_id in self._state.admins
        user: dict[str, Any] = {
            "id": user_id,
            "team_id": self.team_id,
            "name": user_id.lower(),
            "real_name": f"User {user_id}",
            "deleted": False,
            "is_admin": admin,
            "is_owner": False,
            "is_bot": user_id == self.bot_user_id,
            "tz": "UTC",
            "tz_offset": 0,
            "profile": {"display_name": user_id.lower(), "real_name": f"User {user_id}"},
        }
        user.update(extra)
        return user


class _WebSocketFrames:
    """Client frames from ``sock`` (masked, per RFC 6455); ``next()`` is None while none is complete."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = b""

    def next(self) -> tuple[int, bytes] | None:
        frame = self._parse()
        if frame is not None:  # one that arrived with an earlier read
            return frame
        try:
            chunk = self._sock.recv(65536)
        except TimeoutError:
            return None
        if not chunk:
            raise ConnectionResetError("the client closed the connection")
        self._buffer += chunk
        return self._parse()

    def _parse(self) -> tuple[int, bytes] | None:
        data = self._buffer
        if len(data) < 2:
            return None
        opcode, length, at = data[0] & 0x0F, data[1] & 0x7F, 2
        if length == 126:
            if len(data) < 4:
                return None
            length, at = struct.unpack(">H", data[2:4])[0], 4
        elif length == 127:
            if len(data) < 10:
                return None
            length, at = struct.unpack(">Q", data[2:10])[0], 10
        masked = bool(data[1] & 0x80)
        end = at + (4 if masked else 0) + length
        if len(data) < end:
            return None
        mask = data[at : at + 4] if masked else b"\0\0\0\0"
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(data[end - length : end]))
        self._buffer = data[end:]
        return opcode, payload


def _ws_frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked server frame."""
    if len(payload) < 126:
        return bytes([0x80 | opcode, len(payload)]) + payload
    if len(payload) < 1 << 16:
        return bytes([0x80 | opcode, 126]) + struct.pack(">H", len(payload)) + payload
    return bytes([0x80 | opcode, 127]) + struct.pack(">Q", len(payload)) + payload


def _replies_page(messages: list[dict[str, Any]], *, limit: Any, cursor: Any) -> dict[str, Any]:
    """One page of a thread, like Slack: ``limit`` messages (default 1000) from the ``cursor`` on,
    the root first on the first page only, and ``next_cursor`` (with ``has_more``) while more remain."""
    size = int(limit) if limit else 1000
    start = int(base64.b64decode(str(cursor)).decode().removeprefix("offset:")) if cursor else 0
    end = start + size
    more = end < len(messages)
    next_cursor = base64.b64encode(f"offset:{end}".encode()).decode() if more else ""
    return {"ok": True, "messages": messages[start:end], "has_more": more,
            "response_metadata": {"next_cursor": next_cursor}}


def _parse_body(content_type: str, raw: bytes) -> dict[str, Any]:
    kind = content_type.split(";", 1)[0].strip().lower()
    if not raw:
        return {}
    if kind == "application/json":
        try:
            body = json.loads(raw)
        except ValueError:
            return {}
        return body if isinstance(body, dict) else {"_body": body}
    if kind == "multipart/form-data":
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + raw
        )
        fields: dict[str, Any] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if not isinstance(name, str):
                continue
            payload = part.get_payload(decode=True)
            data = payload if isinstance(payload, bytes) else b""
            fields[name] = data if part.get_filename() else data.decode("utf-8", "replace")
        return fields
    return _flatten(parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True))


def _flatten(query: dict[str, list[str]]) -> dict[str, Any]:
    return {k: v[0] if len(v) == 1 else v for k, v in query.items()}


def _method_of(path: str) -> str:
    if path.startswith("/api/"):
        return path[len("/api/") :]
    return path.lstrip("/")


class _Handler(QuietHandler):
    def do_POST(self) -> None:
        self._handle("POST")

    def do_GET(self) -> None:
        if (self.headers.get("Upgrade") or "").lower() == "websocket":
            self._websocket()
            return
        self._handle("GET")

    def _websocket(self) -> None:
        """Accept a WebSocket (Socket Mode's connection), answer pings and record acks until either
        side closes or the fake stops; :meth:`FakeSlack.deliver` sends envelopes on it."""
        fake = self.server.fake
        key = self.headers.get("Sec-WebSocket-Key") or ""
        accept = base64.b64encode(hashlib.sha1((key + _WS_GUID).encode()).digest()).decode()  # RFC 6455
        call = SlackCall(method="websocket", params=_RedactedParams(),
                         headers=RedactedHeaders(dict(self.headers.items())), http_method="GET",
                         path=urlsplit(self.path).path, at=time.monotonic(), status=101)
        with fake._state.changed:
            fake._state.calls.append(call)
            fake._state.changed.notify_all()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        sock = self.connection
        sock.settimeout(0.1)
        frames = _WebSocketFrames(sock)
        lock = threading.Lock()  # the handler's pongs and deliver()'s envelopes share the socket
        with fake._state.changed:
            fake._state.websocket = (sock, lock)
            fake._state.changed.notify_all()
        try:
            self._websocket_frames(frames, sock, lock)
        finally:
            with fake._state.lock:
                if fake._state.websocket == (sock, lock):
                    fake._state.websocket = None

    def _websocket_frames(self, frames: _WebSocketFrames, sock: socket.socket, lock: threading.Lock) -> None:
        fake = self.server.fake
        while not fake.stopping.is_set():
            try:
                frame = frames.next()
            except OSError:
                return
            if frame is None:
                continue
            opcode, payload = frame
            if opcode == 0x8:  # close
                with lock:
                    sock.sendall(_ws_frame(0x8, payload[:2]))
                return
            if opcode == 0x9:  # ping
                with lock:
                    sock.sendall(_ws_frame(0xA, payload))
            elif opcode == 0x1:  # an envelope's ack
                ack = json.loads(payload)
                call = SlackCall(method="socket_mode.ack", params=_RedactedParams(ack), headers=RedactedHeaders({}),
                                 http_method="WS", path="", at=time.monotonic(), status=0)
                with fake._state.changed:
                    fake._state.calls.append(call)
                    fake._state.changed.notify_all()

    def _handle(self, http_method: str) -> None:
        raw = self._read_body()
        parts = urlsplit(self.path)
        params = _RedactedParams(_flatten(parse_qs(parts.query, keep_blank_values=True)))
        params.update(_parse_body(self.headers.get("Content-Type", ""), raw))
        call = SlackCall(
            method=_method_of(parts.path),
            params=params,
            headers=RedactedHeaders(dict(self.headers.items())),
            http_method=http_method,
            path=parts.path,
            at=time.monotonic(),
        )
        status, body, headers, hang_up = self.server.fake._record(call)
        if hang_up:
            self.close_connection = True
            return
        self._send_raw(status, json.dumps(body).encode(), "application/json; charset=utf-8", headers)
