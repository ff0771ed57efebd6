"""The master's own metric pieces: plain-count histograms in Prometheus's text format,
and the recent figures /v1/stats gives the dashboard."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from strata.common import metrics
from strata.master.metrics import SAMPLES_PER_MINUTE, Recent


def samples(registry: object) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = generate_latest(registry).decode()  # type: ignore[arg-type]
    return {(s.name, frozenset(s.labels.items())): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_histograms_count_each_value_in_the_first_bucket_that_holds_it() -> None:
    registry = metrics.registry()
    h = metrics.Histograms("strata_test_seconds", "test", ["hop"], [0.1, 1.0], registry)
    for v in (0.05, 0.1, 0.5, 1.0, 7.0):
        h.labels("a").observe(v)
    h.labels("b").observe(0.2)
    got = samples(registry)

    def bucket(hop: str, le: str) -> float:
        return got[("strata_test_seconds_bucket", frozenset({("hop", hop), ("le", le)}))]

    # le is "less than or equal": a value on a bound is in that bound's bucket.
    assert [bucket("a", le) for le in ("0.1", "1.0", "+Inf")] == [2, 4, 5]
    assert [bucket("b", le) for le in ("0.1", "1.0", "+Inf")] == [0, 1, 1]
    assert got[("strata_test_seconds_count", frozenset({("hop", "a")}))] == 5
    assert got[("strata_test_seconds_sum", frozenset({("hop", "a")}))] == 8.65


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_recent_rates_and_percentiles_over_the_window() -> None:
    clock = Clock(6000.0)  # on a minute
    recent = Recent(minutes=5, clock=clock)
    recent.started([0.01] * 98 + [1.0, 2.0])
    recent.finished(succeeded=90, failed=10)
    clock.now += 60
    recent.started([0.5] * 100)
    clock.now += 60
    snap = recent.snapshot()
    assert snap["window_s"] == 300
    # 200 starts and 100 ends in the 120 s the master has been up.
    assert snap["started_per_s"] == 200 / 120 and snap["finished_per_s"] == 100 / 120
    assert snap["due_to_started_p50_s"] == 0.5 and snap["due_to_started_p99_s"] == 1.0
    first, second = snap["series"]
    assert (first["started"], first["finished"], first["failed"]) == (100, 100, 10)
    assert (first["p50_s"], first["p99_s"]) == (0.01, 2.0)
    assert first["at"] == "1970-01-01T01:40:00Z" and second["p50_s"] == 0.5
    clock.now += 5 * 60  # both minutes leave the window
    assert recent.snapshot()["series"] == []


def test_recent_keeps_a_bounded_sample_of_a_busy_minute() -> None:
    recent = Recent(clock=Clock(0.0))
    recent.started([1.0] * (3 * SAMPLES_PER_MINUTE))
    (minute,) = recent.snapshot()["series"]
    assert minute["started"] == 3 * SAMPLES_PER_MINUTE and minute["p50_s"] == 1.0
