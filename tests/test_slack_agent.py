"""Slack's agent surfaces, through the real Bolt app and the fake Slack Web API: the agent DM's
suggested prompts (``app_home_opened`` on the Messages tab, ``features.agent_view``), an assistant
thread's greeting, prompts, kept context and title (``assistant_thread_started`` and friends, via
Bolt's Assistant), and the context Slack reports under agent_view (``app_context_changed``)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from bot.slack.agent import (
    ASSISTANT_THREADS_KIND,
    CONTEXT_KIND,
    GREETING,
    PROMPTS_TITLE,
    AskedPages,
    DocPage,
    StoreThreadContext,
    suggested_prompts,
    thread_title,
)
from proxy_core import BlobStore, StoreError
from proxy_core.stores.sqlite import SqliteStore
from tests.bot_harness import make_bot
from tests.fake_openai import FakeOpenAI
from tests.fake_slack import FakeSlack
from tests.polling import until
from tests.slack_harness import ANSWER, TEAM, Harness, ScriptedAnswerer, mention, message, wait_cleared

DM = "D0PENNY"
THREAD = "1729999327.187299"
CONTEXT = {"channel_id": "C0GENERAL", "team_id": TEAM, "enterprise_id": None}


def messages_tab(user: str = "U1") -> dict[str, Any]:
    return {"type": "app_home_opened", "user": user, "channel": DM, "tab": "messages", "event_ts": "1.1"}


def thread_started(thread_ts: str = THREAD) -> dict[str, Any]:
    return {"type": "assistant_thread_started", "event_ts": "1.2",
            "assistant_thread": {"user_id": "U1", "context": CONTEXT, "channel_id": DM, "thread_ts": thread_ts}}


def in_thread(text: str, ts: str, thread_ts: str = THREAD) -> dict[str, Any]:
    return message(text, channel=DM, channel_type="im", ts=ts, thread_ts=thread_ts)


@pytest.fixture
def penny(slack: FakeSlack, sqlite_store: SqliteStore) -> Iterator[Harness]:
    harness = Harness(slack, sqlite_store, ScriptedAnswerer(ANSWER))
    yield harness
    harness.settle()


# -- pure policies ---------------------------------------------------------------------------------


def test_suggested_prompts_put_the_most_asked_pages_first_then_the_largest() -> None:
    asked = {"ops/deploy.md": ("Deploying", 7), "ops/rollback.md": ("Rollbacks", 9)}
    pages = [DocPage("people/benefits.md", "Benefits", 3), DocPage("ops/deploy.md", "Deploying", 12),
             DocPage("policies/travel.rst", "Travel", 8), DocPage("pricing/plans.md", "Plans", 5)]
    prompts = suggested_prompts(asked, pages)
    assert [p["title"] for p in prompts] == ["Rollbacks", "Deploying", "Travel", "Plans"]  # four, no repeat
    assert prompts[0]["message"] == "What do the docs say about Rollbacks?"
    assert suggested_prompts({}, []) == []


def test_a_huge_doc_title_makes_a_short_prompt_not_a_10_kb_question() -> None:
    """A page whose heading is a whole paragraph (10 KB, lines and all): its prompt, once clicked,
    was a 10 KB question that Penny then said was too long and cut, to someone who only clicked."""
    title = "Deploying\nthe " + "really " * 1500 + "big service"
    [prompt] = suggested_prompts({}, [DocPage("ops/deploy.md", title, 3)])
    assert len(prompt["title"]) <= 60 and "\n" not in prompt["message"]
    assert len(prompt["message"]) <= 150 and prompt["message"].startswith("What do the docs say about Deploying the ")
    assert prompt["message"].endswith("…?")

def test_asked_pages_are_written_at_most_once_a_window_and_top_adds_what_is_not_yet(
    sqlite_store: SqliteStore,
) -> None:
    now = [100.0]
    asked = AskedPages(sqlite_store, flush_s=2.0, clock=lambda: now[0])
    other_worker = AskedPages(sqlite_store, flush_s=2.0, clock=lambda: now[0])
    asked.add(TEAM, "ops/deploy.md", "Deploying")  # the first count is written at once
    asked.add(TEAM, "ops/deploy.md", "Deploying")
    asked.add(TEAM, "ops/rollback.md", "Rollbacks")
    assert other_worker.top(TEAM) == {"ops/deploy.md": ("Deploying", 1)}
    assert asked.top(TEAM) == {"ops/deploy.md": ("Deploying", 2), "ops/rollback.md": ("Rollbacks", 1)}
    other_worker.add(TEAM, "ops/rollback.md", "Rollbacks")  # its own first write, merged with the record
    now[0] = 102.0
    asked.add(TEAM, "ops/rollback.md", "Rollbacks")  # the window is over: everything held is written
    assert other_worker.top(TEAM) == {"ops/rollback.md": ("Rollbacks", 3), "ops/deploy.md": ("Deploying", 2)}
    assert asked.top(TEAM) == other_worker.top(TEAM)


class Refusing(BlobStore):
    """The real store behind a gate: the next ``refuse`` writes fail, each as ``failure`` says —
    refused (nothing written), timed out (maybe written), or lost to another writer (the record
    changes between the read and the compare-and-set)."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.refuse = 0
        self.failure = "refused"

    def blob_get(self, key: str) -> bytes | None:
        return self.store.blob_get(key)

    def blob_scan(self, prefix: str) -> Iterator[tuple[str, bytes]]:
        return self.store.blob_scan(prefix)

    def blob_put_many(self, items: Mapping[str, bytes], delete: Sequence[str] = (), *,
                      expect: tuple[str, bytes | None] | None = None) -> bool:
        if self.refuse:
            self.refuse -= 1
            if self.failure == "raced":
                self.store.blob_put_many({key: b"{}" + b" " * self.refuse for key in items})  # another writer
            else:
                raise StoreError("the store is down", maybe_applied=self.failure == "timed out")
        return self.store.blob_put_many(items, delete, expect=expect)


