"""Strata's drain rate across topologies, side by side: the same work over more regions,
or over more masters, in alternating runs on this machine.

- ``regions``: 256 worker slots in all, spread as 2 regions x 2 workers and as 16 regions
  x 1 worker (``bench.core_path --slots 256``). The target is 16 regions at 0.9x the
  drain rate of 2 regions, or better.
- ``masters``: 2 regions x 2 workers under 1, 2 and 3 masters on the one database
  (``bench.core_path --masters M``). Region i lists master i mod M first. The target is
  that more masters are not slower.

Each run is ``bench.core_path`` in a process of its own, one at a time. Its figure is
"throughput end to end": N noop tasks due at one instant, N / (due -> the last result).
Printed: every run's figure as it comes, then each topology's median and its ratio to
the first.

Run: python -m bench.topologies [regions|masters ...] [--backlog 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys

from bench.versus_pgqueuer import STRATA_FIGURE, backlog_for, parse_rate, run

COMPARISONS: dict[str, dict[str, tuple[str, ...]]] = {
    "regions": {
        "2 regions x 2 workers": ("--slots", "256", "--regions", "2",
                                  "--workers-per-region", "2"),
        "16 regions x 1 worker": ("--slots", "256", "--regions", "16",
                                  "--workers-per-region", "1"),
    },
    "masters": {
        "1 master": ("--masters", "1"),
        "2 masters": ("--masters", "2"),
        "3 masters": ("--masters", "3"),
    },
}


def compare(name: str, backlog: int, rounds: int, lead: float) -> None:
    topologies = COMPARISONS[name]
    width = max(map(len, topologies))
    rates: dict[str, list[float]] = {t: [] for t in topologies}
    print(f"{name}: {backlog:,} noop tasks due at once, {rounds} rounds, one run at a time",
          flush=True)
    for i in range(1, rounds + 1):
        for topology, extra in topologies.items():
            lines = run([sys.executable, "-m", "bench.core_path", "--backlog", str(backlog),
                         "--seconds", "2", "--lead", str(lead), *extra])
            rate, line = parse_rate(lines, STRATA_FIGURE, "tasks/s")
            rates[topology].append(rate)
            print(f"round {i}/{rounds} {topology:<{width}} | {line}", flush=True)
    first = statistics.median(rates[next(iter(topologies))])
    for topology, values in rates.items():
        median = statistics.median(values)
        runs = " / ".join(f"{r:,.0f}" for r in values)
        print(f"{name} median {topology}: {median:,.0f} tasks/s (runs: {runs}); "
              f"ratio to the first: {median / first:.2f}", flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m bench.topologies", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    # (argparse checks an empty list against the choices: it is one of them.)
    p.add_argument("comparisons", nargs="*", choices=[*COMPARISONS, []], default=[],
                   help="which to run (default: all)")
    p.add_argument("--backlog", type=int, default=20_000,
                   help="tasks due at once (rounded up to a multiple of 10,000)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--lead", type=float, default=15,
                   help="seconds from the ingest to the backlog coming due")
    args = p.parse_args()
    if args.backlog < 1 or args.rounds < 1:
        p.error("--backlog and --rounds must be at least 1")
    for comparison in args.comparisons or list(COMPARISONS):
        compare(comparison, backlog_for(args.backlog), args.rounds, args.lead)
