"""What the REST API answers, as models: the response side of its OpenAPI document
(``strata.master.openapi``). Requests are validated by the models they always were
(``TaskOptions`` and the kinds' payloads); these describe the JSON the handlers write, and
the tests hold every response to them (schemathesis' response_schema_conformance).

Every model forbids fields it does not name, so a field added to a response without
being added here fails those tests instead of going undocumented.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from strata.common.breaker import BreakerState
from strata.common.models import MAX_BATCH, TaskState
from strata.common.schedules import Catchup, Overlap

AttemptOutcome = Literal[
    "succeeded", "failed", "timed_out", "reclaimed", "evicted", "returned", "cancelled",
    "stale",
]


def _drop_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


def _absent(description: str | None = None) -> Any:
    """A field that is absent rather than null when it has no value."""
    return Field(default=None, description=description, json_schema_extra=_drop_default)


class _Reply(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ErrorDetail(_Reply):
    code: str = Field(description="machine-readable: invalid_input, not_found, conflict, ...")
    message: str = Field(description="what was wrong, in words")


class Error(_Reply):
    """Every error, whatever its status."""

    error: ErrorDetail


class TaskResultOut(_Reply):
    """What the last attempt left (``strata.common.models.TaskResult``)."""

    exit_code: int | None
    output: str | None = Field(description="stdout, cut to its tail")
    stderr: str | None = Field(description="stderr, cut to its tail")
    error: str | None
    output_truncated: bool
    stderr_truncated: bool
    killed_processes: int = Field(
        description="processes the task left in its process group, killed when it ended")


class TaskOut(_Reply):
    """A task (``Task.to_json``)."""

    id: uuid.UUID
    kind: str
    payload: dict[str, object] = Field(description="the kind's fields, defaults filled in")
    state: TaskState
    priority: int
    run_at: datetime
    region: str | None = Field(
        description="where it runs or ran; until it is placed, the region it is pinned to")
    pinned_region: str | None
    worker_id: str | None
    attempt: int
    max_attempts: int
    timeout_s: float
    created_at: datetime
    picked_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    result: TaskResultOut
    retry_of: uuid.UUID | None
    idempotency_key: str | None
    depends_on: list[uuid.UUID] = Field(description="its parents, in the order given")
    on_upstream_failure: Literal["cancel", "run"]
    concurrency_key: str | None


class TaskDetail(TaskOut):
    """A task as ``GET /v1/tasks/{id}`` answers it: a waiting or pending one also says
    why."""

    waiting_for: str | SkipJsonSchema[None] = _absent(
        "only on a waiting or pending task: what it waits for, in words")
    dependents: list[uuid.UUID] = Field(
        max_length=1000, description="the tasks that depend on it: the first 1000, by id")


class GraphNode(_Reply):
    id: uuid.UUID
    kind: str
    state: TaskState
    priority: int
    depth: int = Field(description="edges away from the task asked for")
    label: str = Field(description="a few words: its command, handler or url")


class GraphEdge(_Reply):
    parent: uuid.UUID
    child: uuid.UUID


class TaskGraph(_Reply):
    """``GET /v1/tasks/{id}/graph``: the DAG around a task, nearest tasks first."""

    root: uuid.UUID
    nodes: list[GraphNode]
    edges: list[GraphEdge] = Field(description="the edges among the nodes given")
    truncated: bool = Field(description="whether more tasks lie within the depth asked")


class ConcurrencyKeyOut(_Reply):
    key: str
    limit: int | None = Field(description="null: no limit set")
    active: int = Field(description="its tasks dispatched or running now")
    pending: int = Field(description="its tasks waiting for a slot or their run_at")


class ConcurrencyKeys(_Reply):
    keys: list[ConcurrencyKeyOut] = Field(description="the keys with a limit, by key")


class BatchCreated(_Reply):
    ids: list[uuid.UUID] = Field(
        max_length=MAX_BATCH,
        description="in the batch's order: the task made now, or the one that already had "
                    "the item's idempotency key")
    existed: list[bool] = Field(max_length=MAX_BATCH,
                                description="per item: whether its task already existed")


class TaskPage(_Reply):
    tasks: list[TaskOut]
    next_cursor: str | None = Field(
        description="the next page's `cursor`; null on the last page")


class AttemptOut(_Reply):
    attempt: int
    region: str | None
    worker_id: str | None
    claimed_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    outcome: AttemptOutcome | None = Field(description="null for the attempt in flight")
    reason: str | None
    exit_code: int | None


class Attempts(_Reply):
    attempts: list[AttemptOut] = Field(description="oldest first, the one in flight last")


class StateCounts(_Reply):
    """How many tasks are in each state (one field per ``TaskState``)."""

    waiting: int
    pending: int
    dispatched: int
    running: int
    succeeded: int
    failed: int
    cancelled: int


class SeriesPoint(_Reply):
    at: datetime
    started: int
    finished: int
    failed: int
    p50_s: float | None
    p99_s: float | None


class RecentStats(_Reply):
    window_s: float
    started_per_s: float
    finished_per_s: float
    due_to_started_p50_s: float | None
    due_to_started_p99_s: float | None
    series: list[SeriesPoint]


class Stats(BaseModel):
    """The master's figures. Open to fields added later (extra="allow")."""

    model_config = ConfigDict(frozen=True, extra="allow")

    counts: StateCounts
    stale_results: int
    oldest_due_s: float | None = Field(
        default=None, description="how long the oldest due pending task has waited")
    recent: RecentStats | SkipJsonSchema[None] = _absent(
        "starts, finishes and due-to-started latency over the last window")


