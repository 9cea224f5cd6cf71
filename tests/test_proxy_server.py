"""``penny proxy`` in a subprocess, on the production HTTP stack, with the real ``openai`` SDK and the
fake OpenAI upstream: completions (streamed too), embeddings, a retried ``Idempotency-Key`` paid once, a revoked
key refused, the operations endpoints, SIGTERM, and the spend under the key's user in ``penny cost``."""

from __future__ import annotations

import io
import json
import re
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import openai
import pytest

from bot.proxy.keys import KeyRing
from bot.proxy.server import ProxyWorker
from proxy_core import PennySettings, store_from_url
from tests.fake_openai import FakeOpenAI, Fault
from tests.proxy_harness import ROOT, ProxyProcess, proxy_env


@pytest.fixture
def fake_answer() -> str:
    return "Run `make deploy`."


def test_penny_proxy_serves_the_openai_sdk_through_the_gateway(tmp_path: Path, fake: FakeOpenAI) -> None:
    env = proxy_env(tmp_path, fake.base_url)
    store = store_from_url(env["PENNY_STORE_URL"])
    try:
        ring = KeyRing(store)
        secret, key = ring.create(user_id="U123", workspace_id="T1", name="notebook")
        revoked_secret, revoked = ring.create(user_id="U123", workspace_id="T1")
        ring.revoke(revoked.id)
    finally:
        store.close()
    server = ProxyProcess(env, tmp_path, workers=2)
    try:
        assert server.get("/healthz") == (200, "ok\n")
        assert server.get("/readyz") == (200, "ready\n")
        client = openai.OpenAI(api_key=secret, base_url=server.url, max_retries=0, timeout=10.0)
        question = [{"role": "user", "content": "How do I deploy?"}]
        headers = {"Idempotency-Key": "notebook-cell-7"}
        first = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=question, extra_headers=headers)  # type: ignore[arg-type]
        assert first.parse().choices[0].message.content == "Run `make deploy`."
        assert first.headers["x-penny-cache"] == "miss" and first.headers["x-penny-key-id"] == key.id
        retried = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=question, extra_headers=headers)  # type: ignore[arg-type]
        assert retried.headers["x-penny-replayed"] == "true"
        chunks = list(client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "How do I roll back?"}],
            stream=True, stream_options={"include_usage": True}))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Run `make deploy`."
        assert chunks[-1].usage is not None
        vectors = client.embeddings.create(model="text-embedding-3-small", input="deploy", encoding_format="float")
        assert len(vectors.data[0].embedding) == 1536
        assert [m.id for m in client.models.list()]
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(api_key=revoked_secret, base_url=server.url, max_retries=0).models.list()
        assert len(fake.requests_to("chat")) == 2
        status, metrics = server.get("/metrics")
        assert status == 200 and "penny_" in metrics
    finally:
        assert server.stop() == 0
    assert secret not in server.err.read_text() and key.id in server.err.read_text()

    day = datetime.now(UTC).strftime("%Y-%m-%d")
    store = store_from_url(env["PENNY_STORE_URL"])
    try:
        usage = store.usage("T1", day, day, None)
    finally:
        store.close()
    assert set(usage.by_user) == {"U123"} and usage.totals.requests == 3  # two chats, one embedding
    cost = subprocess.run([sys.executable, "-m", "bot.cli", "cost", "--user", "U123", "--workspace", "T1", "--json"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True)
    report = json.loads(cost.stdout)
    assert report["user_id"] == "U123" and report["today"]["cost_micros"] > 0, report
    # All of it came through the notebook key: the ledger says so, and /cost names the key.
    assert [(s["source"], s["name"], s["today"]["requests"]) for s in report["sources"]] == [(key.id, "notebook", 3)]


def minted(env: dict[str, str], user_id: str) -> str:
    """A key for ``user_id`` in workspace T1, made in the store the proxy of ``env`` uses."""
    store = store_from_url(env["PENNY_STORE_URL"])
    try:
        return KeyRing(store).create(user_id=user_id, workspace_id="T1")[0]
    finally:
        store.close()


def readme_example(kind: str) -> str:
    """The fenced block after ``<!-- proxy-example: KIND -->`` in the README."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(rf"<!-- proxy-example: {kind} -->\n```\w+\n(.*?)\n```", readme, re.S)
    assert found, f"README has no {kind} example for penny proxy"
    return found.group(1)


def test_penny_proxy_logs_the_store_it_creates(tmp_path: Path, fake: FakeOpenAI) -> None:
    """A typo in a service's PENNY_STORE_URL shows in its log, not only as spend that never adds up."""
    env = proxy_env(tmp_path, fake.base_url)
    server = ProxyProcess(env, tmp_path)
    try:
        assert server.get("/readyz") == (200, "ready\n")
    finally:
        assert server.stop() == 0
    created = [line for line in server.err.read_text().splitlines() if "store_created" in line]
    assert len(created) == 1 and str(tmp_path / "penny.db") in created[0]


def test_the_readme_examples_run_against_penny_proxy(tmp_path: Path, fake: FakeOpenAI) -> None:
    env = proxy_env(tmp_path, fake.base_url)
    secret = minted(env, "U123")
    server = ProxyProcess(env, tmp_path, workers=2)
    try:
        client_env = {**env, "PENNY_KEY": secret}
        curl = readme_example("curl").replace("http://127.0.0.1:8787", server.root)
        reply = subprocess.run(["bash", "-c", curl], env=client_env, capture_output=True, text=True, timeout=30,
                               check=True)
        assert json.loads(reply.stdout)["choices"][0]["message"]["content"] == "Run `make deploy`."
        python = readme_example("python").replace("http://127.0.0.1:8787", server.root)
        ran = subprocess.run([sys.executable, "-c", python], env=client_env, capture_output=True, text=True,
                             timeout=60, check=True)
        assert ran.stdout == "Run `make deploy`.\nRun `make deploy`.\n", ran.stderr
    finally:
        assert server.stop() == 0


def test_penny_proxy_refuses_and_caches_as_openai_clients_expect(tmp_path: Path, fake: FakeOpenAI) -> None:
    env = proxy_env(tmp_path, fake.base_url)
    env["PENNY_USER_LIMIT_OVERRIDES"] = '{"U_RATE": {"requests_per_minute": 1, "request_burst": 1}}'
    env["PENNY_USER_BUDGET_OVERRIDES"] = '{"U_BROKE": "0.000001"}'
    store = store_from_url(env["PENNY_STORE_URL"])
    try:
        ring = KeyRing(store)
        keys = {user: ring.create(user_id=user, workspace_id="T1")[0] for user in ("U_OK", "U_RATE", "U_BROKE")}
    finally:
        store.close()
    question = [{"role": "user", "content": "How do I deploy?"}]
    server = ProxyProcess(env, tmp_path, workers=2)
    try:
        def client(user: str) -> openai.OpenAI:
            return openai.OpenAI(api_key=keys[user], base_url=server.url, max_retries=0, timeout=10.0)

        create = client("U_OK").chat.completions.with_raw_response.create
        assert create(model="gpt-4o-mini", messages=question).headers["x-penny-cache"] == "miss"  # type: ignore[arg-type]
        hit = create(model="gpt-4o-mini", messages=question)  # type: ignore[arg-type]
        assert hit.headers["x-penny-cache"] == "hit" and float(hit.headers["x-penny-saved-usd"]) > 0
        fresh = create(model="gpt-4o-mini", messages=question,  # type: ignore[arg-type]
                       extra_headers={"Cache-Control": "no-cache"})
        assert fresh.headers["x-penny-cache"] == "bypass"

        client("U_RATE").chat.completions.create(model="gpt-4o-mini", messages=question)  # type: ignore[arg-type]
        with pytest.raises(openai.RateLimitError) as limited:
            client("U_RATE").chat.completions.create(model="gpt-4o-mini", messages=question,  # type: ignore[arg-type]
                                                     extra_headers={"Cache-Control": "no-cache"})
        assert limited.value.code == "rate_limit_exceeded"
        assert int(limited.value.response.headers["retry-after"]) >= 1

        with pytest.raises(openai.RateLimitError) as broke:
            client("U_BROKE").chat.completions.create(model="gpt-4o-mini", messages=question)  # type: ignore[arg-type]
        assert broke.value.code == "insufficient_quota" and "resets at" in broke.value.message
    finally:
        assert server.stop() == 0
    assert len(fake.requests_to("chat")) == 3  # U_OK's miss and fresh answer, U_RATE's first question


def _raw(port: int, request: bytes, *, until: bytes = b"\r\n\r\n", timeout_s: float = 10.0) -> tuple[socket.socket,
                                                                                                        bytes]:
    """Send ``request`` on a new connection; the socket and what came back up to ``until``."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    sock.sendall(request)
    received = b""
    while until not in received:
        data = sock.recv(65536)
        if not data:
            break
        received += data
    return sock, received


def test_penny_proxy_reads_chunked_bodies_never_reads_a_keyless_one_and_settles_a_stream_its_client_left(
    tmp_path: Path, fake: FakeOpenAI
) -> None:
    env = proxy_env(tmp_path, fake.base_url)
    secret = minted(env, "U7")
    server = ProxyProcess(env, tmp_path)
    port = int(server.root.rsplit(":", 1)[1])
    try:
        # A chunked body (Go's http.Client sends one for a reader of unknown length) is read, not taken for empty.
        body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "How do I deploy?"}]})
        half = len(body) // 2
        parts = (body[:half], body[half:])
        chunked = b"".join(f"{len(part):x}\r\n{part}\r\n".encode() for part in parts) + b"0\r\n\r\n"
        sock, reply = _raw(port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           + f"Authorization: Bearer {secret}\r\n".encode() + b"Transfer-Encoding: chunked\r\n\r\n"
                           + chunked)
        sock.close()
        assert reply.startswith(b"HTTP/1.1 200"), reply[:200]

        # A large body without a key is refused before it is read: the client never has to send it,
        # and cannot hold request threads by sending it slowly (gunicorn drained an unread body for
        # up to 5 s on the thread; 20 such clients held all 16 for a keyed call's 4.7 s).
        held = []
        started = time.monotonic()
        for _ in range(20):
            sock, reply = _raw(port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 300000\r\n"
                               b"\r\n{")
            assert reply.startswith(b"HTTP/1.1 401")
            held.append(sock)  # still "sending" its body
        probe = f"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {secret}\r\n\r\n"
        sock, reply = _raw(port, probe.encode())
        sock.close()
        assert reply.startswith(b"HTTP/1.1 200") and time.monotonic() - started < 3.0  # all 21 answered
        for sock in held:
            sock.close()

        # A client that waits to be told to go on (Expect: 100-continue, as curl sends) is told at once.
        sock, reply = _raw(port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           + f"Authorization: Bearer {secret}\r\nContent-Length: {len(body)}\r\n".encode()
                           + b"Expect: 100-continue\r\n\r\n", timeout_s=3.0)
        assert reply.startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(body.encode())
        answer = sock.recv(65536)
        sock.close()
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]

        # A stream whose client leaves mid-answer while upstream is still writing it, then SIGTERM:
        # the call outlives its request (the request's thread ends at its next write), and it is
        # paid for, so the worker settles it before it stops.
        fake.script(Fault.ok(content="Run the rollback script, then check the dashboard and tell the on-call channel.",
                             chunk_delay_s=0.25), endpoint="chat")
        streamed = json.dumps({"model": "gpt-4o-mini", "stream": True,
                               "messages": [{"role": "user", "content": "How do I roll back?"}]}).encode()
        sock, reply = _raw(port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           + f"Authorization: Bearer {secret}\r\nContent-Length: {len(streamed)}\r\n\r\n".encode()
                           + streamed, until=b'"content":"Run')
        sock.close()  # gone, with the answer's retry still on its way
        assert b'"content":"Run' in reply
    finally:
        assert server.stop() == 0
    assert len(fake.requests_to("chat")) == 2
    store = store_from_url(env["PENNY_STORE_URL"])
    try:
        day = datetime.now(UTC).strftime("%Y-%m-%d")
        totals = store.usage("T1", day, day, None).totals
    finally:
        store.close()
    # Both answers in the ledger at their real cost, and the hit the Expect request got.
    assert (totals.requests, totals.cache_hits, totals.unsettled) == (3, 1, 0)


def test_readyz_says_the_store_is_unreachable_without_its_address(tmp_path: Path) -> None:
    """``/readyz`` answers anyone on the API's port: it used to print the store's error, which names
    its host and port (``Error 111 connecting to 10.0.0.5:6379``)."""
    with socket.socket() as closed:  # bound, never listening: connecting is refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        settings = PennySettings(openai_api_key="sk-test-0123456789abcdef", store_url=f"redis://127.0.0.1:{port}/0",
                                 spool_dir=tmp_path / "spool", store_timeout_s=0.5)
        worker = ProxyWorker(settings, metrics=None)
        try:
            statuses: list[str] = []
            environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/readyz"}
            body = b"".join(worker.wsgi(environ, lambda status, headers: statuses.append(status)))  # type: ignore[arg-type]
        finally:
            worker.close(timeout_s=1)
    assert statuses[0].startswith("503") and body == b"store unreachable\n"
    assert str(port) not in body.decode()


@pytest.mark.parametrize(("peer", "authorization", "served"), [
    ("127.0.0.1", "", True),  # a Prometheus agent on this host
    ("::1", "", True),
    ("::ffff:127.0.0.1", "", True),
    ("10.0.0.7", "", False),  # a key holder elsewhere: spend per model is not theirs to read
    ("10.0.0.7", "Bearer scrape-0123456789", True),
    ("10.0.0.7", "Bearer scrape-wrong", False),
    ("10.0.0.7", "Bearer pk-any-client-key", False),
    ("", "", False),  # no peer address (a Unix socket)
])
def test_metrics_on_the_api_port_are_for_this_host_or_the_metrics_token(
    tmp_path: Path, peer: str, authorization: str, served: bool
) -> None:
    settings = PennySettings(openai_api_key="sk-test-0123456789abcdef", store_url=f"sqlite:///{tmp_path / 'p.db'}",
                             spool_dir=tmp_path / "spool", metrics_token="scrape-0123456789")
    worker = ProxyWorker(settings, metrics=lambda: b"penny_requests_total 1\n")
    try:
        statuses: list[str] = []
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics", "REMOTE_ADDR": peer,
                   "HTTP_AUTHORIZATION": authorization, "wsgi.input": io.BytesIO(b"")}
        body = b"".join(worker.wsgi(environ, lambda status, headers: statuses.append(status)))  # type: ignore[arg-type]
        health = b"".join(worker.wsgi({"REQUEST_METHOD": "GET", "PATH_INFO": "/healthz", "REMOTE_ADDR": peer},
                                      lambda status, headers: statuses.append(status)))  # type: ignore[arg-type]
    finally:
        worker.close(timeout_s=1)
    assert health == b"ok\n"  # health is for anyone
    if served:
        assert statuses[0].startswith("200") and body == b"penny_requests_total 1\n"
    else:
        assert statuses[0].startswith("404") and b"penny_requests_total" not in body
