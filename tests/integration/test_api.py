"""The master's REST API, served in-process by aiohttp against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from strata.common.events import Finished, Report, Started
from strata.common.models import MAX_BATCH
from strata.common.settings import MasterSettings
from strata.common.status import RegionStatus, WorkerInfo
from strata.master.api import MAX_BODY, Api
from strata.master.control import Control
from strata.master.db import Database
from strata.master.regions import RegionClients

pytestmark = pytest.mark.integration

Client = TestClient[web.Request, web.Application]

TASK_FIELDS = {
    "id", "kind", "payload", "state", "priority", "run_at", "region", "pinned_region",
    "worker_id", "attempt", "max_attempts", "timeout_s", "created_at", "picked_at",
    "started_at", "finished_at", "result", "retry_of", "idempotency_key", "depends_on",
    "on_upstream_failure", "concurrency_key",
}
STATES = ("waiting", "pending", "dispatched", "running", "succeeded", "failed", "cancelled")
JAN_2030 = 1893456000  # 2030-01-01T00:00:00Z


async def apply_events(
    db: Database, started: list[Started], finished: list[Finished], **backoff: timedelta
) -> None:
    await db.apply_report(
        Report(region="eu", started=started, finished=finished, returned=[]), **backoff)


@pytest.fixture
async def client(
    db: Database, database_url: str, caplog: pytest.LogCaptureFixture,
    request: pytest.FixtureRequest,
) -> AsyncIterator[Client]:
    regions = RegionClients()
    settings = MasterSettings(database_url=database_url,
                              region_dead_after=timedelta(seconds=30))
    server = TestServer(Api(Control(db, regions, settings)).app())
    test_client: Client = TestClient(server)
    await test_client.start_server()
    try:
        yield test_client
    finally:
        await test_client.close()
        await regions.close()
    # No 500 anywhere: every unhandled error is logged under this action.
    internal = [
        r for phase in ("setup", "call") for r in caplog.get_records(phase)
        if getattr(r, "action", None) == "http_internal_error"
    ]
    assert internal == [], [r.getMessage() for r in internal]



async def task_count(raw: asyncpg.Connection) -> int:
    value: int = await raw.fetchval("SELECT count(*) FROM tasks")
    return value


async def expect_error(response: aiohttp.ClientResponse, status: int, code: str) -> str:
    """The status, and the one error shape: {"error": {"code", "message"}}. Returns message."""
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    body = await response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    message = body["error"]["message"]
    assert isinstance(message, str) and message, body
    return message


async def post_json(client: Client, path: str, body: Any) -> aiohttp.ClientResponse:
    return await client.post(path, data=json.dumps(body),
                             headers={"Content-Type": "application/json"})


async def create(client: Client, **fields: Any) -> dict[str, Any]:
    response = await post_json(client, "/v1/tasks", {"kind": "noop", **fields})
    assert response.status == 201, await response.text()
    body: dict[str, Any] = await response.json()
    return body


def instant(value: Any) -> datetime:
    """A TaskMaster time, given as unix seconds or RFC 3339 text."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    assert isinstance(value, str), value
    return datetime.fromisoformat(value)


# ---- /v1/tasks: create and get ------------------------------------------------------


async def test_create_task_returns_every_field(client: Client, db: Database) -> None:
    await db.upsert_region(RegionStatus(name="eu", address="eu:1"))
    before = datetime.now(UTC)
    response = await post_json(client, "/v1/tasks", {
        "kind": "shell", "command": "echo hi", "priority": 5, "region": "eu",
        "max_attempts": 3, "timeout_s": 12.5, "run_at": "2030-01-01T02:00:00+02:00",
    })
    assert response.status == 201, await response.text()
    body = await response.json()

    assert set(body) >= TASK_FIELDS
    assert uuid.UUID(body["id"])
    assert body["kind"] == "shell"
    assert body["payload"] == {"command": "echo hi"}
    assert body["state"] == "pending"
    assert body["priority"] == 5
    assert body["run_at"] == "2030-01-01T00:00:00Z"
    assert body["region"] == body["pinned_region"] == "eu"
    assert body["worker_id"] is None
    assert body["attempt"] == 0
    assert body["max_attempts"] == 3
    assert body["timeout_s"] == 12.5
    created_at = datetime.fromisoformat(body["created_at"])
    assert body["created_at"].endswith("Z")
    assert before - timedelta(seconds=5) <= created_at <= datetime.now(UTC) + timedelta(seconds=5)
    assert body["picked_at"] is body["started_at"] is body["finished_at"] is None
    assert body["result"] == {"exit_code": None, "output": None, "stderr": None, "error": None,
                              "output_truncated": False, "stderr_truncated": False,
                             "killed_processes": 0}
    assert body["retry_of"] is None

    fetched = await client.get(f"/v1/tasks/{body['id']}")
    assert fetched.status == 200
    got = await fetched.json()
    # A pending task says what it waits for: here its run_at, still ahead.
    assert got.pop("waiting_for") == f"its run_at, {body['run_at']}"
    assert got.pop("dependents") == []
    assert got == body


