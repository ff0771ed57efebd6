"""Failure handling on real processes with real signals: region reclaim and fencing,
graceful stops, master restarts, two masters, a PostgreSQL restart."""

from __future__ import annotations

import asyncio
import shutil
import signal
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from strata.common.client import Client
from strata.local.cluster import Cluster, wait_until
from strata.local.postgres import EmbeddedPostgres, free_port
from tests.e2e.scrape import scrape, value

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


async def _region(c: Client, name: str) -> dict[str, Any]:
    return next(r for r in await c.regions() if r["name"] == name)


async def _states(c: Client, ids: list[str]) -> Counter[str]:
    return Counter([(await c.get(i))["state"] for i in ids])


def _recording(path: Path, marker: str, seconds: float = 0) -> dict[str, Any]:
    """A shell task that appends its marker to a file: executions can be counted."""
    pause = f"sleep {seconds}; " if seconds else ""
    return {"kind": "shell", "command": f"{pause}echo {marker} >> {path}"}


def _executions(path: Path) -> Counter[str]:
    return Counter(path.read_text().split()) if path.exists() else Counter()


async def test_killed_region_is_marked_down_and_its_tasks_run_elsewhere(
    cluster: Cluster,
) -> None:
    await cluster.start_master()
    for region in ("east", "west"):
        await cluster.start_region(region)
        await cluster.start_worker(region, f"{region}-w1", concurrency=4)
    async with cluster.client() as c:
        # More than one region's room (4 running + 4 queued): both regions get a share.
        ids = await c.create_batch([{"kind": "sleep", "seconds": 1} for _ in range(16)])

        async def some_running_in_east() -> list[str]:
            tasks = [await c.get(i) for i in ids]
            return [t["id"] for t in tasks if t["region"] == "east" and t["state"] == "running"]

        in_east = await wait_until(some_running_in_east, what="tasks running in east")
        cluster.kill("east", signal.SIGKILL)
        await wait_until(lambda: _down(c, "east"), timeout_s=10, what="east marked down")
        for task_id in ids:
            task = await c.wait(task_id, timeout_s=30)
            assert task["state"] == "succeeded", task
        for task_id in in_east:
            task = await c.get(task_id)
            # attempt is the fencing token: 1 (first claim), 2 (reclaim), 3 (second claim).
            assert task["region"] == "west" and task["attempt"] == 3, task
            # Its history says where it ran first and why it moved.
            history = (await c.request("GET", f"/v1/tasks/{task_id}/attempts"))["attempts"]
            first, last = history[0], history[-1]
            assert (first["attempt"], first["region"], first["outcome"]) == (
                1, "east", "reclaimed"), history
            assert first["worker_id"] == "east-w1" and "east" in first["reason"], history
            assert (last["attempt"], last["region"], last["outcome"]) == (
                3, "west", "succeeded"), history
    metrics = await scrape(f"{cluster.api}/metrics")
    assert value(metrics, "strata_attempts_reclaimed_total", reason="region_down") >= len(
        in_east)
    # Each task moved from east was rescued: from east's last heartbeat to its start in
    # west, within the test's own bound.
    assert value(metrics, "strata_task_rescue_seconds_count") >= len(in_east)
    assert value(metrics, "strata_task_rescue_seconds_bucket", le="30.0") == value(
        metrics, "strata_task_rescue_seconds_count")
    assert value(metrics, "strata_region_up", region="east") == 0
    assert "action=region_down" in cluster.log("master")
    assert "action=tasks_reclaimed" in cluster.log("master")


