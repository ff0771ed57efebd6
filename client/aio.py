"""The asynchronous client: every answer validated into the API's own response models
(``strata.common.api_models``), every refusal an :class:`~strata.common.client.ApiError`
of its code's class."""

from __future__ import annotations

import asyncio
import builtins
import collections
import logging
import os
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, Literal

from strata.client.handlers import task_body
from strata.common.api_models import (
    AttemptOut,
    Attempts,
    BatchCreated,
    ConcurrencyKeyOut,
    ConcurrencyKeys,
    Fired,
    FirePage,
    RegionOut,
    Regions,
    Schedule,
    ScheduleList,
    Stats,
    TaskDetail,
    TaskEventData,
    TaskGraph,
    TaskOut,
    TaskPage,
    WorkerOut,
    Workers,
)
from strata.common.client import Client as RestClient
from strata.common.client import StreamEvent, check_base_url
from strata.common.models import TaskState
from strata.common.schedules import Catchup, Overlap
from strata.common.timeutil import rfc3339

logger = logging.getLogger("strata.client")

DEFAULT_API = "http://127.0.0.1:8080"
API_ENV = "STRATA_API"
TOKEN_ENV = "STRATA_TOKEN"
CA_ENV = "STRATA_TLS_CA"
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_PAGE = 100
# How long wait and watch keep trying to take their stream up again while the master
# cannot be reached (say, while it restarts) before they give up (Unavailable).
RECONNECT_FOR_S = 30.0

TaskId = str | uuid.UUID
Order = Literal["asc", "desc"]


def api_url(base_url: str | None = None) -> str:
    """``base_url``, else ``$STRATA_API``, else ``http://127.0.0.1:8080``; one that is
    not http(s) is :class:`InvalidInput`."""
    if base_url is None:
        base_url = os.environ.get(API_ENV) or DEFAULT_API
    return check_base_url(base_url)


def api_token(token: str | None = None) -> str | None:
    """``token``, else ``$STRATA_TOKEN``, else none."""
    return token if token is not None else (os.environ.get(TOKEN_ENV) or None)


def _when(value: datetime | str) -> str:
    return value if isinstance(value, str) else str(rfc3339(value))


def _log_missed(reason: str) -> None:
    logger.warning("task changes were missed: %s", reason)


