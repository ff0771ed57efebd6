"""The region's link up to the master: registration, heartbeats, batched reports
and hand-backs. Events wait in a bounded, ordered buffer until the master has them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import grpc

from strata.common import channels
from strata.common.batching import Batcher
from strata.common.breaker import CircuitBreaker, RetryPolicy
from strata.common.errors import CircuitOpen
from strata.common.settings import RegionalSettings
from strata.proto import strata_pb2 as pb
from strata.proto import strata_pb2_grpc as rpc
from strata.regional.coordinator import Coordinator

logger = logging.getLogger(__name__)

CALL_TIMEOUT_S = 5.0
# Events a region keeps while the master cannot take them; workers wait beyond that.
EVENT_BUFFER = 100_000
REGISTER_BACKOFF_MAX_S = 2.0
# Calls up to the master retry briefly; what still fails stays buffered and is tried
# again, so nothing is lost while the breaker is open.
MASTER_RETRY = RetryPolicy(attempts=3, initial_s=0.05, max_wait_s=0.5, deadline_s=8.0)


class MasterLink:
    def __init__(self, settings: RegionalSettings, coordinator: Coordinator | None = None
                 ) -> None:
        self._settings = settings
        self._coordinator = coordinator
        self._channel = channels.channel(settings.master)
        self._stub = rpc.MasterStub(self._channel)
        self._poke = asyncio.Event()
        self.breaker = CircuitBreaker(
            f"{settings.name}->master", failure_threshold=settings.breaker_failures,
            reset_timeout_s=settings.breaker_reset.total_seconds(), retry=MASTER_RETRY,
        )
        # Until the master says otherwise, the lease is our own dead-after.
        self.lease_s = settings.worker_dead_after.total_seconds() * 2
        self._last_ack = time.monotonic()
        self.events: Batcher[pb.TaskEvent] = Batcher(
            self._report, max_size=settings.report_batch, limit=EVENT_BUFFER, name="report"
        )
        self.hand_backs: Batcher[pb.TaskSpec] = Batcher(
            self._hand_back, max_size=10_000, limit=EVENT_BUFFER, name="hand_back"
        )

    @property
    def coordinator(self) -> Coordinator:
        assert self._coordinator is not None, "attach a coordinator first"
        return self._coordinator

    def attach(self, coordinator: Coordinator) -> None:
        self._coordinator = coordinator

    def lease_valid(self) -> bool:
        """Whether the master has answered recently enough that what we hold is still
        ours; past this it will be reclaimed, so queued work must not start."""
        return time.monotonic() - self._last_ack < self.lease_s

    def _acked(self) -> None:
        lapsed = not self.lease_valid()
        self._last_ack = time.monotonic()
        if lapsed:
            self.coordinator.assign()

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
        request = pb.RegisterRequest(
            region=self._settings.name, address=self._settings.advertised_address
        )
        while True:
            try:
                reply = await self.breaker.call(
                    lambda: self._stub.Register(request, timeout=CALL_TIMEOUT_S)
                )
            except (grpc.aio.AioRpcError, CircuitOpen) as exc:
                logger.warning(
                    "cannot register with master %s: %s", self._settings.master,
                    _why(exc), extra={"action": "register_failed"},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, REGISTER_BACKOFF_MAX_S)
                continue
            if reply.lease_s > 0:
                self.lease_s = reply.lease_s
            self._acked()
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
        c = self.coordinator
        held_now = c.held()
        held = held_now | {(e.task_id, e.attempt) for e in self.events.pending()}
        request = pb.RegionHeartbeat(
            held=[pb.TaskRef(task_id=i, attempt=a) for i, a in held],
            built_at=time.time(),
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
        # A beat is due every interval: one that takes much longer is as good as lost.
        deadline = max(1.0, 2 * self._settings.heartbeat_interval.total_seconds())
        try:
            reply = await self.breaker.call(
                lambda: self._stub.Heartbeat(request, timeout=deadline)
            )
        except (grpc.aio.AioRpcError, CircuitOpen) as exc:
            logger.warning(
                "heartbeat to master failed: %s", _why(exc),
                extra={"action": "heartbeat_failed", "region": self._settings.name},
            )
            return False
        if not reply.known:
            # Everything we held when this beat left was reclaimed meanwhile.
            c.forget(held_now)
        self._acked()
        return True

    async def _report(self, events: list[pb.TaskEvent]) -> None:
        request = pb.ReportRequest(region=self._settings.name, events=events)
        reply = await self.breaker.call(
            lambda: self._stub.Report(request, timeout=CALL_TIMEOUT_S)
        )
        self._acked()
        if reply.stale:
            # The master no longer owns these attempts: stop whatever still runs them.
            self.coordinator.cancel((r.task_id, r.attempt) for r in reply.stale)

    async def _hand_back(self, specs: list[pb.TaskSpec]) -> None:
        request = pb.HandBackRequest(
            region=self._settings.name,
            tasks=[pb.TaskRef(task_id=s.id, attempt=s.attempt) for s in specs],
            reason="handed back",
        )
        await self.breaker.call(lambda: self._stub.HandBack(request, timeout=CALL_TIMEOUT_S))
        self._acked()

    async def close(self) -> None:
        await self._channel.close(None)


def _why(exc: BaseException) -> str:
    return exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
