"""master.db.Database against a real PostgreSQL: claims, fencing, retries, regions, schema."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

import asyncpg
import pytest

from strata.common.events import Evicted, Finished, Report, Started, TaskRef
from strata.common.models import NewTask, TaskState, parse_batch, parse_new_task
from strata.common.status import RegionStatus, WorkerInfo, workers_json
from strata.local.cluster import wait_until
from strata.local.postgres import EmbeddedPostgres
from strata.master.db import (
    CLAIM_HORIZON,
    INDEX_ORDER_SETTINGS,
    Claimed,
    Database,
    Q,
    RegionRoom,
    listing,
)

pytestmark = pytest.mark.integration

# Read here rather than through master.db, so the test does not share its loader.
MIGRATIONS = sorted(
    (int(m.group(1)), entry.name)
    for entry in resources.files("strata.sql").joinpath("migrations").iterdir()
    if (m := re.match(r"^(\d+)_.*\.sql$", entry.name))
)

BACKOFF = timedelta(seconds=60)
BACKOFF_MAX = timedelta(hours=1)
# Slack between the Python clock and PostgreSQL's now(), both on this machine.
CLOCK_SLACK = timedelta(seconds=2)


# ---- helpers ------------------------------------------------------------------------


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_task(**fields: Any) -> NewTask:
    if isinstance(fields.get("run_at"), datetime):
        fields["run_at"] = fields["run_at"].isoformat()
    return parse_new_task({"kind": "noop", **fields})


def due_task(**fields: Any) -> NewTask:
    """A task due a minute ago, so no clock skew can make it not yet due."""
    return new_task(run_at=utcnow() - timedelta(minutes=1), **fields)


def finished(
    claimed: Claimed, *, ok: bool, worker_id: str = "w-1", exit_code: int | None = 0,
    output: str | None = "out", error: str | None = None, at: datetime | None = None,
) -> Finished:
    at = at or utcnow()
    return Finished(
        id=str(claimed.id), attempt=claimed.attempt, ok=ok, worker_id=worker_id,
        started_at=at - timedelta(seconds=1), finished_at=at, exit_code=exit_code,
        output=output, error=error,
    )


async def apply(
    db: Database, started: Sequence[Started] = (), done: Sequence[Finished] = (),
    *, backoff_base: timedelta = BACKOFF, backoff_max: timedelta = BACKOFF_MAX,
    returned: Sequence[TaskRef] = (), region: str = "a",
) -> list[tuple[uuid.UUID, int]]:
    """Apply a report; the stale attempts it names, as (id, attempt)."""
    report = Report(region=region, started=list(started), finished=list(done),
                    returned=list(returned))
    applied = await db.apply_report(report, backoff_base=backoff_base, backoff_max=backoff_max)
    return [(uuid.UUID(s.id), s.attempt) for s in applied.stale]



def unknown_result() -> Finished:
    """The result of an attempt the master never owned: always stale."""
    now = utcnow()
    return Finished(id=str(uuid.uuid4()), attempt=1, ok=True, worker_id="w", started_at=now,
                    finished_at=now, exit_code=0, output=None, error=None)


async def make_due(raw: asyncpg.Connection, task_id: uuid.UUID) -> None:
    """Test setup: skip a retry's backoff (as if its time had come, the scanner having
    promoted it on the way)."""
    await raw.execute(
        "UPDATE tasks SET run_at = now() - interval '1 second', near = true WHERE id = $1",
        task_id)


async def claim_one(db: Database, task_id: uuid.UUID, region: str = "a") -> Claimed:
    claimed = await db.claim(region, 10)
    assert [c.id for c in claimed] == [task_id]
    return claimed[0]


# ---- insert ---------------------------------------------------------------------------


async def test_no_session_of_the_master_compiles_plans_with_jit(
    db: Database, raw: asyncpg.Connection
) -> None:
    """The server's default is jit = on; a plan with a disabled path (the claim's
    settings) costs past jit_above_cost, and a server built with LLVM then spends
    hundreds of milliseconds compiling every claim. Every pool of the master turns it
    off for its sessions."""
    assert await raw.fetchval("SHOW jit") == "on"
    for pool in (db._pool, db._planned_pool):
        async with pool.acquire() as conn:
            assert await conn.fetchval("SHOW jit") == "off"


async def test_insert_one_task(db: Database) -> None:
    task = new_task(priority=3, region="eu", max_attempts=2, timeout_s=9.5)
    await db.insert_tasks([task])

    stored = await db.get_task(task.id)
    assert stored is not None
    assert stored.state is TaskState.PENDING
    assert stored.attempt == 0
    assert (stored.kind, stored.payload) == ("noop", {})
    assert (stored.priority, stored.region, stored.max_attempts, stored.timeout_s) == (
        3, "eu", 2, 9.5,
    )
    assert stored.run_at == task.run_at
    assert stored.assigned_region is None
    assert stored.worker_id is None
    assert stored.picked_at is stored.started_at is stored.finished_at is None


async def test_insert_ten_thousand_tasks_in_one_call(
    db: Database, raw: asyncpg.Connection
) -> None:
    tasks = parse_batch(
        {"tasks": [{"kind": "shell", "command": f"echo {i}", "priority": i % 7}
                   for i in range(10_000)]}
    )
    await db.insert_tasks(tasks)

    rows = await raw.fetch("SELECT id, state, attempt, payload->>'command' AS c FROM tasks")
    assert len(rows) == 10_000
    assert {r["id"] for r in rows} == {t.id for t in tasks}
    assert {(r["state"], r["attempt"]) for r in rows} == {("pending", 0)}
    assert {r["c"] for r in rows} == {f"echo {i}" for i in range(10_000)}
    assert await db.counts_by_state() == {"pending": 10_000}


# ---- claim ----------------------------------------------------------------------------


async def test_claim_takes_due_tasks_by_priority_then_run_at(db: Database) -> None:
    now = utcnow()
    low_old = new_task(priority=-1, run_at=now - timedelta(minutes=10))
    mid = new_task(priority=0, run_at=now - timedelta(minutes=3))
    high_newer = new_task(priority=5, run_at=now - timedelta(minutes=1))
    high_older = new_task(priority=5, run_at=now - timedelta(minutes=2))
    future = new_task(priority=100, run_at=now + timedelta(hours=1))
    await db.insert_tasks([low_old, mid, high_newer, high_older, future])

    claimed = await db.claim("a", 10)

    assert [c.id for c in claimed] == [high_older.id, high_newer.id, mid.id, low_old.id]
    assert all(c.attempt == 1 and c.kind == "noop" for c in claimed)
    before_claim = utcnow()
    for c in claimed:
        row = await db.get_task(c.id)
        assert row is not None
        assert row.state is TaskState.DISPATCHED
        assert row.attempt == 1
        assert row.assigned_region == "a"
        assert row.picked_at is not None
        assert row.picked_at <= before_claim + CLOCK_SLACK
    not_due = await db.get_task(future.id)
    assert not_due is not None
    assert (not_due.state, not_due.attempt, not_due.picked_at) == (TaskState.PENDING, 0, None)
    assert await db.claim("a", 10) == []


async def test_claim_respects_limit_and_takes_the_most_urgent(db: Database) -> None:
    tasks = [due_task(priority=p) for p in (1, 9, 4, 7, 2)]
    await db.insert_tasks(tasks)

    first = await db.claim("a", 2)
    assert [c.priority for c in first] == [9, 7]
    second = await db.claim("a", 2)
    assert [c.priority for c in second] == [4, 2]
    third = await db.claim("a", 2)
    assert [c.priority for c in third] == [1]
    assert await db.counts_by_state() == {"dispatched": 5}


async def test_pinned_task_goes_only_to_its_region(db: Database) -> None:
    pinned = due_task(region="b")
    await db.insert_tasks([pinned])

    assert await db.claim("a", 10) == []
    claimed = await claim_one(db, pinned.id, region="b")
    row = await db.get_task(claimed.id)
    assert row is not None
    assert (row.state, row.assigned_region, row.region) == (TaskState.DISPATCHED, "b", "b")


@pytest.mark.parametrize("region", ["a", "b"])
async def test_unpinned_task_goes_to_any_region(db: Database, region: str) -> None:
    task = due_task()
    await db.insert_tasks([task])
    await claim_one(db, task.id, region=region)
    row = await db.get_task(task.id)
    assert row is not None
    assert row.assigned_region == region


async def test_concurrent_claims_never_share_a_task(database_url: str, db: Database) -> None:
    tasks = [due_task(priority=i % 3) for i in range(1_000)]
    await db.insert_tasks(tasks)
    other = await Database.connect(database_url)
    try:
        first, second = await asyncio.gather(db.claim("a", 500), other.claim("b", 500))
    finally:
        await other.close()

    first_ids = {c.id for c in first}
    second_ids = {c.id for c in second}
    assert len(first) == len(first_ids) == 500
    assert len(second) == len(second_ids) == 500
    assert not first_ids & second_ids
    assert first_ids | second_ids == {t.id for t in tasks}
    assert await db.counts_by_state() == {"dispatched": 1_000}


async def test_claim_skips_rows_locked_elsewhere_without_waiting(
    db: Database, raw: asyncpg.Connection
) -> None:
    tasks = [due_task() for _ in range(20)]
    await db.insert_tasks(tasks)
    async with raw.transaction():
        locked = {r["id"] for r in await raw.fetch(
            "SELECT id FROM tasks ORDER BY id LIMIT 5 FOR UPDATE"
        )}
        claimed = await asyncio.wait_for(db.claim("a", 100), timeout=10)
    assert len(claimed) == 15
    assert not {c.id for c in claimed} & locked
    assert {c.id for c in claimed} | locked == {t.id for t in tasks}


# ---- apply_events: fencing ------------------------------------------------------------


async def test_finished_with_current_attempt_is_written(db: Database) -> None:
    task = due_task()
    await db.insert_tasks([task])
    claimed = await claim_one(db, task.id)
    at = utcnow().replace(microsecond=123456)

    stale = await apply(db, done=[finished(claimed, ok=True, worker_id="w-7", exit_code=0,
                                           output="hello\n", error=None, at=at)])

    assert stale == []
    row = await db.get_task(task.id)
    assert row is not None
    assert row.state is TaskState.SUCCEEDED
    assert (row.result.exit_code, row.result.output, row.result.error) == (0, "hello\n", None)
    assert row.finished_at == at
    assert row.started_at == at - timedelta(seconds=1)
    assert row.worker_id == "w-7"
    assert row.attempt == 1


async def test_finished_with_older_attempt_is_stale_and_writes_nothing(db: Database) -> None:
    task = due_task()
    await db.insert_tasks([task])
    first = await claim_one(db, task.id)
    assert await db.return_to_pending([TaskRef(str(first.id), first.attempt)], "a test") == 1
    second = await claim_one(db, task.id, region="b")
    assert second.attempt == first.attempt + 1

    stale = await apply(db, done=[finished(first, ok=True, worker_id="late", exit_code=3,
                                           output="late", error="boom")])

    assert stale == [(task.id, first.attempt)]
    row = await db.get_task(task.id)
    assert row is not None
    assert row.state is TaskState.DISPATCHED
    assert row.attempt == second.attempt
    assert row.assigned_region == "b"
    assert row.worker_id is None
    assert row.started_at is row.finished_at is None
    assert (row.result.exit_code, row.result.output, row.result.error) == (None, None, None)


async def test_stale_and_fresh_events_in_one_batch(db: Database) -> None:
    old, fresh = due_task(priority=1), due_task(priority=0)
    await db.insert_tasks([old, fresh])
    old_first, fresh_claim = await db.claim("a", 10)
    await db.return_to_pending([TaskRef(str(old_first.id), old_first.attempt)], "a test")
    await claim_one(db, old.id)

    stale = await apply(db, done=[finished(old_first, ok=True), finished(fresh_claim, ok=True)])

    assert stale == [(old.id, old_first.attempt)]
    fresh_row, old_row = await db.get_task(fresh.id), await db.get_task(old.id)
    assert fresh_row is not None and old_row is not None
    assert fresh_row.state is TaskState.SUCCEEDED
    assert old_row.state is TaskState.DISPATCHED


async def test_started_moves_dispatched_to_running(db: Database) -> None:
    task = due_task()
    await db.insert_tasks([task])
    claimed = await claim_one(db, task.id)
    at = utcnow().replace(microsecond=654321)

    stale = await apply(db, started=[Started(id=str(claimed.id), attempt=claimed.attempt,
                                             worker_id="w-2", started_at=at)])

    assert stale == []
    row = await db.get_task(task.id)
    assert row is not None
    assert row.state is TaskState.RUNNING
    assert row.started_at == at
    assert row.worker_id == "w-2"
    assert row.finished_at is None


async def test_started_with_older_attempt_is_stale(db: Database) -> None:
    task = due_task()
    await db.insert_tasks([task])
    first = await claim_one(db, task.id)
    await db.return_to_pending([TaskRef(str(first.id), first.attempt)], "a test")
    await claim_one(db, task.id)

    stale = await apply(db, started=[Started(id=str(first.id), attempt=first.attempt,
                                             worker_id="late", started_at=utcnow())])

    assert stale == [(task.id, first.attempt)]
    row = await db.get_task(task.id)
    assert row is not None
    assert (row.state, row.worker_id, row.started_at) == (TaskState.DISPATCHED, None, None)


async def test_events_for_a_cancelled_task_are_stale(db: Database) -> None:
    task = due_task()
    await db.insert_tasks([task])
    claimed = await claim_one(db, task.id)
    outcome = await db.cancel_task(task.id)
    assert outcome is not None and outcome.cancelled

    stale = await apply(
        db,
        started=[Started(id=str(claimed.id), attempt=claimed.attempt, worker_id="w",
                         started_at=utcnow())],
        done=[finished(claimed, ok=True, exit_code=0, output="done")],
    )

    assert stale == [(task.id, claimed.attempt), (task.id, claimed.attempt)]
    row = await db.get_task(task.id)
    assert row is not None
    assert row.state is TaskState.CANCELLED
    assert row.worker_id is None
    assert row.started_at is None
    assert (row.result.exit_code, row.result.output) == (None, None)


# ---- apply_events: retries ------------------------------------------------------------


async def _failures(raw: asyncpg.Connection, task_id: uuid.UUID) -> int:
    value: int = await raw.fetchval("SELECT failures FROM tasks WHERE id = $1", task_id)
    return value


def _assert_backoff(run_at: datetime, before: datetime, after: datetime, base: timedelta) -> None:
    """run_at is base from the failure, give or take the 25% jitter."""
    assert before + base * 0.75 - CLOCK_SLACK <= run_at <= after + base * 1.25 + CLOCK_SLACK


async def test_failure_with_attempts_left_goes_back_to_pending_with_backoff(
    db: Database, raw: asyncpg.Connection
) -> None:
    task = due_task(max_attempts=3)
    await db.insert_tasks([task])

    # First failure: about one backoff_base away.
    claimed = await claim_one(db, task.id)
    before = utcnow()
    assert await apply(db, done=[finished(claimed, ok=False, exit_code=1, error="exit 1")]) == []
    after = utcnow()
    row = await db.get_task(task.id)
    assert row is not None
    assert row.state is TaskState.PENDING
    assert row.assigned_region is None
    assert row.finished_at is None
    assert row.run_at > after
    _assert_backoff(row.run_at, before, after, BACKOFF)
    assert await _failures(raw, task.id) == 1
    # Not due during its backoff.
    assert await db.claim("a", 10) == []

    # Second failure: the backoff doubles.
    await make_due(raw, task.id)
    claimed = await claim_one(db, task.id)
    assert claimed.attempt == 2
    before = utcnow()
    await apply(db, done=[finished(claimed, ok=False, exit_code=1, error="exit 1")])
    after = utcnow()
    row = await db.get_task(task.id)
    assert row is not None
    assert row.state is TaskState.PENDING
    _assert_backoff(row.run_at, before, after, BACKOFF * 2)
    assert await _failures(raw, task.id) == 2

    # Third failure: no attempts left.
    await make_due(raw, task.id)
    claimed = await claim_one(db, task.id)
    at = utcnow()
    await apply(db, done=[finished(claimed, ok=False, exit_code=2, error="exit 2", at=at)])
    row = await db.get_task(task.id)
    assert row is not None
    assert row.state is TaskState.FAILED
    assert row.finished_at == at
    assert (row.result.exit_code, row.result.error) == (2, "exit 2")
    assert row.attempt == 3
    assert await _failures(raw, task.id) == 3
    assert await db.claim("a", 10) == []


async def test_backoff_is_capped_by_backoff_max(db: Database) -> None:
    task = due_task(max_attempts=2)
    await db.insert_tasks([task])
    claimed = await claim_one(db, task.id)
    cap = timedelta(seconds=10)

    before = utcnow()
    await apply(db, done=[finished(claimed, ok=False)], backoff_base=timedelta(hours=1),
                backoff_max=cap)
    after = utcnow()

    row = await db.get_task(task.id)
    assert row is not None
    assert row.state is TaskState.PENDING
    _assert_backoff(row.run_at, before, after, cap)


async def test_single_attempt_failure_ends_failed(db: Database) -> None:
    task = due_task()
    await db.insert_tasks([task])
    claimed = await claim_one(db, task.id)
    await apply(db, done=[finished(claimed, ok=False, exit_code=1)])
    row = await db.get_task(task.id)
    assert row is not None
    assert row.state is TaskState.FAILED
    assert row.finished_at is not None


async def test_success_after_a_failure_ends_succeeded(
    db: Database, raw: asyncpg.Connection
) -> None:
    task = due_task(max_attempts=3)
    await db.insert_tasks([task])
    claimed = await claim_one(db, task.id)
    await apply(db, done=[finished(claimed, ok=False, exit_code=1, error="flaky")])
    await make_due(raw, task.id)
    claimed = await claim_one(db, task.id)

    at = utcnow()
    await apply(db, done=[finished(claimed, ok=True, exit_code=0, output="ok", at=at)])

    row = await db.get_task(task.id)
    assert row is not None
    assert row.state is TaskState.SUCCEEDED
    assert row.attempt == 2
    assert row.finished_at == at
    assert (row.result.exit_code, row.result.output, row.result.error) == (0, "ok", None)
    assert await _failures(raw, task.id) == 1


# ---- return_to_pending ----------------------------------------------------------------


async def test_return_to_pending_needs_the_matching_attempt(db: Database) -> None:
    task = due_task()
    await db.insert_tasks([task])
    claimed = await claim_one(db, task.id)

    assert await db.return_to_pending([TaskRef(str(task.id), claimed.attempt - 1)], "a test") == 0
    assert await db.return_to_pending([TaskRef(str(task.id), claimed.attempt + 1)], "a test") == 0
    row = await db.get_task(task.id)
    assert row is not None
    assert (row.state, row.assigned_region) == (TaskState.DISPATCHED, "a")

    assert await db.return_to_pending([TaskRef(str(task.id), claimed.attempt)], "a test") == 1
    row = await db.get_task(task.id)
    assert row is not None
    assert row.state is TaskState.PENDING
    assert row.assigned_region is None
    assert row.worker_id is None
    assert row.attempt == claimed.attempt
    # Back at once, not after a backoff.
    assert [c.id for c in await db.claim("b", 10)] == [task.id]


async def test_return_to_pending_also_takes_running_tasks_back(db: Database) -> None:
    task = due_task()
    await db.insert_tasks([task])
    claimed = await claim_one(db, task.id)
    await apply(db, started=[Started(id=str(claimed.id), attempt=claimed.attempt, worker_id="w",
                                     started_at=utcnow())])
    assert await db.return_to_pending([TaskRef(str(task.id), claimed.attempt)], "a test") == 1
    row = await db.get_task(task.id)
    assert row is not None
    assert (row.state, row.worker_id) == (TaskState.PENDING, None)


async def test_return_to_pending_leaves_pending_and_finished_tasks_alone(db: Database) -> None:
    waiting, done = due_task(priority=0), due_task(priority=1)
    await db.insert_tasks([waiting, done])
    (claimed,) = await db.claim("a", 1)
    assert claimed.id == done.id
    await apply(db, done=[finished(claimed, ok=True)])

    assert await db.return_to_pending(
        [TaskRef(str(waiting.id), 0), TaskRef(str(done.id), claimed.attempt)], "a test") == 0
    assert await db.counts_by_state() == {"pending": 1, "succeeded": 1}


async def test_hand_back_is_not_a_failure(db: Database, raw: asyncpg.Connection) -> None:
    task = due_task(max_attempts=2)
    await db.insert_tasks([task])
    for region in ("a", "b", "a"):
        claimed = await claim_one(db, task.id, region=region)
        assert await db.return_to_pending([TaskRef(str(task.id), claimed.attempt)], "a test") == 1
    assert await _failures(raw, task.id) == 0

    # Three hand-backs, then one real failure: one attempt is still left.
    claimed = await claim_one(db, task.id)
    assert claimed.attempt == 4
    await apply(db, done=[finished(claimed, ok=False)])
    row = await db.get_task(task.id)
    assert row is not None
    assert row.state is TaskState.PENDING
    assert await _failures(raw, task.id) == 1


# ---- next_due ---------------------------------------------------------------------------


async def test_next_due_is_the_earliest_pending_run_at(db: Database) -> None:
    assert await db.next_due(["a"]) is None
    now = utcnow()
    earliest_but_claimed = new_task(run_at=now - timedelta(hours=1))
    await db.insert_tasks([earliest_but_claimed])
    await claim_one(db, earliest_but_claimed.id)
    assert await db.next_due(["a"]) is None

    later = new_task(run_at=now + CLAIM_HORIZON * 0.75)
    sooner = new_task(run_at=now + CLAIM_HORIZON / 2)
    beyond = new_task(run_at=now + timedelta(hours=1))  # promoted at a scan, ahead of time
    await db.insert_tasks([later, sooner, beyond])
    assert await db.next_due(["a"]) == sooner.run_at

    outcome = await db.cancel_task(sooner.id)
    assert outcome is not None and outcome.cancelled
    assert await db.next_due(["a"]) == later.run_at


# ---- regions --------------------------------------------------------------------------

WORKERS = [
    WorkerInfo(id="w-1", capacity=4, running=1, last_heartbeat=1.7e9,
               health_address="127.0.0.1:9001"),
    WorkerInfo(id="w-2", capacity=4, running=0, last_heartbeat=1.7e9),
]


async def _upsert(db: Database, name: str, master: str | None = None, **overrides: Any
                  ) -> None:
    fields: dict[str, Any] = {
        "address": f"{name}.example:50061", "capacity": 8, "max_outstanding": 16,
        "running": 2, "queued": 3, "workers": WORKERS,
    }
    fields.update(overrides)
    fields["workers"] = tuple(fields["workers"])
    await db.upsert_region(RegionStatus(name=name, **fields), master)


async def test_upsert_and_list_regions(db: Database) -> None:
    assert await db.list_regions(timedelta(seconds=30)) == []
    await _upsert(db, "b")
    await _upsert(db, "a", workers=[])

    regions = await db.list_regions(timedelta(seconds=30))

    assert [r.name for r in regions] == ["a", "b"]
    b = regions[1]
    assert (b.address, b.state, b.live) == ("b.example:50061", "up", True)
    assert (b.capacity, b.max_outstanding, b.running, b.queued) == (8, 16, 2, 3)
    assert b.workers == WORKERS
    assert b.stale_results == 0
    assert b.registered_at <= b.last_heartbeat
    assert regions[0].workers == []


async def test_upsert_updates_an_existing_region(db: Database) -> None:
    await _upsert(db, "a")
    (before,) = await db.list_regions(timedelta(seconds=30))
    await _upsert(db, "a", address="moved:1", capacity=1, max_outstanding=2, running=0,
                  queued=0, workers=WORKERS[:1])
    await apply(db, done=[unknown_result() for _ in range(4)], region="a")
    (after,) = await db.list_regions(timedelta(seconds=30))
    assert (after.address, after.capacity, after.max_outstanding, after.running, after.queued) \
        == ("moved:1", 1, 2, 0, 0)
    assert after.workers == WORKERS[:1]
    assert after.registered_at == before.registered_at
    assert after.last_heartbeat >= before.last_heartbeat
    assert after.stale_results == 4


async def test_silent_or_down_region_has_no_room(db: Database, raw: asyncpg.Connection) -> None:
    for name in ("fresh", "silent", "down"):
        await _upsert(db, name)
    await raw.execute(
        "UPDATE regions SET last_heartbeat = now() - interval '1 minute' WHERE name = 'silent'"
    )
    await raw.execute("UPDATE regions SET state = 'down' WHERE name = 'down'")
    dead_after = timedelta(seconds=30)

    assert (await db.region_room(dead_after)).regions == [
        # 8 slots, 16 at most: 8 queued beyond the slots, so batches of 4 or more.
        RegionRoom(name="fresh", address="fresh.example:50061", room=16, floor=4)
    ]
    listed = {r.name: r.live for r in await db.list_regions(dead_after)}
    assert listed == {"down": False, "fresh": True, "silent": False}
    # With a longer timeout the silent region still counts.
    longer = await db.region_room(timedelta(minutes=5))
    assert [r.name for r in longer.regions] == ["fresh", "silent"]

    # A heartbeat brings both back.
    await _upsert(db, "silent")
    await _upsert(db, "down")
    back = await db.region_room(dead_after)
    assert [r.name for r in back.regions] == ["down", "fresh", "silent"]


async def test_region_room_is_max_outstanding_less_tasks_in_flight(db: Database) -> None:
    await _upsert(db, "a", max_outstanding=10)
    await _upsert(db, "b", max_outstanding=5)
    await _upsert(db, "idle", max_outstanding=3)
    await db.insert_tasks([due_task() for _ in range(8)])
    in_a = await db.claim("a", 3)
    in_b = await db.claim("b", 2)
    # Claimed by a region that never registered: counted nowhere it matters.
    await db.claim("ghost", 1)
    # One of a's starts (still in flight); one of b's finishes (no longer in flight);
    # one of a's is handed back (no longer in flight).
    await apply(
        db,
        started=[Started(id=in_a[0].id, attempt=in_a[0].attempt, worker_id="w",
                         started_at=utcnow())],
        done=[finished(in_b[0], ok=True)],
    )
    assert await db.return_to_pending([TaskRef(str(in_a[1].id), in_a[1].attempt)], "a test") == 1

    rooms = (await db.region_room(timedelta(seconds=30))).regions

    assert [(r.name, r.room) for r in rooms] == [("a", 10 - 2), ("b", 5 - 1), ("idle", 3)]
    # Capacity 8 (as _upsert gives): a queues 2 beyond it, b and idle none.
    assert [r.floor for r in rooms] == [1, 1, 1]


async def test_reports_of_several_regions_apply_as_one_each_with_its_own_stale_events(
    db: Database, raw: asyncpg.Connection
) -> None:
    await _upsert(db, "a")
    await _upsert(db, "b")
    await db.insert_tasks([due_task() for _ in range(4)])
    in_a = await db.claim("a", 2)
    in_b = await db.claim("b", 2)
    began = utcnow()
    report_a = Report(region="a", started=[Started(
        id=str(in_a[0].id), attempt=in_a[0].attempt, worker_id="wa", started_at=began)],
        finished=[finished(in_a[1], ok=True, worker_id="wa"), unknown_result()], returned=[])
    # b finishes both of its own, and names one of a's again: a's report came first.
    report_b = Report(region="b", started=[], returned=[], finished=[
        finished(in_b[0], ok=True, worker_id="wb"), finished(in_b[1], ok=False, worker_id="wb"),
        finished(in_a[1], ok=True, worker_id="wb")])

    applied, stale = await db.apply_reports([report_a, report_b], backoff_base=BACKOFF,
                                            backoff_max=BACKOFF_MAX)

    assert stale[0] == [TaskRef(report_a.finished[1].id, 1)]
    assert stale[1] == [TaskRef(str(in_a[1].id), in_a[1].attempt)]
    assert applied.finished == {"succeeded": 2, "failed": 1}
    assert sorted(applied.hop_regions) == ["a"]  # the one start reported as such
    rows = await raw.fetch("SELECT task_id, region, outcome FROM attempts ORDER BY region")
    assert {(r["task_id"], r["region"], r["outcome"]) for r in rows} == {
        (in_a[1].id, "a", "succeeded"), (in_b[0].id, "b", "succeeded"),
        (in_b[1].id, "b", "failed"), (in_a[1].id, "b", "stale")}
    regions = {r.name: r.stale_results for r in await db.list_regions(timedelta(seconds=30))}
    assert regions == {"a": 1, "b": 1}
    states = {r["id"]: r["state"] for r in await raw.fetch("SELECT id, state FROM tasks")}
    assert [states[t.id] for t in (*in_a, *in_b)] == [
        "running", "succeeded", "succeeded", "failed"]


async def test_each_master_serves_the_regions_that_talk_to_it(db: Database) -> None:
    await _upsert(db, "a", master="m1")
    await _upsert(db, "b", master="m2")
    await _upsert(db, "older")  # last heard of by a master that does not say who it is
    dead_after = timedelta(seconds=30)

    def names(rooms: Any) -> list[str]:
        return [r.name for r in rooms.regions]

    assert names(await db.region_room(dead_after, "m1")) == ["a", "older"]
    assert names(await db.region_room(dead_after, "m2")) == ["b", "older"]
    assert names(await db.region_room(dead_after)) == ["a", "b", "older"]
    # a's master died: its next heartbeat reaches m2, and m2 serves it from then on.
    await _upsert(db, "a", master="m2")
    assert names(await db.region_room(dead_after, "m1")) == ["older"]
    assert names(await db.region_room(dead_after, "m2")) == ["a", "b", "older"]
    # A heartbeat that names no master leaves the region where it was.
    await _upsert(db, "a")
    listed = {r.name: r.master for r in await db.list_regions(dead_after)}
    assert listed == {"a": "m2", "b": "m2", "older": None}


# ---- cancel ---------------------------------------------------------------------------


async def test_cancel_pending_task(db: Database) -> None:
    task = new_task(run_at=utcnow() + timedelta(hours=1))
    await db.insert_tasks([task])

    outcome = await db.cancel_task(task.id)

    assert outcome is not None
    assert outcome.cancelled is True
    assert outcome.previous_state == "pending"
    assert (outcome.assigned_region, outcome.attempt) == (None, 0)
    row = await db.get_task(task.id)
    assert row is not None
    assert row.state is TaskState.CANCELLED
    assert row.finished_at is not None
    assert await db.next_due(["a"]) is None


async def test_cancel_dispatched_task_reports_where_it_runs(db: Database) -> None:
    task = due_task()
    await db.insert_tasks([task])
    claimed = await claim_one(db, task.id, region="b")

    outcome = await db.cancel_task(task.id)

    assert outcome is not None
    assert outcome.cancelled is True
    assert (outcome.previous_state, outcome.assigned_region, outcome.attempt) == (
        "dispatched", "b", claimed.attempt,
    )
    assert await db.counts_by_state() == {"cancelled": 1}


async def test_cancel_finished_task_is_refused(db: Database) -> None:
    task = due_task()
    await db.insert_tasks([task])
    claimed = await claim_one(db, task.id)
    await apply(db, done=[finished(claimed, ok=True)])
    row_before = await db.get_task(task.id)

    outcome = await db.cancel_task(task.id)

    assert outcome is not None
    assert outcome.cancelled is False
    assert outcome.previous_state == "succeeded"
    assert await db.get_task(task.id) == row_before


async def test_cancel_twice_is_refused_the_second_time(db: Database) -> None:
    task = due_task()
    await db.insert_tasks([task])
    first = await db.cancel_task(task.id)
    second = await db.cancel_task(task.id)
    assert first is not None and first.cancelled
    assert second is not None
    assert (second.cancelled, second.previous_state) == (False, "cancelled")


async def test_cancel_unknown_task(db: Database) -> None:
    assert await db.cancel_task(uuid.uuid4()) is None


# ---- migrations -----------------------------------------------------------------------


async def test_migrate_again_is_a_no_op(db: Database, raw: asyncpg.Connection) -> None:
    before = await raw.fetch("SELECT version, name, applied_at FROM schema_migrations")
    assert await db.migrate() == []
    assert await db.migrate() == []
    after = await raw.fetch("SELECT version, name, applied_at FROM schema_migrations")
    assert sorted(map(tuple, after)) == sorted(map(tuple, before))
    assert sorted(r["version"] for r in after) == [v for v, _ in MIGRATIONS]


async def test_concurrent_migrations_on_an_empty_database_apply_once(
    postgres: EmbeddedPostgres,
) -> None:
    name = f"fresh_{uuid.uuid4().hex}"
    admin = await asyncpg.connect(postgres.url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            await _migrate_twice_at_once(postgres.url_for(name))
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def _migrate_twice_at_once(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("SELECT to_regclass('tasks')") is None
    finally:
        await conn.close()
    first = await Database.connect(url, pool_size=2)
    second = await Database.connect(url, pool_size=2)
    try:
        results = await asyncio.gather(first.migrate(), second.migrate())
        again = await first.migrate()
    finally:
        await first.close()
        await second.close()

    names = [name for _, name in MIGRATIONS]
    assert sorted(results, key=len) == [[], names]
    assert again == []
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
        assert await conn.fetchval("SELECT count(*) FROM tasks") == 0
    finally:
        await conn.close()
    assert [(r["version"], r["name"]) for r in rows] == MIGRATIONS


# ---- LISTEN / NOTIFY ------------------------------------------------------------------


async def test_inserting_tasks_notifies_listeners(db: Database) -> None:
    woken = asyncio.Event()
    calls = 0

    def on_task() -> None:
        nonlocal calls
        calls += 1
        woken.set()

    async with db.listen(on_task):
        await db.insert_tasks([due_task()])
        await asyncio.wait_for(woken.wait(), timeout=10)
        assert calls == 1

        # A batch is one notification, not one per task.
        woken.clear()
        await db.insert_tasks([due_task() for _ in range(100)])
        await asyncio.wait_for(woken.wait(), timeout=10)
        assert calls == 2


# ---- scanning cost --------------------------------------------------------------------


def _literal(value: Any) -> str:
    """A test's own argument as SQL text (EXECUTE takes no bound parameters)."""
    if value is None:
        return "NULL"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "ARRAY[" + ", ".join(map(_literal, value)) + "]::text[]"
    return "'" + str(value).replace("'", "''") + "'"


