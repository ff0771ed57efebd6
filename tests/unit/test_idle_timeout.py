"""How long an idle scanner sleeps before its next scan."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from strata.master.scanner import TIMER_SLACK_S, idle_timeout

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def test_nothing_due_later_sleeps_a_scan_interval() -> None:
    assert idle_timeout(0.5, None, NOW) == 0.5


def test_a_task_due_sooner_than_the_interval_wakes_the_scanner_just_after() -> None:
    """Just after, never before: a timer that fires a little early must not find the
    task not yet due (the scanner would then sleep a whole interval)."""
    assert idle_timeout(0.5, NOW + timedelta(milliseconds=120), NOW) == pytest.approx(
        0.12 + TIMER_SLACK_S)


def test_a_task_due_later_than_the_interval_waits_for_the_safety_net_scan() -> None:
    assert idle_timeout(0.5, NOW + timedelta(seconds=3), NOW) == 0.5


@pytest.mark.parametrize("past", [timedelta(0), timedelta(microseconds=300), timedelta(seconds=2)])
def test_a_task_that_came_due_since_it_was_looked_up_is_scanned_for_at_once(
    past: timedelta,
) -> None:
    """The lookup found it not yet due; by the time the scanner computes its sleep, it
    is: the next scan comes at once, not a whole scan interval later."""
    assert idle_timeout(0.5, NOW - past, NOW) <= TIMER_SLACK_S
