"""Settings: defaults, environment, .env, JSON overrides, and one readable error for every bad field.

Every test runs in an empty temporary directory with Penny's variables cleared, so the developer's
own .env and environment never leak in.
"""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path

import pytest

from proxy_core.errors import ConfigurationError
from proxy_core.settings import Limits, PennySettings, env_var, load_settings, micros

SECRET = "sk-test-DoNotPrintMe-0123456789"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.upper().startswith("PENNY_") or name.upper() in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
            monkeypatch.delenv(name)
    return tmp_path


def _error(**overrides: object) -> str:
    with pytest.raises(ConfigurationError) as info:
        load_settings(**overrides)
    return str(info.value)


def test_defaults() -> None:
    s = load_settings()
    assert s.store_url == "sqlite:///penny.db"
    assert s.store_timeout_s == 2.0
    assert (s.chat_model, s.embedding_model) == ("gpt-4.1-mini", "text-embedding-3-small")
    assert (s.max_output_tokens, s.request_timeout_s) == (800, 30.0)
    assert s.openai_api_key is None
    assert s.openai_base_url is None
    assert s.price_file is None
    assert s.user_daily_budget_usd == 0
    assert s.workspace_monthly_budget_usd == 0
    assert s.user_budget_overrides == {}
    assert (s.requests_per_minute, s.request_burst, s.tokens_per_minute) == (20, 10, 200_000)
    assert s.token_burst is None
    assert s.user_limit_overrides == {}
    assert (s.retry_max_attempts, s.retry_base_s, s.retry_cap_s) == (4, 0.5, 8.0)
    assert (s.retry_max_wait_s, s.retry_deadline_s) == (20.0, 60.0)
    assert (s.breaker_failure_threshold, s.breaker_failure_ratio, s.breaker_min_calls) == (5, 0.5, 20)
    assert (s.breaker_window_s, s.breaker_cooldown_s, s.breaker_max_cooldown_s) == (60.0, 30.0, 300.0)
    assert (s.cache_enabled, s.cache_ttl_s, s.cache_scope) == (True, 86_400, "workspace")
    assert (s.idempotency_ttl_s, s.inflight_wait_s) == (86_400, 30.0)
    assert (s.metrics_port, s.log_level, s.log_json) == (0, "INFO", False)
    # 0 = no cap, and the token burst defaults to a minute's worth of tokens.
    assert s.user_daily_budget_micros("U1") == 0
    assert s.workspace_monthly_budget_micros() == 0
    assert s.limits_for("U1") == Limits(20, 10, 200_000, 200_000)


def test_every_field_is_described() -> None:
    for name, field in PennySettings.model_fields.items():
        assert field.description, name


def test_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PENNY_STORE_URL", "redis://127.0.0.1:6379/5")
    monkeypatch.setenv("PENNY_CHAT_MODEL", "gpt-4o-mini")
    monkeypatch.setenv("PENNY_REQUESTS_PER_MINUTE", "0")
    monkeypatch.setenv("PENNY_USER_DAILY_BUDGET_USD", "0.50")
    monkeypatch.setenv("PENNY_CACHE_ENABLED", "false")
    monkeypatch.setenv("PENNY_LOG_LEVEL", "debug")
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:8080/v1")
    monkeypatch.setenv("SLACK_BOT_TOKEN", "unrelated variables are ignored")
    s = load_settings()
    assert s.store_url == "redis://127.0.0.1:6379/5"
    assert s.chat_model == "gpt-4o-mini"
    assert s.requests_per_minute == 0
    assert s.user_daily_budget_micros("anyone") == 500_000
    assert s.cache_enabled is False
    assert s.log_level == "DEBUG"
    assert s.openai_api_key is not None
    assert s.openai_api_key.get_secret_value() == SECRET
    assert s.openai_base_url == "http://127.0.0.1:8080/v1"


def test_dotenv_file_and_environment_precedence(monkeypatch: pytest.MonkeyPatch, clean_env: Path) -> None:
    (clean_env / ".env").write_text(
        "PENNY_CHAT_MODEL=gpt-4.1-nano\n"
        "PENNY_TOKENS_PER_MINUTE=50000\n"
        f"OPENAI_API_KEY={SECRET}\n"
        "SLACK_SIGNING_SECRET=ignored\n"
        "PENNY_NOT_A_SETTING=ignored\n"
    )
    monkeypatch.setenv("PENNY_TOKENS_PER_MINUTE", "70000")  # the environment beats .env
    s = load_settings()
    assert s.chat_model == "gpt-4.1-nano"
    assert s.tokens_per_minute == 70_000
    assert s.openai_api_key is not None
    assert s.openai_api_key.get_secret_value() == SECRET


