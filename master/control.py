"""What the REST API asks of the master, on top of the database."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import grpc

from strata.common.errors import Conflict, NotFound
from strata.common.models import NewTask, Task, TaskState
from strata.common.settings import MasterSettings
from strata.common.timeutil import from_unix, rfc3339
from strata.master.db import Database
from strata.master.regions import RegionClients
from strata.proto import strata_pb2 as pb

logger = logging.getLogger(__name__)

CANCEL_TIMEOUT_S = 2.0


class Control:
    def __init__(self, db: Database, regions: RegionClients, settings: MasterSettings) -> None:
        self._db = db
        self._regions = regions
        self._settings = settings

    async def insert(self, tasks: Sequence[NewTask]) -> None:
        await self._db.insert_tasks(tasks)

    async def create(self, tasks: Sequence[NewTask]) -> list[Task]:
        await self._db.insert_tasks(tasks)
        stored = []
        for t in tasks:
            task = await self._db.get_task(t.id)
            assert task is not None, "a task just inserted is there"
            stored.append(task)
        return stored

    async def get(self, task_id: uuid.UUID) -> Task:
        task = await self._db.get_task(task_id)
        if task is None:
            raise NotFound(f"no task {task_id}")
        return task

    async def list_tasks(
        self, *, state: str | None, region: str | None,
        after: tuple[datetime, uuid.UUID] | None, limit: int,
    ) -> list[Task]:
        return await self._db.list_tasks(state=state, region=region, after=after, limit=limit)

    async def cancel(self, task_id: uuid.UUID) -> Task:
        outcome = await self._db.cancel_task(task_id)
        if outcome is None:
            raise NotFound(f"no task {task_id}")
        if not outcome.cancelled:
            raise Conflict(f"task {task_id} is already {outcome.previous_state}")
        if outcome.previous_state in (TaskState.DISPATCHED, TaskState.RUNNING):
            await self._stop_in_region(task_id, outcome.assigned_region, outcome.attempt)
        return await self.get(task_id)

    async def _stop_in_region(self, task_id: uuid.UUID, region: str | None, attempt: int) -> None:
        """Best effort: the row is already cancelled, so a result that still comes is
        dropped by fencing; this only spares the worker the rest of the run."""
        if region is None:
            return
        address = next(
            (r.address for r in await self._db.list_regions(self._settings.region_dead_after)
             if r.name == region), None,
        )
        if address is None:
            return
        try:
            await self._regions.stub(region, address).Cancel(
                pb.CancelRequest(tasks=[pb.TaskRef(task_id=str(task_id), attempt=attempt)]),
                timeout=CANCEL_TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as exc:
            logger.warning(
                "could not tell %s to stop %s: %s", region, task_id, exc.code().name,
                extra={"action": "cancel_propagation_failed", "region": region},
            )

    async def stats(self) -> dict[str, Any]:
        counts = {s.value: 0 for s in TaskState}
        counts.update(await self._db.counts_by_state())
        regions = await self._db.list_regions(self._settings.region_dead_after)
        return {
            "counts": counts,
            "stale_results": sum(r.stale_results for r in regions),
        }

    async def regions(self) -> list[dict[str, Any]]:
        return [
            {
                "name": r.name,
                "address": r.address,
                "state": "up" if r.live else "down",
                "last_heartbeat": rfc3339(r.last_heartbeat),
                "capacity": r.capacity,
                "max_outstanding": r.max_outstanding,
                "running": r.running,
                "queued": r.queued,
                "workers": len(r.workers),
                "worker_ids": [w["id"] for w in r.workers],
                "stale_results": r.stale_results,
                # This master's breaker on its link to the region.
                "breaker": self._regions.breaker(r.name).snapshot(),
            }
            for r in await self._db.list_regions(self._settings.region_dead_after)
        ]

    async def workers(self) -> list[dict[str, Any]]:
        out = []
        for r in await self._db.list_regions(self._settings.region_dead_after):
            for w in r.workers:
                out.append(
                    {
                        "id": w["id"],
                        "region": r.name,
                        # The region lists only live workers; a silent region's are unknown.
                        "state": "up" if r.live else "unknown",
                        "capacity": w["capacity"],
                        "running": w["running"],
                        "last_heartbeat": rfc3339(from_unix(w["last_heartbeat"])),
                        "health_address": w.get("health_address") or None,
                    }
                )
        return out

    async def ping(self) -> None:
        await self._db.ping()
