"""Fairness on real processes: concurrency keys held to their limits across two masters,
round-robin between keys, and priority aging that lets no task starve."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timedelta

import asyncpg
import pytest

from strata.common.client import Client
from strata.local.cluster import Cluster, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def _in_flight(conn: asyncpg.Connection, key: str) -> int:
    count: int = await conn.fetchval(
        "SELECT count(*) FROM tasks WHERE concurrency_key = $1"
        " AND state IN ('dispatched', 'running')", key)
    return count


async def test_a_key_limit_holds_across_two_masters_and_other_keys_are_not_held_up(
    cluster: Cluster, database_url: str
) -> None:
    await cluster.start_master()
    await cluster.start_master("master2")
    # Each master claims for a region of its own: both claim the key's tasks at once.
    for region, master in (("east", "master"), ("west", "master2")):
        await cluster.start_region(region, masters=[master])
        await cluster.start_worker(region, f"{region}-w1", concurrency=16)
    samples: list[int] = []
    stop = asyncio.Event()
    conn = await asyncpg.connect(database_url)

    async def sample() -> None:
        while not stop.is_set():
            samples.append(await _in_flight(conn, "etl"))

    async with cluster.client() as c, cluster.client("master2") as c2:
        limited = await c2.set_concurrency("etl", 3)
        assert limited == {"key": "etl", "limit": 3, "active": 0, "pending": 0}
        sampler = asyncio.create_task(sample())
        try:
            backlog = await c.create_batch(
                [{"kind": "sleep", "seconds": 0.1, "concurrency_key": "etl"}
                 for _ in range(120)])
            await wait_until(lambda: _key_active(c, "etl", 3), what="the key at its limit")
            # Another key's one task, and a task with no key, go at once: not after the
            # backlog.
            other = await c.create(kind="noop", concurrency_key="report")
            plain = await c.create(kind="noop")
            for task in (other, plain):
                done = await c.wait(task["id"], timeout_s=10)
                assert done["state"] == "succeeded"
                assert _at(done["started_at"]) - _at(done["created_at"]) < timedelta(seconds=2)
            assert (await c.concurrency("etl"))["pending"] > 60, "the backlog is still there"
            finished = [await c.wait(i, timeout_s=60) for i in backlog]
        finally:
            stop.set()
            await sampler
            await conn.close()
    assert all(t["state"] == "succeeded" for t in finished)
    # Both masters claimed some of the key's tasks, each for its own region.
    assert {t["region"] for t in finished} == {"east", "west"}
    assert len(samples) > 100
    assert max(samples) == 3, max(samples)


async def _key_active(c: Client, key: str, n: int) -> bool:
    return bool((await c.concurrency(key))["active"] == n)


async def test_aging_lets_a_low_priority_task_through_a_flood_of_high_ones(
    cluster: Cluster,
) -> None:
    # 600 points a minute: ten a second. A priority-0 task outranks the priority-10 tasks
    # due more than a second after it, however many of them come.
    aging = 600.0
    bound = timedelta(minutes=10 / aging)
    cluster.env["STRATA_PRIORITY_AGING"] = str(aging)
    await cluster.start_master()
    # One slot and no queue: the order of claims is the order of runs.
    await cluster.start_region("east", STRATA_QUEUE_FACTOR="0")
    await cluster.start_worker("east", "east-w1", concurrency=1)
    stop = asyncio.Event()
    flood: list[str] = []

    async def keep_flooding(c: Client) -> None:
        # Thirty a second, three times what the one slot runs: the backlog only grows.
        while not stop.is_set():
            flood.extend(await c.create_batch(
                [{"kind": "sleep", "seconds": 0.1, "priority": 10} for _ in range(3)]))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)

    async with cluster.client() as c:
        flooding = asyncio.create_task(keep_flooding(c))
        try:
            await wait_until(lambda: _pending_at_least(c, 20), what="a backlog")
            low = await c.create(kind="noop", priority=0)
            done = await c.wait(low["id"], timeout_s=60)
        finally:
            stop.set()
            await flooding
        floods = [await c.get(i) for i in flood]
    assert done["state"] == "succeeded"
    low_picked = _at(done["picked_at"])
    low_due = _at(done["run_at"])
    before_low = [t for t in floods if t["picked_at"] and _at(t["picked_at"]) < low_picked]
    # No task due more than the bound after it went first...
    assert all(_at(t["run_at"]) <= low_due + bound for t in before_low), [
        (t["run_at"], t["picked_at"]) for t in before_low if _at(t["run_at"]) > low_due + bound]
    # ...while higher-priority tasks due before it was picked were still waiting: it went
    # past them, it did not wait for the flood to end.
    passed = [t for t in floods if _at(t["run_at"]) < low_picked and
              (t["picked_at"] is None or _at(t["picked_at"]) > low_picked)]
    assert passed, "the low-priority task only ran once the flood had drained"


async def _pending_at_least(c: Client, n: int) -> bool:
    return bool((await c.stats())["counts"]["pending"] >= n)


