"""Domain models. Everything that arrives (REST body, row, gRPC message) becomes
one of these frozen, keyword-only models as soon as it crosses the edge."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
)

from strata.common.errors import InvalidInput
from strata.common.kinds import KINDS, PAYLOADS
from strata.common.timeutil import as_utc, rfc3339, utcnow

REGION_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
MAX_BATCH = 10_000
MAX_IDEMPOTENCY_KEY = 200
MAX_PARENTS = MAX_BATCH  # a fan-in of a whole batch
MAX_KEY = 200  # a batch item's key, and a concurrency key
DEFAULT_TIMEOUT_S = 3600.0


class TaskState(StrEnum):
    WAITING = "waiting"  # on parents that have not ended (depends_on)
    PENDING = "pending"
    DISPATCHED = "dispatched"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED})


def _parse_when(value: Any) -> datetime:
    """ISO 8601 / RFC 3339 text; a naive time is taken as UTC."""
    if isinstance(value, datetime):
        return as_utc(value)
    if not isinstance(value, str):
        raise ValueError("must be an ISO 8601 date-time string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"not an ISO 8601 date-time: {value!r}") from None
    try:
        return as_utc(parsed)
    except OverflowError:
        raise ValueError(f"out of range in UTC: {value!r}") from None


When = Annotated[datetime, BeforeValidator(_parse_when)]
StrictFloat = Annotated[float, Strict(False), BeforeValidator(lambda v: _number(v))]
# A JSON integer: 5, and 5.0 too (the same number in JSON, and an integer to JSON Schema),
# but never 5.5, "5" or true.
JsonInt = Annotated[int, BeforeValidator(lambda v: _integer(v))]


def _number(value: Any) -> float:
    # bool is an int in Python; JSON true is never a number here.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a number")
    return float(value)


def _integer(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value  # left to the int validation (strict: no bool, no text, no fraction)


class TaskOptions(BaseModel):
    """The fields every kind shares."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    run_at: When | None = Field(default=None, description=(
        "when it is due (absent: now); RFC 3339, an instant from 0001-01-01T00:00:00Z to "
        "9999-12-31T23:59:59.999999Z"))
    priority: JsonInt = Field(default=0, ge=-(2**31), le=2**31 - 1)
    region: str | None = Field(default=None, pattern=REGION_NAME_PATTERN)
    max_attempts: JsonInt = Field(default=1, ge=1, le=100)
    timeout_s: StrictFloat = Field(default=DEFAULT_TIMEOUT_S, gt=0, le=7 * 86400)
    # A create that names a key already taken returns that task instead of a new one.
    idempotency_key: str | None = Field(default=None, min_length=1,
                                        max_length=MAX_IDEMPOTENCY_KEY)
    depends_on: list[Annotated[str, Field(min_length=1, max_length=MAX_KEY)]] = Field(
        default_factory=list, max_length=MAX_PARENTS, description=(
            "tasks that must succeed before it runs: task ids, or in a batch the keys of "
            "other items of the same batch"))
    on_upstream_failure: Literal["cancel", "run"] = Field(default="cancel", description=(
        "when a parent fails or is cancelled: cancel this task (and its own dependents), "
        "or run it anyway"))
    concurrency_key: str | None = Field(default=None, min_length=1, max_length=MAX_KEY,
                                        description=(
        "tasks sharing a key are claimed round-robin with other keys, and at most the "
        "key's limit (PUT /v1/concurrency/{key}) of them are in flight at once"))


OPTION_FIELDS = frozenset(TaskOptions.model_fields)


