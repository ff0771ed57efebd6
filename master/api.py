"""REST API at the master: /v1 and the TaskMaster-compatible /schedule and /status."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import math
import socket
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp_sse import EventSourceResponse
from multidict import MultiMapping

from strata.common.api_models import MAX_UNIX_S, MIN_UNIX_S
from strata.common.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    RateLimited,
    StrataError,
    Unauthenticated,
    Unavailable,
)
from strata.common.kinds import KINDS
from strata.common.models import MAX_KEY, TaskState, parse_batch, parse_new_task
from strata.common.schedules import parse_schedule
from strata.common.text import MAX_DEPTH, refuse_unstorable
from strata.common.timeutil import as_utc, rfc3339, utcnow
from strata.master import auth
from strata.master.control import Control, schedule_json
from strata.master.stream import Dropped, EventHub, Filter, Subscription

logger = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024
DEFAULT_PAGE = 100
MAX_PAGE = 1000
DEFAULT_GRAPH_DEPTH = 3
MAX_GRAPH_DEPTH = 50
LIST_PARAMETERS = ("state", "region", "kind", "order", "limit", "cursor")
# The dashboard's static files, shipped in the package (served at / and /ui/).
DASHBOARD = Path(__file__).with_name("dashboard")
DASHBOARD_FILES = frozenset(
    p.name for p in (DASHBOARD.iterdir() if DASHBOARD.is_dir() else ()) if p.is_file())
# A subscriber whose socket takes no bytes for this long is cut off.
SEND_TIMEOUT_S = 30.0
STREAM_SEND_BUFFER = 128 * 1024

_STATUS = {
    InvalidInput: 400,
    Unauthenticated: 401,
    NotFound: 404,
    Conflict: 409,
    RateLimited: 429,
    Unavailable: 503,
}
# What needs no token: the probes, and the dashboard's page and files (no data in them).
OPEN_ROUTES = frozenset({"/healthz", "/readyz", "/", "/ui/{name}"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, code: str, message: str, **headers: str) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers or None
    )


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one place where errors become HTTP statuses."""
    try:
        return await handler(request)
    except StrataError as exc:
        status = next((s for cls, s in _STATUS.items() if isinstance(exc, cls)), 500)
        headers = {}
        if isinstance(exc, Unavailable):
            headers["Retry-After"] = str(max(1, round(exc.retry_after_s)))
        if isinstance(exc, RateLimited):  # not sooner than it would be let through
            headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
        if isinstance(exc, Unauthenticated):
            headers["WWW-Authenticate"] = exc.challenge
        return _error(status, exc.code, str(exc), **headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = exc.reason.lower().replace(" ", "_")
        # A 405 says which methods the path takes.
        kept = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return _error(exc.status, code, exc.text or exc.reason, **kept)
    except Exception:
        logger.exception(
            "unhandled error on %s %s", request.method, request.path,
            extra={"action": "http_internal_error"},
        )
        return _error(500, "internal", "internal error")


async def _json_body(request: web.Request) -> Any:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY, actual_size=request.content_length)
    raw = await request.read()
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"malformed JSON: {exc}") from None
    except RecursionError:
        raise InvalidInput(f"body: nested deeper than {MAX_DEPTH} levels") from None
    refuse_unstorable(body, "body")
    return body


def _query(request: web.Request, *allowed: str, repeatable: tuple[str, ...] = ()
           ) -> MultiMapping[str]:
    """The query string, refusing a parameter the endpoint does not know (a typo would
    otherwise be a silently ignored filter) or one given twice (but for those
    ``repeatable``)."""
    query = request.query
    unknown = sorted(set(query) - set(allowed))
    if unknown:
        takes = ", ".join(allowed) if allowed else "none"
        raise InvalidInput(
            f"unknown query parameter {', '.join(map(repr, unknown))}; this endpoint takes: "
            f"{takes}")
    repeated = sorted(k for k in set(query) - set(repeatable) if len(query.getall(k)) > 1)
    if repeated:
        raise InvalidInput(f"query parameter given more than once: {', '.join(repeated)}")
    for key, value in query.items():
        refuse_unstorable(value, key)
    refuse_unstorable(dict(request.match_info), "path")
    return query


