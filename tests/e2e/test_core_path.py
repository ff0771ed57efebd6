"""The core path on real processes: REST → PostgreSQL → master → region → worker → back."""

from __future__ import annotations

import signal
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from strata.local.cluster import Cluster, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def test_scheduled_task_succeeds_and_status_has_timestamps(cluster: Cluster) -> None:
    await cluster.start_master()
    await cluster.start_region("east")
    await cluster.start_worker("east", "east-w1")
    async with cluster.client() as c:
        scheduled = await c.request(
            "POST", "/schedule", json={"command": "echo hi", "scheduled_at": datetime.now(UTC)
                                       .isoformat()}
        )
        task = await c.wait(scheduled["task_id"], timeout_s=20)
        assert task["state"] == "succeeded"
        assert task["result"]["exit_code"] == 0
        assert task["result"]["output"] == "hi\n"
        status = await c.request("GET", "/status", params={"task_id": scheduled["task_id"]})
        for key in ("picked_at", "started_at", "completed_at"):
            assert key in status, status
        assert "failed_at" not in status
        assert _at(status["picked_at"]) <= _at(status["started_at"]) <= \
            _at(status["completed_at"])


async def test_failed_command_ends_failed_with_exit_code(cluster: Cluster) -> None:
    await cluster.start_master()
    await cluster.start_region("east")
    await cluster.start_worker("east", "east-w1")
    async with cluster.client() as c:
        created = await c.create(kind="shell", command="echo oops >&2; exit 7")
        task = await c.wait(created["id"], timeout_s=20)
        assert task["state"] == "failed"
        assert task["result"]["exit_code"] == 7
        assert task["result"]["stderr"] == "oops\n"
        assert task["result"]["output"] is None
        assert task["result"]["error"] == "exited with code 7"
        status = await c.request("GET", "/status/", params={"task_id": created["id"]})
        assert "failed_at" in status and "completed_at" not in status


async def test_task_waits_without_workers_then_runs_when_one_joins(cluster: Cluster) -> None:
    await cluster.start_master()
    await cluster.start_region("east")
    async with cluster.client() as c:
        created = await c.create(kind="noop")
        # Let the region report its (empty) capacity twice: the task must still wait.
        first = next(r for r in await c.regions() if r["name"] == "east")["last_heartbeat"]

        async def two_beats_later() -> bool:
            now = next(r for r in await c.regions() if r["name"] == "east")["last_heartbeat"]
            return _at(now) >= _at(first) + timedelta(seconds=0.35)

        await wait_until(two_beats_later, what="two region heartbeats")
        assert (await c.get(created["id"]))["state"] == "pending"
        await cluster.start_worker("east", "east-w1")
        task = await c.wait(created["id"], timeout_s=20)
        assert task["state"] == "succeeded"
        assert task["worker_id"] == "east-w1"


async def test_killed_worker_is_evicted_and_its_tasks_finish_on_the_survivor(
    cluster: Cluster,
) -> None:
    await cluster.start_master()
    await cluster.start_region("east")
    await cluster.start_worker("east", "east-w1", concurrency=4)
    await cluster.start_worker("east", "east-w2", concurrency=4)
    async with cluster.client() as c:
        # Long enough to be running on both workers when one is killed.
        ids = [(await c.create(kind="sleep", seconds=1.5))["id"] for _ in range(4)]

        async def all_running() -> bool:
            return all([(await c.get(i))["state"] == "running" for i in ids])

        await wait_until(all_running, what="four tasks running")
        on_w1 = [i for i in ids if (await c.get(i))["worker_id"] == "east-w1"]
        assert on_w1, "round-robin should have put some on east-w1"
        cluster.kill("east-w1", signal.SIGKILL)

        async def evicted() -> bool:
            return [w["id"] for w in await c.workers()] == ["east-w2"]

        await wait_until(evicted, what="east-w1 evicted")
        for task_id in ids:
            task = await c.wait(task_id, timeout_s=30)
            assert task["state"] == "succeeded"
            assert task["worker_id"] == "east-w2" or task_id not in on_w1
        later = [(await c.create(kind="noop"))["id"] for _ in range(10)]
        finished = [await c.wait(i, timeout_s=20) for i in later]
        assert {t["worker_id"] for t in finished} == {"east-w2"}
        assert all(t["state"] == "succeeded" for t in finished)


async def test_tasks_spread_evenly_round_robin_over_workers(cluster: Cluster) -> None:
    await cluster.start_master()
    await cluster.start_region("east")
    # Room for every task at once: no worker is ever full, so nothing but the
    # round-robin decides who gets what (a full worker is skipped by design).
    for n in (1, 2, 3):
        await cluster.start_worker("east", f"east-w{n}", concurrency=32)
    async with cluster.client() as c:
        ids = await c.create_batch([{"kind": "noop"} for _ in range(60)])
        finished = [await c.wait(i, timeout_s=30) for i in ids]
    per_worker = Counter(t["worker_id"] for t in finished)
    assert set(per_worker) == {"east-w1", "east-w2", "east-w3"}
    assert max(per_worker.values()) - min(per_worker.values()) <= 1, per_worker