async def measured(
    raw: asyncpg.Connection, query: str, *args: Any, generic: bool = False
) -> tuple[int, int]:
    """Run ``query`` under EXPLAIN ANALYZE, rolled back afterwards; returns (rows it
    returned, rows it read from ``tasks``: every row a scan produced or a filter removed,
    over all loops). ``generic``: as the generic plan a prepared statement may settle on
    after a few runs, which knows nothing of its parameters' values."""
    transaction = raw.transaction()
    await transaction.start()
    try:
        if generic:
            await raw.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            await raw.execute("PREPARE measured AS " + query)
            params = ", ".join(_literal(a) for a in args)
            text = f"EXECUTE measured({params})" if args else "EXECUTE measured"
            args = ()
        else:
            text = query
        plan = json.loads(await raw.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + text, *args))
    finally:
        await transaction.rollback()
        if generic:
            await raw.execute("DEALLOCATE ALL")
    return plan[0]["Plan"].get("Actual Rows", 0), _rows_read(plan[0]["Plan"])


def _rows_read(plan: dict[str, Any]) -> int:
    """Rows a plan read from ``tasks``: every row a scan produced or a filter removed,
    over all loops."""
    read = 0
    if plan.get("Relation Name") == "tasks" and "Scan" in plan["Node Type"]:
        read += plan.get("Actual Rows", 0) * plan.get("Actual Loops", 1)
        read += plan.get("Rows Removed by Filter", 0)
        read += plan.get("Rows Removed by Index Recheck", 0)
    return read + sum(_rows_read(child) for child in plan.get("Plans", []))


