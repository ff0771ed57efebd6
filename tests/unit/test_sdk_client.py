"""The SDK's client against a stand-in HTTP server that answers what each test sets: the
error class of every code and status, the address and the token from the environment,
answers held to the API's models, and the sync client's own loop and thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from pydantic import ValidationError

from strata.client import (
    DEFAULT_API,
    ApiError,
    AsyncClient,
    Client,
    Conflict,
    Internal,
    InvalidInput,
    MethodNotAllowed,
    NotFound,
    RateLimited,
    RequestEntityTooLarge,
    StrataError,
    Unauthenticated,
    Unavailable,
)
from strata.common import errors

STATS = {"counts": {"waiting": 0, "pending": 1, "dispatched": 0, "running": 0,
                    "succeeded": 2, "failed": 0, "cancelled": 0}, "stale_results": 0}
CONCURRENCY = {"key": "etl", "limit": 2, "active": 0, "pending": 0}


class StandIn:
    """Answers every request with ``answer`` (status, JSON body, headers), and keeps the
    headers of each request it was sent."""

    def __init__(self) -> None:
        self.answer: tuple[int, Any, dict[str, str]] = (200, STATS, {})
        self.headers: list[dict[str, str]] = []
        self.url = ""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, shutdown_timeout=0.1)

    async def handle(self, request: web.Request) -> web.Response:
        self.headers.append(dict(request.headers))
        status, body, headers = self.answer
        return web.json_response(body, status=status, headers=headers)


@pytest.fixture
async def stand_in() -> AsyncIterator[StandIn]:
    server = StandIn()
    await server.runner.setup()
    await web.TCPSite(server.runner, "127.0.0.1", 0).start()
    server.url = f"http://127.0.0.1:{server.runner.addresses[0][1]}"
    try:
        yield server
    finally:
        await server.runner.cleanup()


def _error(code: str, message: str = "it says why") -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


@pytest.mark.parametrize("status, code, cls, common", [
    (400, "invalid_input", InvalidInput, errors.InvalidInput),
    (400, "bad_request", InvalidInput, errors.InvalidInput),  # by its status
    (401, "unauthenticated", Unauthenticated, errors.Unauthenticated),
    (401, "invalid_token", Unauthenticated, errors.Unauthenticated),
    (401, "unauthorized", Unauthenticated, errors.Unauthenticated),  # by its status
    (404, "not_found", NotFound, errors.NotFound),
    (405, "method_not_allowed", MethodNotAllowed, None),
    (409, "conflict", Conflict, errors.Conflict),
    (413, "request_entity_too_large", RequestEntityTooLarge, None),
    (500, "internal", Internal, None),
    (503, "unavailable", Unavailable, errors.Unavailable),
    (503, "database_unavailable", Unavailable, errors.Unavailable),
    (503, "circuit_open", Unavailable, errors.Unavailable),
    (429, "rate_limited", RateLimited, errors.RateLimited),
    (429, "too_many_requests", RateLimited, errors.RateLimited),  # by its status
    (431, "request_header_fields_too_large", ApiError, None),  # no class of its own
])
async def test_each_code_is_its_class_with_status_code_and_message(
        stand_in: StandIn, status: int, code: str, cls: type[ApiError],
        common: type[Exception] | None) -> None:
    stand_in.answer = (status, _error(code), {})
    async with AsyncClient(stand_in.url) as c:
        with pytest.raises(ApiError) as caught:
            await c.stats()
    assert type(caught.value) is cls
    assert (caught.value.status, caught.value.code, caught.value.message) == (
        status, code, "it says why")
    assert str(caught.value) == "it says why"
    assert isinstance(caught.value, StrataError)
    if common is not None:  # what code that catches strata.common.errors catches
        assert isinstance(caught.value, common)


async def test_a_503_says_when_to_try_again(stand_in: StandIn) -> None:
    stand_in.answer = (503, _error("database_unavailable"), {"Retry-After": "7"})
    async with AsyncClient(stand_in.url) as c:
        with pytest.raises(Unavailable) as caught:
            await c.stats()
    assert caught.value.retry_after_s == 7.0


async def test_a_429_says_when_to_try_again(stand_in: StandIn) -> None:
    stand_in.answer = (429, _error("rate_limited"), {"Retry-After": "3"})
    async with AsyncClient(stand_in.url) as c:
        with pytest.raises(RateLimited) as caught:
            await c.stats()
    assert caught.value.retry_after_s == 3.0


async def test_an_error_body_of_another_shape_goes_by_its_status(stand_in: StandIn) -> None:
    stand_in.answer = (502, ["not", "an", "error"], {})
    async with AsyncClient(stand_in.url) as c:
        with pytest.raises(ApiError) as caught:
            await c.stats()
    assert type(caught.value) is ApiError
    assert (caught.value.status, caught.value.code, str(caught.value)) == (
        502, "error", "HTTP 502 (error)")


async def test_the_token_goes_as_a_bearer_only_when_there_is_one(
        stand_in: StandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STRATA_TOKEN", raising=False)
    async with AsyncClient(stand_in.url) as c:
        await c.stats()
    async with AsyncClient(stand_in.url, token="s3cret") as c:
        await c.stats()
    monkeypatch.setenv("STRATA_TOKEN", "from-env")
    async with AsyncClient(stand_in.url) as c:
        await c.stats()
    assert [h.get("Authorization") for h in stand_in.headers] == [
        None, "Bearer s3cret", "Bearer from-env"]


async def test_the_address_comes_from_the_argument_then_strata_api(
        stand_in: StandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STRATA_API", raising=False)
    assert AsyncClient().base_url == DEFAULT_API == "http://127.0.0.1:8080"
    monkeypatch.setenv("STRATA_API", stand_in.url + "/")
    async with AsyncClient() as c:
        assert c.base_url == stand_in.url
        assert (await c.stats()).counts.succeeded == 2
    assert AsyncClient("http://elsewhere:1").base_url == "http://elsewhere:1"
    with pytest.raises(InvalidInput, match="not an http:// or https:// URL: 'ftp://x'") as bad:
        AsyncClient("ftp://x")
    assert bad.value.status is None


async def test_an_answer_the_models_do_not_describe_is_refused(stand_in: StandIn) -> None:
    """The models forbid fields they do not name: an API that drifted is told at once."""
    stand_in.answer = (200, {**CONCURRENCY, "surprise": True}, {})
    async with AsyncClient(stand_in.url) as c:
        with pytest.raises(ValidationError, match="surprise"):
            await c.concurrency("etl")
        stand_in.answer = (200, CONCURRENCY, {})
        assert (await c.concurrency("etl")).limit == 2


async def test_the_sync_client_runs_its_own_loop_in_its_own_thread(
        stand_in: StandIn) -> None:
    # Driven from a thread with no event loop, as a plain script is (the stand-in serves
    # from this test's loop, which must go on meanwhile).
    def script() -> tuple[int, threading.Thread, str]:
        with pytest.raises(RuntimeError):
            asyncio.get_running_loop()
        with Client(stand_in.url, token="t") as c:
            pending = c.stats().counts.pending
            thread = c._thread
            assert thread.is_alive() and thread is not threading.current_thread()
            stand_in.answer = (409, _error("conflict", "task t1 is already cancelled"), {})
            with pytest.raises(Conflict) as caught:
                c.cancel("t1")
        return pending, thread, str(caught.value)

    pending, thread, refused = await asyncio.to_thread(script)
    assert (pending, refused) == (1, "task t1 is already cancelled")
    assert not thread.is_alive()  # closed: its loop stopped, its thread ended
    assert [h.get("Authorization") for h in stand_in.headers] == ["Bearer t"] * 2


def test_a_closed_sync_client_says_so() -> None:
    c = Client("http://127.0.0.1:1")
    c.close()
    c.close()  # again: nothing more to do
    with pytest.raises(RuntimeError, match="this client is closed"):
        c.stats()
