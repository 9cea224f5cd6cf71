"""The ``penny`` commands default to the Slack workspace Penny's app serves, not ``local``.

The Slack bot records its workspace in the store at start-up (``bot.workspaces``, on SQLite and
Redis alike); ``penny keys create`` bills a key made without ``--workspace`` there, and ``penny
cost``, ``usage`` and ``feedback`` show its numbers. With several recorded, they refuse to guess;
with none (Penny never ran in Slack on the store), they keep ``local`` and ``keys create`` says
what that means. The CLI tests run the real entry point on a real SQLite file; the start-up's own
record is tested in ``tests/test_slack_startup.py`` (Socket Mode) and ``tests/test_http_server.py``.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bot.cli import main
from bot.feedback import record_feedback
from bot.proxy.keys import KeyRing
from bot.slack.startup import SlackInstallation
from bot.workspaces import SERVED_KEY, SERVED_KIND, SERVED_TTL_S, ServedWorkspace, record_served, served_workspaces
from proxy_core import ManualClock, Store, store_from_url
from tests.fake_openai import FakeOpenAI

REPO = Path(__file__).resolve().parents[1]
QUESTION = "How do I deploy?"


def installed(team_id: str, team: str, *, enterprise_id: str | None = None) -> SlackInstallation:
    """What ``auth.test`` says of a bot token installed in ``team_id`` (org-wide with ``enterprise_id``)."""
    data = {"ok": True, "team_id": team_id, "team": team, "user_id": "UPENNY", "bot_id": "BPENNY", "user": "penny"}
    if enterprise_id is not None:
        data |= {"enterprise_id": enterprise_id, "is_enterprise_install": True}
    return SlackInstallation.from_auth_test(data)


# -- the record, on every backend ----------------------------------------------------------------


def test_each_start_records_its_workspace_and_a_year_unseen_drops_it(store: Store, clock: ManualClock) -> None:
    assert served_workspaces(store) == []
    record_served(store, installed("T0ABC", "Acme"))
    start = clock()
    assert served_workspaces(store) == [ServedWorkspace("T0ABC", "Acme", start)]

    clock.advance(SERVED_TTL_S / 2)
    record_served(store, installed("T0DEF", "Beta"))  # a second bot on the same store
    clock.advance(1)
    record_served(store, installed("T0ABC", "Acme Inc"))  # a restart refreshes it (and its new name)
    assert [(w.id, w.name) for w in served_workspaces(store)] == [("T0DEF", "Beta"), ("T0ABC", "Acme Inc")]

    clock.advance(SERVED_TTL_S - 1)  # T0DEF's bot has not started for a year: it serves nothing now
    assert [w.id for w in served_workspaces(store)] == ["T0ABC"]
    record_served(store, installed("T0ABC", "Acme Inc"))
    assert store.record_get(SERVED_KIND, SERVED_KEY) is not None
    assert "T0DEF" not in (store.record_get(SERVED_KIND, SERVED_KEY) or "")


class _Interleaved:
    """The test's store, where another bot's whole start-up runs at a chosen step of this one's:
    right after this one reads the record (``after_get``), or right before it adds it
    (``before_add``), once."""

    def __init__(self, store: Store, *, after_get: Callable[[], None] | None = None,
                 before_add: Callable[[], None] | None = None) -> None:
        self._store, self._after_get, self._before_add = store, after_get, before_add

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def record_get(self, kind: str, key: str) -> str | None:
        value = self._store.record_get(kind, key)
        hook, self._after_get = self._after_get, None
        if hook is not None:
            hook()
        return value

    def record_add(self, kind: str, key: str, value: str, ttl_s: float) -> str | None:
        hook, self._before_add = self._before_add, None
        if hook is not None:
            hook()
        return self._store.record_add(kind, key, value, ttl_s)


def test_two_bots_starting_at_once_keep_each_others_workspace(store: Store) -> None:
    # Beta's start runs whole between Acme's read and Acme's write: Acme's write, made from what it
    # read, used to replace the record and drop Beta until Beta's next start.
    racing = _Interleaved(store, after_get=lambda: record_served(store, installed("T0DEF", "Beta")))
    record_served(racing, installed("T0ABC", "Acme"))  # type: ignore[arg-type]
    assert sorted(w.id for w in served_workspaces(store)) == ["T0ABC", "T0DEF"]


def test_a_start_that_loses_the_record_between_its_drop_and_its_add_keeps_every_entry(store: Store) -> None:
    record_served(store, installed("T0GHI", "Gamma"))
    # Acme has dropped the record it read (Gamma's) to replace it; Beta, starting then, finds none
    # and adds its own alone. Acme's add fails: it merges Beta's with what it read before.
    racing = _Interleaved(store, before_add=lambda: record_served(store, installed("T0DEF", "Beta")))
    record_served(racing, installed("T0ABC", "Acme"))  # type: ignore[arg-type]
    assert sorted(w.id for w in served_workspaces(store)) == ["T0ABC", "T0DEF", "T0GHI"]


def test_an_org_wide_install_is_recorded_as_its_organization(store: Store) -> None:
    record_served(store, installed("E0ORG", "Acme Org", enterprise_id="E0ORG"))
    [org] = served_workspaces(store)
    assert (org.id, org.name, org.org_wide) == ("E0ORG", "Acme Org", True)


def test_a_record_penny_cannot_read_is_no_workspace(store: Store) -> None:
    store.record_put(SERVED_KIND, SERVED_KEY, "not json", SERVED_TTL_S)
    assert served_workspaces(store) == []
    store.record_put(SERVED_KIND, SERVED_KEY, json.dumps({"T0ABC": {"name": "Acme"}, "T0X": 3}), SERVED_TTL_S)
    assert served_workspaces(store) == []
    record_served(store, installed("T0ABC", "Acme"))  # and a start-up writes a good one over it
    assert [w.id for w in served_workspaces(store)] == ["T0ABC"]


# -- the commands ----------------------------------------------------------------------------------


def penny(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(argv), stdout=out, stdin=io.StringIO("")), out.getvalue()


def serve(store_url: str, *installations: SlackInstallation) -> None:
    """As if Penny's Slack bot had started on this store once for each installation."""
    store = store_from_url(store_url)
    try:
        for installation in installations:
            record_served(store, installation)
    finally:
        store.close()