CROWD_FINISHED = 20_000
CROWD_LATER = 400
CROWD_PINNED_DEAD = 300


async def _crowd(db: Database, raw: asyncpg.Connection) -> None:
    """What must cost a claim nothing: many finished tasks, tasks due later (at a higher
    priority than anything due now), and a backlog pinned to a region that is down. As
    in a table that has run for a while, finished tasks are most of it."""
    old = utcnow() - timedelta(days=1)
    await db.insert_tasks([new_task(run_at=old) for _ in range(CROWD_FINISHED)])
    while claimed := await db.claim("done", 5_000):
        await apply(db, done=[finished(c, ok=True) for c in claimed], region="done")
    later = utcnow() + timedelta(hours=1)
    await db.insert_tasks([new_task(run_at=later, priority=5) for _ in range(CROWD_LATER)])
    await raw.execute(
        "INSERT INTO regions (name, address, state) VALUES ('dead', 'd:1', 'down'), "
        "('a', 'a:1', 'up')")
    await db.insert_tasks(
        [due_task(region="dead", priority=9) for _ in range(CROWD_PINNED_DEAD)])
    await raw.execute("VACUUM ANALYZE tasks")


async def test_a_claim_reads_only_what_it_claims(db: Database, raw: asyncpg.Connection) -> None:
    await _crowd(db, raw)
    await db.insert_tasks([due_task(priority=i % 3) for i in range(40)])
    await db.insert_tasks([due_task(region="a", priority=1) for _ in range(10)])
    claimed, read = await measured(raw, Q["claim_due"], "a", 1000)
    assert claimed == 50
    # Each claimed row is read three times (candidate, lock, update): nothing finished,
    # due later or pinned elsewhere is read.
    assert read <= 3 * claimed + 5, read

    # A backlog larger than the batch: still only what is claimed, the most urgent first.
    await db.insert_tasks([due_task(priority=i % 4) for i in range(3_000)])
    await raw.execute("ANALYZE tasks")
    for generic in (False, True):
        claimed, read = await measured(raw, Q["claim_due"], "a", 100, generic=generic)
        assert claimed == 100
        assert read <= 3 * claimed + 5, (generic, read)
    got = await db.claim("a", 100)
    assert len(got) == 100 and {c.priority for c in got} == {3}


