"""``/cost`` splits a person's spend by source (Slack, and each ``penny proxy`` key by its name and ID)
when a key spent some; ``/cost team`` lists every key of the workspace by user for admins (name, ID,
active or revoked, its budget, spend today and this month), and nobody else sees anyone's keys.
Through the real Bolt app and the fake Slack Web API, and through ``penny cost``; every number is
the ledger's."""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot.cli import main
from bot.cost import cost_report
from bot.proxy.keys import KeyRing, ProxyKey
from bot.slack.cost_blocks import blocks_to_text, cost_blocks
from proxy_core import Accounts, LedgerEntry, Store, budget_lines, format_usd
from proxy_core.clock import ManualClock
from proxy_core.stores.sqlite import SqliteStore
from tests.cost_harness import NOW, CostHarness, make_settings
from tests.fake_slack import FakeSlack
from tests.slack_harness import TEAM

DAY = 86_400.0


def spend(store: Store, request_id: str, user: str, cost: int, *, source: str = "", days_ago: int = 0,
          workspace: str = TEAM, now: float = NOW) -> None:
    """One settled call, as the gateway settles it: on the user's day and the workspace's month."""
    ts = now - days_ago * DAY
    entry = LedgerEntry(
        request_id=request_id, ts=ts, day=datetime.fromtimestamp(ts, UTC).date().isoformat(),
        workspace_id=workspace, user_id=user, model="gpt-4.1-mini", kind="chat", prompt_tokens=900,
        cached_prompt_tokens=0, completion_tokens=100, cost_micros=cost, saved_micros=0, cache_status="miss",
        latency_ms=400, attempts=1, source=source,
    )
    lines = budget_lines(workspace, user, ts, user_daily=0, workspace_monthly=0)
    assert store.settle(entry, reservation_id=None, lines=lines, result=None, result_ttl_s=60)


class Team:
    """U1 asks in Slack and through a notebook key and a revoked CI key; U2 only through an unnamed
    key of their own; U3 only in Slack."""

    def __init__(self, store: SqliteStore, clock: ManualClock) -> None:
        ring = KeyRing(store, clock=clock)
        _, self.notebook = ring.create(user_id="U1", workspace_id=TEAM, name="notebook",
                                       daily_budget_micros=2_000_000)
        _, self.ci = ring.create(user_id="U1", workspace_id=TEAM, name="ci")
        _, self.u2_key = ring.create(user_id="U2", workspace_id=TEAM)
        _, self.elsewhere = ring.create(user_id="U1", workspace_id="T0OTHER", name="other-workspace")
        revoked = ring.revoke(self.ci.id)
        assert revoked is not None
        self.ci = revoked
        spend(store, "s1", "U1", 1_000)
        spend(store, "s2", "U1", 3_000, days_ago=2)
        spend(store, f"proxy:{self.notebook.id}:1", "U1", 250, source=self.notebook.id)
        spend(store, f"proxy:{self.notebook.id}:2", "U1", 4_000, source=self.notebook.id, days_ago=5)
        spend(store, f"proxy:{self.ci.id}:1", "U1", 700, source=self.ci.id, days_ago=3)
        spend(store, f"proxy:{self.u2_key.id}:1", "U2", 90_000, source=self.u2_key.id)
        spend(store, "s3", "U3", 55)
        spend(store, "last-month", "U1", 8_000, source=self.notebook.id, days_ago=25)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[SqliteStore]:
    store = SqliteStore(tmp_path / "penny.db", clock=ManualClock(NOW))
    yield store
    store.close()


@pytest.fixture
def team(ledger: SqliteStore) -> Team:
    return Team(ledger, ManualClock(NOW - 30 * DAY))


def reply(harness: CostHarness, slack: FakeSlack) -> str:
    harness.settle()
    [call] = [c for c in slack.calls() if c.method.startswith("commands/")]
    assert call.params["response_type"] == "ephemeral"
    return blocks_to_text(call.blocks or [])


