"""The one module that talks to PostgreSQL. Everything else gets models back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any, ParamSpec, TypeVar

import asyncpg

from strata.common.errors import Conflict, DatabaseUnavailable, InvalidInput
from strata.common.events import Evicted, Finished, Report, Started, TaskRef
from strata.common.models import NewTask, Task, TaskState, graph_order, plan_graph
from strata.common.retry import Backoff, keep_trying, of_type
from strata.common.schedules import ScheduleSpec
from strata.common.status import RegionStatus, WorkerInfo, workers_json
from strata.common.timeutil import as_utc

logger = logging.getLogger(__name__)

NOTIFY_CHANNEL = "strata_tasks"
EVENT_CHANNEL = "strata_events"  # task events: see migration 0008
# Any constant works; it only has to be the same in every master.
MIGRATION_LOCK_ID = 0x5157A7A0
RECLAIMER_LOCK_ID = 0x5157A7A1
RETENTION_LOCK_ID = 0x5157A7A2
AGING_LOCK_ID = 0x5157A7A3
# What VACUUM runs over after retention removed rows (constants: never user input).
TASK_TABLES = ("tasks", "attempts", "schedule_fires")
# Claims read only tasks due within this: those due later wait in an index of their own
# (one more write each, when the scanner promotes them this long before they are due).
# Longer, fewer tasks pay that write; shorter, claims walk past fewer tasks not yet due.
CLAIM_HORIZON = timedelta(minutes=1)
# The sessions that read due work and list tasks: see Database.connect.
INDEX_ORDER_SETTINGS = {"enable_seqscan": "off", "enable_bitmapscan": "off",
                        "enable_sort": "off"}
# Every session: no JIT compilation. Each statement here is short, and a plan with a
# disabled path (the settings above, RELEASE_SETTINGS) costs over jit_above_cost by
# far, so a server built with LLVM (most packaged ones; pgserver's is not) would spend
# about 350 ms compiling every claim: 351 tasks/s instead of thousands.
SESSION_SETTINGS = {"jit": "off"}

# The statements that release children read every task by key, and join sets of them
# by hashing, never in a nested loop: so must their plans, made once for any number of
# parents and children (planning them each time costs more than running them), whatever
# the statistics said when they were made. A nested loop over a set guessed small (a
# chain's one child) would make releasing ten thousand children quadratic.
RELEASE_SETTINGS = ("SET LOCAL enable_seqscan = off; SET LOCAL enable_nestloop = off; "
                    "SET LOCAL plan_cache_mode = force_generic_plan")

P = ParamSpec("P")
R = TypeVar("R")

_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    # A session the server ends while a statement is on it can leave the driver in a
    # state it reports this way (MagicStack/asyncpg#1069): the connection is gone too.
    asyncpg.InternalClientError,
    TimeoutError,
)
_PROBE_ERRORS: tuple[type[BaseException], ...] = (TimeoutError, *_CONNECTION_ERRORS)


def _load_queries() -> dict[str, str]:
    text = resources.files("strata.sql").joinpath("queries.sql").read_text()
    queries: dict[str, str] = {}
    for block in re.split(r"^-- name: ", text, flags=re.MULTILINE)[1:]:
        name, _, body = block.partition("\n")
        queries[name.strip()] = body.strip()
    return queries


def _migrations() -> list[tuple[int, str, str]]:
    folder = resources.files("strata.sql").joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        match = re.match(r"^(\d+)_.*\.sql$", entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text()))
    return sorted(found)


Q = _load_queries()


def listing(state: str | None, *, newest_first: bool = False) -> str:
    """The statement that lists tasks in ``state`` (None: in every state), oldest first
    or newest; parameters as list_tasks_branch's. Of every state, the states' branches
    merged in created order, each read in order from its own index: the page and one
    row more of each state, whatever the table holds."""
    states = [TaskState(state).value] if state is not None else [s.value for s in TaskState]
    if newest_first:
        bound = ("(created_at, id) < (coalesce($3::timestamptz, 'infinity'), "
                 "coalesce($4::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'))")
        order = "created_at DESC, id DESC"
    else:
        bound = ("(created_at, id) > (coalesce($3::timestamptz, '-infinity'), "
                 "coalesce($4::uuid, '00000000-0000-0000-0000-000000000000'))")
        order = "created_at, id"
    branches = [f"{Q['list_tasks_branch'].format(state=s, bound=bound)}\n"
                f"ORDER BY {order}\nLIMIT $5" for s in states]
    if len(branches) == 1:
        return branches[0]
    # Each branch ordered and limited, in a union in FROM: only so does the planner merge
    # them (Merge Append), reading each no further than the page needs.
    union = "\nUNION ALL\n".join(f"({b})" for b in branches)
    return f"SELECT * FROM (\n{union}\n) AS listed\nORDER BY {order}\nLIMIT $5"


LISTINGS = {(state, newest): listing(state, newest_first=newest)
            for state in (None, *(s.value for s in TaskState)) for newest in (False, True)}


# A cutoff no attempt was claimed before: a beat with it reconciles nothing.
NOTHING_CLAIMED_BEFORE = datetime(1970, 1, 1, tzinfo=UTC)


# The claim indexes' order, and their predicates (migrations 0005 and 0011).
CLAIM_ORDER = "priority DESC, run_at"
CLAIM_INDEXES = (
    ("claim", "", "state = 'pending' AND near AND region IS NULL AND concurrency_key IS NULL"),
    ("claim_pinned", "region, ",
     "state = 'pending' AND near AND region IS NOT NULL AND concurrency_key IS NULL"),
    ("claim_keyed", "concurrency_key, ",
     "state = 'pending' AND near AND concurrency_key IS NOT NULL"),
)


@dataclass(frozen=True, slots=True)
class Aging:
    """Priority aging: a due task's priority grows by ``rate`` points a minute past its
    run_at, so that none starves. Claims then go by priority + rate * minutes waited,
    which at any one moment orders tasks as priority - rate * run_at (in minutes) does:
    a value of the row alone, indexed (one index per claim index, for this rate) so that
    a claim still reads only what it takes."""

    rate: float = 0.0

    @property
    def key(self) -> str:
        # The rate as written in SQL: a literal, so that claims match the index.
        return f"(priority - {self.rate!r}::float8 * strata_minutes(run_at))"

    def order(self, sql: str) -> str:
        """A claim statement, ordered for this rate."""
        if not self.rate:
            return sql
        assert CLAIM_ORDER in sql
        return sql.replace(CLAIM_ORDER, f"{self.key} DESC")

    def indexes(self) -> list[tuple[str, str]]:
        """(name, definition) of the indexes claims read under this rate."""
        if not self.rate:
            return []
        suffix = re.sub(r"[^0-9a-z]", "_", repr(self.rate).lower())
        return [(f"tasks_{name}_aged_{suffix}_idx",
                 f"ON tasks ({columns}{self.key} DESC) WHERE {predicate}")
                for name, columns, predicate in CLAIM_INDEXES]

    def claim_order(self, claimed: Claimed) -> tuple[float, datetime]:
        """What a claim's own order is, for sorting in Python."""
        aged = float(claimed.priority)
        if self.rate:
            try:
                aged -= self.rate * claimed.run_at.timestamp() / 60
            except (OverflowError, ValueError, OSError):  # an infinite run_at
                aged = float("inf") if claimed.run_at.year == 1 else float("-inf")
        return (-aged, claimed.run_at)


