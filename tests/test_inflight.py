"""The count of upstream attempts in flight that breaker failures are weighed against."""

from __future__ import annotations

import threading

import pytest

from proxy_core.inflight import InFlight


def test_an_attempt_counts_until_its_block_ends_or_it_reports_a_failure() -> None:
    flight = InFlight()
    with flight.attempt():
        assert flight.count == 1
    assert flight.count == 0
    with flight.attempt() as first, flight.attempt():
        assert first.report_failure(lambda pending: pending) == 1  # the other one
        assert flight.count == 1  # reported: no longer counted, even inside its block
    assert flight.count == 0


def test_a_failing_record_still_stops_counting_the_attempt() -> None:
    flight = InFlight()

    def broken(pending: int) -> None:
        raise RuntimeError("store down")

    with pytest.raises(RuntimeError), flight.attempt() as sent:
        sent.report_failure(broken)
    assert flight.count == 0


def test_concurrent_failures_each_see_exactly_the_others_still_unreported() -> None:
    n = 40
    flight = InFlight()
    all_sent = threading.Barrier(n)
    seen: list[int] = []

    def fail() -> None:
        with flight.attempt() as sent:
            all_sent.wait()
            seen.append(sent.report_failure(lambda pending: pending))

    threads = [threading.Thread(target=fail) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seen) == list(range(n))
    assert flight.count == 0
