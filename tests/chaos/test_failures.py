"""Links cut, black-holed and processes SIGKILLed under a steady load: every accepted
task ends in its expected state, none is stuck, no stale attempt's result is written,
and duplicate executions are counted (and must be zero where nothing was reclaimed)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from typing import Any

import pytest

from strata.local.cluster import wait_until
from tests.chaos.harness import ChaosCluster
from tests.chaos.load import Load, Summary

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(240)]

RATE = 30.0
LOAD_S = 6.0
DRAIN_S = 90.0


async def _start(chaos: ChaosCluster) -> None:
    await chaos.start_master()
    for region in ("east", "west"):
        await chaos.start_region(region)
        for n in (1, 2):
            await chaos.start_worker(region, f"{region}-w{n}", concurrency=4)


def _no_stale_result_written(tasks: dict[str, dict[str, Any]]) -> None:
    """A result is written only by the attempt the task ends with, so the worker that
    wrote it belongs to the region that attempt was sent to."""
    wrong = [t["id"] for t in tasks.values()
             if t["worker_id"] and not t["worker_id"].startswith(f"{t['region']}-w")]
    assert wrong == [], f"results written by another region's worker: {wrong[:5]}"


async def _finish(load: Load, name: str, report: Callable[[Summary], None]) -> Summary:
    await load.drain(timeout_s=DRAIN_S)
    summary = await load.summary(name)
    report(summary)
    await load.assert_all_terminal("succeeded")
    _no_stale_result_written(await load.tasks())
    assert load.never_ran() == []
    return summary


async def _after(seconds: float, fault: Callable[[], Any]) -> None:
    await asyncio.sleep(seconds)  # the load is flowing by then: the fault lands mid-run
    result = fault()
    if asyncio.iscoroutine(result):
        await result


async def test_region_link_black_holed_then_healed(
    chaos: ChaosCluster, report: Callable[[Summary], None]
) -> None:
    await _start(chaos)
    async with chaos.client() as c:
        load = Load(c, chaos.workdir / "executions", rate=RATE, task_seconds=0.2)
        link = chaos.master_link("east")

        async def black_hole_for_ten() -> None:
            await link.black_hole()
            await asyncio.sleep(10.0)  # the fault itself
            await link.clear()

        async with asyncio.TaskGroup() as tg:
            tg.create_task(load.run(LOAD_S * 2))
            tg.create_task(_after(1.0, black_hole_for_ten))
        await wait_until(lambda: _region_up(c, "east"), timeout_s=30, what="east back up")
        await _finish(load, "east<->master black-holed 10s then healed", report)
        regions = {r["name"]: r for r in await c.regions()}
    assert chaos.events("region_down", process="master") >= 1
    assert chaos.events("tasks_reclaimed", process="master") >= 1
    assert chaos.events("breaker_open", process="east") >= 1, "east's breaker never opened"
    assert regions["east"]["breaker"]["state"] in ("closed", "half_open")


async def _region_up(c: Any, name: str) -> bool:
    return any(r["name"] == name and r["state"] == "up" for r in await c.regions())


async def test_postgres_link_cut_for_five_seconds(
    chaos: ChaosCluster, report: Callable[[Summary], None]
) -> None:
    await _start(chaos)
    async with chaos.client() as c:
        load = Load(c, chaos.workdir / "executions", rate=RATE, task_seconds=0.1)

        async def cut_for_five() -> None:
            await chaos.db.cut()
            await asyncio.sleep(5.0)  # the outage itself
            await chaos.db.restore()

        async with asyncio.TaskGroup() as tg:
            tg.create_task(load.run(LOAD_S + 4))
            tg.create_task(_after(1.0, cut_for_five))
        summary = await _finish(load, "master<->postgres cut 5s", report)
    assert summary.rejected > 0, "the cut never turned a submission away"
    # No region was declared dead for heartbeats the master could not record.
    assert chaos.events("tasks_reclaimed", process="master") == 0
    assert chaos.events("scanner_db_lost", process="master") >= 1
    assert load.duplicates() == 0


@pytest.mark.parametrize(("victim", "process", "requeued"), [
    ("east", "master", "tasks_reclaimed"),  # the master reclaims a dead region's work
    ("east-w1", "east", "worker_evicted"),  # the region requeues a dead worker's work
])
async def test_process_sigkilled_mid_run(
    chaos: ChaosCluster, report: Callable[[Summary], None],
    victim: str, process: str, requeued: str,
) -> None:
    await _start(chaos)
    async with chaos.client() as c:
        load = Load(c, chaos.workdir / "executions", rate=RATE, task_seconds=0.3)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(load.run(LOAD_S))
            tg.create_task(_after(2.0, lambda: chaos.kill(victim, signal.SIGKILL)))
        await _finish(load, f"{victim} SIGKILLed mid-run", report)
    assert chaos.events(requeued, process=process) >= 1


async def test_master_sigkilled_mid_run_and_restarted(
    chaos: ChaosCluster, report: Callable[[Summary], None]
) -> None:
    await _start(chaos)
    async with chaos.client() as c:
        load = Load(c, chaos.workdir / "executions", rate=RATE, task_seconds=0.1)

        async def kill_and_restart() -> None:
            chaos.kill("master", signal.SIGKILL)
            await chaos.start_master()

        async with asyncio.TaskGroup() as tg:
            tg.create_task(load.run(LOAD_S))
            tg.create_task(_after(2.0, kill_and_restart))
        await _finish(load, "master SIGKILLed mid-run and restarted", report)
    # Regions kept their work and delivered their buffered results: nothing reclaimed.
    assert chaos.events("tasks_reclaimed", process="master") == 0
    assert load.duplicates() == 0