def _cap_send_buffer(request: web.Request) -> None:
    """An event stream's bytes in flight are bounded by the kernel's send buffer before
    its subscriber counts as behind: a fixed one, not one autotuned up to megabytes."""
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_SEND_BUFFER)


def _limit(query: Mapping[str, str]) -> int:
    try:
        limit = int(query.get("limit", DEFAULT_PAGE))
    except ValueError:
        raise InvalidInput("limit: must be an integer") from None
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(f"limit: must be between 1 and {MAX_PAGE}")
    return limit


def _parse_time(text: str, name: str) -> datetime:
    try:
        return as_utc(datetime.fromisoformat(text))
    except (ValueError, OverflowError):
        raise InvalidInput(f"{name}: not an RFC 3339 date-time: {text!r}") from None


def _concurrency_key(request: web.Request) -> str:
    key = request.match_info["key"]
    if not 1 <= len(key) <= MAX_KEY:
        raise InvalidInput(f"key: must be 1 to {MAX_KEY} characters")
    return key


def task_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise InvalidInput(f"not a task id: {text!r}") from None


def _encode_cursor(created_at: datetime, task_id: uuid.UUID) -> str:
    raw = f"{created_at.isoformat()}|{task_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        when, _, ident = raw.partition("|")
        return as_utc(datetime.fromisoformat(when)), uuid.UUID(ident)
    except (ValueError, OverflowError, binascii.Error, UnicodeDecodeError):
        raise InvalidInput("cursor: not a cursor this API returned") from None


def _parse_scheduled_at(value: Any) -> datetime:
    """TaskMaster clients send RFC 3339 text or unix seconds."""
    if value is None:
        return utcnow()
    if isinstance(value, bool):
        raise InvalidInput("scheduled_at: must be RFC 3339 text or unix seconds")
    if isinstance(value, int | float):
        # The documented range, exactly (fromtimestamp rounds to microseconds past it).
        if not MIN_UNIX_S <= value <= MAX_UNIX_S:
            raise InvalidInput(f"scheduled_at: out of range: unix seconds from {MIN_UNIX_S} "
                               f"to {MAX_UNIX_S}")
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            raise InvalidInput("scheduled_at: out of range") from None
    if isinstance(value, str):
        try:
            return as_utc(datetime.fromisoformat(value))
        except ValueError:
            raise InvalidInput(f"scheduled_at: not an RFC 3339 date-time: {value!r}") from None
        except OverflowError:
            raise InvalidInput(f"scheduled_at: out of range in UTC: {value!r}") from None
    raise InvalidInput("scheduled_at: must be RFC 3339 text or unix seconds")


# ---- what REST and the gRPC client API (strata.master.client_api) share: each takes the
# request as REST has it (a JSON body, query values) and answers JSON, so that both go
# down one code path, with the same validation and the same errors.


def _state(value: str | None) -> str | None:
    if value is not None and value not in TaskState.__members__.values():
        raise InvalidInput(f"state: unknown state {value!r}; expected one of "
                           + ", ".join(s.value for s in TaskState))
    return value


async def create_batch(control: Control, body: Any) -> tuple[dict[str, Any], bool]:
    """Create a batch: ``{"ids", "existed"}``, and whether any task was new."""
    tasks = parse_batch(body)
    existing = (await control.create(tasks)).existing
    ids, existed = [], []
    for t in tasks:
        found = existing.get(t.idempotency_key) if t.idempotency_key is not None else None
        ids.append(str(found.id if found is not None else t.id))
        existed.append(found is not None)
    # Each id, in the batch's order, is the task made now or the one whose idempotency
    # key the item named (existed: true).
    return {"ids": ids, "existed": existed}, len(existing) < len(tasks)


async def task_detail(control: Control, text: str) -> dict[str, Any]:
    """A task as GET /v1/tasks/{id} shows it: with why it waits, and its dependents."""
    task = await control.get(task_id(text))
    body = task.to_json()
    if task.state in (TaskState.WAITING, TaskState.PENDING):
        body["waiting_for"] = await control.waiting_for(task)
    body["dependents"] = await control.dependents(task.id)
    return body


