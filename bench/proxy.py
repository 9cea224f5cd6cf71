"""``penny proxy`` benchmark, side by side with the LiteLLM proxy: what each adds over calling the
fake OpenAI directly, and how many cache hits per second each serves.

Both proxies run as their documented commands (``penny proxy``: gunicorn gthread; ``litellm
--config``: uvicorn) with 1 and 2 workers, in front of the same fake OpenAI (answers at once), on
the same Redis (Penny's store; LiteLLM's response cache), in the same run.

Latency, sequential calls from two clients, each straight to the fake and through the proxy:
the ``openai`` SDK (what most callers use; about a millisecond of its own per call) and a lean
``http.client`` client on a kept-alive connection (what the proxy itself costs shows). The
overhead is the difference per percentile, for a miss (a new question each time); a hit (the same
question) is end to end. Throughput: cache hits per second from 1, 8 and 32 ``http.client``
threads on kept-alive connections. Cost: the CPU time the proxy's processes (arbiter and workers,
from Linux's /proc; Redis's own is not counted) spent per sequential miss and per hit, which the
host's other work moves far less than it moves the latencies.

Redis: ``PENNY_BENCH_PROXY_REDIS_URL`` (default redis://127.0.0.1:6379/14); Penny's keys there
(namespace ``penny``) and LiteLLM's (a namespace of this run) are deleted before and after.
LiteLLM runs from its own venv, ``PENNY_BENCH_LITELLM_VENV`` (default
``~/.cache/penny-bench/litellm-venv``), made with ``pip install 'litellm[proxy]'`` when missing —
never a dependency of Penny; ``PENNY_BENCH_LITELLM=0`` skips it. If it cannot be installed or
started, one line says so and Penny's table is still printed.

``.venv/bin/python -m bench.proxy``. Prints a table; asserts nothing.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import openai
import redis

from bot.proxy.keys import KeyRing
from proxy_core.stores.redis import RedisStore
from tests.fake_openai import FakeOpenAI
from tests.proxy_harness import ProxyProcess, proxy_env

REDIS_URL = os.environ.get("PENNY_BENCH_PROXY_REDIS_URL", "redis://127.0.0.1:6379/14")
LITELLM_VENV = Path(os.environ.get("PENNY_BENCH_LITELLM_VENV", "~/.cache/penny-bench/litellm-venv")).expanduser()
CALLS = 400
HIT_SECONDS = 3.0
CLIENTS = (1, 8, 32)
QUESTION = "How do I deploy?"
MODEL = "gpt-4o-mini"

Percentiles = tuple[float, float, float]


def _percentiles(samples: list[float]) -> Percentiles:
    q = statistics.quantiles(samples, n=100, method="inclusive")
    return q[49] * 1000, q[94] * 1000, q[98] * 1000


def _ms3(values: Percentiles) -> str:
    return " / ".join(f"{v:.2f}" for v in values)


def _timed(call: Callable[[int], object], n: int, cpu: Callable[[], float] | None = None) -> tuple[list[float], float]:
    """``n`` timed calls after a warm-up: their latencies (s), and the CPU the server spent per call
    (ms, by ``cpu``: its processes' CPU seconds so far; 0 without it)."""
    for i in range(20):  # warm-up: connections, first-call imports
        call(-1 - i)
    samples = []
    cpu_before = cpu() if cpu is not None else 0.0
    for i in range(n):
        started = time.perf_counter()
        call(i)
        samples.append(time.perf_counter() - started)
    cpu_ms = (cpu() - cpu_before) / n * 1000 if cpu is not None else 0.0
    return samples, cpu_ms


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds (user and system) that process ``pid`` and its live descendants have used, from
    Linux's /proc: a server's own cost per call, which the host's other work moves far less than it
    moves latencies (Redis's is not in it). 0 where /proc is not there."""
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            for task in os.listdir(f"/proc/{current}/task"):
                todo += [int(child) for child in Path(f"/proc/{current}/task/{task}/children").read_text().split()]
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or no /proc
    return total


# -- clients ---------------------------------------------------------------------------------------


class SDKClient:
    """The official ``openai`` SDK, as a caller would use it."""

    name = "openai SDK"

    def __init__(self, base_url: str, api_key: str) -> None:
        self._client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=30)

    def ask(self, question: str) -> None:
        self._client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": question}])

    def close(self) -> None:
        self._client.close()


class LeanClient:
    """``http.client`` on one kept-alive connection: the JSON body, the status checked, no more."""

    name = "http.client"

    def __init__(self, base_url: str, api_key: str) -> None:
        parts = urlsplit(base_url)
        self._path = parts.path.rstrip("/") + "/chat/completions"
        self._connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
        self._headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}

    def ask(self, question: str) -> None:
        body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": question}]})
        self._connection.request("POST", self._path, body=body, headers=self._headers)
        reply = self._connection.getresponse()
        data = reply.read()
        if reply.status != 200:
            raise RuntimeError(f"HTTP {reply.status}: {data[:200]!r}")

    def close(self) -> None:
        self._connection.close()