def test_a_persons_report_splits_their_spend_by_source_to_the_micro_dollar(ledger: SqliteStore, team: Team) -> None:
    report = cost_report(Accounts(ledger, make_settings()), TEAM, "U1", NOW, keys=[team.notebook, team.ci])
    by_id = {s.source: s for s in report.sources}
    assert [s.source for s in report.sources] == ["", team.notebook.id, team.ci.id]  # Slack, then by spend
    assert (by_id[""].today.cost_micros, by_id[""].this_month.cost_micros) == (1_000, 4_000)
    assert (by_id[team.notebook.id].today.cost_micros, by_id[team.notebook.id].this_month.cost_micros) == (250, 4_250)
    assert by_id[team.notebook.id].name == "notebook" and not by_id[team.notebook.id].revoked
    assert by_id[team.ci.id].revoked and by_id[team.ci.id].today.requests == 0
    assert sum(s.this_month.cost_micros for s in report.sources) == report.this_month.cost_micros
    assert report.split_by_source
    assert report.to_json()["sources"][0]["source"] == "slack"


def test_cost_shows_slack_and_each_key_by_name_and_id(slack: FakeSlack, ledger: SqliteStore, team: Team) -> None:
    penny = CostHarness(slack, ledger, make_settings())
    penny.slash("", user="U1")
    text = reply(penny, slack)
    assert "By source" in text
    assert f"• Slack — {format_usd(1_000)} today · {format_usd(4_000)} this month · 2 questions" in text
    assert (f"• key notebook {team.notebook.id} — {format_usd(250)} today · {format_usd(4_250)} this month · "
            "2 questions") in text
    assert f"• key ci {team.ci.id} (revoked) — $0 today · {format_usd(700)} this month · 1 question" in text
    assert team.u2_key.id not in text and "Proxy keys" not in text


def test_cost_stays_short_when_everything_came_from_slack(slack: FakeSlack, ledger: SqliteStore, team: Team) -> None:
    penny = CostHarness(slack, ledger, make_settings())
    penny.slash("", user="U3")
    text = reply(penny, slack)
    assert "Your Penny costs" in text and "By source" not in text and "key" not in text


def test_cost_names_a_key_that_is_the_only_source(slack: FakeSlack, ledger: SqliteStore, team: Team) -> None:
    penny = CostHarness(slack, ledger, make_settings())
    penny.slash("", user="U2")
    text = reply(penny, slack)
    assert f"• key {team.u2_key.id} — {format_usd(90_000)} today · {format_usd(90_000)} this month" in text
    assert "Slack —" not in text and team.notebook.id not in text


def test_cost_team_lists_every_key_of_the_workspace_by_user_for_admins(
    slack: FakeSlack, ledger: SqliteStore, team: Team
) -> None:
    penny = CostHarness(slack, ledger, make_settings(admin_user_ids="U3"))
    penny.slash("team", user="U3")
    text = reply(penny, slack)
    keys = text[text.index("Proxy keys"):].splitlines()
    assert keys[1:4] == [
        f"U1 notebook {team.notebook.id} — active · {format_usd(250)} today · {format_usd(4_250)} this month · "
        "$2.00/day budget",
        f"U1 ci {team.ci.id} — revoked · $0 today · {format_usd(700)} this month",
        f"U2 {team.u2_key.id} — active · {format_usd(90_000)} today · {format_usd(90_000)} this month",
    ]
    assert team.elsewhere.id not in text  # another workspace's key


def test_nobody_else_sees_anyones_keys(slack: FakeSlack, ledger: SqliteStore, team: Team) -> None:
    penny = CostHarness(slack, ledger, make_settings(admin_user_ids="U3"))
    penny.slash("team", user="U2")
    text = reply(penny, slack)
    assert "team view is for workspace admins" in text
    assert "Proxy keys" not in text and team.notebook.id not in text and team.ci.id not in text
    assert team.u2_key.id in text  # their own key, among their own sources

    penny = CostHarness(slack, ledger, make_settings(admin_user_ids="U3"))
    penny.home_opened("U2")
    [view] = slack.wait_for("views.publish")
    home = json.dumps(view.params, ensure_ascii=False)
    assert team.notebook.id not in home and "Proxy keys" not in home and team.u2_key.id in home


