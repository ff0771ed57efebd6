"""Several masters on one database, on real processes: a region that dials two masters
outlives the one it talks to, keeping its tasks."""

from __future__ import annotations

import asyncio
import shlex
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from strata.common.client import Client
from strata.local.cluster import Cluster, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

TASKS = 40


async def _region_health(http: aiohttp.ClientSession, cluster: Cluster, region: str
                         ) -> dict[str, Any]:
    async with http.get(f"http://127.0.0.1:{cluster.region_http_ports[region]}/healthz") as r:
        health: dict[str, Any] = await r.json()
        return health


async def _holds(http: aiohttp.ClientSession, cluster: Cluster, region: str, n: int) -> bool:
    health = await _region_health(http, cluster, region)
    return bool(health["running"] + health["queued"] == n)


async def test_a_region_moves_to_another_master_when_its_own_is_killed(
    cluster: Cluster, tmp_path: Path
) -> None:
    await cluster.start_master()
    await cluster.start_master("master-b")
    # Room for every task at once: all are delegated before the kill, so the master
    # that dies has nothing on its way to the region.
    await cluster.start_region("east", masters=["master", "master-b"],
                               STRATA_QUEUE_FACTOR="16")
    await cluster.start_worker("east", "east-w1", concurrency=4)
    record = tmp_path / "ran.txt"
    ports = {cluster.ports(m)[1]: m for m in ("master", "master-b")}
    async with aiohttp.ClientSession() as http:
        health = await _region_health(http, cluster, "east")
        own = ports[int(health["master"]["address"].rpartition(":")[2])]
        other = "master-b" if own == "master" else "master"
        async with cluster.client(other) as c:
            ids = await c.create_batch([
                {"kind": "shell", "command": f"sleep 0.3; echo {i} >> {shlex.quote(str(record))}"}
                for i in range(TASKS)])
            await wait_until(lambda: _holds(http, cluster, "east", TASKS), timeout_s=20,
                             what="east holding every task")

            cluster.kill(own, signal.SIGKILL)
            killed_at = time.monotonic()
            # The region's heartbeats go on, to the other master: the silence the
            # masters see stays far below the dead-after (2 s here).
            silences: list[float] = []
            while True:
                health = await _region_health(http, cluster, "east")
                silences.append(health["master"]["last_heartbeat_s_ago"] or 0.0)
                if ports[int(health["master"]["address"].rpartition(":")[2])] == other \
                        and time.monotonic() - killed_at > 1.0:
                    break
                assert time.monotonic() - killed_at < 10, "east stayed with the dead master"
                await asyncio.sleep(0.02)

            tasks = [await c.wait(i, timeout_s=30) for i in ids]
            assert Counter(t["state"] for t in tasks) == {"succeeded": TASKS}
            assert [t["attempt"] for t in tasks] == [1] * TASKS, "a task was dispatched again"
            assert (await _region(c, "east"))["state"] == "up"
    runs = Counter(record.read_text().split())
    assert runs == {str(i): 1 for i in range(TASKS)}, "a task ran twice or never"
    survivor = cluster.log(other)
    assert "action=region_down" not in survivor
    assert "action=tasks_reclaimed" not in survivor
    assert "action=tasks_reconciled" not in survivor
    assert "action=master_switched" in cluster.log("east")
    # Within one heartbeat interval (0.2 s) and the retries of the beat that failed.
    assert max(silences) < 1.0, f"no heartbeat for {max(silences):.2f}s"


async def _region(c: Client, name: str) -> dict[str, Any]:
    return next(r for r in await c.regions() if r["name"] == name)


async def test_two_masters_each_serve_their_own_regions_and_run_each_task_once(
    cluster: Cluster, tmp_path: Path
) -> None:
    await cluster.start_master()
    await cluster.start_master("master-b")
    await cluster.start_region("east", masters=["master", "master-b"])
    await cluster.start_region("west", masters=["master-b", "master"])
    for region in ("east", "west"):
        await cluster.start_worker(region, f"{region}-w1", concurrency=8)
    record = tmp_path / "ran.txt"
    async with cluster.client() as a, cluster.client("master-b") as b:
        async def attached() -> dict[str, str | None]:
            return {r["name"]: r["master"] for r in await b.regions()}

        await wait_until(lambda: _both_attached(attached), what="each region on its master")
        masters = await attached()
        assert masters["east"] != masters["west"]
        # Half the tasks through each master's API.
        ids = []
        for c, offset in ((a, 0), (b, 100)):
            ids += await c.create_batch([
                {"kind": "shell", "command": f"echo {offset + i} >> {shlex.quote(str(record))}"}
                for i in range(100)])
        tasks = [await a.wait(i, timeout_s=30) for i in ids]
    assert Counter(t["state"] for t in tasks) == {"succeeded": 200}
    assert {t["region"] for t in tasks} == {"east", "west"}
    assert Counter(record.read_text().split()) == {str(i): 1 for i in range(200)}
    for master in ("master", "master-b"):
        log = cluster.log(master)
        # One scanner per region: no delegation ever finds the region's room taken by
        # another master's.
        assert "action=delegate_rejected" not in log
        assert "action=tasks_reconciled" not in log


async def _both_attached(attached: Any) -> bool:
    masters = await attached()
    return bool(masters.get("east") and masters.get("west")
                and masters["east"] != masters["west"])
