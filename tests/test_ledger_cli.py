"""What an operator sees of the ledger's safety net: ``penny check`` and ``/cost team`` (and its
terminal twin ``penny cost --team``) count paid calls waiting in the spool, ``penny ledger replay``
writes them, and interrupted calls show as worst-case charges."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest

from bot.cli import main
from bot.cost import cost_report, team_report
from bot.slack.cost_blocks import blocks_to_text, cost_blocks, team_blocks
from proxy_core import Accounts
from proxy_core.budget import budget_lines, period_window
from proxy_core.clock import ManualClock
from proxy_core.settings import PennySettings
from proxy_core.spool import SettleSpool, SpoolRecord
from proxy_core.stores.base import ClaimOwner, LedgerEntry
from proxy_core.stores.sqlite import SqliteStore
from tests.redis_server import free_port

WORKSPACE = "local"


@pytest.fixture(autouse=True)
def isolated(cli_env: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-ledger-cli")
    monkeypatch.setenv("PENNY_DOCS_DIR", str(Path(__file__).resolve().parents[1] / "examples" / "docs"))
    store = SqliteStore.from_url(cli_env)  # the store the Penny that spooled the calls ran on
    store.ping()
    store.close()
    return cli_env


def penny(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(argv), stdout=out, stdin=io.StringIO()), out.getvalue()


def leave_spooled_settle(spool_dir: Path, request_id: str, cost: int) -> None:
    """A process that spooled a paid call's settle and then died: its file stays, its lock goes."""
    now = time.time()
    entry = LedgerEntry(
        request_id=request_id, ts=now, day=period_window(now, "day")[0], workspace_id=WORKSPACE, user_id="U1",
        model="gpt-4.1-mini", kind="chat", prompt_tokens=100, cached_prompt_tokens=0, completion_tokens=50,
        cost_micros=cost, saved_micros=0, cache_status="miss", latency_ms=800, attempts=1,
    )
    lines = tuple(budget_lines(WORKSPACE, "U1", now, user_daily=0, workspace_monthly=0))
    spool = SettleSpool(spool_dir)
    spool.append(SpoolRecord("settle", entry, lines, reservation_id=request_id, result=None, result_ttl_s=60,
                             spooled_at=now))
    assert spool._own is not None
    spool._own.handle.close()


def test_check_and_cost_team_count_waiting_calls_and_replay_writes_them(tmp_path: Path) -> None:
    spool = tmp_path / "penny-spool"  # the default: beside the SQLite file
    leave_spooled_settle(spool, "lost-1", 1_234)
    leave_spooled_settle(spool, "lost-2", 766)

    code, out = penny("check")
    assert code == 0 and "2 paid call(s) waiting in" in out and "penny ledger replay" in out
    code, out = penny("cost", "--team")
    assert "2 paid calls are waiting for the store" in out
    code, out = penny("cost", "--team", "--json")
    assert json.loads(out)["pending_ledger_writes"] == 2

    code, out = penny("ledger", "replay")
    assert code == 0 and "replayed 2 ledger write(s); 0 were already in the store; 0 still waiting" in out
    code, out = penny("check")
    assert "ledger      nothing waiting" in out
    code, out = penny("cost", "--team", "--json")
    report = json.loads(out)
    assert report["pending_ledger_writes"] == 0 and report["today"]["cost_micros"] == 2_000
    assert not list(spool.glob("*.spool"))
    code, out = penny("ledger", "replay")  # nothing left: a second run changes nothing
    assert code == 0 and "replayed 0 ledger write(s)" in out


def test_check_names_spool_files_set_aside_with_lines_no_one_could_read(tmp_path: Path) -> None:
    """A dead process's spool file holding a line no one could read (damaged, or a newer format after
    a roll-back) is replayed as far as it can be and then set aside: it may hold a paid call, which
    only the operator can account for now, so ``penny check`` says where it is."""
    spool = tmp_path / "penny-spool"
    leave_spooled_settle(spool, "kept-1", 500)
    [dead] = spool.glob("*.spool")
    with dead.open("ab") as handle:
        handle.write(b'{"settle": {"entry": "from a newer Penny"}}\n')
    code, out = penny("ledger", "replay")
    [kept] = spool.glob("*.unreadable")
    # The replay says so too, and fails: it used to exit 0 ("0 still waiting") with only log events.
    assert code == 1 and "replayed 1 ledger write(s)" in out and "0 still waiting" in out
    assert "1 spool file(s) set aside with lines Penny could not read (a paid call may be among them" in out
    assert str(kept) in out and "account for them by hand, then delete them" in out
    code, out = penny("check")
    assert code == 0 and "1 spool file(s) set aside with lines Penny could not read" in out and str(kept) in out


