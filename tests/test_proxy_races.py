"""``penny proxy`` under concurrency and client misbehaviour: one request is never paid twice, a
key's two bodies are never both answered, whatever fails or races. Overlaps are staged with real
threads held at the fake upstream's :class:`~tests.fake_openai.Gate` and a clock whose ``sleep``
parks the caller until the test lets it go (no real sleeps)."""

from __future__ import annotations

import json
import socket
import threading
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import openai
import pytest

from bot.proxy.app import IDEMPOTENCY_RECORD
from proxy_core import ManualClock
from tests.fake_openai import FakeOpenAI, Fault, Gate
from tests.polling import until
from tests.proxy_harness import serve_proxy

MODEL = "gpt-4o-mini"
QUESTION = [{"role": "user", "content": "How do I deploy?"}]
OTHER = [{"role": "user", "content": "Who is on call?"}]


class ParkingClock(ManualClock):
    """A manual clock whose ``sleep`` parks its caller until :attr:`go` is set: a request waiting
    for another stays waiting while the test acts."""

    def __init__(self) -> None:
        super().__init__()
        self.parked = threading.Event()
        self.go = threading.Event()

    def sleep(self, seconds: float) -> None:
        self.parked.set()
        self.go.wait(10)
        super().sleep(seconds)


@pytest.fixture
def clock() -> Iterator[ManualClock]:
    parking = ParkingClock()
    yield parking
    parking.go.set()


def today(clock: ManualClock) -> str:
    return datetime.fromtimestamp(clock(), UTC).strftime("%Y-%m-%d")


@pytest.mark.parametrize(("backend", "stream"), [("sqlite", False), ("redis", False), ("sqlite", True)])
def test_a_retry_waiting_on_a_key_whose_first_request_fails_never_runs_beside_another_body(
    backend: str, stream: bool, request: pytest.FixtureRequest, fake: FakeOpenAI, clock: ParkingClock
) -> None:
    """A retry (the same body) waited for the key's first request without holding the key; when
    the first failed it freed the key, a corrected body claimed it and was answered, and the
    waiting retry then ran too: two bodies answered and billed under one key, and the record left
    naming the retry's body, so the corrected body's paid answer was a 422 to its own retries.
    The freed key goes to whoever claims it first: here the corrected body, so the retry is the 422."""
    store = request.getfixturevalue(f"{backend}_store")
    with serve_proxy(store, fake, clock, retry_max_attempts=1) as proxy:
        secret, _ = proxy.keys.create(user_id="U1", workspace_id="T1")
        client = proxy.client(secret)
        key = {"Idempotency-Key": "k", "Cache-Control": "no-cache"}

        def ask(messages: list[dict[str, str]]) -> str:
            if not stream:
                return client.chat.completions.create(model=MODEL, messages=messages,  # type: ignore[arg-type]
                                                      extra_headers=key).choices[0].message.content or ""
            chunks = client.chat.completions.create(model=MODEL, messages=messages, stream=True,  # type: ignore[arg-type]
                                                    extra_headers=key)
            return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

        fake.script(Fault.status(500), endpoint="chat")  # the first request fails upstream
        gate = fake.hold(Gate(2))
        with ThreadPoolExecutor(max_workers=2) as pool:
            first = pool.submit(ask, QUESTION)
            until(lambda: gate.waited == 1, what="the first request to reach upstream")
            retry = pool.submit(ask, QUESTION)
            assert clock.parked.wait(10), "the retry waits for the first request"
            gate.arrive()
            with pytest.raises(openai.InternalServerError):
                first.result(timeout=10)
            corrected = ask(OTHER)
            clock.go.set()
            with pytest.raises(openai.UnprocessableEntityError) as refused:
                retry.result(timeout=10)
        assert refused.value.code == "idempotency_key_reused"
        bodies = [r.body["messages"][-1]["content"] for r in fake.requests_to("chat")]
        assert bodies == ["How do I deploy?", "Who is on call?"]
        assert proxy.gateway.usage("T1", today(clock), today(clock)).totals.requests == 1
        assert corrected and ask(OTHER) == corrected  # replayed
        assert len(fake.requests_to("chat")) == 2


def _post_and_leave(base_url: str, secret: str, body: bytes, headers: dict[str, str]) -> None:
    """Send a request and hang up without reading a byte of the answer."""
    host, port = base_url.removeprefix("http://").split("/", 1)[0].split(":")
    lines = ["POST /v1/chat/completions HTTP/1.1", f"Host: {host}", f"Authorization: Bearer {secret}",
             "Content-Type: application/json", f"Content-Length: {len(body)}",
             *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    with socket.create_connection((host, int(port))) as conn:
        conn.sendall("\r\n".join(lines).encode() + body)


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_a_stream_whose_client_left_settles_once_and_its_retry_waits_for_it_and_is_replayed(
    backend: str, request: pytest.FixtureRequest, fake: FakeOpenAI, clock: ParkingClock
) -> None:
    store = request.getfixturevalue(f"{backend}_store")
    with serve_proxy(store, fake, clock) as proxy:
        secret, made = proxy.keys.create(user_id="U1", workspace_id="T1")
        body = json.dumps({"model": MODEL, "messages": QUESTION, "stream": True}).encode()
        key = {"Idempotency-Key": "s", "Cache-Control": "no-cache"}
        gate = fake.hold(Gate(2))
        _post_and_leave(proxy.base_url, secret, body, key)
        until(lambda: gate.waited == 1, what="the stream to reach upstream")
        retry = urllib.request.Request(proxy.base_url + "/chat/completions", data=body, method="POST", headers={
            "Authorization": f"Bearer {secret}", "Content-Type": "application/json", **key})
        with ThreadPoolExecutor(max_workers=1) as pool:
            again = pool.submit(lambda: urllib.request.urlopen(retry, timeout=10).read().decode())
            assert clock.parked.wait(10), "the retry waits for the stream its client left"
            gate.arrive()
            until(lambda: proxy.gateway.usage("T1", today(clock), today(clock)).totals.requests == 1,
                  what="the left stream to settle")
            # The key's record says "answered" a moment after the settle; the retry's waits take no
            # time once the clock lets it go, so it would give up (409) on a key still marked busy.
            until(lambda: not (proxy.gateway.store.record_get(IDEMPOTENCY_RECORD, f"{made.id}:chat:s") or
                               "busy:").startswith("busy:"), what="the key's record to say answered")
            clock.go.set()
            events = again.result(timeout=10)
        assert "data: [DONE]" in events
        assert len(fake.requests_to("chat")) == 1
        assert proxy.gateway.usage("T1", today(clock), today(clock)).totals.requests == 1
