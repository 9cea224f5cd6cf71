"""``/cost``, the App Home dashboard and ``penny cost``: reports read from a real SQLite ledger, held
to ``Store.usage`` to the micro-dollar, then driven through the real Bolt app (signed requests,
fake Slack over loopback) and the real command line."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import structlog

from bot.cli import main
from bot.cost import TREND_DAYS, CostReport, cost_report, is_admin, sparkline, team_report
from bot.slack.cost_blocks import USAGE_TEXT, cost_blocks, help_blocks, home_view, team_blocks
from bot.slack.render import MAX_BLOCKS, SECTION_TEXT_LIMIT
from proxy_core import Accounts
from proxy_core.budget import budget_lines, period_window
from proxy_core.clock import ManualClock
from proxy_core.limiter import Bucket
from proxy_core.money import format_usd
from proxy_core.stores.base import BucketSpec, LedgerEntry, Store, UsageTotals
from proxy_core.stores.sqlite import SqliteStore
from tests.budgeting import reserve
from tests.cost_harness import NOW, CostHarness, make_settings
from tests.fake_slack import FakeSlack, SlackCall
from tests.slack_harness import TEAM

WS = TEAM
DAY = 86_400.0
TODAY = "2026-01-20"
MONTH_START = "2026-01-01"
CHAT = "gpt-4.1-mini"
EMBED = "text-embedding-3-small"


def entry(
    request_id: str,
    *,
    days_ago: int,
    user: str,
    cost: int,
    model: str = CHAT,
    saved: int = 0,
    status: str = "miss",
    prompt: int = 1_000,
    cached: int = 0,
    completion: int = 120,
    workspace: str = WS,
) -> LedgerEntry:
    ts = NOW - days_ago * DAY
    return LedgerEntry(
        request_id=request_id,
        ts=ts,
        day=datetime.fromtimestamp(ts, UTC).date().isoformat(),
        workspace_id=workspace,
        user_id=user,
        model=model,
        kind="embedding" if model == EMBED else "chat",
        prompt_tokens=prompt,
        cached_prompt_tokens=cached,
        completion_tokens=0 if model == EMBED else completion,
        cost_micros=cost,
        saved_micros=saved,
        cache_status=status,  # type: ignore[arg-type]
        latency_ms=640,
        attempts=1,
    )


def settle(store: Store, e: LedgerEntry) -> None:
    """Settle as the gateway does: the cost lands on the user's day and the workspace's month."""
    lines = budget_lines(e.workspace_id, e.user_id, e.ts, user_daily=0, workspace_monthly=0)
    assert store.settle(e, reservation_id=None, lines=lines, result=None, result_ttl_s=60)


LEDGER = (
    # today
    entry("t1", days_ago=0, user="U1", cost=1_234, prompt=1_500, completion=200),
    entry("t2", days_ago=0, user="U1", cost=0, saved=1_100, status="exact"),
    entry("t3", days_ago=0, user="U1", cost=20, model=EMBED, prompt=400),
    entry("t4", days_ago=0, user="U2", cost=5_005, prompt=3_000, completion=500),
    entry("t5", days_ago=0, user="U3", cost=0, saved=900, status="semantic"),
    # earlier this month
    entry("m1", days_ago=1, user="U1", cost=2_500),
    entry("m2", days_ago=3, user="U1", cost=7_777, cached=512),
    entry("m3", days_ago=3, user="U2", cost=12_000),
    entry("m4", days_ago=13, user="U3", cost=30_000, completion=700),  # the trend's first day
    entry("m5", days_ago=19, user="U2", cost=999),  # January 1st, before the trend
    # last month: in no monthly total
    entry("p1", days_ago=20, user="U1", cost=50_000),
    entry("p2", days_ago=40, user="U2", cost=60_000),
    # another workspace: never counted
    entry("x1", days_ago=0, user="U1", cost=99_999, workspace="T0OTHER"),
)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOW)


@pytest.fixture
def ledger(tmp_path: Path, clock: ManualClock) -> Iterator[SqliteStore]:
    store = SqliteStore(tmp_path / "penny.db", clock=clock)
    for e in LEDGER:
        settle(store, e)
    yield store
    store.close()


# ---------------------------------------------------------------------------------------------
# Reports: the ledger's numbers, exactly


def test_a_users_report_is_the_ledger_to_the_micro_dollar(ledger: SqliteStore) -> None:
    report = cost_report(Accounts(ledger, make_settings()), WS, "U1", NOW)

    assert (report.day, report.month) == (TODAY, "2026-01")
    assert report.today == ledger.usage(WS, TODAY, TODAY, "U1").totals
    assert report.this_month == ledger.usage(WS, MONTH_START, TODAY, "U1").totals
    assert report.today.cost_micros == 1_254 and report.today.requests == 3
    assert report.today.saved_micros == 1_100 and report.today.cache_hits == 1
    assert report.this_month.cost_micros == 1_254 + 2_500 + 7_777  # not last month's, not T0OTHER's
    # Of today's three calls one is an embedding (an openai: embedder's): two questions, one from the cache.
    assert report.today.questions == 2 and report.today.hit_rate == 0.5
    assert "2 questions · " in "\n".join(_texts(cost_blocks(report))) and "cache 50% hits" in "\n".join(
        _texts(cost_blocks(report)))

    assert len(report.trend) == len(report.trend_days) == TREND_DAYS
    assert (report.trend_days[0], report.trend_days[-1]) == ("2026-01-07", TODAY)
    assert list(report.trend) == [ledger.usage(WS, d, d, "U1").totals.cost_micros for d in report.trend_days]
    assert report.trend[-1] == 1_254 and report.trend[-2] == 2_500 and report.trend[-4] == 7_777


def test_the_team_report_is_the_ledger_to_the_micro_dollar(ledger: SqliteStore) -> None:
    report = team_report(Accounts(ledger, make_settings()), WS, NOW)
    month = ledger.usage(WS, MONTH_START, TODAY)

    assert report.today == ledger.usage(WS, TODAY, TODAY).totals
    assert report.this_month == month.totals
    assert [u for u, _ in report.top_users] == ["U3", "U2", "U1"]  # by this month's spend
    assert dict(report.top_users) == month.by_user
    assert dict(report.by_model) == month.by_model and report.by_model[0][0] == CHAT
    assert report.this_month.saved_micros == 2_000
    assert list(report.trend) == [ledger.usage(WS, d, d).totals.cost_micros for d in report.trend_days]
    assert sum(report.trend) == month.totals.cost_micros - 999  # January 1st is before the 14 days

    assert [u for u, _ in team_report(Accounts(ledger, make_settings()), WS, NOW, top=2).top_users] == ["U3", "U2"]


def test_the_last_instant_of_a_month_reports_that_day_and_month_as_its_budgets_and_ledger_do(
    tmp_path: Path, clock: ManualClock
) -> None:
    # The last float before February: a datetime rounds it up to February 1st, the budget lines and
    # the ledger's day (floored) say January 31st. The report showed February with January's budgets.
    now = math.nextafter(datetime(2026, 2, 1, tzinfo=UTC).timestamp(), 0)
    store = SqliteStore(tmp_path / "edge.db", clock=clock)
    try:
        e = dataclasses.replace(entry("late", days_ago=0, user="U1", cost=4_321), ts=now,
                                day=period_window(now, "day")[0])  # as the gateway dates it
        settle(store, e)
        accounts = Accounts(store, make_settings(user_daily_budget_usd=Decimal("1")))
        report, team = cost_report(accounts, WS, "U1", now), team_report(accounts, WS, now)
    finally:
        store.close()
    assert e.day == "2026-01-31"
    assert (report.day, report.month, team.day, team.month) == ("2026-01-31", "2026-01", "2026-01-31", "2026-01")
    assert report.today.cost_micros == report.user_daily.spent == report.this_month.cost_micros == 4_321
    assert team.this_month.cost_micros == team.workspace_monthly.spent == 4_321 and team.trend[-1] == 4_321


def test_an_empty_ledger_reports_zeros(tmp_path: Path, clock: ManualClock) -> None:
    store = SqliteStore(tmp_path / "empty.db", clock=clock)
    try:
        report = cost_report(Accounts(store, make_settings()), WS, "U9", NOW)
        team = team_report(Accounts(store, make_settings()), WS, NOW)
    finally:
        store.close()
    assert report.today == UsageTotals() and report.this_month == UsageTotals()
    assert report.trend == (0,) * TREND_DAYS and team.top_users == () and team.by_model == ()
    assert sparkline(report.trend) == "▁" * TREND_DAYS


def test_budget_left_and_reset_with_budgets_set(ledger: SqliteStore) -> None:
    settings = make_settings(
        user_daily_budget_usd=Decimal("0.01"),
        workspace_monthly_budget_usd=Decimal("0.5"),
        user_budget_overrides={"U2": Decimal("0.005")},
    )
    month_total = ledger.usage(WS, MONTH_START, TODAY).totals.cost_micros

    u1 = cost_report(Accounts(ledger, settings), WS, "U1", NOW)
    assert (u1.user_daily.limit, u1.user_daily.spent, u1.user_daily.left) == (10_000, 1_254, 10_000 - 1_254)
    assert u1.user_daily.resets_at == datetime(2026, 1, 21, tzinfo=UTC).timestamp()
    assert u1.workspace_monthly.spent == month_total
    assert u1.workspace_monthly.left == 500_000 - month_total
    assert u1.workspace_monthly.resets_at == datetime(2026, 2, 1, tzinfo=UTC).timestamp()

    # An in-flight reservation is money already promised: it is not left.
    lines = budget_lines(WS, "U1", NOW, user_daily=10_000, workspace_monthly=500_000)
    assert reserve(ledger, WS, "inflight", lines, 700, ttl_s=60).ok
    again = cost_report(Accounts(ledger, settings), WS, "U1", NOW)
    assert (again.user_daily.reserved, again.user_daily.left) == (700, 10_000 - 1_254 - 700)

    u2 = cost_report(Accounts(ledger, settings), WS, "U2", NOW)  # spent 5,005 of an override of 5,000
    assert (u2.user_daily.limit, u2.user_daily.left) == (5_000, 0)
    uncapped = cost_report(Accounts(ledger, make_settings()), WS, "U1", NOW)
    assert uncapped.user_daily.left is None and uncapped.workspace_monthly.left is None
    assert uncapped.user_daily.spent == 1_254  # the spend is shown even without a cap

    team = team_report(Accounts(ledger, settings), WS, NOW)
    assert team.workspace_monthly.left == 500_000 - month_total - 700


def test_headroom_is_a_peek_that_takes_nothing(ledger: SqliteStore, clock: ManualClock) -> None:
    settings = make_settings(requests_per_minute=10, request_burst=5, tokens_per_minute=6_000)
    fresh = cost_report(Accounts(ledger, settings), WS, "U1", NOW).headroom
    assert (fresh.requests_left, fresh.request_burst, fresh.tokens_left, fresh.token_burst) == (5, 5, 6_000, 6_000)

    specs = [
        BucketSpec("user:U1:requests", Bucket.per_minute(10, 5), 1),
        BucketSpec("user:U1:tokens", Bucket.per_minute(6_000, 6_000), 1_000),
    ]
    for _ in range(2):
        assert ledger.take_tokens(WS, specs).allowed
    for _ in range(2):  # looking twice costs nothing
        after = cost_report(Accounts(ledger, settings), WS, "U1", NOW).headroom
        assert (after.requests_left, after.tokens_left) == pytest.approx((3, 4_000))
    assert cost_report(Accounts(ledger, settings), WS, "U2", NOW).headroom.requests_left == 5  # per user

    clock.advance(6.0)  # 10 a minute refills one request in 6 s; 6,000 a minute refills 600 tokens
    later = cost_report(Accounts(ledger, settings), WS, "U1", clock()).headroom
    assert (later.requests_left, later.tokens_left) == pytest.approx((4, 4_600))

    unlimited = cost_report(Accounts(ledger, make_settings(requests_per_minute=0, tokens_per_minute=0)), WS, "U1", NOW)
    assert unlimited.headroom.requests_left is None and unlimited.headroom.tokens_left is None
    assert "*Rate limit now:* unlimited" in "\n".join(_texts(cost_blocks(unlimited)))


def test_the_rate_limit_line_says_the_per_minute_limit_beside_the_burst(ledger: SqliteStore) -> None:
    # "5 of 5 requests" alone read as a limit of 5 to someone who had set 10 a minute.
    settings = make_settings(requests_per_minute=10, request_burst=5, tokens_per_minute=6_000)
    text = "\n".join(_texts(cost_blocks(cost_report(Accounts(ledger, settings), WS, "U1", NOW))))
    assert ("*Rate limit now:* 5 of 5 requests left (refills 10 a minute) · "
            "6,000 of 6,000 tokens left (refills 6,000 a minute)") in text
    slow = make_settings(requests_per_minute=0.5, request_burst=1, tokens_per_minute=0)
    text = "\n".join(_texts(cost_blocks(cost_report(Accounts(ledger, slow), WS, "U1", NOW))))
    assert "*Rate limit now:* 1 of 1 requests left (refills 0.5 a minute)" in text


def test_sparkline() -> None:
    assert sparkline([]) == ""
    assert sparkline([0, 0, 0]) == "▁▁▁"
    assert sparkline(list(range(8))) == "▁▂▃▄▅▆▇█"
    assert sparkline([7]) == "█"
    assert sparkline([1, 1_000_000]) == "▂█"  # any spend at all shows above zero
    assert sparkline([-5, 0, 4]) == "▁▁█"
    assert len(sparkline([3] * TREND_DAYS)) == TREND_DAYS


def test_is_admin() -> None:
    settings = make_settings(admin_user_ids="U1, U7")
    assert is_admin("U1", settings, None)
    assert not is_admin("U2", settings, None)
    info = {"ok": True, "user": {"id": "U2", "is_admin": False, "is_owner": False}}
    assert not is_admin("U2", settings, info)
    for flag in ("is_admin", "is_owner", "is_primary_owner"):
        assert is_admin("U2", settings, {"ok": True, "user": {"id": "U2", flag: True}})
    assert not is_admin("U2", settings, {"ok": True, "user": {"id": "U3", "is_admin": True}})  # someone else


def test_a_slack_admin_is_an_admin_only_of_their_own_workspace() -> None:
    settings = make_settings(admin_user_ids="U1")
    home = {"id": "U2", "team_id": "T1", "is_admin": True}
    assert is_admin("U2", settings, {"user": home}, workspace="T1")
    # A Slack Connect guest who administers their own organisation, in a channel shared with T1.
    assert not is_admin("U2", settings, {"user": {**home, "team_id": "TPARTNER"}}, workspace="T1")
    assert not is_admin("U2", settings, {"user": {**home, "is_stranger": True}}, workspace="T1")
    # Enterprise Grid: an org admin whose home workspace is another of the org's workspaces.
    grid = {**home, "team_id": "T9", "enterprise_user": {"enterprise_id": "E1", "teams": ["T9", "T1"]}}
    assert is_admin("U2", settings, {"user": grid}, workspace="T1")
    assert not is_admin("U2", settings, {"user": grid}, workspace="T5")
    assert is_admin("U1", settings, {"user": {**home, "team_id": "TPARTNER"}}, workspace="T1")  # Penny's own


# ---------------------------------------------------------------------------------------------
# Block Kit


def _texts(blocks: list[dict[str, Any]]) -> list[str]:
    out = []
    for b in blocks:
        if b["type"] in ("section", "header"):
            out.append(b["text"]["text"])
        elif b["type"] == "context":
            out += [e["text"] for e in b["elements"]]
    return out


def test_blocks_stay_within_slack_limits_for_a_big_team(tmp_path: Path, clock: ManualClock) -> None:
    store = SqliteStore(tmp_path / "big.db", clock=clock)
    try:
        for i in range(120):
            settle(store, entry(f"b{i}", days_ago=i % 14, user=f"U{i:04d}", cost=1_000 + i, model=f"model-{i % 40}"))
        team = team_report(Accounts(store, make_settings()), WS, NOW)
        own = cost_report(Accounts(store, make_settings()), WS, "U0001", NOW)
    finally:
        store.close()
    assert len(team.top_users) == 10 and team.top_users[0][0] == "U0119"
    for blocks in (team_blocks(team), cost_blocks(own), home_view(own, team)["blocks"], help_blocks()):
        assert 0 < len(blocks) <= MAX_BLOCKS
        assert all(len(t) <= SECTION_TEXT_LIMIT for t in _texts(blocks))
    assert "/cost team" in json.dumps(help_blocks())


def test_one_of_a_thing_reads_one_thing(tmp_path: Path, clock: ManualClock) -> None:
    store = SqliteStore(tmp_path / "one.db", clock=clock)
    try:
        settle(store, entry("o1", days_ago=0, user="U1", cost=1_000, prompt=1, completion=0))
        team = team_report(Accounts(store, make_settings()), WS, NOW)
        own = cost_report(Accounts(store, make_settings()), WS, "U1", NOW)
    finally:
        store.close()
    own_text, team_text = ("\n".join(_texts(blocks)) for blocks in (cost_blocks(own), team_blocks(team)))
    assert "1 question · 1 token · *$0.001* spent" in own_text
    assert "<@U1> — $0.001 · 1 question · saved $0" in team_text
    assert f"`{CHAT}` — $0.001 · 1 call · 1 token" in team_text
    assert not any(plural in own_text + team_text for plural in ("1 questions", "1 calls", "1 tokens"))


def test_by_model_calls_are_calls_to_the_provider_and_cached_answers_are_counted_apart(ledger: SqliteStore) -> None:
    month = ledger.usage(WS, MONTH_START, TODAY).by_model
    chat, embed = month[CHAT], month[EMBED]
    assert (chat.requests, chat.cache_hits, embed.requests, embed.cache_hits) == (9, 2, 1, 0)
    text = "\n".join(_texts(team_blocks(team_report(Accounts(ledger, make_settings()), WS, NOW))))
    chat_tokens = chat.prompt_tokens + chat.completion_tokens
    assert (f"`{CHAT}` — {format_usd(chat.cost_micros)} · 7 calls · 2 answers from the cache · {chat_tokens:,} tokens"
            in text)
    assert f"`{EMBED}` — {format_usd(embed.cost_micros)} · 1 call · 400 tokens" in text


# ---------------------------------------------------------------------------------------------
# Slack: /cost and the App Home through the real Bolt app


def _harness(slack: FakeSlack, ledger: SqliteStore, **settings: Any) -> CostHarness:
    return CostHarness(slack, ledger, make_settings(**settings))


def _responses(slack: FakeSlack) -> list[SlackCall]:
    return [c for c in slack.calls() if c.method.startswith("commands/")]


def _reply(harness: CostHarness, slack: FakeSlack) -> str:
    """The one ephemeral reply to a /cost, as the text of its blocks."""
    harness.settle()
    [call] = _responses(slack)
    assert call.params["response_type"] == "ephemeral"
    return json.dumps(call.blocks, ensure_ascii=False)


def _money_of(report: CostReport) -> tuple[str, str]:
    return f"*{format_usd(report.today.cost_micros)}* spent", f"*{format_usd(report.this_month.cost_micros)}* spent"


def test_cost_shows_the_caller_their_own_numbers(slack: FakeSlack, ledger: SqliteStore) -> None:
    penny = _harness(slack, ledger, user_daily_budget_usd=Decimal("0.01"))
    started = time.monotonic()
    response = penny.slash("", user="U1")
    assert response.status == 200 and time.monotonic() - started < 3.0  # acked

    text = _reply(penny, slack)
    today = ledger.usage(WS, TODAY, TODAY, "U1").totals
    month = ledger.usage(WS, MONTH_START, TODAY, "U1").totals
    assert f"*{format_usd(today.cost_micros)}* spent" in text and f"{today.questions:,} questions" in text
    assert f"*{format_usd(month.cost_micros)}* spent" in text
    assert f"saved {format_usd(today.saved_micros)}" in text
    assert f"{format_usd(10_000 - today.cost_micros)} left of $0.01" in text
    assert "Team Penny costs" not in text
    assert slack.count("chat.postEphemeral") == 0 and slack.count("chat.postMessage") == 0


def test_cost_without_a_response_url_posts_an_ephemeral_message(slack: FakeSlack, ledger: SqliteStore) -> None:
    penny = _harness(slack, ledger)
    penny.slash("", user="U2", channel="C9", response_url=False)
    [posted] = slack.wait_for("chat.postEphemeral")
    penny.settle()
    assert (posted.params["user"], posted.params["channel"]) == ("U2", "C9")
    own = cost_report(Accounts(ledger, make_settings()), WS, "U2", NOW)
    assert all(m in json.dumps(posted.blocks, ensure_ascii=False) for m in _money_of(own))


def test_cost_team_for_a_penny_admin_shows_the_workspace(slack: FakeSlack, ledger: SqliteStore) -> None:
    penny = _harness(slack, ledger, admin_user_ids="U1")
    penny.slash("team", user="U1")
    text = _reply(penny, slack)
    month = ledger.usage(WS, MONTH_START, TODAY)
    assert "Team Penny costs" in text
    assert f"*{format_usd(month.totals.cost_micros)}* spent" in text
    for user, totals in month.by_user.items():
        assert f"<@{user}> — {format_usd(totals.cost_micros)}" in text
    assert f"`{CHAT}` — {format_usd(month.by_model[CHAT].cost_micros)}" in text
    assert slack.count("users.info") == 0  # a Penny admin needs no Slack lookup


def test_cost_team_for_a_slack_workspace_admin(slack: FakeSlack, ledger: SqliteStore) -> None:
    slack.set_admin("U3")
    penny = _harness(slack, ledger)
    penny.slash("TEAM", user="U3")
    text = _reply(penny, slack)
    assert "Team Penny costs" in text and "<@U1>" in text and "<@U2>" in text
    assert slack.last("users.info").params["user"] == "U3"


def test_cost_team_from_a_slack_connect_guest_who_administers_another_workspace_is_refused(
    slack: FakeSlack, ledger: SqliteStore
) -> None:
    slack.set_user("U9", team_id="TPARTNER", is_admin=True, is_owner=True)  # an admin at home, a guest here
    penny = _harness(slack, ledger)
    penny.slash("team", user="U9")
    text = _reply(penny, slack)
    assert "admins" in text and "Team Penny costs" not in text and "<@U1>" not in text


def _team_view(penny: CostHarness, slack: FakeSlack, user: str) -> bool:
    """Whether ``/cost team`` from ``user`` showed the team's numbers (one command at a time)."""
    penny.slash("team", user=user)
    [reply] = slack.wait_for(f"commands/{TEAM}/{penny._serial}/hook")
    return "Team Penny costs" in json.dumps(reply.blocks, ensure_ascii=False)


