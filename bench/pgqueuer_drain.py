"""pgqueuer's drain rate on this machine, to set beside Strata's ("throughput end to end"
in bench.core_path): a backlog of no-op jobs, all of it enqueued before any consumer
starts, drained by separate consumer processes.

- setup: a throwaway PostgreSQL with the settings Strata's benchmarks run on (fsync off),
  unless ``--database-url`` names one (its queue must be empty); pgqueuer's schema
  (``Queries.install``, what ``pgq install`` runs) and the autovacuum settings its
  production checklist asks for (``Queries.optimize_autovacuum``, ``pgq autovac``)
- enqueue: N jobs for the entrypoint "noop", 10,000 per ``Queries.enqueue`` call (lists)
- drain: C consumer processes (this module with ``--consume``). Each connects, registers
  "noop" (a handler that does nothing) and says it is ready; once all are, they are told
  to start together. Timed from that start signal to the moment no job is left queued or
  picked: polled every 20 ms through the queue's partial indexes (a count would load the
  database it measures), so the figure may be up to 20 ms late.
- verified: pgqueuer's log table holds one 'successful' entry for every job enqueued and
  none 'exception', 'canceled', 'failed' or 'deleted'. From the same log, the first pick
  to the last result, as bench.core_path gives it for Strata.

pgqueuer's settings: its defaults, as a production worker runs, but the batch size.

- each consumer is a ``PgQueuer`` (a QueueManager and a SchedulerManager) run by
  ``pgqueuer.run``, the supervisor behind ``pgq run``, on uvloop as ``pgq run`` runs it
  (``--loop asyncio`` for the standard loop, which Strata's processes use)
- over one dedicated asyncpg connection each (``AsyncpgDriver``): pgqueuer's performance
  guide says to give a QueueManager a direct connection, not a pool
- ``batch_size`` 100 (its default is 10): the guide says to raise it for short jobs (under
  a second) when dequeue round trips are many, and every job here is a no-op. The
  completion log is flushed every ``batch_size`` results too (or every 0.1 s). On this
  machine (2 cores) 100 drained about twice as fast as 10; 250 and 500 were no faster
  beyond the noise of a run.
- ``max_concurrent_tasks`` unset (no cap), continuous mode (the consumers are stopped with
  SIGTERM once the queue is empty, as ``pgq run`` is), dequeue timeout, heartbeat timeout
  and log aggregation interval at their defaults (30 s each); durable tables (the default
  durability), on a server with fsync off as Strata's runs are.

Run: python -m bench.pgqueuer_drain [--jobs 20000] [--consumers 2] [--batch-size 100]
     [--database-url URL] [--loop uvloop|asyncio]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from importlib.metadata import version
from typing import Any

import asyncpg
import pgqueuer
import uvloop
from pgqueuer import AsyncpgDriver, PgQueuer, Queries
from pgqueuer.models import Job

from bench.postgres import create_database, throwaway_postgres
from strata.local.cluster import wait_until
from strata.local.launcher import child_env

ENTRYPOINT = "noop"
ENQUEUE_BATCH = 10_000
READY = "ready"
GO = "go"
# How long a consumer may take to start (imports and a connection), and to stop.
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


# -- a consumer process -------------------------------------------------------------------


async def consume(database_url: str, batch_size: int) -> None:
    """One consumer: ready on stdout, then a PgQueuer from the start line on stdin until
    SIGTERM or SIGINT (as ``pgq run``)."""
    conn = await asyncpg.connect(database_url)
    try:
        pgq = PgQueuer(AsyncpgDriver(conn))

        @pgq.entrypoint(ENTRYPOINT)
        async def noop(job: Job) -> None:
            return None

        print(READY, flush=True)
        if (await asyncio.to_thread(sys.stdin.readline)).strip() != GO:
            return  # the benchmark went away before the start

        @asynccontextmanager
        async def factory() -> AsyncIterator[PgQueuer]:
            yield pgq

        await pgqueuer.run(factory, batch_size=batch_size)
    finally:
        await conn.close()


def run_loop(coro: Coroutine[Any, Any, None], loop: str) -> None:
    if loop == "uvloop":
        uvloop.run(coro)
    else:
        asyncio.run(coro)


# -- the benchmark ------------------------------------------------------------------------


async def start_consumers(database_url: str, count: int, batch_size: int,
                          loop: str) -> list[asyncio.subprocess.Process]:
    argv = [sys.executable, "-m", "bench.pgqueuer_drain", "--consume",
            "--database-url", database_url, "--batch-size", str(batch_size), "--loop", loop]
    procs = []
    for _ in range(count):
        procs.append(await asyncio.create_subprocess_exec(
            *argv, env=child_env(), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE))
    return procs


async def wait_ready(proc: asyncio.subprocess.Process) -> None:
    assert proc.stdout is not None
    async with asyncio.timeout(START_TIMEOUT_S):
        line = (await proc.stdout.readline()).decode().strip()
    if line != READY:
        raise RuntimeError(f"consumer {proc.pid} did not start (exit {await proc.wait()})")


async def stop(procs: list[asyncio.subprocess.Process]) -> list[int]:
    """SIGTERM to each (a graceful stop), SIGKILL to any still running after a while."""
    for proc in procs:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
    codes = []
    for proc in procs:
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                codes.append(await proc.wait())
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            codes.append(await proc.wait())
    return codes


async def enqueue(queries: Queries, jobs: int) -> list[int]:
    ids: list[int] = []
    for start in range(0, jobs, ENQUEUE_BATCH):
        n = min(ENQUEUE_BATCH, jobs - start)
        ids += await queries.enqueue([ENTRYPOINT] * n, [None] * n, [0] * n)
    return ids


async def drain(database_url: str, *, jobs: int, consumers: int, batch_size: int,
                loop: str) -> None:
    conn = await asyncpg.connect(database_url)
    procs: list[asyncio.subprocess.Process] = []
    try:
        queries = Queries(AsyncpgDriver(conn))
        if not await queries.schema_is_installed():
            await queries.install()
            await queries.optimize_autovacuum()
        queue = queries.qbe.qualified.queue_table
        log = queries.qbe.qualified.queue_table_log
        if await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {queue})"):
            raise SystemExit(f"{queue} is not empty: the drain must start from an empty queue")

        began = time.perf_counter()
        ids = await enqueue(queries, jobs)
        print(f"enqueue: {jobs / (time.perf_counter() - began):,.0f} jobs/s "
              f"({ENQUEUE_BATCH:,} per Queries.enqueue call)", flush=True)

        procs = await start_consumers(database_url, consumers, batch_size, loop)
        await asyncio.gather(*(wait_ready(p) for p in procs))

        async def drained() -> bool:
            if exited := [p.pid for p in procs if p.returncode is not None]:
                raise RuntimeError(f"consumer(s) {exited} exited during the drain")
            # Answered from the partial indexes on status (a finished job is deleted).
            return bool(await conn.fetchval(
                f"SELECT NOT EXISTS (SELECT 1 FROM {queue} WHERE status = 'queued') AND NOT "
                f"EXISTS (SELECT 1 FROM {queue} WHERE status = 'picked')"))

        began = time.perf_counter()
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(f"{GO}\n".encode())
        await asyncio.gather(*(p.stdin.drain() for p in procs if p.stdin is not None))
        await wait_until(drained, timeout_s=600, what="the queue drained")
        seconds = time.perf_counter() - began

        codes = await stop(procs)
        if any(codes):
            raise RuntimeError(f"consumers exited with {codes} on SIGTERM")
        rows = await conn.fetch(
            f"SELECT status::text AS status, count(*) AS entries, "
            f"count(DISTINCT job_id) AS jobs, min(created) AS first, max(created) AS last "
            f"FROM {log} WHERE job_id = any($1::bigint[]) GROUP BY 1", ids)
        by_status = {r["status"]: r for r in rows}
        done = by_status.get("successful")
        # The log has a row per change of status: queued, picked, then how the job ended.
        bad = {s for s in by_status if s not in ("queued", "picked", "successful")}
        if done is None or done["jobs"] != jobs or done["entries"] != jobs or bad:
            raise AssertionError(f"of {jobs} jobs: " + ", ".join(
                f"{s} {r['jobs']} ({r['entries']} log entries)" for s, r in by_status.items()))
        first_pick = by_status["picked"]["first"]
        print(f"pgqueuer drain: {jobs / seconds:,.0f} jobs/s ({jobs:,} jobs, {consumers} "
              f"consumer processes, {seconds:.2f}s)", flush=True)
        print(f"first pick to last result {(done['last'] - first_pick).total_seconds():.2f}s; "
              f"{log}: {jobs:,} successful, none failed", flush=True)
    finally:
        await stop(procs)
        await conn.close()


async def main(args: argparse.Namespace) -> None:
    print(f"setup: pgqueuer {version('pgqueuer')}, {args.consumers} consumer processes, each a "
          f"PgQueuer under pgqueuer.run (as `pgq run`) on {args.loop}, one asyncpg connection, "
          f"batch_size {args.batch_size}, other settings pgqueuer's defaults; PostgreSQL "
          f"{'at --database-url' if args.database_url else 'throwaway, fsync off'}", flush=True)
    if args.database_url:
        await drain(args.database_url, jobs=args.jobs, consumers=args.consumers,
                    batch_size=args.batch_size, loop=args.loop)
        return
    async with throwaway_postgres("pgq-bench-", fast=True) as (_home, pg):
        await drain(await create_database(pg), jobs=args.jobs, consumers=args.consumers,
                    batch_size=args.batch_size, loop=args.loop)


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m bench.pgqueuer_drain", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=20_000)
    p.add_argument("--consumers", type=int, default=2, help="consumer processes")
    p.add_argument("--batch-size", type=int, default=100,
                   help="jobs per dequeue (pgqueuer's batch_size)")
    p.add_argument("--database-url", default="",
                   help="a PostgreSQL to use instead of a throwaway one (its queue empty)")
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop",
                   help="the consumers' event loop (`pgq run` uses uvloop)")
    p.add_argument("--consume", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.consume:
        run_loop(consume(args.database_url, args.batch_size), args.loop)
    else:
        asyncio.run(main(args))