def test_replay_needs_no_openai_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """It only writes to the store: an operator who removed or rotated the key can still run it."""
    leave_spooled_settle(tmp_path / "penny-spool", "lost-3", 500)
    monkeypatch.delenv("OPENAI_API_KEY")
    code, out = penny("ledger", "replay")
    assert code == 0 and "replayed 1 ledger write(s)" in out


def test_replay_with_the_store_down_keeps_the_writes_and_exits_1(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PENNY_STORE_URL", f"redis://127.0.0.1:{free_port()}/0")  # nobody listens there
    monkeypatch.setenv("PENNY_SPOOL_DIR", str(tmp_path / "spool"))
    monkeypatch.setenv("PENNY_STORE_TIMEOUT_S", "0.3")
    leave_spooled_settle(tmp_path / "spool", "lost-1", 500)
    code, out = penny("ledger", "replay")
    assert code == 1 and "1 still waiting" in out and "the store is not taking writes yet" in out
    assert len(list((tmp_path / "spool").glob("*.spool"))) == 1


def test_cost_team_shows_interrupted_calls_as_worst_case_charges(tmp_path: Path) -> None:
    clock = ManualClock(time.time())
    store = SqliteStore(tmp_path / "penny.db", clock=clock)
    settings = PennySettings(store_url=f"sqlite:///{tmp_path / 'penny.db'}")
    lines = budget_lines(WORKSPACE, "U1", time.time(), user_daily=0, workspace_monthly=0)
    store.admit(WORKSPACE, "cut-short", ttl_s=60, buckets=[], lines=lines, amount=4_200, breaker=None,
                owner=ClaimOwner("U1", "gpt-4.1-mini", "chat", time.time()))
    clock.advance(61)  # the worker answering it died: its claim expires unsettled
    assert len(store.reap_interrupted()) == 1
    text = blocks_to_text(team_blocks(team_report(Accounts(store, settings), WORKSPACE, time.time())))
    store.close()
    assert "1 call was interrupted while the LLM answered" in text
    assert "$0.0042 of this month's spend is their worst case" in text


def test_a_persons_own_cost_says_which_of_their_spend_is_an_interrupted_calls_worst_case(tmp_path: Path) -> None:
    """Only /cost team used to say so: a person whose call was cut short saw $0.0042 more than they
    may have spent, with no word of why."""
    clock = ManualClock(time.time())
    store = SqliteStore(tmp_path / "penny.db", clock=clock)
    settings = PennySettings(store_url=f"sqlite:///{tmp_path / 'penny.db'}")
    lines = budget_lines(WORKSPACE, "U1", time.time(), user_daily=0, workspace_monthly=0)
    for request_id in ("cut-1", "cut-2"):
        store.admit(WORKSPACE, request_id, ttl_s=60, buckets=[], lines=lines, amount=2_100, breaker=None,
                    owner=ClaimOwner("U1", "gpt-4.1-mini", "chat", time.time()))
    clock.advance(61)
    assert len(store.reap_interrupted()) == 2
    accounts = Accounts(store, settings)
    mine = blocks_to_text(cost_blocks(cost_report(accounts, WORKSPACE, "U1", time.time())))
    theirs = blocks_to_text(cost_blocks(cost_report(accounts, WORKSPACE, "U2", time.time())))
    store.close()
    assert "2 of your calls were interrupted while the LLM answered; $0.0042 of this month's spend" in mine
    assert "interrupted" not in theirs


def test_the_spool_sits_beside_the_sqlite_file_or_in_the_state_dir(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    assert PennySettings(store_url="sqlite:///data/penny.db").spool_directory() == Path("data/penny-spool")
    assert PennySettings(store_url="sqlite:////srv/p.db").spool_directory() == Path("/srv/penny-spool")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    redis = PennySettings(store_url="redis://127.0.0.1:6379/0")
    assert redis.spool_directory() == tmp_path / "state" / "penny" / "spool"
    assert PennySettings(store_url="redis://h:1/0", spool_dir=tmp_path / "x").spool_directory() == tmp_path / "x"
