"""The master's REST API at the JSON level: every route, each answer as the master sent
it (dicts and lists), every refusal as an :class:`ApiError` of the code's own class, and
the event stream, message by message or followed across drops and restarts.

Used as it is by local runs, tests and benches, and under the typed SDK,
``strata.client``, which the CLI holds."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import quote

import aiohttp

from strata.common import errors
from strata.common.errors import StrataError

TERMINAL = ("succeeded", "failed", "cancelled")
# Between tries to take an event stream up again while the master cannot be reached.
RECONNECT_FIRST_S = 0.1
RECONNECT_MAX_S = 2.0
# The header a token goes in (``Authorization: Bearer <token>``), when one is given.
AUTHORIZATION = "Authorization"


class ApiError(StrataError):
    """What the API refused (its ``{"error": {"code", "message"}}``), or a failure to get
    an answer from it. ``status`` is the HTTP status (None when no API answered: a master
    that cannot be reached, a URL that is not one), ``code`` the body's code and
    ``message`` its message, which is also the text of the exception. Each code has a
    class of its own, below; one without (a 431, say) is an ApiError."""

    def __init__(self, status: int | None, code: str, message: str) -> None:
        super().__init__(message or f"HTTP {status} ({code})")
        self.status = status
        self.code = code
        self.message = message


class InvalidInput(ApiError, errors.InvalidInput):
    """400 ``invalid_input``: a malformed body, an unknown field or kind, a bad value;
    also a URL or a name the client cannot send (then ``status`` is None)."""


class Unauthenticated(ApiError, errors.Unauthenticated):
    """401 (``unauthenticated``: no token; ``invalid_token``: one that is wrong or was
    revoked): the master needs a token, ``Authorization: Bearer <token>`` (the client's
    ``token``, or ``$STRATA_TOKEN``)."""


class NotFound(ApiError, errors.NotFound):
    """404 ``not_found``: no such task, schedule, limit or route."""


class MethodNotAllowed(ApiError):
    """405 ``method_not_allowed``: the path takes other methods."""


class Conflict(ApiError, errors.Conflict):
    """409 ``conflict``: well formed, but the object's state forbids it (cancel a finished
    task, a schedule's name taken, an idempotency key asked for differently)."""


class RequestEntityTooLarge(ApiError):
    """413 ``request_entity_too_large``: a body over the API's 1 MiB."""


class RateLimited(ApiError, errors.RateLimited):
    """429 ``rate_limited``: too many tokens that are not valid came from this address;
    its requests are refused, whatever they send, for ``retry_after_s`` (its
    ``Retry-After``)."""

    def __init__(self, status: int | None, code: str, message: str, *,
                 retry_after_s: float = 1.0) -> None:
        super().__init__(status, code, message)
        self.retry_after_s = retry_after_s


class Internal(ApiError):
    """500 ``internal``: the master failed; its log says why."""


class Unavailable(ApiError, errors.Unavailable):
    """503 (``unavailable``, ``database_unavailable``, ``circuit_open``): try again after
    ``retry_after_s`` (its ``Retry-After``); also a master that cannot be reached, that
    does not answer in time, or that is not a Strata API (``status`` None)."""

    def __init__(self, status: int | None, code: str, message: str, *,
                 retry_after_s: float = 1.0) -> None:
        super().__init__(status, code, message)
        self.retry_after_s = retry_after_s


ERRORS_BY_CODE: dict[str, type[ApiError]] = {
    "invalid_input": InvalidInput, "unauthenticated": Unauthenticated,
    "invalid_token": Unauthenticated, "not_found": NotFound,
    "method_not_allowed": MethodNotAllowed, "conflict": Conflict,
    "request_entity_too_large": RequestEntityTooLarge, "internal": Internal,
    "unavailable": Unavailable, "database_unavailable": Unavailable,
    "circuit_open": Unavailable, "rate_limited": RateLimited,
}
# A code of none of those (an HTTP parser's error, another hop's) goes by its status.
ERRORS_BY_STATUS: dict[int, type[ApiError]] = {
    400: InvalidInput, 401: Unauthenticated, 404: NotFound, 405: MethodNotAllowed,
    409: Conflict, 413: RequestEntityTooLarge, 429: RateLimited, 500: Internal,
    503: Unavailable,
}