async def test_create_task_defaults(client: Client) -> None:
    before = datetime.now(UTC)
    body = await create(client)
    run_at = datetime.fromisoformat(body["run_at"])
    assert before - timedelta(seconds=5) <= run_at <= datetime.now(UTC) + timedelta(seconds=5)
    assert (body["priority"], body["region"], body["max_attempts"]) == (0, None, 1)
    assert body["payload"] == {}


async def test_get_task_reflects_progress(client: Client, db: Database) -> None:
    body = await create(client, run_at="2000-01-01T00:00:00Z")
    (claimed,) = await db.claim("eu", 10)
    now = datetime.now(UTC)
    await apply_events(db,
        [Started(id=str(claimed.id), attempt=claimed.attempt, worker_id="w-1", started_at=now)],
        [Finished(id=str(claimed.id), attempt=claimed.attempt, ok=True, worker_id="w-1",
                  started_at=now, finished_at=now, exit_code=0, output="hi\n", error=None)],
        backoff_base=timedelta(seconds=1), backoff_max=timedelta(seconds=1),
    )
    response = await client.get(f"/v1/tasks/{body['id']}")
    got = await response.json()
    assert got["state"] == "succeeded"
    assert (got["region"], got["pinned_region"]) == ("eu", None)
    assert (got["worker_id"], got["attempt"]) == ("w-1", 1)
    assert got["picked_at"] and got["started_at"] and got["finished_at"]
    assert got["result"] == {"exit_code": 0, "output": "hi\n", "stderr": None, "error": None,
                             "output_truncated": False, "stderr_truncated": False,
                             "killed_processes": 0}


async def test_create_batch_of_ten_thousand(client: Client, raw: asyncpg.Connection) -> None:
    tasks = [{"kind": "shell", "command": f"echo {i}", "priority": i % 5}
             for i in range(MAX_BATCH)]
    response = await post_json(client, "/v1/tasks/batch", {"tasks": tasks})
    assert response.status == 201, await response.text()
    body = await response.json()

    assert set(body) == {"ids", "existed"}
    assert body["existed"] == [False] * MAX_BATCH
    ids = [uuid.UUID(i) for i in body["ids"]]
    assert len(ids) == len(set(ids)) == MAX_BATCH
    rows = await raw.fetch("SELECT id, state, payload->>'command' AS command FROM tasks")
    assert {r["id"] for r in rows} == set(ids)
    assert {r["state"] for r in rows} == {"pending"}
    # ids come back in request order.
    commands = {r["id"]: r["command"] for r in rows}
    assert [commands[i] for i in ids] == [f"echo {i}" for i in range(MAX_BATCH)]


# ---- /v1/tasks: list ------------------------------------------------------------------


async def test_list_walks_all_tasks_once_with_a_cursor(client: Client) -> None:
    # One batch: all five share created_at, so the id breaks the tie.
    response = await post_json(client, "/v1/tasks/batch", {"tasks": [{"kind": "noop"}] * 5})
    ids = (await response.json())["ids"]

    seen: list[str] = []
    pages = 0
    cursor: str | None = None
    while True:
        params = {"limit": "2"} | ({"cursor": cursor} if cursor else {})
        response = await client.get("/v1/tasks", params=params)
        assert response.status == 200, await response.text()
        page = await response.json()
        assert set(page) == {"tasks", "next_cursor"}
        assert len(page["tasks"]) <= 2
        assert all(set(t) >= TASK_FIELDS for t in page["tasks"])
        seen.extend(t["id"] for t in page["tasks"])
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert pages < 10, "the cursor never ends"

    assert pages == 3
    assert len(seen) == len(set(seen)) == 5
    assert set(seen) == set(ids)
    assert seen == sorted(seen, key=uuid.UUID)


async def test_list_filters_by_state_and_region(client: Client, db: Database) -> None:
    for name in ("eu", "us"):
        await db.upsert_region(RegionStatus(name=name, address=f"{name}:1"))
    pinned_eu = await create(client, region="eu", run_at="2030-01-01T00:00:00Z")
    to_cancel = await create(client, run_at="2030-01-01T00:00:00Z")
    due = await create(client, run_at="2000-01-01T00:00:00Z")
    await create(client, region="us", run_at="2030-01-01T00:00:00Z")
    await client.post(f"/v1/tasks/{to_cancel['id']}/cancel")
    # The due task is sent to eu: it is listed under eu from then on.
    assert [c.id for c in await db.claim("eu", 10)] == [uuid.UUID(due["id"])]

    async def listed(**params: str) -> set[str]:
        response = await client.get("/v1/tasks", params=params)
        assert response.status == 200, await response.text()
        return {t["id"] for t in (await response.json())["tasks"]}

    assert len(await listed()) == 4
    assert await listed(state="cancelled") == {to_cancel["id"]}
    assert await listed(state="dispatched") == {due["id"]}
    assert len(await listed(state="pending")) == 2
    assert await listed(state="succeeded") == set()
    assert await listed(region="eu") == {pinned_eu["id"], due["id"]}
    assert await listed(region="eu", state="pending") == {pinned_eu["id"]}
    assert await listed(region="nowhere") == set()


# ---- cancel, stats ----------------------------------------------------------------------


