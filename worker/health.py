"""The worker's HTTP health endpoint."""

from __future__ import annotations

from aiohttp import web

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

    async def readyz(request: web.Request) -> web.Response:
        ready = agent.connected and not agent.draining
        return web.json_response(state(), status=200 if ready else 503)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