@dataclass(slots=True)
class Applied:
    """What a report changed. Of the starts it applied, in seconds, as the statements
    work them out (arrays, one row a statement: nothing per task to decode): claimed to
    started (None where unknown), due to started, and from the death of the attempt
    before to this start (only where there was one); the schedule of those a schedule
    fired, with their lag from their fire time."""

    stale: list[TaskRef] = field(default_factory=list)
    finished: dict[str, int] = field(default_factory=dict)  # by the state each was left in
    evicted: int = 0
    returned: int = 0
    to_started: list[float | None] = field(default_factory=list)
    hop_regions: list[str] = field(default_factory=list)  # the region of each to_started
    due_to_started: list[float] = field(default_factory=list)
    rescued: list[float] = field(default_factory=list)
    schedules: list[str] = field(default_factory=list)
    schedule_lags: list[float] = field(default_factory=list)
    ended: list[uuid.UUID] = field(default_factory=list)  # with children to release
    failed: list[uuid.UUID] = field(default_factory=list)  # of those, the failed ones

    def add(self, row: Any) -> None:
        """One statement's row (mark_started, mark_finished)."""
        self.stale += [TaskRef(str(i), a)
                       for i, a in zip(row["stale_ids"], row["stale_attempts"], strict=True)]
        if row["states"] is not None:
            self.finished.update(zip(row["states"], row["counts"], strict=True))
        self.to_started += row["to_started"]
        self.hop_regions += row["hop_regions"]
        self.due_to_started += row["due_to_started"]
        self.rescued += row["rescued"]
        self.schedules += row["schedules"]
        self.schedule_lags += row["schedule_lags"]
        if row["ended"] is not None:
            self.ended += row["ended"]
            self.failed += row["failed"]


def _rows(status: str) -> int:
    """The row count of a command status (``INSERT 0 5``, ``SELECT 5``)."""
    return int(status.rsplit(" ", 1)[-1])


@dataclass(frozen=True, slots=True, kw_only=True)
class Claimed:
    id: uuid.UUID
    attempt: int
    kind: str
    payload_json: str
    timeout_s: float
    priority: int
    run_at: datetime
    parent_outputs_json: str = ""  # {"<parent id>": output, ...} of a task with parents

    @property
    def ref(self) -> TaskRef:
        return TaskRef(str(self.id), self.attempt)


@dataclass(frozen=True, slots=True, kw_only=True)
class Inserted:
    """What a create wrote: the ``created_at`` every new task got (None if none was
    new), and the tasks that already had the idempotency keys asked for, by key."""

    created_at: datetime | None
    existing: dict[str, Task]


@dataclass(frozen=True, slots=True, kw_only=True)
class Attempt:
    """One attempt of a task, as it ended (or, with no outcome, as it runs)."""

    attempt: int
    region: str | None
    worker_id: str | None
    claimed_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    outcome: str | None
    reason: str | None
    exit_code: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class RegionRoom:
    name: str
    address: str
    room: int
    # The smallest batch worth a delegation while the region's queue is fuller than
    # this: half of what it queues beyond its slots (at least 1). Its workers still have
    # the other half in hand, and a region that frees room a report at a time gets its
    # work in fewer, larger batches: a claim and a Delegate each, whatever their size.
    floor: int = 1

    def takes_a_batch(self, most: int) -> bool:
        """Whether a delegation of up to ``most`` tasks is worth making now."""
        return self.room >= min(self.floor, most)


@dataclass(frozen=True, slots=True, kw_only=True)
class Rooms:
    regions: list[RegionRoom]  # the live ones
    # Tasks with a concurrency key are due (claims then go key by key); False when no
    # region is live.
    keyed_due: bool
    # How many due tasks these regions could take, up to what was asked (0 when no
    # count was asked for, or no region is live).
    due: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class RegionRow:
    name: str
    address: str
    state: str
    live: bool
    registered_at: datetime
    last_heartbeat: datetime
    capacity: int
    max_outstanding: int
    running: int
    queued: int
    workers: list[WorkerInfo]
    stale_results: int
    master: str | None  # the master it talks to


@dataclass(frozen=True, slots=True, kw_only=True)
class RegionDeletion:
    live: bool
    tasks: int  # unfinished tasks that name it
    deleted: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelOutcome:
    previous_state: str
    assigned_region: str | None
    attempt: int
    cancelled: bool


async def release_dependents(conn: Any, ended: Sequence[uuid.UUID],
                             failed: Sequence[uuid.UUID]) -> None:
    """Release (or cancel) the children of tasks that ended in the transaction ``conn``
    is in (``failed``: those of them that failed or were cancelled). Runs the rest of
    the transaction under RELEASE_SETTINGS."""
    if not ended:
        return
    await conn.execute(RELEASE_SETTINGS)
    parents = list(ended)
    if failed:
        # A walk down the edges, a level at a time: by key, in nested loops.
        await conn.execute("SET LOCAL enable_nestloop = on")
        doomed = await conn.fetchrow(Q["doomed_dependents"], list(failed))
        await conn.execute("SET LOCAL enable_nestloop = off")
        if doomed["ids"]:
            # Cancelled: their children that run anyway are released below.
            parents += await conn.fetchval(Q["cancel_doomed"], doomed["ids"], doomed["roots"])
    await conn.fetchrow(Q["release_dependents"], parents, CLAIM_HORIZON.total_seconds())