async def test_a_task_whose_worker_dies_runs_again_in_its_region_and_says_so(
    cluster: Cluster,
) -> None:
    await cluster.start_master()
    await cluster.start_region("east")
    await cluster.start_worker("east", "east-w1", concurrency=1)
    async with cluster.client() as c:
        task_id = (await c.create(kind="sleep", seconds=1.5))["id"]

        async def running() -> bool:
            return (await c.get(task_id))["state"] == "running"

        await wait_until(running, what="the task running on east-w1")
        await cluster.start_worker("east", "east-w2", concurrency=1)
        cluster.kill("east-w1", signal.SIGKILL)
        task = await c.wait(task_id, timeout_s=30)
        history = (await c.request("GET", f"/v1/tasks/{task_id}/attempts"))["attempts"]
    assert task["state"] == "succeeded" and task["worker_id"] == "east-w2", task
    # One attempt (the region ran it again itself), two runs: the first evicted.
    assert [(a["attempt"], a["worker_id"], a["outcome"]) for a in history] == [
        (1, "east-w1", "evicted"), (1, "east-w2", "succeeded")], history
    assert "east-w1" in history[0]["reason"] and history[0]["region"] == "east"
    metrics = await scrape(f"{cluster.api}/metrics")
    assert value(metrics, "strata_attempts_reclaimed_total", reason="worker_dead") == 1
    assert value(metrics, "strata_task_rescue_seconds_count") == 1


async def _down(c: Client, name: str) -> bool:
    return (await _region(c, name))["state"] == "down"


async def test_task_pinned_to_a_dead_region_waits_for_it(cluster: Cluster) -> None:
    await cluster.start_master()
    for region in ("east", "west"):
        await cluster.start_region(region)
        await cluster.start_worker(region, f"{region}-w1")
    cluster.kill("east", signal.SIGKILL)
    async with cluster.client() as c:
        await wait_until(lambda: _down(c, "east"), timeout_s=10, what="east marked down")
        pinned = (await c.create(kind="noop", region="east"))["id"]
        free = (await c.create(kind="noop"))["id"]
        assert (await c.wait(free, timeout_s=20))["region"] == "west"
        # The unpinned task went through the whole path meanwhile; the pinned one waits.
        assert (await c.get(pinned))["state"] == "pending"
        await cluster.start_region("east")  # the worker east-w1 reconnects on its own
        task = await c.wait(pinned, timeout_s=30)
        assert task["state"] == "succeeded" and task["region"] == "east"


async def test_results_of_a_reclaimed_attempt_are_dropped_and_counted(
    cluster: Cluster, tmp_path: Path
) -> None:
    await cluster.start_master()
    for region in ("east", "west"):
        await cluster.start_region(region)
        await cluster.start_worker(region, f"{region}-w1", concurrency=4)
    record = tmp_path / "executions"
    async with cluster.client() as c:
        # More than one region's room (4 running + 4 queued): both regions get a share.
        ids = await c.create_batch([_recording(record, f"m{n}", seconds=1.5)
                                    for n in range(16)])

        async def running_in_east() -> dict[str, int]:
            tasks = [await c.get(i) for i in ids]
            return {t["id"]: t["attempt"] for t in tasks
                    if t["region"] == "east" and t["state"] == "running"}

        in_east = await wait_until(running_in_east, what="a task running in east")
        # Freeze the region (a real SIGSTOP): its worker finishes, but the region cannot
        # report until the master has already given the attempt to west.
        cluster.kill("east", signal.SIGSTOP)
        try:
            await wait_until(lambda: _down(c, "east"), timeout_s=10, what="east marked down")
            moved = await wait_until(
                lambda: _all_moved_on(c, in_east), timeout_s=10, what="reclaimed")
            assert moved
        finally:
            cluster.kill("east", signal.SIGCONT)
        for task_id in ids:
            task = await c.wait(task_id, timeout_s=30)
            assert task["state"] == "succeeded"
        for task_id, attempt in in_east.items():
            # Reclaimed (one step) and claimed again (another), by west or by east once it
            # came back.
            assert (await c.get(task_id))["attempt"] == attempt + 2
        stale = await wait_until(
            lambda: _stale(c, "east"), timeout_s=15, what="stale results counted")
        assert stale >= len(in_east)
        assert (await c.stats())["stale_results"] >= len(in_east)
    assert "action=stale_results_dropped" in cluster.log("master")
    assert "action=region_reset" in cluster.log("east")
    executions = _executions(record)
    assert set(executions) == {f"m{n}" for n in range(16)}
    # Only attempts running on east's worker when it froze can have run twice: at most
    # its four slots (some of them may not have shown as running yet when we looked).
    assert sum(1 for n in executions.values() if n > 1) <= 4


async def _all_moved_on(c: Client, attempts: dict[str, int]) -> bool:
    return all([(await c.get(i))["attempt"] > a for i, a in attempts.items()])


