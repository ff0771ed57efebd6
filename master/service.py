"""The master's gRPC face: regions register, heartbeat, report events, hand work back."""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import grpc

from strata.common.errors import InvalidInput, NotFound, StrataError, Unavailable
from strata.common.settings import MasterSettings
from strata.common.timeutil import from_unix, utcnow
from strata.master.db import Database, Finished, Started
from strata.proto import strata_pb2 as pb

logger = logging.getLogger(__name__)

# Longer than a delegation can take (deadline and retry) plus a heartbeat in flight.
RECONCILE_GRACE = timedelta(seconds=5)

Handler = Callable[[Any, Any, "grpc.aio.ServicerContext[Any, Any]"], Awaitable[Any]]

# The one place where our errors become gRPC status codes.
_CODES: dict[type[StrataError], grpc.StatusCode] = {
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
}


def grpc_errors(fn: Handler) -> Handler:
    @functools.wraps(fn)
    async def inner(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await fn(self, request, context)
        except StrataError as exc:
            code = next((c for cls, c in _CODES.items() if isinstance(exc, cls)),
                        grpc.StatusCode.INTERNAL)
            await context.abort(code, str(exc))

    return inner


def _text(value: str) -> str | None:
    """Output is whatever a process printed; PostgreSQL text cannot hold NUL."""
    return value.replace("\x00", "\ufffd") or None


@dataclass(frozen=True, slots=True)
class Report:
    started: list[Started]
    finished: list[Finished]
    returned: list[tuple[uuid.UUID, int]]


def split_events(events: list[pb.TaskEvent]) -> Report:
    """Parse a report at the edge. A task that started and finished within one
    batch needs only its result: the result carries started_at."""
    returned: list[tuple[uuid.UUID, int]] = []
    finished: dict[tuple[str, int], Finished] = {}
    started: dict[tuple[str, int], Started] = {}
    for e in events:
        key = (e.task_id, e.attempt)
        if e.type == pb.EVENT_TYPE_STARTED:
            started[key] = Started(
                id=uuid.UUID(e.task_id), attempt=e.attempt, worker_id=e.worker_id,
                started_at=from_unix(e.started_at) or utcnow(),
            )
        elif e.type in (pb.EVENT_TYPE_SUCCEEDED, pb.EVENT_TYPE_FAILED):
            finished[key] = Finished(
                id=uuid.UUID(e.task_id), attempt=e.attempt,
                ok=e.type == pb.EVENT_TYPE_SUCCEEDED, worker_id=e.worker_id,
                started_at=from_unix(e.started_at),
                finished_at=from_unix(e.finished_at) or utcnow(),
                exit_code=e.exit_code if e.has_exit_code else None,
                output=_text(e.output), error=_text(e.error),
            )
        elif e.type == pb.EVENT_TYPE_RETURNED:
            returned.append((uuid.UUID(e.task_id), e.attempt))
    done = finished.keys() | {(str(i), a) for i, a in returned}
    only_started = [s for key, s in started.items() if key not in done]
    return Report(started=only_started, finished=list(finished.values()), returned=returned)


class MasterService:
    def __init__(
        self, db: Database, settings: MasterSettings, on_capacity: Callable[[], None]
    ) -> None:
        self._db = db
        self._settings = settings
        self._on_capacity = on_capacity
        self._reconcile_grace = max(
            RECONCILE_GRACE, 3 * settings.heartbeat_interval
        )

    @grpc_errors
    async def Register(
        self, request: pb.RegisterRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.RegisterReply:
        await self._db.upsert_region(
            name=request.region, address=request.address, capacity=0, max_outstanding=0,
            running=0, queued=0, workers=[],
        )
        logger.info(
            "region %s registered at %s", request.region, request.address,
            extra={"action": "region_registered", "region": request.region},
        )
        return pb.RegisterReply(
            heartbeat_interval_s=self._settings.heartbeat_interval.total_seconds(),
            lease_s=self._settings.region_dead_after.total_seconds(),
        )

    @grpc_errors
    async def Heartbeat(
        self, request: pb.RegionHeartbeat, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.HeartbeatReply:
        workers = [
            {"id": w.id, "capacity": w.capacity, "running": w.running,
             "last_heartbeat": w.last_heartbeat, "health_address": w.health_address}
            for w in request.workers
        ]
        previous = await self._db.upsert_region(
            name=request.region, address=request.address, capacity=request.capacity,
            max_outstanding=request.max_outstanding, running=request.running,
            queued=request.queued, workers=workers,
        )
        if previous == "down":
            logger.warning(
                "region %s is back; its old attempts were reclaimed", request.region,
                extra={"action": "region_back", "region": request.region},
            )
        else:
            await self._reconcile(request)
        if request.max_outstanding > request.running + request.queued:
            self._on_capacity()
        # known=False: everything the region holds was reclaimed while it was down.
        return pb.HeartbeatReply(known=previous != "down")

    async def _reconcile(self, request: pb.RegionHeartbeat) -> None:
        # Only attempts claimed well before the list was taken: younger ones may still be
        # on their way to the region.
        taken = min(from_unix(request.built_at) or utcnow(), utcnow())
        cutoff = taken - self._reconcile_grace
        held = [(uuid.UUID(r.task_id), r.attempt) for r in request.held]
        lost = await self._db.reconcile_region(request.region, held, cutoff)
        if lost:
            logger.warning(
                "region %s does not hold %d attempts dispatched to it; reclaimed",
                request.region, lost,
                extra={"action": "tasks_reconciled", "region": request.region, "count": lost},
            )
            self._on_capacity()

    @grpc_errors
    async def Report(
        self, request: pb.ReportRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ReportReply:
        report = split_events(list(request.events))
        started, finished = report.started, report.finished
        if report.returned:
            await self._db.return_to_pending(report.returned)
        stale = await self._db.apply_events(
            started, finished,
            backoff_base=self._settings.retry_backoff_base,
            backoff_max=self._settings.retry_backoff_max,
        )
        if stale:
            await self._db.count_stale(request.region, len(stale))
            logger.warning(
                "dropped %d stale events from %s", len(stale), request.region,
                extra={"action": "stale_results_dropped", "region": request.region},
            )
        if finished or report.returned:
            self._on_capacity()
        return pb.ReportReply(
            applied=len(started) + len(finished) - len(stale),
            stale=[pb.TaskRef(task_id=str(i), attempt=a) for i, a in stale],
        )

    @grpc_errors
    async def HandBack(
        self, request: pb.HandBackRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.HandBackReply:
        refs = [(uuid.UUID(t.task_id), t.attempt) for t in request.tasks]
        returned = await self._db.return_to_pending(refs)
        logger.info(
            "region %s handed back %d tasks (%s)", request.region, returned, request.reason,
            extra={"action": "tasks_handed_back", "region": request.region},
        )
        self._on_capacity()
        return pb.HandBackReply(returned=returned)