@pytest.mark.parametrize("query, args", [
    ("claim_due", ("a", 100)),
    ("region_room", (30.0, None, 100)),
    ("next_due", (["a"],)),
    ("list_tasks_in_state", (None, None, None, None, 50)),
])
async def test_a_plan_cached_on_an_empty_table_still_reads_only_what_it_returns(
    db: Database, raw: asyncpg.Connection, query: str, args: tuple[Any, ...]
) -> None:
    """As the master's sessions that read due work do: the plan a prepared statement
    caches at start-up, when the table is empty, serves a backlog that came since
    without reading (or sorting) the whole of it."""
    for name, value in INDEX_ORDER_SETTINGS.items():
        await raw.execute(f"SET {name} = {value}")
    await raw.execute("SET plan_cache_mode = force_generic_plan")
    text = listing("pending") if query == "list_tasks_in_state" else Q[query]
    await raw.execute("PREPARE cached AS " + text)
    execute = "EXECUTE cached(" + ", ".join(_literal(a) for a in args) + ")"
    await raw.execute("BEGIN")
    await raw.execute(execute)  # planned now, on the empty table
    await raw.execute("ROLLBACK")
    # No ANALYZE since: that would make the statement plan again. A live region, so
    # that region_room's subqueries run (they run per region).
    await raw.execute("INSERT INTO regions (name, address) VALUES ('a', 'a:1')")
    await db.insert_tasks([due_task(priority=i % 3) for i in range(3_000)])
    await db.insert_tasks([new_task(run_at=utcnow() + CLAIM_HORIZON / 2)
                           for _ in range(5)])
    transaction = raw.transaction()
    await transaction.start()
    try:
        plan = json.loads(await raw.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + execute))
    finally:
        await transaction.rollback()
        await raw.execute("DEALLOCATE ALL")
    returned, read = plan[0]["Plan"].get("Actual Rows", 0), _rows_read(plan[0]["Plan"])
    limit = {"claim_due": 3 * 100, "region_room": 100, "next_due": 1, "list_tasks_in_state": 50}
    assert read <= limit[query] + 5, (returned, read)


