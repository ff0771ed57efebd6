"""Resuming an event stream (Last-Event-ID) from the ring a master keeps."""

from __future__ import annotations

from typing import Any

from strata.master.stream import EventHub, Filter, Subscription, TaskEvent


def _hub(events: int) -> EventHub:
    hub = EventHub(db=None, master="m", window=events)  # type: ignore[arg-type]
    hub._ring.extend(TaskEvent(f"1-{n}", f"t{n % 3}", "running", 1, None, None, 0.0)
                     for n in range(events))
    return hub


def _resumed(hub: EventHub, after: str, capacity: int, **filter: Any) -> Subscription:
    sub = Subscription(Filter(**filter), capacity)
    hub._replay(sub, after)
    return sub


def test_a_resume_gets_the_events_after_its_id() -> None:
    sub = _resumed(_hub(10), "1-6", capacity=10)
    assert not sub.missed and not sub.dropped
    assert [e.event_id for e in sub._queue] == ["1-7", "1-8", "1-9"]


def test_a_resume_past_what_it_may_hold_is_told_it_missed_and_is_not_dropped() -> None:
    # A subscriber dropped for falling behind resumes from where it was: replaying more
    # than it may hold would drop it again at once, however often it came back.
    sub = _resumed(_hub(100), "1-0", capacity=50)
    assert sub.missed and not sub.dropped
    assert not sub._queue


def test_only_the_events_it_wants_count_against_what_it_may_hold() -> None:
    sub = _resumed(_hub(100), "1-0", capacity=50, tasks=frozenset({"t1"}))
    assert not sub.missed and not sub.dropped
    assert len(sub._queue) == 33


def test_an_id_no_longer_kept_is_missed() -> None:
    sub = _resumed(_hub(10), "0-5", capacity=10)
    assert sub.missed and not sub._queue
