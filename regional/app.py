"""The region's composition root: coordinator, master link, gRPC server, liveness."""

from __future__ import annotations

import asyncio
import logging

from strata.common import channels
from strata.common.settings import RegionalSettings
from strata.common.supervise import TaskSet, first_of, stop_on_signals
from strata.proto import strata_pb2_grpc as rpc
from strata.regional.coordinator import Coordinator
from strata.regional.link import MasterLink
from strata.regional.service import RegionService

logger = logging.getLogger(__name__)

GRPC_GRACE_S = 2.0
FLUSH_TIMEOUT_S = 5.0


async def _watch_workers(coordinator: Coordinator, settings: RegionalSettings) -> None:
    dead_after = settings.worker_dead_after.total_seconds()
    period = min(settings.heartbeat_interval.total_seconds(), dead_after) / 2
    loop = asyncio.get_running_loop()
    while True:
        before = loop.time()
        await asyncio.sleep(period)
        overslept = loop.time() - before - period
        if overslept > dead_after / 2:
            # We were the ones frozen (a stop signal, a stalled host): the workers' beats
            # wait unread in their streams. Read them before judging anyone silent.
            coordinator.forgive_stall(overslept)
            continue
        coordinator.evict_silent(dead_after)


async def serve(settings: RegionalSettings, stop: asyncio.Event | None = None) -> None:
    stop = stop or stop_on_signals()
    link = MasterLink(settings)
    coordinator = Coordinator(
        name=settings.name, queue_factor=settings.queue_factor,
        on_capacity_change=link.poke, hand_back=link.hand_back, lease_valid=link.lease_valid,
    )
    link.attach(coordinator)
    server = channels.server()
    rpc.add_RegionServicer_to_server(
        RegionService(coordinator, link, settings.heartbeat_interval.total_seconds()), server
    )
    server.add_insecure_port(f"{settings.grpc_host}:{settings.grpc_port}")
    await server.start()

    tasks = TaskSet()
    tasks.spawn("report", link.events.run())
    tasks.spawn("hand_back", link.hand_backs.run())
    await link.register()
    tasks.spawn("heartbeat", link.heartbeat_loop())
    tasks.spawn("watch_workers", _watch_workers(coordinator, settings))
    logger.info(
        "region %s ready on %s", settings.name, settings.advertised_address,
        extra={"action": "region_ready", "region": settings.name},
    )
    try:
        await first_of(stop, tasks.failed)
    finally:
        # Stop taking work, give the queue back, deliver what workers reported.
        coordinator.accepting = False
        queued = coordinator.drain_queue()
        if queued:
            link.hand_back(queued, "region shutting down")
        await link.heartbeat()
        try:
            await asyncio.wait_for(
                asyncio.gather(link.hand_backs.drained(), link.events.drained()), FLUSH_TIMEOUT_S
            )
        except TimeoutError:
            logger.warning(
                "could not deliver everything to the master before stopping",
                extra={"action": "flush_timeout", "region": settings.name},
            )
        await server.stop(GRPC_GRACE_S)
        await tasks.cancel_all()
        await link.close()
        logger.info("region stopped", extra={"action": "region_stopped", "region": settings.name})
    if tasks.failure is not None:
        raise tasks.failure
