"""Region failover with the default timings: from SIGKILL of a region to the moment
every task it was running is running in another region. Target: under
STRATA_REGION_DEAD_AFTER + 1 s. Three trials in one cluster (the regions take turns
being killed); prints each trial and the median.

Run: python -m bench.failover [--tasks 8] [--trials 3]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import time

from bench.postgres import throwaway_postgres
from strata.common.client import Client
from strata.common.settings import DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_REGION_DEAD_AFTER
from strata.local.cluster import Cluster, wait_until

DEFAULTS = {
    "STRATA_HEARTBEAT_INTERVAL": str(DEFAULT_HEARTBEAT_INTERVAL.total_seconds()),
    "STRATA_REGION_DEAD_AFTER": str(DEFAULT_REGION_DEAD_AFTER.total_seconds()),
    "STRATA_WORKER_DEAD_AFTER": "3",
    "STRATA_SCAN_INTERVAL": "0.5",
    "STRATA_LOG_LEVEL": "INFO",
}


async def _running_in(c: Client, ids: list[str], region: str) -> bool:
    tasks = [await c.get(i) for i in ids]
    return all(t["state"] == "running" and t["region"] == region for t in tasks)


async def _region_state(c: Client, name: str) -> str:
    return str(next(r for r in await c.regions() if r["name"] == name)["state"])


async def trial(cluster: Cluster, c: Client, ids: list[str], victim: str, survivor: str
                ) -> tuple[float, float]:
    """Kill the victim; seconds until it is marked down, and until all run in survivor."""
    killed = time.monotonic()
    cluster.kill(victim, signal.SIGKILL)
    down = None
    while True:
        if down is None and await _region_state(c, victim) == "down":
            down = time.monotonic() - killed
        if await _running_in(c, ids, survivor):
            moved = time.monotonic() - killed
            return (down if down is not None else moved), moved
        await asyncio.sleep(0.02)


async def main(args: argparse.Namespace) -> None:
    async with throwaway_postgres("strata-failover-") as (home, pg):
        await run(Cluster(workdir=home, database_url=pg.url, env=DEFAULTS), args)


async def run(cluster: Cluster, args: argparse.Namespace) -> None:
    try:
        await cluster.start_master()
        await cluster.start_region("a")
        for w in (1, 2):
            await cluster.start_worker("a", f"a-w{w}", concurrency=args.tasks)
        async with cluster.client() as c:
            ids = await c.create_batch(
                [{"kind": "sleep", "seconds": 3600} for _ in range(args.tasks)])
            await wait_until(lambda: _running_in(c, ids, "a"), timeout_s=30, what="running")
            await cluster.start_region("b")
            for w in (1, 2):
                await cluster.start_worker("b", f"b-w{w}", concurrency=args.tasks)
            dead_after = DEFAULT_REGION_DEAD_AFTER.total_seconds()
            print(f"{args.tasks} running tasks; heartbeat "
                  f"{DEFAULT_HEARTBEAT_INTERVAL.total_seconds():g}s, region dead after "
                  f"{dead_after:g}s; target: moved in under {dead_after + 1:g}s")
            moved_all = []
            victim, survivor = "a", "b"
            for n in range(1, args.trials + 1):
                down, moved = await trial(cluster, c, ids, victim, survivor)
                moved_all.append(moved)
                print(f"trial {n}: killed {victim}: marked down after {down:.2f}s, "
                      f"all {args.tasks} running in {survivor} after {moved:.2f}s")
                # Bring the victim back (its workers reconnect) for the next trial.
                await cluster.start_region(victim)
                await wait_until(
                    lambda v=victim: _workers_back(c, v), timeout_s=30, what="workers back")
                victim, survivor = survivor, victim
            median = statistics.median(moved_all)
            verdict = "meets" if median < dead_after + 1 else "MISSES"
            print(f"median SIGKILL -> all running elsewhere: {median:.2f}s ({verdict} the "
                  f"target of {dead_after + 1:g}s)")
    finally:
        cluster.stop()


async def _workers_back(c: Client, region: str) -> bool:
    return len([w for w in await c.workers() if w["region"] == region and
                w["state"] == "up"]) == 2


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--tasks", type=int, default=8)
    p.add_argument("--trials", type=int, default=3)
    asyncio.run(main(p.parse_args()))
