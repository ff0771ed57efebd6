"""Costs that must not grow with the table, on real processes: 1 master, 1 region, 2
workers.

Measured on an empty table (but for one page of pending tasks), then again with:
- 1,000,000 finished tasks and 10,000,000 tasks due in an hour (at priority 1, above
  the due tasks measured; written by one statement each): GET /v1/stats,
  GET /v1/tasks?state=pending&limit=50 and a Prometheus scrape of GET /metrics (median
  of 50 calls each) and due -> started latency of priority-0 tasks;
- 50,000, then 1,000,000 tasks pinned to a region that is down: due -> started latency
  of unrelated, unpinned tasks.

Each due -> started figure comes with its first part, due -> claimed by the master.

Run: python -m bench.table_growth [--finished 1000000] [--future 10000000]
     [--pinned 50000 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from datetime import UTC, datetime, timedelta

import aiohttp
import asyncpg

from bench.core_path import _pct, latency
from bench.postgres import create_database, throwaway_postgres
from strata.local.cluster import Cluster

CALLS = 50
PAGE = 50


async def get_ms(api: str, path: str) -> float:
    """Median milliseconds of CALLS calls of GET path."""
    times = []
    async with aiohttp.ClientSession() as http:
        for _ in range(CALLS):
            began = time.perf_counter()
            async with http.get(api + path) as resp:
                assert resp.status == 200, await resp.text()
                await resp.read()
            times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times)


async def figures(cluster: Cluster, url: str, label: str, args: argparse.Namespace) -> None:
    stats = await get_ms(cluster.api, "/v1/stats")
    pending = await get_ms(cluster.api, f"/v1/tasks?state=pending&limit={PAGE}")
    scrape = await get_ms(cluster.api, "/metrics")
    parts = await latency(cluster, url, args.rate, args.seconds)
    lat, claimed = parts["started"], parts["claimed"]
    print(f"{label}: GET /v1/stats {stats:.1f} ms, GET /v1/tasks?state=pending&limit=50 "
          f"{pending:.1f} ms, GET /metrics {scrape:.1f} ms, "
          f"due->started p50 {_pct(lat, 0.5):.1f} ms "
          f"p99 {_pct(lat, 0.99):.1f} ms (due->claimed p50 {_pct(claimed, 0.5):.1f} ms "
          f"p99 {_pct(claimed, 0.99):.1f} ms)", flush=True)


async def fill(url: str, *statement: object) -> None:
    """Run ``statement`` (SQL and its arguments), if any, then VACUUM ANALYZE, as
    autovacuum would have by the time a table this size is queried."""
    conn = await asyncpg.connect(url)
    try:
        if statement:
            await conn.execute(str(statement[0]), *statement[1:])
        await conn.execute("VACUUM ANALYZE tasks")
    finally:
        await conn.close()


FINISHED = """
INSERT INTO tasks (id, kind, payload, state, priority, run_at, attempt, timeout_s,
                   created_at, picked_at, started_at, finished_at, exit_code, output)
SELECT gen_random_uuid(), 'noop', '{}', 'succeeded', 0, now() - interval '1 day', 1, 3600,
       now() - interval '1 day', now() - interval '1 day', now() - interval '1 day',
       now() - interval '1 day', 0, NULL
FROM generate_series(1, $1)
"""
# Tasks due in an hour, as the API would insert them (not near: in the index of later
# tasks, which the scanner promotes a claim horizon before they are due).
FUTURE = """
INSERT INTO tasks (id, kind, payload, priority, run_at, timeout_s, near)
SELECT gen_random_uuid(), 'noop', '{}', 1, now() + interval '1 hour', 3600, false
FROM generate_series(1, $1)
"""
COUNTED = """
INSERT INTO task_counts (state, slot, n) VALUES ($2, 0, $1)
ON CONFLICT (state, slot) DO UPDATE SET n = task_counts.n + excluded.n
"""
BATCH = 10_000


async def submit(cluster: Cluster, url: str, count: int, **fields: object) -> None:
    """``count`` tasks through the API, as a client would, then VACUUM ANALYZE."""
    async with cluster.client() as c:
        for start in range(0, count, BATCH):
            await c.create_batch([{"kind": "noop", **fields}
                                  for _ in range(min(BATCH, count - start))])
    await fill(url)


async def counted(url: str) -> bool:
    conn = await asyncpg.connect(url)
    try:
        return bool(await conn.fetchval("SELECT to_regclass('task_counts') IS NOT NULL"))
    finally:
        await conn.close()


async def main(args: argparse.Namespace) -> None:
    async with throwaway_postgres("strata-bench-growth-") as (home, pg):
        url = await create_database(pg)
        cluster = Cluster(workdir=home, database_url=url,
                          env={"STRATA_LOG_LEVEL": "WARNING"})
        try:
            await cluster.start_master()
            await cluster.start_region("r1")
            for w in (1, 2):
                await cluster.start_worker("r1", f"r1-w{w}", concurrency=16)
            # One page of pending tasks, so that both listings return a full page: the
            # figure compares what the table's size costs, not an empty answer.
            later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
            await submit(cluster, url, PAGE, priority=1, run_at=later)
            await figures(cluster, url, f"empty table but for one page ({PAGE}) of pending "
                                        "tasks", args)

            began = time.perf_counter()
            await fill(url, FINISHED, args.finished)
            if await counted(url):  # finished tasks are counted as they finish
                await fill(url, COUNTED, args.finished, "succeeded")
            # Millions are written by one statement: through the API they would take
            # minutes, and what is measured is the table they make, not the writing.
            await fill(url, FUTURE, args.future - PAGE)
            await fill(url, COUNTED, args.future - PAGE, "pending")
            print(f"(filled {args.finished:,} finished and {args.future:,} future tasks in "
                  f"{time.perf_counter() - began:.0f}s)", flush=True)
            await figures(cluster, url, f"{args.finished:,} finished + {args.future:,} due "
                                        "in an hour at a higher priority", args)

            await fill(url, "INSERT INTO regions (name, address, state) "
                            "VALUES ('dead', 'nowhere:1', 'down')")
            pinned = 0
            for target in args.pinned:
                await submit(cluster, url, target - pinned, region="dead")
                pinned = target
                await figures(cluster, url, f"... and {pinned:,} due tasks pinned to a "
                                            "region that is down", args)
        finally:
            cluster.stop()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--finished", type=int, default=1_000_000)
    p.add_argument("--future", type=int, default=10_000_000)
    p.add_argument("--pinned", type=int, nargs="+", default=[50_000, 1_000_000],
                   help="backlogs pinned to a region that is down, measured in turn")
    p.add_argument("--rate", type=float, default=50)
    p.add_argument("--seconds", type=float, default=5)
    asyncio.run(main(p.parse_args()))
