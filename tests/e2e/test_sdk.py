"""The Python SDK (``strata.client``) against real processes: typed answers, paging,
cancel / retry / attempts, waiting and watching on the event stream (across a master
restart), schedules, concurrency keys, each error class, the sync Client, and a
``@strata.task`` handler run by a worker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import uuid
from collections.abc import AsyncIterator, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import aiohttp
import pytest

import strata
from strata.client import (
    ApiError,
    AsyncClient,
    Client,
    Conflict,
    InvalidInput,
    MethodNotAllowed,
    NotFound,
    RequestEntityTooLarge,
    StrataError,
    TaskDetail,
    TaskEventData,
    TaskOut,
    TaskState,
    TaskWatch,
    Unavailable,
    python_task,
)
from strata.common import errors
from strata.examples import etl, fanout
from strata.local.cluster import Cluster, wait_until
from strata.local.postgres import free_port
from tests.e2e.scrape import scrape, value

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

LATER = "2100-01-01T00:00:00Z"
T = TypeVar("T")


@pytest.fixture
async def running(cluster: Cluster) -> Cluster:
    await cluster.start_master()
    await cluster.start_region("east")
    await cluster.start_worker("east", "east-w1", concurrency=8,
                               STRATA_PYTHON_MODULES=json.dumps(["strata.examples"]))
    return cluster


async def test_submit_wait_get_attempts_and_graph_are_typed(running: Cluster) -> None:
    async with AsyncClient(running.api) as c:
        made = await c.submit("shell", command="echo hi; echo oops >&2", priority=3)
        assert isinstance(made, TaskOut) and isinstance(made.id, uuid.UUID)
        assert (made.kind, made.payload, made.priority) == (
            "shell", {"command": "echo hi; echo oops >&2"}, 3)
        done = await c.wait(made.id, timeout=30)
        assert isinstance(done, TaskDetail)
        assert done.state is TaskState.SUCCEEDED
        assert (done.result.output, done.result.stderr, done.result.exit_code) == (
            "hi\n", "oops\n", 0)
        assert (done.region, done.worker_id, done.dependents) == ("east", "east-w1", [])
        assert await c.get(str(made.id)) == done  # a str id is as good as a UUID

        (attempt,) = await c.attempts(made.id)
        assert (attempt.attempt, attempt.outcome, attempt.region, attempt.exit_code) == (
            1, "succeeded", "east", 0)
        graph = await c.graph(made.id)
        assert graph.root == made.id and [n.id for n in graph.nodes] == [made.id]
        assert graph.edges == [] and not graph.truncated

        # A failure with attempts left goes round again; every attempt is kept.
        flaky = await c.submit("shell", command="exit 4", max_attempts=2)
        failed = await c.wait(flaky.id, timeout=60)
        assert failed.state is TaskState.FAILED and failed.attempt == 2
        assert failed.result.error == "exited with code 4"
        assert [(a.attempt, a.outcome, a.exit_code) for a in await c.attempts(flaky.id)] == [
            (1, "failed", 4), (2, "failed", 4)]
        # Waiting on a task that ended already answers at once, from its one read.
        assert (await c.wait(flaky.id, timeout=5)).state is TaskState.FAILED


async def test_list_follows_the_cursor_across_pages(running: Cluster) -> None:
    async with AsyncClient(running.api) as c:
        batch = await c.submit_many([{"kind": "sleep", "seconds": 1, "run_at": LATER}] * 7)
        assert len(batch.ids) == 7 and batch.existed == [False] * 7
        first = await c.page(kind="sleep", limit=3)
        assert len(first.tasks) == 3 and first.next_cursor is not None
        oldest_first = [t.id async for t in c.list(kind="sleep", page_size=3)]
        assert sorted(oldest_first) == sorted(batch.ids)  # 7 tasks, 3 pages of 3, 3, 1
        assert oldest_first[:3] == [t.id for t in first.tasks]
        newest_first = [t.id async for t in c.list(kind="sleep", order="desc", page_size=2)]
        assert newest_first == oldest_first[::-1]
        assert [t.id async for t in c.list(state="pending", kind="sleep", page_size=5)] == \
            oldest_first
        assert [t async for t in c.list(state=TaskState.FAILED, kind="sleep")] == []
        # Leaving early stops asking for pages.
        async for task in c.list(kind="sleep", page_size=1):
            assert task.id == oldest_first[0]
            break


async def test_cancel_retry_reprioritize_and_their_conflicts(running: Cluster) -> None:
    async with AsyncClient(running.api) as c:
        later = await c.submit("shell", command="true", run_at=LATER)
        assert (await c.reprioritize(later.id, 7)).priority == 7
        cancelled = await c.cancel(later.id)
        assert cancelled.state is TaskState.CANCELLED
        with pytest.raises(Conflict) as again:
            await c.cancel(later.id)
        assert (again.value.status, again.value.code) == (409, "conflict")
        assert again.value.message == f"task {later.id} is already cancelled"
        assert str(again.value) == again.value.message
        with pytest.raises(Conflict):
            await c.reprioritize(later.id, 1)
        retried = await c.retry(later.id)
        assert retried.retry_of == later.id and retried.state is TaskState.PENDING
        assert retried.id != later.id and retried.run_at < later.run_at  # again, now
        assert (await c.wait(retried.id, timeout=30)).state is TaskState.SUCCEEDED
        with pytest.raises(Conflict, match="only a failed or cancelled task"):
            await c.retry(retried.id)


# aiohttp's note on sending the 2 MiB body of the 413 at once.
@pytest.mark.filterwarnings("ignore:Sending a large body directly:ResourceWarning")
async def test_each_error_is_its_codes_class(running: Cluster) -> None:
    async with AsyncClient(running.api) as c:
        with pytest.raises(InvalidInput) as bad:
            await c.submit("shell")
        assert (bad.value.status, bad.value.code) == (400, "invalid_input")
        assert "command" in bad.value.message
        with pytest.raises(InvalidInput, match="unknown kind 'nope'"):
            await c.submit("nope")
        with pytest.raises(InvalidInput, match="priority"):
            await c.submit("noop", priority="high")
        with pytest.raises(InvalidInput, match="not a task id"):
            await c.get("not-an-id")
        with pytest.raises(InvalidInput, match=r"tasks\[1\].*cycle|cycle"):
            await c.submit_many([{"kind": "noop", "key": "a", "depends_on": ["b"]},
                                 {"kind": "noop", "key": "b", "depends_on": ["a"]}])
        unknown = uuid.uuid4()
        with pytest.raises(NotFound) as missing:
            await c.get(unknown)
        assert (missing.value.status, missing.value.code) == (404, "not_found")
        with pytest.raises(NotFound):
            await c.wait(unknown, timeout=10)
        with pytest.raises(NotFound):
            await c.schedule("no-such-schedule")
        with pytest.raises(MethodNotAllowed) as method:
            await c.rest.request("DELETE", "/v1/tasks")
        assert (method.value.status, method.value.code) == (405, "method_not_allowed")
        with pytest.raises(RequestEntityTooLarge) as big:
            await c.submit("shell", command="x" * (2 * 1024 * 1024))
        assert (big.value.status, big.value.code) == (413, "request_entity_too_large")
        # Every one is an ApiError (so a StrataError), and the common error of its kind.
        for caught in (bad, missing, method, big):
            assert isinstance(caught.value, ApiError) and isinstance(caught.value, StrataError)
        assert isinstance(bad.value, errors.InvalidInput)
        assert isinstance(missing.value, errors.NotFound)

    async with AsyncClient(f"http://127.0.0.1:{free_port()}", timeout=5) as nobody:
        with pytest.raises(Unavailable, match=r"^cannot reach http://127\.0\.0\.1:") as down:
            await nobody.stats()
    assert (down.value.status, down.value.code) == (None, "unavailable")
    assert isinstance(down.value, errors.Unavailable)
    with pytest.raises(InvalidInput, match="not an http:// or https:// URL: 'localhost:1'"):
        AsyncClient("localhost:1")


async def test_wait_is_told_by_the_stream_and_times_out(running: Cluster) -> None:
    async with AsyncClient(running.api) as c:
        slow = await c.submit("sleep", seconds=1)
        waited = asyncio.ensure_future(c.wait(slow.id, timeout=30))
        # It waits on a subscription of its own.
        await wait_until(lambda: _subscribers(running, 1), what="wait subscribed")
        done = await waited
        assert done.state is TaskState.SUCCEEDED and done.finished_at is not None
        later = await c.submit("noop", run_at=LATER)
        began = asyncio.get_running_loop().time()
        with pytest.raises(TimeoutError, match=f"task {later.id} did not end within 0.5s"):
            await c.wait(later.id, timeout=0.5)
        assert asyncio.get_running_loop().time() - began < 5
        await wait_until(lambda: _subscribers(running, 0), what="the wait unsubscribed")


async def test_watch_subscribes_on_entry_and_filters(running: Cluster) -> None:
    async with AsyncClient(running.api) as c:
        task = await c.submit("noop", run_at=LATER)
        other = await c.submit("noop", run_at=LATER)
        async with c.watch([task.id]) as changes:
            await c.cancel(other.id)  # not named: not told
            await c.cancel(task.id)
            change = await asyncio.wait_for(anext(changes), 30)
        assert (change.id, change.state, change.attempt) == (task.id, TaskState.CANCELLED, 0)
        assert changes.resumes == 0

        async with c.watch(state="succeeded") as succeeded:
            made = await c.submit("noop")
            seen = await asyncio.wait_for(anext(succeeded), 30)
        assert (seen.id, seen.state, seen.region, seen.worker_id) == (
            made.id, TaskState.SUCCEEDED, "east", "east-w1")


async def test_a_watch_that_falls_behind_is_dropped_and_goes_on_from_now(
        cluster: Cluster) -> None:
    cluster.env["STRATA_EVENTS_BUFFER"] = "50"  # 50 behind and a subscriber is dropped
    await cluster.start_master()
    await cluster.start_region("east")
    await cluster.start_worker("east", "east-w1", concurrency=32)
    missed: list[str] = []
    async with AsyncClient(cluster.api) as c, c.watch(on_missed=missed.append) as changes:
        # Thousands of changes at once, in batches of more than 50: it falls behind.
        burst = set((await c.submit_many([{"kind": "noop"}] * 2000)).ids)
        await wait_until(lambda: _succeeded(c, 2000), timeout_s=60, what="all done")
        async with _background(_first_success_outside(changes, burst)) as reading:
            # Read again, it cannot be taken up where it stopped: it goes on from now,
            # and says it missed changes (once subscribed afresh, so nothing after is).
            await wait_until(lambda: _told(missed), what="the watch told it missed some")
            after = await c.submit("noop")
            change = await asyncio.wait_for(reading, 30)
    assert (change.id, change.state) == (after.id, TaskState.SUCCEEDED)
    assert changes.resumes >= 1
    assert "50 events behind" in missed[0], missed


async def test_watch_and_wait_ride_out_a_master_restart(running: Cluster) -> None:
    missed: list[str] = []
    async with AsyncClient(running.api) as c:
        later = await c.submit("noop", run_at=LATER)
        async with c.watch(on_missed=missed.append) as changes:
            # One change read, so that the stream has a Last-Event-ID to resume from.
            before = await c.submit("noop")
            assert (await asyncio.wait_for(anext(changes), 30)).id == before.id
            waiting = asyncio.ensure_future(c.wait(later.id, timeout=60))
            await wait_until(lambda: _subscribers(running, 2), what="both subscribed")
            async with _background(_first_of(changes, later.id)) as reading:
                running.kill("master", signal.SIGKILL)
                await running.start_master()
                # Both streams taken up again on the new master: the watch from its last
                # change, which the new master does not hold, as it says.
                await wait_until(lambda: _subscribers(running, 2), what="both back")
                await wait_until(lambda: _told(missed), what="the watch told it missed some")
                await c.cancel(later.id)
                change = await asyncio.wait_for(reading, 30)
                done = await asyncio.wait_for(waiting, 30)
    assert (change.id, change.state) == (later.id, TaskState.CANCELLED)
    assert done.state is TaskState.CANCELLED
    assert changes.resumes == 1
    assert len(missed) == 1 and "missed" in missed[0], missed


async def test_schedules_and_concurrency_keys(running: Cluster) -> None:
    async with AsyncClient(running.api) as c:
        start = datetime.now(UTC) + timedelta(days=1)
        made = await c.create_schedule("hourly", every_s=3600, start_at=start,
                                       task={"kind": "noop", "priority": 2}, overlap="skip")
        assert (made.name, made.every_s, made.cron, made.overlap) == (
            "hourly", 3600.0, None, "skip")
        assert made.next_fire_at is not None
        assert abs(made.next_fire_at - start) < timedelta(milliseconds=1)
        with pytest.raises(Conflict, match="exists already"):
            await c.create_schedule("hourly", every_s=60, task={"kind": "noop"})
        with pytest.raises(InvalidInput, match="cron"):
            await c.create_schedule("bad", cron="every day", task={"kind": "noop"})
        assert [s.name for s in await c.schedules()] == ["hourly"]
        paused = await c.pause("hourly")
        assert paused.paused and paused.next_fire_at is None
        assert (await c.schedule("hourly")).paused
        resumed = await c.resume("hourly")
        assert not resumed.paused and resumed.next_fire_at is not None
        fired = await c.trigger("hourly")
        task = await c.wait(fired.task_id, timeout=30)
        assert task.state is TaskState.SUCCEEDED and task.priority == 2
        page = await c.fires("hourly")
        assert [(f.outcome, f.task_id) for f in page.fires] == [("fired", fired.task_id)]
        assert page.next_before is None
        await c.delete_schedule("hourly")
        with pytest.raises(NotFound):
            await c.schedule("hourly")
        assert await c.schedules() == []

        limit = await c.set_concurrency("etl", 2)
        assert (limit.key, limit.limit, limit.active, limit.pending) == ("etl", 2, 0, 0)
        await c.submit("noop", run_at=LATER, concurrency_key="etl")
        assert (await c.concurrency("etl")).pending == 1
        assert [k.key for k in await c.concurrency_limits()] == ["etl"]
        await c.clear_concurrency("etl")
        assert (await c.concurrency("etl")).limit is None
        with pytest.raises(NotFound):
            await c.clear_concurrency("etl")
        stats = await c.stats()
        assert stats.counts.succeeded >= 1 and stats.counts.pending >= 1
        assert [r.name for r in await c.regions()] == ["east"]
        assert [w.id for w in await c.workers()] == ["east-w1"]


async def test_a_decorated_handler_round_trips_through_a_worker(running: Cluster) -> None:
    assert strata.task is strata.client.task
    async with AsyncClient(running.api) as c:
        made = await c.submit(etl.extract, day="2030-01-02", orders=2)
        assert made.payload == {"handler": "strata.examples.etl:extract",
                                "args": {"day": "2030-01-02", "orders": 2}}
        assert (made.max_attempts, made.timeout_s) == (3, 60)  # the decorator's defaults
        done = await c.wait(made.id, timeout=30)
        assert done.state is TaskState.SUCCEEDED, done.result
        assert json.loads(done.result.output or "") == etl.extract("2030-01-02", orders=2)
        # Positional arguments, and options over the decorator's defaults.
        positional = await c.submit(etl.extract, "2030-01-03", 1,
                                    options={"max_attempts": 1, "priority": 9})
        assert positional.payload["args"] == ["2030-01-03", 1]
        assert (positional.max_attempts, positional.priority) == (1, 9)
        assert (await c.wait(positional.id, timeout=30)).state is TaskState.SUCCEEDED
        # An async handler, with its parent's output.
        batch = await c.submit_many([
            {**python_task(fanout.plan, parts=1, size=3), "key": "plan"},
            {**python_task(fanout.crunch, part=0), "depends_on": ["plan"]}])
        crunched = await c.wait(batch.ids[1], timeout=30)
        assert crunched.state is TaskState.SUCCEEDED, crunched.result
        assert json.loads(crunched.result.output or "") == {"part": 0, "sum": 0 + 1 + 4}


def test_the_sync_client_from_a_plain_thread(running: Cluster) -> None:
    """A sync test, as a plain script: no event loop in this thread at all."""
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()
    with Client(running.api) as c:
        made = c.submit("shell", command="echo sync")
        assert c.wait(made.id, timeout=30).result.output == "sync\n"
        assert c.get(made.id).state is TaskState.SUCCEEDED
        batch = c.submit_many({"kind": "noop", "run_at": LATER} for _ in range(5))
        assert sorted(t.id for t in c.list(kind="noop", page_size=2)) == sorted(batch.ids)
        with c.watch(batch.ids[:1]) as changes:
            c.cancel(batch.ids[0])
            change = next(changes)
        assert (change.id, change.state) == (batch.ids[0], TaskState.CANCELLED)
        with pytest.raises(Conflict):
            c.cancel(batch.ids[0])
        with pytest.raises(NotFound):
            c.get(uuid.uuid4())
        with pytest.raises(TimeoutError):
            c.wait(batch.ids[1], timeout=0.3)
        assert [a.outcome for a in c.attempts(made.id)] == ["succeeded"]
        created = c.create_schedule("nightly", cron="0 2 * * *", timezone="Europe/Berlin",
                                    task={"kind": "noop"})
        assert created.timezone == "Europe/Berlin" and c.pause("nightly").paused
        c.delete_schedule("nightly")
        thread = c._thread
        assert thread.is_alive()
    assert not thread.is_alive()  # closed: its loop and thread are gone
    with pytest.raises(RuntimeError, match="closed"):
        c.stats()


async def test_the_sync_client_inside_a_running_loop(running: Cluster) -> None:
    """Called from code that runs a loop of its own, it uses its own loop, not that one."""
    with Client(running.api) as c:
        made = c.submit("noop")
        assert c.wait(made.id, timeout=30).state is TaskState.SUCCEEDED


@contextlib.asynccontextmanager
async def _background(coro: Coroutine[Any, Any, T]) -> AsyncIterator[asyncio.Task[T]]:
    """``coro`` run beside the test, and cancelled if the test leaves before its end."""
    task = asyncio.ensure_future(coro)
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _subscribers(cluster: Cluster, n: int) -> bool:
    try:
        samples = await scrape(f"{cluster.api}/metrics")
    except aiohttp.ClientError:  # the master is not (yet) up
        return False
    return value(samples, "strata_event_subscribers") == n


async def _told(missed: list[str]) -> bool:
    return bool(missed)


async def _first_of(changes: TaskWatch, task_id: uuid.UUID) -> TaskEventData:
    """The first change of ``task_id`` the watch reads."""
    async for change in changes:
        if change.id == task_id:
            return change
    raise AssertionError("the watch ended")


async def _first_success_outside(changes: TaskWatch, ids: set[uuid.UUID]) -> TaskEventData:
    """The first change into succeeded of a task not among ``ids``."""
    async for change in changes:
        if change.id not in ids and change.state is TaskState.SUCCEEDED:
            return change
    raise AssertionError("the watch ended")


async def _succeeded(c: AsyncClient, n: int) -> bool:
    return (await c.stats()).counts.succeeded >= n