CLIENT_KINDS: tuple[type[SDKClient] | type[LeanClient], ...] = (SDKClient, LeanClient)


def _latencies(kind: type[SDKClient] | type[LeanClient], base_url: str, api_key: str, tag: str,
               cpu: Callable[[], float] | None = None) -> tuple[list[float], list[float], tuple[float, float]]:
    """Sequential misses (a new question each) and hits (the same question) through ``base_url``;
    and the server's CPU ms per miss and per hit (by ``cpu``, see :func:`_timed`)."""
    client = kind(base_url, api_key)
    try:
        miss, miss_cpu = _timed(lambda i: client.ask(f"question {tag} {i} {uuid.uuid4().hex}"), CALLS, cpu)
        hit, hit_cpu = _timed(lambda _i: client.ask(QUESTION), CALLS, cpu)
    finally:
        client.close()
    return miss, hit, (miss_cpu, hit_cpu)


def _hits_per_second(base_url: str, key: str, clients: int) -> float:
    parts = urlsplit(base_url)
    path = parts.path.rstrip("/") + "/chat/completions"
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": QUESTION}]})
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    counts = [0] * clients
    stop = time.perf_counter() + HIT_SECONDS

    def run(slot: int) -> None:
        connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
        while time.perf_counter() < stop:
            connection.request("POST", path, body=body, headers=headers)
            reply = connection.getresponse()
            reply.read()
            counts[slot] += reply.status == 200
        connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - started)


# -- one proxy, measured ------------------------------------------------------------------------


@dataclass
class Measured:
    """One proxy with some workers: per client kind, the miss overhead and the hit latency
    (p50/p95/p99 ms), and hits per second per number of client threads."""

    miss_overhead: dict[str, Percentiles] = field(default_factory=dict)
    hit: dict[str, Percentiles] = field(default_factory=dict)
    cpu_ms: dict[str, tuple[float, float]] = field(default_factory=dict)  # the server's, per miss and per hit
    hits_per_s: dict[int, float] = field(default_factory=dict)
    upstream_calls_during_hits: int = 0


def _measure(base_url: str, key: str, tag: str, fake: FakeOpenAI, direct: dict[str, Percentiles],
             server_pid: int) -> Measured:
    result = Measured()
    for kind in CLIENT_KINDS:
        LeanClient(base_url, key).ask(QUESTION)  # the hit's answer is cached before any hit is timed
        before = fake.count("chat")
        miss, hit, result.cpu_ms[kind.name] = _latencies(kind, base_url, key, f"{tag} {kind.name}",
                                                         lambda: _tree_cpu_s(server_pid))
        result.upstream_calls_during_hits += fake.count("chat") - before - (CALLS + 20)
        miss_p = _percentiles(miss)
        result.miss_overhead[kind.name] = (miss_p[0] - direct[kind.name][0], miss_p[1] - direct[kind.name][1],
                                           miss_p[2] - direct[kind.name][2])
        result.hit[kind.name] = _percentiles(hit)
    before = fake.count("chat")
    for clients in CLIENTS:
        result.hits_per_s[clients] = _hits_per_second(base_url, key, clients)
    result.upstream_calls_during_hits += fake.count("chat") - before
    return result


# -- Penny -----------------------------------------------------------------------------------------


def _clear_penny() -> None:
    store = RedisStore.from_url(REDIS_URL, namespace="penny", timeout_s=10)
    try:
        store.delete_namespace()
    finally:
        store.close()


