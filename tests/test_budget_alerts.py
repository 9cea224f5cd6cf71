"""Budget alerts: each threshold of each budget line is announced once per period, across replicas.

Gateways run against SQLite and Redis (the ``store`` fixture) and the fake OpenAI server, with a
manual clock. gpt-4.1-mini bills $1.60 per 1M completion tokens, so 625 completion tokens (and no
prompt tokens) cost exactly 1000 µ$: a tenth of a $0.01 budget.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import structlog

from proxy_core.alerts import BudgetAlert, BudgetAlerter, alert_text, crossed, reached
from proxy_core.budget import CallSource, budget_lines
from proxy_core.clock import ManualClock
from proxy_core.errors import BudgetExceeded
from proxy_core.gateway import Gateway
from proxy_core.stores.base import Store
from tests.budgeting import reserve
from tests.fake_openai import API_KEY, FakeOpenAI, Fault
from tests.threads import run_together

START = 1_767_225_600.0  # ManualClock's start: 2026-01-01T00:00:00Z
TENTH = 625  # completion tokens costing 1000 µ$ on gpt-4.1-mini

GatewayFactory = Callable[..., Gateway]  # the make_gateway fixture (tests/conftest.py)


@pytest.fixture
def gateway_settings() -> dict[str, Any]:
    return {
        "cache_enabled": False,
        "max_output_tokens": 10,  # a tiny reservation: the fake then bills what it is told to
        "user_daily_budget_usd": "0.01",
    }


class Inbox:
    """Collects alerts from any number of gateways and threads."""

    def __init__(self) -> None:
        self.alerts: list[BudgetAlert] = []
        self._lock = threading.Lock()

    def __call__(self, alert: BudgetAlert) -> None:
        with self._lock:
            self.alerts.append(alert)

    def take(self) -> list[int]:
        with self._lock:
            thresholds = [a.threshold for a in self.alerts]
            self.alerts.clear()
        return thresholds


def ask(gw: Gateway, request_id: str, *, user: str = "U1", workspace: str = "W1") -> Any:
    return gw.chat(user_id=user, workspace_id=workspace, request_id=request_id,
                   messages=[{"role": "user", "content": f"question {request_id}"}])


# -- pure ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("before", "after", "limit", "expected"),
    [
        (0, 4_999, 10_000, []),
        (4_999, 5_000, 10_000, [50]),  # exactly half is half
        (5_000, 5_001, 10_000, []),  # already past
        (4_000, 8_500, 10_000, [50, 80]),  # one jump over two thresholds
        (0, 10_000, 10_000, [50, 80, 100]),
        (9_000, 12_000, 10_000, [100]),  # overshoot still counts once
        (0, 10**9, 0, []),  # uncapped: never
        (1, 2, 3, [50]),  # 2/3 = 66%: integer arithmetic, no float boundary
    ],
)
def test_crossed(before: int, after: int, limit: int, expected: list[int]) -> None:
    assert crossed(before, after, limit) == expected


def test_reached_is_every_threshold_at_or_below_the_spend() -> None:
    assert reached(7_999, 10_000) == [50]
    assert reached(8_000, 10_000) == [50, 80]
    assert reached(5, 0) == []


def test_alert_text_for_a_user_and_for_the_workspace() -> None:
    user = BudgetAlert(workspace_id="W1", user_id="U123", scope="daily", threshold=80, spent=800_000,
                       limit=1_000_000, resets_at=START + 86_400, period="2026-01-01")
    assert alert_text(user) == (
        "Heads-up: U123 has used 80% of their daily budget ($0.80 of $1.00); it resets at 2026-01-02 00:00 UTC."
    )
    assert alert_text(user, mention=True).startswith("Heads-up: <@U123> has used 80%")
    full = BudgetAlert(workspace_id="W1", user_id=None, scope="workspace monthly", threshold=100,
                       spent=25_000_000, limit=25_000_000, resets_at=1_769_904_000.0, period="2026-01")
    text = alert_text(full)
    assert text.startswith("Heads-up: The workspace has used all of its monthly budget ($25.00 of $25.00)")
    assert "2026-02-01 00:00 UTC" in text



def test_an_alert_below_the_whole_budget_never_shows_it_all_spent() -> None:
    # One call took the day from under 80% to $0.999999 of $1: half up, "$1.00 of $1.00" at 80%.
    alert = BudgetAlert(workspace_id="W1", user_id="U123", scope="daily", threshold=80, spent=999_999,
                        limit=1_000_000, resets_at=START + 86_400, period="2026-01-01")
    assert "has used 80% of their daily budget ($0.9999 of $1.00)" in alert_text(alert)

# -- through the gateway --------------------------------------------------------------------------

def test_a_user_is_announced_at_50_80_and_100_percent_each_once(make_gateway: GatewayFactory, fake: FakeOpenAI,
                                                                store: Store) -> None:
    inbox = Inbox()
    gw = make_gateway(on_budget_alert=inbox)
    fake.script(*[Fault.ok(prompt_tokens=0, completion_tokens=TENTH) for _ in range(10)])
    per_call: list[list[int]] = []
    for i in range(10):
        assert ask(gw, f"r{i}").cost_micros == 1_000
        per_call.append(inbox.take())
    assert per_call == [[], [], [], [], [50], [], [], [80], [], [100]]
    with pytest.raises(BudgetExceeded):
        ask(gw, "r10")
    assert inbox.take() == []


def test_alert_carries_the_line_and_the_spend(make_gateway: GatewayFactory, fake: FakeOpenAI) -> None:
    inbox = Inbox()
    gw = make_gateway(on_budget_alert=inbox)
    fake.script(Fault.ok(prompt_tokens=0, completion_tokens=TENTH * 5))
    ask(gw, "half")
    [alert] = inbox.alerts
    assert alert == BudgetAlert(workspace_id="W1", user_id="U1", scope="daily", threshold=50, spent=5_000,
                                limit=10_000, resets_at=START + 86_400, period="2026-01-01")
    assert alert_text(alert) == (
        "Heads-up: U1 has used 50% of their daily budget ($0.005 of $0.01); it resets at 2026-01-02 00:00 UTC."
    )


def test_one_call_jumping_over_two_thresholds_announces_both(make_gateway: GatewayFactory,
                                                              fake: FakeOpenAI) -> None:
    inbox = Inbox()
    gw = make_gateway(on_budget_alert=inbox)
    fake.script(Fault.ok(prompt_tokens=0, completion_tokens=TENTH * 4),  # 40%
                Fault.ok(prompt_tokens=0, completion_tokens=2_813))  # +4501 µ$ → 85%
    ask(gw, "a")
    assert inbox.take() == []
    ask(gw, "b")
    assert inbox.take() == [50, 80]


def test_two_replicas_racing_never_both_announce_a_threshold(make_gateway: GatewayFactory, fake: FakeOpenAI,
                                                             store: Store, open_twin: Callable[[], Store]) -> None:
    inbox = Inbox()
    gateways = [make_gateway(on_budget_alert=inbox), make_gateway(open_twin(), on_budget_alert=inbox)]
    fake.script(*[Fault.ok(prompt_tokens=0, completion_tokens=TENTH) for _ in range(10)])
    start = threading.Barrier(10)
    failures: list[BaseException] = []

    def call(i: int) -> None:
        start.wait()
        try:
            ask(gateways[i % 2], f"c{i}")
        except BaseException as exc:  # reported below, not swallowed
            failures.append(exc)

    run_together(10, call)
    assert failures == []
    assert sorted(inbox.take()) == [50, 80, 100]


def test_alerters_on_two_stores_split_one_threshold(store: Store, open_twin: Callable[[], Store]) -> None:
    # Ten threads on two replicas all see the line at 100% at once: exactly one wins each threshold.
    line = budget_lines("W1", "U1", START, user_daily=10_000, workspace_monthly=0)[0]
    alerters = [BudgetAlerter(store), BudgetAlerter(open_twin())]
    from proxy_core.stores.base import LedgerEntry

    store.settle(
        LedgerEntry(request_id="full", ts=START, day="2026-01-01", workspace_id="W1", user_id="U1", model="m",
                    kind="chat", prompt_tokens=0, cached_prompt_tokens=0, completion_tokens=0,
                    cost_micros=10_000, saved_micros=0, cache_status="miss", latency_ms=0, attempts=1),
        reservation_id=None, lines=[line], result=None, result_ttl_s=60,
    )
    start = threading.Barrier(10)
    won: list[BudgetAlert] = []
    lock = threading.Lock()

    def settle_and_alert(i: int) -> None:
        start.wait()
        alerts = alerters[i % 2].after_settle("W1", "U1", [line], 1_000)
        with lock:
            won.extend(alerts)

    threads = [threading.Thread(target=settle_and_alert, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(a.threshold for a in won) == [50, 80, 100]


def test_the_next_day_announces_again(make_gateway: GatewayFactory, fake: FakeOpenAI, clock: ManualClock) -> None:
    inbox = Inbox()
    gw = make_gateway(on_budget_alert=inbox)
    fake.script(*[Fault.ok(prompt_tokens=0, completion_tokens=TENTH * 5) for _ in range(4)])
    ask(gw, "d1a")
    assert [(a.threshold, a.period) for a in inbox.alerts] == [(50, "2026-01-01")]
    inbox.take()
    clock.advance(86_400 + 1)
    ask(gw, "d2a")
    assert [(a.threshold, a.period) for a in inbox.alerts] == [(50, "2026-01-02")]
    assert inbox.alerts[0].resets_at == START + 2 * 86_400
    inbox.take()
    ask(gw, "d2b")
    assert inbox.take() == [80, 100]


def test_a_budget_raised_mid_day_is_announced_again_as_the_new_budget_fills(
        make_gateway: GatewayFactory, fake: FakeOpenAI, store: Store) -> None:
    # The day's $0.01 is used up and announced; the operator raises it to $0.02 (a restart with new
    # settings, same store): reaching 80% and 100% of the new budget must be announced too.
    inbox = Inbox()
    gw = make_gateway(on_budget_alert=inbox)
    fake.script(*[Fault.ok(prompt_tokens=0, completion_tokens=TENTH) for _ in range(20)])
    for i in range(10):
        ask(gw, f"old{i}")
    assert inbox.take() == [50, 80, 100]
    raised = make_gateway(on_budget_alert=inbox, user_daily_budget_usd="0.02")
    per_call = []
    for i in range(10):
        ask(raised, f"new{i}")
        per_call.append([(a.threshold, a.limit) for a in inbox.alerts])
        inbox.take()
    assert per_call == [[(50, 20_000)], [], [], [], [], [(80, 20_000)], [], [], [], [(100, 20_000)]]


def test_a_budget_lowered_below_the_days_spend_is_announced_spent_by_the_first_refusal(
        make_gateway: GatewayFactory, fake: FakeOpenAI) -> None:
    # $0.006 spent of $0.01 (50% announced); the operator lowers the day's budget to $0.005: every
    # call is refused from now on, none settles, and the admins must still hear it is all spent.
    inbox = Inbox()
    gw = make_gateway(on_budget_alert=inbox)
    fake.script(*[Fault.ok(prompt_tokens=0, completion_tokens=TENTH) for _ in range(6)])
    for i in range(6):
        ask(gw, f"old{i}")
    assert inbox.take() == [50]
    lowered = make_gateway(on_budget_alert=inbox, user_daily_budget_usd="0.005")
    with pytest.raises(BudgetExceeded):
        ask(lowered, "refused1")
    assert [(a.threshold, a.limit, a.spent) for a in inbox.alerts] == [(100, 5_000, 6_000)]  # one alert, not three
    inbox.take()
    with pytest.raises(BudgetExceeded):
        ask(lowered, "refused2")
    with pytest.raises(BudgetExceeded):
        ask(make_gateway(on_budget_alert=inbox, user_daily_budget_usd="0.005"), "refused3")  # another replica
    assert inbox.take() == []  # once per limit and period, across replicas
    assert fake.count("chat") == 6


def test_a_refusal_while_calls_in_flight_hold_the_rest_announces_nothing(
        make_gateway: GatewayFactory, fake: FakeOpenAI, store: Store) -> None:
    # Refused because what is reserved fills the budget, not because it is spent: no alert is news.
    inbox = Inbox()
    gw = make_gateway(on_budget_alert=inbox, max_output_tokens=5_000)  # a reservation of 8000 µ$
    line = budget_lines("W1", "U1", START, user_daily=10_000, workspace_monthly=0)[0]
    assert reserve(store, "W1", "held", [line], 8_000, ttl_s=60).ok
    with pytest.raises(BudgetExceeded):
        ask(gw, "refused")
    assert inbox.take() == []


def test_the_workspace_month_is_announced_without_a_user(make_gateway: GatewayFactory, fake: FakeOpenAI) -> None:
    inbox = Inbox()
    gw = make_gateway(on_budget_alert=inbox, user_daily_budget_usd="0", workspace_monthly_budget_usd="0.01")
    fake.script(*[Fault.ok(prompt_tokens=0, completion_tokens=TENTH) for _ in range(5)])
    for i in range(5):
        ask(gw, f"w{i}", user=f"U{i}")
    [alert] = inbox.alerts
    assert (alert.user_id, alert.scope, alert.threshold, alert.period) == (None, "workspace monthly", 50, "2026-01")
    assert alert_text(alert).startswith("Heads-up: The workspace has used 50% of its monthly budget")


def test_no_caps_no_alerts(make_gateway: GatewayFactory, fake: FakeOpenAI) -> None:
    inbox = Inbox()
    gw = make_gateway(on_budget_alert=inbox, user_daily_budget_usd="0", workspace_monthly_budget_usd="0")
    fake.script(*[Fault.ok(prompt_tokens=0, completion_tokens=TENTH * 100) for _ in range(3)])
    for i in range(3):
        ask(gw, f"n{i}")
    assert inbox.alerts == []


def test_embeddings_count_towards_alerts(make_gateway: GatewayFactory, fake: FakeOpenAI) -> None:
    inbox = Inbox()
    gw = make_gateway(on_budget_alert=inbox)
    # text-embedding-3-small: $0.02 per 1M tokens, so 250k tokens cost 5000 µ$.
    fake.script(Fault.ok(prompt_tokens=250_000), endpoint="embeddings")
    result = gw.embed(user_id="U1", workspace_id="W1", request_id="e1", inputs=["some text"])
    assert result.cost_micros == 5_000
    assert inbox.take() == [50]


def test_a_failing_callback_never_breaks_the_request(make_gateway: GatewayFactory, fake: FakeOpenAI) -> None:
    def explode(alert: BudgetAlert) -> None:
        raise RuntimeError("slack is down")

    gw = make_gateway(on_budget_alert=explode)
    fake.script(*[Fault.ok(prompt_tokens=0, completion_tokens=TENTH * 5) for _ in range(2)])
    with structlog.testing.capture_logs() as logs:
        first = ask(gw, "x1")
        second = ask(gw, "x2")
    assert first.cost_micros == second.cost_micros == 5_000
    events = [e for e in logs if e["event"].startswith("budget_alert")]
    assert [(e["event"], e["threshold"]) for e in events] == [
        ("budget_alert", 50), ("budget_alert_failed", 50),
        ("budget_alert", 80), ("budget_alert_failed", 80),
        ("budget_alert", 100), ("budget_alert_failed", 100),
    ]
    assert events[0]["scope"] == "daily" and events[0]["user_id"] == "U1"
    assert API_KEY not in repr(logs)


def test_a_replayed_request_does_not_announce_again(make_gateway: GatewayFactory, fake: FakeOpenAI) -> None:
    inbox = Inbox()
    gw = make_gateway(on_budget_alert=inbox)
    fake.script(Fault.ok(prompt_tokens=0, completion_tokens=TENTH * 5))
    ask(gw, "same")
    ask(gw, "same")  # idempotent: served from the recorded result, nothing billed
    assert inbox.take() == [50]
    assert fake.count("chat") == 1


def test_the_slack_relay_dms_each_admin_off_the_request_thread() -> None:
    from slack_sdk import WebClient

    from bot.settings import BotSettings
    from bot.slack.runner import AlertRelay
    from proxy_core.alerts import BudgetAlert
    from tests.fake_slack import FakeSlack

    alert = BudgetAlert(workspace_id="W1", user_id="U9", scope="daily", threshold=80, spent=800_000,
                        limit=1_000_000, resets_at=1_767_312_000.0, period="2026-01-01")
    with FakeSlack() as slack:
        relay = AlertRelay(BotSettings(admin_user_ids=["UADMIN1", "UADMIN2"]))
        relay.attach(WebClient(token="xoxb-test-not-real", base_url=slack.base_url))
        relay(alert)
        posts = slack.wait_for("chat.postMessage", 2)
        relay.close()
    assert sorted(p.params["channel"] for p in posts) == ["UADMIN1", "UADMIN2"]
    assert all("80%" in p.params["text"] and "<@U9>" in p.params["text"] for p in posts)


def test_the_slack_relay_posts_once_in_the_alert_channel_when_set() -> None:
    from slack_sdk import WebClient

    from bot.settings import BotSettings
    from bot.slack.runner import AlertRelay
    from proxy_core.alerts import BudgetAlert
    from tests.fake_slack import FakeSlack

    alert = BudgetAlert(workspace_id="W1", user_id=None, scope="workspace monthly", threshold=100, spent=5_000_000,
                        limit=5_000_000, resets_at=1_769_904_000.0, period="2026-01")
    with FakeSlack() as slack:
        relay = AlertRelay(BotSettings(admin_user_ids=["UADMIN1"], alert_channel="C0ALERTS"))
        relay.attach(WebClient(token="xoxb-test-not-real", base_url=slack.base_url))
        relay(alert)
        relay.close()
        assert [p.params["channel"] for p in slack.calls("chat.postMessage")] == ["C0ALERTS"]


def test_a_proxy_keys_own_budget_is_announced_as_the_users(make_gateway: GatewayFactory, fake: FakeOpenAI) -> None:
    # The user has no daily cap; their key has $0.01 a day of its own.
    inbox = Inbox()
    gw = make_gateway(on_budget_alert=inbox, user_daily_budget_usd="0")
    fake.script(Fault.ok(prompt_tokens=0, completion_tokens=TENTH * 8))
    gw.chat(user_id="U1", workspace_id="W1", request_id="proxy:key_nb:1", source=CallSource("key_nb", 10_000),
            messages=[{"role": "user", "content": "question from a notebook"}])
    assert [(a.user_id, a.scope, a.threshold, a.spent, a.limit) for a in inbox.alerts] == [
        ("U1", "key_nb daily", 50, 8_000, 10_000), ("U1", "key_nb daily", 80, 8_000, 10_000)]
    assert alert_text(inbox.alerts[-1]) == ("Heads-up: U1 has used 80% of their key_nb daily budget ($0.008 of "
                                            "$0.01); it resets at 2026-01-02 00:00 UTC.")


def test_the_slack_relay_names_a_user_that_is_not_a_slack_id_as_text_in_the_alert_channel() -> None:
    # A proxy key's user is whatever `penny keys create --user` was given, `penny ask`'s "cli:<login>".
    import re

    from slack_sdk import WebClient

    from bot.settings import BotSettings
    from bot.slack.runner import AlertRelay
    from proxy_core.alerts import BudgetAlert
    from tests.fake_slack import FakeSlack

    alerts = [BudgetAlert(workspace_id="W1", user_id=user, scope="daily", threshold=80, spent=800_000,
                          limit=1_000_000, resets_at=1_767_312_000.0, period="2026-01-01")
              for user in ("cli:x> <!channel", "@here", "U9")]
    with FakeSlack() as slack:
        relay = AlertRelay(BotSettings(admin_user_ids=["UADMIN1"], alert_channel="C0ALERTS"))
        relay.attach(WebClient(token="xoxb-test-not-real", base_url=slack.base_url))
        for alert in alerts:
            relay(alert)
        relay.close()
        texts = [str(p.params["text"]) for p in slack.calls("chat.postMessage")]
    assert [t.split(" has used")[0] for t in texts] == [
        "Heads-up: `cli:x&gt; &lt;!channel`", "Heads-up: `@\u2060here`", "Heads-up: <@U9>"]
    assert not any(re.search(r"(?<!\w)@(?:here|channel|everyone)(?!\w)", t) for t in texts)
