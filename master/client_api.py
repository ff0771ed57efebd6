"""The client API over gRPC (``strata.v1.Tasks``, proto/tasks.proto), beside REST.

Every call turns its request into what REST would have been given (a JSON body, query
values), goes down REST's own code path (the parsers and ``Control``, through the
functions ``strata.master.api`` shares), and turns REST's JSON answer into the reply:
the same validation, the same guarantees, and the same errors, as gRPC status codes.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias, TypeVar

import grpc
from google.protobuf import empty_pb2, json_format
from google.protobuf.message import Message

from strata.common.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    RateLimited,
    StrataError,
    Unauthenticated,
    Unavailable,
)
from strata.common.models import MAX_BATCH, parse_new_task
from strata.common.schedules import parse_schedule
from strata.common.text import refuse_unstorable
from strata.master import api
from strata.master.auth import Guard
from strata.master.control import Control
from strata.master.stream import Dropped, EventHub
from strata.proto import tasks_pb2 as pb

logger = logging.getLogger(__name__)

SERVICE = "strata.v1.Tasks"
_CODES: tuple[tuple[type[StrataError], grpc.StatusCode], ...] = (
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (RateLimited, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (Conflict, grpc.StatusCode.FAILED_PRECONDITION),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
)
# A NewTask's fields other than its kind and payload: the options of a REST task body.
_OPTIONS = frozenset(pb.NewTask.DESCRIPTOR.fields_by_name) - {"kind", "payload"}

M = TypeVar("M", bound=Message)
T = TypeVar("T")
# A grpc.aio.ServicerContext (grpc has no type hints: Any to the type checker).
Context: TypeAlias = Any


def status_of(exc: StrataError) -> grpc.StatusCode:
    return next((code for cls, code in _CODES if isinstance(exc, cls)),
                grpc.StatusCode.INTERNAL)


async def abort(context: Context, exc: StrataError) -> None:
    """End the call with the error's status code; an address over its limit of failed
    tokens is told when to try again (``retry-after`` seconds, trailing metadata)."""
    trailing: tuple[tuple[str, str], ...] = ()
    if isinstance(exc, RateLimited):
        trailing = (("retry-after", str(max(1, math.ceil(exc.retry_after_s)))),)
    await context.abort(status_of(exc), str(exc), trailing_metadata=trailing)


def _unary(fn: Callable[[Any, Any, Context], Awaitable[M]]
           ) -> Callable[[Any, Any, Context], Awaitable[M]]:
    """The one place where errors become status codes, as REST's middleware does."""

    @functools.wraps(fn)
    async def inner(self: Any, request: Any, context: Context) -> M:
        try:
            self.authenticate(context)  # first: nothing of the request is looked at
            # Text PostgreSQL cannot store, anywhere it can enter: REST's rule.
            refuse_unstorable(_json(request), "request")
            return await fn(self, request, context)
        except StrataError as exc:
            await abort(context, exc)
        except Exception:
            logger.exception("unhandled error in %s", fn.__name__,
                             extra={"action": "grpc_internal_error"})
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
        raise AssertionError("unreachable: abort raises")

    return inner


def _json(message: Message) -> dict[str, Any]:
    """A request as the JSON REST would have taken: field names as in the proto, only
    the fields that are set."""
    try:
        return json_format.MessageToDict(message, preserving_proto_field_name=True)
    except (ValueError, json_format.Error) as exc:  # a timestamp out of its range
        raise InvalidInput(f"not a valid request: {exc}") from None


def _integral(value: Any) -> Any:
    """A protobuf Struct has only doubles: 3.0 is the JSON integer 3, as in REST."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


def task_body(task: pb.NewTask, where: str = "task") -> dict[str, Any]:
    """A NewTask as the body of POST /v1/tasks: the kind, its payload's fields, the
    options."""
    fields = _json(task)
    payload = _integral(fields.pop("payload", {}))
    clash = sorted(set(payload) & (_OPTIONS | {"kind"}))
    if clash:
        raise InvalidInput(f"{where}.payload: {', '.join(clash)} is a field of the task, "
                           "not of its payload")
    return {**payload, **fields}


def _reply(body: dict[str, Any], message: M) -> M:
    """REST's JSON answer as the reply message."""
    return json_format.ParseDict(body, message, ignore_unknown_fields=True)