def test_a_slack_admin_lookup_is_kept_for_five_minutes(slack: FakeSlack, ledger: SqliteStore) -> None:
    slack.set_admin("U3")
    clock = ManualClock()
    penny = CostHarness(slack, ledger, make_settings(), clock=clock)
    # An admin and someone who is not, twice each: Slack is asked once about each.
    assert [_team_view(penny, slack, user) for user in ("U3", "U2", "U3", "U2")] == [True, False, True, False]
    assert [c.params["user"] for c in slack.calls() if c.method == "users.info"] == ["U3", "U2"]
    clock.advance(301)
    assert _team_view(penny, slack, "U3")
    assert slack.count("users.info") == 3  # asked again once the answer is five minutes old
    penny.settle()


def test_a_failed_admin_lookup_is_not_kept(slack: FakeSlack, ledger: SqliteStore) -> None:
    slack.set_admin("U3")
    slack.fail("users.info", "internal_error")
    penny = _harness(slack, ledger)
    assert not _team_view(penny, slack, "U3")  # unknown means no
    assert _team_view(penny, slack, "U3")  # asked again, and an admin
    assert slack.count("users.info") == 2
    penny.settle()


def test_cost_team_for_anyone_else_is_refused_with_only_their_own_numbers(
    slack: FakeSlack, ledger: SqliteStore
) -> None:
    penny = _harness(slack, ledger, admin_user_ids="U1")
    penny.slash("team", user="U2")
    text = _reply(penny, slack)
    own = cost_report(Accounts(ledger, make_settings()), WS, "U2", NOW)
    assert "admins" in text and "Team Penny costs" not in text
    assert all(m in text for m in _money_of(own))
    assert "U1" not in text and "U3" not in text
    team_total = format_usd(ledger.usage(WS, MONTH_START, TODAY).totals.cost_micros)
    assert team_total not in text