def test_the_blocks_stay_within_slack_limits_with_many_keys(ledger: SqliteStore) -> None:
    ring = KeyRing(ledger, clock=ManualClock(NOW - DAY))
    made: list[ProxyKey] = []
    for i in range(60):
        _, key = ring.create(user_id="U1", workspace_id=TEAM, name=f"script-{i:02d}-" + "x" * 40)
        made.append(key)
        spend(ledger, f"proxy:{key.id}:1", "U1", 100 + i, source=key.id)
    from bot.cost import team_report
    from bot.slack.cost_blocks import KEYS_SHOWN, team_blocks
    from bot.slack.render import MAX_BLOCKS, SECTION_TEXT_LIMIT

    accounts = Accounts(ledger, make_settings())
    for blocks in (team_blocks(team_report(accounts, TEAM, NOW, keys=made)),
                   cost_blocks(cost_report(accounts, TEAM, "U1", NOW, keys=made))):
        assert len(blocks) <= MAX_BLOCKS
        assert all(len(b["text"]["text"]) <= SECTION_TEXT_LIMIT for b in blocks if b["type"] == "section")
    text = blocks_to_text(team_blocks(team_report(accounts, TEAM, NOW, keys=made)))
    listed = text.count("— active ·")
    assert 0 < listed <= KEYS_SHOWN
    assert f"…and {60 - listed} more keys (penny keys list shows them all)" in text
    own = blocks_to_text(cost_blocks(cost_report(accounts, TEAM, "U1", NOW, keys=made)))
    assert f"…and {60 - own.count('• key')} more sources" in own


# -- penny cost ------------------------------------------------------------------------------------


def penny(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), stdout=out, stdin=io.StringIO(""))
    return code, out.getvalue()


def test_penny_cost_splits_by_source_and_lists_keys_for_the_team(cli_env: str, tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "penny.db")
    try:
        now = time.time()
        _, key = KeyRing(store).create(user_id="U1", workspace_id="W1", name="notebook")
        spend(store, "s1", "U1", 1_234, workspace="W1", now=now)
        spend(store, f"proxy:{key.id}:1", "U1", 56, source=key.id, workspace="W1", now=now)
    finally:
        store.close()

    code, out = penny("cost", "--user", "U1", "--workspace", "W1")
    assert code == 0 and "By source" in out
    assert "• Slack — $0.0012 today" in out and f"• key notebook {key.id} — $0.000056 today" in out

    code, out = penny("cost", "--json", "--user", "U1", "--workspace", "W1")
    data = json.loads(out)
    assert code == 0
    assert [(s["source"], s["name"], s["today"]["cost_micros"]) for s in data["sources"]] == [
        ("slack", "", 1_234), (key.id, "notebook", 56)]

    code, out = penny("cost", "--team", "--workspace", "W1")
    assert code == 0 and f"U1 notebook {key.id} — active · $0.000056 today · $0.000056 this month" in out
    code, out = penny("cost", "--team", "--json", "--workspace", "W1")
    assert [(k["key_id"], k["user_id"], k["revoked"]) for k in json.loads(out)["keys"]] == [(key.id, "U1", False)]


def test_cost_team_shows_key_names_and_users_that_are_not_slack_ids_as_text(
    slack: FakeSlack, ledger: SqliteStore
) -> None:
    # `penny keys create --user … --name …` takes any text: neither may ping, even in a report.
    ring = KeyRing(ledger, clock=ManualClock(NOW - DAY))
    _, key = ring.create(user_id="cli:<!channel> @here", workspace_id=TEAM, name="<!here> @everyone")
    spend(ledger, f"proxy:{key.id}:1", key.user_id, 500, source=key.id)
    penny = CostHarness(slack, ledger, make_settings(admin_user_ids="U3"))
    penny.slash("team", user="U3")
    penny.settle()
    [call] = [c for c in slack.calls() if c.method.startswith("commands/")]
    shown = json.dumps([call.params.get("text"), call.blocks], ensure_ascii=False)
    assert "<!" not in shown
    assert not re.search(r"(?<!\w)@(?:here|channel|everyone)(?!\w)", shown), shown
    assert "`cli:&lt;!channel&gt; @\u2060here`" in shown and "*&lt;!here&gt; @\u2060everyone*" in shown
