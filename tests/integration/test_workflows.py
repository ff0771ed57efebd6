"""Dependencies, priorities and concurrency keys in master.db, against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from strata.common.errors import Conflict, InvalidInput
from strata.common.events import Finished, Report
from strata.common.models import NewTask, TaskState, parse_batch, parse_new_task
from strata.common.status import RegionStatus
from strata.master.db import RELEASE_SETTINGS, Claimed, Database, Q

pytestmark = pytest.mark.integration

BACKOFF = timedelta(seconds=60)


def utcnow() -> datetime:
    return datetime.now(UTC)


# Due a minute before the tests began (no clock skew makes them not yet due), and the
# same every time: a replay asks for exactly the same.
DUE = (utcnow() - timedelta(minutes=1)).isoformat()


def item(key: str | None = None, *parents: str, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"kind": "noop", "run_at": DUE, **fields}
    if key is not None:
        body["key"] = key
    if parents:
        body["depends_on"] = list(parents)
    return body


async def insert(db: Database, *items: dict[str, Any]) -> list[NewTask]:
    tasks = parse_batch({"tasks": list(items)})
    await db.insert_tasks(tasks)
    return tasks


async def states(raw: asyncpg.Connection, tasks: list[NewTask]) -> list[str]:
    rows = await raw.fetch("SELECT id, state FROM tasks WHERE id = ANY($1)",
                           [t.id for t in tasks])
    by_id = {r["id"]: r["state"] for r in rows}
    return [by_id[t.id] for t in tasks]


async def finish(db: Database, claimed: list[Claimed], *, ok: bool = True,
                 output: str = "out") -> None:
    now = utcnow()
    report = Report(region="a", started=[], returned=[], finished=[
        Finished(id=str(c.id), attempt=c.attempt, ok=ok, worker_id="w", started_at=now,
                 finished_at=now, exit_code=0 if ok else 1, output=output,
                 error=None if ok else "exited with code 1") for c in claimed])
    await db.apply_report(report, backoff_base=BACKOFF, backoff_max=BACKOFF)


async def counts(db: Database) -> dict[str, int]:
    return await db.counts_by_state()


# ---- dependencies ---------------------------------------------------------------------


async def test_a_child_waits_for_its_parent_and_is_released_by_its_success(
    db: Database, raw: asyncpg.Connection
) -> None:
    parent, child = await insert(db, item("p"), item("c", "p"))
    assert await states(raw, [parent, child]) == ["pending", "waiting"]
    assert await counts(db) == {"pending": 1, "waiting": 1}
    claimed = await db.claim("a", 10)
    assert [c.id for c in claimed] == [parent.id]  # the waiting child is not claimable
    await finish(db, claimed, output="parent says hi")
    assert await states(raw, [parent, child]) == ["succeeded", "pending"]
    assert await counts(db) == {"pending": 1, "succeeded": 1}
    (got,) = await db.claim("a", 10)
    assert got.id == child.id
    # The child gets its parent's output with it.
    assert got.parent_outputs_json
    assert json.loads(got.parent_outputs_json) == {str(parent.id): "parent says hi"}


async def test_a_child_of_two_parents_waits_for_both(
    db: Database, raw: asyncpg.Connection
) -> None:
    *_, child = await insert(db, item("a"), item("b"), item("c", "a", "b"))
    first, second = await db.claim("a", 10)
    await finish(db, [first])
    assert (await states(raw, [child])) == ["waiting"]
    await finish(db, [second])
    assert (await states(raw, [child])) == ["pending"]


async def test_a_failed_parent_cancels_its_dependents_transitively(
    db: Database, raw: asyncpg.Connection
) -> None:
    root, child, grandchild, runner, after_runner = await insert(
        db, item("r"), item("c", "r"), item("g", "c"),
        item("x", "r", on_upstream_failure="run"), item("y", "x"))
    claimed = await db.claim("a", 10)
    assert [c.id for c in claimed] == [root.id]
    await finish(db, claimed, ok=False)
    assert await states(raw, [root, child, grandchild, runner, after_runner]) == [
        "failed", "cancelled", "cancelled", "pending", "waiting"]
    for task in (child, grandchild):
        row = await raw.fetchrow("SELECT error, finished_at FROM tasks WHERE id = $1", task.id)
        assert row["error"] == f"upstream {root.id} failed"
        assert row["finished_at"] is not None
    assert await counts(db) == {"failed": 1, "cancelled": 2, "pending": 1, "waiting": 1}


async def test_cancelling_a_parent_cancels_its_dependents(
    db: Database, raw: asyncpg.Connection
) -> None:
    parent, child = await insert(db, item("p"), item("c", "p"))
    await db.cancel_task(parent.id)
    assert await states(raw, [parent, child]) == ["cancelled", "cancelled"]
    assert await counts(db) == {"cancelled": 2}


async def test_cancelling_a_waiting_task_counts_it_off_waiting(
    db: Database, raw: asyncpg.Connection
) -> None:
    _, child = await insert(db, item("p"), item("c", "p"))
    outcome = await db.cancel_task(child.id)
    assert outcome is not None and outcome.cancelled
    assert await counts(db) == {"pending": 1, "cancelled": 1}


async def test_parents_that_exist_already(db: Database, raw: asyncpg.Connection) -> None:
    done, running, failed = await insert(db, item(), item(), item())
    claimed = {c.id: c for c in await db.claim("a", 10)}
    await finish(db, [claimed[done.id]])
    await finish(db, [claimed[failed.id]], ok=False)
    # Depends on one that succeeded (nothing to wait for), one running, one failed.
    ok_child, waits, doomed, runs_anyway = await insert(
        db, item(None, str(done.id)), item(None, str(running.id)),
        item(None, str(failed.id)), item(None, str(failed.id), on_upstream_failure="run"))
    assert await states(raw, [ok_child, waits, doomed, runs_anyway]) == [
        "pending", "waiting", "cancelled", "pending"]
    error = await raw.fetchval("SELECT error FROM tasks WHERE id = $1", doomed.id)
    assert error == f"upstream {failed.id} failed"
    # The running parent, now marked, releases its child when it ends.
    await finish(db, [claimed[running.id]])
    assert await states(raw, [waits]) == ["pending"]


async def test_an_unknown_parent_is_refused_and_nothing_is_written(
    db: Database, raw: asyncpg.Connection
) -> None:
    with pytest.raises(InvalidInput, match="no task"):
        await insert(db, item("a"), item("b", "a", str(uuid.uuid4())))
    assert await raw.fetchval("SELECT count(*) FROM tasks") == 0
    assert await raw.fetchval("SELECT count(*) FROM task_deps") == 0


@pytest.mark.parametrize("items", [
    [item("a", "b"), item("b", "a")],
    [item("a", "c"), item("b", "a"), item("c", "b")],
    [item("a", "a")],
], ids=["two", "three", "self"])
def test_cycles_and_self_dependencies_are_refused(items: list[dict[str, Any]]) -> None:
    with pytest.raises(InvalidInput, match=r"cycle|itself"):
        parse_batch({"tasks": items})


def test_a_parent_that_is_neither_a_key_nor_an_id_is_refused() -> None:
    with pytest.raises(InvalidInput, match=r"tasks\[1\]: depends_on\[0\]: 'nope'"):
        parse_batch({"tasks": [item("a"), item("b", "nope")]})
    with pytest.raises(InvalidInput, match="only the items of a batch"):
        parse_new_task({"kind": "noop", "key": "a"})


async def test_a_replayed_batch_with_keys_makes_nothing_new(
    db: Database, raw: asyncpg.Connection
) -> None:
    body = {"tasks": [item("a", idempotency_key="k-a"), item("b", "a", idempotency_key="k-b")]}
    first = parse_batch(body)
    await db.insert_tasks(first)
    again = await db.insert_tasks(parse_batch(body))
    assert set(again.existing) == {"k-a", "k-b"}
    assert await raw.fetchval("SELECT count(*) FROM tasks") == 2
    # A new child of the existing keyed item depends on the task that item made.
    mixed = parse_batch({"tasks": [item("a", idempotency_key="k-a"), item("c", "a")]})
    await db.insert_tasks(mixed)
    parents = await raw.fetchval("SELECT depends_on FROM tasks WHERE id = $1", mixed[1].id)
    assert parents == [first[0].id]


async def run_all(db: Database, tasks: list[NewTask]) -> list[uuid.UUID]:
    """Claim and finish until nothing is left; the order tasks started in."""
    order: list[uuid.UUID] = []
    while len(order) < len(tasks):
        claimed = await db.claim("a", 1000)
        assert claimed, f"stuck after {len(order)} of {len(tasks)}"
        order += [c.id for c in claimed]
        await finish(db, claimed)
    return order


def assert_dependency_order(tasks: list[NewTask], order: list[uuid.UUID]) -> None:
    position = {task_id: i for i, task_id in enumerate(order)}
    assert len(position) == len(tasks)
    for task in tasks:
        for parent in task.depends_on:
            assert position[parent] < position[task.id]


@pytest.mark.parametrize("shape", ["chain", "fan", "random"])
async def test_a_dag_of_a_thousand_runs_in_dependency_order(
    db: Database, raw: asyncpg.Connection, shape: str
) -> None:
    n = 1000
    rng = random.Random(7)
    items = []
    for i in range(n):
        if shape == "chain":
            parents = [f"t{i - 1}"] if i else []
        elif shape == "fan":
            parents = ["t0"] if 0 < i < n - 1 else [f"t{j}" for j in range(1, n - 1)] if i else []
        else:
            parents = [f"t{j}" for j in rng.sample(range(i), min(i, rng.randint(0, 3)))]
        items.append(item(f"t{i}", *parents))
    tasks = await insert(db, *items)
    order = await run_all(db, tasks)
    assert_dependency_order(tasks, order)
    assert await counts(db) == {"succeeded": n}
    assert await raw.fetchval("SELECT count(*) FROM tasks WHERE waiting_on <> 0") == 0


# ---- priorities ---------------------------------------------------------------------------


async def test_reprioritize_a_task_that_has_not_started(db: Database) -> None:
    low, _ = await insert(db, item(priority=0), item(priority=5))
    changed = await db.reprioritize(low.id, 10)
    assert changed is not None and changed.priority == 10
    claimed = await db.claim("a", 1)
    assert [c.id for c in claimed] == [low.id]
    # Dispatched now: its priority can no longer change.
    assert await db.reprioritize(low.id, 1) is None


# ---- concurrency keys -------------------------------------------------------------------


async def test_a_limited_key_never_has_more_than_its_limit_in_flight(
    db: Database, raw: asyncpg.Connection
) -> None:
    await db.upsert_region(RegionStatus(name="a", address="a:1", capacity=8,
                                        max_outstanding=16, running=0, queued=0, workers=()))
    await db.set_concurrency_limit("k", 3)
    assert not (await db.region_room(timedelta(seconds=30))).keyed_due
    await insert(db, *[item(concurrency_key="k") for _ in range(10)])
    # What tells a scan to claim key by key.
    assert (await db.region_room(timedelta(seconds=30))).keyed_due
    first = await db.claim("a", 100, fair=True)
    assert len(first) == 3
    assert await db.claim("a", 100, fair=True) == []
    await finish(db, first[:2])
    assert len(await db.claim("a", 100, fair=True)) == 2
    (key,) = await db.concurrency_keys("k")
    assert (key.limit, key.active, key.pending) == (3, 3, 5)


async def test_a_finished_task_of_a_limited_key_wakes_every_master(
    db: Database, raw: asyncpg.Connection
) -> None:
    """Its slot is free for every master's regions: each master's scanner LISTENs."""
    woken: asyncio.Queue[str] = asyncio.Queue()
    await raw.add_listener("strata_tasks", lambda *args: woken.put_nowait(args[-1]))
    await db.set_concurrency_limit("k", 1)
    await insert(db, item(concurrency_key="k"), item(concurrency_key="k"),
                 item(concurrency_key="free"), item())
    await asyncio.wait_for(woken.get(), timeout=10)  # the insert's own
    claimed = await db.claim("a", 100, fair=True)
    assert len(claimed) == 3  # one of k (its limit), the other key's, the unkeyed one
    unlimited = [c for c in claimed if c.id not in await _keyed(raw, "k")]
    await finish(db, unlimited)
    limited = [c for c in claimed if c not in unlimited]
    await finish(db, limited)
    # Only the limited key's end notified; the next notification sent is ours.
    await raw.execute("SELECT pg_notify('strata_tasks', 'marker')")
    assert await asyncio.wait_for(woken.get(), timeout=10) == ""
    assert await asyncio.wait_for(woken.get(), timeout=10) == "marker"


async def _keyed(raw: asyncpg.Connection, key: str) -> set[uuid.UUID]:
    rows = await raw.fetch("SELECT id FROM tasks WHERE concurrency_key = $1", key)
    return {r["id"] for r in rows}


async def test_one_keys_backlog_does_not_delay_another_keys_task(db: Database) -> None:
    await insert(db, *[item(concurrency_key="big", priority=5) for _ in range(2000)])
    (small,) = await insert(db, item(concurrency_key="small"))
    (plain,) = await insert(db, item())
    claimed = await db.claim("a", 100, fair=True)
    ids = [c.id for c in claimed]
    assert len(ids) == 100
    assert small.id in ids and plain.id in ids


async def test_claims_of_one_key_from_two_masters_keep_to_its_limit(
    database_url: str, db: Database
) -> None:
    await db.set_concurrency_limit("k", 5)
    await insert(db, *[item(concurrency_key="k") for _ in range(200)])
    other = await Database.connect(database_url)
    try:
        for _ in range(20):
            got = await asyncio.gather(*(d.claim(r, 50, fair=True)
                                         for d, r in ((db, "a"), (other, "b"))))
            in_flight = await db.concurrency_keys("k")
            assert in_flight[0].active <= 5
            await finish(db, [c for batch in got for c in batch])
    finally:
        await other.close()


async def test_reprioritize_is_refused_once_finished(db: Database) -> None:
    (task,) = await insert(db, item())
    claimed = await db.claim("a", 1)
    await finish(db, claimed)
    assert await db.reprioritize(task.id, 3) is None
    stored = await db.get_task(task.id)
    assert stored is not None and stored.state is TaskState.SUCCEEDED


async def test_a_create_that_clashes_on_a_key_in_flight_is_a_conflict_not_an_error(
    db: Database,
) -> None:
    # Two different asks under one idempotency key: the second is refused, as ever.
    await db.insert_tasks(parse_batch({"tasks": [item("a", idempotency_key="same")]}))
    with pytest.raises(Conflict):
        await db.insert_tasks(parse_batch({"tasks": [
            item("a", idempotency_key="same", priority=3), item("b", "a")]}))


# ---- priority aging ---------------------------------------------------------------------


async def test_aging_lets_an_old_low_priority_task_go_before_new_high_ones(
    database_url: str, raw: asyncpg.Connection
) -> None:
    # 60 points a minute: a task due two minutes ago outranks one due now by 120 - 100.
    aged = await Database.connect(database_url, priority_aging=60.0)
    try:
        assert len(await aged.prepare_aging()) == 3
        assert await aged.prepare_aging() == []  # made once
        now = utcnow()
        old, new = parse_batch({"tasks": [
            {"kind": "noop", "priority": 0, "run_at": (now - timedelta(minutes=2)).isoformat()},
            {"kind": "noop", "priority": 100, "run_at": now.isoformat()}]})
        await aged.insert_tasks([old, new])
        first = await aged.claim("a", 1)
        assert [c.id for c in first] == [old.id]
    finally:
        await aged.close()


async def test_without_aging_priority_alone_decides(db: Database) -> None:
    now = utcnow()
    old, new = parse_batch({"tasks": [
        {"kind": "noop", "priority": 0, "run_at": (now - timedelta(minutes=2)).isoformat()},
        {"kind": "noop", "priority": 100, "run_at": now.isoformat()}]})
    await db.insert_tasks([old, new])
    assert [c.id for c in await db.claim("a", 1)] == [new.id]


@pytest.mark.parametrize("aging", [0.0, 60.0])
async def test_the_claim_reads_only_what_it_takes_whatever_the_backlog(
    database_url: str, raw: asyncpg.Connection, aging: float
) -> None:
    """The claim's plan walks a claim index in order and stops at its limit: no sort, no
    scan of the backlog, as many rows read with 20,000 due as it takes."""
    db = await Database.connect(database_url, priority_aging=aging)
    try:
        await db.prepare_aging()
        now = utcnow()
        for _ in range(2):
            await db.insert_tasks(parse_batch({"tasks": [
                {"kind": "noop", "priority": i % 7,
                 "run_at": (now - timedelta(seconds=i % 600)).isoformat()}
                for i in range(10_000)]}))
        await raw.execute("ANALYZE tasks")
        # The statement the claim runs, on a session of the claim's settings.
        conn = await asyncpg.connect(database_url, server_settings={
            "enable_seqscan": "off", "enable_bitmapscan": "off", "enable_sort": "off"})
        try:
            claiming = conn.transaction()
            await claiming.start()
            plan = "\n".join(r[0] for r in await conn.fetch(
                "EXPLAIN (ANALYZE, COSTS OFF) " + db._claim_due, "a", 100))
            await claiming.rollback()  # it claimed: undone
        finally:
            await conn.close()
    finally:
        await db.close()
    index = "tasks_claim_aged_60_0_idx" if aging else "tasks_claim_idx"
    assert f"Index Scan using {index} on tasks" in plan, plan
    assert "Seq Scan" not in plan, plan
    # The one sort is the merge of the candidates read (at most twice the limit), never
    # of the table's rows.
    sorts = [line.strip() for line in plan.splitlines() if "Sort Key:" in line]
    assert sorts and all("free.priority" in line for line in sorts), plan
    # The free tasks' scan stops after the hundred it locks.
    scan = next(line for line in plan.splitlines() if f"using {index}" in line)
    assert "rows=100 loops=1" in scan, plan


@pytest.mark.parametrize("statement", ["release_dependents", "cancel_doomed"])
async def test_releasing_children_never_loops_over_a_set(
    db: Database, raw: asyncpg.Connection, statement: str
) -> None:
    """The plan made once for a statement that releases (or cancels) children hashes
    the children it is given against the tasks it reads by key: a nested loop over a
    set the planner guessed small (a chain's one child, when the plan was made) would
    make releasing a fan-out of ten thousand quadratic."""
    # Statistics of a chain: one child per parent.
    await insert(db, *[item(f"t{i}", *([f"t{i - 1}"] if i else [])) for i in range(2000)])
    await raw.execute("ANALYZE tasks")
    await raw.execute("ANALYZE task_deps")
    args = {"release_dependents": "'{}'::uuid[], 60", "cancel_doomed": "'{}', '{}'"}
    transaction = raw.transaction()
    await transaction.start()
    try:
        await raw.execute(RELEASE_SETTINGS)
        await raw.execute(f"PREPARE release AS {Q[statement]}")
        plan = "\n".join(r[0] for r in await raw.fetch(
            f"EXPLAIN (COSTS OFF) EXECUTE release({args[statement]})"))
    finally:
        await transaction.rollback()
    assert "Nested Loop" not in plan, plan
    assert "Seq Scan on tasks" not in plan, plan
    # The tasks it changes are read by key, from the set it was given.
    assert "Index Cond: (id = ANY" in plan, plan
