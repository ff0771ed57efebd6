"""The master's gRPC face: regions register, heartbeat, report events, hand work back.

With mutual TLS, each of these calls must come from the certificate of the region it
names (``strata:region:<name>``): a region cannot speak for another, and a worker's or
a client's certificate cannot speak for any. Others are refused PERMISSION_DENIED."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import grpc

from strata.common.errors import InvalidInput, NotFound, StrataError, Unavailable
from strata.common.events import Evicted, Finished, Report, Started, TaskRef
from strata.common.settings import MasterSettings
from strata.common.status import RegionStatus, workers_json
from strata.common.text import storable
from strata.common.timeutil import from_unix, utcnow
from strata.common.tls import is_region, require
from strata.master.db import Database
from strata.master.metrics import MasterMetrics
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
    """Output is whatever a process printed: repaired to text PostgreSQL can store."""
    return storable(value) or None


def _ref(message: pb.TaskRef | pb.TaskEvent) -> TaskRef:
    return TaskRef.parse(message.task_id, message.attempt)


def split_events(region: str, events: list[pb.TaskEvent]) -> Report:
    """Parse a report at the edge (a malformed task id is InvalidInput). A task that
    started and finished within one batch needs only its result: the result carries
    started_at."""
    returned: list[TaskRef] = []
    evicted: list[Evicted] = []
    finished: dict[TaskRef, Finished] = {}
    started: dict[TaskRef, Started] = {}
    for e in events:
        ref = _ref(e)
        if e.type == pb.EVENT_TYPE_STARTED:
            started[ref] = Started(
                id=ref.id, attempt=ref.attempt, worker_id=e.worker_id,
                started_at=from_unix(e.started_at) or utcnow(),
            )
        elif e.type in (pb.EVENT_TYPE_SUCCEEDED, pb.EVENT_TYPE_FAILED):
            finished[ref] = Finished(
                id=ref.id, attempt=ref.attempt,
                ok=e.type == pb.EVENT_TYPE_SUCCEEDED, worker_id=e.worker_id,
                started_at=from_unix(e.started_at),
                finished_at=from_unix(e.finished_at) or utcnow(),
                exit_code=e.exit_code if e.has_exit_code else None,
                output=_text(e.output), error=_text(e.error), stderr=_text(e.stderr),
                output_truncated=e.output_truncated, stderr_truncated=e.stderr_truncated,
                killed_processes=e.killed_processes, timed_out=e.timed_out,
                # Its start came in this batch too (applied from the result, below), or
                # its worker never sent it: the master learns of the start from this.
                start_unreported=e.start_unreported or ref in started,
            )
        elif e.type == pb.EVENT_TYPE_RETURNED:
            returned.append(ref)
        elif e.type == pb.EVENT_TYPE_EVICTED:
            evicted.append(Evicted(id=ref.id, attempt=ref.attempt, worker_id=e.worker_id,
                                   reason=_text(e.error) or "its worker died"))
    done = finished.keys() | set(returned)
    only_started = [s for ref, s in started.items() if ref not in done]
    return Report(region=region, started=only_started, finished=list(finished.values()),
                  returned=returned, evicted=evicted)


# Events applied in one transaction at most: reports that wait beyond it go in the next.
APPLY_BATCH = 20_000


class Applier:
    """Reports of every region applied together: those that come while a transaction
    is applying others wait for it, and then go in one transaction of their own. So a
    master's cost per task does not grow with the number of regions that share its
    load: more regions send smaller reports, and they merge here. A lone report is
    applied at once."""

    def __init__(self, db: Database, settings: MasterSettings, metrics: MasterMetrics,
                 on_capacity: Callable[[], None]) -> None:
        self._db = db
        self._settings = settings
        self._metrics = metrics
        self._on_capacity = on_capacity
        self._waiting: list[tuple[Report, asyncio.Future[list[TaskRef]]]] = []
        self._applying: asyncio.Task[None] | None = None

    async def apply(self, report: Report) -> list[TaskRef]:
        """Apply ``report`` (with whatever else is waiting); its stale attempts. The
        transaction goes on if the caller is cancelled: the report is applied once."""
        done: asyncio.Future[list[TaskRef]] = asyncio.get_running_loop().create_future()
        self._waiting.append((report, done))
        if self._applying is None:
            self._applying = asyncio.create_task(self._apply_waiting(), name="apply-reports")
        return await asyncio.shield(done)

    async def _apply_waiting(self) -> None:
        try:
            while self._waiting:
                batch: list[tuple[Report, asyncio.Future[list[TaskRef]]]] = []
                size = 0
                while self._waiting and (not batch or size < APPLY_BATCH):
                    report, done = self._waiting.pop(0)
                    batch.append((report, done))
                    size += len(report.started) + len(report.finished) + len(report.returned)
                try:
                    await self._apply(batch)
                except Exception as exc:
                    if len(batch) == 1 or isinstance(exc, Unavailable):
                        _fail(batch, exc)
                        continue
                    # One report the database refuses must not fail the others with
                    # it: each alone, then.
                    for one in batch:
                        try:
                            await self._apply([one])
                        except Exception as alone:
                            _fail([one], alone)
        finally:
            self._applying = None

    async def _apply(self, batch: list[tuple[Report, asyncio.Future[list[TaskRef]]]]
                     ) -> None:
        reports = [r for r, _ in batch]
        applied, stale = await self._db.apply_reports(
            reports, backoff_base=self._settings.retry_backoff_base,
            backoff_max=self._settings.retry_backoff_max)
        self._metrics.applied(reports, applied)
        for (_, done), refs in zip(batch, stale, strict=True):
            if not done.done():
                done.set_result(refs)
        if any(r.finished or r.returned for r in reports):
            self._on_capacity()


def _fail(batch: list[tuple[Report, asyncio.Future[list[TaskRef]]]], exc: Exception) -> None:
    for _, done in batch:
        if not done.done():
            done.set_exception(exc)


class MasterService:
    def __init__(
        self, db: Database, settings: MasterSettings, on_capacity: Callable[[], None],
        metrics: MasterMetrics | None = None, *, mtls: bool = False,
        instance: str | None = None,
    ) -> None:
        self._db = db
        self._instance = instance  # a region that registers or beats here is ours
        self._mtls = mtls
        self._metrics = metrics or MasterMetrics()
        self._settings = settings
        self._on_capacity = on_capacity
        self._reconcile_grace = max(
            RECONCILE_GRACE, 3 * settings.heartbeat_interval
        )
        self._applier = Applier(db, settings, self._metrics, on_capacity)
        # Each region's room (what it may hold less what it holds) at its last beat here.
        self._rooms: dict[str, int] = {}

    async def _authorize(self, region: str, method: str,
                         context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if self._mtls:
            await require(context, is_region(region), f"region {region}'s certificate",
                          method)

    @grpc_errors
    async def Register(
        self, request: pb.RegisterRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.RegisterReply:
        await self._authorize(request.region, "Register", context)
        await self._db.upsert_region(RegionStatus(name=request.region, address=request.address),
                                     self._instance)
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
        await self._authorize(request.region, "Heartbeat", context)
        # Only attempts claimed well before the list was taken: younger ones may still be
        # on their way to the region.
        taken = min(from_unix(request.built_at) or utcnow(), utcnow())
        previous, lost = await self._db.beat_region(
            RegionStatus(
                name=request.region, address=request.address, capacity=request.capacity,
                max_outstanding=request.max_outstanding, running=request.running,
                queued=request.queued,
            ),
            workers_json(request.workers), self._instance,
            [_ref(r) for r in request.held], taken - self._reconcile_grace,
        )
        if previous == "down":
            logger.warning(
                "region %s is back; its old attempts were reclaimed", request.region,
                extra={"action": "region_back", "region": request.region},
            )
        elif lost:
            self._metrics.reclaimed.labels("not_held").inc(lost)
            logger.warning(
                "region %s does not hold %d attempts dispatched to it; reclaimed",
                request.region, lost,
                extra={"action": "tasks_reconciled", "region": request.region, "count": lost},
            )
            self._on_capacity()
        # Room the region did not have at its last beat here: the scanner may fill it.
        # A region that beats with the same room as before is no news (most beats): a
        # thousand idle regions must not wake the scanner a thousand times a second.
        room = request.max_outstanding - request.running - request.queued
        before = self._rooms.get(request.region)
        self._rooms[request.region] = room
        if room > 0 and (before is None or room > before or previous == "down"):
            self._on_capacity()
        # known=False: everything the region holds was reclaimed while it was down.
        return pb.HeartbeatReply(known=previous != "down")

    @grpc_errors
    async def Report(
        self, request: pb.ReportRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ReportReply:
        await self._authorize(request.region, "Report", context)
        report = split_events(request.region, list(request.events))
        stale = await self._applier.apply(report)
        if stale:
            logger.warning(
                "dropped %d stale events from %s", len(stale), request.region,
                extra={"action": "stale_results_dropped", "region": request.region},
            )
        return pb.ReportReply(
            applied=len(report.started) + len(report.finished) - len(stale),
            stale=[pb.TaskRef(task_id=r.id, attempt=r.attempt) for r in stale],
        )

    @grpc_errors
    async def HandBack(
        self, request: pb.HandBackRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.HandBackReply:
        await self._authorize(request.region, "HandBack", context)
        refs = [_ref(t) for t in request.tasks]
        returned = await self._db.return_to_pending(
            refs, f"handed back by region {request.region}: "
                  f"{_text(request.reason) or 'no reason given'}")
        self._metrics.reclaimed.labels("returned").inc(returned)
        logger.info(
            "region %s handed back %d tasks (%s)", request.region, returned, request.reason,
            extra={"action": "tasks_handed_back", "region": request.region},
        )
        self._on_capacity()
        return pb.HandBackReply(returned=returned)
