"""A mistyped ``sqlite:///…`` store path is refused, not made into a new empty store.

Commands that only read the store (``cost``, ``usage``, ``feedback``, ``keys list|revoke``, ``cache
stats|clear``, ``ledger replay``) exit 2 naming ``PENNY_STORE_URL`` and the path, and create
nothing; ``penny check`` reports it without creating it. Commands a team starts with create it and
say so: ``penny keys create`` in its output, ``penny run`` (and ``run --http``, ``proxy``: see their
server tests) with one ``store_created`` log line. Real CLI entry, real SQLite files.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from bot.cli import main
from proxy_core import ConfigurationError, missing_store, store_from_url

REPO = Path(__file__).resolve().parents[1]

READ_ONLY = [
    ["cost"], ["cost", "--team"], ["usage", "--all-users"], ["feedback"], ["keys", "list"],
    ["keys", "revoke", "key_0123"], ["cache", "stats"], ["cache", "clear"], ["ledger", "replay"],
]


@pytest.fixture
def typo(cli_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The real store exists; PENNY_STORE_URL names a misspelt file beside it."""
    store = store_from_url(cli_env)
    store.ping()
    store.close()
    path = tmp_path / "peny.db"
    monkeypatch.setenv("PENNY_STORE_URL", f"sqlite:///{path}")
    monkeypatch.setenv("PENNY_DOCS_DIR", str(REPO / "examples" / "docs"))
    return path


def penny(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(argv), stdout=out, stdin=io.StringIO("")), out.getvalue()


@pytest.mark.parametrize("argv", READ_ONLY, ids=" ".join)
def test_a_command_that_only_reads_refuses_a_store_that_is_not_there(
        argv: list[str], typo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = penny(*argv)
    err = capsys.readouterr().err
    assert code == 2 and out == ""
    assert f"PENNY_STORE_URL: there is no store at {typo} (the file does not exist)" in err
    assert "penny run, penny proxy or penny index" in err and "Traceback" not in err
    assert sorted(p.name for p in typo.parent.glob("peny*")) == []  # nothing made: no file, no -wal, no lock


def test_nor_is_a_missing_folder_made(cli_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PENNY_STORE_URL", f"sqlite:///{tmp_path / 'var' / 'lib' / 'penny.db'}")
    assert penny("usage")[0] == 2
    assert "there is no store at" in capsys.readouterr().err and not (tmp_path / "var").exists()


def test_check_says_there_is_no_store_yet_and_creates_none(typo: Path) -> None:
    code, out = penny("check")
    assert code == 0 and f"store       sqlite: none yet at {typo}" in out and "PENNY_STORE_URL" in out
    assert not typo.exists()


def test_keys_create_may_make_the_store_and_says_so(typo: Path) -> None:
    code, out = penny("keys", "create", "--user", "U123", "--workspace", "T1")
    assert code == 0 and out.startswith(f"Created a new store at {typo} (PENNY_STORE_URL). If Penny has run before")
    assert typo.exists()
    code, out = penny("keys", "create", "--user", "U124", "--workspace", "T1")
    assert code == 0 and "new store" not in out  # once


def test_penny_run_makes_the_store_and_logs_it_once(typo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert penny("run")[0] == 0  # no Slack settings: the terminal chat, ended at once
    err = capsys.readouterr().err
    assert "store_created" in err and str(typo) in err and "PENNY_STORE_URL names the wrong file" in err
    assert typo.exists()
    assert penny("run")[0] == 0
    assert "store_created" not in capsys.readouterr().err
    assert penny("usage")[0] == 0  # and now it is a store to read


def test_the_store_api_refuses_to_create_only_when_asked(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'penny.db'}"
    assert missing_store(url) == str(tmp_path / "penny.db")
    with pytest.raises(ConfigurationError, match="there is no store at"):
        store_from_url(url, create=False)
    assert not (tmp_path / "penny.db").exists()
    store = store_from_url(url)
    store.ping()
    store.close()
    assert missing_store(url) is None
    store_from_url(url, create=False).close()
    assert missing_store("redis://127.0.0.1:6379/0") is None  # a server's store: Penny never creates one


@pytest.mark.parametrize("argv", [["usage"], ["check"], ["keys", "create", "--user", "U1"], ["run"]], ids=" ".join)
def test_a_store_path_that_is_a_folder_or_under_a_file_is_a_setting_to_fix(
        argv: list[str], cli_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Both were SQLite's "unable to open database file", shown as a store error (exit 1) asking
    whether the store is reachable."""
    monkeypatch.setenv("PENNY_DOCS_DIR", str(REPO / "examples" / "docs"))
    monkeypatch.setenv("PENNY_STORE_URL", f"sqlite:///{tmp_path}")
    assert penny(*argv)[0] == 2
    err = capsys.readouterr().err
    assert f"PENNY_STORE_URL: {tmp_path} is a folder, not a database file; name a file in it, " \
           f"e.g. sqlite:///{tmp_path / 'penny.db'}" in err and "Traceback" not in err
    (tmp_path / "a-file").write_text("x")
    monkeypatch.setenv("PENNY_STORE_URL", f"sqlite:///{tmp_path / 'a-file' / 'penny.db'}")
    assert penny(*argv)[0] == 2
    err = capsys.readouterr().err
    assert f"cannot be a database file: {tmp_path / 'a-file'} is a file, not a folder" in err
