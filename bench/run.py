"""Every benchmark, one after another, each in a process of its own (as ``python -m
bench.<name>``): its figures as they come, prefixed with its name, then a summary.

- core_path: ingest, end-to-end throughput, due -> started latency (and its parts)
- grpc_floor: one hop between two processes, idle between calls and back to back: a TCP
  round trip, a unary gRPC call, a message and its answer on a gRPC stream
- failover: SIGKILL of a region -> all its tasks running elsewhere
- breaker: breaker open / closed times for a black-holed region (needs
  ``toxiproxy-server``: ``make toxiproxy`` builds it into ./bin)
- table_growth: GETs and claims with a million finished tasks, tasks due later and a
  backlog pinned to a region that is down, against an empty table
- schedules: fire lag (fire time -> task started) of schedules firing every second
- retention: a million tasks through a two-minute retention: the task tables' size on
  disk over time
- workflows: a 10,000-task chain and fan-out/fan-in, and a backlog over concurrency
  keys, beside a plain backlog on the same cluster; the claim alone, keyed and not
- sdk_latency: submit -> succeeded of one noop task at a time through the Python SDK
  (``submit`` then ``wait`` on the event stream), async and sync clients: p50/p90/p99
- many_regions: a real master against 10, 100 and 1,000 simulated regions of 100
  simulated workers: its CPU per region heartbeat (idle) and per dispatched task (load)
- auth_flood: a good client's p50/p99 alone and while another address floods the master
  with wrong API tokens (which it refuses with 429 once past their burst)
- pgqueuer_drain: pgqueuer's drain rate alone: a backlog of no-op jobs, 2 consumer
  processes (needs pgqueuer: ``pip install -e '.[bench]'``)
- versus_pgqueuer: Strata's drain rate (core_path's throughput) and pgqueuer's, in
  alternating runs on backlogs of one size: the median of each and their ratio
- topologies: the same drain over 2 regions and over 16 of equal total capacity, and
  under 1, 2 and 3 masters, in alternating runs: each one's median and its ratio
- profile: where each task's CPU goes during a drain: every process sampled by py-spy,
  PostgreSQL's statements by pg_stat_statements (needs py-spy: ``pip install -e
  '.[bench]'``; the machine's PostgreSQL binaries for the statements)

They run one at a time because each measures a whole cluster on this machine: two at
once would measure each other. ``--quick`` runs smaller sizes and single trials, to
check that every benchmark runs, not to quote its figures.

Run: python -m bench.run [--quick] [--only core_path failover ...]  (or `make bench`)
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from strata.local import launcher
from tests.chaos.links import find_binary

# A benchmark stopped by Ctrl-C gets this long to stop its cluster and its PostgreSQL.
INTERRUPT_GRACE_S = 60.0


def _needs_toxiproxy() -> str | None:
    if find_binary() is None:
        return "toxiproxy-server not found: `make toxiproxy` builds it into ./bin"
    return None


def _needs_pgqueuer() -> str | None:
    if importlib.util.find_spec("pgqueuer") is None:
        return "pgqueuer not installed: `pip install -e '.[bench]'` (`make bench` does)"
    return None


def _needs_pyspy() -> str | None:
    if shutil.which("py-spy") is None:
        return "py-spy not installed: `pip install -e '.[bench]'` (`make bench` does)"
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class Bench:
    name: str
    args: tuple[str, ...] = ()
    quick_args: tuple[str, ...] = ()
    # The lines that go into the summary: those starting with one of these.
    figures: tuple[str, ...] = ()
    # Why it cannot run here, or None.
    missing: Callable[[], str | None] = lambda: None

    @property
    def module(self) -> str:
        return f"bench.{self.name}"

    def argv(self, *, quick: bool) -> list[str]:
        return [sys.executable, "-m", self.module, *(self.quick_args if quick else self.args)]


BENCHES = (
    Bench(name="core_path",
          quick_args=("--backlog", "10000", "--seconds", "3", "--lead", "10"),
          figures=("latency", "ingest", "throughput")),
    Bench(name="grpc_floor", quick_args=("--calls", "50"),
          figures=("TCP round trip", "gRPC unary call", "gRPC stream round trip")),
    Bench(name="failover", quick_args=("--trials", "1"), figures=("median",)),
    Bench(name="breaker", quick_args=("--trials", "1"),
          figures=("master->region median", "east->master"), missing=_needs_toxiproxy),
    Bench(name="table_growth",
          quick_args=("--finished", "20000", "--future", "2000", "--pinned", "5000",
                      "--seconds", "2"),
          figures=("empty", "1,000,000", "20,000", "...")),
    Bench(name="schedules", quick_args=("--schedules", "2", "--seconds", "5"),
          figures=("fire lag",)),
    Bench(name="retention", quick_args=("--tasks", "20000", "--retention", "5", "--every", "2"),
          figures=("tasks:", "attempts:")),
    Bench(name="workflows",
          quick_args=("--tasks", "500", "--rounds", "1", "--claims", "5000"),
          figures=("plain", "chain", "fan", "keyed", "claims alone")),
    Bench(name="sdk_latency", quick_args=("--tasks", "20"), figures=("async", "sync")),
    Bench(name="auth_flood", quick_args=("--flood", "1000", "--good", "50"),
          figures=("alone", "flood", "the flood")),
    Bench(name="many_regions", quick_args=("--regions", "10,100", "--backlog", "10000",
                                           "--idle", "2"),
          figures=("N=", "from N=")),
    Bench(name="pgqueuer_drain", quick_args=("--jobs", "2000"), figures=("pgqueuer drain",),
          missing=_needs_pgqueuer),
    Bench(name="versus_pgqueuer", quick_args=("--jobs", "10000", "--rounds", "1"),
          figures=("strata drain median", "pgqueuer drain median", "ratio strata/pgqueuer"),
          missing=_needs_pgqueuer),
    Bench(name="topologies", quick_args=("--backlog", "10000", "--rounds", "1"),
          figures=("regions median", "masters median")),
    Bench(name="profile", quick_args=("--backlog", "10000", "--top", "5"),
          figures=("drain:", "CPU per task", "master:", "regions:", "workers:", "postgres:"),
          missing=_needs_pyspy),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    bench: Bench
    status: str  # "ok", "failed (exit N)" or "skipped"
    seconds: float
    lines: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "skipped")

    def figures(self) -> list[str]:
        """Its figure lines; failing those, its last line (a failure's last words)."""
        picked = [line for line in self.lines if line.startswith(self.bench.figures)]
        return picked or list(self.lines[-1:])


def run_one(bench: Bench, *, quick: bool, width: int) -> Outcome:
    prefix = f"{bench.name:<{width}} | "
    why_not = bench.missing()
    if why_not is not None:
        print(f"{prefix}skipped: {why_not}", flush=True)
        return Outcome(bench=bench, status="skipped", seconds=0.0, lines=(why_not,))
    argv = bench.argv(quick=quick)
    print(f"{prefix}$ {' '.join(argv[1:])}", flush=True)
    lines: list[str] = []
    began = time.monotonic()
    with subprocess.Popen(argv, env=launcher.child_env(), stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace") as proc:
        assert proc.stdout is not None
        try:
            for raw in proc.stdout:
                line = raw.rstrip("\n")
                lines.append(line)
                print(prefix + line, flush=True)
        except KeyboardInterrupt:
            # The same Ctrl-C reached the benchmark (one process group): it stops its
            # cluster and its PostgreSQL on the way out.
            proc.wait(timeout=INTERRUPT_GRACE_S)
            raise
        code = proc.wait()
    status = "ok" if code == 0 else f"failed (exit {code})"
    return Outcome(bench=bench, status=status, seconds=time.monotonic() - began,
                   lines=tuple(lines))


def summary(outcomes: Sequence[Outcome], *, quick: bool, seconds: float) -> list[str]:
    width = max(len(o.bench.name) for o in outcomes)
    status_width = max(len(o.status) for o in outcomes)
    out = [f"== summary{' (--quick: sizes too small to quote)' if quick else ''} =="]
    for o in outcomes:
        head = f"{o.bench.name:<{width}}  {o.status:<{status_width}}  {_duration(o.seconds):>6}"
        figures = o.figures()
        out.append(f"{head}  {figures[0] if figures else ''}".rstrip())
        out += [f"{'':<{len(head)}}  {line}" for line in figures[1:]]
    failed = [o.bench.name for o in outcomes if not o.ok]
    out.append(f"{len(outcomes)} benchmarks in {_duration(seconds)}"
               + (f"; failed: {', '.join(failed)}" if failed else ""))
    return out


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest:02d}s" if minutes else f"{rest}s"


def main(argv: Sequence[str] | None = None) -> int:
    names = [b.name for b in BENCHES]
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="small sizes and one trial each: checks that every benchmark runs")
    p.add_argument("--only", nargs="+", choices=names, metavar="NAME",
                   help=f"run only these ({', '.join(names)})")
    args = p.parse_args(argv)
    chosen = [b for b in BENCHES if args.only is None or b.name in args.only]
    width = max(len(b.name) for b in chosen)
    began = time.monotonic()
    outcomes = [run_one(bench, quick=args.quick, width=width) for bench in chosen]
    print("\n".join(summary(outcomes, quick=args.quick, seconds=time.monotonic() - began)),
          flush=True)
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
