"""bench.versus_pgqueuer reads each run's rate off the line its benchmark prints, and sizes
both backlogs as bench.core_path can submit them."""

from __future__ import annotations

import pytest

from bench import core_path
from bench.versus_pgqueuer import (
    CORE_PATH_BATCH,
    PGQUEUER_FIGURE,
    STRATA_FIGURE,
    backlog_for,
    parse_rate,
    summary,
)

STRATA_RUN = [
    "cluster: 1 master(s), 2 regions x 2 workers, concurrency 32 per worker (128 slots), ...",
    "ingest /v1/tasks/batch (10000 per call): 41,230 tasks/s",
    "throughput end to end, 20,000 noop tasks due at once: 12,345 tasks/s (drained in 1.62s "
    "after due; first claim to last result 1.60s)",
]
PGQUEUER_RUN = [
    "enqueue: 26,046 jobs/s (10,000 per Queries.enqueue call)",
    "pgqueuer drain: 5,432 jobs/s (20,000 jobs, 2 consumer processes, 3.68s)",
]


def test_the_rate_is_read_off_the_figure_line_not_the_others() -> None:
    assert parse_rate(STRATA_RUN, STRATA_FIGURE, "tasks/s") == (12_345.0, STRATA_RUN[2])
    assert parse_rate(PGQUEUER_RUN, PGQUEUER_FIGURE, "jobs/s") == (5_432.0, PGQUEUER_RUN[1])
    assert parse_rate(["pgqueuer drain: 980.5 jobs/s (...)"], PGQUEUER_FIGURE, "jobs/s")[0] \
        == 980.5


def test_a_run_without_its_figure_is_an_error() -> None:
    with pytest.raises(ValueError, match="throughput end to end"):
        parse_rate(STRATA_RUN[:2], STRATA_FIGURE, "tasks/s")
    with pytest.raises(ValueError):
        parse_rate(["pgqueuer drain: 5,432 tasks/s"], PGQUEUER_FIGURE, "jobs/s")


def test_backlogs_are_whole_core_path_batches() -> None:
    assert CORE_PATH_BATCH == core_path.BATCH
    assert [backlog_for(n) for n in (1, 5_000, 10_000, 20_000, 20_001)] == [
        10_000, 10_000, 10_000, 20_000, 30_000]


def test_the_summary_gives_the_median_and_every_run() -> None:
    assert summary("strata", "tasks/s", [9_000.0, 12_345.0, 10_500.4]) == (
        "strata drain median: 10,500 tasks/s (runs: 9,000 / 12,345 / 10,500)")
