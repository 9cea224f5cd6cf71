"""Penny's settings, from ``PENNY_*`` environment variables and an optional ``.env`` file.

These are the cost-control engine's settings (store, models, budgets, rate limits, retries, cache,
operations, logging). A front end adds its own by subclassing :class:`PennySettings` (the Slack
bot's are in ``bot/settings.py``) and loads them with :func:`load_settings_as`.

Every field is named by its environment variable in error messages (``PENNY_REQUESTS_PER_MINUTE``;
the OpenAI client's own ``OPENAI_API_KEY`` and ``OPENAI_BASE_URL`` have no prefix).
:func:`load_settings` (and :func:`load_settings_as`) reports every bad field at once as one
:class:`~proxy_core.errors.ConfigurationError`, and never echoes a value: the API key is a
:class:`~pydantic.SecretStr`, and the password of a store URL is masked in ``repr``.

Money is configured in USD as decimals and used as integer micro-dollars (:func:`micros`). A
budget or rate of 0 means "no cap".
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Final, Literal, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from proxy_core.clock import Clock
from proxy_core.errors import ConfigurationError
from proxy_core.prices import PriceTable
from proxy_core.stores import Store, store_from_url, unknown_scheme_message

__all__ = [
    "ENV_PREFIX", "LimitOverride", "Limits", "PennySettings", "env_var", "load_settings", "load_settings_as", "micros",
]

ENV_PREFIX = "PENNY_"
MICROS_PER_USD = 1_000_000

MAX_BUDGET_USD: Final = Decimal(1_000_000_000)  # a budget above this is a typo, not a plan
Usd = Annotated[Decimal, Field(ge=0, le=MAX_BUDGET_USD, decimal_places=6)]
Rate = Annotated[float, Field(ge=0)]
MAX_OUTPUT_TOKENS: Final = 1_000_000
MAX_SECONDS: Final = 10 * 365 * 86_400  # a duration above ten years is a typo, and past a clock's range
Seconds = Annotated[float, Field(ge=0, le=MAX_SECONDS)]
PositiveSeconds = Annotated[float, Field(gt=0, le=MAX_SECONDS)]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


def micros(usd: Decimal) -> int:
    """USD as integer micro-dollars, exactly; ``ValueError`` if it has a fraction of a micro-dollar."""
    amount = Decimal(usd) * MICROS_PER_USD
    if not amount.is_finite() or amount != amount.to_integral_value():
        raise ValueError(f"{usd} USD is not a whole number of micro-dollars")
    return int(amount)


class LimitOverride(BaseModel):
    """One user's rate limits; a field left out falls back to the global setting."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)

    requests_per_minute: Rate | None = None
    request_burst: Annotated[float, Field(ge=1)] | None = None
    tokens_per_minute: Rate | None = None
    token_burst: Annotated[float, Field(gt=0)] | None = None


@dataclass(frozen=True, slots=True)
class Limits:
    """The rate limits that apply to one user. A per-minute rate of 0 means unlimited."""

    requests_per_minute: float
    request_burst: float
    tokens_per_minute: float
    token_burst: float


