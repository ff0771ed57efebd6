"""The region's HTTP endpoint: /healthz (its link to the master, its breaker, its
workers) and /metrics."""

from __future__ import annotations

import time
from collections.abc import Callable

from aiohttp import web
from prometheus_client import Gauge

from strata.common import metrics
from strata.regional.coordinator import Coordinator
from strata.regional.lease import Lease
from strata.regional.link import MasterLink


class RegionHttp:
    def __init__(self, name: str, coordinator: Coordinator, link: MasterLink, lease: Lease,
                 last_beat: Callable[[], float | None]) -> None:
        self._name = name
        self._coordinator = coordinator
        self._link = link
        self._lease = lease
        self._last_beat = last_beat
        self.registry = r = metrics.registry()
        labels = ["region"]
        self._capacity = Gauge("strata_region_capacity", "Slots of the region's live workers",
                               labels, registry=r)
        self._queued = Gauge("strata_region_queued",
                             "Tasks queued in the region, waiting for a worker", labels,
                             registry=r)
        self._running = Gauge("strata_region_running", "Tasks running on the region's workers",
                              labels, registry=r)
        self._workers = Gauge("strata_region_workers", "Live workers of the region", labels,
                              registry=r)
        self._lease_valid = Gauge(
            "strata_region_lease_valid",
            "1 while the region's lease from the master holds (it may start tasks)", labels,
            registry=r)
        self._breaker = metrics.breaker_gauge(r)

    def state(self) -> dict[str, object]:
        c = self._coordinator
        last = self._last_beat()
        return {
            "region": self._name,
            "master": {
                "address": self._link.address,
                "lease_valid": self._lease.valid(),
                "last_heartbeat_s_ago": None if last is None else round(time.time() - last, 3),
                "breaker": self._link.breaker.snapshot(),
            },
            "accepting": c.accepting,
            "capacity": c.capacity,
            "running": c.running,
            "queued": c.queued,
            "workers": [
                {"id": w.id, "capacity": w.capacity, "running": len(w.inflight),
                 "last_heartbeat_s_ago": round(time.time() - w.last_beat_wall, 3)}
                for w in c.workers()
            ],
        }

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response(self.state())

    async def metrics(self, request: web.Request) -> web.Response:
        c = self._coordinator
        self._capacity.labels(self._name).set(c.capacity)
        self._queued.labels(self._name).set(c.queued)
        self._running.labels(self._name).set(c.running)
        self._workers.labels(self._name).set(len(c.workers()))
        self._lease_valid.labels(self._name).set(1 if self._lease.valid() else 0)
        metrics.set_breakers(self._breaker, self._link.breakers())
        return metrics.response(self.registry)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics)
        return app
