"""What runs around Penny's listeners (bot/slack/middleware.py) as plain objects: who counts as a
person writing, and handling an event once with its records stored on completion."""

from __future__ import annotations

from typing import Any

import pytest

from bot.slack.middleware import EDIT_WINDOW_S, Once, after_handling, edit_in_time, remember, written_by_a_person
from proxy_core import Record, Store


@pytest.mark.parametrize(
    ("event", "person"),
    [
        ({"user": "U1", "text": "hi"}, True),
        ({"user": "U1", "subtype": "thread_broadcast"}, True),
        ({"user": "U1", "subtype": "file_share"}, True),
        ({"user": "U1", "subtype": "channel_join"}, False),
        ({"user": "U1", "bot_id": "B1"}, False),
        ({"subtype": "message_changed"}, False),
        ({"user": "U1", "edited": {"user": "U1", "ts": "1700000160.000000"}}, False),  # see edit_in_time
        ({"bot_id": "B1", "subtype": "bot_message"}, False),
    ],
)
def test_who_counts_as_a_person_writing(event: dict[str, Any], person: bool) -> None:
    assert written_by_a_person(event) is person


POSTED = 1_700_000_100.0
EDITED = {"user": "U1", "ts": "1700000160.000000"}


def edited_after(age: float) -> dict[str, str]:
    return {"user": "U1", "ts": f"{POSTED + age:.6f}"}


@pytest.mark.parametrize(
    ("event", "age", "in_time"),
    [
        ({"type": "app_mention", "user": "U1", "edited": edited_after(60.0)}, 60.0, True),
        ({"type": "app_mention", "user": "U1", "edited": edited_after(EDIT_WINDOW_S)}, 3600.0, True),  # delivered late
        ({"type": "app_mention", "user": "U1", "edited": edited_after(EDIT_WINDOW_S + 1)}, 60.0, False),
        ({"type": "app_mention", "user": "U1", "edited": {"user": "U1"}}, 60.0, True),  # no edit time: this clock's
        ({"type": "app_mention", "user": "U1", "edited": {"user": "U1"}}, EDIT_WINDOW_S + 1, False),
        ({"type": "app_mention", "user": "U1", "edited": {"user": "U1", "ts": "nan"}}, EDIT_WINDOW_S + 1, False),
        ({"type": "app_mention", "user": "U1"}, 60.0, False),  # not an edit: written_by_a_person's
        ({"type": "message", "user": "U1", "edited": EDITED}, 60.0, False),  # the app_mention is enough
        ({"type": "app_mention", "user": "U1", "bot_id": "B1", "edited": EDITED}, 60.0, False),
        ({"type": "app_mention", "edited": EDITED}, 60.0, False),
    ],
)
def test_which_edits_may_be_answered(event: dict[str, Any], age: float, in_time: bool) -> None:
    """``age``: how long after the message this replica hears the edit; the window is from the
    message to the edit, as Slack dates them."""
    assert edit_in_time({**event, "ts": f"{POSTED:.6f}"}, POSTED + age) is in_time


def test_an_edit_whose_ts_is_not_a_time_is_not_answered() -> None:
    assert not edit_in_time({"type": "app_mention", "user": "U1", "edited": EDITED, "ts": "p1700000100"}, POSTED)


def test_an_event_is_handled_once_and_its_records_come_with_its_completion(store: Store) -> None:
    once = Once(store)
    seen: list[str] = []

    def handle() -> None:
        remember(store, Record("slack:threads", "T1:C1:1.0", "1", 60))
        assert store.record_get("slack:threads", "T1:C1:1.0") is None  # not yet: with the completion
        after_handling(lambda: seen.append(str(store.record_get("slack:threads", "T1:C1:1.0"))))
        seen.append("handled")

    once.run("T1", "slack:Ev1", handle)
    once.run("T1", "slack:Ev1", handle)  # Slack's retry of the same event
    assert seen == ["handled", "1"]  # once; what waited ran after the records were stored
    assert store.claim_request("T1", "slack:Ev1", ttl_s=60).state == "done"


def test_outside_an_event_a_record_is_stored_and_a_follow_up_runs_at_once(store: Store) -> None:
    ran: list[bool] = []
    remember(store, Record("slack:threads", "k", "1", 60))
    after_handling(lambda: ran.append(True))
    assert store.record_get("slack:threads", "k") == "1"
    assert ran == [True]