class BreakerOut(_Reply):
    state: BreakerState
    consecutive_failures: int
    opened: int


class RegionOut(_Reply):
    name: str
    address: str
    state: Literal["up", "down"]
    last_heartbeat: datetime | None
    capacity: int
    max_outstanding: int
    running: int
    queued: int
    workers: int
    worker_ids: list[str]
    stale_results: int
    master: str | None = Field(
        description="the master the region talks to: its heartbeats and reports go there, "
                    "and that master delegates the region's work")
    breaker: BreakerOut = Field(description="this master's breaker on its link to the region")


class Regions(_Reply):
    regions: list[RegionOut]


class WorkerOut(_Reply):
    id: str
    region: str
    state: Literal["up", "unknown"] = Field(
        description="a region lists only its live workers; a silent region's are unknown")
    capacity: int
    running: int
    last_heartbeat: datetime | None
    health_address: str | None


class Workers(_Reply):
    workers: list[WorkerOut]


class Health(_Reply):
    status: Literal["ok"]


class Ready(_Reply):
    status: Literal["ready"]


# Unix seconds datetime.fromtimestamp takes in UTC: 0001-01-01 to 9999-12-31T23:59:59.
MIN_UNIX_S = -62135596800
MAX_UNIX_S = 253402300799


class ScheduleRequest(BaseModel):
    """The TaskMaster-compatible ``POST /schedule`` body: a shell task."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    command: str = Field(min_length=1, max_length=65536)
    scheduled_at: datetime | Annotated[float, Field(ge=MIN_UNIX_S, le=MAX_UNIX_S)] | None = (
        Field(default=None, description=(
            "RFC 3339 text (an instant from 0001-01-01T00:00:00Z to "
            "9999-12-31T23:59:59.999999Z) or unix seconds; absent or null: now")))


class ScheduleReply(_Reply):
    command: str
    scheduled_at: float = Field(description="unix seconds (an integer when whole)")
    task_id: uuid.UUID


class StatusReply(_Reply):
    """The TaskMaster-compatible ``GET /status``: the times are there once set."""

    task_id: uuid.UUID
    command: str | None = Field(description="null for a task that is not a shell task")
    scheduled_at: datetime
    state: TaskState
    picked_at: datetime | SkipJsonSchema[None] = _absent()
    started_at: datetime | SkipJsonSchema[None] = _absent()
    completed_at: datetime | SkipJsonSchema[None] = _absent()
    failed_at: datetime | SkipJsonSchema[None] = _absent()


class TaskEventData(_Reply):
    """The data of one ``event: task`` of ``GET /v1/events``."""

    id: uuid.UUID
    state: TaskState
    attempt: int
    region: str | None
    worker_id: str | None
    at: datetime


# ---- schedules (POST /v1/schedules and the routes under it) --------------------------

FireOutcome = Literal["fired", "skipped_overlap", "missed"]


class Schedule(_Reply):
    """A schedule (``strata.master.control.schedule_json``): its spec, as stored, and
    where it stands."""

    name: str
    cron: str | None = Field(description="null for an every_s schedule")
    every_s: float | None = Field(description="null for a cron schedule")
    timezone: str = Field(description="the IANA time zone its cron expression is read in")
    task: dict[str, object] = Field(
        description="the task each fire makes, as given (a POST /v1/tasks body without "
                    "run_at, idempotency_key or depends_on)")
    overlap: Overlap
    catchup: Catchup
    start_at: datetime | None
    end_at: datetime | None
    paused: bool
    next_fire_at: datetime | None = Field(
        description="null when paused, or when no fire time is left before end_at")
    last_task_id: uuid.UUID | None = Field(description="the task of its last fire")
    created_at: datetime
    updated_at: datetime


class ScheduleList(_Reply):
    schedules: list[Schedule] = Field(description="by name")


class Fired(_Reply):
    """What ``POST /v1/schedules/{name}/trigger`` made: one fire, now."""

    fire_time: datetime
    task_id: uuid.UUID


class Fire(_Reply):
    """One fire time of a schedule and what became of it."""

    fire_time: datetime
    outcome: FireOutcome
    reason: str | None
    task_id: uuid.UUID | None = Field(description="the task it made; null unless fired")
    task_state: TaskState | None = Field(
        description="that task's state now; null without a task, or once it is deleted")
    recorded_at: datetime


class FirePage(_Reply):
    fires: list[Fire] = Field(description="newest first")
    next_before: datetime | None = Field(
        description="the next page's `before`; null on the last page")