async def test_cancel_then_cancel_again(client: Client) -> None:
    task = await create(client, run_at="2030-01-01T00:00:00Z")

    response = await client.post(f"/v1/tasks/{task['id']}/cancel")
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["id"] == task["id"]
    assert body["state"] == "cancelled"
    assert body["finished_at"] is not None

    again = await client.post(f"/v1/tasks/{task['id']}/cancel")
    await expect_error(again, 409, "conflict")
    assert (await (await client.get(f"/v1/tasks/{task['id']}")).json())["state"] == "cancelled"


async def test_stats_counts_every_state(client: Client, db: Database) -> None:
    response = await client.get("/v1/stats")
    assert response.status == 200
    body = await response.json()
    assert body["counts"] == dict.fromkeys(STATES, 0)
    assert body["stale_results"] == 0

    for _ in range(3):
        await create(client, run_at="2030-01-01T00:00:00Z")
    cancelled = await create(client, run_at="2030-01-01T00:00:00Z")
    await client.post(f"/v1/tasks/{cancelled['id']}/cancel")
    await create(client, run_at="2000-01-01T00:00:00Z")
    await db.claim("eu", 10)
    await db.upsert_region(RegionStatus(name="eu", address="eu:1", capacity=1,
                                        max_outstanding=1))
    now = datetime.now(UTC)
    unknown = [Finished(id=str(uuid.uuid4()), attempt=1, ok=True, worker_id="w",
                        started_at=now, finished_at=now, exit_code=0, output=None, error=None)
               for _ in range(2)]
    stale = await db.apply_report(
        Report(region="eu", started=[], finished=unknown, returned=[]),
        backoff_base=timedelta(seconds=1), backoff_max=timedelta(seconds=1))
    assert len(stale.stale) == 2

    body = await (await client.get("/v1/stats")).json()
    assert body["counts"] == dict.fromkeys(STATES, 0) | {
        "pending": 3, "cancelled": 1, "dispatched": 1,
    }
    assert body["stale_results"] == 2


# ---- regions and workers ----------------------------------------------------------------


async def test_regions_and_workers(client: Client, db: Database, raw: asyncpg.Connection) -> None:
    assert await (await client.get("/v1/regions")).json() == {"regions": []}
    assert await (await client.get("/v1/workers")).json() == {"workers": []}
    beat = float(int(time.time()))
    await db.upsert_region(RegionStatus(
        name="eu", address="10.0.0.1:50061", capacity=8, max_outstanding=16, running=3,
        queued=2,
        workers=(
            WorkerInfo(id="w-1", capacity=4, running=2, last_heartbeat=beat,
                       health_address="10.0.0.2:9001"),
            WorkerInfo(id="w-2", capacity=4, running=1, last_heartbeat=beat),
        ),
    ))
    await db.upsert_region(RegionStatus(name="us", address="10.0.1.1:50061"))

    response = await client.get("/v1/regions")
    assert response.status == 200
    regions = (await response.json())["regions"]
    assert [r["name"] for r in regions] == ["eu", "us"]
    eu = regions[0]
    expected = {
        "name": "eu", "address": "10.0.0.1:50061", "state": "up", "capacity": 8,
        "max_outstanding": 16, "running": 3, "queued": 2, "workers": 2,
        "worker_ids": ["w-1", "w-2"], "stale_results": 0,
    }
    # Fields beyond these may come; these must be there, with these values.
    assert {k: eu.get(k) for k in expected} == expected
    assert abs(datetime.fromisoformat(eu["last_heartbeat"]) - datetime.now(UTC)) < timedelta(
        seconds=10
    )

    response = await client.get("/v1/workers")
    assert response.status == 200
    beat_text = datetime.fromtimestamp(beat, UTC).isoformat().replace("+00:00", "Z")
    body = await response.json()
    assert set(body) == {"workers"}
    expected_workers = [
        {"id": "w-1", "region": "eu", "state": "up", "capacity": 4, "running": 2,
         "last_heartbeat": beat_text, "health_address": "10.0.0.2:9001"},
        {"id": "w-2", "region": "eu", "state": "up", "capacity": 4, "running": 1,
         "last_heartbeat": beat_text, "health_address": None},
    ]
    assert [{k: w.get(k) for k in e} for w, e in zip(body["workers"], expected_workers,
                                                       strict=True)] == expected_workers

    # A region silent past region_dead_after is down; its workers are unknown.
    await raw.execute(
        "UPDATE regions SET last_heartbeat = now() - interval '1 hour' WHERE name = 'eu'"
    )
    regions = (await (await client.get("/v1/regions")).json())["regions"]
    assert [(r["name"], r["state"]) for r in regions] == [("eu", "down"), ("us", "up")]
    workers = (await (await client.get("/v1/workers")).json())["workers"]
    assert {w["state"] for w in workers} == {"unknown"}


# ---- health ---------------------------------------------------------------------------------


async def test_healthz_and_readyz(client: Client) -> None:
    healthz = await client.get("/healthz")
    assert healthz.status == 200
    assert await healthz.json() == {"status": "ok"}
    readyz = await client.get("/readyz")
    assert readyz.status == 200
    assert await readyz.json() == {"status": "ready"}


