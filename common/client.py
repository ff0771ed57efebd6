"""A small async client for the master's REST API (used by the CLI, tests, benches)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import quote

import aiohttp

from strata.common.errors import InvalidInput, NotFound, StrataError, Unavailable

TERMINAL = ("succeeded", "failed", "cancelled")


class ApiError(StrataError):
    """An answer of 4xx or 5xx other than 400 and 404 (which are InvalidInput and
    NotFound). Its text is the API's own message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message or f"HTTP {status} ({code})")
        self.status = status
        self.code = code


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One message of ``GET /v1/events``: ``event`` is ``task`` for a state change (its
    ``data`` the change), or ``subscribed``, ``missed``, ``dropped``, or ``comment``
    (keep-alives, only when asked for)."""

    event: str
    data: dict[str, Any]
    id: str | None = None


def _raise_error(status: int, body: Any) -> NoReturn:
    err = (body or {}).get("error", {}) if isinstance(body, dict) else {}
    code, message = err.get("code", "error"), err.get("message", "")
    if status == 404:
        raise NotFound(message)
    if status == 400:
        raise InvalidInput(message)
    raise ApiError(status, code, message)


def _schedule_path(name: str) -> str:
    return "/v1/schedules/" + quote(name, safe="")


class Client:
    def __init__(self, base_url: str, *, timeout_s: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            connector=aiohttp.TCPConnector(limit=64),
        )

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._session.close()

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        if not self.base_url.lower().startswith(("http://", "https://")):
            raise InvalidInput(f"not an http:// or https:// URL: {self.base_url!r}")
        try:
            async with self._session.request(method, self.base_url + path, **kwargs) as resp:
                try:
                    body = await resp.json(content_type=None)
                except ValueError:
                    # Not JSON: whatever answers there is not a Strata master.
                    raise Unavailable(
                        f"{self.base_url} is not a Strata API: {method} {path} answered "
                        f"HTTP {resp.status} with a body that is not JSON") from None
                if resp.status >= 400:
                    _raise_error(resp.status, body)
                return body
        except aiohttp.InvalidURL as exc:
            raise InvalidInput(f"not an http:// or https:// URL: {self.base_url!r}") from exc
        except aiohttp.ClientConnectionError as exc:
            raise Unavailable(f"cannot reach {self.base_url}: {exc}") from exc
        except TimeoutError as exc:
            # The session's own limit; a caller's deadline cancels instead.
            raise Unavailable(
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

    # ---- schedules ----------------------------------------------------------------

    async def create_schedule(self, **spec: Any) -> dict[str, Any]:
        """``POST /v1/schedules``; a name taken already is an :class:`ApiError` of 409."""
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
        except aiohttp.ClientConnectionError as exc:
            raise Unavailable(f"cannot reach {self.base_url}: {exc}") from exc

    async def _raise_for(self, resp: aiohttp.ClientResponse) -> None:
        try:
            body = await resp.json(content_type=None)
        except ValueError:
            body = None
        _raise_error(resp.status, body)

    async def follow(self, task_id: str) -> dict[str, Any]:
        """Wait for the task's end on the event stream, not by polling: subscribed first,
        then read once (it may have ended already), then told when it ends. A stream that
        breaks (dropped, the master restarting) is subscribed to again."""
        while True:
            async with contextlib.aclosing(self.events(tasks=[task_id])) as stream:
                async for message in stream:
                    if message.event in ("subscribed", "missed", "dropped"):
                        task = await self.get(task_id)
                        if task["state"] in TERMINAL:
                            return task
                        if message.event == "dropped":
                            break
                    elif message.event == "task" and message.data["state"] in TERMINAL:
                        return await self.get(task_id)

    async def wait(self, task_id: str, *, timeout_s: float = 60.0, poll_s: float = 0.1
                   ) -> dict[str, Any]:
        """Poll until the task is terminal."""
        async with asyncio.timeout(timeout_s):
            while True:
                task = await self.get(task_id)
                if task["state"] in TERMINAL:
                    return task
                await asyncio.sleep(poll_s)