class PennySettings(BaseSettings):
    """All of Penny's knobs. Build with :func:`load_settings` to get one readable error."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
        allow_inf_nan=False,
        hide_input_in_errors=True,
        validate_default=True,
    )

    # -- state and models ------------------------------------------------------------------------
    store_url: str = Field(
        "sqlite:///penny.db",
        description="Where shared state lives: sqlite:///path, redis://host:port/db or "
        "redis+cluster://host:port[,host:port…] (rediss: TLS).",
    )
    store_timeout_s: PositiveSeconds = Field(2.0, description="Seconds before a store call fails.")
    redis_ca_file: Path | None = Field(None, description="PEM file of the CA that signed Redis' certificate "
                                       "(rediss://); unset = the system's CAs.")
    redis_cert_file: Path | None = Field(None, description="Client certificate (PEM) for a Redis that asks for one.")
    redis_key_file: Path | None = Field(None, description="Private key (PEM) of PENNY_REDIS_CERT_FILE.")
    redis_check_hostname: bool = Field(True, description="Redis' certificate must name the host in the URL.")
    redis_wait_replicas: int = Field(
        0, ge=0, description="Replicas that must have each admission and ledger write (WAIT) before it counts; "
        "0 = don't wait. Set 1 when every Redis primary has a replica: a failover then loses nothing.",
    )
    redis_wait_timeout_ms: int = Field(100, ge=1, description="How long a write waits for those replicas.")
    # Before the models: their validators price them against this file's table.
    price_file: Path | None = Field(
        None, description="JSON file of extra or changed model prices, merged over the shipped table."
    )
    chat_model: str = Field("gpt-4.1-mini", min_length=1, description="Chat model used to answer.")
    embedding_model: str = Field(
        "text-embedding-3-small", min_length=1,
        description="Embedding model of Gateway.embed calls that name none (retrieval uses PENNY_EMBEDDER).",
    )
    # No model writes a million tokens in one answer: more is a typo, which every call would carry to
    # the provider (refused there) and reserve as its worst case (refused by any budget).
    max_output_tokens: int = Field(800, ge=1, le=MAX_OUTPUT_TOKENS, description="Cap on completion tokens per answer.")
    request_timeout_s: PositiveSeconds = Field(
        30.0, description="Seconds before one upstream call times out."
    )
    openai_api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("OPENAI_API_KEY", "openai_api_key"),
        description="OpenAI API key (OPENAI_API_KEY); only commands that call OpenAI need it.",
    )
    openai_base_url: str | None = Field(
        None,
        validation_alias=AliasChoices("OPENAI_BASE_URL", "openai_base_url"),
        description="Alternative OpenAI-compatible endpoint (OPENAI_BASE_URL).",
    )

    # -- budgets ---------------------------------------------------------------------------------
    user_daily_budget_usd: Usd = Field(Decimal(0), description="Per-user daily budget in USD; 0 = no cap.")
    workspace_monthly_budget_usd: Usd = Field(
        Decimal(0), description="Whole-workspace monthly budget in USD; 0 = no cap."
    )
    user_budget_overrides: Annotated[dict[str, Usd], NoDecode] = Field(
        default_factory=dict, description='Per-user daily budgets in USD, as JSON: {"U123": "5.00"}.'
    )
    cache_scope: Literal["workspace", "channel", "user"] = Field(
        "workspace", description="Who shares cached answers: the workspace, a channel, or only the user."
    )

    # -- rate limits -----------------------------------------------------------------------------
    requests_per_minute: Rate = Field(20.0, description="Requests per user per minute; 0 = unlimited.")
    request_burst: float = Field(10.0, ge=1, description="Requests a user may make at once.")
    tokens_per_minute: Rate = Field(200_000.0, description="Tokens per user per minute; 0 = unlimited.")
    token_burst: float | None = Field(
        None, gt=0, description="Tokens a user may use at once; unset = one minute's worth."
    )
    user_limit_overrides: Annotated[dict[str, LimitOverride], NoDecode] = Field(
        default_factory=dict,
        description='Per-user rate limits as JSON: {"U123": {"requests_per_minute": 60}}.',
    )

    # -- retries and breaker ---------------------------------------------------------------------
    retry_max_attempts: int = Field(4, ge=1, description="Upstream attempts per call, the first included.")
    retry_base_s: Seconds = Field(0.5, description="First backoff delay in seconds (doubles each retry).")
    retry_cap_s: Seconds = Field(8.0, description="Longest backoff delay in seconds.")
    retry_max_wait_s: Seconds = Field(20.0, description="Longest Retry-After Penny will honour, in seconds.")
    retry_deadline_s: PositiveSeconds = Field(60.0, description="Total seconds one call may spend retrying.")
    breaker_failure_threshold: int = Field(
        5, ge=1,
        description="Consecutive failures that open the breaker (when they also outnumber the calls still in flight).",
    )
    breaker_failure_ratio: float = Field(
        0.5, gt=0, le=1,
        description="Failure ratio in the window that opens the breaker (calls in flight count as not failed).",
    )
    breaker_min_calls: int = Field(20, ge=1, description="Calls in the window before the ratio counts.")
    breaker_window_s: PositiveSeconds = Field(
        60.0, description="Seconds of history the failure ratio covers."
    )
    breaker_cooldown_s: PositiveSeconds = Field(
        30.0, description="Seconds the breaker stays open; doubled after each failed probe."
    )
    breaker_max_cooldown_s: PositiveSeconds = Field(
        300.0, description="Longest the breaker stays open after failed probes, in seconds."
    )

    # -- cache and idempotency -------------------------------------------------------------------
    cache_enabled: bool = Field(True, description="Answer repeated questions from the exact-match cache.")
    cache_ttl_s: PositiveSeconds = Field(86_400.0, description="Seconds a cached answer stays valid.")
    semantic_cache: bool = Field(True, description="Also serve rephrasings of cached questions (else exact only).")
    embedder: str = Field(
        "local:wordllama", min_length=1,
        description="Embeds questions for the semantic cache: local:wordllama or openai:<model>[?dimensions=N].",
    )
    cache_max_wrong: float | None = Field(
        None, gt=0, lt=1,
        description="Largest share of served rephrasing hits that may be wrong; Penny picks its operating point "
        "from the embedder's calibration. Unset: the embedder's own default (0.15 for local:wordllama, 0.12 "
        "for all-MiniLM-L6-v2).",
    )
    cache_threshold: float | None = Field(
        None, gt=0, le=1,
        description="Expert override: serve a rephrasing at this cosine (with the guard) instead of the calibrated "
        "decision; unset = calibrated (or the embedder's measured threshold when it has no calibration).",
    )
    cache_guard: bool = Field(True, description="Reject near misses (negation, numbers, entities, antonyms...).")
    cache_max_entries: int = Field(
        100_000, ge=0, description="Cached answers kept; least recently used go first; 0 = no cap."
    )
    cache_top_k: int = Field(4, ge=1, le=50, description="Nearest cached questions the guard examines.")
    idempotency_ttl_s: PositiveSeconds = Field(86_400.0, description="Seconds a request ID is remembered.")
    inflight_wait_s: Seconds = Field(
        30.0, description="Seconds to wait for a duplicate request being answered elsewhere."
    )

    # -- operations ------------------------------------------------------------------------------
    metrics_port: int = Field(0, ge=0, le=65_535, description="Port for Prometheus metrics; 0 = off.")
    metrics_token: SecretStr | None = Field(
        None,
        description="Bearer token a Prometheus on another host sends to read /metrics on penny proxy's port; "
        "unset = only a peer on the same host (loopback) may.",
    )
    spool_dir: Path | None = Field(
        None,
        description="Where paid calls wait when the store cannot take their ledger entry; unset = a penny-spool "
        "folder beside the SQLite file, or $XDG_STATE_HOME/penny/spool (~/.local/state/penny/spool) with Redis.",
    )

    log_level: LogLevel = Field("INFO", description="Least severe log level written.")
    log_json: bool = Field(False, description="Write logs as JSON lines instead of console text.")

    def spool_directory(self) -> Path:
        """``spool_dir``, or its default for the configured store (see the field)."""
        if self.spool_dir is not None:
            return self.spool_dir
        parts = urlsplit(self.store_url)
        if parts.scheme == "sqlite" and parts.path.startswith("/") and len(parts.path) > 1:
            return Path(unquote(parts.path[1:])).parent / "penny-spool"
        state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        return Path(state) / "penny" / "spool"

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("store_url")
    @classmethod
    def _known_store(cls, value: str) -> str:
        problem = unknown_scheme_message(value)
        if problem is not None:
            raise ValueError(problem)
        parts = urlsplit(value)
        if parts.scheme.startswith("redis") and "@" not in parts.netloc and "@" in value.partition("://")[2]:
            # An unencoded / ? or # in the password ends the host part early: what follows it is no
            # host, and a message naming one would print the start of the password.
            raise ValueError("not a valid Redis URL: its password holds /, ? or #, which end the host part; "
                             "percent-encode them (/ as %2F, ? as %3F, # as %23)")
        database = parts.path.removeprefix("/")
        if parts.scheme in ("redis", "rediss") and database and not (database.isascii() and database.isdigit()):
            # redis-py ignores a database it cannot read as a number, and uses 0.
            raise ValueError("not a valid Redis URL: its database (after the last /) must be a number such as 0")
        if parts.scheme.startswith("redis"):
            # Each host of the URL (a cluster's or Sentinel's name several: "h1:7000,h2:7001").
            for host in parts.netloc.rpartition("@")[2].split(","):  # never the password
                try:
                    urlsplit(f"//{host}").port  # noqa: B018  (reading it checks it: "host:notaport" raises)
                except ValueError:
                    raise ValueError(f"not a valid Redis URL: its port is not a number from 0 to 65535 ({host})"
                                     ) from None
        return value

    @field_validator("spool_dir")
    @classmethod
    def _spool_dir_can_be_a_folder(cls, value: Path | None) -> Path | None:
        # A file there (or above it) refuses every spooled paid call: each waited in memory only, lost
        # at exit, while penny check and ledger replay said "nothing waiting" and exited 0.
        if value is None:
            return None
        blocked = next((p for p in (value, *value.parents) if p.exists() and not p.is_dir()), None)
        if blocked is not None:
            named = "it" if blocked == value else f"{blocked}"
            raise ValueError(f"{value} cannot be the spool folder: {named} is a file; name a folder (Penny creates it)")
        return value

    @field_validator("price_file")
    @classmethod
    def _price_file_exists(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        if not value.is_file():
            raise ValueError(f"price file {value} does not exist or is not a file")
        try:
            PriceTable.load(value)  # one that does not parse is reported with every other problem
        except ConfigurationError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("chat_model", "embedding_model", "embedder")
    @classmethod
    def _priced(cls, value: str, info: ValidationInfo) -> str:
        # A model without a price would be billed as $0: a bad setting even while no key is set, and
        # reported here with every other problem rather than when the gateway starts.
        if "price_file" not in info.data:  # the price file itself is bad, and reported on its own
            return value
        kind: Literal["chat", "embedding"] = "chat" if info.field_name == "chat_model" else "embedding"
        model = value
        if info.field_name == "embedder":
            model = value.split(":", 1)[1].split("?", 1)[0] if value.startswith("openai:") else ""  # local: free
        try:
            if model:
                PriceTable.load(info.data["price_file"]).price_for(model, kind)
            if info.field_name == "embedder":
                from proxy_core.semantic.embedders import embedder_from_spec

                # Its form too (a local embedder loads nothing until it embeds).
                embedder_from_spec(value, openai_embed_fn=lambda texts, **_: [])
        except ConfigurationError as exc:
            raise ValueError(str(exc).removeprefix(f"{ENV_PREFIX}EMBEDDER=")) from None
        return value

    @field_validator("redis_ca_file", "redis_cert_file", "redis_key_file")
    @classmethod
    def _tls_file_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} does not exist or is not a file")
        return value

    @field_validator("user_budget_overrides", "user_limit_overrides", mode="before")
    @classmethod
    def _json_object(cls, value: object) -> object:
        # Decoded here rather than by the settings source, so bad JSON is reported with every
        # other bad field instead of aborting on its own.
        if not isinstance(value, str):
            return value
        if not value.strip():
            return {}
        try:
            decoded = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(decoded, dict):
            raise ValueError('must be a JSON object like {"U123": ...}')
        return decoded

    @field_validator("user_budget_overrides", mode="after")
    @classmethod
    def _no_zero_override(cls, value: dict[str, Decimal]) -> dict[str, Decimal]:
        # 0 is "no cap" for the default budget, so {"U123": "0"} would lift U123's cap: most likely
        # written to stop U123's spend instead. Either way it is not to be guessed.
        zero = sorted(user for user, usd in value.items() if usd == 0)
        if zero:
            raise ValueError(f"{', '.join(zero)}: a budget of 0 would mean no cap at all (as 0 does for "
                             "PENNY_USER_DAILY_BUDGET_USD); to exempt a user, give them a large budget, and "
                             'to stop their spend, the smallest one ("0.000001")')
        return value

    @field_validator("openai_base_url", "openai_api_key", "spool_dir", "price_file", "redis_ca_file",
                     "redis_cert_file", "redis_key_file", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        # OPENAI_API_KEY= (empty) in a .env file means "not set", not an empty key. A path left empty
        # was Path(""), the working directory: PENNY_SPOOL_DIR= spooled paid calls into whichever
        # folder Penny started in, where a start from another folder never looked for them.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("openai_api_key", "metrics_token")
    @classmethod
    def _sendable(cls, value: SecretStr | None) -> SecretStr | None:
        """A key or token travels in an HTTP header, which takes plain ASCII: one pasted with curly
        quotes, a no-break space or an ellipsis would crash the first call, not be refused here.
        Spaces around it are no part of it. Front ends run their own tokens through this too."""
        if value is None:
            return None
        secret = value.get_secret_value().strip()
        for position, char in enumerate(secret, start=1):
            if not "!" <= char <= "~":
                raise ValueError(f"not plain ASCII: character {position} of {len(secret)} is U+{ord(char):04X} (pasted "
                                 "with quotes or spaces from a web page or a chat?); copy it again")
        return SecretStr(secret)

    @field_validator("openai_base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value.strip())
            if parts.scheme not in ("http", "https") or not parts.hostname:
                # Not echoed: a mistyped URL may carry a key in its query.
                raise ValueError("must be an http(s) URL with a host, such as https://api.openai.com/v1")
            if parts.query or parts.fragment:
                # The client puts /chat/completions after it, into the query: every call missed, and
                # each failure's message printed the query, a token in it included.
                raise ValueError("must have no ?query or #fragment, such as https://api.openai.com/v1 (the key "
                                 "goes in OPENAI_API_KEY)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> PennySettings:
        if self.retry_cap_s < self.retry_base_s:
            raise ValueError(
                f"{ENV_PREFIX}RETRY_CAP_S ({self.retry_cap_s}) is below {ENV_PREFIX}RETRY_BASE_S "
                f"({self.retry_base_s})"
            )
        return self

    @model_validator(mode="after")
    def _redis_options(self) -> PennySettings:
        tls_files = [self.redis_ca_file, self.redis_cert_file, self.redis_key_file]
        if any(tls_files) and not self.store_url.lower().startswith("rediss"):
            raise ValueError(f"{ENV_PREFIX}REDIS_CA_FILE/CERT_FILE/KEY_FILE are set but {ENV_PREFIX}STORE_URL is "
                             "not rediss:// or rediss+cluster://: the connection would not use TLS")
        if (self.redis_cert_file is None) != (self.redis_key_file is None):
            raise ValueError(f"{ENV_PREFIX}REDIS_CERT_FILE and {ENV_PREFIX}REDIS_KEY_FILE go together")
        if self.redis_wait_timeout_ms >= self.store_timeout_s * 1000:
            raise ValueError(f"{ENV_PREFIX}REDIS_WAIT_TIMEOUT_MS ({self.redis_wait_timeout_ms}) must be below "
                             f"{ENV_PREFIX}STORE_TIMEOUT_S ({self.store_timeout_s} s)")
        return self

    # -- helpers ---------------------------------------------------------------------------------
    def open_store(self, *, clock: Clock | None = None, create: bool = True) -> Store:
        """The store ``store_url`` names, with its timeout and (for Redis) TLS and WAIT settings.
        ``create=False``: a SQLite file that does not exist is refused (``store_from_url``)."""
        from proxy_core.stores.redis_connect import RedisOptions

        def text(path: Path | None) -> str | None:
            return None if path is None else str(path)

        options = RedisOptions(
            ca_file=text(self.redis_ca_file), cert_file=text(self.redis_cert_file), key_file=text(self.redis_key_file),
            check_hostname=self.redis_check_hostname, wait_replicas=self.redis_wait_replicas,
            wait_timeout_ms=self.redis_wait_timeout_ms,
        )
        return store_from_url(self.store_url, clock=clock, timeout_s=self.store_timeout_s, redis=options,
                              create=create)

    def user_daily_budget_micros(self, user_id: str) -> int:
        """The daily budget of ``user_id`` in micro-dollars (an override, else the default); 0 = none."""
        return micros(self.user_budget_overrides.get(user_id, self.user_daily_budget_usd))

    def workspace_monthly_budget_micros(self) -> int:
        """The workspace's monthly budget in micro-dollars; 0 = none."""
        return micros(self.workspace_monthly_budget_usd)

    def limits_for(self, user_id: str) -> Limits:
        """The rate limits of ``user_id``: its override's fields where given, else the globals.

        An unset token burst is one minute's worth of the user's own token rate.
        """
        override = self.user_limit_overrides.get(user_id) or LimitOverride()
        rpm = _first(override.requests_per_minute, self.requests_per_minute)
        tpm = _first(override.tokens_per_minute, self.tokens_per_minute)
        return Limits(
            requests_per_minute=rpm,
            request_burst=_first(override.request_burst, self.request_burst),
            tokens_per_minute=tpm,
            token_burst=_first(override.token_burst, self.token_burst, tpm),
        )

    def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            yield name, (_mask_url_password(value) if name == "store_url" else value)