def key_workspace(store_url: str, secret: str) -> str:
    store = store_from_url(store_url)
    try:
        key = KeyRing(store).authenticate(secret)
    finally:
        store.close()
    assert key is not None
    return key.workspace_id


def test_a_key_made_without_workspace_is_billed_where_penny_serves_slack(cli_env: str) -> None:
    serve(cli_env, installed("T0ABC", "Acme"))
    code, out = penny("keys", "create", "--user", "U123", "--name", "notebook")
    assert code == 0, out
    created, secret = out.strip().splitlines()
    assert created.startswith("Created key_") and "for U123 in T0ABC (Acme, the workspace Penny's Slack app serves)" \
        in created
    assert key_workspace(cli_env, secret) == "T0ABC"
    assert "U123@T0ABC" in penny("keys", "list")[1]


def test_a_key_made_on_a_store_penny_never_served_slack_from_is_local_and_says_so(cli_env: str) -> None:
    code, out = penny("keys", "create", "--user", "U123")
    assert code == 0, out
    new_store, note, created, secret = out.strip().splitlines()  # the first key makes the store too
    assert new_store.startswith("Created a new store at ")
    assert "No Slack workspace is recorded" in note and "not in Slack's /cost" in note and "--workspace T" in note
    assert "for U123 in local." in created
    assert key_workspace(cli_env, secret) == "local"  # the key is still the last line


def test_with_several_workspaces_served_keys_create_asks_which(cli_env: str,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    serve(cli_env, installed("T0ABC", "Acme"), installed("T0DEF", "Beta"))
    code, out = penny("keys", "create", "--user", "U123")
    err = capsys.readouterr().err
    assert code == 2 and out == ""
    assert "several workspaces" in err and "T0ABC (Acme), T0DEF (Beta)" in err and "--workspace" in err
    assert "No keys" in penny("keys", "list")[1]  # nothing was created

    code, out = penny("keys", "create", "--user", "U123", "--workspace", "T0DEF")
    assert code == 0 and "in T0DEF." in out and "serves" not in out
    assert key_workspace(cli_env, out.split()[-1]) == "T0DEF"


def test_an_org_wide_install_asks_for_the_workspace(cli_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    serve(cli_env, installed("E0ORG", "Acme Org", enterprise_id="E0ORG"))
    code, _ = penny("keys", "create", "--user", "U123")
    err = capsys.readouterr().err
    assert code == 2 and "organization E0ORG (Acme Org)" in err and "--workspace T" in err


def test_an_explicit_workspace_wins(cli_env: str) -> None:
    serve(cli_env, installed("T0ABC", "Acme"))
    code, out = penny("keys", "create", "--user", "U123", "--workspace", "local")
    assert code == 0 and "No Slack workspace" not in out and "for U123 in local." in out
    assert key_workspace(cli_env, out.split()[-1]) == "local"


def test_reports_show_the_served_workspace_and_the_terminal_user_their_own(
        cli_env: str, fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-served-workspace")
    monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
    monkeypatch.setenv("PENNY_DOCS_DIR", str(REPO / "examples" / "docs"))
    assert penny("ask", QUESTION, "--user", "U1", "--workspace", "T0ABC")[0] == 0  # as if asked in Slack
    assert penny("ask", QUESTION + " Really?")[0] == 0  # the terminal user's own question: local
    serve(cli_env, installed("T0ABC", "Acme"))
    store = store_from_url(cli_env)
    try:
        record_feedback(store, "T0ABC", "ev1", "U1", up=False, pages=["a.md"], at=0.0)
    finally:
        store.close()

    code, out = penny("usage", "--all-users", "--json")
    assert code == 0 and json.loads(out)["today"]["by_user"].keys() == {"U1"}
    code, out = penny("usage", "--user", "U1")
    assert code == 0 and "today — U1 in T0ABC" in out
    code, out = penny("usage")  # the terminal user: their penny ask calls are local's
    assert code == 0 and " in local" in out and "1 request" in out
    code, out = penny("cost", "--team", "--json")
    assert code == 0 and json.loads(out)["workspace_id"] == "T0ABC"
    code, out = penny("cost", "--user", "U1", "--json")
    assert code == 0 and json.loads(out)["workspace_id"] == "T0ABC" and json.loads(out)["today"]["requests"] == 1
    code, out = penny("cost", "--json")
    assert code == 0 and json.loads(out)["workspace_id"] == "local"
    code, out = penny("feedback")
    assert code == 0 and out.startswith("feedback in T0ABC: 👍 0 · 👎 1")
    code, out = penny("usage", "--all-users", "--workspace", "local", "--json")  # explicit wins
    [terminal_user] = json.loads(out)["today"]["by_user"]
    assert code == 0 and terminal_user.startswith("cli:")

    serve(cli_env, installed("T0DEF", "Beta"))
    for argv in (["usage", "--all-users"], ["cost", "--team"], ["feedback"]):
        code, out = penny(*argv)
        assert code == 2 and out == "" and "T0ABC (Acme), T0DEF (Beta)" in capsys.readouterr().err
