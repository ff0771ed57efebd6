"""The REST client and the strata command against a real HTTP server that is not a
Strata master (or not a good one): every failure is a StrataError with a clear message,
never a traceback."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from strata.common.client import ApiError, Client
from strata.common.errors import InvalidInput, Unavailable


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