@pytest.mark.parametrize("failure", ["refused", "raced"])
def test_asked_pages_a_write_surely_not_taken_keeps_its_counts_for_the_next(
    sqlite_store: SqliteStore, failure: str
) -> None:
    now = [100.0]
    gate = Refusing(sqlite_store)
    asked = AskedPages(gate, flush_s=2.0, clock=lambda: now[0])
    gate.refuse, gate.failure = (1 if failure == "refused" else 3), failure
    asked.add(TEAM, "ops/deploy.md", "Deploying")  # written at once: refused, or lost three races
    assert asked.top(TEAM)["ops/deploy.md"] == ("Deploying", 1)  # still counted here
    now[0] = 102.0
    asked.add(TEAM, "ops/deploy.md", "Deploying")
    assert AskedPages(sqlite_store).top(TEAM) == {"ops/deploy.md": ("Deploying", 2)}  # both reached the store


def test_asked_pages_a_write_that_may_have_been_taken_is_not_counted_again(sqlite_store: SqliteStore) -> None:
    now = [100.0]
    gate = Refusing(sqlite_store)
    asked = AskedPages(gate, flush_s=2.0, clock=lambda: now[0])
    gate.refuse, gate.failure = 1, "timed out"
    asked.add(TEAM, "ops/deploy.md", "Deploying")
    assert asked.top(TEAM) == {}  # dropped: a second write of it could count it twice
    now[0] = 102.0
    asked.add(TEAM, "ops/deploy.md", "Deploying")
    assert AskedPages(sqlite_store).top(TEAM) == {"ops/deploy.md": ("Deploying", 1)}


def test_thread_titles_are_the_question_on_one_line_cut_at_a_word() -> None:
    assert thread_title("  how do I\n deploy?  ") == "how do I deploy?"
    long = "how do I " + "really " * 30 + "deploy?"
    title = thread_title(long)
    assert len(title) <= 80 and title.endswith("…") and not title[:-1].endswith(" ")