def api_error(status: int, code: str, message: str, *,
              retry_after: str | None = None) -> ApiError:
    """The exception of an error answer: by its code, else by its status."""
    cls = ERRORS_BY_CODE.get(code) or ERRORS_BY_STATUS.get(status, ApiError)
    if issubclass(cls, Unavailable | RateLimited):
        return cls(status, code, message, retry_after_s=_seconds(retry_after))
    return cls(status, code, message)


def _seconds(retry_after: str | None) -> float:
    """A ``Retry-After`` of seconds; 1 when absent or a date."""
    try:
        return max(0.0, float(retry_after)) if retry_after else 1.0
    except ValueError:
        return 1.0


def unreachable(message: str) -> Unavailable:
    """No API answered: no status, no code of its own."""
    return Unavailable(None, "unavailable", message)


def check_base_url(base_url: str) -> str:
    """The API's address without a trailing ``/``; one that is not http(s) is refused."""
    if not base_url.lower().startswith(("http://", "https://")):
        raise InvalidInput(None, "invalid_input",
                           f"not an http:// or https:// URL: {base_url!r}")
    return base_url.rstrip("/")


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One message of ``GET /v1/events``: ``event`` is ``task`` for a state change (its
    ``data`` the change), or ``subscribed``, ``missed``, ``dropped``, or ``comment``
    (keep-alives, only when asked for)."""

    event: str
    data: dict[str, Any]
    id: str | None = None


def _raise_error(status: int, body: Any, retry_after: str | None = None) -> NoReturn:
    err = body.get("error") if isinstance(body, dict) else None
    err = err if isinstance(err, dict) else {}
    code, message = str(err.get("code") or "error"), str(err.get("message") or "")
    raise api_error(status, code, message, retry_after=retry_after)


class _Patience:
    """Another try, after a pause that grows, for as long as the master has not been
    reached for less than ``for_s`` seconds (0: none)."""

    def __init__(self, for_s: float) -> None:
        self.for_s = for_s
        self._since: float | None = None
        self._pause = RECONNECT_FIRST_S

    def reached(self) -> None:
        self._since, self._pause = None, RECONNECT_FIRST_S

    async def failed(self, exc: Unavailable) -> None:
        """Pause before the next try; raises ``exc`` once out of patience."""
        now = asyncio.get_running_loop().time()
        self._since = now if self._since is None else self._since
        if now - self._since >= self.for_s:
            raise exc
        await asyncio.sleep(min(self._pause, self._since + self.for_s - now))
        self._pause = min(2 * self._pause, RECONNECT_MAX_S)


def _segment(name: str) -> str:
    """A name as one path segment: a ``/``, space, ``?`` or ``%`` in it stays in it. An
    empty name, ``.`` and ``..`` cannot be one (the URL would name another route)."""
    if name in ("", ".", ".."):
        raise InvalidInput(None, "invalid_input", f"cannot be named in a URL path: {name!r}")
    return quote(name, safe="")


def _schedule_path(name: str) -> str:
    return "/v1/schedules/" + _segment(name)


def _concurrency_path(key: str) -> str:
    return "/v1/concurrency/" + _segment(key)


class Client:
    """Made in a running event loop, and used in that loop only. ``token``, when given,
    goes with every request as ``Authorization: Bearer <token>``. ``ca``, a PEM file,
    is the only CA an ``https://`` master's certificate is checked against (default:
    the system's)."""

    def __init__(self, base_url: str, *, timeout_s: float = 30.0,
                 token: str | None = None, ca: str | os.PathLike[str] | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        # An https:// master with a certificate of our own CA: trust that CA (only).
        ssl_context: ssl.SSLContext | bool = True
        if ca is not None:
            try:
                ssl_context = ssl.create_default_context(cafile=os.fspath(ca))
            except (OSError, ssl.SSLError) as exc:
                raise InvalidInput(None, "invalid_input",
                                   f"cannot use {os.fspath(ca)!r} as a CA: {exc}") from None
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            connector=aiohttp.TCPConnector(limit=64, ssl=ssl_context),
            headers={AUTHORIZATION: f"Bearer {token}"} if token else None,
        )

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._session.close()

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """The answer's JSON (None for a 204); an error answer raises its ApiError."""
        check_base_url(self.base_url)
        try:
            async with self._session.request(method, self.base_url + path, **kwargs) as resp:
                try:
                    body = await resp.json(content_type=None)
                except ValueError:
                    # Not JSON: whatever answers there is not a Strata master.
                    raise unreachable(
                        f"{self.base_url} is not a Strata API: {method} {path} answered "
                        f"HTTP {resp.status} with a body that is not JSON") from None
                if resp.status >= 400:
                    _raise_error(resp.status, body, resp.headers.get("Retry-After"))
                return body
        except aiohttp.InvalidURL as exc:
            raise InvalidInput(None, "invalid_input",
                               f"not an http:// or https:// URL: {self.base_url!r}") from exc
        except aiohttp.ClientConnectionError as exc:
            raise unreachable(f"cannot reach {self.base_url}: {exc}") from exc
        except TimeoutError as exc:
            # The session's own limit; a caller's deadline cancels instead.
            raise unreachable(
                f"no answer from {self.base_url} within {self.timeout_s:g}s") from exc

    async def create(self, **task: Any) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("POST", "/v1/tasks", json=task)
        return result

    async def create_batch(self, tasks: list[dict[str, Any]]) -> list[str]:
        result = await self.request("POST", "/v1/tasks/batch", json={"tasks": tasks})
        return list(result["ids"])

    async def get(self, task_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", f"/v1/tasks/{task_id}")
        return result

    async def list_tasks(self, **params: str) -> dict[str, Any]:
        """One page: {"tasks": [...], "next_cursor": ...}."""
        result: dict[str, Any] = await self.request("GET", "/v1/tasks", params=params)
        return result

    async def retry(self, task_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("POST", f"/v1/tasks/{task_id}/retry")
        return result

    async def cancel(self, task_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("POST", f"/v1/tasks/{task_id}/cancel")
        return result

    async def attempts(self, task_id: str) -> list[dict[str, Any]]:
        """Every attempt, oldest first, the one in flight last."""
        result = await self.request("GET", f"/v1/tasks/{_segment(task_id)}/attempts")
        return list(result["attempts"])

    async def graph(self, task_id: str, *, depth: int | None = None,
                    limit: int | None = None) -> dict[str, Any]:
        """The DAG around a task: {"root", "nodes", "edges", "truncated"}."""
        params = {k: str(v) for k, v in (("depth", depth), ("limit", limit)) if v is not None}
        result: dict[str, Any] = await self.request(
            "GET", f"/v1/tasks/{_segment(task_id)}/graph", params=params)
        return result

    async def reprioritize(self, task_id: str, priority: int) -> dict[str, Any]:
        """``PATCH /v1/tasks/{id}``: the task, with its new priority. One that has started
        or ended is a :class:`Conflict` (409)."""
        result: dict[str, Any] = await self.request(
            "PATCH", "/v1/tasks/" + _segment(task_id), json={"priority": priority})
        return result

    # ---- concurrency limits -------------------------------------------------------
    # Each is {"key", "limit", "active", "pending"}: at most ``limit`` tasks of
    # ``concurrency_key`` key dispatched or running at once (``limit`` None: no limit).

    async def set_concurrency(self, key: str, limit: int) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("PUT", _concurrency_path(key),
                                                    json={"limit": limit})
        return result

    async def concurrency(self, key: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", _concurrency_path(key))
        return result

    async def concurrency_limits(self) -> list[dict[str, Any]]:
        """The keys that have a limit."""
        return list((await self.request("GET", "/v1/concurrency"))["keys"])

    async def clear_concurrency(self, key: str) -> None:
        """No limit on the key any more; one that had none is :class:`NotFound`."""
        await self.request("DELETE", _concurrency_path(key))

    # ---- schedules ----------------------------------------------------------------

    async def create_schedule(self, **spec: Any) -> dict[str, Any]:
        """``POST /v1/schedules``; a name taken already is a :class:`Conflict` (409)."""
        result: dict[str, Any] = await self.request("POST", "/v1/schedules", json=spec)
        return result

    async def schedules(self) -> list[dict[str, Any]]:
        return list((await self.request("GET", "/v1/schedules"))["schedules"])

    async def schedule(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", _schedule_path(name))
        return result

    async def change_schedule(self, name: str, **changes: Any) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("PATCH", _schedule_path(name),
                                                    json=changes)
        return result

    async def delete_schedule(self, name: str) -> None:
        await self.request("DELETE", _schedule_path(name))

    async def trigger_schedule(self, name: str) -> dict[str, Any]:
        """Fire it now: {"fire_time": ..., "task_id": ...}."""
        result: dict[str, Any] = await self.request("POST", _schedule_path(name) + "/trigger")
        return result

    async def schedule_fires(self, name: str, *, limit: int | None = None,
                             before: str | None = None) -> dict[str, Any]:
        """One page, newest first: {"fires": [...], "next_before": ...}."""
        params = {k: v for k, v in (("limit", None if limit is None else str(limit)),
                                    ("before", before)) if v is not None}
        result: dict[str, Any] = await self.request("GET", _schedule_path(name) + "/fires",
                                                    params=params)
        return result

    async def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", "/v1/stats")
        return result

    async def regions(self) -> list[dict[str, Any]]:
        return list((await self.request("GET", "/v1/regions"))["regions"])

    async def workers(self) -> list[dict[str, Any]]:
        return list((await self.request("GET", "/v1/workers"))["workers"])

    async def events(
        self, *, tasks: Iterable[str] = (), state: str | None = None,
        region: str | None = None, last_event_id: str | None = None,
        comments: bool = False,
    ) -> AsyncGenerator[StreamEvent, None]:
        """The event stream, message by message, for as long as the master sends it.
        The first message is ``subscribed``: from then on no change is missed."""
        params = [("task", t) for t in tasks]
        params += [(k, v) for k, v in (("state", state), ("region", region)) if v]
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        try:
            async with self._session.get(
                self.base_url + "/v1/events", params=params, headers=headers,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout_s),
            ) as resp:
                if resp.status >= 400:
                    await self._raise_for(resp)
                fields: dict[str, str] = {}
                data: list[str] = []
                async for raw in resp.content:
                    line = raw.decode().rstrip("\r\n")
                    if line.startswith(":"):
                        if comments:
                            yield StreamEvent("comment", {"text": line[1:].strip()})
                        continue
                    if line:
                        name, _, value = line.partition(":")
                        value = value.removeprefix(" ")
                        if name == "data":
                            data.append(value)
                        else:
                            fields[name] = value
                        continue
                    if data or fields:
                        yield StreamEvent(fields.get("event", "message"),
                                          json.loads("\n".join(data)) if data else {},
                                          fields.get("id"))
                    fields, data = {}, []
        except aiohttp.ClientPayloadError:
            # Cut mid-stream (the master was killed): it ends here, as a closed one does.
            return
        except aiohttp.ClientConnectionError as exc:
            raise unreachable(f"cannot reach {self.base_url}: {exc}") from exc

    async def _raise_for(self, resp: aiohttp.ClientResponse) -> None:
        try:
            body = await resp.json(content_type=None)
        except ValueError:
            body = None
        _raise_error(resp.status, body, resp.headers.get("Retry-After"))

    async def watch(
        self, *, tasks: Iterable[str] = (), state: str | None = None,
        region: str | None = None, last_event_id: str | None = None,
        reconnect_for_s: float = 0.0,
    ) -> AsyncGenerator[StreamEvent, None]:
        """The event stream for as long as it is read, taken up again after the last
        change it gave (``Last-Event-ID``) whenever the master drops it (this reader fell
        behind) or ends it (it restarted, the connection was cut): ``subscribed`` once per
        subscription, each ``task`` change, and ``missed`` and ``dropped``, which say
        changes may have been lost (``data["reason"]`` says why). Never ends on its own.

        A stream dropped when there is no change to take it up after cannot be resumed:
        the one that gave none yet, and the one taken up again that is dropped before it
        gives one (the master could not replay what came since: more than it buffers for
        a subscriber). It is subscribed to afresh, from now, and a ``missed`` after its
        ``subscribed`` says so (rather than the same replay asked for again and again).

        A master that cannot be reached is :class:`Unavailable`, at once or, with
        ``reconnect_for_s``, once it has not been reached for that long (a restart is
        ridden out). So is a stream that ends before it says it is subscribed: what
        answers there serves no event stream."""
        tasks = tuple(tasks)
        last = last_event_id
        patience = _Patience(reconnect_for_s)
        unreplayed: str | None = None  # a missed to say once subscribed afresh
        while True:
            subscribed = changed = False
            resumed_from = last
            try:
                async with contextlib.aclosing(self.events(
                    tasks=tasks, state=state, region=region, last_event_id=last,
                )) as stream:
                    async for message in stream:
                        if message.event == "subscribed":
                            subscribed = True
                            patience.reached()
                        elif message.event == "task":
                            changed, last = True, message.id or last
                        elif message.event == "dropped" and not changed:
                            reason = message.data.get("reason", "")
                            unreplayed = (
                                f"the changes after {resumed_from} could not be replayed: "
                                f"{reason}" if resumed_from else
                                f"dropped before it gave a change: {reason}")
                            last = None
                        elif message.event not in ("missed", "dropped"):
                            continue
                        yield message
                        if message.event == "subscribed" and unreplayed and not last:
                            yield StreamEvent("missed", {"reason": unreplayed})
                            unreplayed = None
                if not subscribed:
                    raise unreachable(f"{self.base_url} ended the event stream before it "
                                      "subscribed to it")
            except Unavailable as exc:
                await patience.failed(exc)

    async def follow(self, task_id: str, *, reconnect_for_s: float = 0.0) -> dict[str, Any]:
        """Wait for the task's end on the event stream, not by polling: subscribed first,
        then read once (it may have ended already), then told when it ends. A stream that
        breaks (dropped, the master restarting) is taken up again (:meth:`watch`, which
        says what ``reconnect_for_s`` does), and the task read again whenever changes
        may have been missed; each read is tried again likewise."""
        patience = _Patience(reconnect_for_s)

        async def read() -> dict[str, Any]:
            while True:
                try:
                    task = await self.get(task_id)
                except Unavailable as exc:
                    await patience.failed(exc)
                    continue
                patience.reached()
                return task

        async with contextlib.aclosing(self.watch(
                tasks=[task_id], reconnect_for_s=reconnect_for_s)) as stream:
            async for message in stream:
                if message.event in ("subscribed", "missed"):
                    task = await read()
                    if task["state"] in TERMINAL:
                        return task
                elif message.event == "task" and message.data["state"] in TERMINAL:
                    return await read()
        raise AssertionError("unreachable: the stream is followed until the task ends")

    async def wait(self, task_id: str, *, timeout_s: float = 60.0, poll_s: float = 0.1
                   ) -> dict[str, Any]:
        """Poll until the task is terminal."""
        async with asyncio.timeout(timeout_s):
            while True:
                task = await self.get(task_id)
                if task["state"] in TERMINAL:
                    return task
                await asyncio.sleep(poll_s)
