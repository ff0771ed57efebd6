"""Prometheus metrics: what every process's ``/metrics`` shares."""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Iterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from strata.common.breaker import BreakerState, CircuitBreaker

# Per-hop latencies run from a millisecond (a claim on an idle system) to the minutes a
# task waits for room in a backlog.
HOP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
               10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


def registry() -> CollectorRegistry:
    """A registry of the process's own (not the library's global one: tests run several
    tiers in one process)."""
    return CollectorRegistry(auto_describe=True)


BREAKER_HELP = "1 while the circuit breaker on this link is open (calls refused), else 0"


def breaker_gauge(registry: CollectorRegistry) -> Gauge:
    return Gauge("strata_breaker_open", BREAKER_HELP, ["link"], registry=registry)


def is_open(breaker: CircuitBreaker) -> bool:
    return breaker.state is BreakerState.OPEN


def set_breakers(gauge: Gauge, breakers: list[CircuitBreaker]) -> None:
    for breaker in breakers:
        gauge.labels(breaker.name).set(1 if is_open(breaker) else 0)


class Series:
    """One labelled series of a :class:`Histograms`."""

    __slots__ = ("_bounds", "count", "counts", "sum")

    def __init__(self, bounds: list[float]) -> None:
        self._bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self._bounds, value)] += 1
        self.sum += value
        self.count += 1


class Histograms(Collector):
    """A histogram family kept as plain counts and exposed at scrape time, for the hot
    path: an observation is a bisect and three additions, where prometheus_client's
    Histogram takes a lock twice. For one event loop's use (no locking)."""

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str],
                 buckets: Iterable[float], registry: CollectorRegistry) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = list(labelnames)
        self._bounds = [*sorted(buckets), math.inf]
        self._series: dict[tuple[str, ...], Series] = {}
        registry.register(self)

    def labels(self, *values: str) -> Series:
        series = self._series.get(values)
        if series is None:
            if len(values) != len(self._labelnames):
                raise ValueError(f"{self._name} takes labels {self._labelnames}")
            series = self._series[values] = Series(self._bounds)
        return series

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self._name, self._documentation,
                                       labels=self._labelnames)
        for values, series in self._series.items():
            cumulative, buckets = 0, []
            for bound, n in zip(self._bounds, series.counts, strict=True):
                cumulative += n
                buckets.append((floatToGoString(bound), cumulative))  # type: ignore[no-untyped-call]
            family.add_metric(list(values), buckets, series.sum)
        yield family


def response(registry: CollectorRegistry) -> web.Response:
    """The registry in Prometheus text format."""
    return web.Response(body=generate_latest(registry),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})
