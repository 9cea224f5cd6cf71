"""What runs around Penny's listeners (bot/slack/middleware.py) as plain objects: who counts as a
person writing, and handling an event once with its records stored on completion."""

from __future__ import annotations

from typing import Any

import pytest

from bot.slack.middleware import Once, after_handling, remember, written_by_a_person
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
        ({"bot_id": "B1", "subtype": "bot_message"}, False),
    ],
)
def test_who_counts_as_a_person_writing(event: dict[str, Any], person: bool) -> None:
    assert written_by_a_person(event) is person


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
