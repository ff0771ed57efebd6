"""Schedule maths: fire times (cron in a time zone, DST both ways, fixed intervals), and
what one pass records: fired, missed (catchup) and skipped (overlap)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from strata.common.errors import InvalidInput
from strata.common.schedules import ScheduleSpec, parse_schedule, patched
from strata.master.db import ScheduleRow
from strata.master.schedules import LEAD, plan

BERLIN = ZoneInfo("Europe/Berlin")
T0 = datetime(2030, 1, 1, tzinfo=UTC)
TASK = {"kind": "shell", "command": "true"}


def spec(**fields: Any) -> ScheduleSpec:
    return parse_schedule({"name": "s", "task": TASK, **fields})


def first(s: ScheduleSpec, after: datetime, n: int, anchor: datetime = T0) -> list[datetime]:
    return list(islice(s.times(after, anchor), n))


def test_cron_times_start_at_the_time_given_itself() -> None:
    every_minute = spec(cron="* * * * *")
    assert first(every_minute, T0, 3) == [T0, T0 + timedelta(minutes=1),
                                          T0 + timedelta(minutes=2)]
    assert first(every_minute, T0 + timedelta(seconds=1), 1) == [T0 + timedelta(minutes=1)]


def test_six_fields_count_seconds() -> None:
    assert first(spec(cron="*/15 * * * * *"), T0 + timedelta(seconds=1), 2) == [
        T0 + timedelta(seconds=15), T0 + timedelta(seconds=30)]


def test_cron_in_a_time_zone() -> None:
    nine_in_berlin = spec(cron="0 9 * * *", timezone="Europe/Berlin")
    assert first(nine_in_berlin, T0, 1) == [datetime(2030, 1, 1, 8, tzinfo=UTC)]


def test_a_fixed_time_in_the_spring_gap_runs_when_the_gap_ends() -> None:
    # 2026-03-29: Berlin's clocks go from 02:00 to 03:00; 02:30 does not exist.
    daily = spec(cron="30 2 * * *", timezone="Europe/Berlin")
    fires = first(daily, datetime(2026, 3, 29, 0, 0, tzinfo=UTC), 2)
    assert fires == [datetime(2026, 3, 29, 3, 0, tzinfo=BERLIN),
                     datetime(2026, 3, 30, 2, 30, tzinfo=BERLIN)]
    assert fires[0] == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)


def test_a_fixed_time_in_the_autumn_repeat_runs_once() -> None:
    # 2026-10-25: Berlin's clocks go from 03:00 back to 02:00; 02:30 comes twice.
    daily = spec(cron="30 2 * * *", timezone="Europe/Berlin")
    fires = first(daily, datetime(2026, 10, 24, 12, 0, tzinfo=UTC), 2)
    assert [f.astimezone(UTC) for f in fires] == [
        datetime(2026, 10, 25, 0, 30, tzinfo=UTC),  # 02:30 summer time, the first one
        datetime(2026, 10, 26, 1, 30, tzinfo=UTC)]


def test_an_interval_job_follows_the_wall_clock_through_the_repeat() -> None:
    half_hourly = spec(cron="*/30 * * * *", timezone="Europe/Berlin")
    fires = first(half_hourly, datetime(2026, 10, 25, 0, 0, tzinfo=UTC), 4)
    # 02:00 and 02:30 come once in summer time, once in winter time.
    assert [f.astimezone(UTC) for f in fires] == [
        datetime(2026, 10, 25, 0, 0, tzinfo=UTC), datetime(2026, 10, 25, 0, 30, tzinfo=UTC),
        datetime(2026, 10, 25, 1, 0, tzinfo=UTC), datetime(2026, 10, 25, 1, 30, tzinfo=UTC)]


def test_every_s_counts_from_its_anchor_and_start_at() -> None:
    every = spec(every_s=10)
    assert first(every, T0 + timedelta(seconds=1), 2) == [
        T0 + timedelta(seconds=10), T0 + timedelta(seconds=20)]
    started = spec(every_s=10, start_at="2030-01-01T00:00:05Z")
    assert first(started, T0, 2) == [T0 + timedelta(seconds=5), T0 + timedelta(seconds=15)]


def test_no_fire_after_end_at() -> None:
    bounded = spec(every_s=60, end_at="2030-01-01T00:02:00Z")
    assert first(bounded, T0, 10) == [T0, T0 + timedelta(minutes=1), T0 + timedelta(minutes=2)]


@pytest.mark.parametrize(("body", "message"), [
    ({"cron": "61 * * * *"}, "not a cron expression"),
    ({"cron": "* * *"}, "not a cron expression"),
    ({"cron": "* * * * *", "every_s": 5}, "one of the two"),
    ({}, "one of the two"),
    ({"every_s": 0.5}, "every_s"),
    ({"every_s": 5, "timezone": "Mars/Olympus"}, "unknown time zone"),
    ({"every_s": 5, "task": {"kind": "shell"}}, "command"),
    ({"every_s": 5, "task": {**TASK, "run_at": "2030-01-01T00:00:00Z"}}, "run_at"),
    ({"every_s": 5, "task": {**TASK, "idempotency_key": "k"}}, "idempotency_key"),
    ({"every_s": 5, "overlap": "sometimes"}, "overlap"),
    ({"every_s": 5, "catchup": "some"}, "catchup"),
    ({"every_s": 5, "start_at": "2030-01-02T00:00:00Z", "end_at": "2030-01-01T00:00:00Z"},
     "end_at"),
    ({"every_s": 5, "name": "no spaces"}, "name"),
])
def test_bad_schedules_are_refused(body: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_schedule({"name": "s", "task": TASK, **body})


def test_a_change_to_cron_drops_every_s() -> None:
    changed = patched(spec(every_s=5), {"cron": "0 * * * *"})
    assert (changed.cron, changed.every_s) == ("0 * * * *", None)
    with pytest.raises(InvalidInput, match="unchangeable"):
        patched(changed, {"name": "other"})


def row(s: ScheduleSpec, next_fire_at: datetime, *, last: str | None = None) -> ScheduleRow:
    return ScheduleRow(spec=s, next_fire_at=next_fire_at,
                       last_task_id=uuid.uuid4() if last else None, last_task_state=last,
                       created_at=T0, updated_at=T0)


def test_a_pass_fires_what_is_due_and_makes_tasks_ahead_of_time() -> None:
    p = plan(row(spec(every_s=1), T0), T0)
    # Due now, and within the lead: each a task due at its fire time.
    assert [f.fire_time for f in p.fires] == [T0 + timedelta(seconds=i)
                                              for i in range(int(LEAD.total_seconds()) + 1)]
    assert all(f.outcome == "fired" and f.task is not None and f.task.run_at == f.fire_time
               for f in p.fires)
    assert p.next_fire_at == p.fires[-1].fire_time + timedelta(seconds=1)


def test_after_downtime_catchup_none_fires_the_latest_and_says_what_it_missed() -> None:
    p = plan(row(spec(cron="* * * * *"), T0), T0 + timedelta(minutes=3, seconds=30))
    assert [(f.fire_time, f.outcome) for f in p.fires] == [
        (T0, "missed"), (T0 + timedelta(minutes=1), "missed"),
        (T0 + timedelta(minutes=2), "missed"), (T0 + timedelta(minutes=3), "fired")]
    assert "late by 30.0s" in (p.fires[-1].reason or "")
    assert p.next_fire_at == T0 + timedelta(minutes=4)


def test_after_downtime_catchup_all_fires_each() -> None:
    p = plan(row(spec(cron="* * * * *", catchup="all"), T0),
             T0 + timedelta(minutes=3, seconds=30))
    assert [f.outcome for f in p.fires] == ["fired"] * 4


def test_overlap_skip_and_cancel_previous() -> None:
    skip = plan(row(spec(every_s=60, overlap="skip"), T0, last="running"), T0)
    assert [(f.outcome, f.task) for f in skip.fires] == [("skipped_overlap", None)]
    assert "had not finished" in (skip.fires[0].reason or "")
    done = plan(row(spec(every_s=60, overlap="skip"), T0, last="succeeded"), T0)
    assert [f.outcome for f in done.fires] == ["fired"]
    cancel = row(spec(every_s=60, overlap="cancel_previous"), T0, last="running")
    p = plan(cancel, T0)
    assert [f.outcome for f in p.fires] == ["fired"]
    assert p.cancel == [cancel.last_task_id]
    # Those that look at the previous run fire at their time, not ahead of it.
    assert skip.next_fire_at == T0 + timedelta(seconds=60)


def test_a_schedule_past_its_end_has_no_next_fire() -> None:
    p = plan(row(spec(every_s=60, end_at="2030-01-01T00:00:00Z"), T0), T0)
    assert [f.fire_time for f in p.fires] == [T0] and p.next_fire_at is None
