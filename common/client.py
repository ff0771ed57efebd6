"""A small async client for the master's REST API (used by the CLI, tests, benches)."""

from __future__ import annotations

import asyncio
from typing import Any

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
                    err = (body or {}).get("error", {}) if isinstance(body, dict) else {}
                    code, message = err.get("code", "error"), err.get("message", "")
                    if resp.status == 404:
                        raise NotFound(message)
                    if resp.status == 400:
                        raise InvalidInput(message)
                    raise ApiError(resp.status, code, message)
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

    async def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", "/v1/stats")
        return result

    async def regions(self) -> list[dict[str, Any]]:
        return list((await self.request("GET", "/v1/regions"))["regions"])

    async def workers(self) -> list[dict[str, Any]]:
        return list((await self.request("GET", "/v1/workers"))["workers"])

    async def wait(self, task_id: str, *, timeout_s: float = 60.0, poll_s: float = 0.1
                   ) -> dict[str, Any]:
        """Poll until the task is terminal."""
        async with asyncio.timeout(timeout_s):
            while True:
                task = await self.get(task_id)
                if task["state"] in TERMINAL:
                    return task
                await asyncio.sleep(poll_s)
