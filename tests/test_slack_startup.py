"""Penny checks Slack before it says it is connected, and serves only the workspace its token is for.

``penny run`` and ``penny check`` against the fake Slack Web API (its ``auth.test`` reports the
granted scopes as Slack does, and Socket Mode really connects to its WebSocket): a bad, rejected or
under-scoped token, an unreachable Slack and a refused app-level token each end in one message
naming the setting, exit 2 or 1, and no traceback. Events from another workspace or app are dropped
by middleware before any store write, Slack call or LLM call."""

from __future__ import annotations

import io
import socket
import threading
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from bot.cli import main
from bot.settings import BotSettings
from bot.slack.app import BOT_SCOPES
from bot.slack.middleware import foreign_request, message_request_id
from bot.slack.runner import run_slack
from bot.slack.startup import SlackInstallation, missing_scopes
from bot.workspaces import served_workspaces
from proxy_core.stores.sqlite import SqliteStore
from tests.bot_harness import make_bot
from tests.fake_openai import FakeOpenAI
from tests.fake_slack import FakeSlack
from tests.slack_harness import ROOT, TEAM, TOKEN, Harness, ScriptedAnswerer, event_body, mention

REPO = Path(__file__).resolve().parents[1]
APP_TOKEN = "xapp-1-test-not-a-real-app-token"


