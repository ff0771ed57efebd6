"""Strata's drain rate beside pgqueuer's, in alternating runs on this machine.

Each round runs Strata, then pgqueuer, on a backlog of the same size, each run in a
process of its own and one at a time (two at once would measure each other); alternating
them spreads a drift of the machine over both alike.

- Strata: ``python -m bench.core_path --backlog N --seconds 3 --lead 15``, its default
  topology (1 master, 2 regions x 2 workers, real processes, PostgreSQL fsync off). Its
  figure is "throughput end to end": N noop tasks due at one instant, N / (due -> the
  last result).
- pgqueuer: ``python -m bench.pgqueuer_drain --jobs N --consumers 2``: N no-op jobs
  enqueued, then 2 consumer processes (PostgreSQL fsync off). Its figure is "pgqueuer
  drain": N / (start signal -> the queue empty).

Printed: every run's figure as it comes, then the median of each and their ratio.
bench.core_path submits its backlog in whole batches of 10,000, so N is rounded up to a
multiple of 10,000, for both.

Run: python -m bench.versus_pgqueuer [--jobs 20000] [--rounds 3] [--consumers 2]
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import subprocess
import sys
from collections.abc import Iterable

from strata.local import launcher

# bench.core_path's BATCH: it submits its backlog in calls of this many tasks, whole ones.
CORE_PATH_BATCH = 10_000
STRATA_FIGURE = "throughput end to end"
PGQUEUER_FIGURE = "pgqueuer drain"
# The lines that say how each was set up, passed on from the first round.
SETUP = {"strata": ("cluster:",), "pgqueuer": ("setup:", "enqueue:")}
# A stopped run gets this long to stop its cluster and its PostgreSQL.
INTERRUPT_GRACE_S = 60.0


def backlog_for(jobs: int) -> int:
    """``jobs`` rounded up to whole bench.core_path batches (at least one)."""
    return max(1, math.ceil(jobs / CORE_PATH_BATCH)) * CORE_PATH_BATCH


def parse_rate(lines: Iterable[str], prefix: str, unit: str) -> tuple[float, str]:
    """The rate in ``unit`` (e.g. "12,345 tasks/s") on the first line starting with
    ``prefix``, and that line."""
    pattern = re.compile(rf"(\d[\d,]*(?:\.\d+)?) {re.escape(unit)}(?!\w)")
    for line in lines:
        if line.startswith(prefix) and (found := pattern.search(line)):
            return float(found.group(1).replace(",", "")), line
    raise ValueError(f"no line starting with {prefix!r} gives a rate in {unit}")


def summary(name: str, unit: str, rates: list[float]) -> str:
    runs = " / ".join(f"{r:,.0f}" for r in rates)
    return f"{name} drain median: {statistics.median(rates):,.0f} {unit} (runs: {runs})"


def run(argv: list[str]) -> list[str]:
    """Its output lines; SystemExit with its last lines if it fails."""
    with subprocess.Popen(argv, env=launcher.child_env(), stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace") as proc:
        assert proc.stdout is not None
        try:
            lines = [raw.rstrip("\n") for raw in proc.stdout]
        except KeyboardInterrupt:
            # The same Ctrl-C reached it (one process group): it stops what it started.
            proc.wait(timeout=INTERRUPT_GRACE_S)
            raise
        code = proc.wait()
    if code != 0:
        tail = "\n".join(f"  {line}" for line in lines[-20:])
        raise SystemExit(f"{' '.join(argv[1:])} failed (exit {code}):\n{tail}")
    return lines


def main(args: argparse.Namespace) -> None:
    backlog = backlog_for(args.jobs)
    systems = {
        "strata": ([sys.executable, "-m", "bench.core_path", "--backlog", str(backlog),
                    "--seconds", "3", "--lead", str(args.lead)], STRATA_FIGURE, "tasks/s"),
        "pgqueuer": ([sys.executable, "-m", "bench.pgqueuer_drain", "--jobs", str(backlog),
                      "--consumers", str(args.consumers)], PGQUEUER_FIGURE, "jobs/s"),
    }
    width = max(map(len, systems))
    rounds = f"{args.rounds} round{'s' if args.rounds != 1 else ''}"
    print(f"drain of {backlog:,} no-op jobs, {rounds} of strata then pgqueuer, "
          f"one run at a time")
    if backlog != args.jobs:
        print(f"note: --jobs {args.jobs:,} rounded up to {backlog:,} for both: bench.core_path "
              f"submits its backlog in whole batches of {CORE_PATH_BATCH:,}")
    print("strata: bench.core_path's default topology: 1 master, 2 regions x 2 workers; "
          "figure: backlog / (due -> last result)")
    print(f"pgqueuer: bench.pgqueuer_drain, {args.consumers} consumer processes; "
          "figure: jobs / (start signal -> queue empty)", flush=True)
    rates: dict[str, list[float]] = {name: [] for name in systems}
    for i in range(1, args.rounds + 1):
        for name, (argv, figure, unit) in systems.items():
            lines = run(argv)
            rate, line = parse_rate(lines, figure, unit)
            rates[name].append(rate)
            prefix = f"round {i}/{args.rounds} {name:<{width}} | "
            if i == 1:
                for setup in (x for x in lines if x.startswith(SETUP[name])):
                    print(prefix + setup)
            print(prefix + line, flush=True)
    strata, pgq = (statistics.median(rates[name]) for name in ("strata", "pgqueuer"))
    print(summary("strata", "tasks/s", rates["strata"]))
    print(summary("pgqueuer", "jobs/s", rates["pgqueuer"]))
    print(f"ratio strata/pgqueuer: {strata / pgq:.2f}", flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m bench.versus_pgqueuer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=20_000,
                   help=f"the backlog of each run (rounded up to a multiple of "
                        f"{CORE_PATH_BATCH:,})")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--consumers", type=int, default=2, help="pgqueuer's consumer processes")
    p.add_argument("--lead", type=float, default=15,
                   help="seconds from Strata's ingest to its backlog coming due")
    args = p.parse_args()
    if args.jobs < 1 or args.rounds < 1 or args.consumers < 1:
        p.error("--jobs, --rounds and --consumers must be at least 1")
    main(args)