async def test_a_claim_merges_pinned_and_unpinned_tasks_by_urgency(db: Database) -> None:
    now = utcnow()
    free_high = new_task(priority=5, run_at=now - timedelta(minutes=1))
    pinned_mid = new_task(priority=3, run_at=now - timedelta(minutes=1), region="a")
    free_low = new_task(priority=1, run_at=now - timedelta(minutes=2))
    pinned_low_older = new_task(priority=1, run_at=now - timedelta(minutes=3), region="a")
    elsewhere = new_task(priority=9, run_at=now - timedelta(minutes=3), region="b")
    await db.insert_tasks([free_high, pinned_mid, free_low, pinned_low_older, elsewhere])

    first = await db.claim("a", 3)
    assert [c.id for c in first] == [free_high.id, pinned_mid.id, pinned_low_older.id]
    # What the merge read but did not claim was not kept from the next claim.
    assert [c.id for c in await db.claim("a", 3)] == [free_low.id]


async def test_counting_due_work_reads_only_due_work(
    db: Database, raw: asyncpg.Connection
) -> None:
    await _crowd(db, raw)
    await db.insert_tasks([due_task(priority=i % 3) for i in range(40)])
    await db.insert_tasks([due_task(region="a") for _ in range(5)])
    live = timedelta(seconds=30)
    # On a session of the master's that reads due work: index order, no sorts.
    for name, value in INDEX_ORDER_SETTINGS.items():
        await raw.execute(f"SET {name} = {value}")
    _, read = await measured(raw, Q["region_room"], 30.0, None, 1000)
    await raw.execute("RESET ALL")
    assert (await db.region_room(live, count_up_to=1000)).due == 45
    assert read <= 45 + 5, read
    assert (await db.region_room(live, count_up_to=30)).due == 30
    assert (await db.region_room(live)).due == 0  # not asked: not counted
    # The dead region's backlog counts only once the region is live again.
    await raw.execute("UPDATE regions SET state = 'up', last_heartbeat = now() "
                      "WHERE name = 'dead'")
    assert (await db.region_room(live, count_up_to=1000)).due == 45 + CROWD_PINNED_DEAD
    # Nor a region that talks to another master.
    await raw.execute("UPDATE regions SET master = 'other' WHERE name = 'dead'")
    assert (await db.region_room(live, "this", count_up_to=1000)).due == 45


