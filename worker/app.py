"""The worker's composition root: runner, region agent, health server."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid

from aiohttp import web

from strata.common import tls as tlsmod
from strata.common.settings import WorkerSettings
from strata.common.supervise import TaskSet, first_of, stop_on_signals
from strata.worker.agent import Agent
from strata.worker.health import health_app
from strata.worker.runner import Runner, resolve_run_as

logger = logging.getLogger(__name__)

FLUSH_TIMEOUT_S = 5.0


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


async def serve(settings: WorkerSettings, stop: asyncio.Event | None = None) -> None:
    tls = tlsmod.from_settings(settings)  # a bad file is a ConfigError now, not later
    stop = stop or stop_on_signals()
    if tls is not None:
        tls.reload_on()  # SIGHUP: the stream to the region is made again with the new files
    # Before anything listens: a --run-as the worker cannot honour stops it here.
    run_as = await resolve_run_as(settings.run_as, python_modules=settings.python_modules)
    runner = Runner(python_modules=settings.python_modules, output_limit=settings.output_limit,
                    run_as=run_as)
    agent = Agent(settings, runner, settings.id or default_worker_id(), tls=tls)

    http = web.AppRunner(health_app(agent, settings.region), access_log=None)
    await http.setup()
    site = web.TCPSite(http, settings.http_host, settings.http_port)
    await site.start()
    host, port = http.addresses[0][:2]
    agent.health_address = f"{host}:{port}"

    tasks = TaskSet()
    tasks.spawn("events", agent.events.run())
    link = tasks.spawn("region_link", agent.run())
    logger.info(
        "worker %s up, health on http://%s, region %s", agent.id, agent.health_address,
        settings.region, extra={"action": "worker_ready", "worker": agent.id},
    )
    try:
        await first_of(stop, tasks.failed)
    finally:
        # Intake stops first; running tasks get the grace period; then results go out.
        await agent.drain(settings.shutdown_grace.total_seconds())
        try:
            await asyncio.wait_for(agent.events.drained(), FLUSH_TIMEOUT_S)
        except TimeoutError:
            logger.warning(
                "%d events not delivered before stopping", len(agent.events),
                extra={"action": "flush_timeout", "worker": agent.id},
            )
        link.cancel()
        await tasks.cancel_all()
        await runner.close()
        await http.cleanup()
        logger.info("worker stopped", extra={"action": "worker_stopped", "worker": agent.id})
    if tasks.failure is not None:
        raise tasks.failure
