"""Core-path figures on this machine: 1 master, 2 regions x 2 workers (or what the
flags say), real processes.

- ingest: tasks/s accepted by POST /v1/tasks/batch (10,000 per call)
- throughput: noop tasks/s from a backlog that comes due at one instant, to all succeeded
- latency: due -> started p50/p99 at a light steady load (tasks due the moment they are sent)

Run: python -m bench.core_path [--backlog 50000] [--concurrency 32] [--durable] [--tls]
     [--regions 2] [--workers-per-region 2] [--slots 256] [--masters 1]

``--slots``: the total capacity, spread evenly over every worker (instead of
``--concurrency`` per worker), to compare topologies of equal capacity.
``--masters``: masters on the one database; region i talks to master i mod M first and
lists the others after it.

``--tls``: mutual TLS on every gRPC link and HTTPS for the API, to compare with a run
without it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
from datetime import UTC, datetime, timedelta

import asyncpg
import psutil

from bench.postgres import create_database, throwaway_postgres
from strata.common.client import Client
from strata.local.cluster import Cluster, wait_until
from strata.local.postgres import EmbeddedPostgres

BATCH = 10_000


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def ingest(cluster: Cluster, total: int, run_at: datetime) -> float:
    async with cluster.client() as c:
        body = [{"kind": "noop", "run_at": run_at.isoformat()} for _ in range(BATCH)]
        began = time.perf_counter()
        for _ in range(total // BATCH):
            await c.create_batch(body)
        return total / (time.perf_counter() - began)


async def drain_time(db_url: str, total: int, due: datetime) -> tuple[float, float]:
    conn = await asyncpg.connect(db_url)
    try:
        async def done() -> bool:
            # Answered from the partial indexes: polling must not load the database it
            # measures (a count over every row would, every 20 ms).
            return bool(await conn.fetchval(
                "SELECT NOT EXISTS (SELECT 1 FROM tasks WHERE state = 'pending') AND NOT "
                "EXISTS (SELECT 1 FROM tasks WHERE state IN ('dispatched', 'running'))"))

        await wait_until(done, timeout_s=600, what="backlog drained")
        succeeded = await conn.fetchval(
            "SELECT count(*) FROM tasks WHERE state = 'succeeded' AND run_at = $1", due)
        if succeeded != total:
            states = await conn.fetch("SELECT state, run_at = $1 AS backlog, count(*) FROM tasks "
                                      "GROUP BY 1, 2", due)
            raise AssertionError(f"{succeeded} of {total} succeeded: "
                                 + ", ".join(f"{tuple(r)}" for r in states))
        last = await conn.fetchval("SELECT max(finished_at) FROM tasks WHERE run_at = $1", due)
        first = await conn.fetchval("SELECT min(picked_at) FROM tasks WHERE run_at = $1", due)
    finally:
        await conn.close()
    return (last - due).total_seconds(), (last - first).total_seconds()


async def latency(cluster: Cluster, db_url: str, rate: float, seconds: float
                  ) -> dict[str, list[float]]:
    """Per task, in ms: due -> started, and its parts: due -> inserted (the API's own
    time: created_at is the insert's), inserted -> claimed by the master, claimed ->
    started on a worker; and due -> claimed."""
    async with cluster.client() as c:
        ids = []
        began = time.perf_counter()
        n = int(rate * seconds)
        for i in range(n):
            ids.append((await c.create(kind="noop"))["id"])
            pause = began + (i + 1) / rate - time.perf_counter()
            if pause > 0:
                await asyncio.sleep(pause)
        for task_id in ids:
            await c.wait(task_id, timeout_s=60, poll_s=0.05)
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch(
            "SELECT extract(epoch FROM started_at - run_at) * 1000 AS started, "
            "extract(epoch FROM picked_at - run_at) * 1000 AS claimed, "
            "extract(epoch FROM created_at - run_at) * 1000 AS inserted "
            "FROM tasks WHERE id = any($1::uuid[])", ids,
        )
    finally:
        await conn.close()
    return {"started": [float(r["started"]) for r in rows],
            "claimed": [float(r["claimed"]) for r in rows],
            "due->inserted": [float(r["inserted"]) for r in rows],
            "inserted->claimed": [float(r["claimed"] - r["inserted"]) for r in rows],
            "claimed->started": [float(r["started"] - r["claimed"]) for r in rows]}


def _cpu(cluster: Cluster, pg: EmbeddedPostgres) -> dict[str, float]:
    """CPU seconds used so far by each process of the cluster, and PostgreSQL's in all."""
    out: dict[str, float] = {}
    for name, proc in cluster.procs.items():
        t = psutil.Process(proc.pid).cpu_times()
        out[name] = t.user + t.system
    total = 0.0
    for p in psutil.process_iter(["name", "cmdline"]):
        if p.info["name"] == "postgres":
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
    out["postgres"] = total
    return out


WATCHED = [0]


async def watch(cluster: Cluster) -> None:
    """A subscriber to every change, as a dashboard left open would be."""
    async with cluster.client() as c, contextlib.aclosing(c.events()) as stream:
        async for message in stream:
            if message.event == "task":
                WATCHED[0] += 1
            elif message.event == "dropped":
                print(f"the watcher was dropped: {message.data['reason']}")


async def _subscribed(c: Client) -> bool:
    text = await c._session.get(f"{c.base_url}/metrics")
    return "strata_event_subscribers 1.0" in await text.text()


async def main(args: argparse.Namespace) -> None:
    async with throwaway_postgres("strata-bench-", fast=not args.durable) as (home, pg):
        url = await create_database(pg)
        cluster = Cluster(workdir=home, database_url=url, tls=args.tls,
                          env={"STRATA_LOG_LEVEL": "WARNING", "STRATA_HEARTBEAT_INTERVAL": "1",
                               "STRATA_WORKER_DEAD_AFTER": "3", "STRATA_REGION_DEAD_AFTER": "5"})
        workers = args.regions * args.workers_per_region
        concurrency = args.slots // workers if args.slots else args.concurrency
        try:
            masters = ["master", *(f"master-{m}" for m in range(2, args.masters + 1))]
            await cluster.start_master()
            for master in masters[1:]:
                await cluster.start_master(master)
            for i in range(args.regions):
                region = f"r{i + 1}"
                first = i % len(masters)
                if len(masters) == 1:
                    await cluster.start_region(region)
                else:
                    await cluster.start_region(
                        region, masters=masters[first:] + masters[:first])
                for w in range(1, args.workers_per_region + 1):
                    await cluster.start_worker(region, f"{region}-w{w}",
                                               concurrency=concurrency)
            print(f"cluster: {args.masters} master(s), {args.regions} regions x "
                  f"{args.workers_per_region} workers, concurrency {concurrency} per worker "
                  f"({workers * concurrency} slots), "
                  f"PostgreSQL {'durable' if args.durable else 'fsync off'}, "
                  f"mutual TLS {'on' if args.tls else 'off'}")

            watcher = asyncio.create_task(watch(cluster)) if args.watch else None
            if watcher is not None:
                async with cluster.client() as c:
                    await wait_until(lambda: _subscribed(c), what="the watcher subscribed")
            # Latency first, on an idle cluster with an empty table.
            parts = await latency(cluster, url, args.rate, args.seconds)
            lat = parts["started"]
            print(f"latency due->started at {args.rate:.0f} tasks/s for {args.seconds:.0f}s: "
                  f"p50 {_pct(lat, 0.5):.1f} ms  p99 {_pct(lat, 0.99):.1f} ms  "
                  f"max {max(lat):.1f} ms  (n={len(lat)})")
            print("  of which " + ", ".join(
                f"{name} p50 {_pct(v, 0.5):.1f} ms p99 {_pct(v, 0.99):.1f} ms"
                for name, v in parts.items() if "->" in name))

            due = datetime.now(UTC) + timedelta(seconds=args.lead)
            rate = await ingest(cluster, args.backlog, due)
            print(f"ingest /v1/tasks/batch ({BATCH} per call): {rate:,.0f} tasks/s")
            wait = (due - datetime.now(UTC)).total_seconds()
            if wait < 0:
                print("warning: the backlog came due before it was all inserted; raise --lead")
            before = _cpu(cluster, pg)
            since_due, since_first = await drain_time(url, args.backlog, due)
            after = _cpu(cluster, pg)
            print(f"throughput end to end, {args.backlog:,} noop tasks due at once: "
                  f"{args.backlog / since_due:,.0f} tasks/s "
                  f"(drained in {since_due:.2f}s after due; first claim to last result "
                  f"{since_first:.2f}s)")
            spent = {k: after[k] - before.get(k, 0.0) for k in after}
            print("CPU seconds during the drain: " + ", ".join(
                f"{k} {v:.1f}" for k, v in sorted(spent.items(), key=lambda kv: -kv[1])))
            print(f"mean latency {statistics.mean(lat):.1f} ms")
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
                print(f"events seen by the watcher: {WATCHED[0]:,}")
        finally:
            cluster.stop()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--backlog", type=int, default=50_000)
    p.add_argument("--concurrency", type=int, default=32, help="slots per worker")
    p.add_argument("--regions", type=int, default=2)
    p.add_argument("--workers-per-region", type=int, default=2)
    p.add_argument("--slots", type=int, default=0,
                   help="total slots, spread evenly over the workers (0: --concurrency each)")
    p.add_argument("--masters", type=int, default=1)
    p.add_argument("--rate", type=float, default=50)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--lead", type=float, default=20, help="seconds until the backlog is due")
    p.add_argument("--durable", action="store_true", help="fsync on (production settings)")
    p.add_argument("--tls", action="store_true",
                   help="mutual TLS on every link and HTTPS for the API")
    p.add_argument("--watch", action="store_true",
                   help="a client follows every change on /v1/events throughout")
    asyncio.run(main(p.parse_args()))