class AsyncClient:
    """The master's REST API, typed. ``base_url`` defaults to ``$STRATA_API``, else
    ``http://127.0.0.1:8080``; ``timeout`` is each request's limit in seconds (an answer
    not in time is :class:`Unavailable`); ``token`` (default ``$STRATA_TOKEN``) is sent as
    ``Authorization: Bearer <token>``; ``ca`` (default ``$STRATA_TLS_CA``), a PEM file, is
    the CA an ``https://`` master's certificate must be signed by.

    Made anywhere, used in one event loop (its connections are that loop's), and closed
    with :meth:`close` or ``async with``."""

    def __init__(self, base_url: str | None = None, *, timeout: float = DEFAULT_TIMEOUT_S,
                 token: str | None = None, ca: str | os.PathLike[str] | None = None) -> None:
        self.base_url = api_url(base_url)
        self.timeout = timeout
        self.token = api_token(token)
        # The CA an https:// master's certificate is checked against (default
        # $STRATA_TLS_CA, else the system's).
        self.ca = ca if ca is not None else (os.environ.get(CA_ENV) or None)
        self._rest: RestClient | None = None
        self._closed = False

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True
        if self._rest is not None:
            await self._rest.close()

    @property
    def rest(self) -> RestClient:
        """The JSON-level client under this one: every route, each answer as the master
        sent it (dicts and lists), the same errors. Made on first use, in the running
        loop."""
        if self._closed:
            raise RuntimeError("this client is closed")
        if self._rest is None:
            self._rest = RestClient(self.base_url, timeout_s=self.timeout, token=self.token,
                                    ca=self.ca)
        return self._rest

    # ---- tasks ----------------------------------------------------------------------

    async def submit(self, kind_or_handler: str | Callable[..., Any], /, *args: Any,
                     options: Mapping[str, Any] | None = None, **fields: Any) -> TaskOut:
        """Make one task: a kind and its fields, ``submit("shell", command="echo hi",
        priority=5)``, or a call of a ``@strata.task`` handler, ``submit(build,
        day="2030-01-01", options={"priority": 5})`` (its arguments by name or by
        position; task options in ``options``). A task whose ``idempotency_key`` was
        taken already is the one it made."""
        body = task_body(kind_or_handler, *args, options=options, **fields)
        return TaskOut.model_validate(await self.rest.create(**body))

    async def submit_many(self, tasks: Iterable[Mapping[str, Any]]) -> BatchCreated:
        """Make up to 10,000 tasks in one transaction (all or none): each a
        ``POST /v1/tasks`` body (``python_task(handler, ...)`` makes one of a handler), and
        each may name a ``key`` (local to the batch) for others to list in their
        ``depends_on``. ``ids`` come in the order given; ``existed`` says which were there
        already (their idempotency key was taken)."""
        result = await self.rest.request("POST", "/v1/tasks/batch",
                                         json={"tasks": [dict(t) for t in tasks]})
        return BatchCreated.model_validate(result)

    async def get(self, task_id: TaskId) -> TaskDetail:
        return TaskDetail.model_validate(await self.rest.get(str(task_id)))

    async def page(self, *, state: TaskState | str | None = None, region: str | None = None,
                   kind: str | None = None, order: Order = "asc",
                   limit: int = DEFAULT_PAGE, cursor: str | None = None) -> TaskPage:
        """One page of ``GET /v1/tasks``; its ``next_cursor`` is the next page's
        ``cursor`` (None on the last)."""
        params = {k: str(v) for k, v in (("state", state), ("region", region),
                                         ("kind", kind), ("cursor", cursor)) if v}
        if order != "asc":
            params["order"] = order
        return TaskPage.model_validate(await self.rest.list_tasks(**params, limit=str(limit)))

    async def cancel(self, task_id: TaskId) -> TaskOut:
        """A finished task is a :class:`Conflict`."""
        return TaskOut.model_validate(await self.rest.cancel(str(task_id)))

    async def retry(self, task_id: TaskId) -> TaskOut:
        """The new task (``retry_of`` the old one) of a failed or cancelled task; any
        other is a :class:`Conflict`."""
        return TaskOut.model_validate(await self.rest.retry(str(task_id)))

    async def attempts(self, task_id: TaskId) -> builtins.list[AttemptOut]:
        """Every attempt, oldest first, the one in flight last."""
        return Attempts.model_validate(
            {"attempts": await self.rest.attempts(str(task_id))}).attempts

    async def reprioritize(self, task_id: TaskId, priority: int) -> TaskOut:
        """A task that has started or ended is a :class:`Conflict`."""
        return TaskOut.model_validate(await self.rest.reprioritize(str(task_id), priority))

    async def graph(self, task_id: TaskId, *, depth: int | None = None,
                    limit: int | None = None) -> TaskGraph:
        """The DAG around a task, ``depth`` edges each way, nearest tasks first."""
        return TaskGraph.model_validate(
            await self.rest.graph(str(task_id), depth=depth, limit=limit))

    # A deadline of its own (asyncio.timeout inside), so that the sync Client's wait takes
    # the same argument.
    async def wait(self, task_id: TaskId, *,
                   timeout: float | None = None) -> TaskDetail:  # noqa: ASYNC109
        """The task once it has ended (succeeded, failed or cancelled), told by the event
        stream: subscribed first, then the task read once (it may have ended already),
        then its end awaited. ``TimeoutError`` after ``timeout`` seconds (None: no
        limit). A stream that breaks is taken up again (a master restarting is waited
        for, up to 30 s)."""
        try:
            async with asyncio.timeout(timeout) as deadline:
                return TaskDetail.model_validate(await self.rest.follow(
                    str(task_id), reconnect_for_s=RECONNECT_FOR_S))
        except TimeoutError:
            if deadline.expired():
                raise TimeoutError(f"task {task_id} did not end within {timeout:g}s"
                                   ) from None
            raise

    def watch(self, task_ids: Iterable[TaskId] = (), *, state: TaskState | str | None = None,
              region: str | None = None, on_missed: Callable[[str], object] | None = None,
              reconnect_for: float = RECONNECT_FOR_S) -> TaskWatch:
        """Changes of tasks as they happen (of those named, or of all; into ``state``
        only; in ``region`` only), each a :class:`TaskEventData`, for as long as they are
        read. Whenever the stream drops (this reader fell behind, the master restarted)
        it is taken up again after the last change read (``Last-Event-ID``), a master
        that cannot be reached tried again for up to ``reconnect_for`` seconds before
        :class:`Unavailable`. ``on_missed`` (default: a warning logged) is told why when
        changes were lost all the same (the master no longer held them).
        ``async with client.watch(...) as changes:`` subscribes on entry: no change
        after that is missed."""
        stream = self.rest.watch(tasks=[str(t) for t in task_ids],
                                 state=str(state) if state else None, region=region,
                                 reconnect_for_s=reconnect_for)
        return TaskWatch(stream, on_missed or _log_missed)

    async def list(self, *, state: TaskState | str | None = None, region: str | None = None,
                   kind: str | None = None, order: Order = "asc",
                   page_size: int = DEFAULT_PAGE) -> AsyncIterator[TaskOut]:
        """Every task that matches, oldest first (``order="desc"``: newest first), page
        after page (``page_size`` a request) for as long as it is read."""
        cursor: str | None = None
        while True:
            page = await self.page(state=state, region=region, kind=kind, order=order,
                                   limit=page_size, cursor=cursor)
            for task in page.tasks:
                yield task
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    # ---- schedules ------------------------------------------------------------------

    async def create_schedule(
        self, name: str, *, task: Mapping[str, Any], cron: str | None = None,
        every_s: float | None = None, timezone: str | None = None,
        overlap: Overlap | None = None, catchup: Catchup | None = None,
        start_at: datetime | str | None = None, end_at: datetime | str | None = None,
        paused: bool | None = None,
    ) -> Schedule:
        """A schedule of ``task`` (a ``POST /v1/tasks`` body without ``run_at``;
        ``python_task(handler, ...)`` makes one of a handler) on a ``cron`` expression
        read in ``timezone`` (default UTC), or ``every_s`` seconds. A name taken already
        is a :class:`Conflict`."""
        body: dict[str, Any] = {"name": name, "task": dict(task)}
        for key, value in (("cron", cron), ("every_s", every_s), ("timezone", timezone),
                           ("overlap", overlap), ("catchup", catchup), ("paused", paused)):
            if value is not None:
                body[key] = value
        for key, when in (("start_at", start_at), ("end_at", end_at)):
            if when is not None:
                body[key] = _when(when)
        return Schedule.model_validate(await self.rest.create_schedule(**body))

    async def schedules(self) -> builtins.list[Schedule]:
        """Every schedule, by name."""
        return ScheduleList.model_validate(
            {"schedules": await self.rest.schedules()}).schedules

    async def schedule(self, name: str) -> Schedule:
        return Schedule.model_validate(await self.rest.schedule(name))

    async def change_schedule(self, name: str, **changes: Any) -> Schedule:
        """``PATCH``: the fields given (``cron``, ``every_s``, ``task``, ``paused``, ...)."""
        return Schedule.model_validate(await self.rest.change_schedule(name, **changes))

    async def pause(self, name: str) -> Schedule:
        """No fire until resumed (its ``next_fire_at`` is None meanwhile)."""
        return await self.change_schedule(name, paused=True)

    async def resume(self, name: str) -> Schedule:
        """Fires again, from now on: times it was paused over are not fires."""
        return await self.change_schedule(name, paused=False)

    async def delete_schedule(self, name: str) -> None:
        """The tasks it made stay."""
        await self.rest.delete_schedule(name)

    async def trigger(self, name: str) -> Fired:
        """Fire it now, once: the fire time and its task's id."""
        return Fired.model_validate(await self.rest.trigger_schedule(name))

    async def fires(self, name: str, *, limit: int | None = None,
                    before: datetime | str | None = None) -> FirePage:
        """One page of its fires, newest first; ``next_before`` is the next page's
        ``before``."""
        return FirePage.model_validate(await self.rest.schedule_fires(
            name, limit=limit, before=None if before is None else _when(before)))

    # ---- concurrency keys -----------------------------------------------------------

    async def set_concurrency(self, key: str, limit: int) -> ConcurrencyKeyOut:
        """At most ``limit`` tasks of ``concurrency_key`` ``key`` dispatched or running at
        once, across every region."""
        return ConcurrencyKeyOut.model_validate(await self.rest.set_concurrency(key, limit))

    async def concurrency(self, key: str) -> ConcurrencyKeyOut:
        """A key's limit (None: none) and its tasks active and pending."""
        return ConcurrencyKeyOut.model_validate(await self.rest.concurrency(key))

    async def concurrency_limits(self) -> builtins.list[ConcurrencyKeyOut]:
        """The keys that have a limit, by key."""
        return ConcurrencyKeys.model_validate(
            {"keys": await self.rest.concurrency_limits()}).keys

    async def clear_concurrency(self, key: str) -> None:
        """No limit on the key any more; one that had none is :class:`NotFound`."""
        await self.rest.clear_concurrency(key)

    # ---- the cluster ----------------------------------------------------------------

    async def stats(self) -> Stats:
        return Stats.model_validate(await self.rest.stats())

    async def regions(self) -> builtins.list[RegionOut]:
        return Regions.model_validate({"regions": await self.rest.regions()}).regions

    async def workers(self) -> builtins.list[WorkerOut]:
        return Workers.model_validate({"workers": await self.rest.workers()}).workers


