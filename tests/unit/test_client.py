"""The REST client and the strata command against a real HTTP server that is not a
Strata master (or not a good one): every failure is a StrataError with a clear message,
never a traceback."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from strata.common.client import ApiError, Client
from strata.common.errors import InvalidInput, NotFound, Unavailable


@pytest.fixture
async def server() -> AsyncIterator[str]:
    """A server with an HTML page, a 409 in the API's error format, and a hang."""
    never = asyncio.Event()

    async def html(request: web.Request) -> web.Response:
        return web.Response(text="<html>hello</html>", content_type="text/html")

    async def conflict(request: web.Request) -> web.Response:
        return web.json_response(
            {"error": {"code": "conflict", "message": "task t is already failed"}}, status=409)

    async def hang(request: web.Request) -> web.Response:
        await never.wait()
        raise AssertionError("unreachable")

    app = web.Application()
    app.router.add_get("/v1/tasks", html)
    app.router.add_post("/v1/tasks/t/cancel", conflict)
    app.router.add_get("/v1/tasks/slow", hang)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_an_api_error_reads_as_the_apis_message(server: str) -> None:
    async with Client(server) as client:
        with pytest.raises(ApiError) as caught:
            await client.cancel("t")
    assert (caught.value.status, caught.value.code) == (409, "conflict")
    assert str(caught.value) == "task t is already failed"


async def test_an_answer_that_is_not_json_is_not_a_strata_api(server: str) -> None:
    async with Client(server) as client:
        with pytest.raises(Unavailable, match=r"is not a Strata API: GET /v1/tasks answered "
                                              r"HTTP 200 with a body that is not JSON"):
            await client.list_tasks()


async def test_no_answer_within_the_timeout_says_so(server: str) -> None:
    async with Client(server, timeout_s=0.3) as client:
        with pytest.raises(Unavailable, match=r"^no answer from http://.* within 0\.3s$"):
            await client.get("slow")


async def test_an_address_that_is_not_a_url_is_invalid_input() -> None:
    async with Client("localhost:8080") as client:
        with pytest.raises(InvalidInput, match="not an http:// or https:// URL"):
            await client.stats()


@pytest.mark.parametrize("api_path, says", [
    ("", "is not a Strata API"),
    (None, "not an http:// or https:// URL: 'localhost:8080'"),
])
async def test_the_command_turns_them_into_a_message_and_exit_1(
        server: str, api_path: str | None, says: str) -> None:
    api = "localhost:8080" if api_path is None else server + api_path
    result = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "strata", "list", "--api", api],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("strata: ") and says in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


# ---- task priority and concurrency limits, against a stand-in for the master's API --------

def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