class TasksService:
    """strata.v1.Tasks (registered with rpc.add_TasksServicer_to_server)."""

    def __init__(self, control: Control, events: EventHub | None,
                 guard: Guard | None = None) -> None:
        self._control = control
        self._events = events
        self._guard = guard

    def authenticate(self, context: Context) -> bytes | None:
        """The call's token (its digest), checked; None when none is needed."""
        return None if self._guard is None else self._guard.check_grpc(context)

    @_unary
    async def Submit(self, request: pb.SubmitRequest, context: Context) -> pb.Task:
        task = parse_new_task(task_body(request.task))
        stored, _ = await self._control.create_one(task)
        return _reply(stored.to_json(), pb.Task())

    @_unary
    async def SubmitBatch(self, request: pb.SubmitBatchRequest, context: Context
                          ) -> pb.SubmitBatchReply:
        if len(request.tasks) > MAX_BATCH:  # refused before anything is converted
            raise InvalidInput(f"tasks: at most {MAX_BATCH} tasks per batch, "
                               f"got {len(request.tasks)}")
        body = {"tasks": [task_body(t, f"tasks[{i}]") for i, t in enumerate(request.tasks)]}
        created, _ = await api.create_batch(self._control, body)
        return _reply(created, pb.SubmitBatchReply())

    @_unary
    async def Get(self, request: pb.TaskId, context: Context) -> pb.Task:
        return _reply(await api.task_detail(self._control, request.id), pb.Task())

    @_unary
    async def List(self, request: pb.ListRequest, context: Context) -> pb.ListReply:
        query = {k: str(v) for k, v in _json(request).items()}
        return _reply(await api.task_page(self._control, query), pb.ListReply())

    @_unary
    async def Cancel(self, request: pb.TaskId, context: Context) -> pb.Task:
        task = await self._control.cancel(api.task_id(request.id))
        return _reply(task.to_json(), pb.Task())

    @_unary
    async def Retry(self, request: pb.TaskId, context: Context) -> pb.Task:
        task = await self._control.retry(api.task_id(request.id))
        return _reply(task.to_json(), pb.Task())

    @_unary
    async def Attempts(self, request: pb.TaskId, context: Context) -> pb.AttemptsReply:
        attempts = await self._control.attempts(api.task_id(request.id))
        return _reply({"attempts": attempts}, pb.AttemptsReply())

    @_unary
    async def CreateSchedule(self, request: pb.CreateScheduleRequest, context: Context
                             ) -> pb.Schedule:
        body = _json(request)
        if request.HasField("task"):
            body["task"] = task_body(request.task)
        spec = parse_schedule(body)
        return _reply(await self._control.create_schedule(spec), pb.Schedule())

    @_unary
    async def ListSchedules(self, request: empty_pb2.Empty, context: Context
                            ) -> pb.ListSchedulesReply:
        return _reply({"schedules": await self._control.schedules()}, pb.ListSchedulesReply())

    @_unary
    async def DeleteSchedule(self, request: pb.ScheduleName, context: Context
                             ) -> empty_pb2.Empty:
        await self._control.delete_schedule(request.name)
        return empty_pb2.Empty()

    async def Watch(self, request: pb.WatchRequest, context: Context
                    ) -> AsyncIterator[pb.WatchEvent]:
        """The events of GET /v1/events: ``subscribed`` first, then ``task`` per change
        (``missed`` if the resume point is gone), ``dropped`` and the end of the stream
        for a watcher that fell too far behind."""
        try:
            digest = self.authenticate(context)
            refuse_unstorable(_json(request), "request")
            wanted = api.event_filter(request.task, request.state or None,
                                      request.region or None)
            if self._events is None:
                raise Unavailable("this master serves no event stream", retry_after_s=60.0)
            last = request.last_event_id or None
            sub = await self._events.subscribe(wanted, last)
        except StrataError as exc:
            await abort(context, exc)
            return
        # The stream ends with its token (or, opened without one, once one is needed).
        revoked = (asyncio.ensure_future(self._guard.until_refused(digest))
                   if self._guard is not None else None)
        try:
            yield pb.WatchEvent(event="subscribed")
            if sub.missed:
                yield pb.WatchEvent(event="missed", reason=f"events after {last} are no "
                                                          "longer kept: some were missed")
            while True:
                try:
                    batch = await (sub.next() if revoked is None
                                   else _unless(sub.next(), revoked))
                except Dropped as exc:
                    yield pb.WatchEvent(event="dropped", reason=str(exc))
                    return
                if batch is None:
                    await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                        "the API token was revoked" if digest is not None
                                        else "this API needs a token now")
                    return
                for event in batch:
                    change = pb.TaskChange(id=event.task, state=event.state,
                                           attempt=event.attempt, region=event.region,
                                           worker_id=event.worker_id)
                    change.at.FromNanoseconds(round(event.at * 1e9))
                    yield pb.WatchEvent(event="task", event_id=event.event_id, task=change)
        finally:
            if revoked is not None:
                revoked.cancel()
            self._events.unsubscribe(sub)


async def _unless(next_batch: Awaitable[T], revoked: asyncio.Future[None]) -> T | None:
    """The next batch, or None if ``revoked`` is done first."""
    waiting = asyncio.ensure_future(next_batch)
    try:
        await asyncio.wait((waiting, revoked), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # the watcher gone meanwhile (cancelled)
        waiting.cancel()
        raise
    if waiting.done():
        return waiting.result()
    waiting.cancel()
    return None