async def task_page(control: Control, query: Mapping[str, str]) -> dict[str, Any]:
    """A page of GET /v1/tasks, from its query values (an empty value: not given)."""
    state = _state(query.get("state") or None)
    limit = _limit(query)
    kind = query.get("kind") or None
    if kind is not None and kind not in KINDS:
        raise InvalidInput(f"kind: unknown kind {kind!r}; expected one of " + ", ".join(KINDS))
    order = query.get("order", "asc")
    if order not in ("asc", "desc"):
        raise InvalidInput("order: asc (oldest first, the default) or desc (newest first)")
    cursor = query.get("cursor")
    after = _decode_cursor(cursor) if cursor else None
    tasks = await control.list_tasks(
        state=state, region=query.get("region") or None, kind=kind, after=after,
        limit=limit, newest_first=order == "desc",
    )
    next_cursor = (
        _encode_cursor(tasks[-1].created_at, tasks[-1].id) if len(tasks) == limit else None
    )
    return {"tasks": [t.to_json() for t in tasks], "next_cursor": next_cursor}


def event_filter(tasks: Iterable[str], state: str | None, region: str | None) -> Filter:
    """Which changes a subscriber of /v1/events wants."""
    return Filter(tasks=frozenset(str(task_id(t)) for t in tasks), state=_state(state),
                  region=region)


class _JsonErrorHandler(RequestHandler):
    """Errors aiohttp's HTTP parser raises before any handler runs (a request line over
    its limit, a byte that is not ASCII in the URL) get the API's JSON error shape too."""

    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # aiohttp's own handling logs the error and refuses once a response has begun;
        # its text/plain answer is replaced by ours.
        super().handle_error(request, status, exc, message)
        if status == 500:
            code, text = "internal", "internal error"
        else:
            code = HTTPStatus(status).phrase.lower().replace(" ", "_")
            text = message or HTTPStatus(status).description
        response = _error(status, code, text)
        response.force_close()
        return response


class _JsonErrorServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _JsonErrorHandler(self, loop=self._loop, **self._kwargs)


