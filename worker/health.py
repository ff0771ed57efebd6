"""The worker's HTTP health endpoint."""

from __future__ import annotations

from collections.abc import Iterator

from aiohttp import web
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from strata.common import metrics
from strata.worker.agent import Agent


def health_app(agent: Agent, region: str) -> web.Application:
    def state() -> dict[str, object]:
        return {
            "worker_id": agent.id,
            "region": region,
            "region_connected": agent.connected,
            "draining": agent.draining,
            "running": agent.running,
            "capacity": agent.capacity,
            "completed": agent.completed,
            "breaker": agent.breaker.snapshot(),
        }

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response(state())

    registry = metrics.registry()
    registry.register(_WorkerCollector(agent))

    async def metrics_text(request: web.Request) -> web.Response:
        return metrics.response(registry)

    async def readyz(request: web.Request) -> web.Response:
        ready = agent.connected and not agent.draining
        return web.json_response(state(), status=200 if ready else 503)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_text)
    return app


class _WorkerCollector(Collector):
    """The agent's figures, read at each scrape."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent

    def collect(self) -> Iterator[Metric]:
        a = self._agent
        yield GaugeMetricFamily("strata_worker_running", "Tasks this worker runs now",
                                value=a.running)
        yield GaugeMetricFamily("strata_worker_capacity", "Tasks this worker may run at once",
                                value=a.capacity)
        yield GaugeMetricFamily("strata_worker_region_connected",
                                "1 while the worker's stream to its region is up",
                                value=1 if a.connected else 0)
        yield CounterMetricFamily("strata_worker_completed",
                                  "Tasks this worker ran to their end", value=a.completed)
        breaker = GaugeMetricFamily("strata_breaker_open", metrics.BREAKER_HELP,
                                    labels=["link"])
        breaker.add_metric([a.breaker.name], 1 if metrics.is_open(a.breaker) else 0)
        yield breaker
