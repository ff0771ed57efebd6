"""The region's calls up to the master: register, heartbeat, report, hand back.

Each call goes through one breaker (tenacity retries inside it). Only registering and
heartbeats renew the region's lease: the master judges a region by its heartbeats, and
answers a report even from a region it has already declared down. The link knows
nothing of the coordinator: the composition root (``regional.app``) builds what it
sends and applies what comes back."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import grpc

from strata.common import channels
from strata.common.breaker import CircuitBreaker, RetryPolicy
from strata.common.errors import CircuitOpen
from strata.common.events import TaskRef
from strata.common.retry import Backoff, keep_trying, of_type
from strata.common.settings import RegionalSettings
from strata.proto import strata_pb2 as pb
from strata.proto import strata_pb2_grpc as rpc
from strata.regional.lease import Lease

logger = logging.getLogger(__name__)

CALL_TIMEOUT_S = 5.0
REGISTER_BACKOFF = Backoff(initial_s=0.05, max_s=2.0)
# Calls up to the master retry briefly; what still fails stays buffered and is tried
# again, so nothing is lost while the breaker is open.
MASTER_RETRY = RetryPolicy(attempts=3, initial_s=0.05, max_wait_s=0.5, deadline_s=8.0)


class MasterLink:
    def __init__(self, settings: RegionalSettings, lease: Lease) -> None:
        self._settings = settings
        self._lease = lease
        self.address = settings.master
        self._channel = channels.channel(settings.master)
        self._stub = rpc.MasterStub(self._channel)
        self.breaker = CircuitBreaker(
            f"{settings.name}->master", failure_threshold=settings.breaker_failures,
            reset_timeout_s=settings.breaker_reset.total_seconds(), retry=MASTER_RETRY,
        )

    async def register(self) -> pb.RegisterReply:
        """Register, retrying until the master answers. The reply's lease and heartbeat
        interval are the master's: it judges the region by them."""
        request = pb.RegisterRequest(
            region=self._settings.name, address=self._settings.advertised_address
        )
        reply: pb.RegisterReply = await keep_trying(
            f"registering with master {self._settings.master}",
            lambda: self.breaker.call(lambda: self._stub.Register(request,
                                                                  timeout=CALL_TIMEOUT_S)),
            REGISTER_BACKOFF, retry_on=of_type(grpc.aio.AioRpcError, CircuitOpen),
            action="register_failed", extra={"region": self._settings.name},
        )
        if reply.lease_s > 0:
            self._lease.lease_s = reply.lease_s
        self._lease.renew()
        logger.info(
            "registered with master %s as %s", self._settings.master, self._settings.name,
            extra={"action": "region_registered", "region": self._settings.name},
        )
        return reply

    async def heartbeat(self, request: pb.RegionHeartbeat, *, deadline_s: float
                        ) -> pb.HeartbeatReply | None:
        """One beat; None if the master could not be reached (logged)."""
        try:
            reply: pb.HeartbeatReply = await self.breaker.call(
                lambda: self._stub.Heartbeat(request, timeout=deadline_s)
            )
        except (grpc.aio.AioRpcError, CircuitOpen) as exc:
            logger.warning(
                "heartbeat to master failed: %s", _why(exc),
                extra={"action": "heartbeat_failed", "region": self._settings.name},
            )
            return None
        return reply

    async def report(self, events: list[pb.TaskEvent]) -> list[TaskRef]:
        """Deliver events (or raise); returns the attempts the master no longer owns."""
        request = pb.ReportRequest(region=self._settings.name, events=events)
        reply = await self.breaker.call(
            lambda: self._stub.Report(request, timeout=CALL_TIMEOUT_S)
        )
        logger.debug("master applied %d of %d events", reply.applied, len(events),
                     extra={"action": "reported", "region": self._settings.name})
        return [TaskRef(r.task_id, r.attempt) for r in reply.stale]

    async def hand_back(self, specs: Sequence[pb.TaskSpec], reason: str) -> None:
        request = pb.HandBackRequest(
            region=self._settings.name,
            tasks=[pb.TaskRef(task_id=s.id, attempt=s.attempt) for s in specs],
            reason=reason,
        )
        reply = await self.breaker.call(
            lambda: self._stub.HandBack(request, timeout=CALL_TIMEOUT_S))
        # Fewer back than sent: the rest were no longer ours (reclaimed, cancelled).
        logger.info(
            "master took back %d of %d tasks (%s)", reply.returned, len(specs), reason,
            extra={"action": "hand_back_done", "region": self._settings.name},
        )

    async def close(self) -> None:
        await self._channel.close(None)


def _why(exc: BaseException) -> str:
    return exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