class FakeMaster:
    """Answers ``PATCH /v1/tasks/{id}``, ``POST /v1/tasks`` and ``/v1/concurrency[/{key}]``
    as the API's contract says, and records each request in ``asked`` as (method, path as
    sent, JSON body or None). Task t1 is pending, t2 running; key etl has 1 task active and
    5 pending."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str, Any]] = []
        self.tasks: dict[str, dict[str, Any]] = {
            "t1": {"id": "t1", "kind": "shell", "state": "pending", "priority": 0},
            "t2": {"id": "t2", "kind": "shell", "state": "running", "priority": 0},
        }
        self.limits: dict[str, int] = {}
        self.counts = {"etl": (1, 5)}
        self.url = ""
        app = web.Application()
        app.router.add_post("/v1/tasks", self.create)
        app.router.add_patch("/v1/tasks/{id}", self.patch_task)
        app.router.add_get("/v1/concurrency", self.list_limits)
        app.router.add_get("/v1/concurrency/{key}", self.get_limit)
        app.router.add_put("/v1/concurrency/{key}", self.put_limit)
        app.router.add_delete("/v1/concurrency/{key}", self.delete_limit)
        self.runner = web.AppRunner(app, shutdown_timeout=0.1)

    async def __aenter__(self) -> FakeMaster:
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()

    async def _body(self, request: web.Request) -> Any:
        body = await request.json() if request.can_read_body else None
        self.asked.append((request.method, request.raw_path, body))
        return body

    def _limit(self, key: str) -> dict[str, Any]:
        active, pending = self.counts.get(key, (0, 0))
        return {"key": key, "limit": self.limits.get(key), "active": active,
                "pending": pending}

    async def create(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        return web.json_response({"id": "t9", "state": "pending", **body}, status=201)

    async def patch_task(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        task = self.tasks.get(request.match_info["id"])
        if task is None:
            return _error(404, "not_found", f"no task {request.match_info['id']}")
        if (not isinstance(body, dict) or set(body) != {"priority"}
                or type(body["priority"]) is not int):
            return _error(400, "invalid_input", "the body must be {\"priority\": <int>}")
        if task["state"] not in ("pending", "waiting"):
            return _error(409, "conflict", f"task {task['id']} is {task['state']}: only a "
                                           "task that has not started can be reprioritized")
        task["priority"] = body["priority"]
        return web.json_response(task)

    async def list_limits(self, request: web.Request) -> web.Response:
        await self._body(request)
        return web.json_response({"keys": [self._limit(k) for k in self.limits]})

    async def get_limit(self, request: web.Request) -> web.Response:
        await self._body(request)
        return web.json_response(self._limit(request.match_info["key"]))

    async def put_limit(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        limit = body.get("limit") if isinstance(body, dict) else None
        if type(limit) is not int or limit < 1:
            return _error(400, "invalid_input", "limit must be a whole number, 1 or more")
        self.limits[request.match_info["key"]] = limit
        return web.json_response(self._limit(request.match_info["key"]))

    async def delete_limit(self, request: web.Request) -> web.Response:
        await self._body(request)
        key = request.match_info["key"]
        if self.limits.pop(key, None) is None:
            return _error(404, "not_found", f"no limit on {key}")
        return web.Response(status=204)


@pytest.fixture
async def master() -> AsyncIterator[FakeMaster]:
    async with FakeMaster() as fake:
        yield fake


async def test_reprioritize_patches_the_priority_and_returns_the_task(
        master: FakeMaster) -> None:
    async with Client(master.url) as client:
        task = await client.reprioritize("t1", -4)
    assert master.asked == [("PATCH", "/v1/tasks/t1", {"priority": -4})]
    assert (task["id"], task["priority"], task["state"]) == ("t1", -4, "pending")


async def test_reprioritizing_a_task_that_started_is_a_409_with_the_apis_message(
        master: FakeMaster) -> None:
    async with Client(master.url) as client:
        with pytest.raises(ApiError) as caught:
            await client.reprioritize("t2", 1)
        with pytest.raises(NotFound, match=r"^no task t3$"):
            await client.reprioritize("t3", 1)
    assert (caught.value.status, caught.value.code) == (409, "conflict")
    assert str(caught.value).startswith("task t2 is running: ")
    assert master.tasks["t2"]["priority"] == 0


async def test_concurrency_set_show_list_clear(master: FakeMaster) -> None:
    async with Client(master.url) as client:
        assert await client.concurrency("etl") == {
            "key": "etl", "limit": None, "active": 1, "pending": 5}
        assert await client.set_concurrency("etl", 2) == {
            "key": "etl", "limit": 2, "active": 1, "pending": 5}
        assert await client.concurrency_limits() == [
            {"key": "etl", "limit": 2, "active": 1, "pending": 5}]
        assert await client.clear_concurrency("etl") is None
        assert await client.concurrency_limits() == []
        with pytest.raises(NotFound, match=r"^no limit on etl$"):
            await client.clear_concurrency("etl")
        with pytest.raises(InvalidInput, match="1 or more"):
            await client.set_concurrency("etl", 0)
    assert master.asked == [
        ("GET", "/v1/concurrency/etl", None),
        ("PUT", "/v1/concurrency/etl", {"limit": 2}),
        ("GET", "/v1/concurrency", None),
        ("DELETE", "/v1/concurrency/etl", None),
        ("GET", "/v1/concurrency", None),
        ("DELETE", "/v1/concurrency/etl", None),
        ("PUT", "/v1/concurrency/etl", {"limit": 0}),
    ]


@pytest.mark.parametrize("key, path", [
    ("team a/etl", "/v1/concurrency/team%20a%2Fetl"),
    ("a?b#c", "/v1/concurrency/a%3Fb%23c"),
    ("100%", "/v1/concurrency/100%25"),
    ("a.b", "/v1/concurrency/a.b"),
])
async def test_a_key_is_one_path_segment_whatever_is_in_it(
        master: FakeMaster, key: str, path: str) -> None:
    async with Client(master.url) as client:
        assert (await client.set_concurrency(key, 3))["key"] == key
        await client.clear_concurrency(key)
    assert [(m, p) for m, p, _ in master.asked] == [("PUT", path), ("DELETE", path)]
    assert master.limits == {}


@pytest.mark.parametrize("key", ["", ".", ".."])
async def test_a_key_that_cannot_be_a_path_segment_is_refused_unsent(
        master: FakeMaster, key: str) -> None:
    async with Client(master.url) as client:
        for call in (lambda: client.concurrency(key), lambda: client.set_concurrency(key, 1),
                     lambda: client.clear_concurrency(key), lambda: client.reprioritize(key, 1)):
            with pytest.raises(InvalidInput, match="cannot be named in a URL path"):
                await call()
    assert master.asked == []
