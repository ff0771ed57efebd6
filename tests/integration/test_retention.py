"""Retention against a real PostgreSQL: finished tasks past it go, with their
attempts, their fire records and their counts; nothing else does."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import asyncpg
import pytest

from strata.common.models import parse_batch, parse_new_task
from strata.common.settings import MasterSettings
from strata.master.db import Database
from strata.master.metrics import MasterMetrics
from strata.master.retention import BATCH, Retention

pytestmark = pytest.mark.integration


async def make(db: Database, n: int) -> list[uuid.UUID]:
    tasks = [parse_new_task({"kind": "noop"}) for _ in range(n)]
    await db.insert_tasks(tasks)
    return [t.id for t in tasks]


async def finish(raw: asyncpg.Connection, ids: list[uuid.UUID], state: str, ago: str) -> None:
    """Finish the tasks as the master would (counts and an attempt each), ``ago``."""
    await raw.execute(
        "UPDATE tasks SET state = $2, attempt = 1, finished_at = now() - $3::text::interval, "
        "created_at = now() - $3::text::interval - interval '1 minute' WHERE id = ANY($1)",
        ids, state, ago)
    await raw.execute(
        "INSERT INTO attempts (task_id, attempt, outcome, finished_at) "
        "SELECT id, 1, $2, finished_at FROM tasks WHERE id = ANY($1)", ids,
        "cancelled" if state == "cancelled" else state)
    await raw.execute(
        "INSERT INTO task_counts (state, slot, n) VALUES ('pending', 99, $1), ($2, 99, $3) "
        "ON CONFLICT (state, slot) DO UPDATE SET n = task_counts.n + excluded.n",
        -len(ids), state, len(ids))


async def test_retention_removes_what_is_past_it_and_only_that(
    db: Database, raw: asyncpg.Connection,
) -> None:
    old = await make(db, 2 * BATCH + 5)  # more than a batch: several statements
    old_failed, old_cancelled = await make(db, 3), await make(db, 2)
    recent, pending = await make(db, 4), await make(db, 6)
    await finish(raw, old, "succeeded", "2 days")
    await finish(raw, old_failed, "failed", "3 days")
    await finish(raw, old_cancelled, "cancelled", "2 days")
    await finish(raw, recent, "succeeded", "1 hour")
    # Made long ago, finished just now: kept.
    late = await make(db, 1)
    await finish(raw, late, "succeeded", "1 second")
    await raw.execute("UPDATE tasks SET created_at = now() - interval '9 days' WHERE id = $1",
                      late[0])
    await raw.execute("UPDATE tasks SET created_at = now() - interval '9 days' "
                      "WHERE id = ANY($1)", pending)
    await raw.execute(
        "INSERT INTO schedules (name, every_s, task, next_fire_at) "
        "VALUES ('s', 60, '{\"kind\": \"noop\"}', now())")
    await raw.execute(
        "INSERT INTO schedule_fires (schedule, fire_time, outcome) VALUES "
        "('s', now() - interval '2 days', 'missed'), ('s', now() - interval '1 hour', 'missed')")

    metrics = MasterMetrics()
    retention = Retention(db, MasterSettings(retention=timedelta(days=1)), metrics)
    removed = await retention.pass_once()

    assert removed == len(old) + len(old_failed) + len(old_cancelled)
    left = {r["id"] for r in await raw.fetch("SELECT id FROM tasks")}
    assert left == set(recent) | set(pending) | set(late)
    assert {r["task_id"] for r in await raw.fetch("SELECT task_id FROM attempts")} == (
        set(recent) | set(late))
    assert await db.counts_by_state() == {"pending": 6, "succeeded": 5}
    assert await raw.fetchval("SELECT count(*) FROM schedule_fires") == 1
    assert metrics.removed._value.get() == removed
    assert await retention.pass_once() == 0  # nothing more to do


async def test_zero_keeps_everything_forever(db: Database, raw: asyncpg.Connection) -> None:
    old = await make(db, 3)
    await finish(raw, old, "succeeded", "400 days")
    # Off: the loop ends at once, having removed nothing.
    await asyncio.wait_for(Retention(db, MasterSettings(retention=0), MasterMetrics()).run(), 5)
    assert await raw.fetchval("SELECT count(*) FROM tasks") == 3


async def test_a_removed_task_takes_its_edges_with_it(
    db: Database, raw: asyncpg.Connection
) -> None:
    tasks = parse_batch({"tasks": [
        {"kind": "noop", "key": "a"}, {"kind": "noop", "key": "b", "depends_on": ["a"]},
        {"kind": "noop", "key": "c", "depends_on": ["b"]}]})
    await db.insert_tasks(tasks)
    a, b, c = (t.id for t in tasks)
    assert await raw.fetchval("SELECT count(*) FROM task_deps") == 2
    # a and b finished long ago; c (waiting on b, as the test leaves it) stays.
    await raw.execute("UPDATE tasks SET state = 'pending', waiting_on = 0 WHERE id = $1", b)
    await finish(raw, [a, b], "succeeded", "2 days")
    removed = await Retention(db, MasterSettings(retention=timedelta(days=1)),
                              MasterMetrics()).pass_once()
    assert removed == 2
    assert await raw.fetchval("SELECT count(*) FROM task_deps") == 0
    assert [r["id"] for r in await raw.fetch("SELECT id FROM tasks")] == [c]
