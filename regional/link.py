"""The region's link up to the master: registration, heartbeats, batched reports
and hand-backs. Events wait in a bounded, ordered buffer until the master has them."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc

from common.batching import Batcher
from common.settings import RegionalSettings
from common.timeutil import utcnow
from proto import strata_pb2 as pb
from proto import strata_pb2_grpc as rpc
from regional.coordinator import Coordinator

logger = logging.getLogger(__name__)

CALL_TIMEOUT_S = 5.0
# Events a region keeps while the master cannot take them; workers wait beyond that.
EVENT_BUFFER = 100_000
REGISTER_BACKOFF_MAX_S = 2.0


class MasterLink:
    def __init__(self, settings: RegionalSettings, coordinator: Coordinator) -> None:
        self._settings = settings
        self._coordinator = coordinator
        self._channel = grpc.aio.insecure_channel(settings.master)
        self._stub = rpc.MasterStub(self._channel)
        self._poke = asyncio.Event()
        self.events: Batcher[pb.TaskEvent] = Batcher(
            self._report, max_size=settings.report_batch, limit=EVENT_BUFFER, name="report"
        )
        self.hand_backs: Batcher[pb.TaskSpec] = Batcher(
            self._hand_back, max_size=10_000, limit=EVENT_BUFFER, name="hand_back"
        )
        self.last_ack = utcnow()

    def poke(self) -> None:
        """Send a heartbeat now: capacity changed."""
        self._poke.set()

    def hand_back(self, specs: list[pb.TaskSpec], reason: str) -> None:
        logger.info(
            "handing %d tasks back to the master: %s", len(specs), reason,
            extra={"action": "hand_back", "region": self._settings.name},
        )
        for spec in specs:
            self.hand_backs.put_nowait(spec)

    async def register(self) -> None:
        delay = 0.05
        while True:
            try:
                await self._stub.Register(
                    pb.RegisterRequest(
                        region=self._settings.name, address=self._settings.advertised_address
                    ),
                    timeout=CALL_TIMEOUT_S,
                )
            except grpc.aio.AioRpcError as exc:
                logger.warning(
                    "cannot register with master %s: %s", self._settings.master,
                    exc.code().name, extra={"action": "register_failed"},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, REGISTER_BACKOFF_MAX_S)
                continue
            self.last_ack = utcnow()
            logger.info(
                "registered with master %s as %s", self._settings.master, self._settings.name,
                extra={"action": "region_registered", "region": self._settings.name},
            )
            return

    async def heartbeat_loop(self) -> None:
        interval = self._settings.heartbeat_interval.total_seconds()
        while True:
            self._poke.clear()
            await self.heartbeat()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), interval)

    async def heartbeat(self) -> bool:
        c = self._coordinator
        request = pb.RegionHeartbeat(
            region=self._settings.name,
            address=self._settings.advertised_address,
            capacity=c.capacity,
            running=c.running,
            queued=c.queued,
            max_outstanding=c.max_outstanding,
            workers=[
                pb.WorkerInfo(
                    id=w.id, capacity=w.capacity, running=len(w.inflight),
                    last_heartbeat=w.last_beat_wall, health_address=w.health_address,
                )
                for w in c.workers()
            ],
        )
        try:
            await self._stub.Heartbeat(request, timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            logger.warning(
                "heartbeat to master failed: %s", exc.code().name,
                extra={"action": "heartbeat_failed", "region": self._settings.name},
            )
            return False
        self.last_ack = utcnow()
        return True

    async def _report(self, events: list[pb.TaskEvent]) -> None:
        reply = await self._stub.Report(
            pb.ReportRequest(region=self._settings.name, events=events), timeout=CALL_TIMEOUT_S
        )
        self.last_ack = utcnow()
        if reply.stale:
            # The master no longer owns these attempts: stop whatever still runs them.
            self._coordinator.cancel((r.task_id, r.attempt) for r in reply.stale)

    async def _hand_back(self, specs: list[pb.TaskSpec]) -> None:
        await self._stub.HandBack(
            pb.HandBackRequest(
                region=self._settings.name,
                tasks=[pb.TaskRef(task_id=s.id, attempt=s.attempt) for s in specs],
                reason="handed back",
            ),
            timeout=CALL_TIMEOUT_S,
        )

    async def close(self) -> None:
        await self._channel.close(None)
