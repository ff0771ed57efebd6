"""The SDK's examples (``strata.examples.etl``, ``fanout``, ``nightly``) against real
processes: a master, a region and a worker that allows ``strata.examples``."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from strata.client import AsyncClient, TaskState
from strata.examples import etl, fanout, nightly
from strata.local.cluster import Cluster

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


@pytest.fixture
async def running(cluster: Cluster) -> Cluster:
    await cluster.start_master()
    await cluster.start_region("east")
    await cluster.start_worker("east", "east-w1", concurrency=4,
                               STRATA_PYTHON_MODULES=json.dumps(["strata.examples"]))
    return cluster


async def test_the_etl_chain_runs_each_step_on_its_parents_output(running: Cluster) -> None:
    # The sync Client, from a thread with no event loop, as a plain script runs it.
    steps = await asyncio.to_thread(etl.main, running.api, day="2030-01-07")
    assert list(steps) == ["extract", "transform", "load"]
    assert [t.state for t in steps.values()] == [TaskState.SUCCEEDED] * 3, steps
    extract, transform, load = steps.values()
    assert transform.depends_on == [extract.id] and load.depends_on == [transform.id]
    assert [t.payload["handler"] for t in steps.values()] == [
        "strata.examples.etl:extract", "strata.examples.etl:transform",
        "strata.examples.etl:load"]
    assert extract.max_attempts == 3 and extract.timeout_s == 60  # the decorator's
    rows = json.loads(extract.result.output or "")
    assert [r["amount_cents"] for r in rows] == [257, 507, 757, 1007, 1257]
    summary = {"orders": 5, "total_cents": 3785, "largest_cents": 1257}
    assert json.loads(transform.result.output or "") == summary
    assert json.loads(load.result.output or "") == {"target": "warehouse", "loaded": summary}


async def test_the_fan_out_joins_every_part(running: Cluster) -> None:
    parts = 6
    tasks = await fanout.main(running.api, parts=parts, size=500)
    assert len(tasks) == parts + 2
    assert {t.state for t in tasks} == {TaskState.SUCCEEDED}, [t.result for t in tasks]
    plan, *crunches, join = tasks
    assert all(c.depends_on == [plan.id] for c in crunches)
    assert sorted(join.depends_on) == sorted(c.id for c in crunches)
    assert {c.max_attempts for c in crunches} == {2}
    joined = json.loads(join.result.output or "")
    # The join saw every part's output, each once.
    assert joined == {"parts": list(range(parts)), "total": fanout.expected_total(parts, 500)}
    # The join ran once all of them had ended, and the crunches once plan had.
    assert all(plan.finished_at and c.started_at and plan.finished_at <= c.started_at
               for c in crunches)
    assert join.started_at and all(c.finished_at and c.finished_at <= join.started_at
                                   for c in crunches)


def _next_local_time(now: datetime, at: time, zone: ZoneInfo) -> datetime:
    """The first ``at`` in ``zone`` after ``now`` (a time in a DST gap is its end, a
    repeated one its first occurrence: zoneinfo's fold=0, as the cron rule)."""
    local = now.astimezone(zone)
    for days in (0, 1, 2):
        candidate = datetime.combine(local.date() + timedelta(days=days), at, tzinfo=zone)
        if candidate.astimezone(UTC) > now:
            return candidate.astimezone(UTC)
    raise AssertionError("unreachable: a day has that time")


async def test_the_nightly_schedule_fires_at_two_in_its_zone_and_triggers_once(
        running: Cluster) -> None:
    before = datetime.now(UTC)
    schedule, task = await asyncio.to_thread(nightly.main, running.api,
                                             timezone="America/New_York")
    after = datetime.now(UTC)
    assert (schedule.name, schedule.cron, schedule.timezone) == (
        "nightly-report", "0 2 * * *", "America/New_York")
    assert not schedule.paused and schedule.overlap == "skip"
    zone = ZoneInfo("America/New_York")
    assert schedule.next_fire_at in {_next_local_time(before, time(2), zone),
                                     _next_local_time(after, time(2), zone)}
    assert schedule.next_fire_at.astimezone(zone).time() == time(2)
    assert task.state == TaskState.SUCCEEDED, task.result
    assert task.payload["handler"] == "strata.examples.nightly:nightly_report"
    assert (task.max_attempts, task.timeout_s) == (3, 600)
    report = json.loads(task.result.output or "")
    assert len(report["sections"]) == 3
    assert schedule.last_task_id == task.id
    async with AsyncClient(running.api) as c:
        (fire,) = (await c.fires("nightly-report")).fires
        assert (fire.outcome, fire.task_id, fire.task_state) == ("fired", task.id, "succeeded")
        # A second run finds it made, brings it back to the same, and fires again.
        await c.pause("nightly-report")
    again, second = await asyncio.to_thread(nightly.main, running.api,
                                            timezone="America/New_York")
    assert not again.paused and again.next_fire_at == schedule.next_fire_at
    assert second.state == TaskState.SUCCEEDED and second.id != task.id
    assert isinstance(second.id, uuid.UUID)