def _penny(fake: FakeOpenAI, tmp: Path, workers: int, direct: dict[str, Percentiles]) -> Measured:
    _clear_penny()
    env = proxy_env(tmp, fake.base_url, store_url=REDIS_URL)
    env["PENNY_LOG_LEVEL"] = "WARNING"
    store = RedisStore.from_url(REDIS_URL, namespace="penny", timeout_s=10)
    try:
        key, _ = KeyRing(store).create(user_id="UBENCH", workspace_id="TBENCH")
    finally:
        store.close()
    server = ProxyProcess(env, tmp, workers=workers)
    try:
        return _measure(server.url, key, f"penny w{workers}", fake, direct, server.proc.pid)
    finally:
        server.stop()
        _clear_penny()


# -- LiteLLM ---------------------------------------------------------------------------------------


def _litellm_binary(out: Callable[[str], None]) -> Path | None:
    """The ``litellm`` command of the bench's own venv, installing it there if missing; None (and
    one line saying why) if it cannot be had."""
    if os.environ.get("PENNY_BENCH_LITELLM", "1") == "0":
        out("LiteLLM: skipped (PENNY_BENCH_LITELLM=0).")
        return None
    binary = LITELLM_VENV / "bin" / "litellm"
    if binary.exists():
        return binary
    try:
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True, capture_output=True,
                       timeout=300)
        subprocess.run([str(LITELLM_VENV / "bin" / "pip"), "install", "-q", "litellm[proxy]"], check=True,
                       capture_output=True, timeout=1200)
    except (OSError, subprocess.SubprocessError) as exc:
        out(f"LiteLLM: could not install litellm[proxy] into {LITELLM_VENV} ({type(exc).__name__}); "
            "Penny's table only.")
        return None
    if not binary.exists():
        out(f"LiteLLM: pip installed litellm[proxy] into {LITELLM_VENV} but there is no {binary}; Penny's table only.")
        return None
    return binary


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def _litellm_server(binary: Path, fake: FakeOpenAI, tmp: Path, workers: int, namespace: str
                    ) -> Iterator[tuple[str, str, int]]:
    """The LiteLLM proxy (its documented command) with ``workers`` workers; its base URL, master key
    and process ID."""
    redis_url = urlsplit(REDIS_URL)
    master_key = "sk-bench-" + uuid.uuid4().hex
    config = tmp / f"litellm-{workers}.yaml"
    config.write_text(json.dumps({  # JSON is YAML
        "model_list": [{"model_name": MODEL, "litellm_params": {
            "model": f"openai/{MODEL}", "api_base": fake.base_url, "api_key": "sk-bench-upstream"}}],
        "litellm_settings": {"cache": True, "cache_params": {
            "type": "redis", "host": redis_url.hostname or "127.0.0.1", "port": redis_url.port or 6379,
            "namespace": namespace}},
        "general_settings": {"master_key": master_key},
    }))
    port = _free_port()
    log = tmp / f"litellm-{workers}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "LITELLM_"))}
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # no fetch of the price list from the internet
    with log.open("w") as sink:
        proc = subprocess.Popen([str(binary), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
                                 "--num_workers", str(workers)], stdout=sink, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, cwd=tmp, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while log.read_text(errors="replace").count("Application startup complete") < workers:
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
                raise RuntimeError(f"the LiteLLM proxy did not start ({tail[0][:160]})")
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1", master_key, proc.pid
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _clear_litellm(namespace: str) -> None:
    client = redis.Redis.from_url(f"redis://{urlsplit(REDIS_URL).netloc}/0")
    try:
        for name in client.scan_iter(match=f"{namespace}*", count=1000):
            client.delete(name)
    finally:
        client.close()


def _litellm(binary: Path, fake: FakeOpenAI, tmp: Path, workers: int, direct: dict[str, Percentiles]) -> Measured:
    namespace = f"penny-bench-litellm-{uuid.uuid4().hex[:8]}"
    try:
        with _litellm_server(binary, fake, tmp, workers, namespace) as (url, key, pid):
            return _measure(url, key, f"litellm w{workers}", fake, direct, pid)
    finally:
        _clear_litellm(namespace)


# -- the run ---------------------------------------------------------------------------------------


def _redis_ping_ms() -> float:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        samples = []
        for _ in range(200):
            started = time.perf_counter()
            client.ping()
            samples.append(time.perf_counter() - started)
    finally:
        client.close()
    return statistics.median(samples) * 1000


def _direct(fake: FakeOpenAI) -> dict[str, Percentiles]:
    return {kind.name: _percentiles(_latencies(kind, fake.base_url, "sk-bench", f"direct {kind.name}")[0])
            for kind in CLIENT_KINDS}


def _table(direct: dict[str, Percentiles], runs: dict[str, Measured]) -> list[str]:
    columns = list(runs)
    header = ["measure", "client", *columns]
    rows: list[list[str]] = []
    for kind in CLIENT_KINDS:
        rows.append(["fake OpenAI direct, p50/p95/p99 ms (the baseline)", kind.name, _ms3(direct[kind.name]),
                     *[""] * (len(columns) - 1)])
    for kind in CLIENT_KINDS:
        rows.append(["miss overhead, p50/p95/p99 ms", kind.name,
                     *[_ms3(runs[c].miss_overhead[kind.name]) for c in columns]])
    for kind in CLIENT_KINDS:
        rows.append(["hit, end to end, p50/p95/p99 ms", kind.name, *[_ms3(runs[c].hit[kind.name]) for c in columns]])
    for kind in CLIENT_KINDS:
        rows.append(["server CPU per call, miss / hit ms", kind.name,
                     *[" / ".join(f"{v:.2f}" for v in runs[c].cpu_ms[kind.name]) for c in columns]])
    for clients in CLIENTS:
        rows.append([f"hits/s, {clients} client thread{'s' if clients > 1 else ''}", "http.client",
                     *[f"{runs[c].hits_per_s[clients]:,.0f}" for c in columns]])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in [header, *rows]]