def test_a_thread_title_shows_slack_markup_as_it_reads_and_pings_nobody() -> None:
    """The title was the question verbatim: ``<!channel>``, ``<@U…>`` or ``<!subteam^…>`` a user
    wrote went back to Slack as live markup."""
    title = thread_title("<!channel> <!here|@here> <@U0BOSS> <@U0ANA|ana> <!subteam^S0ENG|@eng> <!subteam^S0OPS> "
                         "<#C0GEN|general> <https://evil.example|the portal> @everyone deploy?")
    assert "<" not in title and ">" not in title
    assert title == "@\u2060channel @\u2060here @U0BOSS ana @eng @S0OPS general the portal @\u2060everyone deploy?"


# -- the agent DM (agent_view) ---------------------------------------------------------------------


def test_opening_pennys_dm_sets_prompts_drawn_from_the_docs(slack: FakeSlack, tmp_path: Path) -> None:
    with FakeOpenAI() as openai:
        bot = make_bot(slack, openai, tmp_path)
        try:
            assert bot.event(messages_tab()).status == 200
            [call] = slack.calls("assistant.threads.setSuggestedPrompts")
            assert call.params["channel_id"] == DM and not call.params.get("thread_ts")  # the DM itself
            assert call.params["title"] == PROMPTS_TITLE
            prompts = slack.suggested_prompts(DM)
            assert len(prompts) == 4  # the example docs' largest pages, nothing asked yet
            assert all(p["message"] == f"What do the docs say about {p['title']}?" for p in prompts)
            assert slack.count("views.publish") == 0  # the Home tab is another tab

            bot.event(messages_tab())  # opened again soon after: already set
            assert slack.count("assistant.threads.setSuggestedPrompts") == 1
        finally:
            bot.gateway.close()


def test_the_most_asked_page_becomes_the_first_prompt(penny: Harness, slack: FakeSlack) -> None:
    penny.event(mention("<@UPENNY> how do I deploy?"))
    wait_cleared(slack)  # answered: its first citation (ops/deploy.md, "Deploying") is counted
    penny.event(messages_tab())
    slack.wait_for("assistant.threads.setSuggestedPrompts")
    assert [p["title"] for p in slack.suggested_prompts(DM)] == ["Deploying"]


def test_an_app_without_the_agent_view_stops_asking_and_says_so_once(penny: Harness, slack: FakeSlack) -> None:
    penny.event(mention("<@UPENNY> how do I deploy?"))  # something to suggest
    wait_cleared(slack)
    slack.fail("assistant.threads.setSuggestedPrompts", "not_agent_app", times=5)
    with capture_logs() as logs:
        penny.event(messages_tab("U1"))
        until(lambda: any(e["event"] == "slack.prompts_off" for e in logs))
        penny.event({**messages_tab("U2"), "channel": "D0OTHER"})
        penny.settle()
    assert slack.count("assistant.threads.setSuggestedPrompts") == 1
    assert [e["error"] for e in logs if e["event"] == "slack.prompts_off"] == ["not_agent_app"]


def test_app_context_changed_is_kept_without_a_slack_call(penny: Harness, slack: FakeSlack,
                                                          sqlite_store: SqliteStore) -> None:
    entities = {"entities": [{"type": "slack#/types/channel_id", "value": "C0GENERAL", "team_id": TEAM}]}
    penny.event({"type": "app_context_changed", "user": "U1", "event_ts": "1.3", "context": entities})
    penny.settle()
    assert json.loads(sqlite_store.record_get(CONTEXT_KIND, f"user:{TEAM}:U1") or "{}") == entities
    assert [c.method for c in slack.calls() if c.method != "auth.test"] == []


# -- assistant threads (assistant_view) ------------------------------------------------------------