async def test_tasks_due_later_are_claimable_once_due_and_promoted_ahead_of_time(
    db: Database, raw: asyncpg.Connection
) -> None:
    await _crowd(db, raw)
    # Due in an hour, at the highest priority: not claimed, and not promoted.
    assert await db.promote_near(1000) == 0
    assert await db.claim("a", 1000) == []
    # Five of them come within the claim horizon; the promotion reads only those.
    await raw.execute(
        "UPDATE tasks SET run_at = now() + interval '30 seconds' WHERE id IN "
        "(SELECT id FROM tasks WHERE state = 'pending' AND NOT near LIMIT 5)")
    await raw.execute("ANALYZE tasks")
    _, read = await measured(raw, Q["promote_near"], 1000, CLAIM_HORIZON.total_seconds())
    assert read <= 3 * 5 + 2, read
    assert await db.promote_near(3) == 3, "at most the batch asked for"
    assert await db.promote_near(1000) == 2
    # Near, but not due: still not claimed.
    assert await db.claim("a", 1000) == []
    await raw.execute("UPDATE tasks SET run_at = now() - interval '1 second' "
                      "WHERE near AND state = 'pending' AND region IS NULL")
    claimed = await db.claim("a", 1000)
    assert len(claimed) == 5 and {c.priority for c in claimed} == {5}


async def test_a_task_due_within_the_horizon_is_near_from_the_start(
    db: Database, raw: asyncpg.Connection
) -> None:
    soon = new_task(run_at=utcnow() + CLAIM_HORIZON / 2)
    later = new_task(run_at=utcnow() + CLAIM_HORIZON * 2)
    await db.insert_tasks([soon, later])
    rows = await raw.fetch("SELECT id, near FROM tasks")
    assert {r["id"]: r["near"] for r in rows} == {soon.id: True, later.id: False}
    assert await db.claim("a", 10) == []
    assert await db.next_due(["a"]) == soon.run_at


async def test_next_due_reads_only_tasks_not_due_yet(
    db: Database, raw: asyncpg.Connection
) -> None:
    await _crowd(db, raw)
    # Already due, the dead region's backlog is not a reason to wake: it waits for its
    # region. Due later than the horizon: promoted at a scan. Neither is read.
    assert await db.next_due(["a"]) is None
    _, read = await measured(raw, Q["next_due"], ["a", "dead"])
    assert read == 0, read
    # Pinned to a region that is down: no reason to wake, until it is up.
    soon = new_task(run_at=utcnow() + CLAIM_HORIZON / 3, region="dead")
    await db.insert_tasks([soon])
    assert await db.next_due(["a"]) is None
    assert await db.next_due(["a", "dead"]) == soon.run_at
    sooner = new_task(run_at=utcnow() + CLAIM_HORIZON / 4)
    await db.insert_tasks([sooner])
    assert await db.next_due(["a"]) == sooner.run_at
    _, read = await measured(raw, Q["next_due"], ["a", "dead"])
    assert read <= 2, read


@pytest.mark.parametrize("state, newest_first", [
    ("pending", False),
    ("pending", True),
    ("succeeded", False),
    (None, False),
    (None, True),
])
async def test_a_listing_reads_only_the_page_it_returns(
    db: Database, raw: asyncpg.Connection, state: str | None, newest_first: bool
) -> None:
    await _crowd(db, raw)
    query = listing(state, newest_first=newest_first)
    args: tuple[Any, ...] = (None, None, None, None, 50)
    for generic in (False, True):
        returned, read = await measured(raw, query, *args, generic=generic)
        assert returned == 50
        assert read <= returned + 5, (generic, read)
    # And the next page, from a cursor.
    page = await db.list_tasks(state=state, region=None, after=None, limit=50,
                               newest_first=newest_first)
    cursor = (page[-1].created_at, page[-1].id)
    returned, read = await measured(raw, query, None, None, *cursor, 50, generic=True)
    assert returned == 50
    assert read <= returned + 5, read


async def test_listing_pending_tasks_pages_through_them_in_order(db: Database) -> None:
    tasks = [due_task() for _ in range(7)]
    for task in tasks:  # one statement each: created_at tells them apart
        await db.insert_tasks([task])
    claimed = await db.claim("a", 2)
    pending = [t.id for t in tasks if t.id not in {c.id for c in claimed}]
    seen: list[uuid.UUID] = []
    after = None
    while page := await db.list_tasks(state="pending", region=None, after=after, limit=2):
        seen.extend(t.id for t in page)
        after = (page[-1].created_at, page[-1].id)
    assert seen == pending
    newest = await db.list_tasks(state="pending", region=None, after=None, limit=10,
                                 newest_first=True)
    assert [t.id for t in newest] == pending[::-1]


