"""Where each task's CPU goes, process by process, while a backlog drains.

Real processes (1 master, 2 regions x 2 workers unless the flags say otherwise), a real
PostgreSQL with pg_stat_statements loaded, and py-spy sampling every Strata process
during the drain. It prints, per task:

- each process group's CPU (master, regions, workers), measured by the kernel, split by
  where py-spy found its Python threads: by the library running at the sample (asyncpg,
  grpc, protobuf, the event loop, Strata itself, ...) and by the Strata function nearest
  to it (the code that asked for the work). What py-spy does not see (gRPC's C-core
  threads, the interpreter outside any Python frame) is the row "not in Python".
- PostgreSQL's CPU, split by statement (pg_stat_statements' execution time, which is on
  CPU here: the data is in memory) and the rest: parsing and binding, commits and WAL,
  the protocol, background processes.

Run: python -m bench.profile [--backlog 40000] [--regions 2] [--workers-per-region 2]
     [--rate 200] [--out DIR]

Needs py-spy (``pip install py-spy``) and PostgreSQL binaries that have pg_stat_statements
(the machine's; the pgserver wheel has none: the PostgreSQL split is then left out).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from bench.core_path import _cpu, drain_time, ingest
from bench.postgres import create_database, throwaway_postgres
from strata.local.cluster import Cluster
from strata.master.db import Q

FRAME = re.compile(r"^(?P<func>.*) \((?P<path>.*?)(?::(?P<line>\d+))?\)$")
STDLIB = re.compile(r"/lib/python3\.\d+/(?P<mod>[A-Za-z0-9_]+)")
SITE = re.compile(r"(?:site|dist)-packages/(?P<mod>[A-Za-z0-9_]+)")
# Frames every sample of the main thread has: the event loop's own work (uvloop runs its
# callbacks and I/O in C) has no Strata function nearer than these.
ENTRY_POINTS = ("strata.cli", "strata.__main__")


def stats_bindir() -> Path | None:
    """A PostgreSQL bin folder whose server has pg_stat_statements."""
    for bindir in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (bindir / "postgres").is_file() and (bindir.parent / "lib" /
                                                "pg_stat_statements.so").is_file():
            return bindir
    return None


def library(path: str) -> str:
    """Which code a frame's file is (py-spy names it from its package down): a Strata
    module (strata.master.db), a package, or a module of the standard library."""
    path = path.removesuffix(".py")
    if path.startswith("strata/"):
        return path.replace("/", ".")
    top = path.split("/", 1)[0]
    return {"google": "protobuf", "asyncio": "event loop", "selectors": "event loop",
            "uvloop": "event loop", "<string>": "generated (dataclass __init__ and such)",
            "<frozen runpy>": "interpreter"}.get(top, top)


@dataclass
class Profile:
    """The samples of one process group, by library at the leaf and nearest Strata
    function."""

    samples: int = 0
    by_library: collections.Counter[str] = field(default_factory=collections.Counter)
    by_function: collections.Counter[str] = field(default_factory=collections.Counter)

    def add(self, raw: Path) -> None:
        for line in raw.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            n = int(count)
            frames = [FRAME.match(f) for f in stack.split(";")]
            parsed = [(m["func"], m["path"]) for m in frames if m]
            if not parsed:
                continue
            self.samples += n
            leaf = library(parsed[-1][1])
            self.by_library[leaf] += n
            nearest = next((f"{library(p).removeprefix('strata.')}: {fn}"
                            for fn, p in reversed(parsed) if library(p).startswith("strata.")
                            and not library(p).startswith(ENTRY_POINTS)),
                           f"({leaf}, under no Strata function)")
            self.by_function[nearest] += n


def group(name: str) -> str:
    if name.startswith("master"):
        return "master"
    return "workers" if "-w" in name else "regions"


def spy(pid: int, out: Path, rate: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["py-spy", "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
         "--function", "--nonblocking", "--output", str(out), "--duration", "600"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


async def attached(proc: subprocess.Popen[bytes]) -> None:
    """py-spy says nothing when it has attached (its banner is for a terminal): it has
    if it is still running a second later (a failed attach ends it at once)."""
    await asyncio.sleep(1.0)
    if proc.poll() is not None:
        assert proc.stderr is not None
        raise RuntimeError(f"py-spy did not start: {proc.stderr.read()[-500:]!r}")


def table(title: str, rows: list[tuple[str, float]], total_us: float, top: int) -> None:
    print(f"  {title}")
    shown = sorted(rows, key=lambda r: -r[1])[:top]
    for label, us in shown:
        print(f"    {us:7.1f} µs  {100 * us / total_us:5.1f}%  {label}")
    rest = sum(us for _, us in rows) - sum(us for _, us in shown)
    if rest > 0.05:
        print(f"    {rest:7.1f} µs  {100 * rest / total_us:5.1f}%  (everything else)")


def _words(text: str) -> str:
    return " ".join(text.split())


NAMES = {_words(sql)[:200]: name for name, sql in Q.items()}


def statement_name(query: str) -> str:
    """The name a statement has in sql/queries.sql, or its first words."""
    return NAMES.get(_words(query)[:200], _words(query)[:100])


async def statements(url: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        rows: list[asyncpg.Record] = await conn.fetch(
            "SELECT regexp_replace(query, '\\s+', ' ', 'g') AS query, calls, rows, "
            "total_exec_time + total_plan_time AS ms FROM pg_stat_statements "
            "ORDER BY total_exec_time DESC")
        return rows
    finally:
        await conn.close()


async def reset_statements(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SELECT pg_stat_statements_reset()")
    finally:
        await conn.close()


async def main(args: argparse.Namespace) -> None:
    if shutil.which("py-spy") is None:
        sys.exit("py-spy is needed: pip install py-spy")
    bindir = stats_bindir()
    options = ["shared_preload_libraries=pg_stat_statements", "pg_stat_statements.track=all",
               "pg_stat_statements.max=1000"] if bindir else []
    async with throwaway_postgres("strata-profile-", bindir=bindir, options=options) as (
            home, pg):
        url = await create_database(pg)
        if bindir:
            conn = await asyncpg.connect(url)
            await conn.execute("CREATE EXTENSION pg_stat_statements")
            await conn.close()
        out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="strata-profile-"))
        out.mkdir(parents=True, exist_ok=True)
        cluster = Cluster(workdir=home, database_url=url,
                          env={"STRATA_LOG_LEVEL": "WARNING", "STRATA_HEARTBEAT_INTERVAL": "1",
                               "STRATA_WORKER_DEAD_AFTER": "3", "STRATA_REGION_DEAD_AFTER": "5"})
        spies: dict[str, subprocess.Popen[bytes]] = {}
        try:
            await cluster.start_master()
            for i in range(args.regions):
                region = f"r{i + 1}"
                await cluster.start_region(region)
                for w in range(1, args.workers_per_region + 1):
                    await cluster.start_worker(region, f"{region}-w{w}",
                                               concurrency=args.concurrency)
            print(f"cluster: 1 master, {args.regions} regions x {args.workers_per_region} "
                  f"workers x {args.concurrency} slots; PostgreSQL "
                  f"{'with' if bindir else 'WITHOUT'} pg_stat_statements ({pg.port})")
            # Warm: plans cached, connections open, code paths taken once.
            warm = datetime.now(UTC)
            await ingest(cluster, 10_000, warm)
            await drain_time(url, 10_000, warm)

            due = datetime.now(UTC) + timedelta(seconds=args.lead)
            await ingest(cluster, args.backlog, due)
            for name, proc in cluster.procs.items():
                spies[name] = spy(proc.pid, out / f"{name}.txt", args.rate)
            await asyncio.gather(*(attached(s) for s in spies.values()))
            if bindir:
                await reset_statements(url)
            if datetime.now(UTC) > due:
                print("warning: the backlog came due before sampling began; raise --lead")
            before = _cpu(cluster, pg)
            began = time.perf_counter()
            since_due, _ = await drain_time(url, args.backlog, due)
            after = _cpu(cluster, pg)
            drained_s = time.perf_counter() - began
            for s in spies.values():
                s.send_signal(signal.SIGINT)
            for s in spies.values():
                await asyncio.to_thread(s.wait, 30)
            rows = await statements(url) if bindir else []
        finally:
            for s in spies.values():
                if s.poll() is None:
                    s.kill()
            cluster.stop()

    n = args.backlog
    print(f"drain: {n:,} noop tasks in {since_due:.2f} s after due ({n / since_due:,.0f} "
          f"tasks/s); sampled {drained_s:.1f} s at {args.rate}/s")
    cpu = {k: after[k] - before.get(k, 0.0) for k in after}
    profiles: dict[str, Profile] = collections.defaultdict(Profile)
    group_cpu: dict[str, float] = collections.defaultdict(float)
    for name in cluster.procs:
        raw = out / f"{name}.txt"
        if raw.exists():
            profiles[group(name)].add(raw)
        group_cpu[group(name)] += cpu.get(name, 0.0)
    total = sum(group_cpu.values()) + cpu["postgres"]
    print(f"CPU per task, all processes: {1e6 * total / n:.0f} µs")
    for g in ("master", "regions", "workers"):
        us = 1e6 * group_cpu[g] / n
        prof = profiles[g]
        # py-spy counts a thread waiting in C (gRPC's poller, the loop's epoll inside
        # uvloop) as busy: its samples give the shares, the kernel's CPU the total.
        print(f"\n{g}: {us:.1f} µs per task (kernel CPU), split by {prof.samples:,} "
              f"py-spy samples")
        scale = us / prof.samples if prof.samples else 0.0
        table("by the code running at the sample", [(k, v * scale) for k, v in
                                                   prof.by_library.items()], us, args.top)
        table("by the nearest Strata function", [(k, v * scale) for k, v in
                                                 prof.by_function.items()], us, args.top)
    pg_us = 1e6 * cpu["postgres"] / n
    print(f"\npostgres: {pg_us:.1f} µs per task (kernel, every PostgreSQL process)")
    if rows:
        stmt = [(f"{r['calls'] * 1000 / n:7.1f} calls/1k tasks  {statement_name(r['query'])}",
                 1000 * r["ms"] / n) for r in rows]
        stmt.append(("outside statements: parse/bind, commit and WAL, protocol, background",
                     max(0.0, pg_us - sum(us for _, us in stmt))))
        # Execution time is wall time: it includes waits for locks and for the disk,
        # so the rows may add up to more than the CPU.
        table("by statement (execution and planning time, wall)", stmt, pg_us, args.top)
    print(f"\nraw samples: {out}")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--backlog", type=int, default=40_000)
    p.add_argument("--regions", type=int, default=2)
    p.add_argument("--workers-per-region", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=64, help="slots per worker")
    p.add_argument("--rate", type=int, default=200, help="py-spy samples a second")
    p.add_argument("--lead", type=float, default=8, help="seconds until the backlog is due")
    p.add_argument("--top", type=int, default=12, help="rows per table")
    p.add_argument("--out", help="where the raw samples go (default: the run's folder)")
    asyncio.run(main(p.parse_args()))
