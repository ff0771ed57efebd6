"""``make bench``'s runner: it runs every benchmark there is, and its summary keeps each
one's figures and says which failed."""

from __future__ import annotations

from pathlib import Path

from bench.run import BENCHES, Outcome, summary

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"


def test_every_benchmark_module_is_run() -> None:
    runnable = {path.stem for path in BENCH_DIR.glob("*.py")
                if 'if __name__ == "__main__":' in path.read_text()} - {"run"}
    assert runnable, "no benchmarks found"
    assert {b.name for b in BENCHES} == runnable


def test_the_summary_keeps_the_figures_and_names_failures() -> None:
    failover, breaker = (next(b for b in BENCHES if b.name == n) for n in ("failover", "breaker"))
    outcomes = [
        Outcome(bench=failover, status="ok", seconds=75.2, lines=(
            "8 running tasks; heartbeat 1s", "trial 1: killed a: ...",
            "median SIGKILL -> all running elsewhere: 5.61s (meets the target of 6s)")),
        Outcome(bench=breaker, status="failed (exit 1)", seconds=3.0, lines=(
            "Traceback (most recent call last):", "AssertionError: timed out")),
    ]
    lines = summary(outcomes, quick=False, seconds=78.4)
    assert lines[0] == "== summary =="
    assert lines[1].split(None, 3)[:3] == ["failover", "ok", "1m15s"]
    assert lines[1].endswith("median SIGKILL -> all running elsewhere: 5.61s (meets the "
                             "target of 6s)")
    assert "failed (exit 1)" in lines[2] and lines[2].endswith("AssertionError: timed out")
    assert lines[-1] == "2 benchmarks in 1m18s; failed: breaker"