async def _stale(c: Client, region: str) -> int:
    return int((await _region(c, region))["stale_results"])


async def test_worker_sigterm_finishes_running_work_and_hands_back_the_rest(
    cluster: Cluster,
) -> None:
    await cluster.start_master()
    await cluster.start_region("east")
    await cluster.start_worker("east", "east-w1", concurrency=2, STRATA_SHUTDOWN_GRACE="1")
    async with cluster.client() as c:
        quick = (await c.create(kind="sleep", seconds=0.3))["id"]
        slow = (await c.create(kind="sleep", seconds=30, max_attempts=1))["id"]
        await wait_until(lambda: _all_state(c, [quick, slow], "running"), what="both running")
        await cluster.start_worker("east", "east-w2", concurrency=2)
        cluster.kill("east-w1", signal.SIGTERM)
        assert cluster.procs["east-w1"].wait(timeout=15) == 0
        assert (await c.wait(quick, timeout_s=10))["worker_id"] == "east-w1"
        # The slow one was interrupted at the end of the grace and handed back: it runs
        # again on the other worker (a hand-back is not a failed attempt).
        await wait_until(lambda: _runs_on(c, slow, "east-w2"), timeout_s=20,
                         what="slow task restarted on east-w2")
    log = cluster.log("east-w1")
    assert "action=worker_stopped" in log


async def _all_state(c: Client, ids: list[str], state: str) -> bool:
    return all([(await c.get(i))["state"] == state for i in ids])


async def _runs_on(c: Client, task_id: str, worker: str) -> bool:
    task = await c.get(task_id)
    return bool(task["state"] == "running" and task["worker_id"] == worker)


async def test_region_sigterm_hands_its_queue_back(cluster: Cluster) -> None:
    await cluster.start_master()
    await cluster.start_region("east", STRATA_QUEUE_FACTOR="8")
    await cluster.start_worker("east", "east-w1", concurrency=1)
    await cluster.start_region("west")
    await cluster.start_worker("west", "west-w1", concurrency=1)
    async with cluster.client() as c:
        ids = await c.create_batch([{"kind": "sleep", "seconds": 0.5, "region": "east"}
                                    for _ in range(2)]
                                   + [{"kind": "sleep", "seconds": 0.5} for _ in range(8)])
        await wait_until(lambda: _queued(c, "east"), what="east holding a queue")
        cluster.kill("east", signal.SIGTERM)
        assert cluster.procs["east"].wait(timeout=15) == 0
        unpinned = ids[2:]
        for task_id in unpinned:
            assert (await c.wait(task_id, timeout_s=40))["state"] == "succeeded"
    assert "action=hand_back" in cluster.log("east")
    assert "action=tasks_handed_back" in cluster.log("master")


async def _queued(c: Client, region: str) -> bool:
    return int((await _region(c, region))["queued"]) > 0


async def test_master_killed_and_restarted_mid_run_loses_nothing(
    cluster: Cluster, tmp_path: Path
) -> None:
    await cluster.start_master()
    await cluster.start_region("east")
    await cluster.start_worker("east", "east-w1", concurrency=8)
    record = tmp_path / "executions"
    async with cluster.client() as c:
        ids = await c.create_batch([_recording(record, f"m{n}", seconds=0.2)
                                    for n in range(60)])
        await wait_until(lambda: _some_done(c), what="some tasks done")
        cluster.kill("master", signal.SIGKILL)
        await cluster.start_master()
        for task_id in ids:
            assert (await c.wait(task_id, timeout_s=60))["state"] == "succeeded"
    executions = _executions(record)
    assert set(executions) == {f"m{n}" for n in range(60)}
    # The region kept its work and delivered its buffered results: nothing was reclaimed.
    assert max(executions.values()) == 1, executions.most_common(3)


async def _some_done(c: Client) -> bool:
    return int((await c.stats())["counts"]["succeeded"]) > 5


