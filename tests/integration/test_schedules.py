"""Schedules against a real PostgreSQL: each fire made once however many schedulers
race, its task due at its fire time; and the REST API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from strata.common.schedules import fire_task, parse_schedule
from strata.common.settings import MasterSettings
from strata.common.timeutil import rfc3339
from strata.master.api import Api
from strata.master.control import Control
from strata.master.db import Database, Fire, FirePlan, ScheduleRow
from strata.master.metrics import MasterMetrics
from strata.master.regions import RegionClients
from strata.master.schedules import Scheduler

pytestmark = pytest.mark.integration

Client = TestClient[web.Request, web.Application]
TASK = {"kind": "shell", "command": "true"}


@pytest.fixture
async def client(db: Database, database_url: str) -> AsyncIterator[Client]:
    regions = RegionClients()
    server = TestServer(Api(Control(db, regions, MasterSettings(database_url=database_url)))
                        .app())
    test_client: Client = TestClient(server)
    await test_client.start_server()
    try:
        yield test_client
    finally:
        await test_client.close()
        await regions.close()


async def fires_of(raw: asyncpg.Connection, name: str) -> list[asyncpg.Record]:
    return await raw.fetch(
        "SELECT fire_time, outcome, task_id FROM schedule_fires WHERE schedule = $1 "
        "ORDER BY fire_time", name)


async def test_schedulers_racing_make_each_fire_once(
    database_url: str, raw: asyncpg.Connection,
) -> None:
    """Four masters' schedulers, each on its own pool, pass over one schedule that has
    twenty fire times due (it started 20 s ago, catchup all) as fast as they can."""
    dbs = [await Database.connect(database_url) for _ in range(4)]
    try:
        start = datetime.now(UTC) - timedelta(seconds=20)
        spec = parse_schedule({"name": "race", "every_s": 1, "catchup": "all", "task": TASK,
                               "start_at": start.isoformat()})
        await dbs[0].schedules.create(spec, start)
        schedulers = [Scheduler(db, MasterMetrics()) for db in dbs]
        for _ in range(5):
            await asyncio.gather(*(s.pass_once() for s in schedulers))
    finally:
        for db in dbs:
            await db.close()
    fires = await fires_of(raw, "race")
    times = [f["fire_time"] for f in fires]
    assert len(times) >= 21 and len(set(times)) == len(times)
    assert all(f["outcome"] == "fired" for f in fires)
    tasks = await raw.fetch("SELECT id, run_at, schedule FROM tasks ORDER BY run_at")
    # One task per fire, due at its fire time, and no other.
    assert [t["id"] for t in tasks] == [f["task_id"] for f in fires]
    assert [t["run_at"] for t in tasks] == times
    assert {t["schedule"] for t in tasks} == {"race"}


async def test_the_key_makes_a_fire_once_even_past_the_lock(
    database_url: str, raw: asyncpg.Connection,
) -> None:
    """Not the row lock (it is waited for here, not skipped): two passes that both plan
    the same fire time, one after the other, make one fire and one task."""
    dbs = [await Database.connect(database_url) for _ in range(2)]
    when = datetime(2030, 1, 1, tzinfo=UTC)
    try:
        spec = parse_schedule({"name": "twice", "every_s": 60, "task": TASK})
        await dbs[0].schedules.create(spec, when)

        def same_fire(schedule: ScheduleRow) -> FirePlan:
            return FirePlan(fires=[Fire(when, "fired", None, fire_task(schedule.spec, when))],
                            next_fire_at=when + timedelta(minutes=1))

        results = await asyncio.gather(
            *(db.schedules.fire("twice", same_fire, lead_s=None) for db in dbs))
    finally:
        for db in dbs:
            await db.close()
    assert sorted(len(r.fires) for r in results if r is not None) == [0, 1]
    assert len(await fires_of(raw, "twice")) == 1
    assert await raw.fetchval("SELECT count(*) FROM tasks") == 1


async def create(client: Client, **body: Any) -> dict[str, Any]:
    response = await client.post("/v1/schedules", json={"task": TASK, **body})
    assert response.status == 201, await response.text()
    result: dict[str, Any] = await response.json()
    return result


async def test_create_get_list_change_delete(client: Client) -> None:
    made = await create(client, name="nightly", cron="0 3 * * *", timezone="Europe/Berlin")
    assert made["next_fire_at"] is not None and made["next_fire_at"].endswith(("02:00:00Z",
                                                                               "01:00:00Z"))
    assert (made["overlap"], made["catchup"], made["paused"]) == ("allow", "none", False)
    got = await (await client.get("/v1/schedules/nightly")).json()
    assert got == made
    listed = await (await client.get("/v1/schedules")).json()
    assert [s["name"] for s in listed["schedules"]] == ["nightly"]

    paused = await (await client.patch("/v1/schedules/nightly", json={"paused": True})).json()
    assert paused["paused"] is True and paused["next_fire_at"] is None
    resumed = await (await client.patch("/v1/schedules/nightly",
                                        json={"paused": False, "every_s": 30})).json()
    assert (resumed["cron"], resumed["every_s"], resumed["paused"]) == (None, 30.0, False)
    assert resumed["next_fire_at"] is not None

    again = await client.post("/v1/schedules", json={"name": "nightly", "every_s": 5,
                                                     "task": TASK})
    assert again.status == 409
    assert (await client.delete("/v1/schedules/nightly")).status == 204
    assert (await client.get("/v1/schedules/nightly")).status == 404
    assert (await client.delete("/v1/schedules/nightly")).status == 404


@pytest.mark.parametrize("body", [
    {"name": "x", "cron": "not cron", "task": TASK},
    {"name": "x", "every_s": 5, "timezone": "Nowhere/City", "task": TASK},
    {"name": "x", "every_s": 5, "task": {"kind": "shell"}},
    {"name": "x", "every_s": 5, "task": {**TASK, "region": "nowhere"}},
    {"name": "x", "every_s": 5},
    [1, 2],
])
async def test_bad_schedules_get_a_400(client: Client, body: Any) -> None:
    response = await client.post("/v1/schedules", json=body)
    assert response.status == 400, await response.text()
    assert (await response.json())["error"]["code"] == "invalid_input"


async def test_a_bad_change_gets_a_400_and_changes_nothing(client: Client) -> None:
    before = await create(client, name="s", every_s=60)
    for change in ({"cron": "nope"}, {"name": "t"}, {"overlap": "maybe"}, {}):
        response = await client.patch("/v1/schedules/s", json=change)
        assert response.status == 400, change
    assert await (await client.get("/v1/schedules/s")).json() == before


async def test_trigger_fires_now_and_fires_lists_it(client: Client,
                                                    raw: asyncpg.Connection) -> None:
    await create(client, name="s", every_s=3600, start_at="2100-01-01T00:00:00Z")
    response = await client.post("/v1/schedules/s/trigger")
    assert response.status == 201
    fired = await response.json()
    task = await (await client.get(f"/v1/tasks/{fired['task_id']}")).json()
    assert task["state"] == "pending" and task["run_at"] == fired["fire_time"]
    listed = await (await client.get("/v1/schedules/s/fires")).json()
    assert listed["fires"] == [{
        "fire_time": fired["fire_time"], "outcome": "fired",
        "reason": "triggered by a client", "task_id": fired["task_id"],
        "task_state": "pending", "recorded_at": listed["fires"][0]["recorded_at"],
    }]
    assert listed["next_before"] is None
    assert (await client.post("/v1/schedules/none/trigger")).status == 404
    assert (await client.get("/v1/schedules/s/fires?limit=0")).status == 400
    assert (await client.get("/v1/schedules/s/fires?before=yesterday")).status == 400


# ---- what schemathesis found, each pinned down here ----------------------------------


@pytest.mark.parametrize(("body", "next_fire_at"), [
    ({"every_s": 1, "start_at": "9999-12-31T23:59:59Z"}, "9999-12-31T23:59:59Z"),
    ({"every_s": 86400, "start_at": "9999-12-31T23:59:59.5+00:00"}, "9999-12-31T23:59:59.500000Z"),
    ({"cron": "* * * * *", "start_at": "9999-12-31T23:59:00Z"}, "9999-12-31T23:59:00Z"),
    # Midnight 10000-01-01 in UTC-12 is past datetime's end in UTC: not a fire time.
    ({"cron": "59 11,23 31 12 *", "timezone": "Etc/GMT+12",
      "start_at": "9999-12-31T23:00:00Z"}, "9999-12-31T23:59:00Z"),
    ({"cron": "0 0 1 1 *", "timezone": "Pacific/Kiritimati",
      "start_at": "9999-12-30T00:00:00Z"}, None),
])
async def test_fire_times_end_where_datetime_does(client: Client, body: dict[str, Any],
                                                  next_fire_at: str | None) -> None:
    """The fire after 9999-12-31 (in UTC, or in the schedule's time zone) overflowed:
    POST and PATCH were 500s, and a scheduler's pass would have raised."""
    made = await create(client, name="end", **body)
    assert made["next_fire_at"] == next_fire_at
    spec = parse_schedule({"name": "end", "task": TASK, **body})
    now = datetime.now(UTC)
    times = list(spec.times(now, now))
    assert [rfc3339(t) for t in times] == ([next_fire_at] if next_fire_at else [])
    response = await client.patch("/v1/schedules/end", json={"start_at": body["start_at"],
                                                             "paused": True})
    assert response.status == 200, await response.text()
    assert (await client.delete("/v1/schedules/end")).status == 204
    await create(client, name="end2", every_s=60)
    response = await client.patch("/v1/schedules/end2", json=body)
    assert response.status == 200, await response.text()
    assert (await response.json())["next_fire_at"] == next_fire_at
