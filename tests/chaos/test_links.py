"""Faults on one link at a time, under a steady load: slow links and worker streams that
reset must cost time, never a task."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from tests.chaos.harness import ChaosCluster
from tests.chaos.links import Faults
from tests.chaos.load import Load, Summary

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(180)]

RATE = 30.0  # tasks a second
LOAD_S = 5.0
DRAIN_S = 60.0
REGIONS = ("east", "west")
WORKERS_PER_REGION = 2


async def _start(chaos: ChaosCluster) -> None:
    await chaos.start_master()
    for region in REGIONS:
        await chaos.start_region(region)
        for n in range(1, WORKERS_PER_REGION + 1):
            await chaos.start_worker(region, f"{region}-w{n}", concurrency=4)


async def _tasks_in(load: Load, region: str) -> int:
    return sum(1 for t in (await load.tasks()).values() if t.get("region") == region)


async def test_latency_with_jitter_on_a_region_master_link(
    chaos: ChaosCluster, report: Callable[[Summary], None]
) -> None:
    await _start(chaos)
    async with chaos.client() as c:
        load = Load(c, chaos.workdir / "executions", rate=RATE)
        # Both directions: the region's heartbeats and reports, and the master's batches.
        await chaos.master_link("east").latency(300, jitter_ms=100)
        await load.run(LOAD_S)
        await load.drain(timeout_s=DRAIN_S)
        report(await load.summary("latency 300±100ms on east<->master"))
        await load.assert_all_terminal("succeeded")
        assert await _tasks_in(load, "east") > 0, "nothing went through the slow link"
    assert load.never_ran() == []
    assert load.duplicates() == 0


async def test_latency_on_a_region_worker_link(
    chaos: ChaosCluster, report: Callable[[Summary], None]
) -> None:
    await _start(chaos)
    async with chaos.client() as c:
        load = Load(c, chaos.workdir / "executions", rate=RATE)
        await chaos.workers_link("east").latency(300, jitter_ms=100)
        await load.run(LOAD_S)
        await load.drain(timeout_s=DRAIN_S)
        report(await load.summary("latency 300±100ms on east<->workers"))
        await load.assert_all_terminal("succeeded")
        assert await _tasks_in(load, "east") > 0, "nothing went through the slow link"
    assert load.never_ran() == []
    assert load.duplicates() == 0


async def _reset_bursts(link: Faults, *, after_s: float, bursts: int, hold_s: float,
                        gap_s: float) -> None:
    await asyncio.sleep(after_s)  # the load is flowing through the link by then
    for _ in range(bursts):
        await link.reset_peer()
        await asyncio.sleep(hold_s)  # the fault itself
        await link.remove_toxic("reset_peer")
        await asyncio.sleep(gap_s)  # healthy between bursts


async def test_reset_peer_bursts_on_a_region_worker_link(
    chaos: ChaosCluster, report: Callable[[Summary], None]
) -> None:
    await _start(chaos)
    async with chaos.client() as c:
        # Every task through the faulty link, each running a while so that streams reset
        # with tasks in flight on them.
        load = Load(c, chaos.workdir / "executions", rate=RATE, task_seconds=0.2,
                    task_options={"region": "east"})
        async with asyncio.TaskGroup() as tg:
            tg.create_task(load.run(LOAD_S))
            tg.create_task(_reset_bursts(chaos.workers_link("east"), after_s=1.0, bursts=4,
                                         hold_s=0.3, gap_s=0.7))
        await load.drain(timeout_s=DRAIN_S)
        summary = await load.summary("reset_peer bursts on east<->workers")
        report(summary)
        requeues = {a: chaos.events(a) for a in
                    ("region_link_lost", "worker_evicted", "hand_back", "tasks_reclaimed")}
        print("  " + " ".join(f"{a}={n}" for a, n in requeues.items()))
        await load.assert_all_terminal("succeeded")
    assert requeues["region_link_lost"] > 0, "the bursts never reset a worker stream"
    assert load.never_ran() == []
    if not (requeues["worker_evicted"] or requeues["hand_back"] or requeues["tasks_reclaimed"]):
        # Nothing was requeued, handed back or reclaimed: nothing may have run twice.
        assert load.duplicates() == 0