async def test_listing_every_state_merges_them_in_created_order(db: Database) -> None:
    """A listing of all states pages through tasks in every state, oldest first or
    newest, however their states interleave in time."""
    made = []
    for _ in range(8):  # one statement each: created_at tells them apart
        task = due_task()
        await db.insert_tasks([task])
        made.append(task.id)
    parent = due_task()
    await db.insert_tasks([parent])
    child = new_task(depends_on=[str(parent.id)])
    await db.insert_tasks([child])  # waiting
    made += [parent.id, child.id]
    claimed = await db.claim("a", 6)
    await apply(db, done=[finished(c, ok=True) for c in claimed[:2]])
    await apply(db, done=[finished(c, ok=False) for c in claimed[2:3]])
    await apply(db, started=[Started(id=str(c.id), attempt=c.attempt, worker_id="w-1",
                                     started_at=utcnow()) for c in claimed[3:4]])
    outcome = await db.cancel_task(made[7])
    assert outcome is not None and outcome.cancelled
    seen: list[uuid.UUID] = []
    states: set[str] = set()
    after = None
    while page := await db.list_tasks(state=None, region=None, after=after, limit=3):
        seen.extend(t.id for t in page)
        states.update(t.state for t in page)
        after = (page[-1].created_at, page[-1].id)
    assert seen == made
    assert states == {s.value for s in TaskState}, states
    newest = await db.list_tasks(state=None, region=None, after=None, limit=100,
                                 newest_first=True)
    assert [t.id for t in newest] == made[::-1]


async def test_stats_count_finished_tasks_without_reading_them(
    db: Database, raw: asyncpg.Connection
) -> None:
    await _crowd(db, raw)
    cancelled = due_task()
    await db.insert_tasks([cancelled])
    outcome = await db.cancel_task(cancelled.id)
    assert outcome is not None and outcome.cancelled
    failed = due_task()
    await db.insert_tasks([failed])
    await apply(db, done=[finished(await claim_one(db, failed.id), ok=False)])
    await raw.execute("VACUUM ANALYZE tasks")

    pending = CROWD_LATER + CROWD_PINNED_DEAD
    _, read = await measured(raw, Q["count_by_state"])
    assert read == 0, read  # nothing is in flight: no task is read at all
    assert await db.counts_by_state() == {
        "pending": pending, "succeeded": CROWD_FINISHED, "cancelled": 1, "failed": 1}
    # The counts agree with the table itself.
    rows = await raw.fetch("SELECT state, count(*) AS n FROM tasks GROUP BY state")
    assert {r["state"]: r["n"] for r in rows} == await db.counts_by_state()


async def reconcile(db: Database, region: str, held: Sequence[TaskRef],
                    claimed_before: datetime) -> int:
    """A heartbeat of ``region`` (up, or not yet known) that lists ``held``: how many
    attempts it no longer held."""
    _, lost = await db.beat_region(RegionStatus(name=region, address=f"{region}:1"),
                                   workers_json(()), None, held, claimed_before)
    return lost


async def test_reconcile_reclaims_only_old_attempts_the_region_does_not_hold(
    db: Database,
) -> None:
    from datetime import timedelta

    from strata.common.models import parse_new_task
    from strata.common.timeutil import utcnow

    tasks = [parse_new_task({"kind": "noop"}) for _ in range(3)]
    await db.insert_tasks(tasks)
    claimed = await db.claim("east", 10)
    assert len(claimed) == 3
    held, lost, young = claimed
    # A cutoff before the claims: nothing is old enough to judge.
    assert await reconcile(db, "east", [held.ref], utcnow() - timedelta(seconds=60)) == 0
    # After the claims: only the attempts the region does not list come back.
    assert await reconcile(db, "east", [held.ref, young.ref],
                           utcnow() + timedelta(seconds=1)) == 1
    back = await db.get_task(lost.id)
    assert back is not None and back.state == "pending" and back.attempt == lost.attempt + 1
    kept = await db.get_task(held.id)
    assert kept is not None and kept.state == "dispatched"
    # Another region's attempts are never touched.
    assert await reconcile(db, "west", [], utcnow() + timedelta(seconds=1)) == 0


async def test_a_beat_records_the_region_and_reclaims_what_it_no_longer_holds(
    db: Database, raw: asyncpg.Connection,
) -> None:
    """beat_region: the region's row and the check of what it holds, in one statement;
    a region that was down is recorded up, and what it held is not reconciled (it was
    reclaimed)."""
    await db.insert_tasks([due_task() for _ in range(2)])
    held, lost = await db.claim("east", 10)
    status = RegionStatus(name="east", address="east:1", capacity=8, max_outstanding=16,
                          running=1, queued=0)
    later = utcnow() + timedelta(seconds=1)
    assert await db.beat_region(status, workers_json(WORKERS), "m1", [held.ref], later) \
        == (None, 1)
    back = await db.get_task(lost.id)
    assert back is not None and back.state == "pending" and back.attempt == lost.attempt + 1
    (east,) = [r for r in await db.list_regions(timedelta(seconds=30)) if r.name == "east"]
    assert list(east.workers) == WORKERS and east.max_outstanding == 16
    assert await raw.fetchval("SELECT master FROM regions WHERE name = 'east'") == "m1"
    # Down: its beat is recorded, and nothing it held is judged (it was all reclaimed).
    await raw.execute("UPDATE regions SET state = 'down' WHERE name = 'east'")
    assert await db.beat_region(status, workers_json(()), None, [], later) == ("down", 0)
    kept = await db.get_task(held.id)
    assert kept is not None and kept.state == "dispatched"
    (east,) = [r for r in await db.list_regions(timedelta(seconds=30)) if r.name == "east"]
    assert east.state == "up" and not east.workers
    assert await raw.fetchval("SELECT master FROM regions WHERE name = 'east'") == "m1"
    # Up again: the next beat reconciles.
    assert await db.beat_region(status, workers_json(()), None, [], later) == ("up", 1)


# ---- held connections: LISTEN and advisory locks -------------------------------------


async def test_notifications_reach_the_listener_and_a_probe_does_not_wake_it(
    db: Database,
) -> None:
    woken = asyncio.Event()
    async with db.listen(woken.set) as listener:
        await listener.probe(2.0)
        assert not woken.is_set(), "a probe is not a task"
        await db.insert_tasks([due_task()])
        await asyncio.wait_for(woken.wait(), 5)


async def _backends(raw: asyncpg.Connection) -> set[int]:
    rows = await raw.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid()")
    return {r["pid"] for r in rows}


async def _gone(raw: asyncpg.Connection, pid: int) -> None:
    """The server ends the session of ``pid`` within seconds."""
    async def ended() -> bool:
        return pid not in await _backends(raw)
    await wait_until(ended, timeout_s=5, what=f"the session of backend {pid} to end")