@pytest.mark.parametrize("argument", ["help", "bogus", "team now"])
def test_cost_help_and_unknown_arguments_get_the_usage(slack: FakeSlack, ledger: SqliteStore, argument: str) -> None:
    penny = _harness(slack, ledger, admin_user_ids="U1")
    penny.slash(argument, user="U1")
    text = _reply(penny, slack)
    assert json.dumps(USAGE_TEXT, ensure_ascii=False)[1:-1] in text
    assert "spent" not in text


def test_app_home_shows_the_dashboard_and_the_team_only_to_admins(slack: FakeSlack, ledger: SqliteStore) -> None:
    slack.set_admin("U3")
    penny = _harness(slack, ledger)
    penny.home_opened("U2")
    penny.home_opened("U3")
    penny.settle()
    views = {c.params["user_id"]: json.dumps(c.json_param("view"), ensure_ascii=False)
             for c in slack.calls("views.publish")}
    assert set(views) == {"U2", "U3"}
    for user, view in views.items():
        own = cost_report(Accounts(ledger, make_settings()), WS, user, NOW)
        assert all(m in view for m in _money_of(own))
        assert '"type": "home"' in view and "docs" in view
    assert "Team Penny costs" not in views["U2"] and "<@U1>" not in views["U2"]
    month = ledger.usage(WS, MONTH_START, TODAY).totals
    assert "Team Penny costs" in views["U3"] and f"*{format_usd(month.cost_micros)}* spent" in views["U3"]