# ---- TaskMaster-compatible --------------------------------------------------------------


@pytest.mark.parametrize(
    "scheduled_at",
    [
        "2030-01-01T00:00:00Z",
        "2030-01-01T00:00:00+00:00",
        "2030-01-01T02:00:00+02:00",
        JAN_2030,
        float(JAN_2030),
    ],
)
async def test_schedule(client: Client, db: Database, scheduled_at: Any) -> None:
    response = await post_json(client, "/schedule",
                               {"command": "echo hi", "scheduled_at": scheduled_at})
    assert response.status == 200, await response.text()
    body = await response.json()

    assert set(body) == {"command", "scheduled_at", "task_id"}
    assert body["command"] == "echo hi"
    assert type(body["scheduled_at"]) is int
    assert body["scheduled_at"] == JAN_2030
    task = await db.get_task(uuid.UUID(body["task_id"]))
    assert task is not None
    assert (task.kind, task.payload, task.state.value) == (
        "shell", {"command": "echo hi"}, "pending",
    )
    assert task.run_at == datetime.fromtimestamp(JAN_2030, UTC)


async def test_schedule_without_time_runs_now(client: Client) -> None:
    before = time.time()
    response = await post_json(client, "/schedule", {"command": "true"})
    assert response.status == 200, await response.text()
    body = await response.json()
    assert before - 5 <= body["scheduled_at"] <= time.time() + 5


@pytest.mark.parametrize("path", ["/status", "/status/"])
async def test_status_of_a_pending_task(client: Client, path: str) -> None:
    scheduled = await (await post_json(
        client, "/schedule", {"command": "echo hi", "scheduled_at": JAN_2030}
    )).json()

    response = await client.get(path, params={"task_id": scheduled["task_id"]})

    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["task_id"] == scheduled["task_id"]
    assert body["command"] == "echo hi"
    assert instant(body["scheduled_at"]) == datetime.fromtimestamp(JAN_2030, UTC)
    for stamp in ("picked_at", "started_at", "completed_at", "failed_at"):
        assert stamp not in body, body


async def test_status_follows_the_task(client: Client, db: Database) -> None:
    scheduled = await (await post_json(
        client, "/schedule", {"command": "false", "scheduled_at": 946684800}
    )).json()

    async def status() -> dict[str, Any]:
        response = await client.get("/status", params={"task_id": scheduled["task_id"]})
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
        return body

    (claimed,) = await db.claim("eu", 10)
    assert "picked_at" in await status()
    now = datetime.now(UTC)
    await apply_events(db,
        [Started(id=str(claimed.id), attempt=claimed.attempt, worker_id="w", started_at=now)], [],
        backoff_base=timedelta(seconds=1), backoff_max=timedelta(seconds=1),
    )
    body = await status()
    assert {"picked_at", "started_at"} <= set(body)
    assert "completed_at" not in body and "failed_at" not in body
    await apply_events(db,
        [], [Finished(id=str(claimed.id), attempt=claimed.attempt, ok=False, worker_id="w",
                      started_at=now, finished_at=now, exit_code=1, output="", error="exit 1")],
        backoff_base=timedelta(seconds=1), backoff_max=timedelta(seconds=1),
    )
    body = await status()
    assert "failed_at" in body and "completed_at" not in body
    assert instant(body["failed_at"]) == now


# ---- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/tasks", "/v1/tasks/batch", "/schedule"])
@pytest.mark.parametrize(
    "raw_body",
    [b'{"kind": "noop"', b"not json", b"", b"\xff\xfe", b"[]", b'[{"kind": "noop"}]', b'"x"',
     b"42", b"null"],
    ids=["truncated", "text", "empty", "not-utf8", "empty-array", "array", "string", "number",
         "null"],
)
async def test_body_that_is_not_a_json_object(
    client: Client, raw: asyncpg.Connection, path: str, raw_body: bytes
) -> None:
    response = await client.post(path, data=raw_body,
                                 headers={"Content-Type": "application/json"})
    await expect_error(response, 400, "invalid_input")
    assert await task_count(raw) == 0


@pytest.mark.parametrize(
    "body",
    [
        {"kind": "teleport"},
        {},
        {"kind": 7},
        {"kind": "shell"},
        {"kind": "shell", "command": ""},
        {"kind": "shell", "command": 5},
        {"kind": "noop", "priority": "high"},
        {"kind": "noop", "priority": 1.5},
        {"kind": "noop", "priority": 2**31},
        {"kind": "noop", "run_at": "not-a-date"},
        {"kind": "noop", "run_at": "2030-13-01T00:00:00Z"},
        {"kind": "noop", "run_at": 1893456000},
        {"kind": "noop", "max_attempts": 0},
        {"kind": "noop", "timeout_s": 0},
        {"kind": "noop", "timeout_s": True},
        {"kind": "noop", "region": "bad region!"},
        {"kind": "noop", "surprise": 1},
        {"kind": "http", "url": "ftp://x"},
        {"kind": "python", "handler": "not a handler"},
    ],
    ids=lambda body: json.dumps(body),
)
async def test_invalid_task(client: Client, raw: asyncpg.Connection, body: Any) -> None:
    response = await post_json(client, "/v1/tasks", body)
    await expect_error(response, 400, "invalid_input")
    assert await task_count(raw) == 0