class ApiRunner(web.AppRunner):
    """The REST API's runner: an AppRunner whose connections answer parser errors in
    JSON."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _JsonErrorServer  # the same server, making our handlers
        return server


def is_open(request: web.Request) -> bool:
    """Whether the request is for a route that needs no token (OPEN_ROUTES)."""
    match = request.match_info
    resource = match.route.resource
    return (match.http_exception is None and resource is not None
            and resource.canonical in OPEN_ROUTES)


class Api:
    def __init__(self, control: Control, events: EventHub | None = None, *,
                 keepalive_s: float = 15.0, guard: auth.Guard | None = None) -> None:
        self._control = control
        self._events = events
        self._keepalive_s = keepalive_s
        self._guard = guard
        self._openapi: bytes | None = None

    def app(self) -> web.Application:
        middlewares: list[Any] = [errors_middleware]
        if self._guard is not None:  # inside: its refusals are answered by the errors'
            middlewares.append(auth.middleware(self._guard, is_open))
        app = web.Application(client_max_size=MAX_BODY, middlewares=middlewares)
        app.router.add_post("/v1/tasks", self.create_task)
        app.router.add_get("/v1/tasks", self.list_tasks)
        app.router.add_post("/v1/tasks/batch", self.create_batch)
        # Not "batch": GET /v1/tasks/batch is a 405 (Allow: POST), not a task id.
        app.router.add_get(r"/v1/tasks/{id:(?!batch$)[^{}/]+}", self.get_task)
        app.router.add_patch(r"/v1/tasks/{id:(?!batch$)[^{}/]+}", self.change_task)
        app.router.add_get("/v1/tasks/{id}/graph", self.task_graph)
        app.router.add_post("/v1/tasks/{id}/cancel", self.cancel_task)
        app.router.add_post("/v1/tasks/{id}/retry", self.retry_task)
        app.router.add_get("/v1/tasks/{id}/attempts", self.task_attempts)
        app.router.add_get("/v1/events", self.events)
        app.router.add_get("/v1/concurrency", self.concurrency_keys)
        app.router.add_get("/v1/concurrency/{key}", self.concurrency)
        app.router.add_put("/v1/concurrency/{key}", self.set_concurrency)
        app.router.add_delete("/v1/concurrency/{key}", self.clear_concurrency)
        app.router.add_post("/v1/schedules", self.create_schedule)
        app.router.add_get("/v1/schedules", self.list_schedules)
        app.router.add_get("/v1/schedules/{name}", self.get_schedule)
        app.router.add_patch("/v1/schedules/{name}", self.change_schedule)
        app.router.add_delete("/v1/schedules/{name}", self.delete_schedule)
        app.router.add_post("/v1/schedules/{name}/trigger", self.trigger_schedule)
        app.router.add_get("/v1/schedules/{name}/fires", self.schedule_fires)
        app.router.add_get("/v1/stats", self.stats)
        app.router.add_get("/v1/regions", self.regions)
        app.router.add_delete("/v1/regions/{name}", self.delete_region)
        app.router.add_get("/v1/workers", self.workers)
        app.router.add_get("/v1/openapi.json", self.openapi)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_post("/schedule", self.schedule)
        app.router.add_get("/status", self.status)
        app.router.add_get("/status/", self.status)
        # The dashboard, outside the API: its page and the files it loads.
        app.router.add_get("/", self.dashboard)
        app.router.add_get("/ui/{name}", self.dashboard_file)
        return app

    # ---- the dashboard ----------------------------------------------------------

    async def dashboard(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(DASHBOARD / "index.html", headers={"Cache-Control": "no-cache"})

    async def dashboard_file(self, request: web.Request) -> web.FileResponse:
        name = request.match_info["name"]
        if name not in DASHBOARD_FILES:
            raise NotFound(f"no dashboard file {name}")
        return web.FileResponse(DASHBOARD / name, headers={"Cache-Control": "no-cache"})

    # ---- /v1 ----------------------------------------------------------------

    async def create_task(self, request: web.Request) -> web.Response:
        _query(request)
        task = parse_new_task(await _json_body(request))
        stored, new = await self._control.create_one(task)
        # A create whose idempotency key was taken answers with the task it made: 200.
        return web.json_response(stored.to_json(), status=201 if new else 200)

    async def create_batch(self, request: web.Request) -> web.Response:
        _query(request)
        body, new = await create_batch(self._control, await _json_body(request))
        return web.json_response(body, status=201 if new else 200)

    async def get_task(self, request: web.Request) -> web.Response:
        _query(request)
        return web.json_response(await task_detail(self._control, request.match_info["id"]))

    async def change_task(self, request: web.Request) -> web.Response:
        _query(request)
        changing = task_id(request.match_info["id"])
        body = await _json_body(request)
        if not isinstance(body, dict) or set(body) != {"priority"}:
            raise InvalidInput('body must be {"priority": <integer>}: a task that has not '
                               "started can change its priority, and only that")
        priority = body["priority"]
        if isinstance(priority, float) and priority.is_integer():
            priority = int(priority)
        if (isinstance(priority, bool) or not isinstance(priority, int)
                or not -(2**31) <= priority < 2**31):
            raise InvalidInput("priority: must be an integer from -2147483648 to 2147483647")
        task = await self._control.reprioritize(changing, priority)
        return web.json_response(task.to_json())

    async def task_graph(self, request: web.Request) -> web.Response:
        query = _query(request, "limit", "depth")
        limit = _limit(query)
        try:
            depth = int(query.get("depth", DEFAULT_GRAPH_DEPTH))
        except ValueError:
            raise InvalidInput("depth: must be an integer") from None
        if not 1 <= depth <= MAX_GRAPH_DEPTH:
            raise InvalidInput(f"depth: must be between 1 and {MAX_GRAPH_DEPTH}")
        return web.json_response(await self._control.graph(
            task_id(request.match_info["id"]), limit=limit, depth=depth))

    # ---- concurrency keys ---------------------------------------------------------

    async def concurrency_keys(self, request: web.Request) -> web.Response:
        _query(request)
        return web.json_response({"keys": await self._control.concurrency_keys()})

    async def concurrency(self, request: web.Request) -> web.Response:
        _query(request)
        return web.json_response(
            await self._control.concurrency(_concurrency_key(request)))

    async def set_concurrency(self, request: web.Request) -> web.Response:
        _query(request)
        key = _concurrency_key(request)
        body = await _json_body(request)
        if not isinstance(body, dict) or set(body) != {"limit"}:
            raise InvalidInput('body must be {"limit": <integer >= 1>}')
        limit = body["limit"]
        if isinstance(limit, float) and limit.is_integer():
            limit = int(limit)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit < 2**31:
            raise InvalidInput("limit: must be an integer from 1 to 2147483647")
        return web.json_response(await self._control.set_concurrency(key, limit))

    async def clear_concurrency(self, request: web.Request) -> web.Response:
        _query(request)
        await self._control.clear_concurrency(_concurrency_key(request))
        return web.Response(status=204)

    async def task_attempts(self, request: web.Request) -> web.Response:
        _query(request)
        attempts = await self._control.attempts(task_id(request.match_info["id"]))
        return web.json_response({"attempts": attempts})

    async def list_tasks(self, request: web.Request) -> web.Response:
        query = _query(request, *LIST_PARAMETERS)
        return web.json_response(await task_page(self._control, query))

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Server-Sent Events: one ``task`` event per state change that matches the
        filter, from every master. ``missed`` says events were lost before the first one
        sent (the Last-Event-ID is older than the window); ``dropped`` that the client fell
        too far behind, and the stream ends."""
        query = _query(request, "task", "state", "region", repeatable=("task",))
        wanted = event_filter(query.getall("task", []), query.get("state") or None,
                              query.get("region") or None)
        if self._events is None:
            raise Unavailable("this master serves no event stream", retry_after_s=60.0)
        last = request.headers.get("Last-Event-ID") or None
        sub = await self._events.subscribe(wanted, last)
        try:
            response = EventSourceResponse(ping_interval=self._keepalive_s,
                                           send_timeout=SEND_TIMEOUT_S)
            response.force_close()  # a connection that streamed is never used again
            await response.prepare(request)
            _cap_send_buffer(request)
            closed = asyncio.ensure_future(response.wait())
            revoked = self._refusal(request)
            if revoked is not None:  # the stream ends with its token
                revoked.add_done_callback(lambda _: closed.cancel())
            try:
                await self._stream(response, sub, last, closed)
            except (ConnectionResetError, TimeoutError):
                # Gone, or took nothing for SEND_TIMEOUT_S: no polite close for a peer
                # that does not read.
                if request.transport is not None:
                    request.transport.abort()
            finally:
                closed.cancel()
                if revoked is not None:
                    revoked.cancel()
        finally:
            self._events.unsubscribe(sub)
        return response

    def _refusal(self, request: web.Request) -> asyncio.Future[None] | None:
        """Done once the request would be refused: its token revoked, or a token needed
        by one that came without (None: no guard)."""
        if self._guard is None:
            return None
        digest = request.get(auth.TOKEN_KEY)
        return asyncio.ensure_future(self._guard.until_refused(
            digest if isinstance(digest, bytes) else None))

    async def _stream(self, response: EventSourceResponse, sub: Subscription,
                      last: str | None, closed: asyncio.Future[None]) -> None:
        # The first bytes go out at once: a client knows it is subscribed.
        await response.send(json.dumps({"resumed_after": last}), event="subscribed")
        if sub.missed:
            await response.send(json.dumps({
                "reason": f"events after {last} are no longer kept: some were missed",
            }), event="missed")
        while not closed.done():
            waiting = asyncio.ensure_future(sub.next())
            await asyncio.wait((waiting, closed), return_when=asyncio.FIRST_COMPLETED)
            if not waiting.done():
                waiting.cancel()
                return
            try:
                batch = waiting.result()
            except Dropped as exc:
                await response.send(json.dumps({"reason": str(exc)}), event="dropped")
                return
            # One write for everything waiting: a burst of a thousand changes costs one
            # send, not a thousand.
            async with asyncio.timeout(SEND_TIMEOUT_S):
                await response.write(b"".join(event.wire for event in batch))

    # ---- schedules ------------------------------------------------------------------

    async def create_schedule(self, request: web.Request) -> web.Response:
        _query(request)
        spec = parse_schedule(await _json_body(request))
        return web.json_response(await self._control.create_schedule(spec), status=201)

    async def list_schedules(self, request: web.Request) -> web.Response:
        _query(request)
        return web.json_response({"schedules": await self._control.schedules()})

    async def get_schedule(self, request: web.Request) -> web.Response:
        _query(request)
        row = await self._control.schedule(request.match_info["name"])
        return web.json_response(schedule_json(row))

    async def change_schedule(self, request: web.Request) -> web.Response:
        _query(request)
        changes = await _json_body(request)
        return web.json_response(
            await self._control.change_schedule(request.match_info["name"], changes))

    async def delete_schedule(self, request: web.Request) -> web.Response:
        _query(request)
        await self._control.delete_schedule(request.match_info["name"])
        return web.Response(status=204)

    async def trigger_schedule(self, request: web.Request) -> web.Response:
        _query(request)
        fired = await self._control.trigger_schedule(request.match_info["name"])
        return web.json_response(fired, status=201)

    async def schedule_fires(self, request: web.Request) -> web.Response:
        query = _query(request, "limit", "before")
        limit = _limit(query)
        before_text = query.get("before") or None
        before = _parse_time(before_text, "before") if before_text else None
        fires = await self._control.schedule_fires(request.match_info["name"], before, limit)
        # Newest first; the next page is the fires before the last one here.
        return web.json_response({
            "fires": fires,
            "next_before": fires[-1]["fire_time"] if len(fires) == limit else None,
        })

    async def cancel_task(self, request: web.Request) -> web.Response:
        _query(request)
        task = await self._control.cancel(task_id(request.match_info["id"]))
        return web.json_response(task.to_json())

    async def retry_task(self, request: web.Request) -> web.Response:
        _query(request)
        task = await self._control.retry(task_id(request.match_info["id"]))
        return web.json_response(task.to_json(), status=201)

    async def stats(self, request: web.Request) -> web.Response:
        _query(request)
        return web.json_response(await self._control.stats())

    async def regions(self, request: web.Request) -> web.Response:
        _query(request)
        return web.json_response({"regions": await self._control.regions()})

    async def delete_region(self, request: web.Request) -> web.Response:
        _query(request)
        await self._control.delete_region(request.match_info["name"])
        return web.Response(status=204)

    async def workers(self, request: web.Request) -> web.Response:
        _query(request)
        return web.json_response({"workers": await self._control.workers()})

    async def openapi(self, request: web.Request) -> web.Response:
        _query(request)
        # Imported here: the document is built from this module's limits.
        from strata.master.openapi import document

        if self._openapi is None:  # the same bytes every time: built once
            self._openapi = json.dumps(document()).encode()
        return web.Response(body=self._openapi, content_type="application/json")

    async def metrics(self, request: web.Request) -> web.Response:
        _query(request)
        if self._events is not None:
            self._control.metrics.event_subscribers.set(self._events.subscribers)
        return await self._control.render_metrics()

    async def healthz(self, request: web.Request) -> web.Response:
        _query(request)
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        _query(request)
        await self._control.ping()
        return web.json_response({"status": "ready"})

    # ---- TaskMaster-compatible --------------------------------------------------

    async def schedule(self, request: web.Request) -> web.Response:
        _query(request)
        body = await _json_body(request)
        if not isinstance(body, dict):
            raise InvalidInput("body must be a JSON object")
        command = body.get("command")
        if not isinstance(command, str) or not command:
            raise InvalidInput("command: required, a non-empty string")
        unknown = set(body) - {"command", "scheduled_at"}
        if unknown:
            raise InvalidInput(f"unknown fields: {', '.join(sorted(unknown))}")
        scheduled_at = _parse_scheduled_at(body.get("scheduled_at"))
        task = parse_new_task(
            {"kind": "shell", "command": command, "run_at": scheduled_at.isoformat()}
        )
        created, _ = await self._control.create_one(task)
        ts = created.run_at.timestamp()
        return web.json_response(
            {
                "command": command,
                "scheduled_at": int(ts) if ts == int(ts) else ts,
                "task_id": str(created.id),
            }
        )

    async def status(self, request: web.Request) -> web.Response:
        text = _query(request, "task_id").get("task_id")
        if not text:
            raise InvalidInput("task_id: required query parameter")
        task = await self._control.get(task_id(text))
        out: dict[str, Any] = {
            "task_id": str(task.id),
            "command": task.payload.get("command"),
            "scheduled_at": rfc3339(task.run_at),
            "state": task.state.value,
        }
        stamps = {
            "picked_at": task.picked_at,
            "started_at": task.started_at,
            "completed_at": task.finished_at if task.state is TaskState.SUCCEEDED else None,
            "failed_at": task.finished_at if task.state is TaskState.FAILED else None,
        }
        out.update({k: rfc3339(v) for k, v in stamps.items() if v is not None})
        return web.json_response(out)
