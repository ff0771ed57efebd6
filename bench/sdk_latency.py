"""What a caller of the Python SDK waits: submit -> succeeded of one noop task at a time,
on real processes (1 master, 1 region, 1 worker), through ``AsyncClient.submit`` and
``AsyncClient.wait`` (which subscribes to the event stream, reads the task once, and is
told of its end), then the same through the sync ``Client``.

Each figure is the wall time of the caller from sending the task to holding it
succeeded: the REST create, the claim (woken by LISTEN/NOTIFY), the gRPC hops down and
back, the result's transaction, its event, and the final read. Beside it, the part
inside the cluster: the task's created_at -> finished_at, as the cluster recorded them.

Run: python -m bench.sdk_latency [--tasks 200] [--durable]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from bench.postgres import create_database, throwaway_postgres
from strata.client import AsyncClient, Client, TaskDetail, TaskState
from strata.local.cluster import Cluster


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


Timings = list[tuple[float, float]]  # (caller's ms, created -> finished ms)


def _line(name: str, timings: Timings) -> str:
    ms = [caller for caller, _ in timings]
    inside = [cluster for _, cluster in timings]
    return (f"{name} submit -> succeeded, {len(ms)} noop tasks one at a time: "
            f"p50 {_pct(ms, 0.5):.1f} ms  p90 {_pct(ms, 0.9):.1f} ms  "
            f"p99 {_pct(ms, 0.99):.1f} ms  max {max(ms):.1f} ms  "
            f"mean {statistics.mean(ms):.1f} ms; inside the cluster (created -> finished) "
            f"p50 {_pct(inside, 0.5):.1f} ms  p99 {_pct(inside, 0.99):.1f} ms")


def _timing(began: float, task: TaskDetail) -> tuple[float, float]:
    caller = (time.perf_counter() - began) * 1000
    if task.state is not TaskState.SUCCEEDED or task.finished_at is None:
        raise AssertionError(f"task {task.id} ended {task.state}: {task.result}")
    return caller, (task.finished_at - task.created_at).total_seconds() * 1000


async def through_async(api: str, tasks: int) -> Timings:
    out = []
    async with AsyncClient(api) as c:
        for _ in range(tasks):
            began = time.perf_counter()
            task = await c.wait((await c.submit("noop")).id, timeout=60)
            out.append(_timing(began, task))
    return out


def through_sync(api: str, tasks: int) -> Timings:
    out = []
    with Client(api) as c:
        for _ in range(tasks):
            began = time.perf_counter()
            task = c.wait(c.submit("noop").id, timeout=60)
            out.append(_timing(began, task))
    return out


async def main(args: argparse.Namespace) -> None:
    async with throwaway_postgres("strata-bench-", fast=not args.durable) as (home, pg):
        url = await create_database(pg)
        cluster = Cluster(workdir=home, database_url=url,
                          env={"STRATA_LOG_LEVEL": "WARNING", "STRATA_HEARTBEAT_INTERVAL": "1",
                               "STRATA_WORKER_DEAD_AFTER": "3",
                               "STRATA_REGION_DEAD_AFTER": "5"})
        try:
            await cluster.start_master()
            await cluster.start_region("r1")
            await cluster.start_worker("r1", "r1-w1", concurrency=8)
            print(f"cluster: 1 master, 1 region, 1 worker; PostgreSQL "
                  f"{'durable' if args.durable else 'fsync off'}")
            await through_async(cluster.api, 10)  # warm up: connections, the stream
            print(_line("async", await through_async(cluster.api, args.tasks)), flush=True)
            timings = await asyncio.to_thread(through_sync, cluster.api, args.tasks)
            print(_line("sync ", timings), flush=True)
        finally:
            cluster.stop()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--tasks", type=int, default=200, help="tasks, each after the last")
    p.add_argument("--durable", action="store_true", help="fsync on (production settings)")
    asyncio.run(main(p.parse_args()))
