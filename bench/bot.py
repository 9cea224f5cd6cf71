"""Bot benchmarks: how the cache's context fingerprint changes hit rates on the example handbook.

For each fingerprint (top passage — the default —, the set of the top three passages, and the docs
version alone) a fresh store indexes ``examples/docs`` and a zero-latency fake OpenAI answers:

- paraphrase hits: ask each original question of ``examples/paraphrases.jsonl``, then its two
  paraphrases; a cached answer to a paraphrase is a hit we want;
- false hits: for pairs of questions in ``examples/questions.jsonl`` about *different sections of the
  same page* (different answers), ask one then the other in a fresh workspace; a cached answer to the
  second is a false hit.

And concurrency: 200 questions from 50 users arrive at once as signed Slack events into the real
Bolt app; the fake OpenAI answers each after 1 s. All should be answered in about 1 s of wall time,
because nobody waits behind anybody else's LLM call — unlike a bot on Bolt's default five-thread pool.
The fake OpenAI and Slack run in processes of their own, as the real ones would be.

``.venv/bin/python -m bench.bot``. Prints tables; asserts nothing.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import tempfile
import time
import uuid
from concurrent.futures import Executor, ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from bot.answer import AnswerService, Fingerprint
from bot.answer_types import Question
from bot.service import index_docs, open_answer_service
from bot.settings import BotSettings
from proxy_core.gateway import Gateway
from proxy_core.log import configure_logging
from proxy_core.metrics import Metrics
from proxy_core.stores import store_from_url
from proxy_core.upstream import OpenAIUpstream
from tests.fake_openai import FakeOpenAI

ROOT = Path(__file__).resolve().parents[1] / "examples"
_ids = itertools.count()


def _load(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (ROOT / name).read_text().splitlines() if line.strip()]


def _ask(service: AnswerService, text: str, workspace: str) -> bool:
    answer = service.answer(Question(text, "U1", workspace, f"b{next(_ids)}"))
    return answer.cached


def measure(fingerprint: Fingerprint, fake: FakeOpenAI) -> tuple[str, str, str]:
    with tempfile.TemporaryDirectory() as d:
        settings = BotSettings(openai_api_key="sk-bench-0000000000", requests_per_minute=0, tokens_per_minute=0)
        store = store_from_url(f"sqlite:///{d}/bench.db")
        index_docs(settings, store, ROOT / "docs")
        gateway = Gateway(settings, store=store, metrics=Metrics(CollectorRegistry()),
                          upstream=OpenAIUpstream(api_key="sk-bench-0000000000", base_url=fake.base_url, timeout_s=5))
        try:
            service = open_answer_service(settings, store, gateway)
            service.fingerprint = fingerprint
            paraphrases = _load("paraphrases.jsonl")
            hits = 0
            for n, (original, group) in enumerate(itertools.groupby(paraphrases, key=lambda p: p["paraphrase_of"])):
                workspace = f"P{n}"
                _ask(service, original, workspace)
                hits += sum(_ask(service, p["question"], workspace) for p in group)
            questions = _load("questions.jsonl")
            pairs = [(a, b) for a, b in itertools.combinations(questions, 2)
                     if a["page"] == b["page"] and a["section"] != b["section"]][:80]
            false = 0
            for n, (a, b) in enumerate(pairs):
                _ask(service, a["question"], f"F{n}")
                false += _ask(service, b["question"], f"F{n}")
        finally:
            gateway.close()
    return fingerprint, f"{hits}/{len(paraphrases)} ({hits / len(paraphrases):.0%})", \
        f"{false}/{len(pairs)} ({false / len(pairs):.0%})"


def _serve_openai(conn: Connection) -> None:
    """Child process: a fake OpenAI answering every request after 1 s, until told to stop."""
    from tests.fake_openai import Fault

    with FakeOpenAI() as fake:
        fake.fail_all(Fault.ok(delay_s=1.0))
        conn.send(fake.base_url)
        conn.recv()


def _serve_slack(conn: Connection) -> None:
    """Child process: a fake Slack Web API. Commands: ("wait", methods, count, timeout) answers
    with the ``time.monotonic()`` (system-wide) at which ``count`` calls had been made; ("stop",)."""
    from tests.fake_slack import FakeSlack

    with FakeSlack() as slack:
        conn.send(slack.base_url)
        while True:
            command = conn.recv()
            if command[0] != "wait":
                return
            _, methods, count, timeout = command
            try:
                slack.wait_for(tuple(methods), count, timeout=timeout)
                conn.send(time.monotonic())
            except AssertionError as exc:
                conn.send(str(exc)[:500])


class _Fakes:
    """The fake OpenAI and Slack in processes of their own: in the bot's process their threads
    would compete with it for the GIL, and the benchmark would measure the fakes, not Penny."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._openai, openai_end = ctx.Pipe()
        self._slack, slack_end = ctx.Pipe()
        self._procs = [ctx.Process(target=_serve_openai, args=(openai_end,), daemon=True),
                       ctx.Process(target=_serve_slack, args=(slack_end,), daemon=True)]
        for proc in self._procs:
            proc.start()
        self.openai_url: str = self._openai.recv()
        self.slack_url: str = self._slack.recv()

    def answered_at(self, count: int, timeout: float) -> float:
        """When Slack had ``count`` final answers (posted, or streamed then updated)."""
        self._slack.send(("wait", ["chat.postMessage", "chat.update"], count, timeout))
        reply = self._slack.recv()
        if isinstance(reply, str):
            raise AssertionError(reply)
        return float(reply)

    def close(self) -> None:
        for conn in (self._openai, self._slack):
            conn.send(("stop",))
        for proc in self._procs:
            proc.join(timeout=10)


