"""Firing schedules. Every master runs a scheduler; any number may race for one
schedule. Each pass over a schedule is one transaction that holds its row (another
master skips it meanwhile) and records each fire time under a key: a fire recorded by
one master is never made again by another, and a master killed mid-pass leaves the row
as it was, for the next master's pass."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from strata.common.errors import DatabaseUnavailable
from strata.common.models import TERMINAL_STATES
from strata.common.retry import Backoff, of_type, retrying
from strata.common.schedules import MAX_FIRES_PER_PASS, ScheduleSpec, fire_task
from strata.common.timeutil import rfc3339, utcnow
from strata.master.db import Database, Fire, Fired, FirePlan, ScheduleRow
from strata.master.metrics import MasterMetrics

logger = logging.getLogger(__name__)

# A schedule that may overlap its runs has its tasks made this much before they are due,
# so that each is claimed at its fire time, not a pass later. One that must look at its
# previous run first (skip, cancel_previous) fires at its time.
LEAD = timedelta(seconds=2)
# A fire accounted for this long after its time is late: the schedulers were down or
# behind. With catchup none, of the late ones only the latest fires; the rest are missed.
LATE_AFTER = timedelta(seconds=5)
POLL_S = 1.0  # how often a scheduler looks for schedules another master changed
DUE_BATCH = 100
DB_BACKOFF = Backoff(initial_s=0.1, max_s=5.0, healthy_after_s=10.0)


def lead_of(spec: ScheduleSpec) -> timedelta:
    return LEAD if spec.overlap == "allow" else timedelta(0)


def first_fire(spec: ScheduleSpec, after: datetime, anchor: datetime) -> datetime | None:
    return next(spec.times(after, anchor), None)


def plan(schedule: ScheduleRow, now: datetime) -> FirePlan:
    """What a pass at ``now`` records: every fire time from the schedule's next one up to
    now (and its lead), each fired, missed or skipped."""
    spec = schedule.spec
    assert schedule.next_fire_at is not None
    horizon = now + lead_of(spec)
    times: list[datetime] = []
    next_fire_at: datetime | None = None
    for t in spec.times(schedule.next_fire_at, schedule.created_at):
        if t > horizon or len(times) >= MAX_FIRES_PER_PASS:
            next_fire_at = t
            break
        times.append(t)
    late = [t for t in times if now - t > LATE_AFTER]
    previous = schedule.last_task_id
    unfinished = previous is not None and schedule.last_task_state not in TERMINAL_STATES \
        and schedule.last_task_state is not None
    fires: list[Fire] = []
    cancel: list[uuid.UUID] = []
    for t in times:
        if spec.catchup == "none" and late and t in late and t != late[-1]:
            fires.append(Fire(t, "missed", f"no scheduler ran at its time; catchup none "
                                           f"fires only the latest missed time, "
                                           f"{rfc3339(late[-1])}"))
            continue
        if unfinished and spec.overlap == "skip":
            fires.append(Fire(t, "skipped_overlap",
                              f"the task of the previous fire, {previous}, had not finished"))
            continue
        if unfinished and spec.overlap == "cancel_previous" and previous is not None:
            cancel.append(previous)
        reason = f"late by {(now - t).total_seconds():.1f}s" if t in late else None
        task = fire_task(spec, t)
        fires.append(Fire(t, "fired", reason, task))
        previous, unfinished = task.id, True
    return FirePlan(fires=fires, next_fire_at=next_fire_at, cancel=cancel)


def trigger_plan(schedule: ScheduleRow) -> FirePlan:
    """A fire now, asked for by a client: whatever the overlap, and the schedule's own
    times unchanged."""
    now = schedule.now or utcnow()
    return FirePlan(fires=[Fire(now, "fired", "triggered by a client",
                                fire_task(schedule.spec, now))],
                    next_fire_at=schedule.next_fire_at)


class Scheduler:
    def __init__(self, db: Database, metrics: MasterMetrics,
                 on_cancelled: Callable[[Fired], object] | None = None) -> None:
        self._db = db
        self._metrics = metrics
        self._on_cancelled = on_cancelled
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """A schedule changed here: look again now rather than at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        async for attempt in retrying("scheduler", DB_BACKOFF,
                                      retry_on=of_type(DatabaseUnavailable),
                                      action="scheduler_db_lost"):
            with attempt:
                while True:
                    # Cleared before the pass: a change made during it wakes the next.
                    self._wake.clear()
                    wait = await self.pass_once()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), wait)

    async def pass_once(self) -> float:
        """Fire what is due; how long until the next schedule may be (at most POLL_S)."""
        wait = POLL_S
        for name, next_fire_at, ahead, due in await self._db.schedules.due(
                LEAD.total_seconds(), DUE_BATCH):
            when: datetime | None = next_fire_at
            if due:
                fired = await self._db.schedules.fire(
                    name, lambda s: plan(s, s.now or utcnow()), lead_s=LEAD.total_seconds())
                if fired is None:  # another master is at it: it is the one to wait for
                    continue
                self.account(fired)
                when = fired.next_fire_at
            if when is not None:
                until = when - (LEAD if ahead else timedelta(0)) - utcnow()
                wait = min(wait, max(0.0, until.total_seconds()))
        return wait

    def account(self, fired: Fired) -> None:
        name = fired.schedule.spec.name
        for fire in fired.fires:
            self._metrics.schedule_fires.labels(name, fire.outcome).inc()
            logger.info(
                "schedule %s: %s for %s%s", name, fire.outcome, rfc3339(fire.fire_time),
                f" ({fire.reason})" if fire.reason else "",
                extra={"action": f"schedule_{fire.outcome}", "schedule": name,
                       "task": str(fire.task.id) if fire.task else None},
            )
        if fired.cancelled and self._on_cancelled is not None:
            self._on_cancelled(fired)