async def test_a_connection_that_held_a_lock_is_closed_not_reused(
    db: Database, raw: asyncpg.Connection
) -> None:
    lock = 0x5157A7FF
    async with db.singleton(lock) as held:
        assert held is not None and held()
        (holder,) = await raw.fetch(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objid = $1", lock)
        async with db.singleton(lock) as second:
            assert second is None, "one holder at a time"
    # The holder's session is gone, and the lock with it: nothing in the pool keeps it.
    # Its socket is dropped, not closed politely: the server ends the session when it
    # notices, a moment later.
    await _gone(raw, holder["pid"])
    assert await raw.fetchval(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == 0
    assert await raw.fetchval("SELECT pg_try_advisory_lock($1)", lock) is True
    await raw.execute("SELECT pg_advisory_unlock($1)", lock)


async def test_the_listen_connection_is_closed_after_use(
    db: Database, raw: asyncpg.Connection
) -> None:
    async with db.listen(lambda: None) as listener:
        assert listener.alive()
        (holder,) = await raw.fetch(
            "SELECT pid FROM pg_stat_activity WHERE query LIKE 'LISTEN %strata_probe_%'")
    await _gone(raw, holder["pid"])


async def test_a_result_keeps_stdout_stderr_and_their_cut_marks(db: Database) -> None:
    task = due_task()
    await db.insert_tasks([task])
    claimed = await claim_one(db, task.id)
    now = utcnow()
    done = Finished(id=str(claimed.id), attempt=claimed.attempt, ok=False, worker_id="w",
                    started_at=now, finished_at=now, exit_code=2, output="out tail",
                    error="exited with code 2", stderr="err", output_truncated=True,
                    killed_processes=2)
    assert await apply(db, done=[done]) == []
    stored = await db.get_task(task.id)
    assert stored is not None
    assert (stored.result.output, stored.result.stderr) == ("out tail", "err")
    assert (stored.result.output_truncated, stored.result.stderr_truncated) == (True, False)
    assert stored.result.killed_processes == 2


async def _table_counts(raw: asyncpg.Connection) -> dict[str, int]:
    rows = await raw.fetch("SELECT state, count(*) AS n FROM tasks GROUP BY state")
    return {r["state"]: r["n"] for r in rows}


async def test_the_counts_follow_every_move_into_and_out_of_pending(
    db: Database, raw: asyncpg.Connection
) -> None:
    async def agree() -> None:
        assert await db.counts_by_state() == await _table_counts(raw)

    await _upsert(db, "a")
    await _upsert(db, "b")
    keyed = [parse_new_task({"kind": "noop", "idempotency_key": f"k{i}"}) for i in range(3)]
    await db.insert_tasks([due_task(max_attempts=2) for _ in range(12)] + keyed)
    await agree()
    await db.insert_tasks(keyed)  # taken keys: nothing new, nothing counted
    await agree()
    claimed = await db.claim("a", 6)
    await agree()
    # Handed back, retried after a failure, finished, cancelled while pending.
    await db.return_to_pending([claimed[0].ref], "a test")
    await apply(db, done=[finished(claimed[1], ok=False), finished(claimed[2], ok=True)])
    await agree()
    pending_one = (await db.list_tasks(state="pending", region=None, after=None, limit=1))[0]
    await db.cancel_task(pending_one.id)
    await db.cancel_task(claimed[3].id)  # cancelled in flight: never counted as pending
    await agree()
    # Lost by a region (not in its heartbeat), and reclaimed from a region that is down.
    in_b = await db.claim("b", 4)
    assert await reconcile(db, "b", [c.ref for c in in_b[:2]],
                           utcnow() + timedelta(seconds=1)) == 2
    await agree()
    await raw.execute("UPDATE regions SET state = 'down' WHERE name = 'b'")
    assert sum((await db.reclaim_down_regions()).values()) == 2
    await agree()


# ---- attempt history ------------------------------------------------------------------


async def _history(db: Database, task_id: uuid.UUID) -> list[tuple[int, str | None, str | None]]:
    return [(a.attempt, a.worker_id, a.outcome) for a in await db.attempts(task_id)]


async def test_every_attempt_is_recorded_with_how_it_ended(
    db: Database, raw: asyncpg.Connection
) -> None:
    await _upsert(db, "a")
    await _upsert(db, "b")
    ok, handed, cancelled = (due_task() for _ in range(3))
    flaky = due_task(max_attempts=2)
    pending = due_task(region="elsewhere")  # never claimed by a
    await db.insert_tasks([ok, flaky, handed, cancelled, pending])
    by_id = {c.id: c for c in await db.claim("a", 4)}
    assert set(by_id) == {ok.id, flaky.id, handed.id, cancelled.id}

    timed_out = Finished(id=str(flaky.id), attempt=by_id[flaky.id].attempt, ok=False,
                         worker_id="w-2", started_at=utcnow(), finished_at=utcnow(),
                         exit_code=None, output=None, error="timed out after 1s",
                         timed_out=True)
    await apply(db, done=[finished(by_id[ok.id], ok=True), timed_out])
    await db.return_to_pending([by_id[handed.id].ref], "no live worker")
    await db.cancel_task(cancelled.id)
    await db.cancel_task(pending.id)  # never claimed: no attempt to end

    (first,) = await db.attempts(ok.id)
    assert (first.attempt, first.region, first.worker_id, first.outcome, first.exit_code) == (
        1, "a", "w-1", "succeeded", 0)
    assert first.claimed_at is not None and first.started_at is not None
    assert first.claimed_at <= first.finished_at  # type: ignore[operator]
    assert await _history(db, flaky.id) == [(1, "w-2", "timed_out")]
    assert [(a.outcome, a.reason) for a in await db.attempts(handed.id)] == [
        ("returned", "no live worker")]
    assert await _history(db, cancelled.id) == [(1, None, "cancelled")]
    assert await db.attempts(pending.id) == []

    # The retry runs in b and fails; then b holds another attempt, is declared down, and
    # that attempt's result comes late.
    await make_due(raw, flaky.id)
    in_b = {c.id: c for c in await db.claim("b", 2)}
    again, late = in_b[flaky.id], in_b[handed.id]
    await apply(db, done=[finished(again, ok=False, exit_code=3)], region="b")
    assert await _history(db, flaky.id) == [(1, "w-2", "timed_out"), (2, "w-1", "failed")]
    await raw.execute("UPDATE regions SET state = 'down' WHERE name = 'b'")
    await db.reclaim_down_regions()
    assert await apply(db, done=[finished(late, ok=True)], region="b") == [
        (handed.id, late.attempt)]
    history = await db.attempts(handed.id)
    assert [(a.attempt, a.region, a.outcome) for a in history] == [
        (1, "a", "returned"), (2, "b", "reclaimed"), (2, "b", "stale")]
    assert history[1].reason == "region b was declared down"


async def test_an_attempt_lost_by_its_region_is_recorded_reclaimed(db: Database) -> None:
    task = due_task()
    await db.insert_tasks([task])
    claimed = await claim_one(db, task.id, region="east")
    assert await reconcile(db, "east", [], utcnow() + timedelta(seconds=1)) == 1
    (lost,) = await db.attempts(task.id)
    assert (lost.attempt, lost.region, lost.outcome) == (claimed.attempt, "east", "reclaimed")
    assert "no longer held it" in (lost.reason or "")


async def test_an_eviction_is_recorded_once_and_the_attempt_runs_on(db: Database) -> None:
    task = due_task()
    await db.insert_tasks([task])
    claimed = await claim_one(db, task.id)
    start = Started(id=str(task.id), attempt=claimed.attempt, worker_id="w-1",
                    started_at=utcnow())
    await apply(db, started=[start])
    eviction = Evicted(id=str(task.id), attempt=claimed.attempt, worker_id="w-1",
                       reason="worker w-1 left: no heartbeat for 3.1s")

    async def report(**events: Any) -> None:
        await db.apply_report(
            Report(region="a", started=events.get("started", []), finished=[],
                   returned=[], evicted=events.get("evicted", [])),
            backoff_base=BACKOFF, backoff_max=BACKOFF_MAX)

    # Evicted and started again on w-2 in one report; the report is then sent again.
    rerun = Started(id=str(task.id), attempt=claimed.attempt, worker_id="w-2",
                    started_at=utcnow())
    await report(evicted=[eviction], started=[rerun])
    await report(evicted=[eviction], started=[rerun])
    row = await db.get_task(task.id)
    assert row is not None and (row.state, row.worker_id) == (TaskState.RUNNING, "w-2")
    await apply(db, done=[finished(claimed, ok=True, worker_id="w-2")])
    history = await db.attempts(task.id)
    assert [(a.attempt, a.worker_id, a.outcome) for a in history] == [
        (1, "w-1", "evicted"), (1, "w-2", "succeeded")]
    assert history[0].reason == eviction.reason and history[0].started_at is not None
    # An eviction of an attempt that is over, or another worker's, changes nothing.
    await report(evicted=[eviction])
    assert len(await db.attempts(task.id)) == 2
