"""GET /v1/events against a real PostgreSQL: every state change, from any master, in
order, filtered, resumable, and a subscriber that falls behind is dropped."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from strata.common.client import Client, StreamEvent
from strata.common.events import Finished, Report, Started
from strata.common.settings import MasterSettings
from strata.master.api import Api
from strata.master.control import Control
from strata.master.db import Database
from strata.master.regions import RegionClients
from strata.master.stream import EventHub

pytestmark = pytest.mark.integration

BACKOFF = {"backoff_base": timedelta(seconds=1), "backoff_max": timedelta(seconds=1)}
EVENT_FIELDS = {"id", "state", "attempt", "region", "worker_id", "at"}


@dataclass
class Master:
    db: Database
    hub: EventHub
    client: Client


MasterFactory = Callable[..., Awaitable[Master]]


@pytest.fixture
async def masters(database_url: str) -> AsyncIterator[MasterFactory]:
    """Start masters (REST API and event hub, each with its own database pool) on the
    test's database."""
    stack = contextlib.AsyncExitStack()

    async def start(*, buffer: int = 1000, keepalive_s: float = 15.0,
                    linger_s: float = 60.0) -> Master:
        db = await Database.connect(database_url)
        stack.push_async_callback(db.close)
        hub = EventHub(db, f"master-{uuid.uuid4().hex[:6]}", buffer=buffer,
                       linger_s=linger_s)
        runner = asyncio.create_task(hub.run())

        async def stop_hub() -> None:
            hub.close("test over")
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner

        regions = RegionClients()
        stack.push_async_callback(regions.close)
        settings = MasterSettings(database_url=database_url)
        server = TestServer(Api(Control(db, regions, settings), hub,
                                keepalive_s=keepalive_s).app())
        await server.start_server()
        stack.push_async_callback(server.close)
        stack.push_async_callback(stop_hub)
        client = Client(str(server.make_url("")))
        stack.push_async_callback(client.close)
        return Master(db, hub, client)

    async with stack:
        yield start


class Stream:
    """A subscription read in the background, its messages kept in order."""

    def __init__(self, events: AsyncIterator[StreamEvent]) -> None:
        self.messages: list[StreamEvent] = []
        self._events = events
        self._changed = asyncio.Condition()
        self.ended = False
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for message in self._events:
                async with self._changed:
                    self.messages.append(message)
                    self._changed.notify_all()
        finally:
            async with self._changed:
                self.ended = True
                self._changed.notify_all()

    @property
    def tasks(self) -> list[StreamEvent]:
        return [m for m in self.messages if m.event == "task"]

    async def until(self, done: Callable[[Stream], bool], timeout_s: float = 10.0) -> None:
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(lambda: done(self) or self.ended)
        assert done(self), [(m.event, m.data) for m in self.messages]

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@contextlib.asynccontextmanager
async def subscribed(client: Client, **filters: object) -> AsyncIterator[Stream]:
    stream = Stream(client.events(**filters))  # type: ignore[arg-type]
    try:
        await stream.until(lambda s: any(m.event == "subscribed" for m in s.messages))
        yield stream
    finally:
        await stream.close()


async def run_to_the_end(db: Database, task_id: str, *also: str, ok: bool = True) -> None:
    """Claim the tasks, start them and end them: all succeed, or (``ok=False``) fail."""
    ids = {task_id, *also}
    claimed = [c for c in await db.claim("eu", 100) if str(c.id) in ids]
    assert len(claimed) == len(ids)
    now = datetime.now(UTC)
    await db.apply_report(Report(
        region="eu",
        started=[Started(id=str(c.id), attempt=c.attempt, worker_id="w-1", started_at=now)
                 for c in claimed],
        finished=[], returned=[]), **BACKOFF)
    await db.apply_report(Report(
        region="eu", started=[],
        finished=[Finished(id=str(c.id), attempt=c.attempt, ok=ok, worker_id="w-1",
                           started_at=now, finished_at=now, exit_code=0 if ok else 1,
                           output="", error=None if ok else "exit 1") for c in claimed],
        returned=[]), **BACKOFF)


