"""What a region costs the master, as the number of regions grows.

A real master (its own process, on a throwaway PostgreSQL) against N simulated regions,
all hosted by this one process. Each simulated region speaks the real protocols: it
registers, heartbeats every interval with its M simulated workers listed, serves
``Delegate`` on a gRPC server of its own, and reports every task it is given as started
and succeeded at once (its workers finish instantly), in report batches as a region does.

Printed, for each N: the master's CPU per region heartbeat with nothing to run (idle), and
per dispatched task while a backlog drains (load; the idle rate over the same time taken
off), with the drain's throughput. The figures that matter are the ratios from the
smallest N to the largest: flat is the target.

Run: python -m bench.many_regions [--regions 10,100,1000] [--workers-per-region 100]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

# This process forks PostgreSQL and the master while its gRPC threads run: gRPC's fork
# handlers would only warn that they are skipped.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
import grpc
import psutil

from bench.postgres import create_database, throwaway_postgres
from strata.common import channels
from strata.local.cluster import Cluster, wait_until
from strata.proto import strata_pb2 as pb
from strata.proto import strata_pb2_grpc as rpc

BATCH = 10_000
REPORT_BATCH = 1000


@dataclass
class Counters:
    heartbeats: int = 0
    delegated: int = 0
    reported: int = 0


@dataclass
class SimRegion:
    """A region whose workers finish every task the moment it arrives."""

    name: str
    workers: int
    slots: int
    interval_s: float
    master: rpc.MasterStub
    counters: Counters
    address: str = ""
    held: dict[tuple[str, int], None] = field(default_factory=dict)
    events: list[pb.TaskEvent] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    _turn: int = 0

    @property
    def capacity(self) -> int:
        return self.workers * self.slots

    async def Delegate(self, request: pb.DelegateRequest, context: Any) -> pb.DelegateReply:
        now = time.time()
        accepted = []
        for spec in request.tasks:
            self.held[(spec.id, spec.attempt)] = None
            self._turn = (self._turn + 1) % self.workers
            worker = f"{self.name}-w{self._turn}"
            self.events.append(pb.TaskEvent(
                task_id=spec.id, attempt=spec.attempt, type=pb.EVENT_TYPE_STARTED,
                worker_id=worker, started_at=now))
            self.events.append(pb.TaskEvent(
                task_id=spec.id, attempt=spec.attempt, type=pb.EVENT_TYPE_SUCCEEDED,
                worker_id=worker, started_at=now, finished_at=now, has_exit_code=True))
            accepted.append(pb.TaskRef(task_id=spec.id, attempt=spec.attempt))
        self.counters.delegated += len(accepted)
        self.wake.set()
        return pb.DelegateReply(accepted=accepted)

    async def Cancel(self, request: pb.CancelRequest, context: Any) -> pb.CancelReply:
        return pb.CancelReply(cancelled=0)

    async def Connect(self, requests: Any, context: Any) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "simulated workers only")

    async def report_loop(self) -> None:
        """One report in flight at a time, as many events as are waiting (up to a batch)."""
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.events:
                batch, self.events = self.events[:REPORT_BATCH], self.events[REPORT_BATCH:]
                await self.master.Report(pb.ReportRequest(region=self.name, events=batch),
                                         timeout=30)
                for e in batch:
                    if e.type == pb.EVENT_TYPE_SUCCEEDED:
                        self.held.pop((e.task_id, e.attempt), None)
                self.counters.reported += sum(
                    1 for e in batch if e.type == pb.EVENT_TYPE_SUCCEEDED)

    async def heartbeat_loop(self) -> None:
        workers = [pb.WorkerInfo(id=f"{self.name}-w{i}", capacity=self.slots, running=0,
                                 last_heartbeat=time.time())
                   for i in range(self.workers)]
        while True:
            held = [pb.TaskRef(task_id=i, attempt=a) for i, a in self.held]
            await self.master.Heartbeat(pb.RegionHeartbeat(
                region=self.name, address=self.address, capacity=self.capacity,
                running=min(len(held), self.capacity),
                queued=max(0, len(held) - self.capacity),
                max_outstanding=2 * self.capacity, workers=workers, held=held,
                built_at=time.time()), timeout=30)
            self.counters.heartbeats += 1
            await asyncio.sleep(self.interval_s)


async def start_regions(n: int, workers: int, master_address: str, interval_s: float,
                        counters: Counters) -> tuple[list[SimRegion], list[Any]]:
    master_channel = channels.channel(master_address)
    master = rpc.MasterStub(master_channel)
    regions: list[SimRegion] = []
    servers: list[Any] = [master_channel]
    for i in range(n):
        region = SimRegion(name=f"sim{i:04d}", workers=workers, slots=1,
                           interval_s=interval_s, master=master, counters=counters)
        server = channels.server()
        rpc.add_RegionServicer_to_server(region, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        region.address = f"127.0.0.1:{port}"
        regions.append(region)
        servers.append(server)
    await asyncio.gather(*(master.Register(pb.RegisterRequest(region=r.name, address=r.address),
                                           timeout=30) for r in regions))
    return regions, servers


def master_cpu(cluster: Cluster) -> float:
    t = psutil.Process(cluster.procs["master"].pid).cpu_times()
    return float(t.user + t.system)


async def one(n: int, workers: int, backlog: int, idle_s: float, interval_s: float
              ) -> dict[str, float]:
    async with throwaway_postgres("strata-many-") as (home, pg):
        url = await create_database(pg)
        cluster = Cluster(workdir=home, database_url=url, env={
            "STRATA_LOG_LEVEL": "WARNING", "STRATA_HEARTBEAT_INTERVAL": str(interval_s),
            "STRATA_REGION_DEAD_AFTER": str(max(5.0, 5 * interval_s))})
        loops: list[asyncio.Task[None]] = []
        servers: list[Any] = []
        try:
            await cluster.start_master()
            counters = Counters()
            regions, servers = await start_regions(
                n, workers, f"127.0.0.1:{cluster.grpc_port}", interval_s, counters)
            loops = [asyncio.create_task(r.heartbeat_loop()) for r in regions]
            loops += [asyncio.create_task(r.report_loop()) for r in regions]
            async with cluster.client() as c:
                async def all_up() -> bool:
                    up = [r for r in await c.regions() if r["state"] == "up"]
                    return len(up) >= n
                await wait_until(all_up, timeout_s=60, what=f"{n} regions up")
                await asyncio.sleep(2 * interval_s)  # every region past its first beats

                # Idle: heartbeats alone (and the scans an idle master makes).
                beats, cpu, began = counters.heartbeats, master_cpu(cluster), time.monotonic()
                await asyncio.sleep(idle_s)
                idle_cpu = master_cpu(cluster) - cpu
                idle_wall = time.monotonic() - began
                idle_beats = counters.heartbeats - beats

                # Load: a backlog due at one instant, drained.
                due = datetime.now(UTC) + timedelta(seconds=3 + backlog / 40_000)
                for start in range(0, backlog, BATCH):  # the last batch may be smaller
                    await c.create_batch([{"kind": "noop", "run_at": due.isoformat()}
                                          for _ in range(min(BATCH, backlog - start))])
                await asyncio.sleep(max(0.0, (due - datetime.now(UTC)).total_seconds()))
                cpu, began, reported = master_cpu(cluster), time.monotonic(), counters.reported
                await wait_until(lambda: _done(counters, reported, backlog), timeout_s=900,
                                 what="the backlog drained")
                load_wall = time.monotonic() - began
                load_cpu = master_cpu(cluster) - cpu
        finally:
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            for s in servers:
                with contextlib.suppress(Exception):
                    await (s.close() if isinstance(s, grpc.aio.Channel) else s.stop(0))
            cluster.stop()
    idle_rate = idle_cpu / idle_wall
    return {
        "heartbeat_us": 1e6 * idle_cpu / max(idle_beats, 1),
        "beats_per_s": idle_beats / idle_wall,
        "idle_cpu_share": idle_rate,
        "task_us": 1e6 * max(load_cpu - idle_rate * load_wall, 0.0) / backlog,
        "task_us_gross": 1e6 * load_cpu / backlog,
        "tasks_per_s": backlog / load_wall,
    }


async def _done(counters: Counters, before: int, backlog: int) -> bool:
    return counters.reported - before >= backlog


async def main(args: argparse.Namespace) -> None:
    sizes = [int(x) for x in args.regions.split(",")]
    results: dict[int, dict[str, float]] = {}
    print(f"1 master against N simulated regions x {args.workers_per_region} workers "
          f"(1 slot each), heartbeat every {args.interval}s, backlog {args.backlog:,} "
          "noop tasks")
    for n in sizes:
        r = results[n] = await one(n, args.workers_per_region, args.backlog, args.idle,
                                   args.interval)
        print(f"N={n:>5}: idle {r['heartbeat_us']:,.0f} us master CPU per region heartbeat "
              f"({r['beats_per_s']:,.0f} of {n / args.interval:,.0f} beats/s answered, "
              f"master {100 * r['idle_cpu_share']:.0f}% of a core); load "
              f"{r['task_us_gross']:,.0f} us per dispatched task ({r['task_us']:,.0f} net "
              f"of the idle rate), {r['tasks_per_s']:,.0f} tasks/s", flush=True)
    if len(sizes) > 1:
        lo, hi = results[sizes[0]], results[sizes[-1]]
        print(f"from N={sizes[0]} to N={sizes[-1]}: per heartbeat "
              f"x{hi['heartbeat_us'] / lo['heartbeat_us']:.2f}, per task "
              f"x{hi['task_us_gross'] / lo['task_us_gross']:.2f}, throughput "
              f"x{hi['tasks_per_s'] / lo['tasks_per_s']:.2f} (target: within 1.5x)")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--regions", default="10,100,1000", help="comma-separated region counts")
    p.add_argument("--workers-per-region", type=int, default=100)
    p.add_argument("--backlog", type=int, default=20_000)
    p.add_argument("--idle", type=float, default=5.0, help="seconds measured idle")
    p.add_argument("--interval", type=float, default=1.0, help="heartbeat interval, seconds")
    asyncio.run(main(p.parse_args()))
