"""The Slack bot's settings (bot/settings.py): Penny's own and the bot's, from one environment, with one
readable error for every bad field of either. Penny's own are tested in test_settings.py.

Every test runs in an empty temporary directory with Penny's and Slack's variables cleared."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bot.settings import BotSettings, load_settings
from proxy_core import ConfigurationError, PennySettings
from proxy_core.settings import env_var

TOKEN = "xoxb-DoNotPrintMe-0123456789"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.upper().startswith(("PENNY_", "SLACK_", "OPENAI_")):
            monkeypatch.delenv(name)
    return tmp_path


def test_defaults() -> None:
    s = load_settings()
    assert (s.slack_bot_token, s.slack_app_token, s.slack_signing_secret, s.slack_api_url) == (None,) * 4
    assert (s.thread_replies, s.admin_user_ids, s.alert_channel) == ("questions", [], None)
    assert (s.docs_dir, s.docs_base_url, s.docs_link_roots) == (Path("examples/docs"), None, [])
    assert s.store_url == "sqlite:///penny.db"  # and Penny's own, with the same defaults
    assert isinstance(s, PennySettings)


def test_every_field_is_described() -> None:
    for name, field in BotSettings.model_fields.items():
        assert field.description, name


def test_the_bots_settings_are_not_the_engines() -> None:
    bot_only = set(BotSettings.model_fields) - set(PennySettings.model_fields)
    assert bot_only == {"slack_bot_token", "slack_app_token", "slack_signing_secret", "slack_api_url",
                        "thread_replies", "admin_user_ids", "alert_channel", "docs_dir", "docs_base_url",
                        "docs_link_roots"}


def test_environment_and_dotenv(monkeypatch: pytest.MonkeyPatch, clean_env: Path) -> None:
    (clean_env / ".env").write_text(f"SLACK_BOT_TOKEN={TOKEN}\nSLACK_APP_TOKEN=\nPENNY_DOCS_DIR=handbook\n")
    monkeypatch.setenv("PENNY_ADMIN_USER_IDS", " U1, U2 ,")
    monkeypatch.setenv("PENNY_ALERT_CHANNEL", "C0ALERTS")
    monkeypatch.setenv("PENNY_THREAD_REPLIES", " All ")
    monkeypatch.setenv("PENNY_REQUESTS_PER_MINUTE", "5")
    monkeypatch.setenv("PENNY_DOCS_LINK_ROOTS", "/srv/repo/src, ../shared/docs,")
    s = load_settings()
    assert s.docs_link_roots == [Path("/srv/repo/src"), Path("../shared/docs")]
    assert s.slack_bot_token is not None and s.slack_bot_token.get_secret_value() == TOKEN
    assert s.slack_app_token is None  # empty in .env means unset
    assert (s.admin_user_ids, s.alert_channel, s.thread_replies) == (["U1", "U2"], "C0ALERTS", "all")
    assert s.docs_dir == Path("handbook")
    assert s.requests_per_minute == 5
    assert TOKEN not in repr(s) and TOKEN not in str(s)


def test_every_bad_field_of_bot_and_engine_is_reported_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLACK_BOT_TOKEN", TOKEN)
    monkeypatch.setenv("PENNY_THREAD_REPLIES", "quiet")
    monkeypatch.setenv("PENNY_REQUESTS_PER_MINUTE", "lots")
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    lines = str(info.value).splitlines()
    assert lines[0] == "Invalid settings:"
    assert "  PENNY_THREAD_REPLIES: Input should be 'questions', 'all' or 'mentions'" in lines
    assert "  PENNY_REQUESTS_PER_MINUTE: Input should be a valid number, unable to parse string as a number" in lines
    assert len(lines) == 3
    assert "quiet" not in str(info.value) and TOKEN not in str(info.value)


def test_an_empty_docs_dir_is_refused_not_read_as_the_working_directory(clean_env: Path) -> None:
    """``PENNY_DOCS_DIR=`` (as left in a .env template) was Path(""), the working directory: a first
    run indexed every file under it, for anyone in Slack to ask about."""
    (clean_env / ".env").write_text("PENNY_DOCS_DIR=\n")
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    assert "PENNY_DOCS_DIR: empty: set it to your docs folder (. for the working directory)" in str(info.value)


def test_env_var_names() -> None:
    assert env_var("slack_bot_token", BotSettings) == "SLACK_BOT_TOKEN"
    assert env_var("slack_signing_secret", BotSettings) == "SLACK_SIGNING_SECRET"
    assert env_var("admin_user_ids", BotSettings) == "PENNY_ADMIN_USER_IDS"
    assert env_var("docs_dir", BotSettings) == "PENNY_DOCS_DIR"