def states_of(stream: Stream, task_id: str) -> list[str]:
    return [m.data["state"] for m in stream.tasks if m.data["id"] == task_id]


async def test_every_change_of_a_task_in_order(masters: MasterFactory) -> None:
    master = await masters()
    async with subscribed(master.client) as stream:
        task = await master.client.create(kind="shell", command="true")
        await run_to_the_end(master.db, task["id"])
        await stream.until(lambda s: "succeeded" in states_of(s, task["id"]))
    assert states_of(stream, task["id"]) == ["pending", "dispatched", "running", "succeeded"]
    mine = [m for m in stream.tasks if m.data["id"] == task["id"]]
    assert all(set(m.data) == EVENT_FIELDS for m in mine)
    assert [m.data["attempt"] for m in mine] == [0, 1, 1, 1]
    assert [m.data["region"] for m in mine] == [None, "eu", "eu", "eu"]
    assert [m.data["worker_id"] for m in mine] == [None, None, "w-1", "w-1"]
    assert len({m.id for m in mine}) == 4 and all(m.id for m in mine)
    # at is when the change happened: the running one is when the worker started it.
    assert all(datetime.fromisoformat(m.data["at"]).tzinfo is not None for m in mine)


async def test_a_change_through_one_master_reaches_the_subscribers_of_another(
    masters: MasterFactory,
) -> None:
    one, other = await masters(), await masters()
    async with subscribed(other.client) as stream:
        task = await one.client.create(kind="shell", command="true")
        await run_to_the_end(one.db, task["id"])
        await stream.until(lambda s: "succeeded" in states_of(s, task["id"]))
    assert states_of(stream, task["id"]) == ["pending", "dispatched", "running", "succeeded"]


async def test_filters_by_task_state_and_region(masters: MasterFactory) -> None:
    master = await masters()
    a = await master.client.create(kind="shell", command="true")
    b = await master.client.create(kind="shell", command="true", run_at="2100-01-01T00:00:00Z")
    pinned_elsewhere = await master.client.create(kind="shell", command="true",
                                                  run_at="2100-01-01T00:00:00Z")
    async with (
        subscribed(master.client, tasks=[a["id"]]) as only_a,
        subscribed(master.client, state="succeeded") as succeeded,
        subscribed(master.client, region="eu") as in_eu,
        subscribed(master.client, tasks=[a["id"], b["id"]], state="failed") as both_failed,
    ):
        await run_to_the_end(master.db, a["id"])
        await master.db._pool.execute("UPDATE tasks SET run_at = now(), near = true WHERE id = $1",
                                      uuid.UUID(b["id"]))
        await run_to_the_end(master.db, b["id"], ok=False)
        await master.client.cancel(pinned_elsewhere["id"])
        await succeeded.until(lambda s: len(s.tasks) >= 1)
        await both_failed.until(lambda s: len(s.tasks) >= 1)
        # The last change made: once it is in, every earlier one is too.
        await in_eu.until(lambda s: "failed" in states_of(s, b["id"]))
        await only_a.until(lambda s: "succeeded" in states_of(s, a["id"]))
    assert {m.data["id"] for m in only_a.tasks} == {a["id"]}
    assert [(m.data["id"], m.data["state"]) for m in succeeded.tasks] == [(a["id"], "succeeded")]
    assert [(m.data["id"], m.data["state"]) for m in both_failed.tasks] == [(b["id"], "failed")]
    # The cancelled task was never in a region; a and b were, from their claim on.
    assert all(m.data["region"] == "eu" for m in in_eu.tasks)
    assert [m.data["state"] for m in in_eu.tasks if m.data["id"] == a["id"]] == [
        "dispatched", "running", "succeeded"]