def concurrency(questions: int, users: int, executor: Executor | None, label: str,
                redis_url: str | None = None) -> tuple[str, str, str]:
    """Wall time until every question has its final answer in Slack (posted, or streamed and then
    updated into the rendered answer)."""
    from bot.slack.app import SlackSettings
    from bot.slack.runner import penny_app
    from tests.slack_harness import SECRET, TOKEN, Harness, mention

    texts = [q["question"] for q in _load("questions.jsonl")]
    fakes = _Fakes()
    with tempfile.TemporaryDirectory() as d:
        settings = BotSettings(openai_api_key="sk-bench-0000000000", requests_per_minute=0, tokens_per_minute=0,
                                 cache_enabled=False)
        if redis_url is None:
            store = store_from_url(f"sqlite:///{d}/bench.db")
        else:
            from proxy_core.stores.redis import RedisStore

            store = RedisStore.from_url(redis_url, namespace=f"penny-bench-{uuid.uuid4().hex[:8]}")
        index_docs(settings, store, ROOT / "docs")
        gateway = Gateway(settings, store=store, metrics=Metrics(CollectorRegistry()),
                          upstream=OpenAIUpstream(api_key="sk-bench-0000000000", base_url=fakes.openai_url,
                                                  timeout_s=30))
        try:
            harness = Harness.__new__(Harness)  # the scenario tests' request signing, on Penny's real app
            harness._serial = 0
            config = SlackSettings(bot_token=TOKEN, signing_secret=SECRET, api_url=fakes.slack_url)
            service = open_answer_service(settings, store, gateway)
            harness.app = penny_app(service, store, gateway, config, listener_executor=executor)
            harness.event(mention("<@UPENNY> warm up"))  # auth.test and first-use costs, not measured
            fakes.answered_at(1, timeout=30)
            started = time.monotonic()
            with ThreadPoolExecutor(max_workers=50) as senders:
                for i in range(questions):
                    text = f"<@UPENNY> {texts[i % len(texts)]}"
                    senders.submit(harness.event, mention(text, ts=f"1700001{i:03d}.000100", user=f"U{i % users}"),
                                   event_id=f"EvBench{i:04d}")  # the harness's own counter is not thread-safe
            acked = time.monotonic() - started
            wall = fakes.answered_at(questions + 1, timeout=30 + questions / 5) - started
            if executor is not None:
                executor.shutdown(wait=True)
            time.sleep(0.5)  # let the listeners' last bookkeeping finish before the store closes
        finally:
            delete = getattr(store, "delete_namespace", None)
            if delete is not None:
                delete()
            gateway.close()
            fakes.close()
    return label, f"{questions} from {users} users", f"{wall:.2f} s (all acked after {acked:.2f} s)"


def main() -> None:
    configure_logging("WARNING")
    rows = []
    with FakeOpenAI() as fake:
        for fingerprint in ("top", "top3", "version"):
            rows.append(measure(fingerprint, fake))  # type: ignore[arg-type]
    print("| context fingerprint | paraphrases served from cache | false hits (other section, same page) |")
    print("|---|---|---|")
    for name, hits, false in rows:
        print(f"| {name} | {hits} | {false} |")
    print()
    runs = [concurrency(200, 50, None, "Penny (256 listener threads)"),
            concurrency(25, 25, ThreadPoolExecutor(max_workers=5), "Bolt's default 5-thread pool")]
    print("| bot | questions at once (upstream 1 s each) | all answered after |")
    print("|---|---|---|")
    for label, load, wall in runs:
        print(f"| {label} | {load} | {wall} |")


if __name__ == "__main__":
    main()
