"""Retention on real processes: does the disk come back? 1 master, 1 region, 2
workers, with a short retention (default 2 minutes); tasks flow through at full speed
(the backlog kept under a bound) until ``--tasks`` have run, and every ``--every``
seconds the task tables' size on disk is printed, with what the table holds. Flat, once
a retention period's worth of rows is held, is the goal.

Run: python -m bench.retention [--tasks 1000000] [--retention 120] [--every 10]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import asyncpg

from bench.postgres import create_database, throwaway_postgres
from strata.local.cluster import Cluster

BATCH = 5_000
MAX_BACKLOG = 20_000
TABLES = ("tasks", "attempts")


async def sizes(conn: asyncpg.Connection) -> dict[str, int]:
    rows = await conn.fetch(
        "SELECT t, pg_total_relation_size(t::regclass) AS n FROM unnest($1::text[]) AS t",
        list(TABLES))
    return {r["t"]: r["n"] for r in rows}


async def counts(conn: asyncpg.Connection) -> dict[str, int]:
    rows = await conn.fetch("SELECT state, sum(n)::bigint AS n FROM task_counts GROUP BY state")
    return {r["state"]: r["n"] for r in rows}


async def main(args: argparse.Namespace) -> None:
    async with throwaway_postgres("strata-bench-retention-") as (home, pg):
        url = await create_database(pg)
        cluster = Cluster(workdir=home, database_url=url, env={
            "STRATA_LOG_LEVEL": "WARNING", "STRATA_RETENTION": str(args.retention)})
        try:
            await cluster.start_master()
            await cluster.start_region("r1")
            for w in (1, 2):
                await cluster.start_worker("r1", f"r1-w{w}", concurrency=32)
            print(f"retention {args.retention:.0f}s; {args.tasks:,} noop tasks at full speed "
                  f"(backlog under {MAX_BACKLOG:,}); sizes with indexes and TOAST")
            print(f"{'t (s)':>6} {'submitted':>10} {'finished':>10} {'held':>9} "
                  + " ".join(f"{t + ' MB':>12}" for t in TABLES), flush=True)
            db = await asyncpg.connect(url)
            began = time.monotonic()
            submitted, next_print = 0, 0.0
            samples: list[tuple[float, dict[str, int]]] = []
            async with cluster.client() as c:
                while True:
                    now = time.monotonic() - began
                    held = await counts(db)
                    pending = held.get("pending", 0)
                    if submitted < args.tasks and pending < MAX_BACKLOG:
                        n = min(BATCH, args.tasks - submitted)
                        await c.create_batch([{"kind": "noop"}] * n)
                        submitted += n
                    elif submitted >= args.tasks and pending == 0 and now >= next_print:
                        break
                    else:
                        await asyncio.sleep(0.05)
                    if now >= next_print:
                        size = await sizes(db)
                        samples.append((now, size))
                        finished = held.get("succeeded", 0)
                        print(f"{now:6.0f} {submitted:10,} {finished:10,} "
                              f"{sum(held.values()):9,} "
                              + " ".join(f"{size[t] / 2**20:12.1f}" for t in TABLES),
                              flush=True)
                        next_print += args.every
            await db.close()
            steady = [s for t, s in samples if t >= 2 * args.retention]
            if steady:
                for table in TABLES:
                    values = [s[table] / 2**20 for s in steady]
                    print(f"{table}: from {2 * args.retention:.0f}s on (two retention periods) "
                          f"min {min(values):.1f} MB, max {max(values):.1f} MB, last "
                          f"{values[-1]:.1f} MB")
        finally:
            cluster.stop()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--tasks", type=int, default=1_000_000)
    p.add_argument("--retention", type=float, default=120)
    p.add_argument("--every", type=float, default=10)
    asyncio.run(main(p.parse_args()))