def test_app_home_is_fresh_each_time_it_is_opened(slack: FakeSlack, ledger: SqliteStore) -> None:
    first_penny = _harness(slack, ledger)
    first_penny.home_opened("U2")
    first_penny.settle()
    settle(ledger, entry("new", days_ago=0, user="U2", cost=40_000))
    second_penny = _harness(slack, ledger)
    second_penny.home_opened("U2")
    second_penny.settle()
    first, second = (json.dumps(c.json_param("view"), ensure_ascii=False) for c in slack.calls("views.publish"))
    today = ledger.usage(WS, TODAY, TODAY, "U2").totals.cost_micros
    assert f"*{format_usd(today)}* spent" in second and f"*{format_usd(today)}* spent" not in first


# ---------------------------------------------------------------------------------------------
# penny cost


@pytest.fixture
def cli_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SqliteStore]:
    """A ledger written at the real time (the CLI reads the wall clock) and the CLI pointed at it."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.upper().startswith(("PENNY_", "OPENAI_")):
            monkeypatch.delenv(name)
    path = tmp_path / "cli.db"
    monkeypatch.setenv("PENNY_STORE_URL", f"sqlite:///{path}")
    store = SqliteStore(path)
    now = time.time()
    for i, (user, cost, model) in enumerate([("U1", 1_234, CHAT), ("U1", 56, EMBED), ("U2", 7_000, CHAT)]):
        e = entry(f"c{i}", days_ago=0, user=user, cost=cost, model=model, workspace="W1")
        settle(store, dataclasses.replace(e, ts=now, day=datetime.fromtimestamp(now, UTC).date().isoformat()))
    yield store
    store.close()
    structlog.reset_defaults()


def _penny(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), stdout=out, stdin=io.StringIO(""))
    return code, out.getvalue()


def test_penny_cost_json_is_the_ledger(cli_store: SqliteStore) -> None:
    code, out = _penny("cost", "--json", "--user", "U1", "--workspace", "W1")
    assert code == 0
    data = json.loads(out)
    day = data["day"]
    today = cli_store.usage("W1", day, day, "U1").totals
    assert data["user_id"] == "U1" and data["today"]["cost_micros"] == today.cost_micros == 1_290
    assert data["today"]["requests"] == 2 and data["trend"][-1] == 1_290 and len(data["trend"]) == TREND_DAYS
    assert data["this_month"]["cost_micros"] == cli_store.usage("W1", day[:8] + "01", day, "U1").totals.cost_micros

    code, out = _penny("cost", "--team", "--json", "--workspace", "W1")
    team = json.loads(out)
    assert code == 0 and team["today"]["cost_micros"] == 8_290
    assert [(u["user_id"], u["cost_micros"]) for u in team["top_users"]] == [("U2", 7_000), ("U1", 1_290)]


def test_penny_cost_text(cli_store: SqliteStore) -> None:
    code, out = _penny("cost", "--user", "U1", "--workspace", "W1")
    assert code == 0 and "Your Penny costs" in out and "$0.0013 spent" in out and "*" not in out
    code, out = _penny("cost", "--team", "--workspace", "W1")
    assert code == 0 and "Team Penny costs" in out and "1. U2 — $0.007" in out


def test_penny_cost_team_says_which_answers_came_from_the_cache(cli_store: SqliteStore) -> None:
    now = time.time()
    hit = entry("hit", days_ago=0, user="U1", cost=0, saved=1_234, status="exact", prompt=0, completion=0,
                workspace="W1")
    settle(cli_store, dataclasses.replace(hit, ts=now, day=datetime.fromtimestamp(now, UTC).date().isoformat()))
    code, out = _penny("cost", "--team", "--workspace", "W1")
    assert code == 0
    assert f"{CHAT} — $0.0082 · 2 calls · 1 answer from the cache ·" in out  # the same lines as /cost team
    assert f"{EMBED} — $0.000056 · 1 call ·" in out
