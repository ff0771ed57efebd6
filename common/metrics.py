"""Prometheus metrics: what every process's ``/metrics`` shares."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

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


def response(registry: CollectorRegistry) -> web.Response:
    """The registry in Prometheus text format."""
    return web.Response(body=generate_latest(registry),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})