S = TypeVar("S", bound=PennySettings)


def load_settings(**overrides: Any) -> PennySettings:
    """Settings from the environment and ``.env``, with ``overrides`` (field names) on top.

    Raises one :class:`ConfigurationError` naming every bad field by its environment variable.
    """
    return load_settings_as(PennySettings, **overrides)


def load_settings_as(settings_class: type[S], /, **overrides: Any) -> S:
    """:func:`load_settings` for a front end's subclass of :class:`PennySettings` (its own fields
    beside Penny's), with the same single error naming every bad field."""
    try:
        unreadable = _unparsed_dotenv_lines(settings_class)
        if unreadable:
            # python-dotenv skips such a line with a log line naming no file: a key with an
            # unclosed quote would leave Penny running without it, unsaid.
            raise ConfigurationError(unreadable)
        return settings_class(**overrides)
    except UnicodeDecodeError as exc:  # only the settings sources read bytes: the .env file
        raise ConfigurationError(_not_utf8(settings_class)) from exc
    except ValidationError as exc:
        problems = [_describe(settings_class, error) for error in exc.errors(include_input=False, include_url=False)]
        raise ConfigurationError("Invalid settings:\n" + "\n".join(f"  {p}" for p in problems)) from exc


def env_var(field: str, settings_class: type[PennySettings] = PennySettings) -> str:
    """The environment variable that sets ``field`` (of ``settings_class``)."""
    info = settings_class.model_fields.get(field)
    alias = info.validation_alias if info is not None else None
    if isinstance(alias, AliasChoices) and isinstance(alias.choices[0], str):
        return alias.choices[0]
    return f"{ENV_PREFIX}{field.upper()}"