def test_an_assistant_thread_started_is_greeted_with_prompts_once(penny: Harness, slack: FakeSlack,
                                                                  sqlite_store: SqliteStore) -> None:
    penny.event(mention("<@UPENNY> how do I deploy?"))
    wait_cleared(slack)
    for retry in range(2):  # a redelivery greets nobody twice
        headers = {"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"} if retry else None
        assert penny.event(thread_started(), event_id="EvStarted", headers=headers).status == 200
    penny.settle()
    [greeting] = [c for c in slack.calls("chat.postMessage") if c.params["channel"] == DM]
    assert (greeting.params["thread_ts"], greeting.params["text"]) == (THREAD, GREETING)
    [prompts] = slack.calls("assistant.threads.setSuggestedPrompts")
    assert (prompts.params["channel_id"], prompts.params["thread_ts"]) == (DM, THREAD)
    assert [p["title"] for p in slack.suggested_prompts(DM, THREAD)] == ["Deploying"]
    # the context Slack sent is kept (Bolt's thread context store, in Penny's store)
    kept = StoreThreadContext(sqlite_store).find(channel_id=DM, thread_ts=THREAD)
    assert kept is not None and kept.channel_id == "C0GENERAL"
    assert sqlite_store.record_get(ASSISTANT_THREADS_KIND, f"{TEAM}:{DM}:{THREAD}") == "new"


def test_a_context_change_in_an_assistant_thread_is_kept(penny: Harness, sqlite_store: SqliteStore) -> None:
    changed = {"type": "assistant_thread_context_changed", "event_ts": "1.4", "assistant_thread": {
        "user_id": "U1", "context": {**CONTEXT, "channel_id": "C0RANDOM"}, "channel_id": DM, "thread_ts": THREAD}}
    assert penny.event(changed).status == 200
    penny.settle()
    kept = StoreThreadContext(sqlite_store).find(channel_id=DM, thread_ts=THREAD)
    assert kept is not None and kept.channel_id == "C0RANDOM"


def test_the_first_question_titles_the_assistant_thread_and_gets_a_status_and_an_answer(
    slack: FakeSlack, sqlite_store: SqliteStore
) -> None:
    answerer = ScriptedAnswerer(ANSWER)
    penny = Harness(slack, sqlite_store, answerer)
    try:
        penny.event(thread_started())
        slack.wait_for("chat.postMessage")  # the greeting
        penny.event(in_thread("how do I deploy to staging?", ts="1729999400.000100"), event_id="EvQ1")
        slack.wait_for("chat.postMessage", 2)
        wait_cleared(slack)
        penny.event(in_thread("and roll back?", ts="1729999500.000100"), event_id="EvQ2")
        slack.wait_for("chat.postMessage", 3)
        wait_cleared(slack, 2)
    finally:
        penny.settle()
    [title] = slack.calls("assistant.threads.setTitle")  # the first question only
    assert (title.params["channel_id"], title.params["thread_ts"]) == (DM, THREAD)
    assert slack.title(DM, THREAD) == "how do I deploy to staging?"
    assert [q.text for q in answerer.questions] == ["how do I deploy to staging?", "and roll back?"]
    assert [q.request_id for q in answerer.questions] == ["EvQ1", "EvQ2"]
    answers = [c for c in slack.calls("chat.postMessage") if c.params["text"] != GREETING]
    assert {c.params["thread_ts"] for c in answers} == {THREAD}
    statuses = [c.params["status"] for c in slack.calls("assistant.threads.setStatus")]
    assert statuses == ["is searching the docs…", "", "is searching the docs…", ""]
    assert slack.count("reactions.add") == 0


def test_a_dm_thread_penny_did_not_greet_is_answered_as_before_without_a_title(
    penny: Harness, slack: FakeSlack
) -> None:
    penny.event(in_thread("how do I deploy?", ts="1729999400.000100", thread_ts="1729999300.000100"))
    slack.wait_for("chat.postMessage")
    wait_cleared(slack)
    assert slack.count("assistant.threads.setTitle") == 0
    assert slack.last("chat.postMessage").params["thread_ts"] == "1729999300.000100"
