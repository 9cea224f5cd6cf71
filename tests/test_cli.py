"""The ``penny`` command line, end to end: real settings from the environment and ``.env``, a real
SQLite file, and the fake OpenAI server over loopback HTTP.

Every test runs in its own empty directory with every ``PENNY_*`` / ``OPENAI_*`` variable cleared,
so neither the developer's shell nor a stray ``.env`` can leak in.
"""

from __future__ import annotations

import getpass
import io
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot.cli import main
from proxy_core.money import format_usd
from proxy_core.stores import store_from_url
from proxy_core.stores.base import UsageSummary
from tests.fake_openai import FakeOpenAI, Fault

REPO = Path(__file__).resolve().parents[1]
SECRET_KEY = "sk-test-DoNotEchoMe-0123456789"
QUESTION = "How do I deploy?"
WORKSPACE = "local"


@pytest.fixture(autouse=True)
def isolated(cli_env: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """``cli_env``, with the example handbook as the docs folder."""
    monkeypatch.setenv("PENNY_DOCS_DIR", str(REPO / "examples" / "docs"))
    return cli_env


@pytest.fixture
def fake(fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> FakeOpenAI:
    """The shared fake OpenAI, which the ``penny`` command finds through its environment."""
    monkeypatch.setenv("OPENAI_API_KEY", SECRET_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
    return fake


def penny(*argv: str, stdin: str = "") -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), stdout=out, stdin=io.StringIO(stdin))
    return code, out.getvalue()


def created(store_url: str) -> None:
    """The store made, as by a first ``penny run``: commands that only read refuse a missing one."""
    store = store_from_url(store_url)
    try:
        store.ping()
    finally:
        store.close()


def ledger(store_url: str, user: str | None = None) -> UsageSummary:
    """Today's (UTC) usage straight from the store the CLI wrote to."""
    today = datetime.now(UTC).date().isoformat()
    store = store_from_url(store_url)
    try:
        return store.usage(WORKSPACE, today, today, user)
    finally:
        store.close()


# -- check ---------------------------------------------------------------------------------------


def test_check_without_api_key_warns_of_extractive_answers_and_exits_0(isolated: str) -> None:
    code, out = penny("check")
    assert code == 0  # extractive answers are a supported mode; no store yet is a first run's state
    path = isolated.removeprefix("sqlite:///")
    assert f"store       sqlite: none yet at {path}; penny run, penny proxy or penny index creates it" in out
    assert not Path(path).exists()  # a check creates nothing: a mistyped path must not become a store
    created(isolated)
    assert "store       sqlite ok" in penny("check")[1]
    assert "warning     OPENAI_API_KEY is not set: Penny answers extractively" in out
    assert "https://platform.openai.com/api-keys" in out and "penny demo" in out
    # The embedder that runs, not an OpenAI model no call uses.
    assert "embeddings  local:wordllama (bundled, runs here: $0)" in out and "text-embedding" not in out


def test_check_names_an_openai_embedder_as_billed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PENNY_EMBEDDER", "openai:text-embedding-3-large")
    _, out = penny("check")
    assert "embeddings  openai:text-embedding-3-large (priced, billed to the asker)" in out


def test_check_with_api_key_exits_0(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET_KEY)
    code, out = penny("check")
    assert code == 0
    assert "OPENAI_API_KEY is set" in out
    assert "gpt-4.1-mini (priced)" in out
    assert SECRET_KEY not in out


def test_check_says_what_the_docs_index_holds_and_what_would_stop_a_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PENNY_DOCS_DIR", str(tmp_path / "no-such-docs"))
    code, out = penny("check")
    assert code == 1 and "problem     PENNY_DOCS_DIR: " in out and "is not a directory, and the index is empty" in out
    monkeypatch.setenv("PENNY_DOCS_DIR", str(REPO / "examples" / "docs"))
    assert penny("index", str(REPO / "examples" / "docs"))[0] == 0
    code, out = penny("check")
    assert code == 0 and "passages indexed (version 1, local:wordllama)" in out and "problem" not in out
    monkeypatch.setenv("PENNY_EMBEDDER", "local:wordllama?dims=64")  # every question would fail
    code, out = penny("check")
    assert code == 1 and "problem     PENNY_EMBEDDER is 'local:wordllama?dims=64', but the index was built" in out
    monkeypatch.delenv("PENNY_EMBEDDER")
    monkeypatch.setenv("PENNY_DOCS_LINK_ROOTS", f"{REPO}, {tmp_path / 'no-such-src'}")
    code, out = penny("check")
    assert code == 1 and f"problem     PENNY_DOCS_LINK_ROOTS: {tmp_path / 'no-such-src'} is not a directory" in out


def test_check_warns_of_a_setting_name_that_is_a_typo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ignored in silence, ``PENNY_USER_DAILY_BUDGET=1`` leaves a cost-control tool with no budget."""
    (tmp_path / ".env").write_text("PENNY_USER_DAILY_BUDGET=1\n")
    monkeypatch.setenv("PENNY_CHAT_MODLE", "gpt-4o")
    monkeypatch.setenv("PENNY_KEY", "pk-not-a-setting-and-not-like-one")
    code, out = penny("check")
    assert code == 0
    assert ("warning     PENNY_USER_DAILY_BUDGET is not a setting and is ignored; did you mean "
            "PENNY_USER_DAILY_BUDGET_USD?") in out
    assert "PENNY_CHAT_MODLE is not a setting and is ignored; did you mean PENNY_CHAT_MODEL?" in out
    assert "PENNY_KEY" not in out


def test_every_other_command_warns_of_a_setting_name_that_is_a_typo_on_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``penny run`` with ``PENNY_USER_DAILY_BUDGET=1`` would run with no budget at all, unsaid."""
    (tmp_path / ".env").write_text("PENNY_USER_DAILY_BUDGET=1\n")
    code, out = penny("prices")
    assert code == 0 and "PENNY_USER_DAILY_BUDGET" not in out  # the report itself stays clean
    assert capsys.readouterr().err == ("penny: warning: PENNY_USER_DAILY_BUDGET is not a setting and is ignored; "
                                       "did you mean PENNY_USER_DAILY_BUDGET_USD?\n")


def test_check_reads_the_key_from_dotenv(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(f"OPENAI_API_KEY={SECRET_KEY}\n")
    code, out = penny("check")
    assert code == 0
    assert "OPENAI_API_KEY is set" in out


def test_empty_key_in_dotenv_counts_as_missing(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("OPENAI_API_KEY=\n")
    code, out = penny("check")
    assert code == 0
    assert "OPENAI_API_KEY is not set" in out


# -- configuration errors ------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["check"], ["ask", QUESTION], ["usage"], ["prices"], ["run"]])
def test_invalid_settings_name_each_variable_in_one_message(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET_KEY)
    monkeypatch.setenv("PENNY_REQUESTS_PER_MINUTE", "-1")
    monkeypatch.setenv("PENNY_STORE_URL", "ftp://admin:hunter2@x")
    code, out = penny(*argv)
    err = capsys.readouterr().err
    assert code == 2
    assert out == ""
    assert err.count("penny: configuration error") == 1
    assert "PENNY_REQUESTS_PER_MINUTE" in err
    assert "PENNY_STORE_URL: unknown store scheme 'ftp'" in err
    assert "Traceback" not in err
    for secret in (SECRET_KEY, "hunter2"):
        assert secret not in err


def test_bad_store_scheme_in_dotenv_is_reported_with_the_other_problems(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("PENNY_STORE_URL")
    (tmp_path / ".env").write_text("PENNY_STORE_URL=ftp://x\nPENNY_MAX_OUTPUT_TOKENS=0\n")
    code, _ = penny("check")
    err = capsys.readouterr().err
    assert code == 2
    assert "PENNY_MAX_OUTPUT_TOKENS" in err
    assert "PENNY_STORE_URL" in err


def test_only_a_bad_store_scheme_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PENNY_STORE_URL", "ftp://x")
    code, _ = penny("check")
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("PENNY_STORE_URL") == 1
    assert "Traceback" not in err


def test_an_unpriced_chat_model_without_a_key_is_reported_with_the_other_problems(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PENNY_CHAT_MODEL", "gpt-imaginary-9")
    monkeypatch.setenv("PENNY_MAX_OUTPUT_TOKENS", "0")
    code, out = penny("check")
    err = capsys.readouterr().err
    assert code == 2 and out == ""
    assert "PENNY_CHAT_MODEL: No price for model 'gpt-imaginary-9'" in err
    assert "PENNY_MAX_OUTPUT_TOKENS" in err


def test_ask_without_api_key_answers_extractively_at_no_cost(isolated: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = penny("ask", QUESTION)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("penny> I can't ask the LLM right now (no OPENAI_API_KEY)")
    assert any(line.strip().startswith("[1] ") for line in lines)
    assert lines[-1].strip().startswith("extractive answer: OPENAI_API_KEY is not set")
    assert "$0" in lines[-1]
    assert ledger(isolated).totals.requests == 0
    assert "Traceback" not in capsys.readouterr().err


# -- ask -----------------------------------------------------------------------------------------


def test_ask_prints_answer_sources_and_cost_then_serves_the_cache(fake: FakeOpenAI, isolated: str) -> None:
    code, out = penny("ask", QUESTION, "--user", "U1")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"penny> Answer to: {QUESTION}"
    sources = [line.strip() for line in lines[1:-1]]
    assert sources and all(line.startswith("[") for line in sources)
    assert any("deploying" in line for line in sources)  # the handbook page that answers it
    spent = ledger(isolated, "U1").totals
    assert spent.cost_micros > 0
    tokens = spent.prompt_tokens + spent.completion_tokens
    assert lines[-1].strip() == f"gpt-4.1-mini · {tokens:,} tokens · {format_usd(spent.cost_micros)}"

    code, out = penny("ask", QUESTION, "--user", "U1")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"penny> Answer to: {QUESTION}"
    assert lines[-1] == f"       cached (same question), saved {format_usd(spent.cost_micros)}"
    assert fake.count("chat") == 1

    code, out = penny("ask", QUESTION, "--user", "U1", "--fresh")
    assert code == 0
    assert "cached" not in out
    assert "gpt-4.1-mini ·" in out
    assert fake.count("chat") == 2


def test_ask_prints_the_answer_as_it_is_written_and_starts_over_when_it_breaks_off(
    fake: FakeOpenAI, isolated: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PENNY_RETRY_BASE_S", "0")  # retry at once
    fake.script(Fault.stream_break(2))  # the first attempt breaks after "Answer to: "
    code, out = penny("ask", QUESTION, "--user", "U1")
    assert code == 0
    lines = out.splitlines()
    assert lines[:3] == [
        "penny> Answer to: ",
        "       (the answer broke off; starting over)",
        f"penny> Answer to: {QUESTION}",
    ]
    assert lines[-1].startswith("       gpt-4.1-mini · ")
    assert fake.count("chat") == 2 and fake.last("chat").body["stream"] is True
    assert ledger(isolated, "U1").totals.requests == 1


def test_a_question_the_docs_do_not_cover_costs_nothing(fake: FakeOpenAI, isolated: str) -> None:
    code, out = penny("ask", "What's the capital of Peru?")
    assert code == 0
    assert out.startswith("penny> I couldn't find this in the docs.")
    assert "no LLM call · $0" in out
    assert fake.count() == 0


def test_budget_refusal_exits_1_and_sends_nothing_upstream(
    fake: FakeOpenAI, isolated: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PENNY_USER_DAILY_BUDGET_USD", "0.000001")
    code, out = penny("ask", QUESTION, "--user", "U1")
    err = capsys.readouterr().err
    assert code == 1
    # A micro-dollar a day holds no question's worst case: no reset helps, and the asker is told so.
    assert out.startswith("penny> This request could cost up to $")
    assert "more than the whole daily budget of $0.000001: it would not fit even after the budget resets at" in out
    assert "Ask your Penny admin for a larger budget." in out
    assert "Traceback" not in err
    assert fake.count() == 0
    assert ledger(isolated).totals.requests == 0


def test_upstream_failure_exits_1_and_charges_nothing(
    fake: FakeOpenAI, isolated: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PENNY_RETRY_MAX_ATTEMPTS", "1")
    fake.fail_all(503)
    code, out = penny("ask", QUESTION)
    captured = capsys.readouterr()
    assert code == 1
    assert out.startswith("penny> The LLM provider did not answer; nothing was charged.")
    assert "HTTP 503" in captured.err  # the detail, for the operator: in the log, never in the answer
    assert "Traceback" not in captured.err
    assert SECRET_KEY not in out + captured.err
    assert fake.count("chat") == 1
    assert ledger(isolated).totals.cost_micros == 0


# -- usage ---------------------------------------------------------------------------------------


def test_usage_json_matches_the_ledger(fake: FakeOpenAI, isolated: str) -> None:
    assert penny("ask", QUESTION, "--user", "alice")[0] == 0
    assert penny("ask", QUESTION, "--user", "bob")[0] == 0  # the workspace shares the cache
    assert fake.count("chat") == 1

    code, out = penny("usage", "--json", "--user", "alice")
    assert code == 0
    report = json.loads(out)
    assert set(report) == {"today", "this month"}
    alice = ledger(isolated, "alice").totals
    today = report["today"]["totals"]
    assert (today["requests"], today["cost_micros"], today["saved_micros"]) == (
        alice.requests, alice.cost_micros, alice.saved_micros,
    )
    assert (alice.requests, alice.saved_micros) == (1, 0)
    assert set(report["today"]["by_user"]) == {"alice"}

    code, out = penny("usage", "--json", "--all-users")
    assert code == 0
    report = json.loads(out)
    every = ledger(isolated)
    assert every.totals.requests == 2
    assert every.totals.saved_micros == every.totals.cost_micros > 0
    for label in ("today", "this month"):
        totals = report[label]["totals"]
        assert (totals["requests"], totals["cost_micros"], totals["saved_micros"]) == (
            every.totals.requests, every.totals.cost_micros, every.totals.saved_micros,
        )
        assert totals["hit_rate"] == 0.5
        by_user = report[label]["by_user"]
        assert set(by_user) == {"alice", "bob"}
        for user, row in by_user.items():
            expected = every.by_user[user]
            assert (row["requests"], row["cost_micros"], row["saved_micros"]) == (
                expected.requests, expected.cost_micros, expected.saved_micros,
            )


def test_usage_text_shows_dollar_totals(fake: FakeOpenAI, isolated: str) -> None:
    assert penny("ask", QUESTION, "--user", "alice")[0] == 0
    assert penny("ask", QUESTION, "--user", "alice")[0] == 0
    spent = ledger(isolated, "alice").totals

    code, out = penny("usage", "--user", "alice")
    assert code == 0
    assert "today — alice in local" in out
    assert f"2 requests · {spent.prompt_tokens + spent.completion_tokens:,} tokens" in out
    assert f"{format_usd(spent.cost_micros)} spent · cache 50% hits, saved {format_usd(spent.saved_micros)}" in out

    code, out = penny("usage", "--all-users", "--days", "7")
    assert code == 0
    assert "last 7 days — all users in local" in out
    assert "user alice" in out


def test_usage_lists_users_by_spend_then_by_id(fake: FakeOpenAI) -> None:
    for user in ("zed", "bob", "amy"):  # zed pays; bob and amy are served from the cache for $0
        assert penny("ask", QUESTION, "--user", user)[0] == 0
    code, out = penny("usage", "--all-users")
    assert code == 0
    today = out.split("this month")[0]
    assert [line.split()[1] for line in today.splitlines() if line.startswith("  user ")] == ["zed", "amy", "bob"]


def test_usage_counts_one_request_in_the_singular(fake: FakeOpenAI) -> None:
    assert penny("ask", QUESTION, "--user", "alice")[0] == 0
    code, out = penny("usage", "--user", "alice", "--days", "1")
    assert code == 0
    assert "last 1 day — alice in local" in out and "  1 request · " in out and "1 requests" not in out


@pytest.mark.parametrize(("days", "why"), [("-3", "from 1 to 36600 days, not -3"),
                                          ("0", "from 1 to 36600 days, not 0"),
                                          ("1000000", "from 1 to 36600 days, not 1000000"),
                                          ("three", "a whole number of days, not 'three'")])
def test_usage_refuses_days_below_one_or_past_a_century(days: str, why: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as refused:
        penny("usage", "--days", days)
    assert refused.value.code == 2
    assert f"penny usage: error: argument --days: {why}" in capsys.readouterr().err


def test_usage_on_an_empty_ledger_is_zero(isolated: str) -> None:
    created(isolated)
    code, out = penny("usage", "--user", "nobody")
    assert code == 0
    assert "0 requests · 0 tokens · $0 spent · cache 0% hits, saved $0" in out


# -- run, prices ---------------------------------------------------------------------------------


def test_run_answers_each_line_until_an_empty_one(fake: FakeOpenAI) -> None:
    code, out = penny("run", stdin=f"{QUESTION}\n\nnever asked\n")
    assert code == 0
    # Without Slack tokens it says exactly what is missing and where to get it, then chats.
    assert "SLACK_BOT_TOKEN=xoxb-" in out and "SLACK_APP_TOKEN=xapp-" in out
    assert "https://api.slack.com/apps" in out
    assert out.count("penny> ") == 1
    assert f"penny> Answer to: {QUESTION}" in out
    assert fake.count("chat") == 1


def test_run_over_http_without_the_signing_secret_exits_2_naming_it(fake: FakeOpenAI,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, out = penny("run", "--http", stdin="")
    assert code == 2  # a server has no terminal to fall back to
    err = capsys.readouterr().err
    assert "SLACK_SIGNING_SECRET=" in err and "SLACK_APP_TOKEN" not in err
    assert "terminal chat" not in out


def test_run_without_any_key_chats_extractively() -> None:
    code, out = penny("run", stdin=f"{QUESTION}\n")
    assert code == 0
    assert "answers are extractive" in out
    assert "no OPENAI_API_KEY" in out


def test_run_stops_at_end_of_input(fake: FakeOpenAI) -> None:
    code, out = penny("run", stdin=QUESTION)
    assert code == 0
    assert f"penny> Answer to: {QUESTION}" in out
    assert fake.count("chat") == 1
    assert out.endswith("you> \n")  # Ctrl-D: the shell's prompt starts on a line of its own


@pytest.mark.parametrize("word", ["exit", "quit", "  Quit ", "EXIT", ":q", "/quit", "exit()"])
def test_run_ends_the_chat_on_exit_or_quit(fake: FakeOpenAI, word: str) -> None:
    code, out = penny("run", stdin=f"{QUESTION}\n{word}\nnever asked\n")
    assert code == 0
    assert "exit, quit, an empty line or Ctrl-D ends the chat" in out
    assert f"penny> Answer to: {QUESTION}" in out and "never asked" not in out
    assert out.count("penny> ") == 1 and fake.count("chat") == 1  # the word was not searched as a question


def test_run_still_answers_questions_that_mention_exit() -> None:
    code, out = penny("run", stdin="how do I exit the VPN?\nquit\n")
    assert code == 0 and out.count("penny> ") == 1


def test_prices_lists_the_default_model() -> None:
    code, out = penny("prices")
    assert code == 0
    assert out.startswith("price table ")
    assert any(line.split()[:1] == ["gpt-4.1-mini"] for line in out.splitlines())


def test_default_user_survives_a_missing_login(monkeypatch: pytest.MonkeyPatch, isolated: str) -> None:
    created(isolated)
    def no_login() -> str:
        raise OSError("no login name")  # what getpass does for a uid without a passwd entry

    monkeypatch.setattr(getpass, "getuser", no_login)
    code, out = penny("usage")
    assert code == 0
    assert "today — cli:local in local" in out


# -- a closed stdout pipe --------------------------------------------------------------------------


def test_closed_pipe_ends_quietly_in_process() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    with open(write_end, "w", buffering=1) as out:  # line-buffered: the first line hits the pipe
        assert main(["prices"], stdout=out) == 1
    # Closing flushed whatever was left into devnull instead of raising.


def test_closed_pipe_ends_quietly_as_a_program(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # like `penny prices | head -0`: nobody will read
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # output stays buffered
    env["PYTHONPATH"] = str(REPO)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "bot.cli", "prices"],
            stdout=write_end, stderr=subprocess.PIPE, cwd=tmp_path, env=env, timeout=60, check=False,
        )
    finally:
        os.close(write_end)
    assert proc.returncode == 1
    assert proc.stderr == b""


@pytest.mark.parametrize("argv", [["--help"], ["keys", "create", "--help"]])
def test_help_into_a_closed_pipe_ends_quietly(argv: list[str], tmp_path: Path) -> None:
    """``penny --help | head -3``: argparse prints to sys.stdout and exits, and the interpreter's
    last flush used to fail with "Exception ignored ... BrokenPipeError" and status 120."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env["PYTHONPATH"] = str(REPO)
    try:
        proc = subprocess.run([sys.executable, "-m", "bot.cli", *argv], stdout=write_end, stderr=subprocess.PIPE,
                              cwd=tmp_path, env=env, timeout=60, check=False)
    finally:
        os.close(write_end)
    assert (proc.returncode, proc.stderr) == (1, b"")


def test_output_that_cannot_be_written_is_said_on_stderr_without_a_traceback(tmp_path: Path) -> None:
    """``penny prices > /dev/full`` (a full disk) died with an OSError traceback; with stdout closed
    (``>&-``) Python has no sys.stdout, so each command printed nothing and then died on
    ``None.flush()``: ``keys create`` after storing a key nobody was shown. No stdin at all (``0<&-``)
    is the end of the terminal chat's input, as ``</dev/null`` is, not an AttributeError."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("PENNY_", "OPENAI_", "SLACK_"))},
           "PYTHONPATH": str(REPO), "PENNY_STORE_URL": f"sqlite:///{tmp_path / 'penny.db'}",
           "PENNY_DOCS_DIR": str(REPO / "examples" / "docs")}

    def run(argv: list[str], **streams: object) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([sys.executable, "-m", "bot.cli", *argv], stderr=subprocess.PIPE, cwd=tmp_path,
                              env=env, timeout=120, check=False, **streams)  # type: ignore[call-overload]

    with open("/dev/full", "wb") as full:
        proc = run(["prices"], stdout=full)
    assert proc.returncode == 1 and b"Traceback" not in proc.stderr
    assert b"penny: could not write the output: No space left on device" in proc.stderr
    proc = run(["keys", "create", "--user", "U1"], preexec_fn=lambda: os.close(1))
    assert proc.returncode == 1 and b"Traceback" not in proc.stderr
    assert b"penny: standard output is closed" in proc.stderr
    assert not (tmp_path / "penny.db").exists()  # refused before anything was made
    proc = run(["run"], stdin=None, stdout=subprocess.PIPE, preexec_fn=lambda: os.close(0))
    assert proc.returncode == 0 and b"Traceback" not in proc.stderr and b"you> " in proc.stdout


def test_ctrl_c_while_the_command_is_still_loading_ends_it_quietly(tmp_path: Path) -> None:
    """Importing the CLI takes about a second; a Ctrl-C in it used to print a traceback. The
    interrupt is delivered deterministically here: as the import of ``bot.cli`` starts."""
    script = (
        "import sys\n"
        "class Interrupt:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'bot.cli':\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, Interrupt())\n"
        "from bot._entry import main\n"
        "sys.exit(main())\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60, check=False)
    assert (proc.returncode, proc.stderr) == (130, b"")


def test_the_penny_command_runs_through_its_quiet_entry_point() -> None:
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"penny": "bot._entry:main"}


# -- formatting ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("micros", "text"),
    [
        (0, "$0"),
        (1200, "$0.0012"),
        (34, "$0.000034"),
        (3_400_000, "$3.40"),
        (15_500, "$0.0155"),
        (500_000, "$0.50"),
        (1_234_567_890, "$1,234.57"),
        (1, "$0.000001"),
        (99, "$0.000099"),
        (100, "$0.0001"),
        (150, "$0.0002"),  # half up, the same at every size
        (250, "$0.0003"),
        (999_999, "$1.00"),
        (1_005_000, "$1.01"),
        (-3_400_000, "-$3.40"),
    ],
)
def test_format_usd(micros: int, text: str) -> None:
    assert format_usd(micros) == text


def test_a_refusal_with_money_left_never_shows_the_budget_as_spent() -> None:
    from proxy_core.errors import BudgetExceeded

    # $4.999999 of $5 is not used up: rounded half up it read "$5.00 spent" beside "too little left".
    short = str(BudgetExceeded("daily", 5_000_000, 4_999_999, 1_767_312_000.0))
    assert "budget of $5.00 has too little left for this request ($4.99 spent or reserved)" in short
    gone = str(BudgetExceeded("daily", 5_000_000, 5_004_999, 1_767_312_000.0))
    assert "budget of $5.00 is used up ($5.00 spent or reserved)" in gone


# -- cache ---------------------------------------------------------------------------------------

PAIRS = [
    {"a": "How do I start the dev server?", "b": "How do I stop the dev server?", "label": 0},
    {"a": "Where are the production logs?", "b": "Where can I find the production logs?", "label": 1},
    {"a": "How do I deploy?", "b": "how do I deploy", "label": 1},
    {"a": "Is lunch provided on Fridays?", "b": "Is lunch not provided on Fridays?", "label": 0},
]


def _pairs_file(tmp_path: Path) -> Path:
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(p) for p in PAIRS) + "\n")
    return path


def test_cache_eval_reports_the_production_decision_on_labelled_pairs(tmp_path: Path) -> None:
    code, out = penny("cache", "eval", str(_pairs_file(tmp_path)), "--json")
    assert code == 0
    report = json.loads(out)
    assert (report["pairs"], report["positives"], report["negatives"]) == (4, 2, 2)
    assert report["false_hits"] == 0  # stop/start and the negation are refused
    assert report["true_hits"] == 2 and report["recall"] == 1.0 and report["precision"] == 1.0
    # the default decision is the calibrated one, at the embedder's default budget, next to plain cosine
    assert report["policy"].startswith("calibrated") and report["max_wrong"] == 0.15
    assert report["expected_wrong"] is not None and report["measured_wrong"] == 0.0
    assert report["baseline_precision_at_recall"] is not None and report["lift"] is not None
    assert report["curve"] and report["baseline_curve"]
    code, text = penny("cache", "eval", str(_pairs_file(tmp_path)), "--threshold", "0.99")
    assert code == 0 and "decision: cos >= 0.99 + guard" in text and "plain cosine, same recall" in text
    code, text = penny("cache", "eval", str(_pairs_file(tmp_path)), "--max-wrong", "0.2")
    assert code == 0 and "wrong hits: at most 20.0% allowed" in text


def test_cache_eval_takes_the_budget_from_the_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PENNY_CACHE_MAX_WRONG", "0.05")
    code, out = penny("cache", "eval", str(_pairs_file(tmp_path)), "--json")
    assert code == 0 and json.loads(out)["max_wrong"] == 0.05
    assert penny("cache", "eval", str(_pairs_file(tmp_path)), "--max-wrong", "1.5")[0] == 2
    assert "--max-wrong must be in (0, 1)" in capsys.readouterr().err


def test_cache_eval_with_an_openai_embedder_is_billed_through_the_gateway(tmp_path: Path, fake: FakeOpenAI,
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          isolated: str) -> None:
    monkeypatch.setenv("PENNY_EMBEDDER", "openai:text-embedding-3-small?dimensions=64")
    code, out = penny("cache", "eval", str(_pairs_file(tmp_path)), "--json", "--user", "evaluator")
    assert code == 0, out
    assert json.loads(out)["pairs"] == 4
    assert fake.count("embeddings") >= 1
    spent = ledger(isolated, "evaluator")
    assert spent.totals.requests >= 1 and spent.by_model["text-embedding-3-small"].cost_micros > 0


def test_an_openai_embedder_indexes_the_docs_and_searches_them_billed_through_the_gateway(
    fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch, isolated: str, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PENNY_EMBEDDER", "openai:text-embedding-3-small?dimensions=64")
    code, out = penny("index", str(REPO / "examples" / "docs"))
    assert code == 0, capsys.readouterr().err
    assert "embedded" in out and "version 1" in out
    indexing = fake.count("embeddings")
    assert indexing >= 3  # the handbook's passages, in batches
    store = store_from_url(isolated)
    try:
        today = datetime.now(UTC).date().isoformat()
        paid = store.usage("penny", today, today, "penny:index")  # the docs' embeddings, in the ledger
    finally:
        store.close()
    assert paid.totals.requests == indexing and paid.by_model["text-embedding-3-small"].cost_micros > 0

    code, out = penny("ask", "Where are the production logs?", "--user", "asker")
    assert code == 0
    assert "logs-and-observability" in out  # found through the API's embeddings (and keywords)
    asked = ledger(isolated, "asker")
    assert asked.by_model["text-embedding-3-small"].requests >= 1  # the question's search, billed to its asker
    assert fake.count("chat") == 1

    # The provider fails the next question's embedding: a clear refusal with the closest pages
    # (by keywords), nothing charged, no traceback.
    fake.script(*[Fault.status(400)] * 3, endpoint="embeddings")
    code, out = penny("ask", "How do I rotate the on-call schedule?", "--user", "asker")
    assert code == 1  # a refused answer
    assert "nothing was charged" in out and "engineering/on-call.md" in out
    assert fake.count("chat") == 1


def test_a_rate_limited_index_batch_waits_as_told_and_goes_on(
    fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch, isolated: str
) -> None:
    from bot.service import index_docs
    from proxy_core.clock import ManualClock
    from proxy_core.gateway import Gateway
    from proxy_core.settings import PennySettings
    from proxy_core.stores.sqlite import SqliteStore
    from proxy_core.upstream import OpenAIUpstream

    clock = ManualClock()  # the store's clock too: the waits refill the bucket
    settings = PennySettings(embedder="openai:text-embedding-3-small?dimensions=64", tokens_per_minute=20_000,
                             token_burst=20_000)
    store = SqliteStore(Path(isolated.removeprefix("sqlite:///")), clock=clock)
    gateway = Gateway(settings, store=store, clock=clock, wall=clock, sleep=clock.sleep,
                      upstream=OpenAIUpstream(api_key=SECRET_KEY, base_url=fake.base_url, timeout_s=5))
    try:
        report = index_docs(settings, gateway.store, REPO / "examples" / "docs", gateway=gateway)
    finally:
        gateway.close()
    assert report.passages > 0 and report.embedded == report.passages
    assert clock.sleeps and all(s > 0 for s in clock.sleeps)  # the limiter's retry_after, waited out
    assert fake.count("embeddings") >= 2


def test_cache_eval_rejects_a_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": "x"}\n')
    assert penny("cache", "eval", str(bad))[0] == 2
    # The README's handbook questions are no pairs: the message says what a line must hold.
    assert penny("cache", "eval", str(REPO / "examples" / "paraphrases.jsonl"))[0] == 2
    err = capsys.readouterr().err
    assert 'paraphrases.jsonl:1: each line is {"a": "a question", "b": "another", "label": 1}' in err
    assert "it has no 'a' (its keys: question, paraphrase_of, page)" in err
    assert penny("cache", "eval", str(tmp_path / "missing.jsonl"))[0] == 2
    (tmp_path / "empty.jsonl").write_text("")  # was a report of nothing, every rate 0%, and exit 0
    assert penny("cache", "eval", str(tmp_path / "empty.jsonl"))[0] == 2
    err = capsys.readouterr().err
    assert "empty.jsonl: no pairs to evaluate" in err and "Traceback" not in err


def test_cache_stats_and_clear(fake: FakeOpenAI) -> None:
    assert penny("ask", QUESTION)[0] == 0
    code, out = penny("cache", "stats")
    assert code == 0 and out.startswith("1 cached answer ·")
    code, out = penny("cache", "clear")
    assert code == 0 and "removed 1 cached answer in total" in out
    assert penny("cache", "stats")[1].startswith("0 cached answers")
    penny("ask", QUESTION)
    assert fake.count("chat") == 2


def test_cache_stats_and_clear_count_and_clear_the_exact_cache_too(fake: FakeOpenAI,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PENNY_SEMANTIC_CACHE", "false")
    assert penny("ask", QUESTION)[0] == 0
    assert penny("ask", QUESTION)[0] == 0
    assert fake.count("chat") == 1  # served from the exact cache
    code, out = penny("cache", "stats")
    assert code == 0 and out.startswith("1 cached answer · exact only")
    code, out = penny("cache", "clear")
    assert code == 0 and "removed 1 cached answer in total" in out
    penny("ask", QUESTION)
    assert fake.count("chat") == 2


def test_feedback_lists_votes_per_page_and_user(isolated: str) -> None:
    from bot.feedback import record_feedback

    store = store_from_url(isolated)
    try:
        record_feedback(store, "T1", "ev1", "U1", up=True, pages=["a.md", "b.md"], at=0.0)
        record_feedback(store, "T1", "ev1", "U2", up=False, pages=["a.md", "b.md"], at=0.0)
        record_feedback(store, "T2", "ev9", "U3", up=False, pages=["c.md"], at=0.0)
    finally:
        store.close()
    code, out = penny("feedback", "--workspace", "T1", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["total"] == {"up": 1, "down": 1}
    assert report["by_page"] == {"a.md": {"up": 1, "down": 1}, "b.md": {"up": 1, "down": 1}}
    assert set(report["by_user"]) == {"U1", "U2"}
    code, out = penny("feedback", "--workspace", "T1")
    assert code == 0 and "👍 1 · 👎 1" in out and "a.md" in out


@pytest.mark.parametrize(("argv", "why"), [
    (["proxy", "--port", "99999"], "argument --port: a port from 0 to 65535, not 99999"),
    (["run", "--http", "--port", "-1"], "argument --port: a port from 0 to 65535, not -1"),
    (["keys", "create", "--user", " "], "argument --user: must not be empty"),
    (["cost", "--user", ""], "argument --user: must not be empty"),  # was a report on nobody
    (["usage", "--workspace", " "], "argument --workspace: must not be empty"),
    (["keys", "create", "--user", "U1", "--daily-budget-usd", "1e999"], "at most 1,000,000,000 USD, not 1e999"),
    # was "invalid _seconds value", naming a function of Penny's rather than what a value must be
    (["run", "--stop-timeout", "abc"], "argument --stop-timeout: a number of seconds, not 'abc'"),
    # was the working directory: `penny index "$DOCS"` with DOCS unset replaced the index with its files
    (["index", ""], "argument DIR: must name the docs folder, not be empty"),
    (["keys", "revoke", " "], "argument ID: must not be empty"),  # was "penny: no key   (see penny keys list)"
])
def test_out_of_range_arguments_are_refused_by_name(argv: list[str], why: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as refused:
        penny(*argv)
    assert refused.value.code == 2 and why in capsys.readouterr().err


@pytest.mark.parametrize(("name", "value", "why"), [
    ("OPENAI_BASE_URL", "notaurl", "must be an http(s) URL"),
    ("OPENAI_BASE_URL", "ftp://example.com/v1", "must be an http(s) URL"),
    ("PENNY_USER_DAILY_BUDGET_USD", "1e999", "less than or equal to 1000000000"),
    ("PENNY_EMBEDDER", "bogus", "'bogus': unknown embedder"),
    ("PENNY_STORE_URL", "redis://:hunter2@host:notaport/0", "its port is not a number from 0 to 65535 (host:notaport)"),
    ("PENNY_STORE_URL", "redis+cluster://h1:7000,h2:70x1", "its port is not a number from 0 to 65535 (h2:70x1)"),
    ("PENNY_EMBEDDER", "local:wordllama?dims=999", "dims must be one of 64, 128, 256"),
])
def test_settings_that_used_to_pass_check_and_fail_later_are_named_by_check(
    name: str, value: str, why: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(name, value)
    code, _ = penny("check")
    err = capsys.readouterr().err
    assert code == 2 and name in err and why in err and "Traceback" not in err


@pytest.mark.parametrize("token", ["SLACK_BOT_TOKEN", "SLACK_APP_TOKEN"])
def test_run_with_half_of_slack_set_up_exits_2_naming_what_is_missing(
    token: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not the terminal chat: under systemd or docker it would read no input and exit 0, never restarted."""
    monkeypatch.setenv(token, "xoxb-1-not-real" if token == "SLACK_BOT_TOKEN" else "xapp-1-not-real")
    code, out = penny("run")
    err = capsys.readouterr().err
    other = "SLACK_APP_TOKEN" if token == "SLACK_BOT_TOKEN" else "SLACK_BOT_TOKEN"
    assert code == 2 and "Slack is half set up" in err and other in err and "you>" not in out


def test_progress_to_a_log_is_one_line_not_a_line_of_frames() -> None:
    from bot.cli import _progress_bar

    log = io.StringIO()
    show = _progress_bar(log)
    for done in range(4):
        show(done, 3)
    assert log.getvalue() == "3/3 files\n"


def test_amounts_past_the_default_decimal_precision_are_formatted() -> None:
    assert format_usd(10**32) == "$100,000,000,000,000,000,000,000,000.00"


def test_what_is_left_of_a_budget_is_never_rounded_up_to_more_than_is_left() -> None:
    assert format_usd(4_997_300) == "$5.00" and format_usd(4_997_300, down=True) == "$4.99"
    assert format_usd(1_999, down=True) == "$0.0019" and format_usd(1_999) == "$0.002"


# Unencoded, an @ in a password still works (the host is after the last @): all of it is redacted.
@pytest.mark.parametrize("password", ["s3cret-pw", "Ab3x@Kq9Zz"])
def test_an_unreachable_store_is_named_by_its_setting_without_its_password(
    password: str, isolated: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    free_tcp_port: int,
) -> None:
    monkeypatch.setenv("PENNY_STORE_URL", f"redis://penny:{password}@127.0.0.1:{free_tcp_port}/0")
    code, _ = penny("ask", "Where are the production logs?")
    err = capsys.readouterr().err
    assert code == 1
    assert "penny: store error:" in err and "Traceback" not in err
    assert f"PENNY_STORE_URL=redis://[redacted]@127.0.0.1:{free_tcp_port}/0" in err
    assert all(part not in err for part in password.split("@"))


@pytest.mark.parametrize("url", [
    "redis://penny:Ab3x/Kq9+Zz@127.0.0.1:6379/0",  # base64 passwords carry / and +
    "redis://:Ab3x?Kq9Zz@127.0.0.1:6379/0",
    "rediss://penny:Ab3x#Kq9Zz@127.0.0.1:6380/0",
    "redis://penny:6379/Kq9Zz@127.0.0.1:6379/0",  # its first part even looks like host:port
    "redis+cluster://penny:Ab3x/Kq9Zz@h1:7000,h2:7001",
])
def test_a_redis_password_with_a_slash_question_mark_or_hash_is_named_without_echoing_it(
    url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Unencoded, / ? or # ends the URL's host part early: the password's first part was printed as a "port"."""
    monkeypatch.setenv("PENNY_STORE_URL", url)
    code, out = penny("check")
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "PENNY_STORE_URL" in err and "percent-encode" in err
    for part in ("Ab3x", "Kq9Zz"):
        assert part not in err + out


@pytest.mark.parametrize("content", [
    b"PENNY_CHAT_MODEL=gpt-4.1-mini\nOPENAI_API_KEY=sk-caf\xe9-in-latin-1\n",  # saved as Latin-1
    "OPENAI_API_KEY=sk-abc\n".encode("utf-16"),  # Windows' "Unicode"
])
def test_a_dotenv_that_is_not_utf8_is_named_with_its_line(
    content: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / ".env").write_bytes(content)
    code, _ = penny("check")
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    line = 2 if content.startswith(b"PENNY") else 1
    assert f".env: line {line} is not UTF-8 text" in err
    assert "sk-" not in err


def test_a_dotenv_line_that_cannot_be_parsed_is_named_not_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """python-dotenv skips it with a log line naming no file: the key it holds was simply not there,
    and Penny ran without it (extractive answers, with no word of why)."""
    (tmp_path / ".env").write_text(f'# Penny\nexport PENNY_LOG_JSON=false\nOPENAI_API_KEY="{SECRET_KEY}\n'
                                   "PENNY_CHAT_MODEL=gpt-4.1-mini\n", encoding="utf-8")
    code, _ = penny("check")
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and SECRET_KEY not in err
    assert ".env: line 3 cannot be read as NAME=value (an unclosed quote?)" in err


def test_a_dotenv_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(f"\ufeffOPENAI_API_KEY={SECRET_KEY}\n", encoding="utf-8")
    code, out = penny("check")
    assert code == 0 and "OPENAI_API_KEY is set" in out


@pytest.mark.parametrize(("name", "value"), [
    ("OPENAI_API_KEY", "\u201csk-test-pasted-with-its-quotes\u201d"),  # copied from a web page
    ("OPENAI_API_KEY", "sk-test-with\u00a0a-no-break-space"),
    ("SLACK_BOT_TOKEN", "xoxb-1-pasted\u2026"),
    ("SLACK_APP_TOKEN", "xapp-1-\u00e9t\u00e9"),
    ("PENNY_METRICS_TOKEN", "t\u00f6ken-for-prometheus"),
])
def test_a_key_or_token_that_cannot_go_in_an_http_header_is_named_at_start(
    name: str, value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """It used to pass every check and crash the first call to OpenAI or Slack with a UnicodeEncodeError."""
    monkeypatch.setenv(name, value)
    code, out = penny("ask", QUESTION)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"{name}: " in err and "not plain ASCII" in err
    assert value not in err + out and value[3:12] not in err + out


def test_spaces_around_a_key_are_not_part_of_it(fake: FakeOpenAI, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(f'OPENAI_API_KEY=" {SECRET_KEY} "\n')
    code, out = penny("ask", QUESTION, "--fresh")
    assert code == 0 and "$" in out


@pytest.mark.parametrize(("flag", "why"), [("--port", "in use"), ("--host", "nonexistent.invalid")])
def test_a_port_in_use_or_an_unknown_host_is_named_by_its_flag_at_once(
    flag: str, why: str, isolated: str, tmp_path: Path
) -> None:
    """gunicorn used to retry for five seconds, then exit 1 with "Can't connect to ('127.0.0.1', PORT)"."""
    import socket
    import time

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = str(taken.getsockname()[1])
        argv = ["--port", port] if flag == "--port" else ["--host", "nonexistent.invalid", "--port", "0"]
        env = {**os.environ, "PYTHONPATH": str(REPO), "OPENAI_API_KEY": SECRET_KEY}
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "bot.cli", "proxy", *argv], capture_output=True, text=True,
                              cwd=tmp_path, env=env, timeout=60, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"penny: configuration error\n{flag}" in proc.stderr and why in proc.stderr
    assert "Listening at" not in proc.stderr and time.monotonic() - started < 4


def test_an_access_log_that_cannot_be_written_is_named_by_its_flag(isolated: str, tmp_path: Path) -> None:
    """gunicorn used to stop with "Error: '…' isn't writable", naming no flag."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OPENAI_API_KEY": SECRET_KEY}
    missing = tmp_path / "no-such-dir" / "access.log"
    proc = subprocess.run([sys.executable, "-m", "bot.cli", "proxy", "--port", "0", "--access-log", str(missing)],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"penny: configuration error\n--access-log {missing}: cannot write there (No such file or directory)" \
        in proc.stderr


@pytest.mark.parametrize("argv", [
    ["proxy", "--workers", "100000"],
    ["run", "--http", "--workers", "99999999999999999999"],
])
def test_a_number_of_workers_no_machine_runs_is_refused_before_any_is_started(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """An extra zero or two used to fork that many workers, until the machine ran out of memory."""
    with pytest.raises(SystemExit) as refused:
        penny(*argv)
    err = capsys.readouterr().err
    assert refused.value.code == 2 and "argument --workers: at most" in err


@pytest.mark.parametrize(("name", "argv"), [
    ("PENNY_STORE_TIMEOUT_S", ["usage"]),
    ("PENNY_REQUEST_TIMEOUT_S", ["ask", QUESTION]),
    ("PENNY_CACHE_TTL_S", ["check"]),
])
def test_a_duration_past_what_a_clock_can_hold_is_named(
    name: str, argv: list[str], fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """1e300 seconds used to pass the settings and crash the first lock or socket wait with an OverflowError."""
    monkeypatch.setenv(name, "1e300")
    code, _ = penny(*argv)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and f"{name}: Input should be less than or equal to" in err


@pytest.mark.parametrize("path", ["/O", "/penny", "/0/1"])
def test_a_redis_database_that_is_not_a_number_is_named(
    path: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """redis-py ignores a database it cannot read as a number: Penny used database 0 in silence."""
    monkeypatch.setenv("PENNY_STORE_URL", f"redis://:s3cret-pw@127.0.0.1:6379{path}")
    code, _ = penny("check")
    err = capsys.readouterr().err
    assert code == 2 and "PENNY_STORE_URL: not a valid Redis URL: its database" in err and "s3cret-pw" not in err


UNDECODABLE = os.fsdecode(b"U\xff")  # what Python makes of argv bytes that are not UTF-8 (PEP 383)


@pytest.mark.parametrize("argv", [
    ["usage", "--user", UNDECODABLE],
    ["cost", "--team", "--workspace", UNDECODABLE],
    ["feedback", "--workspace", UNDECODABLE],
    ["cache", "clear", "--context", UNDECODABLE],
    ["keys", "revoke", f"pk-{UNDECODABLE}"],
    ["keys", "create", "--user", UNDECODABLE],
    ["keys", "create", "--user", "U1", "--models", UNDECODABLE],
    ["ask", UNDECODABLE],
])
def test_arguments_that_are_not_utf8_are_refused_by_name(argv: list[str], isolated: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Each was a UnicodeEncodeError traceback from the store or the key hash, or (keys create) a
    key billed to a user ID no Slack user has."""
    created(isolated)
    with pytest.raises(SystemExit) as refused:
        penny(*argv)
    err = capsys.readouterr().err
    assert refused.value.code == 2 and "is not UTF-8 text" in err and "LANG=C.UTF-8" in err
    assert "Traceback" not in err


def test_a_chat_line_that_is_not_utf8_is_refused_and_the_chat_goes_on(fake: FakeOpenAI) -> None:
    """In a C locale Python reads stdin's non-UTF-8 bytes as lone surrogates: the LLM request
    failed to encode and the chat ended in a traceback."""
    code, out = penny("run", stdin=f"How do I {UNDECODABLE} deploy?\n{QUESTION}\nquit\n")
    assert code == 0
    assert "penny> That line is not UTF-8 text" in out and "LANG=C.UTF-8" in out
    assert out.count("you> ") == 3 and "penny> " in out.split("Ask again.")[1]
    assert fake.count("chat") == 1  # only the question that could be sent


def test_a_store_file_that_is_no_store_is_named_with_what_to_check(isolated: str,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """The hint was for both kinds at once, and for SQLite named only the file's folder."""
    Path(isolated.removeprefix("sqlite:///")).write_bytes(b"not a database, some other file\n" * 200)
    code, _ = penny("usage")
    err = capsys.readouterr().err
    assert code == 1 and "file is not a database" in err and "Traceback" not in err
    assert "check that it names Penny's store (a SQLite file" in err and "Redis" not in err