async def test_two_masters_never_dispatch_the_same_attempt_twice(
    cluster: Cluster, tmp_path: Path
) -> None:
    await cluster.start_master()
    await cluster.start_master("master2")
    # One region reports to each master, and each master delegates to its own region:
    # both masters claim from one table at once.
    await cluster.start_region("east")
    await cluster.start_worker("east", "east-w1", concurrency=8)
    await cluster.start_region("west", masters=["master2"])
    await cluster.start_worker("west", "west-w1", concurrency=8)
    record = tmp_path / "executions"
    async with cluster.client() as c, cluster.client("master2") as c2:
        half = await c.create_batch([_recording(record, f"a{n}") for n in range(150)])
        other = await c2.create_batch([_recording(record, f"b{n}") for n in range(150)])
        finished = [await c.wait(i, timeout_s=60) for i in half + other]
        stats = await c.stats()
    # Two masters may together offer a region more than it has room for; it rejects the
    # excess, which goes back to pending unstarted and is claimed again under a new
    # attempt. What must never happen is one attempt running twice: every task ran
    # exactly once and no result was ever stale.
    assert all(t["state"] == "succeeded" for t in finished)
    assert {t["region"] for t in finished} == {"east", "west"}
    executions = _executions(record)
    assert len(executions) == 300 and max(executions.values()) == 1
    assert stats["stale_results"] == 0


@pytest.fixture
def own_postgres() -> Iterator[EmbeddedPostgres]:
    """A server of this test's own: the test stops and restarts it."""
    home = Path(tempfile.mkdtemp(prefix="strata-test-pgrestart-"))
    home.chmod(0o755)
    server = EmbeddedPostgres(home / "data", port=free_port(), fast=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)


async def test_master_survives_a_database_restart(
    own_postgres: EmbeddedPostgres, tmp_path: Path
) -> None:
    cluster = Cluster(workdir=tmp_path, database_url=own_postgres.url)
    try:
        await cluster.start_master()
        await cluster.start_region("east")
        await cluster.start_worker("east", "east-w1")
        async with cluster.client() as c, aiohttp.ClientSession() as http:
            before = (await c.create(kind="noop"))["id"]
            assert (await c.wait(before, timeout_s=20))["state"] == "succeeded"
            await asyncio.to_thread(own_postgres.stop)

            async with http.post(cluster.api + "/v1/tasks", json={"kind": "noop"}) as resp:
                assert resp.status == 503
                assert int(resp.headers["Retry-After"]) >= 1
                assert (await resp.json())["error"]["code"] == "database_unavailable"
            async with http.get(cluster.api + "/readyz") as resp:
                assert resp.status == 503
            async with http.get(cluster.api + "/healthz") as resp:
                assert resp.status == 200

            await asyncio.to_thread(own_postgres.start)
            await wait_until(lambda: _ready(http, cluster.api), timeout_s=20, what="ready")
            after = (await c.create(kind="noop"))["id"]
            task = await c.wait(after, timeout_s=30)
            assert task["state"] == "succeeded"
        assert cluster.procs["master"].poll() is None, "the master must not exit"
        assert "action=scanner_db_lost" in cluster.log("master")
    finally:
        cluster.stop()


async def _ready(http: aiohttp.ClientSession, api: str) -> bool:
    async with http.get(api + "/readyz") as resp:
        return resp.status == 200


async def test_region_restarted_at_once_loses_its_queue_but_no_task(cluster: Cluster) -> None:
    await cluster.start_master()
    # Long dead-after: the restarted region is never declared down, so only the
    # heartbeat's list of what it holds can reveal the attempts its queue lost.
    await cluster.start_region("east", STRATA_QUEUE_FACTOR="8", STRATA_REGION_DEAD_AFTER="60")
    await cluster.start_worker("east", "east-w1", concurrency=1)
    async with cluster.client() as c:
        ids = await c.create_batch([{"kind": "sleep", "seconds": 0.3} for _ in range(6)])
        await wait_until(lambda: _queued(c, "east"), what="east holding a queue")
        cluster.kill("east", signal.SIGKILL)
        await cluster.start_region("east", STRATA_QUEUE_FACTOR="8")
        for task_id in ids:
            assert (await c.wait(task_id, timeout_s=40))["state"] == "succeeded"
        assert (await _region(c, "east"))["state"] == "up"
    assert "action=tasks_reconciled" in cluster.log("master")