async def _cancel(conn: Any, task_id: uuid.UUID) -> CancelOutcome | None:
    """Cancel one task in ``conn``'s transaction, and what hangs on it."""
    row = await conn.fetchrow(Q["cancel_task"], task_id)
    if row is None:
        return None
    if row["cancelled"] and row["has_dependents"]:
        await release_dependents(conn, [task_id], [task_id])
    return CancelOutcome(previous_state=row["state"], assigned_region=row["assigned_region"],
                         attempt=row["attempt"], cancelled=row["cancelled"])


@dataclass(frozen=True, slots=True, kw_only=True)
class GraphNode:
    id: uuid.UUID
    kind: str
    state: str
    priority: int
    depends_on: tuple[uuid.UUID, ...]
    depth: int
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class ConcurrencyKey:
    key: str
    limit: int | None
    active: int
    pending: int


async def _keep_session(conn: Any) -> None:
    """Skip asyncpg's reset query (a round trip on every release): pooled sessions set no
    state. Connections that hold some (LISTEN, advisory locks) never go back to the pool:
    see ``Database._held_connection``. asyncpg still rolls back any open transaction
    before this is called."""


class Listener:
    """The scanner's LISTEN connection. ``probe`` proves it still delivers: a NOTIFY sent
    on a channel of its own must come back in time. A half-open connection (the server
    or the network gone without a word) fails the probe instead of going quiet."""

    def __init__(self, conn: Any, callback: Callable[[], None]) -> None:
        self._conn = conn
        self._callback = callback
        self._echo = asyncio.Event()
        self.probe_channel = f"strata_probe_{uuid.uuid4().hex}"

    def on_notify(self, *_: object) -> None:
        self._callback()

    def on_probe(self, *_: object) -> None:
        self._echo.set()

    def alive(self) -> bool:
        return not self._conn.is_closed()

    async def probe(self, timeout_s: float) -> None:
        self._echo.clear()
        try:
            async with asyncio.timeout(timeout_s):
                await self._conn.execute("SELECT pg_notify($1, '')", self.probe_channel)
                await self._echo.wait()
        except _PROBE_ERRORS as exc:
            raise DatabaseUnavailable(
                f"the LISTEN connection did not answer its probe within {timeout_s}s"
            ) from exc