async def test_resumes_after_the_last_event_id(masters: MasterFactory) -> None:
    master = await masters()
    async with subscribed(master.client) as first:
        task = await master.client.create(kind="shell", command="true")
        await first.until(lambda s: states_of(s, task["id"]) == ["pending"])
    last = first.tasks[-1].id
    # Nobody is subscribed while it runs; the master keeps listening for its window.
    await run_to_the_end(master.db, task["id"])
    async with subscribed(master.client, last_event_id=last) as resumed:
        await resumed.until(lambda s: "succeeded" in states_of(s, task["id"]))
    assert states_of(resumed, task["id"]) == ["dispatched", "running", "succeeded"]
    assert [m.event for m in resumed.messages][:1] == ["subscribed"]
    assert "missed" not in [m.event for m in resumed.messages]


async def test_an_id_out_of_the_window_is_told_it_missed_events(
    masters: MasterFactory,
) -> None:
    master = await masters()
    async with subscribed(master.client, last_event_id="1-0") as stream:
        await stream.until(lambda s: any(m.event == "missed" for m in s.messages))
        task = await master.client.create(kind="shell", command="true")
        await stream.until(lambda s: states_of(s, task["id"]) == ["pending"])


async def test_a_subscriber_that_falls_behind_is_told_and_dropped(
    masters: MasterFactory,
) -> None:
    master = await masters(buffer=5)
    async with subscribed(master.client) as slow, subscribed(master.client,
                                                              tasks=[str(uuid.uuid4())]) as calm:
        # One batch: its hundred events arrive at once, more than the five it may hold.
        await master.client.create_batch([{"kind": "shell", "command": "true"}] * 100)
        await slow.until(lambda s: s.ended)
        assert slow.messages[-1].event == "dropped"
        assert "5 events behind" in slow.messages[-1].data["reason"]
        assert master.hub.subscribers == 1  # the other one is still there
        assert not calm.ended
    # The scheduler went on: every task was created and can still be listed.
    page = await master.client.list_tasks(state="pending", limit="1000")
    assert len(page["tasks"]) == 100


async def test_keep_alive_comments(masters: MasterFactory) -> None:
    master = await masters(keepalive_s=0.1)
    stream = Stream(master.client.events(comments=True))
    try:
        await stream.until(lambda s: sum(m.event == "comment" for m in s.messages) >= 2)
    finally:
        await stream.close()


@pytest.mark.parametrize(("query", "message"), [
    ("task=nope", "not a task id"),
    ("state=done", "unknown state"),
    ("colour=red", "unknown query parameter"),
    ("state=pending&state=failed", "more than once"),
])
async def test_bad_filters_are_refused(masters: MasterFactory, query: str,
                                       message: str) -> None:
    master = await masters()
    answer = await master.client._session.get(f"{master.client.base_url}/v1/events?{query}")
    assert answer.status == 400
    assert message in (await answer.json())["error"]["message"]


async def test_nothing_is_published_while_nobody_listens(
    masters: MasterFactory, database_url: str,
) -> None:
    master = await masters(linger_s=0.0)
    async with subscribed(master.client):
        listeners = await master.db._pool.fetchval(
            "SELECT count(*) FROM event_listeners WHERE until > now()")
        assert listeners == 1
    # The last subscriber left and the window is zero: the master stops listening and
    # takes its row away, so changes publish nothing.
    await asyncio.wait_for(master.hub.idle.wait(), 10)
    assert await master.db._pool.fetchval("SELECT count(*) FROM event_listeners") == 0
    heard: asyncio.Queue[str] = asyncio.Queue()
    conn = await asyncpg.connect(database_url)
    try:
        await conn.add_listener("strata_events", lambda *args: heard.put_nowait(args[3]))
        await master.client.create(kind="shell", command="true")
        # Notifications come in commit order: the probe, sent after the create
        # committed, is the first one heard.
        await conn.execute("SELECT pg_notify('strata_events', 'probe')")
        assert await asyncio.wait_for(heard.get(), 10) == "probe"
    finally:
        await conn.close()
