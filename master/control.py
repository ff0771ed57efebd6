"""What the REST API asks of the master, on top of the database."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import grpc
from aiohttp import web

from strata.common.errors import Conflict, InvalidInput, NotFound
from strata.common.metrics import response, set_breakers
from strata.common.models import NewTask, Task, TaskState
from strata.common.schedules import TIMING_FIELDS, ScheduleSpec, patched
from strata.common.settings import MasterSettings
from strata.common.timeutil import from_unix, rfc3339, utcnow
from strata.master.db import (
    Attempt,
    ConcurrencyKey,
    Database,
    Fired,
    Inserted,
    ScheduleRow,
)
from strata.master.metrics import MasterMetrics
from strata.master.regions import RegionClients
from strata.master.schedules import Scheduler, first_fire, trigger_plan
from strata.proto import strata_pb2 as pb

logger = logging.getLogger(__name__)

CANCEL_TIMEOUT_S = 2.0
MAX_DEPENDENTS = 1000


class Control:
    def __init__(self, db: Database, regions: RegionClients, settings: MasterSettings,
                 metrics: MasterMetrics | None = None) -> None:
        self._db = db
        self._regions = regions
        self._settings = settings
        self.metrics = metrics or MasterMetrics()
        self.scheduler = Scheduler(db, self.metrics, on_cancelled=self._stop_cancelled_soon)
        self._stopping: set[asyncio.Task[None]] = set()

    def _stop_cancelled_soon(self, fired: Fired) -> None:
        task = asyncio.get_running_loop().create_task(self.stop_cancelled(fired))
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    async def create(self, tasks: Sequence[NewTask]) -> Inserted:
        """The one way tasks are created (single, batch, /schedule, retry): one INSERT
        that returns what the database chose, nothing read back, and the tasks that
        already had the idempotency keys asked for. A task pinned to a region nobody has
        heard of would wait forever: that is refused."""
        await self._known_regions([t.region for t in tasks])
        # Returns their created_at, the one value the database chose: a caller that
        # answers with whole tasks builds them with Task.created (a batch of ten
        # thousand answers with ids alone).
        inserted = await self._db.insert_tasks(tasks)
        self.metrics.created.inc(len(tasks) - len(inserted.existing))
        return inserted

    async def create_one(self, task: NewTask) -> tuple[Task, bool]:
        """The task, and whether it is new (False: its idempotency key was taken)."""
        inserted = await self.create([task])
        if task.idempotency_key is not None and task.idempotency_key in inserted.existing:
            return inserted.existing[task.idempotency_key], False
        assert inserted.created_at is not None
        if task.depends_on:  # waiting, pending or cancelled, as its parents stand
            return await self.get(task.id), True
        return Task.created(task, inserted.created_at), True

    async def get(self, task_id: uuid.UUID) -> Task:
        task = await self._db.get_task(task_id)
        if task is None:
            raise NotFound(f"no task {task_id}")
        return task

    async def attempts(self, task_id: uuid.UUID) -> list[dict[str, Any]]:
        """Every attempt of the task: those that ended, from the history, and the one in
        flight, from the task itself (no outcome yet)."""
        task = await self.get(task_id)
        ended = await self._db.attempts(task_id)
        if task.state in (TaskState.DISPATCHED, TaskState.RUNNING):
            ended.append(Attempt(
                attempt=task.attempt, region=task.assigned_region, worker_id=task.worker_id,
                claimed_at=task.claimed_at, started_at=task.started_at, finished_at=None,
                outcome=None, reason=None, exit_code=None,
            ))
        return [
            {
                "attempt": a.attempt, "region": a.region, "worker_id": a.worker_id,
                "claimed_at": rfc3339(a.claimed_at), "started_at": rfc3339(a.started_at),
                "finished_at": rfc3339(a.finished_at), "outcome": a.outcome,
                "reason": a.reason, "exit_code": a.exit_code,
            }
            for a in ended
        ]

    async def waiting_for(self, task: Task) -> str | None:
        """Why a waiting or pending task has not started yet, in words; None if it is
        neither."""
        if task.state is TaskState.WAITING:
            # A task that runs whatever its parents did waits for them to end.
            outcome = "end" if task.run_on_upstream_failure else "succeed"
            return (f"{task.waiting_on} of its {len(task.depends_on)} parents to {outcome}"
                    if len(task.depends_on) > 1 else f"its parent to {outcome}")
        if task.state is not TaskState.PENDING:
            return None
        now = utcnow()
        if task.run_at > now:
            return f"its run_at, {rfc3339(task.run_at)}"
        if task.region is not None:
            live = (await self._db.region_names(self._settings.region_dead_after)).get(
                task.region)
            if live is None:
                return f"region {task.region}, which is not registered"
            if not live:
                return f"region {task.region}, which is down"
            return f"a free slot in region {task.region}"
        return "a free slot in any live region"

    async def dependents(self, task_id: uuid.UUID) -> list[str]:
        """The tasks that depend on it: the first MAX_DEPENDENTS, by id (the graph route
        walks the rest)."""
        return [str(c) for c in await self._db.dependents(task_id, MAX_DEPENDENTS)]

    async def graph(self, task_id: uuid.UUID, *, limit: int, depth: int) -> dict[str, Any]:
        """The DAG around a task: its nearest ancestors and descendants, as nodes and the
        edges among them."""
        await self.get(task_id)
        nodes = await self._db.task_graph(task_id, limit=limit + 1, depth=depth)
        truncated = len(nodes) > limit
        nodes = nodes[:limit]
        kept = {n.id for n in nodes}
        return {
            "root": str(task_id),
            "nodes": [{"id": str(n.id), "kind": n.kind, "state": n.state,
                       "priority": n.priority, "depth": n.depth,
                       "label": _label(n.kind, n.payload)} for n in nodes],
            "edges": [{"parent": str(p), "child": str(n.id)}
                      for n in nodes for p in n.depends_on if p in kept],
            "truncated": truncated,
        }

    async def reprioritize(self, task_id: uuid.UUID, priority: int) -> Task:
        task = await self._db.reprioritize(task_id, priority)
        if task is None:
            now = await self.get(task_id)  # 404 if there is no such task
            raise Conflict(f"task {task_id} is {now.state.value}: only a task that has not "
                           "started (waiting or pending) can change its priority")
        logger.info("task %s priority now %d", task_id, priority,
                    extra={"action": "task_reprioritized", "task": str(task_id)})
        return task

    async def set_concurrency(self, key: str, limit: int) -> dict[str, Any]:
        await self._db.set_concurrency_limit(key, limit)
        logger.info("concurrency key %s limited to %d", key, limit,
                    extra={"action": "concurrency_limit_set"})
        return await self.concurrency(key)

    async def concurrency(self, key: str) -> dict[str, Any]:
        (found,) = await self._db.concurrency_keys(key)
        return _key_json(found)

    async def concurrency_keys(self) -> list[dict[str, Any]]:
        return [_key_json(k) for k in await self._db.concurrency_keys()]

    async def clear_concurrency(self, key: str) -> None:
        if not await self._db.clear_concurrency_limit(key):
            raise NotFound(f"concurrency key {key!r} has no limit")

    async def retry(self, task_id: uuid.UUID) -> Task:
        """Run a failed or cancelled task again, as a new task that names it."""
        old = await self.get(task_id)
        if old.state not in (TaskState.FAILED, TaskState.CANCELLED):
            raise Conflict(
                f"task {task_id} is {old.state.value}: only a failed or cancelled task "
                "can be retried")
        new = NewTask(
            id=uuid.uuid4(), kind=old.kind, payload=old.payload, run_at=utcnow(),
            priority=old.priority, region=old.region, max_attempts=old.max_attempts,
            timeout_s=old.timeout_s, retry_of=old.id,
        )
        created, _ = await self.create_one(new)
        logger.info("task %s retried as %s", old.id, created.id,
                    extra={"action": "task_retried", "task": str(old.id)})
        return created

    async def delete_region(self, name: str) -> None:
        outcome = await self._db.delete_region(name, self._settings.region_dead_after)
        if outcome is None:
            raise NotFound(f"no region {name}")
        if outcome.live:
            raise Conflict(f"region {name} is up: only a region that is down can be removed")
        if not outcome.deleted:
            raise Conflict(
                f"region {name} still has {outcome.tasks} unfinished tasks pinned or "
                "assigned to it: cancel them first")
        logger.info("region %s removed", name,
                    extra={"action": "region_removed", "region": name})

    async def list_tasks(
        self, *, state: str | None, region: str | None, kind: str | None,
        after: tuple[datetime, uuid.UUID] | None, limit: int, newest_first: bool,
    ) -> list[Task]:
        return await self._db.list_tasks(state=state, region=region, kind=kind, after=after,
                                         limit=limit, newest_first=newest_first)

    async def cancel(self, task_id: uuid.UUID) -> Task:
        outcome = await self._db.cancel_task(task_id)
        if outcome is None:
            raise NotFound(f"no task {task_id}")
        if not outcome.cancelled:
            raise Conflict(f"task {task_id} is already {outcome.previous_state}")
        self.metrics.finished.labels("cancelled").inc()
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
            reply = await self._regions.stub(region, address).Cancel(
                pb.CancelRequest(tasks=[pb.TaskRef(task_id=str(task_id), attempt=attempt)]),
                timeout=CANCEL_TIMEOUT_S,
            )
            logger.info(
                "asked %s to stop %s: %s", region, task_id,
                "stopping it" if reply.cancelled else "it no longer held it",
                extra={"action": "cancel_propagated", "region": region},
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
        oldest = await self._db.oldest_due()
        return {
            "counts": counts,
            "stale_results": sum(r.stale_results for r in regions),
            # How long the task that has waited longest since it came due has waited.
            "oldest_due_s": (utcnow() - oldest).total_seconds() if oldest else None,
            # Of what this master applied.
            "recent": self.metrics.recent.snapshot(),
        }

    async def render_metrics(self) -> web.Response:
        """``/metrics``: counters as this master applied them; gauges of the cluster, read
        from what the database keeps counted (never the tasks table)."""
        m = self.metrics
        counts = {s.value: 0 for s in TaskState}
        counts.update(await self._db.counts_by_state())
        for state, n in counts.items():
            m.tasks.labels(state).set(n)
        for r in await self._db.list_regions(self._settings.region_dead_after):
            m.region_up.labels(r.name).set(1 if r.live else 0)
            m.region_capacity.labels(r.name).set(r.capacity)
            m.region_queued.labels(r.name).set(r.queued)
            m.region_running.labels(r.name).set(r.running)
        set_breakers(m.breaker_open, self._regions.breakers())
        return response(m.registry)

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
                "worker_ids": [w.id for w in r.workers],
                "stale_results": r.stale_results,
                "master": r.master,
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
                        "id": w.id,
                        "region": r.name,
                        # The region lists only live workers; a silent region's are unknown.
                        "state": "up" if r.live else "unknown",
                        "capacity": w.capacity,
                        "running": w.running,
                        "last_heartbeat": rfc3339(from_unix(w.last_heartbeat)),
                        "health_address": w.health_address,
                    }
                )
        return out

    async def ping(self) -> None:
        await self._db.ping()

    # ---- schedules ------------------------------------------------------------------

    async def create_schedule(self, spec: ScheduleSpec) -> dict[str, Any]:
        await self._known_regions([spec.task.get("region")])
        now = utcnow()
        row = await self._db.schedules.create(spec, first_fire(spec, now, now))
        logger.info("schedule %s created", spec.name,
                    extra={"action": "schedule_created", "schedule": spec.name})
        self.scheduler.wake()
        return schedule_json(row)

    async def schedule(self, name: str) -> ScheduleRow:
        row = await self._db.schedules.get(name)
        if row is None:
            raise NotFound(f"no schedule {name}")
        return row

    async def schedules(self) -> list[dict[str, Any]]:
        return [schedule_json(r) for r in await self._db.schedules.all()]

    async def change_schedule(self, name: str, changes: Any) -> dict[str, Any]:
        row = await self.schedule(name)
        spec = patched(row.spec, changes)
        await self._known_regions([spec.task.get("region")])
        timing = TIMING_FIELDS | {"paused"}
        next_fire_at = row.next_fire_at
        if any(getattr(spec, f) != getattr(row.spec, f) for f in timing):
            # When it fires changed (or it is resumed): from now on, by the new rule;
            # the times it was paused over are not fires it missed.
            now = utcnow()
            next_fire_at = first_fire(spec, now, row.created_at)
        updated = await self._db.schedules.update(spec, next_fire_at)
        if updated is None:
            raise NotFound(f"no schedule {name}")
        self.scheduler.wake()
        return schedule_json(updated)

    async def delete_schedule(self, name: str) -> None:
        if not await self._db.schedules.delete(name):
            raise NotFound(f"no schedule {name}")
        logger.info("schedule %s deleted", name,
                    extra={"action": "schedule_deleted", "schedule": name})

    async def trigger_schedule(self, name: str) -> dict[str, Any]:
        fired = await self._db.schedules.fire(name, trigger_plan, lead_s=None)
        if fired is None:
            raise NotFound(f"no schedule {name}")
        self.scheduler.account(fired)
        if not fired.fires:
            # A fire of this schedule at this very microsecond is recorded already.
            raise Conflict(f"schedule {name} fired at that very time already: trigger again")
        (fire,) = fired.fires
        assert fire.task is not None
        return {"fire_time": rfc3339(fire.fire_time), "task_id": str(fire.task.id)}

    async def schedule_fires(self, name: str, before: datetime | None, limit: int
                             ) -> list[dict[str, Any]]:
        await self.schedule(name)
        return [
            {"fire_time": rfc3339(f["fire_time"]), "outcome": f["outcome"],
             "reason": f["reason"],
             "task_id": str(f["task_id"]) if f["task_id"] else None,
             "task_state": f["task_state"], "recorded_at": rfc3339(f["recorded_at"])}
            for f in await self._db.schedules.fires(name, before, limit)
        ]

    async def stop_cancelled(self, fired: Fired) -> None:
        for task_id, outcome in fired.cancelled:
            if outcome.previous_state in (TaskState.DISPATCHED, TaskState.RUNNING):
                await self._stop_in_region(task_id, outcome.assigned_region, outcome.attempt)

    async def _known_regions(self, pins: list[str | None]) -> None:
        wanted = {p for p in pins if p is not None}
        if not wanted:
            return
        known = await self._db.region_names(self._settings.region_dead_after)
        unknown = sorted(wanted - known.keys())
        if unknown:
            raise InvalidInput(
                f"region: no region named {', '.join(map(repr, unknown))}; known regions: "
                + (", ".join(sorted(known)) or "none yet"))


def _label(kind: str, payload: dict[str, Any]) -> str:
    """A few words for a node of a drawn graph."""
    text = payload.get("command") or payload.get("handler") or payload.get("url") or kind
    return str(text)[:60]


def _key_json(key: ConcurrencyKey) -> dict[str, Any]:
    return {"key": key.key, "limit": key.limit, "active": key.active,
            "pending": key.pending}


def schedule_json(row: ScheduleRow) -> dict[str, Any]:
    out = row.spec.model_dump(mode="json")
    out["start_at"] = rfc3339(row.spec.start_at)
    out["end_at"] = rfc3339(row.spec.end_at)
    out.update({
        "next_fire_at": rfc3339(row.next_fire_at) if not row.spec.paused else None,
        "last_task_id": str(row.last_task_id) if row.last_task_id else None,
        "created_at": rfc3339(row.created_at),
        "updated_at": rfc3339(row.updated_at),
    })
    return out