def _ratios(runs: dict[str, Measured]) -> list[str]:
    """LiteLLM ÷ Penny for the latencies (how many times less Penny adds), Penny ÷ LiteLLM for hits/s."""
    lines = []
    for workers in (1, 2):
        penny, lite = runs.get(f"Penny {workers}w"), runs.get(f"LiteLLM {workers}w")
        if penny is None or lite is None:
            continue
        parts = []
        for kind in CLIENT_KINDS:
            miss = lite.miss_overhead[kind.name][0] / max(penny.miss_overhead[kind.name][0], 0.01)
            hit = lite.hit[kind.name][0] / penny.hit[kind.name][0]
            parts.append(f"miss overhead p50 {miss:.1f}×, hit p50 {hit:.1f}× ({kind.name})")
        most = max(CLIENTS)
        parts.append(f"hits/s at {most} clients {penny.hits_per_s[most] / lite.hits_per_s[most]:.1f}×")
        lines.append(f"Penny vs LiteLLM, {workers} worker{'s' if workers > 1 else ''}: " + "; ".join(parts))
    return lines


def main() -> None:
    notes: list[str] = []
    load_before = os.getloadavg()
    runs: dict[str, Measured] = {}
    with FakeOpenAI(answer="Run `make deploy`.") as fake, tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        ping_ms = _redis_ping_ms()
        direct = _direct(fake)
        for workers in (1, 2):
            runs[f"Penny {workers}w"] = _penny(fake, tmp, workers, direct)
        binary = _litellm_binary(notes.append)
        if binary is not None:
            try:
                for workers in (1, 2):
                    runs[f"LiteLLM {workers}w"] = _litellm(binary, fake, tmp, workers, direct)
            except (OSError, RuntimeError) as exc:
                notes.append(f"LiteLLM: {exc}; Penny's table only.")
    load_after = os.getloadavg()
    print(f"{os.cpu_count()} cores; load average {load_before[0]:.2f} at the start, {load_after[0]:.2f} at the end; "
          f"Redis {REDIS_URL} PING p50 {ping_ms:.3f} ms")
    print("\n".join(_table(direct, runs)))
    for line in _ratios(runs):
        print(line)
    for name, run in runs.items():
        if run.upstream_calls_during_hits:
            print(f"{name}: {run.upstream_calls_during_hits} hit(s) went upstream (not served from the cache)")
    for note in notes:
        print(note)
    print("targets (issue 15): miss overhead p50 ≤ 2 ms, hit p50 ≤ 1.5 ms, ≥ 1,000 hits/s with 2 workers; "
          "≥ 8× better than the LiteLLM proxy")


if __name__ == "__main__":
    main()
