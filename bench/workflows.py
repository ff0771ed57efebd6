"""Workflow and fairness figures on this machine, side by side in one run: 1 master, 2
regions x 2 workers, real processes.

- plain: a backlog of noop tasks due at once, first claim to last result (the
  throughput benchmark's figure, on the same cluster, for the ratios)
- chain: one DAG of N tasks, each depending on the one before (latency-bound: one hop
  at a time through every tier)
- fan: one root, N - 2 children of it, one task depending on them all
- keyed: the plain backlog, spread over 16 concurrency keys (no limits): what claiming
  key by key costs end to end
- claims: the claim statement alone, on the database, from a backlog of 50,000: unkeyed
  batches, then the same backlog over 16 keys (round-robin), tasks claimed per second

Rounds alternate the shapes; medians of the rounds are printed with their ratios to plain.

Run: python -m bench.workflows [--tasks 10000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from bench.postgres import throwaway_postgres
from strata.common.models import parse_batch
from strata.local.cluster import Cluster, wait_until
from strata.master.db import Database

KEYS = 16


def plain(n: int, run_at: str) -> list[dict[str, Any]]:
    return [{"kind": "noop", "run_at": run_at} for _ in range(n)]


def keyed(n: int, run_at: str) -> list[dict[str, Any]]:
    return [{"kind": "noop", "run_at": run_at, "concurrency_key": f"k{i % KEYS}"}
            for i in range(n)]


# A DAG's tasks are due when made (no run_at: its 10,000 items fit a 1 MiB body); its
# figure runs from its first claim, like the others'.
def chain(n: int, run_at: str) -> list[dict[str, Any]]:
    return [{"kind": "noop", "key": f"t{i}", **({"depends_on": [f"t{i - 1}"]} if i else {})}
            for i in range(n)]


def fan(n: int, run_at: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"kind": "noop", "key": "t0"}]
    out += [{"kind": "noop", "key": f"t{i}", "depends_on": ["t0"]} for i in range(1, n - 1)]
    out.append({"kind": "noop", "key": f"t{n - 1}",
                "depends_on": [f"t{i}" for i in range(1, n - 1)]})
    return out


SHAPES: dict[str, Callable[[int, str], list[dict[str, Any]]]] = {
    "plain": plain, "chain": chain, "fan": fan, "keyed": keyed}


async def run_shape(cluster: Cluster, url: str, shape: str, n: int, lead_s: float) -> float:
    """Tasks per second from the first claim to the last result."""
    due = datetime.now(UTC) + timedelta(seconds=lead_s)
    async with cluster.client() as c:
        ids = await c.create_batch(SHAPES[shape](n, due.isoformat()))
    conn = await asyncpg.connect(url)
    try:
        async def done() -> bool:
            return bool(await conn.fetchval(
                "SELECT NOT EXISTS (SELECT 1 FROM tasks WHERE state IN "
                "('waiting', 'pending', 'dispatched', 'running'))"))

        await wait_until(done, timeout_s=900, what=f"the {shape} tasks done")
        row = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE state = 'succeeded') AS ok, min(picked_at) AS first,"
            " max(finished_at) AS last FROM tasks WHERE id = ANY($1::uuid[])", ids)
    finally:
        await conn.close()
    if row["ok"] != n:
        raise AssertionError(f"{shape}: {row['ok']} of {n} succeeded")
    return float(n / (row["last"] - row["first"]).total_seconds())


async def claims(url: str, n: int, batch: int) -> tuple[float, float]:
    """Tasks claimed per second by the claim statement alone: unkeyed, then keyed."""
    rates = []
    for fair in (False, True):
        db = await Database.connect(url)
        try:
            due = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
            make = keyed if fair else plain
            for start in range(0, n, 10_000):
                await db.insert_tasks(parse_batch({"tasks": make(min(10_000, n - start), due)}))
            began = time.perf_counter()
            got = 0
            while got < n:
                taken = await db.claim("bench", batch, fair=fair)
                assert taken, f"claimed {got} of {n}"
                got += len(taken)
            rates.append(n / (time.perf_counter() - began))
        finally:
            await db.close()
    return rates[0], rates[1]


async def main(args: argparse.Namespace) -> None:
    async with throwaway_postgres("strata-bench-", fast=True) as (home, pg):
        conn = await asyncpg.connect(pg.url)
        for name in ("bench", "claims"):
            await conn.execute(f"CREATE DATABASE {name}")
        await conn.close()
        db = await Database.connect(pg.url_for("claims"))
        await db.migrate()
        await db.close()
        url = pg.url_for("bench")
        cluster = Cluster(workdir=home, database_url=url,
                          env={"STRATA_LOG_LEVEL": "WARNING", "STRATA_HEARTBEAT_INTERVAL": "1",
                               "STRATA_WORKER_DEAD_AFTER": "3", "STRATA_REGION_DEAD_AFTER": "5"})
        figures: dict[str, list[float]] = {s: [] for s in args.shapes}
        claim_figures: dict[str, list[float]] = {"unkeyed": [], "keyed": []}
        try:
            await cluster.start_master()
            for region in ("r1", "r2"):
                await cluster.start_region(region)
                for w in (1, 2):
                    await cluster.start_worker(region, f"{region}-w{w}", concurrency=32)
            print(f"cluster: 1 master, 2 regions x 2 workers, concurrency 32 per worker; "
                  f"{args.tasks:,} tasks per shape, {args.rounds} rounds")
            order = args.shapes
            for r in range(args.rounds):
                # A different order each round: no shape always runs on a warmer table.
                for shape in order[r % len(order):] + order[:r % len(order)]:
                    rate = await run_shape(cluster, url, shape, args.tasks, args.lead)
                    figures[shape].append(rate)
                    print(f"  round {r + 1} {shape}: {rate:,.0f} tasks/s", flush=True)
                unkeyed, keyed_rate = await claims(pg.url_for("claims"), args.claims,
                                                   args.claim_batch)
                claim_figures["unkeyed"].append(unkeyed)
                claim_figures["keyed"].append(keyed_rate)
                print(f"  round {r + 1} claims: unkeyed {unkeyed:,.0f}/s, keyed "
                      f"{keyed_rate:,.0f}/s", flush=True)
        finally:
            cluster.stop()
    base = statistics.median(figures["plain"]) if figures.get("plain") else float("nan")
    print("medians, end to end (first claim to last result):")
    for shape, values in figures.items():
        median = statistics.median(values)
        print(f"  {shape:6s} {median:8,.0f} tasks/s   ratio to plain {median / base:.2f}")
    unkeyed_m = statistics.median(claim_figures["unkeyed"])
    keyed_m = statistics.median(claim_figures["keyed"])
    print(f"claims alone ({args.claims:,} due, batches of {args.claim_batch}): unkeyed "
          f"{unkeyed_m:,.0f}/s, over {KEYS} keys {keyed_m:,.0f}/s, ratio {keyed_m / unkeyed_m:.2f}")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--tasks", type=int, default=10_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--lead", type=float, default=3.0,
                   help="seconds until each shape's tasks are due (all inserted by then)")
    p.add_argument("--claims", type=int, default=50_000)
    p.add_argument("--claim-batch", type=int, default=1000)
    p.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES),
                   help="the shapes to run, in this order in the first round")
    asyncio.run(main(p.parse_args()))