def _wrap(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Turn a lost connection into DatabaseUnavailable, where the driver error enters."""

    async def inner(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except _CONNECTION_ERRORS as exc:
            raise DatabaseUnavailable(f"database unreachable: {exc}") from exc

    inner.__name__ = fn.__name__
    inner.__doc__ = fn.__doc__
    return inner


@dataclass(slots=True)
class _Round:
    """Events of several reports that name each attempt once, with the report (index)
    and region of each."""

    started: list[tuple[int, str, Started]] = field(default_factory=list)
    finished: list[tuple[int, str, Finished]] = field(default_factory=list)

    def owners(self) -> dict[tuple[str, int], int]:
        owner = {(e.id, e.attempt): i for i, _, e in self.started}
        owner.update({(e.id, e.attempt): i for i, _, e in self.finished})
        return owner


class _Merged:
    """Several reports as one. The starts and results go in rounds: the first of each
    attempt in the first round, an attempt named again (by a later report) in the next,
    and so on, so that every statement names an attempt once and the later events find
    what the earlier ones did, as when the reports are applied one after the other."""

    def __init__(self, reports: Sequence[Report]) -> None:
        self.reports = reports
        self.returned: list[TaskRef] = [r for report in reports for r in report.returned]
        self.evicted: list[tuple[str, Evicted]] = [
            (report.region, e) for report in reports for e in report.evicted]
        self.rounds: list[_Round] = []
        seen: dict[tuple[str, int], int] = {}  # attempt -> the rounds it is in
        for i, report in enumerate(reports):
            for e in report.started:
                self._round(seen, e.id, e.attempt).started.append((i, report.region, e))
            for f in report.finished:
                self._round(seen, f.id, f.attempt).finished.append((i, report.region, f))

    def _round(self, seen: dict[tuple[str, int], int], task: str, attempt: int) -> _Round:
        n = seen.get((task, attempt), 0)
        seen[(task, attempt)] = n + 1
        if n == len(self.rounds):
            self.rounds.append(_Round())
        return self.rounds[n]

    def stale_counts(self, stale: list[list[TaskRef]]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for report, refs in zip(self.reports, stale, strict=True):
            if refs:
                counts[report.region] = counts.get(report.region, 0) + len(refs)
        return counts


class Database:
    def __init__(self, pool: asyncpg.Pool, planned_pool: asyncpg.Pool, *,
                 priority_aging: float = 0.0) -> None:
        self._pool = pool
        self._planned_pool = planned_pool
        self.schedules = Schedules(pool)
        self.tokens = Tokens(pool)
        self._key_cursor = ""  # where the next fair claim starts among the keys
        self.aging = Aging(priority_aging)
        self._claim_due = self.aging.order(Q["claim_due"])
        self._claim_fair_sql = self.aging.order(Q["claim_fair"])

    @classmethod
    async def connect(
        cls, dsn: str, *, pool_size: int = 8, command_timeout_s: float = 10.0,
        priority_aging: float = 0.0,
    ) -> Database:
        def pool(size: int, **server_settings: str) -> asyncpg.Pool:
            return asyncpg.create_pool(
                dsn, min_size=1, max_size=size, command_timeout=command_timeout_s,
                timeout=command_timeout_s, reset=_keep_session,
                server_settings={**SESSION_SETTINGS, **server_settings},
            )

        try:
            main = await pool(pool_size)
            try:
                # Reads of due work and listings walk a partial index in its order, and
                # must whatever the table holds. A prepared statement's cached plan is
                # made once, for the table as it was (nearly empty, at start-up): a
                # sort or a scan of the table is as cheap as the index then, and with
                # a backlog every claim would sort it whole. On these sessions the
                # planner takes the index wherever there is one, so the cached plan
                # holds at any size and costs no planning per call.
                planned = await pool(3, **INDEX_ORDER_SETTINGS)
            except BaseException:
                await main.close()
                raise
        except _CONNECTION_ERRORS as exc:
            raise DatabaseUnavailable(f"database unreachable: {exc}") from exc
        return cls(main, planned, priority_aging=priority_aging)

    async def close(self) -> None:
        await self._planned_pool.close()
        await self._pool.close()

    # ---- schema -----------------------------------------------------------

    @_wrap
    async def migrate(self) -> list[str]:
        """Apply pending migrations. Safe when several masters start at once: the
        advisory lock makes the others wait, then find nothing left to do."""
        applied = []
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_ID)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for version, name, text in _migrations():
                if version in done:
                    continue
                await conn.execute(text)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
                )
                applied.append(name)
        return applied

    @_wrap
    async def prepare_aging(self) -> list[str]:
        """Make the indexes claims read under this master's priority aging (if any and
        if missing); returns those made. CONCURRENTLY: writes go on meanwhile. One master
        at a time: the others wait, then find them made."""
        made = []
        async with self._held_connection() as conn:
            await conn.execute("SELECT pg_advisory_lock($1)", AGING_LOCK_ID)
            for name, definition in self.aging.indexes():
                valid = await conn.fetchval(
                    "SELECT i.indisvalid FROM pg_index AS i JOIN pg_class AS c"
                    " ON c.oid = i.indexrelid WHERE c.relname = $1", name)
                if valid:
                    continue
                if valid is not None:  # a build that was cut short: start again
                    await conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
                await conn.execute(f"CREATE INDEX CONCURRENTLY {name} {definition}")
                made.append(name)
        return made

    @_wrap
    async def ping(self) -> None:
        async with self._pool.acquire() as conn:
            await conn.fetchval("SELECT 1")

    @asynccontextmanager
    async def listen(self, callback: Callable[[], None]) -> AsyncIterator[Listener]:
        """Hold a connection LISTENing on the task channel for as long as the block runs."""
        async with self._held_connection() as conn:
            listener = Listener(conn, callback)
            await conn.add_listener(NOTIFY_CHANNEL, listener.on_notify)
            await conn.add_listener(listener.probe_channel, listener.on_probe)
            yield listener

    @asynccontextmanager
    async def listen_events(
        self, callback: Callable[[Any, int, str, object], None]
    ) -> AsyncIterator[Callable[[], bool]]:
        """Hold a connection LISTENing on the event channel; yields a check that is False
        once that connection is lost."""
        async with self._held_connection() as conn:
            await conn.add_listener(EVENT_CHANNEL, callback)
            yield lambda: not conn.is_closed()

    @_wrap
    async def register_event_listener(self, master: str, ttl_s: float) -> None:
        """Publish task events for the next ``ttl_s`` seconds: this master has
        subscribers."""
        await self._pool.execute(Q["register_event_listener"], master, ttl_s)

    @_wrap
    async def unregister_event_listener(self, master: str) -> None:
        await self._pool.execute("DELETE FROM event_listeners WHERE master = $1", master)

    @asynccontextmanager
    async def singleton(self, lock_id: int) -> AsyncIterator[Callable[[], bool] | None]:
        """Try to become the one holder of an advisory lock (a singleton duty among
        masters). Yields None if another holds it, else a check that is False once the
        connection holding the lock is lost (and with it the lock). The lock goes with
        its connection, which is closed afterwards, never reused."""
        async with self._held_connection() as conn:
            got = await conn.fetchval("SELECT pg_try_advisory_lock($1)", lock_id)
            yield (lambda: not conn.is_closed()) if got else None

    @asynccontextmanager
    async def _held_connection(self) -> AsyncIterator[Any]:
        """A connection taken out of the pool for good: whatever session state it gathers
        (listeners, advisory locks) must never reach another user of the pool, so it is
        closed afterwards, which also releases that state on the server."""
        try:
            conn = await self._pool.acquire()
        except _CONNECTION_ERRORS as exc:
            raise DatabaseUnavailable(f"database unreachable: {exc}") from exc
        try:
            yield conn
        except _CONNECTION_ERRORS as exc:
            raise DatabaseUnavailable(f"database unreachable: {exc}") from exc
        finally:
            # Dropped at once, not closed politely: on a half-open link a polite close
            # would wait for a server that is not listening. The server ends the session
            # (and its locks) when the socket closes; the pool replaces the connection.
            with contextlib.suppress(asyncpg.InterfaceError):  # the pool let it go already
                if not conn.is_closed():
                    conn.terminate()
            await self._pool.release(conn)

    # ---- tasks ------------------------------------------------------------

    @_wrap
    async def insert_tasks(self, tasks: Sequence[NewTask]) -> Inserted:
        """Insert in one statement. A task whose idempotency key another task has is not
        inserted: that task is returned instead, if it was asked for the same way;
        otherwise nothing is written and Conflict is raised."""
        columns = _task_columns(tasks)
        horizon = CLAIM_HORIZON.total_seconds()
        if any(t.depends_on for t in tasks):
            try:
                return await self._insert_graph(tasks)
            except asyncpg.UniqueViolationError:
                raise Conflict("a create with one of these idempotency keys ran at the same "
                               "time: send it again") from None
        if all(t.idempotency_key is None for t in tasks):
            created_at = await self._pool.fetchval(
                Q["insert_tasks"], *columns, horizon, [t.schedule for t in tasks])
            return Inserted(created_at=created_at, existing={})
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                Q["insert_keyed_tasks"], *columns, [t.idempotency_key for t in tasks],
                [t.fingerprint for t in tasks], horizon)
            inserted = set(row["ids"] or ())
            clashed = {t.idempotency_key: t for t in tasks
                       if t.id not in inserted and t.idempotency_key is not None}
            existing = {}
            if clashed:
                for r in await conn.fetch(Q["tasks_by_key"], list(clashed)):
                    if r["fingerprint"] != clashed[r["idempotency_key"]].fingerprint:
                        raise Conflict(
                            f"idempotency_key {r['idempotency_key']!r} is the key of task "
                            f"{r['id']}, which was asked for differently: a retry must "
                            "send the same body")
                    existing[r["idempotency_key"]] = Task.from_row(r)
                if gone := clashed.keys() - existing.keys():
                    # Its task was removed after this insert found it: nothing to return.
                    raise Conflict(f"idempotency_key {sorted(gone)[0]!r}: its task was "
                                   "removed meanwhile; send the create again")
        return Inserted(created_at=row["created_at"], existing=existing)

    async def _insert_graph(self, tasks: Sequence[NewTask]) -> Inserted:
        """A batch with dependencies, in one transaction: the tasks whose idempotency keys
        are taken are left out (their ids stand in for them as parents), the parents
        outside the batch are locked and read, and each new task is inserted in the state
        its parents imply, with its edges."""
        async with self._pool.acquire() as conn, conn.transaction():
            existing: dict[str, Task] = {}
            keyed = [t.idempotency_key for t in tasks if t.idempotency_key is not None]
            if keyed:
                asked = {t.idempotency_key: t for t in tasks}
                for r in await conn.fetch(Q["tasks_by_key"], keyed):
                    if r["fingerprint"] != asked[r["idempotency_key"]].fingerprint:
                        raise Conflict(
                            f"idempotency_key {r['idempotency_key']!r} is the key of task "
                            f"{r['id']}, which was asked for differently: a retry must "
                            "send the same body")
                    existing[r["idempotency_key"]] = Task.from_row(r)
            stand_in = {t.id: existing[t.idempotency_key].id for t in tasks
                        if t.idempotency_key in existing}
            new = [t.model_copy(update={"depends_on": tuple(
                       dict.fromkeys(stand_in.get(p, p) for p in t.depends_on))})
                   for t in tasks if t.idempotency_key not in existing]
            if not new:
                return Inserted(created_at=None, existing=existing)
            ids = {t.id for t in new}
            outside = sorted({p for t in new for p in t.depends_on if p not in ids})
            states: dict[uuid.UUID, str] = {}
            if outside:
                states = {r["id"]: r["state"]
                          for r in await conn.fetch(Q["lock_parents"], outside)}
                if missing := [p for p in outside if p not in states]:
                    raise InvalidInput(
                        "depends_on: no task " + ", ".join(map(str, missing[:10]))
                        + (", ..." if len(missing) > 10 else ""))
            plan = plan_graph(graph_order(new), states)
            parents = {p for t in new for p in t.depends_on}
            columns = _task_columns(new)
            edges = [(p, t.id) for t in new for p in t.depends_on]
            created_at = await conn.fetchval(
                Q["insert_graph"], *columns, [t.idempotency_key for t in new],
                [t.fingerprint for t in new], CLAIM_HORIZON.total_seconds(),
                [plan[t.id].state for t in new], [plan[t.id].waiting_on for t in new],
                ["{" + ",".join(map(str, t.depends_on)) + "}" if t.depends_on else None
                 for t in new],
                [t.run_on_upstream_failure for t in new], [t.id in parents for t in new],
                [plan[t.id].error for t in new],
                [e[0] for e in edges], [e[1] for e in edges])
        return Inserted(created_at=created_at, existing=existing)

    @_wrap
    async def claim(self, region: str, limit: int, *, fair: bool = False) -> list[Claimed]:
        """Claim up to ``limit`` due tasks for ``region``; ``fair``: some due tasks have
        concurrency keys, so each key (and the unkeyed tasks) is a lane, taken in turn,
        within the key's limit."""
        if fair:
            rows = await self._claim_fair(region, limit)
        else:
            rows = await self._planned_pool.fetch(self._claim_due, region, limit)
        claimed = [
            Claimed(
                id=r["id"], attempt=r["attempt"], kind=r["kind"], payload_json=r["payload"],
                timeout_s=r["timeout_s"], priority=r["priority"], run_at=r["run_at"],
                parent_outputs_json=r["parent_outputs"] or "",
            )
            for r in rows
        ]
        claimed.sort(key=self.aging.claim_order)
        return claimed

    async def _claim_fair(self, region: str, limit: int) -> list[Any]:
        async with self._planned_pool.acquire() as conn, conn.transaction():
            lanes = await conn.fetch(Q["lock_due_keys"], self._key_cursor, limit)
            if lanes:
                # The next claim starts after the last key this one offered.
                self._key_cursor = lanes[-1]["key"]
            else:
                self._key_cursor = ""
            # Each lane may offer a few times its share: a lane with less leaves room
            # that the others fill, without one lane ever locking a whole batch per key.
            take = min(limit, max(1, math.ceil(4 * limit / (len(lanes) + 1))))
            rows: list[Any] = await conn.fetch(
                self._claim_fair_sql, region, limit, [r["key"] for r in lanes],
                [r["lim"] for r in lanes], take)
        return rows

    @_wrap
    async def promote_near(self, limit: int) -> int:
        """Make pending tasks due within the claim horizon claimable once due, up to
        ``limit``; returns how many."""
        status: str = await self._planned_pool.execute(
            Q["promote_near"], limit, CLAIM_HORIZON.total_seconds())
        return int(status.rsplit(" ", 1)[1])

    @_wrap
    async def oldest_due(self) -> datetime | None:
        """When the pending task that came due first came due (None if none is due)."""
        when: datetime | None = await self._planned_pool.fetchval(Q["oldest_due"])
        # -infinity (a run_at of 0001-01-01T00:00:00Z) comes back naive.
        return as_utc(when) if when is not None else None

    @_wrap
    async def next_due(self, regions: Sequence[str]) -> datetime | None:
        """When the next near task not yet due, unpinned or pinned to one of these
        (live) regions, will be due."""
        value: datetime | None = await self._planned_pool.fetchval(Q["next_due"], list(regions))
        return value

    @_wrap
    async def region_room(self, dead_after: timedelta, master: str | None = None, *,
                          count_up_to: int = 0) -> Rooms:
        """The live regions (those that talk to ``master``, if given) and their room;
        with ``count_up_to``, how many due tasks they could take, counted up to that."""
        rows = await self._planned_pool.fetch(
            Q["region_room"], dead_after.total_seconds(), master, count_up_to)
        return Rooms(
            regions=[RegionRoom(name=r["name"], address=r["address"], room=r["room"],
                                floor=max(1, r["queue"] // 2))
                     for r in rows],
            keyed_due=any(r["keyed_due"] for r in rows),
            due=rows[0]["due"] if rows else 0)

    @_wrap
    async def return_to_pending(self, refs: Sequence[TaskRef], reason: str) -> int:
        """Attempts that never started, back to pending; each ends ``returned``."""
        rows = await self._pool.fetch(
            Q["return_to_pending"], [r.id for r in refs], [r.attempt for r in refs], reason
        )
        return len(rows)

    async def apply_report(
        self, report: Report, *, backoff_base: timedelta, backoff_max: timedelta
    ) -> Applied:
        """Apply a region's report in one transaction (see :meth:`apply_reports`)."""
        applied, _ = await self.apply_reports(
            [report], backoff_base=backoff_base, backoff_max=backoff_max)
        return applied

    @_wrap
    async def apply_reports(
        self, reports: Sequence[Report], *, backoff_base: timedelta, backoff_max: timedelta
    ) -> tuple[Applied, list[list[TaskRef]]]:
        """Apply reports (of one region or several) in one transaction: attempts handed
        back, evicted, started and finished, each only while its attempt still matches
        the row. Returns what changed, and each report's stale attempts (no longer
        owned), which are counted against its region. An attempt a report names again
        after an earlier one in the same call is stale in the later: as it would be were
        they applied one after the other."""
        merged = _Merged(reports)
        applied = Applied()
        async with self._pool.acquire() as conn, conn.transaction():
            if returned := merged.returned:
                applied.returned = _rows(await conn.execute(
                    Q["return_to_pending"],
                    [r.id for r in returned], [r.attempt for r in returned],
                    "handed back by its worker (stopping, or stopped by its region)",
                ))
            # Before the starts: a start on the next worker may come in this very report.
            if evicted := merged.evicted:
                applied.evicted = _rows(await conn.execute(
                    Q["mark_evicted"], [e.id for _, e in evicted],
                    [e.attempt for _, e in evicted], [e.worker_id for _, e in evicted],
                    [e.reason for _, e in evicted], [region for region, _ in evicted],
                ))
            stale: list[list[TaskRef]] = [[] for _ in reports]
            for round_ in merged.rounds:
                before = len(applied.stale)
                if started := round_.started:
                    applied.add(await conn.fetchrow(
                        Q["mark_started"],
                        [e.id for _, _, e in started], [e.attempt for _, _, e in started],
                        [e.worker_id for _, _, e in started],
                        [e.started_at for _, _, e in started],
                        [region for _, region, _ in started],
                    ))
                if finished := round_.finished:
                    applied.add(await conn.fetchrow(
                        Q["mark_finished"],
                        [e.id for _, _, e in finished], [e.attempt for _, _, e in finished],
                        [e.ok for _, _, e in finished], [e.worker_id for _, _, e in finished],
                        [e.started_at for _, _, e in finished],
                        [e.finished_at for _, _, e in finished],
                        [e.exit_code for _, _, e in finished],
                        [e.output for _, _, e in finished], [e.error for _, _, e in finished],
                        backoff_base.total_seconds(), backoff_max.total_seconds(),
                        [e.stderr for _, _, e in finished],
                        [e.output_truncated for _, _, e in finished],
                        [e.stderr_truncated for _, _, e in finished],
                        [e.killed_processes for _, _, e in finished],
                        [e.timed_out for _, _, e in finished],
                        [region for _, region, _ in finished],
                        [e.start_unreported for _, _, e in finished],
                    ))
                if len(applied.stale) > before:  # rare: map them back to their reports
                    owner = round_.owners()
                    for ref in applied.stale[before:]:
                        stale[owner[(ref.id, ref.attempt)]].append(ref)
            if applied.ended:
                await release_dependents(conn, applied.ended, applied.failed)
            for region, n in merged.stale_counts(stale).items():
                await conn.execute(Q["count_stale"], region, n)
        return applied, stale

    @_wrap
    async def get_task(self, task_id: uuid.UUID) -> Task | None:
        row = await self._pool.fetchrow(Q["get_task"], task_id)
        return Task.from_row(row) if row is not None else None

    @_wrap
    async def attempts(self, task_id: uuid.UUID) -> list[Attempt]:
        """Every attempt of the task that ended, in order."""
        rows = await self._pool.fetch(Q["list_attempts"], task_id)
        return [Attempt(**dict(r)) for r in rows]

    @_wrap
    async def list_tasks(
        self,
        *,
        state: str | None,
        region: str | None,
        kind: str | None = None,
        after: tuple[datetime, uuid.UUID] | None,
        limit: int,
        newest_first: bool = False,
    ) -> list[Task]:
        query = LISTINGS.get((state, newest_first))
        if query is None:
            raise ValueError(f"no such state: {state!r}")
        rows = await self._planned_pool.fetch(query, region, kind, after[0] if after else None,
                                              after[1] if after else None, limit)
        return [Task.from_row(r) for r in rows]

    @_wrap
    async def cancel_task(self, task_id: uuid.UUID) -> CancelOutcome | None:
        async with self._pool.acquire() as conn, conn.transaction():
            return await _cancel(conn, task_id)

    @_wrap
    async def reprioritize(self, task_id: uuid.UUID, priority: int) -> Task | None:
        """The task with its new priority; None if it has started (or does not exist)."""
        row = await self._pool.fetchrow(Q["reprioritize"], task_id, priority)
        return Task.from_row(row) if row is not None else None

    @_wrap
    async def dependents(self, task_id: uuid.UUID, limit: int) -> list[uuid.UUID]:
        return [r["child"] for r in await self._pool.fetch(Q["dependents"], task_id, limit)]

    @_wrap
    async def task_graph(self, task_id: uuid.UUID, *, limit: int, depth: int
                         ) -> list[GraphNode]:
        """The tasks around one, nearest first: its ancestors and descendants up to
        ``depth`` edges away, at most ``limit`` of them."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SET LOCAL enable_seqscan = off")
            rows = await conn.fetch(Q["task_graph"], task_id, limit, depth)
        return [GraphNode(id=r["id"], kind=r["kind"], state=r["state"], priority=r["priority"],
                          depends_on=tuple(r["depends_on"] or ()), depth=r["depth"],
                          payload=json.loads(r["payload"]))
                for r in rows]

    @_wrap
    async def set_concurrency_limit(self, key: str, limit: int) -> None:
        await self._pool.execute(Q["set_concurrency_limit"], key, limit)

    @_wrap
    async def clear_concurrency_limit(self, key: str) -> bool:
        return _rows(await self._pool.execute(Q["clear_concurrency_limit"], key)) == 1

    @_wrap
    async def concurrency_keys(self, key: str | None = None) -> list[ConcurrencyKey]:
        """Every key with a limit (or the one asked for, limited or not)."""
        rows = await self._pool.fetch(Q["concurrency_keys"], key)
        return [ConcurrencyKey(key=r["key"], limit=r["lim"], active=r["active"],
                               pending=r["pending"]) for r in rows]

    @_wrap
    async def remove_finished(self, before: datetime, limit: int) -> int:
        """Remove up to ``limit`` tasks of each final state that finished before
        ``before``, with their attempts; how many went."""
        removed: int = await self._planned_pool.fetchval(Q["remove_finished"], before, limit)
        return removed

    @_wrap
    async def remove_old_fires(self, before: datetime, limit: int) -> int:
        return _rows(await self._pool.execute(Q["remove_old_fires"], before, limit))

    @_wrap
    async def vacuum_task_tables(self) -> None:
        """Make the space of removed rows reusable (no lock that blocks writes)."""
        async with self._pool.acquire() as conn:
            for table in TASK_TABLES:
                await conn.execute(f"VACUUM (ANALYZE) {table}")

    @_wrap
    async def counts_by_state(self) -> dict[str, int]:
        rows = await self._pool.fetch(Q["count_by_state"])
        return {r["state"]: r["n"] for r in rows}

    # ---- regions ------------------------------------------------------------

    async def upsert_region(self, status: RegionStatus, master: str | None = None
                            ) -> str | None:
        """Record a region (its registration, or a heartbeat that lists nothing it holds
        and reconciles nothing) that reached ``master``, if given; returns its previous
        state (None if new)."""
        previous, _ = await self.beat_region(status, workers_json(status.workers), master,
                                             (), NOTHING_CLAIMED_BEFORE)
        return previous

    @_wrap
    async def beat_region(
        self, status: RegionStatus, workers: str, master: str | None, held: Sequence[TaskRef],
        claimed_before: datetime,
    ) -> tuple[str | None, int]:
        """A heartbeat in one statement (see the query): the region's row (``workers``
        as ``workers_json`` makes them; those of ``status`` are not read) and, unless it
        was down, its attempts claimed before ``claimed_before`` that ``held`` does not
        list, back to pending. Returns its previous state (None if new) and how many
        attempts it no longer held."""
        row = await self._pool.fetchrow(
            Q["beat_region"], status.name, status.address, status.capacity,
            status.max_outstanding, status.running, status.queued, workers, master,
            [h.id for h in held], [h.attempt for h in held], claimed_before,
        )
        assert row is not None
        return row["previous_state"], row["lost"]

    @_wrap
    async def mark_regions_down(self, dead_after: timedelta) -> list[tuple[str, datetime]]:
        rows = await self._pool.fetch(Q["mark_regions_down"], dead_after.total_seconds())
        return [(r["name"], r["last_heartbeat"]) for r in rows]

    @_wrap
    async def reclaim_down_regions(self) -> dict[str, int]:
        rows = await self._pool.fetch(Q["reclaim_down_regions"])
        counts: dict[str, int] = {}
        for r in rows:
            counts[r["region"]] = counts.get(r["region"], 0) + 1
        return counts

    @_wrap
    async def region_names(self, dead_after: timedelta) -> dict[str, bool]:
        """Every known region's name and whether it is live."""
        rows = await self._pool.fetch(Q["region_names"], dead_after.total_seconds())
        return {r["name"]: r["live"] for r in rows}

    @_wrap
    async def delete_region(self, name: str, dead_after: timedelta) -> RegionDeletion | None:
        """Delete a region that is down and unused; None if there is no such region."""
        row = await self._pool.fetchrow(Q["delete_region"], name, dead_after.total_seconds())
        if row is None:
            return None
        return RegionDeletion(live=row["live"], tasks=row["tasks"], deleted=row["deleted"])

    @_wrap
    async def list_regions(self, dead_after: timedelta) -> list[RegionRow]:
        rows = await self._pool.fetch(Q["list_regions"], dead_after.total_seconds())
        return [
            RegionRow(
                name=r["name"], address=r["address"], state=r["state"], live=r["live"],
                registered_at=r["registered_at"], last_heartbeat=r["last_heartbeat"],
                capacity=r["capacity"], max_outstanding=r["max_outstanding"],
                running=r["running"], queued=r["queued"],
                workers=[WorkerInfo.from_json(w) for w in json.loads(r["workers"])],
                stale_results=r["stale_results"], master=r["master"],
            )
            for r in rows
        ]

# ---- schedules -----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleRow:
    spec: ScheduleSpec
    next_fire_at: datetime | None
    last_task_id: uuid.UUID | None
    last_task_state: str | None
    created_at: datetime
    updated_at: datetime
    now: datetime | None = None  # the database's clock, when the row was locked


def _schedule(row: Any) -> ScheduleRow:
    spec = ScheduleSpec.model_validate({
        "name": row["name"], "cron": row["cron"], "every_s": row["every_s"],
        "timezone": row["timezone"], "task": json.loads(row["task"]),
        "overlap": row["overlap"], "catchup": row["catchup"], "start_at": row["start_at"],
        "end_at": row["end_at"], "paused": row["paused"],
    })
    keys = row.keys()
    return ScheduleRow(
        spec=spec, next_fire_at=row["next_fire_at"], last_task_id=row["last_task_id"],
        last_task_state=row["last_task_state"] if "last_task_state" in keys else None,
        created_at=row["created_at"], updated_at=row["updated_at"],
        now=row["now"] if "now" in keys else None,
    )


def _schedule_args(spec: ScheduleSpec) -> tuple[Any, ...]:
    return (spec.name, spec.cron, spec.every_s, spec.timezone, json.dumps(spec.task),
            spec.overlap, spec.catchup, spec.start_at, spec.end_at, spec.paused)


@dataclass(frozen=True, slots=True)
class Fire:
    """One fire time of a schedule and what became of it (a task only when fired)."""

    fire_time: datetime
    outcome: str  # fired, skipped_overlap, missed
    reason: str | None = None
    task: NewTask | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class FirePlan:
    fires: list[Fire]
    next_fire_at: datetime | None  # the first time not accounted for (None: no more)
    cancel: list[uuid.UUID] = field(default_factory=list)  # overlap: cancel_previous


@dataclass(frozen=True, slots=True, kw_only=True)
class Fired:
    """What one pass over a schedule recorded (fires another master had recorded first
    are left out) and the tasks it cancelled (with where they ran)."""

    schedule: ScheduleRow
    fires: list[Fire]
    cancelled: list[tuple[uuid.UUID, CancelOutcome]]
    next_fire_at: datetime | None


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredToken:
    """An API token in the database, as ``strata token list`` shows it: never its hash."""

    name: str
    created_at: datetime
    last_used_at: datetime | None


class Tokens:
    """The API tokens' table (migration 0012): names and hashes."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @_wrap
    async def create(self, name: str, hash_: str) -> StoredToken:
        """A name taken is a :class:`Conflict`."""
        row = await self._pool.fetchrow(Q["insert_api_token"], name, hash_)
        if row is None:
            raise Conflict(f"an API token named {name!r} exists already: revoke it first, "
                           "or give this one another name")
        return StoredToken(name=row["name"], created_at=row["created_at"], last_used_at=None)

    @_wrap
    async def all(self) -> list[StoredToken]:
        return [StoredToken(name=r["name"], created_at=r["created_at"],
                            last_used_at=r["last_used_at"])
                for r in await self._pool.fetch(Q["list_api_tokens"])]

    @_wrap
    async def hashes(self) -> list[str]:
        return [r["hash"] for r in await self._pool.fetch(Q["api_token_hashes"])]

    @_wrap
    async def revoke(self, name: str) -> bool:
        return _rows(await self._pool.execute(Q["delete_api_token"], name)) == 1

    @_wrap
    async def touch(self, hashes: Sequence[str]) -> None:
        """Mark these tokens used now."""
        await self._pool.execute(Q["touch_api_tokens"], list(hashes))


class Schedules:
    """The schedules' tables, on the master's database."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @_wrap
    async def create(self, spec: ScheduleSpec, next_fire_at: datetime | None) -> ScheduleRow:
        row = await self._pool.fetchrow(Q["insert_schedule"], *_schedule_args(spec),
                                        next_fire_at)
        if row is None:
            raise Conflict(f"a schedule named {spec.name!r} exists already")
        return _schedule(row)

    @_wrap
    async def update(self, spec: ScheduleSpec, next_fire_at: datetime | None
                     ) -> ScheduleRow | None:
        row = await self._pool.fetchrow(Q["update_schedule"], *_schedule_args(spec),
                                        next_fire_at)
        return _schedule(row) if row is not None else None

    @_wrap
    async def get(self, name: str) -> ScheduleRow | None:
        row = await self._pool.fetchrow(Q["get_schedule"], name)
        return _schedule(row) if row is not None else None

    @_wrap
    async def all(self) -> list[ScheduleRow]:
        return [_schedule(r) for r in await self._pool.fetch(Q["list_schedules"])]

    @_wrap
    async def delete(self, name: str) -> bool:
        status = await self._pool.execute("DELETE FROM schedules WHERE name = $1", name)
        return _rows(status) == 1

    @_wrap
    async def fires(self, name: str, before: datetime | None, limit: int
                    ) -> list[dict[str, Any]]:
        return [dict(r) for r in await self._pool.fetch(Q["list_fires"], name, before, limit)]

    @_wrap
    async def due(self, lead_s: float, limit: int) -> list[tuple[str, datetime, bool, bool]]:
        """The schedules soonest to fire: (name, next fire time, whether it fires
        ``lead_s`` ahead, whether it is due)."""
        rows = await self._pool.fetch(Q["due_schedules"], lead_s, limit)
        return [(r["name"], r["next_fire_at"], r["ahead"], r["due"]) for r in rows]

    @_wrap
    async def fire(self, name: str, plan: Callable[[ScheduleRow], FirePlan], *,
                   lead_s: float | None) -> Fired | None:
        """Fire the schedule, in one transaction that holds its row: ``plan`` says which
        fires to record (and their tasks), the fires' key makes each one happen once
        whatever else runs, and the tasks are inserted with them. ``lead_s`` None: fire
        it whatever its next fire time (a trigger), waiting for another master's pass;
        else only if due within ``lead_s`` and no other master holds it (None back)."""
        async with self._pool.acquire() as conn, conn.transaction():
            if lead_s is None:
                row = await conn.fetchrow(Q["lock_schedule"], name)
            else:
                row = await conn.fetchrow(Q["lock_due_schedule"], name, lead_s)
            if row is None:
                return None
            schedule = _schedule(row)
            fire_plan = plan(schedule)
            fires = fire_plan.fires
            recorded = await conn.fetch(
                Q["record_fires"], name, [f.fire_time for f in fires],
                [f.outcome for f in fires], [f.reason for f in fires],
                [f.task.id if f.task is not None else None for f in fires])
            got = {r["fire_time"] for r in recorded}
            kept = [f for f in fires if f.fire_time in got]
            tasks = [f.task for f in kept if f.task is not None]
            if tasks:
                await conn.fetchval(Q["insert_tasks"], *_task_columns(tasks),
                                    CLAIM_HORIZON.total_seconds(), [name] * len(tasks))
            cancelled = []
            for task_id in fire_plan.cancel:
                outcome = await _cancel(conn, task_id)
                if outcome is not None and outcome.cancelled:
                    cancelled.append((task_id, outcome))
            await conn.execute(Q["advance_schedule"], name, fire_plan.next_fire_at,
                               tasks[-1].id if tasks else None)
        return Fired(schedule=schedule, fires=kept, cancelled=cancelled,
                     next_fire_at=fire_plan.next_fire_at)


def _task_columns(tasks: Sequence[NewTask]) -> tuple[list[Any], ...]:
    return (
        [t.id for t in tasks],
        [t.kind for t in tasks],
        [json.dumps(t.payload) for t in tasks],
        [t.priority for t in tasks],
        [t.run_at for t in tasks],
        [t.region for t in tasks],
        [t.max_attempts for t in tasks],
        [t.timeout_s for t in tasks],
        [t.retry_of for t in tasks],
        [t.concurrency_key for t in tasks],
    )


async def wait_for_database(dsn: str, *, within_s: float = 30.0) -> None:
    """Wait until PostgreSQL accepts connections (used at start-up)."""

    async def connect_once() -> None:
        try:
            conn = await asyncpg.connect(dsn, timeout=5)
        except (*_CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
            raise DatabaseUnavailable(f"database unreachable: {exc}") from exc
        await conn.close()

    await keep_trying(
        "waiting for the database", connect_once,
        Backoff(initial_s=0.05, max_s=1.0, give_up_after_s=within_s),
        retry_on=of_type(DatabaseUnavailable), action="database_wait",
    )