async def test_task_scheduled_ahead_starts_on_time(cluster: Cluster) -> None:
    await cluster.start_master()
    await cluster.start_region("east")
    await cluster.start_worker("east", "east-w1")
    async with cluster.client() as c:
        run_at = datetime.now(UTC) + timedelta(seconds=2)
        created = await c.create(kind="noop", run_at=run_at.isoformat())
        assert (await c.get(created["id"]))["state"] == "pending"
        task = await c.wait(created["id"], timeout_s=20)
    started = _at(task["started_at"])
    assert started >= run_at, "started early"
    assert started - run_at < timedelta(seconds=1), f"late by {started - run_at}"


async def test_priorities_order_claims(cluster: Cluster) -> None:
    await cluster.start_master()
    # One slot and no queue: the order of claims is the order of runs.
    await cluster.start_region("east", STRATA_QUEUE_FACTOR="0")
    await cluster.start_worker("east", "east-w1", concurrency=1)
    async with cluster.client() as c:
        blocker = await c.create(kind="sleep", seconds=1)
        await wait_until(lambda: _state_is(c, blocker["id"], "running"), what="blocker running")
        ids = {}
        for priority in (1, 5, -3, 10, 0):
            ids[priority] = (await c.create(kind="noop", priority=priority))["id"]
        finished = {p: await c.wait(i, timeout_s=30) for p, i in ids.items()}
    order = sorted(finished, key=lambda p: _at(finished[p]["started_at"]))
    assert order == [10, 5, 1, 0, -3]


async def test_pinned_tasks_run_in_their_region(cluster: Cluster) -> None:
    await cluster.start_master()
    for region in ("east", "west"):
        await cluster.start_region(region)
        await cluster.start_worker(region, f"{region}-w1")
    async with cluster.client() as c:
        east = await c.create_batch([{"kind": "noop", "region": "east"} for _ in range(10)])
        west = await c.create_batch([{"kind": "noop", "region": "west"} for _ in range(10)])
        free = await c.create_batch([{"kind": "noop"} for _ in range(40)])
        for ids, region in ((east, "east"), (west, "west")):
            for task_id in ids:
                task = await c.wait(task_id, timeout_s=20)
                assert task["region"] == region and task["worker_id"] == f"{region}-w1"
        unpinned = Counter([(await c.wait(i, timeout_s=20))["region"] for i in free])
    assert set(unpinned) == {"east", "west"}, unpinned


async def _state_is(c: object, task_id: str, state: str) -> bool:
    from strata.common.client import Client

    assert isinstance(c, Client)
    return bool((await c.get(task_id))["state"] == state)


async def test_a_batch_is_spread_over_equal_regions_by_their_room(cluster: Cluster) -> None:
    """Each region has room for far more than the batch: it is still split between them,
    not taken by the first."""
    await cluster.start_master()
    for region in ("east", "west"):
        await cluster.start_region(region)
        await cluster.start_worker(region, f"{region}-w1", concurrency=100)
    async with cluster.client() as c:

        async def both_have_room() -> bool:
            return all(r["max_outstanding"] >= 100 for r in await c.regions())

        await wait_until(both_have_room, what="both regions advertising their room")
        ids = await c.create_batch([{"kind": "noop"} for _ in range(100)])
        done = [await c.wait(task_id, timeout_s=30) for task_id in ids]
    spread = Counter(t["region"] for t in done)
    assert all(t["state"] == "succeeded" for t in done)
    assert set(spread) == {"east", "west"}
    assert all(35 <= n <= 65 for n in spread.values()), spread


async def test_a_region_busy_with_short_tasks_holds_its_workers_pace(cluster: Cluster) -> None:
    """A flood of noop tasks: the region's heartbeats advertise room beyond capacity x
    (1 + queue_factor), for what its workers finish in the queue horizon, and never
    more than 16 times capacity beyond it. Every task still runs once, on its first
    attempt: nothing delegated is refused for want of room."""
    await cluster.start_master()
    await cluster.start_region("east")
    await cluster.start_worker("east", "east-w1", concurrency=8)
    async with cluster.client() as c:

        async def east() -> dict[str, Any]:
            (region,) = await c.regions()
            return region

        async def advertising(most: int) -> bool:
            return (await east())["max_outstanding"] == most

        await wait_until(lambda: advertising(16), what="east advertising 8 + 8 x 1.0")
        await c.create_batch([{"kind": "noop"} for _ in range(5000)])
        seen: list[int] = []

        async def deeper() -> bool:
            seen.append((await east())["max_outstanding"])
            return seen[-1] > 16

        await wait_until(deeper, timeout_s=30, what="east holding more than 16")
        assert max(seen) <= 8 + 8 * 16, seen

        async def drained() -> bool:
            return (await c.stats())["counts"].get("succeeded") == 5000

        await wait_until(drained, timeout_s=60, what="5,000 tasks succeeded")
        # The pace falls back with the flood: so does what the region holds.
        await wait_until(lambda: advertising(16), what="east back at 8 + 8 x 1.0")
        attempts: Counter[int] = Counter()
        page = await c.list_tasks(state="succeeded", limit="1000")
        while True:
            attempts.update(t["attempt"] for t in page["tasks"])
            if not page["next_cursor"]:
                break
            page = await c.list_tasks(state="succeeded", limit="1000",
                                      cursor=page["next_cursor"])
        assert attempts == {1: 5000}, attempts