async def test_invalid_task_message_names_the_field(client: Client) -> None:
    response = await post_json(client, "/v1/tasks", {"kind": "noop", "priority": "high"})
    assert "priority" in await expect_error(response, 400, "invalid_input")
    response = await post_json(client, "/v1/tasks", {"kind": "shell"})
    assert "command" in await expect_error(response, 400, "invalid_input")


async def test_batch_with_one_bad_item_stores_nothing(
    client: Client, raw: asyncpg.Connection
) -> None:
    tasks: list[dict[str, Any]] = [{"kind": "noop"} for _ in range(100)]
    tasks[57] = {"kind": "noop", "priority": "high"}
    response = await post_json(client, "/v1/tasks/batch", {"tasks": tasks})
    assert "tasks[57]" in await expect_error(response, 400, "invalid_input")
    assert await task_count(raw) == 0


@pytest.mark.parametrize(
    "body",
    [{"tasks": [{"kind": "noop"}] * (MAX_BATCH + 1)}, {"tasks": []}, {"tasks": {}}, {}],
    ids=["too-many", "empty", "not-a-list", "no-tasks"],
)
async def test_bad_batch(client: Client, raw: asyncpg.Connection, body: Any) -> None:
    response = await post_json(client, "/v1/tasks/batch", body)
    await expect_error(response, 400, "invalid_input")
    assert await task_count(raw) == 0


@pytest.mark.parametrize("path", ["/v1/tasks", "/v1/tasks/batch", "/schedule"])
@pytest.mark.parametrize("chunked", [False, True], ids=["sized", "chunked"])
async def test_body_over_one_mebibyte(
    client: Client, raw: asyncpg.Connection, path: str, chunked: bool
) -> None:
    # Valid JSON, one byte too long: the size alone is refused.
    filler = "x" * (MAX_BODY - len('{"kind": "noop", "pad": ""}') + 1)
    data = json.dumps({"kind": "noop", "pad": filler}).encode()
    assert len(data) == MAX_BODY + 1

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(data), 64 * 1024):
            yield data[start:start + 64 * 1024]

    response = await client.post(
        path, data=chunks() if chunked else io.BytesIO(data),
        headers={"Content-Type": "application/json"},
    )
    await expect_error(response, 413, "request_entity_too_large")
    assert await task_count(raw) == 0


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_unknown_task_id(client: Client, method: str) -> None:
    task_id = uuid.uuid4()
    path = f"/v1/tasks/{task_id}" if method == "GET" else f"/v1/tasks/{task_id}/cancel"
    response = await client.request(method, path)
    assert str(task_id) in await expect_error(response, 404, "not_found")


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("text", ["nope", "1234", "00000000-0000-0000-0000-00000000000g"])
async def test_task_id_that_is_not_a_uuid(client: Client, method: str, text: str) -> None:
    path = f"/v1/tasks/{text}" if method == "GET" else f"/v1/tasks/{text}/cancel"
    response = await client.request(method, path)
    await expect_error(response, 400, "invalid_input")


@pytest.mark.parametrize(
    ("method", "path"),
    [("DELETE", "/v1/tasks"), ("PUT", "/v1/tasks"), ("GET", "/schedule"),
     ("POST", "/v1/stats"), ("DELETE", "/healthz"), ("PUT", "/v1/tasks/batch")],
)
async def test_wrong_method(client: Client, method: str, path: str) -> None:
    response = await client.request(method, path)
    await expect_error(response, 405, "method_not_allowed")


@pytest.mark.parametrize("path", ["/nope", "/v1", "/v1/tasks/a/b/c", "/v2/tasks", "/ui/nope",
                                  "/ui/", "/ui/.hidden", "/ui/%2e%2e%2fapi.py"])
async def test_unknown_path(client: Client, path: str) -> None:
    response = await client.get(path)
    await expect_error(response, 404, "not_found")


@pytest.mark.parametrize(
    ("path", "content_type"),
    [("/", "text/html"), ("/ui/app.js", "javascript"), ("/ui/style.css", "text/css")],
)
async def test_dashboard_files_are_served(client: Client, path: str, content_type: str) -> None:
    """The dashboard (tests/e2e/test_dashboard.py drives it in a browser) ships in the
    package: its page at / and the files it loads under /ui/."""
    response = await client.get(path)
    assert response.status == 200
    assert content_type in response.headers["Content-Type"]
    assert len(await response.read()) > 500


@pytest.mark.parametrize(
    "params",
    [
        {"state": "done"},
        {"state": "PENDING"},
        {"cursor": "not-a-cursor"},
        {"cursor": "!!!"},
        {"cursor": "aGVsbG8"},  # base64 of "hello"
        {"limit": "0"},
        {"limit": "-1"},
        {"limit": "abc"},
        {"limit": "1.5"},
        {"limit": "1001"},
    ],
    ids=lambda p: "&".join(f"{k}={v}" for k, v in p.items()),
)
async def test_bad_list_query(client: Client, params: dict[str, str]) -> None:
    response = await client.get("/v1/tasks", params=params)
    message = await expect_error(response, 400, "invalid_input")
    assert next(iter(params)) in message