class TaskWatch:
    """What :meth:`AsyncClient.watch` returns: an async iterator of task changes,
    subscribed when first read, or on entering it (``async with``). :meth:`aclose`, or
    leaving the ``async with``, ends the subscription. ``resumes`` counts the times its
    stream was taken up again."""

    def __init__(self, stream: AsyncGenerator[StreamEvent, None],
                 on_missed: Callable[[str], object]) -> None:
        self._stream = stream
        self._on_missed = on_missed
        self._subscribed = False
        self._early: collections.deque[TaskEventData] = collections.deque()
        self.resumes = 0

    async def __aenter__(self) -> TaskWatch:
        await self.subscribe()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __aiter__(self) -> TaskWatch:
        return self

    async def __anext__(self) -> TaskEventData:
        if self._early:
            return self._early.popleft()
        while True:
            change = await self._next()
            if change is not None:
                return change

    async def subscribe(self) -> None:
        """Return once subscribed: every change from then on will be read."""
        while not self._subscribed:
            change = await self._next()
            if change is not None:
                self._early.append(change)

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def _next(self) -> TaskEventData | None:
        """The next message: a change, or None for one that is not."""
        message = await anext(self._stream)
        if message.event == "task":
            return TaskEventData.model_validate(message.data)
        if message.event == "subscribed":
            self.resumes += self._subscribed
            self._subscribed = True
        elif message.event == "missed":
            self._on_missed(str(message.data.get("reason", "")))
        # "dropped": the stream is taken up again where it stopped; if the master no
        # longer holds what came since, "missed" says so.
        return None