def test_a_dotenv_file_this_user_may_not_read_is_named(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """It was python-dotenv's PermissionError, a traceback on every penny command. (The tests may run
    as root, whom no file mode stops: the refusal is the operating system's, stood in for here.)"""
    import builtins

    (clean_env / ".env").write_text(f"OPENAI_API_KEY={SECRET}\n")
    real_open = builtins.open

    def refusing_open(file: object, *args: object, **kwargs: object) -> object:
        if str(file).endswith(".env"):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(builtins, "open", refusing_open)
    monkeypatch.setattr(Path, "open", lambda self, *a, **k: refusing_open(self, *a, **k))
    message = _error()
    assert message == ".env: cannot be read (Permission denied), so the settings in it would be ignored; " \
                      "let this user read it or remove it"


def test_empty_api_key_means_unset(clean_env: Path) -> None:
    (clean_env / ".env").write_text("OPENAI_API_KEY=\n")
    assert load_settings().openai_api_key is None


def test_keyword_overrides_beat_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PENNY_MAX_OUTPUT_TOKENS", "100")
    s = load_settings(max_output_tokens=300, openai_api_key=SECRET)
    assert s.max_output_tokens == 300
    assert s.openai_api_key is not None
    assert s.openai_api_key.get_secret_value() == SECRET


def test_json_budget_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PENNY_USER_DAILY_BUDGET_USD", "1.00")
    monkeypatch.setenv("PENNY_WORKSPACE_MONTHLY_BUDGET_USD", "250")
    monkeypatch.setenv("PENNY_USER_BUDGET_OVERRIDES", '{"U123": "5.00", "U456": "0.000001"}')
    s = load_settings()
    assert s.user_budget_overrides["U123"] == Decimal("5.00")
    assert s.user_daily_budget_micros("U123") == 5_000_000
    assert s.user_daily_budget_micros("U456") == 1
    assert s.user_daily_budget_micros("someone-else") == 1_000_000
    assert s.workspace_monthly_budget_micros() == 250_000_000


def test_a_budget_override_of_zero_is_refused_not_read_as_no_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    """0 is "no cap" for the default budget, so {"U789": 0} lifted U789's cap: the operator who wrote
    it to stop U789's spend gave them an unlimited one. It is now refused, saying what to write."""
    monkeypatch.setenv("PENNY_USER_DAILY_BUDGET_USD", "1.00")
    monkeypatch.setenv("PENNY_USER_BUDGET_OVERRIDES", '{"U123": "5.00", "U789": 0, "U456": "0.00"}')
    with pytest.raises(ConfigurationError) as refused:
        load_settings()
    message = str(refused.value)
    assert "PENNY_USER_BUDGET_OVERRIDES: U456, U789: a budget of 0 would mean no cap at all" in message
    assert '"0.000001"' in message


def test_json_limit_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PENNY_TOKEN_BURST", "30000")
    monkeypatch.setenv(
        "PENNY_USER_LIMIT_OVERRIDES",
        '{"UPOWER": {"requests_per_minute": 120, "request_burst": 40, "tokens_per_minute": 1000000},'
        ' "UQUIET": {"requests_per_minute": 0}}',
    )
    s = load_settings()
    assert s.limits_for("UPOWER") == Limits(120, 40, 1_000_000, 30_000)
    assert s.limits_for("UQUIET") == Limits(0, 10, 200_000, 30_000)
    assert s.limits_for("U1") == Limits(20, 10, 200_000, 30_000)


def test_unset_token_burst_follows_the_users_own_token_rate() -> None:
    s = load_settings(user_limit_overrides={"U1": {"tokens_per_minute": 5_000}})
    assert s.limits_for("U1").token_burst == 5_000
    assert s.limits_for("U2").token_burst == 200_000


def test_every_bad_field_is_reported_once_by_its_environment_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PENNY_REQUESTS_PER_MINUTE", "lots")
    monkeypatch.setenv("PENNY_MAX_OUTPUT_TOKENS", "-5")
    monkeypatch.setenv("PENNY_BREAKER_FAILURE_RATIO", "1.5")
    monkeypatch.setenv("PENNY_USER_DAILY_BUDGET_USD", "-1")
    monkeypatch.setenv("PENNY_STORE_TIMEOUT_S", "nan")
    monkeypatch.setenv("PENNY_LOG_LEVEL", "chatty")
    monkeypatch.setenv("PENNY_USER_BUDGET_OVERRIDES", '{"U1": "5.00"')  # truncated JSON
    monkeypatch.setenv("PENNY_USER_LIMIT_OVERRIDES", '{"U2": {"requests_per_minute": -1, "rpm": 3}}')
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    message = _error()
    lines = message.splitlines()
    assert lines[0] == "Invalid settings:"
    for expected in (
        "PENNY_REQUESTS_PER_MINUTE: Input should be a valid number",
        "PENNY_MAX_OUTPUT_TOKENS: Input should be greater than or equal to 1",
        "PENNY_BREAKER_FAILURE_RATIO: Input should be less than or equal to 1",
        "PENNY_USER_DAILY_BUDGET_USD: Input should be greater than or equal to 0",
        "PENNY_STORE_TIMEOUT_S: Input should be a finite number",
        "PENNY_LOG_LEVEL: Input should be 'DEBUG', 'INFO', 'WARNING', 'ERROR' or 'CRITICAL'",
        "PENNY_USER_BUDGET_OVERRIDES: not valid JSON",
        "PENNY_USER_LIMIT_OVERRIDES [U2.requests_per_minute]: Input should be greater than or equal to 0",
        "PENNY_USER_LIMIT_OVERRIDES [U2.rpm]: Extra inputs are not permitted",
    ):
        assert sum(expected in line for line in lines) == 1, (expected, message)
    assert len(lines) == 1 + 9
    assert "lots" not in message  # values are not echoed, only what is wrong with them
    assert SECRET not in message


def test_budgets_finer_than_a_micro_dollar_are_refused() -> None:
    message = _error(user_daily_budget_usd="0.0000001", user_budget_overrides={"U1": "1.0000001"})
    assert "PENNY_USER_DAILY_BUDGET_USD: Decimal input should have no more than 6 decimal places" in message
    assert "PENNY_USER_BUDGET_OVERRIDES [U1]: Decimal input should have no more than 6" in message


def test_cross_field_problem_is_named() -> None:
    message = _error(retry_base_s=10, retry_cap_s=2)
    assert "PENNY_RETRY_CAP_S (2.0) is below PENNY_RETRY_BASE_S (10.0)" in message


def test_price_file_must_exist(clean_env: Path) -> None:
    message = _error(price_file=clean_env / "missing.json")
    assert "PENNY_PRICE_FILE:" in message
    assert "missing.json does not exist" in message
    present = clean_env / "prices.json"
    present.write_text('{"models": {}}')
    assert load_settings(price_file=present).price_file == present


@pytest.mark.parametrize("url", [f"http://127.0.0.1:9/v1?api-key={SECRET}", f"https://example.com/v1#{SECRET}"])
def test_a_base_url_with_a_query_is_refused_without_echoing_it(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Calls went to /v1?api-key=…chat/completions, and every failure printed the URL, token and all."""
    monkeypatch.setenv("OPENAI_BASE_URL", url)
    message = _error()
    assert "OPENAI_BASE_URL: must have no ?query or #fragment" in message and SECRET not in message


@pytest.mark.parametrize("name", ["PENNY_SPOOL_DIR", "PENNY_PRICE_FILE", "PENNY_REDIS_CA_FILE"])
def test_an_empty_path_setting_means_unset_not_the_working_directory(
        name: str, clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``PENNY_SPOOL_DIR=`` spooled paid calls into the folder Penny started in (``.``), where a start
    from elsewhere never looked; the file settings said ". does not exist or is not a file"."""
    (clean_env / ".env").write_text(f"{name}=\n")
    settings = load_settings()
    assert getattr(settings, name.removeprefix("PENNY_").lower()) is None
    assert settings.spool_directory() != Path(".")


def test_an_output_cap_no_model_could_reach_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 30-digit cap passed penny check; every call then carried it to the provider and reserved it."""
    monkeypatch.setenv("PENNY_MAX_OUTPUT_TOKENS", "9" * 30)
    assert "PENNY_MAX_OUTPUT_TOKENS: Input should be less than or equal to 1000000" in _error()
    monkeypatch.setenv("PENNY_MAX_OUTPUT_TOKENS", "1000000")
    assert load_settings().max_output_tokens == 1_000_000


def test_a_spool_dir_that_is_a_file_is_refused_by_name(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every paid call it had to hold waited in memory only (lost at exit), while penny check and
    ledger replay said nothing was waiting."""
    (clean_env / "a-file").write_text("x")
    monkeypatch.setenv("PENNY_SPOOL_DIR", str(clean_env / "a-file"))
    assert f"PENNY_SPOOL_DIR: {clean_env / 'a-file'} cannot be the spool folder: it is a file" in _error()
    monkeypatch.setenv("PENNY_SPOOL_DIR", str(clean_env / "a-file" / "spool"))
    assert f"cannot be the spool folder: {clean_env / 'a-file'} is a file" in _error()
    monkeypatch.setenv("PENNY_SPOOL_DIR", str(clean_env / "new" / "spool"))  # a folder Penny creates
    assert load_settings().spool_directory() == clean_env / "new" / "spool"


def test_an_unpriced_model_is_reported_with_every_other_problem_even_without_a_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PENNY_CHAT_MODEL", "gpt-imaginary-9")
    monkeypatch.setenv("PENNY_EMBEDDING_MODEL", "gpt-4o")  # priced, but a chat model
    monkeypatch.setenv("PENNY_EMBEDDER", "openai:embed-imaginary")
    monkeypatch.setenv("PENNY_REQUESTS_PER_MINUTE", "-1")
    message = _error()
    assert "PENNY_CHAT_MODEL: No price for model 'gpt-imaginary-9'" in message
    assert "PENNY_PRICE_FILE" in message  # says how to price it
    assert "PENNY_EMBEDDING_MODEL: Model 'gpt-4o' is a chat model, not an embedding model" in message
    assert "PENNY_EMBEDDER: No price for model 'embed-imaginary'" in message
    assert "PENNY_REQUESTS_PER_MINUTE:" in message


def test_a_model_priced_in_the_price_file_is_accepted(clean_env: Path) -> None:
    prices = clean_env / "prices.json"
    prices.write_text('{"models": {"gpt-imaginary-9": {"kind": "chat", "input": "1", "output": "2"}}}')
    assert load_settings(price_file=prices, chat_model="gpt-imaginary-9").chat_model == "gpt-imaginary-9"


def test_a_price_file_that_does_not_parse_is_one_problem_among_the_others(clean_env: Path) -> None:
    prices = clean_env / "prices.json"
    prices.write_text('{"models": {"gpt-x": {"kind": "chat", "input": "-1", "output": "2"}}}')
    message = _error(price_file=prices, chat_model="gpt-x", requests_per_minute=-1)
    assert "PENNY_PRICE_FILE: Price file" in message and "must not be negative" in message
    assert "PENNY_REQUESTS_PER_MINUTE:" in message
    assert "PENNY_CHAT_MODEL" not in message  # not priced against a table that does not load


def test_secret_never_appears_in_str_repr_or_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("PENNY_STORE_URL", "redis://:hunter2pass@redis.internal:6379/0")
    s = load_settings()
    for text in (str(s), repr(s), str(s.openai_api_key), repr(s.model_dump())):
        assert SECRET not in text
    assert "hunter2pass" not in repr(s)
    assert "hunter2pass" not in str(s)
    assert "redis://:***@redis.internal:6379/0" in repr(s)
    assert s.store_url == "redis://:hunter2pass@redis.internal:6379/0"  # the value itself is intact

    monkeypatch.setenv("PENNY_METRICS_PORT", "99999")
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    assert SECRET not in str(info.value)
    assert "hunter2pass" not in str(info.value)
    # The chained pydantic error hides inputs too, so a traceback does not leak them either.
    assert SECRET not in str(info.value.__cause__)
    assert "hunter2pass" not in str(info.value.__cause__)


def test_env_var_names() -> None:
    assert env_var("requests_per_minute") == "PENNY_REQUESTS_PER_MINUTE"
    assert env_var("openai_api_key") == "OPENAI_API_KEY"
    assert env_var("openai_base_url") == "OPENAI_BASE_URL"


def test_micros_is_exact() -> None:
    assert micros(Decimal("0.000001")) == 1
    assert micros(Decimal("5.00")) == 5_000_000
    assert micros(Decimal("1234.567891")) == 1_234_567_891
    with pytest.raises(ValueError, match="micro-dollars"):
        micros(Decimal("0.0000005"))