@pytest.mark.parametrize(
    "params", [{}, {"task_id": ""}, {"task_id": "nope"}], ids=["missing", "empty", "not-uuid"]
)
@pytest.mark.parametrize("path", ["/status", "/status/"])
async def test_bad_status_query(client: Client, path: str, params: dict[str, str]) -> None:
    response = await client.get(path, params=params)
    await expect_error(response, 400, "invalid_input")


async def test_status_of_unknown_task(client: Client) -> None:
    response = await client.get("/status", params={"task_id": str(uuid.uuid4())})
    await expect_error(response, 404, "not_found")


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"scheduled_at": JAN_2030},
        {"command": ""},
        {"command": 5},
        {"command": None},
        {"command": "true", "scheduled_at": "tomorrow"},
        {"command": "true", "scheduled_at": True},
        {"command": "true", "scheduled_at": [2030]},
        {"command": "true", "scheduled_at": 1e300},
        {"command": "true", "extra": 1},
    ],
    ids=lambda body: json.dumps(body),
)
async def test_bad_schedule(client: Client, raw: asyncpg.Connection, body: Any) -> None:
    response = await post_json(client, "/schedule", body)
    await expect_error(response, 400, "invalid_input")
    assert await task_count(raw) == 0


# ---- known production bugs: bad input that still gets a 500 ---------------------------------
# Each is strict: it fails the run once the bug is fixed, so the marker gets removed.


@pytest.mark.parametrize(
    ("path", "body"),
    [("/v1/tasks", {"kind": "shell", "command": "echo a\u0000b"}),
     ("/schedule", {"command": "echo a\u0000b"})],
    ids=["v1", "schedule"],
)
async def test_nul_character_in_a_command_is_bad_input(
    client: Client, raw: asyncpg.Connection, path: str, body: Any
) -> None:
    response = await post_json(client, path, body)
    await expect_error(response, 400, "invalid_input")
    assert await task_count(raw) == 0


