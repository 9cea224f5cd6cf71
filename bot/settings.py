"""The Slack bot's settings: Penny's own (:class:`proxy_core.PennySettings`: store, models, budgets,
rate limits, cache, logging) and the bot's, from the same environment and ``.env``:

- Slack: ``SLACK_BOT_TOKEN``, ``SLACK_APP_TOKEN`` (Socket Mode), ``SLACK_SIGNING_SECRET`` (HTTP),
  ``SLACK_API_URL``; who sees team spend (``PENNY_ADMIN_USER_IDS``), where budget alerts go
  (``PENNY_ALERT_CHANNEL``), which unmentioned thread replies are answered (``PENNY_THREAD_REPLIES``);
- the docs: ``PENNY_DOCS_DIR`` and ``PENNY_DOCS_BASE_URL``.

:func:`load_settings` reports every bad field of both at once, as :func:`proxy_core.load_settings`
does; tokens are :class:`~pydantic.SecretStr` and never echoed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from proxy_core import PennySettings, load_settings_as

__all__ = ["BotSettings", "ThreadReplies", "load_settings"]

ThreadReplies = Literal["questions", "all", "mentions"]  # what each means: bot/slack/addressing.py


def _slack(variable: str, description: str) -> Any:
    """An optional setting named by Slack's own variable (no ``PENNY_`` prefix), as the SDK spells it."""
    return Field(None, validation_alias=AliasChoices(variable, variable.lower()),
                 description=f"{description} ({variable}).")


class BotSettings(PennySettings):
    """Penny's settings and the Slack bot's. Build with :func:`load_settings` to get one readable error."""

    slack_bot_token: SecretStr | None = _slack("SLACK_BOT_TOKEN", "Bot token xoxb-…, from the app's OAuth & "
                                                                 "Permissions page")
    slack_app_token: SecretStr | None = _slack("SLACK_APP_TOKEN", "App-level token xapp-… with connections:write, "
                                                                 "for Socket Mode")
    slack_signing_secret: SecretStr | None = _slack("SLACK_SIGNING_SECRET", "Signing secret, for HTTP mode")
    slack_api_url: str | None = _slack("SLACK_API_URL", "Override of the Slack Web API base URL")
    thread_replies: ThreadReplies = Field(
        "questions",
        description="Which replies without a mention Penny answers in a thread she is in: questions (those "
                    "that ask her something; not thanks, emoji or talk between people), all, or mentions (none).",
    )
    admin_user_ids: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Slack user IDs allowed to see team-wide spend, comma-separated."
    )
    alert_channel: str | None = Field(
        None,
        description="Slack channel ID that gets budget alerts (50%, 80%, 100% of a budget); unset = DM each admin.",
    )
    docs_dir: Path = Field(Path("examples/docs"), description="The docs folder Penny answers from.")
    docs_base_url: str | None = Field(
        None, description="Base URL that turns a doc path into a link in citations (e.g. a repo or wiki)."
    )
    docs_link_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Folders outside the docs folder that its symlinks may lead into, comma-separated (e.g. a "
                    "monorepo's src for docs/api -> ../src/api/docs); any other link out of it is skipped.",
    )

    @field_validator("thread_replies", mode="before")
    @classmethod
    def _lower_thread_replies(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("docs_dir", mode="before")
    @classmethod
    def _docs_dir_named(cls, value: object) -> object:
        # PENNY_DOCS_DIR= (empty, as in a .env template) was the working directory: a first run
        # indexed whatever files were under it, and Slack users could ask about them.
        if isinstance(value, str) and not value.strip():
            raise ValueError("empty: set it to your docs folder (. for the working directory), or remove the "
                             "line for the bundled example handbook")
        return value

    @field_validator("admin_user_ids", "docs_link_roots", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("slack_bot_token", "slack_app_token")
    @classmethod
    def _sendable_token(cls, value: SecretStr | None) -> SecretStr | None:
        return cls._sendable(value)

    @field_validator(
        "slack_bot_token", "slack_app_token", "slack_signing_secret", "slack_api_url", "alert_channel", mode="before"
    )
    @classmethod
    def _blank_slack_setting_is_unset(cls, value: object) -> object:
        # SLACK_APP_TOKEN= (empty) in a .env file means "not set", not an empty token.
        return None if isinstance(value, str) and not value.strip() else value


def load_settings(**overrides: Any) -> BotSettings:
    """The bot's settings from the environment and ``.env``, with ``overrides`` (field names) on top.

    Raises one :class:`~proxy_core.ConfigurationError` naming every bad field by its environment variable.
    """
    return load_settings_as(BotSettings, **overrides)
