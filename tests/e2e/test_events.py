"""The event stream against real processes: `strata watch`, `strata submit --wait` on
the stream, and a subscriber that stops reading, which is dropped while the scheduler
goes on."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator

import pytest

from strata.common.client import TERMINAL
from strata.local.cluster import Cluster, wait_until
from strata.local.launcher import command as strata_command
from tests.e2e.scrape import scrape, value

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


@pytest.fixture
async def running(cluster: Cluster) -> Cluster:
    cluster.env["STRATA_EVENTS_BUFFER"] = "50"
    await cluster.start_master()
    await cluster.start_region("east")
    await cluster.start_worker("east", "east-w1", concurrency=8)
    return cluster


async def subscribers(cluster: Cluster) -> float:
    return value(await scrape(f"{cluster.api}/metrics"), "strata_event_subscribers")


@contextlib.asynccontextmanager
async def strata(cluster: Cluster, *args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    proc = await asyncio.create_subprocess_exec(
        *strata_command(*args), "--api", cluster.api,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def test_watch_prints_each_change_of_the_tasks_it_names(running: Cluster) -> None:
    async with running.client() as c:
        task = await c.create(kind="shell", command="true", run_at="2100-01-01T00:00:00Z")
        other = await c.create(kind="shell", command="true", run_at="2100-01-01T00:00:00Z")
        async with strata(running, "watch", task["id"], "--json") as watch:
            await wait_until(lambda: _subscribers_are(running, 1), what="watch subscribed")
            await c.cancel(other["id"])
            await c.cancel(task["id"])
            assert watch.stdout is not None
            line = await asyncio.wait_for(watch.stdout.readline(), 30)
    change = json.loads(line)
    # Only the task it names: the other one's cancel, made first, is not printed.
    assert (change["id"], change["state"], change["attempt"]) == (task["id"], "cancelled", 0)
    assert set(change) == {"id", "state", "attempt", "region", "worker_id", "at"}


async def test_watch_prints_lines_a_person_reads(running: Cluster) -> None:
    async with running.client() as c, strata(running, "watch", "--state", "succeeded") as watch:
        await wait_until(lambda: _subscribers_are(running, 1), what="watch subscribed")
        task = await c.create(kind="shell", command="true")
        assert watch.stdout is not None
        line = (await asyncio.wait_for(watch.stdout.readline(), 30)).decode()
    assert task["id"] in line and "succeeded" in line and "region east" in line
    assert "worker east-w1" in line


async def test_submit_wait_follows_the_stream(running: Cluster) -> None:
    async with strata(running, "submit", "--command", "sleep 1; echo done", "--wait") as proc:
        assert proc.stdout is not None
        task_id = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
        # It waits on a subscription of its own, not by asking again and again.
        await wait_until(lambda: _subscribers_are(running, 1), what="submit subscribed")
        out = (await asyncio.wait_for(proc.stdout.read(), 30)).decode()
        assert await proc.wait() == 0
    assert out.splitlines()[:3] == ["succeeded", "--- stdout ---", "done"]
    async with running.client() as c:
        assert (await c.get(task_id))["state"] == "succeeded"


async def test_a_subscriber_that_stops_reading_is_dropped_and_nothing_waits_for_it(
    running: Cluster,
) -> None:
    # A client that reads its response's head and then nothing: its socket's buffers
    # fill, its writer blocks, its events pile up past the master's bound (50).
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", running.http_port))
    stalled.sendall(b"GET /v1/events HTTP/1.1\r\nHost: master\r\n\r\n")
    stalled.setblocking(False)
    loop = asyncio.get_running_loop()
    head = await asyncio.wait_for(loop.sock_recv(stalled, 1024), 10)
    assert head.startswith(b"HTTP/1.1 200")
    try:
        async with running.client() as c:
            healthy = asyncio.create_task(_count_ends(running, 2000))
            await wait_until(lambda: _subscribers_are(running, 2), what="both subscribed")
            ids = await c.create_batch([{"kind": "shell", "command": "true"}] * 2000)
            # Every task runs to its end while the stalled subscriber reads nothing.
            ended = await asyncio.wait_for(healthy, 60)
            assert ended == 2000
            page = await c.list_tasks(state="succeeded", limit="1000")
            assert len(page["tasks"]) == 1000 and len(ids) == 2000
            # The stalled one was let go: only the healthy one was ever counted after.
            await wait_until(lambda: _subscribers_are(running, 0), what="both gone")
        # What it is sent when read at last ends with the notice that it was dropped.
        received = bytearray(head)
        while chunk := await asyncio.wait_for(loop.sock_recv(stalled, 65536), 30):
            received += chunk
    finally:
        stalled.close()
    text = received.decode(errors="replace")
    assert "event: dropped" in text, text[-500:]
    # The last message, and the connection closed after it (the read above met its end).
    after = text.rsplit("event: dropped", 1)[1]
    assert "50 events behind" in after and "event:" not in after


async def _count_ends(cluster: Cluster, expected: int) -> int:
    """A subscriber that keeps up: how many tasks it saw end."""
    ended = 0
    async with cluster.client() as c, contextlib.aclosing(c.events(state="succeeded")) as stream:
        async for message in stream:
            if message.event == "task" and message.data["state"] in TERMINAL:
                ended += 1
                if ended == expected:
                    return ended
            assert message.event in ("subscribed", "task"), message
    return ended


async def _subscribers_are(cluster: Cluster, n: int) -> bool:
    return await subscribers(cluster) == n
