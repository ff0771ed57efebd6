"""The region's composition root: coordinator, master link, gRPC server, liveness.

The coordinator (the region's state) and the link (its calls to the master) do not know
each other; the loops here carry state up through the link and answers back down."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from itertools import groupby

from aiohttp import web

from strata.common import channels
from strata.common import tls as tlsmod
from strata.common.batching import Batcher
from strata.common.events import TaskRef
from strata.common.settings import RegionalSettings
from strata.common.supervise import TaskSet, first_of, stop_on_signals
from strata.proto import strata_pb2 as pb
from strata.proto import strata_pb2_grpc as rpc
from strata.regional.coordinator import Coordinator, to_pb
from strata.regional.http import RegionHttp
from strata.regional.lease import Lease
from strata.regional.link import MasterLink
from strata.regional.service import RegionService

logger = logging.getLogger(__name__)

GRPC_GRACE_S = 2.0
REGION_SERVICE = "strata.v1.Region"  # what the master and workers call
FLUSH_TIMEOUT_S = 5.0
# Events a region keeps while the master cannot take them; workers wait beyond that.
EVENT_BUFFER = 100_000
HAND_BACK_BATCH = 10_000


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


class Uplink:
    """What flows from the region to the master: heartbeats built from the coordinator,
    and buffered events and hand-backs. Answers are applied to the coordinator."""

    def __init__(self, settings: RegionalSettings, link: MasterLink, lease: Lease,
                 coordinator: Coordinator, events: Batcher[pb.TaskEvent]) -> None:
        self._settings = settings
        self._link = link
        self._lease = lease
        self._coordinator = coordinator
        self.events = events
        self.hand_backs: Batcher[tuple[pb.TaskSpec, str]] = Batcher(
            self._send_hand_backs, max_size=HAND_BACK_BATCH, limit=EVENT_BUFFER,
            name="hand_back",
        )
        self.interval_s = settings.heartbeat_interval.total_seconds()
        self._poke = asyncio.Event()
        self.last_beat: float | None = None  # unix time of the last beat the master took

    def poke(self) -> None:
        """Send a heartbeat now: capacity changed."""
        self._poke.set()

    def hand_back(self, specs: list[pb.TaskSpec], reason: str) -> None:
        logger.info(
            "handing %d tasks back to the master: %s", len(specs), reason,
            extra={"action": "hand_back", "region": self._settings.name},
        )
        for spec in specs:
            self.hand_backs.put_nowait((spec, reason))

    async def _send_hand_backs(self, items: list[tuple[pb.TaskSpec, str]]) -> None:
        for reason, group in groupby(items, key=lambda item: item[1]):
            await self._link.hand_back([spec for spec, _ in group], reason)

    async def report(self, events: list[pb.TaskEvent]) -> None:
        stale = await self._link.report(events)
        if stale:
            # The master no longer owns these attempts: stop whatever still runs them.
            self._coordinator.cancel(stale)

    async def register(self) -> None:
        reply = await self._link.register()
        if reply.heartbeat_interval_s > 0:
            self.interval_s = reply.heartbeat_interval_s

    async def heartbeat_loop(self) -> None:
        while True:
            self._poke.clear()
            await self.heartbeat()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), self.interval_s)

    async def heartbeat(self) -> bool:
        c = self._coordinator
        taken = time.monotonic()
        held_now = c.held()
        held = held_now | {TaskRef(e.task_id, e.attempt) for e in self.events.pending()}
        request = pb.RegionHeartbeat(
            held=to_pb(held),
            built_at=time.time(),
            region=self._settings.name,
            address=self._settings.advertised_address,
            capacity=c.capacity,
            running=c.running,
            queued=c.queued,
            max_outstanding=c.advertise(),
            workers=[
                pb.WorkerInfo(
                    id=w.id, capacity=w.capacity, running=len(w.inflight),
                    last_heartbeat=w.last_beat_wall, health_address=w.health_address,
                )
                for w in c.workers()
            ],
        )
        # A beat is due every interval: one that takes much longer is as good as lost.
        reply = await self._link.heartbeat(request, deadline_s=max(1.0, 2 * self.interval_s))
        if reply is None:
            return False
        if not reply.known:
            # Everything we held when this beat left was reclaimed meanwhile: drop it
            # before the renewed lease lets any of it start.
            c.forget(held_now)
        self._lease.renew(beat_taken=taken)
        self.last_beat = time.time()
        c.assign()  # start what waited for the lease
        return True


async def serve(settings: RegionalSettings, stop: asyncio.Event | None = None) -> None:
    tls = tlsmod.from_settings(settings)  # a bad file is a ConfigError now, not later
    stop = stop or stop_on_signals()
    if tls is not None:
        tls.reload_on()  # SIGHUP
    # Until the master says otherwise, the lease is twice our own dead-after.
    lease = Lease(settings.worker_dead_after.total_seconds() * 2)
    link = MasterLink(settings, lease, tls)
    uplink: Uplink

    def report_evicted(worker_id: str, specs: list[pb.TaskSpec], reason: str) -> None:
        # Past the buffer's limit if need be: at most what one worker held.
        for spec in specs:
            events.put_nowait(pb.TaskEvent(
                task_id=spec.id, attempt=spec.attempt, type=pb.EVENT_TYPE_EVICTED,
                worker_id=worker_id, error=reason))

    coordinator = Coordinator(
        name=settings.name, queue_factor=settings.queue_factor,
        queue_horizon_s=settings.queue_horizon.total_seconds(), lease=lease,
        on_capacity_change=lambda: uplink.poke(),
        hand_back=lambda specs, reason: uplink.hand_back(specs, reason),
        on_evicted=report_evicted,
    )
    events: Batcher[pb.TaskEvent] = Batcher(
        lambda batch: uplink.report(batch), max_size=settings.report_batch,
        limit=EVENT_BUFFER, name="report",
    )
    uplink = Uplink(settings, link, lease, coordinator, events)
    server = channels.server()
    rpc.add_RegionServicer_to_server(
        RegionService(coordinator, events, settings.heartbeat_interval.total_seconds(),
                      mtls=tls is not None),
        server,
    )
    checks = channels.serve_health_and_reflection(server, [REGION_SERVICE])
    channels.listen(server, f"{settings.grpc_host}:{settings.grpc_port}", tls)
    await server.start()
    await channels.set_serving(checks, [REGION_SERVICE], True)

    http = web.AppRunner(
        RegionHttp(settings.name, coordinator, link, lease, lambda: uplink.last_beat).app(),
        access_log=None)
    await http.setup()
    await web.TCPSite(http, settings.http_host, settings.http_port).start()
    http_host, http_port = http.addresses[0][:2]

    tasks = TaskSet()
    tasks.spawn("report", events.run())
    tasks.spawn("hand_back", uplink.hand_backs.run())
    try:
        await uplink.register()
    except BaseException:
        # Refused by the master (or stopped while waiting for it): nothing was taken.
        await server.stop(0)
        await tasks.cancel_all()
        await http.cleanup()
        await link.close()
        raise
    tasks.spawn("heartbeat", uplink.heartbeat_loop())
    tasks.spawn("watch_workers", _watch_workers(coordinator, settings))
    logger.info(
        "region %s ready on %s, health and metrics on http://%s:%d", settings.name,
        settings.advertised_address, http_host, http_port,
        extra={"action": "region_ready", "region": settings.name},
    )
    try:
        await first_of(stop, tasks.failed)
    finally:
        # Stop taking work, give the queue back, deliver what workers reported.
        coordinator.accepting = False
        await channels.set_serving(checks, [REGION_SERVICE], False)
        queued = coordinator.drain_queue()
        if queued:
            uplink.hand_back(queued, "region shutting down")
        await uplink.heartbeat()
        try:
            await asyncio.wait_for(
                asyncio.gather(uplink.hand_backs.drained(), events.drained()),
                FLUSH_TIMEOUT_S,
            )
        except TimeoutError:
            logger.warning(
                "could not deliver everything to the master before stopping",
                extra={"action": "flush_timeout", "region": settings.name},
            )
        await server.stop(GRPC_GRACE_S)
        await tasks.cancel_all()
        await http.cleanup()
        await link.close()
        logger.info("region stopped", extra={"action": "region_stopped", "region": settings.name})
    if tasks.failure is not None:
        raise tasks.failure