def _describe(settings_class: type[PennySettings], error: Any) -> str:
    loc = tuple(error.get("loc", ()))
    message = str(error.get("msg", "invalid"))
    message = message.removeprefix("Value error, ")
    if not loc:
        return message
    head, rest = str(loc[0]), [str(part) for part in loc[1:]]
    name = head if head.isupper() else env_var(head, settings_class)
    where = f"{name} [{'.'.join(rest)}]" if rest else name
    return f"{where}: {message}"


def _unparsed_dotenv_lines(settings_class: type[PennySettings]) -> str | None:
    """What to say of the ``.env`` lines python-dotenv cannot parse (an unclosed quote, a name with
    a space), by line number only: their text may hold a key, or of a ``.env`` that cannot be read.
    None when every line parses."""
    from dotenv.parser import parse_stream

    path = Path(str(settings_class.model_config.get("env_file") or ".env"))
    try:
        with path.open(encoding="utf-8-sig") as handle:
            bad = [binding.original.line for binding in parse_stream(handle) if binding.error]
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None  # no .env (the usual case), or not a file: the settings sources pass it over too
    except OSError as exc:
        # One this user may not read (written by root, say): the settings sources raised the
        # PermissionError itself, a traceback on every command.
        return (f"{path}: cannot be read ({exc.strerror}), so the settings in it would be ignored; let this user "
                "read it or remove it")
    if not bad:
        return None
    lines = ", ".join(str(n) for n in bad)
    return (f"{path}: line{'s' if len(bad) > 1 else ''} {lines} cannot be read as NAME=value (an unclosed quote?); "
            "fix or remove them: the settings they hold would be ignored")


def _not_utf8(settings_class: type[PennySettings]) -> str:
    """Which line of the ``.env`` file is not UTF-8 (its bytes are not echoed: they may be a key)."""
    path = Path(str(settings_class.model_config.get("env_file") or ".env"))
    try:
        path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        return f"{path}: line {line} is not UTF-8 text; save the file as UTF-8"
    except OSError:
        pass
    return f"{path}: not UTF-8 text; save the file as UTF-8"


def _first(*values: float | None) -> float:
    for value in values:
        if value is not None:
            return value
    raise ValueError("no value")  # unreachable: the last candidate is never None


def _mask_url_password(url: object) -> object:
    if not isinstance(url, str):
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    _, _, host = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))