class NewTask(BaseModel):
    """A validated task, ready to insert."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: uuid.UUID
    kind: str
    payload: dict[str, Any]
    run_at: datetime
    priority: int
    region: str | None
    max_attempts: int
    timeout_s: float
    retry_of: uuid.UUID | None = None
    schedule: str | None = None  # the schedule that fired it
    idempotency_key: str | None = None
    depends_on: tuple[uuid.UUID, ...] = ()  # parents, in the order given
    run_on_upstream_failure: bool = False
    concurrency_key: str | None = None
    # What the client asked for, normalised (defaults filled in, run_at only as given):
    # a second create with the same key must ask for the same, or it is refused.
    fingerprint: str | None = None


def _fingerprint(kind: str, payload: dict[str, Any], options: TaskOptions) -> str:
    asked = {"kind": kind, "payload": payload,
             **options.model_dump(mode="json", exclude={"idempotency_key"})}
    text = json.dumps(asked, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def error_text(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "body"
        message = err["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


def parse_new_task(body: Any, *, now: datetime | None = None, task_id: uuid.UUID | None = None,
                   keys: Mapping[str, uuid.UUID] | None = None) -> NewTask:
    """Validate one task body of ``POST /v1/tasks`` (or an item of a batch, whose items
    have ``keys``: a parent named by one of them is that item); raises InvalidInput."""
    if not isinstance(body, Mapping):
        raise InvalidInput("a task must be a JSON object")
    if "key" in body and keys is None:
        raise InvalidInput("key: only the items of a batch (POST /v1/tasks/batch) have keys")
    kind = body.get("kind")
    if not isinstance(kind, str):
        raise InvalidInput("kind: required, one of " + ", ".join(KINDS))
    if kind not in PAYLOADS:
        raise InvalidInput(f"kind: unknown kind {kind!r}; expected one of " + ", ".join(KINDS))
    option_part = {k: v for k, v in body.items() if k in OPTION_FIELDS}
    kind_part = {k: v for k, v in body.items() if k not in OPTION_FIELDS and k != "kind"}
    try:
        options = TaskOptions.model_validate(option_part)
        payload = PAYLOADS[kind].model_validate(kind_part)
    except ValidationError as exc:
        raise InvalidInput(error_text(exc)) from None
    dumped = payload.model_dump(mode="json")
    key = options.idempotency_key
    return NewTask(
        id=task_id or uuid.uuid4(),
        kind=kind,
        payload=dumped,
        run_at=options.run_at or now or utcnow(),
        priority=options.priority,
        region=options.region,
        max_attempts=options.max_attempts,
        timeout_s=options.timeout_s,
        idempotency_key=key,
        fingerprint=_fingerprint(kind, dumped, options) if key is not None else None,
        depends_on=_parents(options.depends_on, keys or {}),
        run_on_upstream_failure=options.on_upstream_failure == "run",
        concurrency_key=options.concurrency_key,
    )


def _parents(named: list[str], keys: Mapping[str, uuid.UUID]) -> tuple[uuid.UUID, ...]:
    """Each parent once, in the order given: an item of the batch by its key, else a task
    id."""
    parents: dict[uuid.UUID, None] = {}
    for index, name in enumerate(named):
        parent = keys.get(name)
        if parent is None:
            try:
                parent = uuid.UUID(name)
            except ValueError:
                where = "no item of this batch has that key, and it" if keys else "it"
                raise InvalidInput(f"depends_on[{index}]: {name!r}: {where} is not a task id"
                                   ) from None
        parents[parent] = None
    return tuple(parents)


def graph_order(tasks: list[NewTask]) -> list[NewTask]:
    """The tasks with every parent that is in the list before its children (Kahn's
    order); a cycle, or a task that is its own parent, is refused."""
    index = {t.id: i for i, t in enumerate(tasks)}
    children: dict[int, list[int]] = {}
    unmet = [0] * len(tasks)
    for i, task in enumerate(tasks):
        for parent in task.depends_on:
            j = index.get(parent)
            if j is None:
                continue
            if j == i:
                raise InvalidInput(f"tasks[{i}]: depends_on: a task cannot depend on itself")
            children.setdefault(j, []).append(i)
            unmet[i] += 1
    ready = [i for i, n in enumerate(unmet) if n == 0]
    order = []
    while ready:
        i = ready.pop()
        order.append(i)
        for child in children.get(i, ()):
            unmet[child] -= 1
            if unmet[child] == 0:
                ready.append(child)
    if len(order) < len(tasks):
        stuck = [i for i, n in enumerate(unmet) if n > 0]
        raise InvalidInput(
            "depends_on: the batch's dependencies make a cycle (among "
            + ", ".join(f"tasks[{i}]" for i in stuck[:10])
            + (", ..." if len(stuck) > 10 else "") + ")")
    return [tasks[i] for i in order]


def parse_batch(body: Any) -> list[NewTask]:
    if not isinstance(body, Mapping) or not isinstance(body.get("tasks"), list):
        raise InvalidInput('a batch must be a JSON object {"tasks": [...]}')
    unknown = sorted(str(k) for k in body if k != "tasks")
    if unknown:  # as anywhere else: a misspelt field is refused, never ignored
        raise InvalidInput(f"unknown fields: {', '.join(unknown)}; a batch has only tasks")
    items = body["tasks"]
    if not items:
        raise InvalidInput("tasks: must hold at least one task")
    if len(items) > MAX_BATCH:
        raise InvalidInput(f"tasks: at most {MAX_BATCH} tasks per batch, got {len(items)}")
    now = utcnow()
    ids = [uuid.uuid4() for _ in items]
    keys: dict[str, uuid.UUID] = {}
    for index, item in enumerate(items):
        key = item.get("key") if isinstance(item, Mapping) else None
        if key is None:
            continue
        if not isinstance(key, str) or not 1 <= len(key) <= MAX_KEY:
            raise InvalidInput(f"tasks[{index}]: key: must be a string of 1 to {MAX_KEY} "
                               "characters")
        if key in keys:
            raise InvalidInput(f"tasks[{index}]: key {key!r} is also the key of "
                               f"tasks[{ids.index(keys[key])}]: keys must be unique in a batch")
        keys[key] = ids[index]
    tasks = []
    for index, item in enumerate(items):
        body = {k: v for k, v in item.items() if k != "key"} if isinstance(item, Mapping) else item
        try:
            tasks.append(parse_new_task(body, now=now, task_id=ids[index], keys=keys))
        except InvalidInput as exc:
            raise InvalidInput(f"tasks[{index}]: {exc}") from None
    if any(t.depends_on for t in tasks):
        graph_order(tasks)  # refuses a cycle before anything is written
    first: dict[str, int] = {}
    for index, task in enumerate(tasks):
        if task.idempotency_key is None:
            continue
        seen = first.setdefault(task.idempotency_key, index)
        if seen != index:
            raise InvalidInput(
                f"tasks[{index}]: idempotency_key {task.idempotency_key!r} is also the key "
                f"of tasks[{seen}]: each item of a batch needs a key of its own")
    return tasks


@dataclass(frozen=True, slots=True)
class Start:
    """The state a new task with parents starts in."""

    state: str  # waiting, pending, or cancelled (a parent had failed already)
    waiting_on: int = 0
    error: str | None = None


def plan_graph(ordered: list[NewTask], outside: Mapping[uuid.UUID, str]
               ) -> dict[uuid.UUID, Start]:
    """Where each new task starts, parents first (``graph_order``): ``outside`` holds the
    states, as locked, of the parents that are not new. A parent that succeeded counts
    for nothing; one that failed or was cancelled cancels its child (and so the child's
    own children in the batch), unless the child runs whatever its parents did."""
    plan: dict[uuid.UUID, Start] = {}
    # Of a cancelled task, the task whose failure was the cause.
    root: dict[uuid.UUID, uuid.UUID] = {}
    for task in ordered:
        unfinished = 0
        doomed_by: uuid.UUID | None = None
        for parent in task.depends_on:
            start = plan.get(parent)
            state = start.state if start is not None else outside[parent]
            if state == TaskState.SUCCEEDED:
                continue
            if state in (TaskState.FAILED, TaskState.CANCELLED):
                if not task.run_on_upstream_failure and doomed_by is None:
                    doomed_by = root.get(parent, parent)
                continue
            unfinished += 1
        if doomed_by is not None:
            root[task.id] = doomed_by
            plan[task.id] = Start(TaskState.CANCELLED, error=f"upstream {doomed_by} failed")
        elif unfinished:
            plan[task.id] = Start(TaskState.WAITING, waiting_on=unfinished)
        else:
            plan[task.id] = Start(TaskState.PENDING)
    return plan


class TaskResult(BaseModel):
    """What the last attempt left: ``output`` is its stdout and ``stderr`` its stderr,
    each cut to its tail (the ``*_truncated`` flags say so) by the worker."""

    model_config = ConfigDict(frozen=True)

    exit_code: int | None = None
    output: str | None = None
    stderr: str | None = None
    error: str | None = None
    output_truncated: bool = False
    stderr_truncated: bool = False
    # Processes the task left running in its process group, killed when it ended.
    killed_processes: int = 0


class Task(BaseModel):
    """A task as stored."""

    model_config = ConfigDict(frozen=True)

    id: uuid.UUID
    kind: str
    payload: dict[str, Any]
    state: TaskState
    priority: int
    run_at: datetime
    region: str | None
    assigned_region: str | None
    worker_id: str | None
    attempt: int
    max_attempts: int
    timeout_s: float
    created_at: datetime
    picked_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    result: TaskResult
    retry_of: uuid.UUID | None = None
    idempotency_key: str | None = None
    claimed_at: datetime | None = None  # when the current attempt was claimed
    depends_on: tuple[uuid.UUID, ...] = ()
    run_on_upstream_failure: bool = False
    concurrency_key: str | None = None
    waiting_on: int = 0  # parents not ended yet

    @classmethod
    def created(cls, new: NewTask, created_at: datetime) -> Task:
        """The row ``new`` became, from the one value the database chose."""
        return cls(
            id=new.id, kind=new.kind, payload=new.payload, state=TaskState.PENDING,
            priority=new.priority, run_at=new.run_at, region=new.region,
            assigned_region=None, worker_id=None, attempt=0, max_attempts=new.max_attempts,
            timeout_s=new.timeout_s, created_at=created_at, picked_at=None, started_at=None,
            finished_at=None, result=TaskResult(), retry_of=new.retry_of,
            idempotency_key=new.idempotency_key, depends_on=new.depends_on,
            run_on_upstream_failure=new.run_on_upstream_failure,
            concurrency_key=new.concurrency_key,
        )

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Task:
        payload = row["payload"]
        if isinstance(payload, str):
            payload = json.loads(payload)
        return cls(
            id=row["id"],
            kind=row["kind"],
            payload=payload,
            state=TaskState(row["state"]),
            priority=row["priority"],
            # A run_at of 0001-01-01T00:00:00Z (9999-12-31T23:59:59.999999Z) is stored as
            # -infinity (infinity), which asyncpg reads back naive.
            run_at=as_utc(row["run_at"]),
            region=row["region"],
            assigned_region=row["assigned_region"],
            worker_id=row["worker_id"],
            attempt=row["attempt"],
            max_attempts=row["max_attempts"],
            timeout_s=row["timeout_s"],
            created_at=row["created_at"],
            picked_at=row["picked_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            result=TaskResult(
                exit_code=row["exit_code"], output=row["output"], stderr=row["stderr"],
                error=row["error"], output_truncated=row["output_truncated"],
                stderr_truncated=row["stderr_truncated"],
                killed_processes=row["killed_processes"],
            ),
            retry_of=row["retry_of"],
            idempotency_key=row["idempotency_key"],
            claimed_at=row["claimed_at"],
            depends_on=tuple(row["depends_on"] or ()),
            run_on_upstream_failure=row["run_on_upstream_failure"],
            concurrency_key=row["concurrency_key"],
            waiting_on=row["waiting_on"],
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "kind": self.kind,
            "payload": self.payload,
            "state": self.state.value,
            "priority": self.priority,
            "run_at": rfc3339(self.run_at),
            # Where it runs (or ran); until it is placed, the region it is pinned to.
            "region": self.assigned_region or self.region,
            "pinned_region": self.region,
            "worker_id": self.worker_id,
            "attempt": self.attempt,
            "max_attempts": self.max_attempts,
            "timeout_s": self.timeout_s,
            "created_at": rfc3339(self.created_at),
            "picked_at": rfc3339(self.picked_at),
            "started_at": rfc3339(self.started_at),
            "finished_at": rfc3339(self.finished_at),
            "result": self.result.model_dump(),
            "retry_of": str(self.retry_of) if self.retry_of else None,
            "idempotency_key": self.idempotency_key,
            "depends_on": [str(p) for p in self.depends_on],
            "on_upstream_failure": "run" if self.run_on_upstream_failure else "cancel",
            "concurrency_key": self.concurrency_key,
        }