@pytest.fixture(autouse=True)
def isolated(cli_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``cli_env`` (no Penny, OpenAI or Slack variables but these; a SQLite store), and the example docs."""
    monkeypatch.setenv("PENNY_DOCS_DIR", str(REPO / "examples" / "docs"))


@pytest.fixture
def slack(slack: FakeSlack, monkeypatch: pytest.MonkeyPatch) -> FakeSlack:
    """The shared fake Slack, which ``penny run`` and ``penny check`` find through their environment."""
    monkeypatch.setenv("SLACK_API_URL", slack.base_url)
    monkeypatch.setenv("SLACK_BOT_TOKEN", TOKEN)
    monkeypatch.setenv("SLACK_APP_TOKEN", APP_TOKEN)
    return slack


def penny(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    out = io.StringIO()
    code = main(list(argv), stdout=out, stdin=io.StringIO(""))
    return code, out.getvalue(), capsys.readouterr().err


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def assert_one_clear_message(out: str, err: str, *, names: str) -> None:
    """The message ends stderr (after the docs indexing's progress, if any) and says it once."""
    assert "Traceback" not in err + out and "Failed to" not in err and "server responded" not in err
    message = err[err.index("penny:"):]
    assert names in message and len(message.strip().splitlines()) <= 2
    assert "connected" not in out
    for secret in (TOKEN, APP_TOKEN, "bogus"):
        assert secret not in err + out


# -- penny run: nothing claims to be connected before it is -----------------------------------


def test_a_token_that_is_not_a_bot_token_exits_2_naming_the_setting(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, slack: FakeSlack
) -> None:
    monkeypatch.setenv("SLACK_BOT_TOKEN", "bogus")
    code, out, err = penny(capsys, "run")
    assert code == 2
    assert_one_clear_message(out, err, names="SLACK_BOT_TOKEN")
    assert "xoxb-" in err


def test_a_token_slack_rejects_exits_2_and_says_where_to_get_one(
    capsys: pytest.CaptureFixture[str], slack: FakeSlack
) -> None:
    slack.fail("auth.test", "invalid_auth")
    code, out, err = penny(capsys, "run")
    assert code == 2
    assert_one_clear_message(out, err, names="SLACK_BOT_TOKEN")
    assert "invalid_auth" in err and "OAuth & Permissions" in err
    assert slack.count("apps.connections.open") == 0


def test_a_missing_scope_exits_2_naming_it(capsys: pytest.CaptureFixture[str], slack: FakeSlack) -> None:
    slack.set_scopes(sorted(set(BOT_SCOPES) - {"reactions:write", "commands"}))
    code, out, err = penny(capsys, "run")
    assert code == 2
    assert_one_clear_message(out, err, names="SLACK_BOT_TOKEN")
    assert "commands, reactions:write" in err and "reinstall" in err


def test_unreachable_slack_exits_1_without_a_traceback(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, slack: FakeSlack
) -> None:
    monkeypatch.setenv("SLACK_API_URL", f"http://127.0.0.1:{closed_port()}/")
    code, out, err = penny(capsys, "run")
    assert code == 1
    assert_one_clear_message(out, err, names="Slack is unreachable")
    assert "connection refused" in err


def test_slack_down_exits_1(capsys: pytest.CaptureFixture[str], slack: FakeSlack) -> None:
    slack.fail("auth.test", "service_unavailable", status=503, times=5)
    code, out, err = penny(capsys, "run")
    assert code == 1
    assert_one_clear_message(out, err, names="busy or down")


def test_a_refused_app_token_exits_2_naming_it(capsys: pytest.CaptureFixture[str], slack: FakeSlack) -> None:
    slack.fail("apps.connections.open", "invalid_auth")
    code, out, err = penny(capsys, "run")
    assert code == 2
    assert_one_clear_message(out, err, names="SLACK_APP_TOKEN")
    assert "connections:write" in err
    assert slack.count("websocket") == 0


def test_connected_is_said_only_once_the_token_and_the_connection_are_checked(slack: FakeSlack,
                                                                              tmp_path: Path) -> None:
    """… and the workspace is recorded in the store by then, for the CLI's commands to default to."""
    settings = BotSettings(slack_bot_token=TOKEN, slack_app_token=APP_TOKEN, slack_api_url=slack.base_url)
    store = SqliteStore(tmp_path / "run.db")
    out, stop = io.StringIO(), threading.Event()
    result: list[int] = []
    runner = threading.Thread(target=lambda: result.append(
        run_slack(ScriptedAnswerer(), store, None, settings, out=out, until=stop)))
    runner.start()
    try:
        deadline = time.monotonic() + 10
        while "connected" not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.01)
        said = out.getvalue()
        assert said.startswith("Penny is connected to Slack as @penny in Penny Test (Socket Mode)")
        methods = [c.method for c in slack.calls()]
        assert methods[:3] == ["auth.test", "apps.connections.open", "websocket"]
        assert [(w.id, w.name) for w in served_workspaces(store)] == [("T0PENNY", "Penny Test")]
    finally:
        stop.set()
        runner.join(timeout=10)
        store.close()
    assert result == [0]


# -- penny check -------------------------------------------------------------------------------


def test_check_verifies_the_slack_tokens_and_scopes(capsys: pytest.CaptureFixture[str], slack: FakeSlack) -> None:
    code, out, _ = penny(capsys, "check")
    assert code == 0  # the Slack part passed; no OPENAI_API_KEY is a warning (extractive answers)
    assert f"slack       bot token ok: @penny in Penny Test ({TEAM}), app A0PENNY" in out
    assert f"scopes ok: the token has all {len(BOT_SCOPES)}" in out
    assert "app-level token ok" in out
    assert slack.count("auth.test") == 1 and slack.count("apps.connections.open") == 1
    assert slack.count("websocket") == 0  # checking the app token opens no connection


@pytest.mark.parametrize(
    ("variable", "value", "code", "names"),
    [
        ("SLACK_BOT_TOKEN", "bogus", 2, "SLACK_BOT_TOKEN"),
        ("SLACK_APP_TOKEN", "xoxb-not-an-app-token", 2, "SLACK_APP_TOKEN"),
        ("SLACK_API_URL", "unreachable", 1, "Slack is unreachable"),
    ],
)
def test_check_fails_on_a_bad_slack_setting(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                            slack: FakeSlack, variable: str, value: str, code: int,
                                            names: str) -> None:
    monkeypatch.setenv(variable, f"http://127.0.0.1:{closed_port()}/" if value == "unreachable" else value)
    got, out, err = penny(capsys, "check")
    assert got == code
    assert names in err and "Traceback" not in err
    assert value not in err + out or value == "unreachable"


def test_check_reports_a_throttled_app_token_check_at_once(capsys: pytest.CaptureFixture[str],
                                                           slack: FakeSlack) -> None:
    slack.rate_limit("apps.connections.open", retry_after=30)  # throttled: a check reports it at once
    code, _, err = penny(capsys, "check")
    assert code == 1 and "slow down" in err and "Traceback" not in err
    assert slack.count("apps.connections.open") == 1  # not waited out


def test_check_without_slack_settings_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = penny(capsys, "check")
    assert "slack       not set up: penny run starts a terminal chat" in out


def test_missing_scopes_is_a_pure_comparison() -> None:
    assert missing_scopes({"chat:write"}, ["chat:write", "commands"]) == ["commands"]
    assert missing_scopes(None, ["chat:write"]) == []  # Slack did not say: nothing to compare


# -- other workspaces --------------------------------------------------------------------------


INSTALLED = SlackInstallation(team_id=TEAM, team="Penny Test", enterprise_id=None, is_enterprise_install=False,
                              app_id="A0PENNY", bot_user_id="UPENNY", bot_id="B0PENNY", bot_name="penny",
                              scopes=None)


@pytest.mark.parametrize(
    ("team", "enterprise", "app", "reason"),
    [
        (TEAM, None, "A0PENNY", None),
        (TEAM, None, None, None),  # a payload without api_app_id is judged by its team
        ("T0OTHER", None, "A0PENNY", "workspace"),
        (TEAM, None, "A0OTHER", "app"),
    ],
)
def test_foreign_request(team: str, enterprise: str | None, app: str | None, reason: str | None) -> None:
    assert foreign_request(INSTALLED, team_id=team, enterprise_id=enterprise, app_id=app) == reason


def test_an_org_wide_install_serves_every_workspace_of_its_org() -> None:
    org = SlackInstallation(team_id="T1", team="Acme", enterprise_id="E1", is_enterprise_install=True,
                            app_id="A0PENNY", bot_user_id="U", bot_id="B", bot_name="penny", scopes=None)
    assert foreign_request(org, team_id="T2", enterprise_id="E1", app_id="A0PENNY") is None
    assert foreign_request(org, team_id="T3", enterprise_id="E2", app_id="A0PENNY") == "workspace"


def foreign(event: dict[str, object], event_id: str, *, team: str = "T0OTHER", app: str = "A0PENNY") -> str:
    return event_body(event, event_id).replace(f'"team_id": "{TEAM}"', f'"team_id": "{team}"').replace(
        '"api_app_id": "A0PENNY"', f'"api_app_id": "{app}"')


def test_an_event_from_another_workspace_is_dropped_before_any_store_write_and_logged_once(
    tmp_path: Path,
) -> None:
    with FakeSlack() as fake:
        store = SqliteStore(tmp_path / "penny.db")
        answerer = ScriptedAnswerer()
        penny_app = Harness(fake, store, answerer)
        with capture_logs() as logs:
            for i in range(3):
                response = penny_app.dispatch(foreign(mention(f"<@UPENNY> question {i}"), f"EvForeign{i}"))
                assert response.status == 200  # acknowledged, so Slack does not redeliver it
            penny_app.dispatch(foreign(mention("<@UPENNY> and another app?"), "EvOtherApp", team=TEAM,
                                       app="A0OTHER"))
        assert fake.count() == fake.count("auth.test")  # no Slack call but the identity lookup
        penny_app.dispatch(event_body(mention("<@UPENNY> a question from home", ts="1700000900.000100"), "EvHome"))
        penny_app.settle()  # every listener dispatched so far has finished

        assert [q.text for q in answerer.questions] == ["a question from home"]  # only home was asked
        assert {c.params.get("thread_ts") for c in fake.calls("chat.postMessage")} == {"1700000900.000100"}
        asked = message_request_id("C1", ROOT)  # never claimed, so nothing stored
        assert store.claim_request("T0OTHER", asked, 60).state == "claimed"
        assert store.claim_request(TEAM, asked, 60).state == "claimed"
        dropped = [entry for entry in logs if entry["event"] == "slack.foreign_request_dropped"]
        assert [(d["team_id"], d["reason"]) for d in dropped] == [("T0OTHER", "workspace"), (TEAM, "app")]
        store.close()


def test_a_foreign_workspace_costs_nothing_end_to_end(tmp_path: Path) -> None:
    with FakeSlack() as fake, FakeOpenAI() as openai:
        bot = make_bot(fake, openai, tmp_path)
        try:
            bot.dispatch(foreign(mention("<@UPENNY> how do I start the dev server?"), "EvForeignE2E"))
            assert openai.count() == 0
            assert fake.count("chat.postMessage") + fake.count("chat.startStream") == 0
            assert bot.gateway.usage("T0OTHER", "2000-01-01", "2100-01-01").totals.requests == 0
        finally:
            bot.gateway.close()
