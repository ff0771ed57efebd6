"""Fire lag of schedules on real processes: 1 master, 1 region, 2 workers, and
``--schedules`` schedules firing every second for ``--seconds``; the lag of each fire is
from its fire time to its task's start, read back from the tasks.

Run: python -m bench.schedules [--schedules 5] [--seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics

import asyncpg

from bench.core_path import _pct
from bench.postgres import create_database, throwaway_postgres
from strata.local.cluster import Cluster, wait_until


async def main(args: argparse.Namespace) -> None:
    async with throwaway_postgres("strata-bench-schedules-") as (home, pg):
        url = await create_database(pg)
        cluster = Cluster(workdir=home, database_url=url, env={"STRATA_LOG_LEVEL": "WARNING"})
        try:
            await cluster.start_master()
            await cluster.start_region("r1")
            for w in (1, 2):
                await cluster.start_worker("r1", f"r1-w{w}", concurrency=16)
            async with cluster.client() as c:
                for n in range(args.schedules):
                    await c.request("POST", "/v1/schedules", json={
                        "name": f"every-second-{n}", "every_s": 1,
                        "task": {"kind": "noop"}})
                await asyncio.sleep(args.seconds)  # the figure is of this long a run
                for n in range(args.schedules):
                    await c.request("PATCH", f"/v1/schedules/every-second-{n}",
                                    json={"paused": True})
            db = await asyncpg.connect(url)

            async def settled() -> bool:
                return not await db.fetchval(
                    "SELECT count(*) FROM tasks WHERE state NOT IN ('succeeded', 'failed')")

            await wait_until(settled, timeout_s=60, what="every fire's task run")
            rows = await db.fetch(
                "SELECT extract(epoch FROM t.started_at - f.fire_time) * 1000 AS lag_ms, "
                "f.fire_time, f.recorded_at, t.created_at, t.picked_at, t.started_at "
                "FROM schedule_fires AS f JOIN tasks AS t ON t.id = f.task_id "
                "ORDER BY 1 DESC")
            if args.show:
                for r in rows[:5]:
                    print({k: str(v) for k, v in dict(r).items()})
            outcomes = await db.fetch(
                "SELECT outcome, count(*) AS n FROM schedule_fires GROUP BY outcome")
            await db.close()
            lags = sorted(float(r["lag_ms"]) for r in rows)
            if args.show:
                print("slowest:", [round(v) for v in lags[-10:]])
            print(f"{args.schedules} schedules every 1s for {args.seconds:.0f}s: "
                  f"{len(lags)} fires ("
                  + ", ".join(f"{r['outcome']} {r['n']}" for r in outcomes) + ")")
            print(f"fire lag (fire time -> task started): p50 {_pct(lags, 0.5):.1f} ms  "
                  f"p99 {_pct(lags, 0.99):.1f} ms  max {lags[-1]:.1f} ms  "
                  f"mean {statistics.mean(lags):.1f} ms")
        finally:
            cluster.stop()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--schedules", type=int, default=5)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--show", action="store_true", help="print the slowest fires")
    asyncio.run(main(p.parse_args()))