@pytest.mark.parametrize("run_at", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
async def test_run_at_out_of_range_in_utc_is_bad_input(client: Client, run_at: str) -> None:
    response = await post_json(client, "/v1/tasks", {"kind": "noop", "run_at": run_at})
    await expect_error(response, 400, "invalid_input")


async def test_scheduled_at_out_of_range_in_utc_is_bad_input(client: Client) -> None:
    response = await post_json(client, "/schedule",
                               {"command": "true", "scheduled_at": "0001-01-01T00:00:00+01:00"})
    await expect_error(response, 400, "invalid_input")


async def test_cursor_with_out_of_range_time_is_bad_input(client: Client) -> None:
    cursor = base64.urlsafe_b64encode(
        f"0001-01-01T00:00:00+05:00|{uuid.uuid4()}".encode()
    ).decode()
    response = await client.get("/v1/tasks", params={"cursor": cursor})
    await expect_error(response, 400, "invalid_input")


# ---- what a newcomer trips on ------------------------------------------------------------


async def test_a_wrong_method_is_405_with_allow(client: Client) -> None:
    response = await client.delete("/v1/tasks")
    await expect_error(response, 405, "method_not_allowed")
    assert set(response.headers["Allow"].split(",")) >= {"GET", "POST"}


@pytest.mark.parametrize("path", ["/v1/tasks?kindd=shell", "/v1/stats?verbose=1",
                                  "/v1/regions?name=eu", "/status?task_id=x&id=y",
                                  "/v1/tasks?state=pending&state=failed"])
async def test_an_unknown_or_repeated_query_parameter_is_400(client: Client, path: str) -> None:
    message = await expect_error(await client.get(path), 400, "invalid_input")
    assert "query parameter" in message


async def test_list_filters_by_kind_and_lists_newest_first(client: Client) -> None:
    made = [await create(client, run_at="2030-01-01T00:00:00Z") for _ in range(3)]
    shell = await create(client, kind="shell", command="true", run_at="2030-01-01T00:00:00Z")
    made.append(shell)

    response = await client.get("/v1/tasks", params={"kind": "shell"})
    assert [t["id"] for t in (await response.json())["tasks"]] == [shell["id"]]
    await expect_error(await client.get("/v1/tasks", params={"kind": "cron"}), 400,
                       "invalid_input")
    await expect_error(await client.get("/v1/tasks", params={"order": "newest"}), 400,
                       "invalid_input")

    seen: list[str] = []
    cursor = None
    while True:
        params = {"order": "desc", "limit": "3"} | ({"cursor": cursor} if cursor else {})
        page = await (await client.get("/v1/tasks", params=params)).json()
        seen += [t["id"] for t in page["tasks"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [t["id"] for t in reversed(made)]


async def test_a_task_pinned_to_an_unknown_region_is_refused(
    client: Client, db: Database, raw: asyncpg.Connection
) -> None:
    await db.upsert_region(RegionStatus(name="region-a", address="a:1"))
    await db.upsert_region(RegionStatus(name="region-b", address="b:1"))
    message = await expect_error(
        await post_json(client, "/v1/tasks", {"kind": "noop", "region": "Region-A"}),
        400, "invalid_input")
    assert "Region-A" in message and "region-a, region-b" in message
    batch = {"tasks": [{"kind": "noop"}, {"kind": "noop", "region": "typo"}]}
    await expect_error(await post_json(client, "/v1/tasks/batch", batch), 400, "invalid_input")
    assert await task_count(raw) == 0, "nothing of a refused batch is written"
    assert (await create(client, region="region-b"))["pinned_region"] == "region-b"


async def test_a_task_pinned_to_a_region_that_is_down_waits_and_says_so(
    client: Client, db: Database, raw: asyncpg.Connection
) -> None:
    await db.upsert_region(RegionStatus(name="eu", address="eu:1"))
    await raw.execute("UPDATE regions SET state = 'down'")
    task = await create(client, region="eu")
    got = await (await client.get(f"/v1/tasks/{task['id']}")).json()
    assert got["state"] == "pending"
    assert got["waiting_for"] == "region eu, which is down"
    free = await create(client)
    got = await (await client.get(f"/v1/tasks/{free['id']}")).json()
    assert got["waiting_for"] == "a free slot in any live region"


async def test_deleting_a_region(client: Client, db: Database, raw: asyncpg.Connection) -> None:
    await db.upsert_region(RegionStatus(name="old", address="old:1"))
    await expect_error(await client.delete("/v1/regions/nowhere"), 404, "not_found")
    message = await expect_error(await client.delete("/v1/regions/old"), 409, "conflict")
    assert "is up" in message
    await raw.execute("UPDATE regions SET state = 'down'")
    pinned = await create(client, region="old")
    message = await expect_error(await client.delete("/v1/regions/old"), 409, "conflict")
    assert "1 unfinished task" in message
    await client.post(f"/v1/tasks/{pinned['id']}/cancel")
    response = await client.delete("/v1/regions/old")
    assert response.status == 204, await response.text()
    assert await (await client.get("/v1/regions")).json() == {"regions": []}


async def test_retry_requeues_a_failed_or_cancelled_task_as_a_new_one(
    client: Client, db: Database
) -> None:
    pending = await create(client, kind="shell", command="exit 3", priority=4,
                           run_at="2030-01-01T00:00:00Z", max_attempts=2)
    message = await expect_error(await client.post(f"/v1/tasks/{pending['id']}/retry"), 409,
                                 "conflict")
    assert "pending" in message
    await client.post(f"/v1/tasks/{pending['id']}/cancel")

    response = await client.post(f"/v1/tasks/{pending['id']}/retry")
    assert response.status == 201, await response.text()
    again = await response.json()
    assert again["id"] != pending["id"] and again["retry_of"] == pending["id"]
    assert (again["state"], again["attempt"]) == ("pending", 0)
    assert again["payload"] == {"command": "exit 3"}
    assert (again["priority"], again["max_attempts"]) == (4, 2)
    assert datetime.fromisoformat(again["run_at"]) < datetime(2030, 1, 1, tzinfo=UTC)
    await expect_error(await client.post(f"/v1/tasks/{uuid.uuid4()}/retry"), 404, "not_found")


# ---- idempotency keys -----------------------------------------------------------------


async def test_a_second_create_with_the_same_key_returns_the_first_task(
    client: Client, raw: asyncpg.Connection
) -> None:
    body = {"kind": "shell", "command": "echo once", "idempotency_key": "order-17"}
    first = await post_json(client, "/v1/tasks", body)
    assert first.status == 201, await first.text()
    made = await first.json()
    assert made["idempotency_key"] == "order-17"

    again = await post_json(client, "/v1/tasks", body)
    assert again.status == 200, await again.text()
    assert (await again.json())["id"] == made["id"]
    # Defaults spelled out ask for the same task.
    spelled = await post_json(client, "/v1/tasks", {**body, "priority": 0, "max_attempts": 1})
    assert spelled.status == 200 and (await spelled.json())["id"] == made["id"]
    assert await task_count(raw) == 1
    # Another key is another task.
    await create(client, idempotency_key="order-18")
    assert await task_count(raw) == 2


@pytest.mark.parametrize("change", [
    {"command": "echo twice"}, {"priority": 3}, {"run_at": "2030-01-01T00:00:00Z"},
])
async def test_the_same_key_asking_for_something_else_is_409(
    client: Client, raw: asyncpg.Connection, change: dict[str, Any]
) -> None:
    body = {"kind": "shell", "command": "echo once", "idempotency_key": "k"}
    made = await post_json(client, "/v1/tasks", body)
    assert made.status == 201
    message = await expect_error(
        await post_json(client, "/v1/tasks", {**body, **change}), 409, "conflict")
    assert "'k'" in message and (await made.json())["id"] in message
    assert await task_count(raw) == 1


async def test_a_batch_says_which_items_already_existed(
    client: Client, raw: asyncpg.Connection
) -> None:
    old = await create(client, idempotency_key="a")
    items = [{"kind": "noop", "idempotency_key": "a"}, {"kind": "noop"},
             {"kind": "noop", "idempotency_key": "b"}]
    response = await post_json(client, "/v1/tasks/batch", {"tasks": items})
    assert response.status == 201, await response.text()
    body = await response.json()
    assert body["existed"] == [True, False, False]
    assert body["ids"][0] == old["id"]
    assert await task_count(raw) == 3

    # Sent again: the keyed items are found, the unkeyed one is new again.
    again = await (await post_json(client, "/v1/tasks/batch", {"tasks": items})).json()
    assert again["existed"] == [True, False, True]
    assert (again["ids"][0], again["ids"][2]) == (old["id"], body["ids"][2])
    assert await task_count(raw) == 4
    # Every item already there: 200.
    keyed = [items[0], items[2]]
    response = await post_json(client, "/v1/tasks/batch", {"tasks": keyed})
    assert response.status == 200
    assert (await response.json())["existed"] == [True, True]


async def test_a_batch_with_a_clashing_key_writes_nothing(
    client: Client, raw: asyncpg.Connection
) -> None:
    await create(client, idempotency_key="taken", priority=1)
    items = [{"kind": "noop", "idempotency_key": "fresh"}, {"kind": "noop"},
             {"kind": "noop", "idempotency_key": "taken", "priority": 2}]
    await expect_error(await post_json(client, "/v1/tasks/batch", {"tasks": items}), 409,
                       "conflict")
    assert await task_count(raw) == 1


@pytest.mark.parametrize("items, fragment", [
    ([{"kind": "noop", "idempotency_key": "x"}, {"kind": "noop", "idempotency_key": "x"}],
     "tasks[1]: idempotency_key 'x' is also the key of tasks[0]"),
    ([{"kind": "noop", "idempotency_key": "k" * 201}], "at most 200 characters"),
    ([{"kind": "noop", "idempotency_key": ""}], "idempotency_key"),
    ([{"kind": "noop", "idempotency_key": 7}], "idempotency_key"),
])
async def test_bad_idempotency_keys_are_400(
    client: Client, raw: asyncpg.Connection, items: list[dict[str, Any]], fragment: str
) -> None:
    message = await expect_error(
        await post_json(client, "/v1/tasks/batch", {"tasks": items}), 400, "invalid_input")
    assert fragment in message
    if len(items) == 1:
        await expect_error(await post_json(client, "/v1/tasks", items[0]), 400,
                           "invalid_input")
    assert await task_count(raw) == 0


async def test_fifty_concurrent_creates_with_one_key_make_one_task(
    client: Client, raw: asyncpg.Connection
) -> None:
    body = {"kind": "shell", "command": "echo racing", "idempotency_key": "race"}
    responses = await asyncio.gather(*(post_json(client, "/v1/tasks", body)
                                       for _ in range(50)))
    statuses = sorted(r.status for r in responses)
    assert statuses == [200] * 49 + [201], statuses
    ids = {(await r.json())["id"] for r in responses}
    assert len(ids) == 1
    assert await task_count(raw) == 1


# ---- attempts -------------------------------------------------------------------------


async def test_attempts_lists_ended_attempts_then_the_one_in_flight(
    client: Client, db: Database, raw: asyncpg.Connection
) -> None:
    made = await create(client, max_attempts=2)
    response = await client.get(f"/v1/tasks/{made['id']}/attempts")
    assert response.status == 200
    assert await response.json() == {"attempts": []}

    (claimed,) = await db.claim("eu", 1)
    now = datetime.now(UTC)
    await apply_events(db, [], [Finished(
        id=made["id"], attempt=claimed.attempt, ok=False, worker_id="w-1", started_at=now,
        finished_at=now, exit_code=2, output=None, error="exited with code 2")],
        backoff_base=timedelta(0), backoff_max=timedelta(0))
    await raw.execute("UPDATE tasks SET near = true, run_at = now() - interval '1 second'")
    (again,) = await db.claim("eu", 1)
    await apply_events(db, [Started(id=made["id"], attempt=again.attempt, worker_id="w-2",
                                    started_at=now)], [],
                       backoff_base=timedelta(0), backoff_max=timedelta(0))

    body = await (await client.get(f"/v1/tasks/{made['id']}/attempts")).json()
    first, current = body["attempts"]
    assert set(first) == {"attempt", "region", "worker_id", "claimed_at", "started_at",
                          "finished_at", "outcome", "reason", "exit_code"}
    assert (first["attempt"], first["region"], first["worker_id"], first["outcome"],
            first["reason"], first["exit_code"]) == (
        1, "eu", "w-1", "failed", "exited with code 2", 2)
    assert first["claimed_at"] and first["started_at"] and first["finished_at"]
    assert (current["attempt"], current["region"], current["worker_id"]) == (2, "eu", "w-2")
    assert (current["outcome"], current["finished_at"]) == (None, None)
    assert current["claimed_at"] and current["started_at"]


async def test_attempts_of_an_unknown_or_malformed_task(client: Client) -> None:
    await expect_error(await client.get(f"/v1/tasks/{uuid.uuid4()}/attempts"), 404,
                       "not_found")
    await expect_error(await client.get("/v1/tasks/nope/attempts"), 400, "invalid_input")
    await expect_error(await client.post(f"/v1/tasks/{uuid.uuid4()}/attempts"), 405,
                       "method_not_allowed")
