"""``strata schedule ...`` against real processes: create (every second), list, fires,
pause, trigger, resume, delete."""

from __future__ import annotations

import asyncio
import json
import subprocess
from datetime import UTC, datetime

import pytest

from strata.local.cluster import Cluster, wait_until
from strata.local.launcher import command as strata_command

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


async def strata(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, [*strata_command(*args), "--api", cluster.api], capture_output=True,
        text=True, timeout=60)


async def ok(cluster: Cluster, *args: str) -> list[str]:
    result = await strata(cluster, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text)


async def fires(cluster: Cluster, name: str) -> list[list[str]]:
    """The rows of ``strata schedule fires``: fire time, outcome, task, state, reason."""
    header, *rows = await ok(cluster, "schedule", "fires", name, "--limit", "1000")
    assert header.split() == ["FIRE", "TIME", "OUTCOME", "TASK", "TASK", "STATE", "REASON"]
    return [row.split(maxsplit=4) for row in rows]


@pytest.fixture
async def running(cluster: Cluster) -> Cluster:
    await cluster.start_master()
    await cluster.start_region("east")
    await cluster.start_worker("east", "east-w1")
    return cluster


async def test_a_schedule_from_create_to_delete(running: Cluster) -> None:
    (made,) = await ok(running, "schedule", "create", "tick", "--every", "1",
                       "--command", "echo tick", "--region", "east", "--overlap", "skip")
    assert made.startswith("tick: next fire "), made
    again = await strata(running, "schedule", "create", "tick", "--every", "5",
                         "--command", "true")
    assert again.returncode == 1
    assert again.stderr == "strata: a schedule named 'tick' exists already\n"

    header, *rows = await ok(running, "schedule", "list")
    assert header.split() == ["NAME", "WHEN", "NEXT", "FIRE", "PAUSED", "OVERLAP"]
    assert [r.split()[:3] + r.split()[4:] for r in rows] == [
        ["tick", "every", "1s", "no", "skip"]]

    async def ran(at_least: int, after: datetime | None = None) -> list[list[str]] | None:
        done = [f for f in await fires(running, "tick")
                if f[1] == "fired" and f[3] == "succeeded"
                and (after is None or _at(f[0]) >= after)]
        return done if len(done) >= at_least else None

    first = await wait_until(lambda: ran(2), timeout_s=30, what="two fires, each run")
    async with running.client() as c:
        task = await c.get(first[0][2])
    assert (task["kind"], task["region"], task["result"]["output"]) == ("shell", "east", "tick\n")

    assert await ok(running, "schedule", "pause", "tick") == ["tick: paused"]
    # Taken once the pause is in: a pass that began before it is stamped before this.
    paused_at = datetime.now(UTC)
    shown = json.loads("\n".join(await ok(running, "schedule", "show", "tick")))
    assert (shown["paused"], shown["next_fire_at"]) == (True, None)
    assert (await ok(running, "schedule", "list"))[1].split()[3:] == ["-", "yes", "skip"]

    # Paused, it fires when asked only; nothing else is recorded meanwhile.
    (triggered,) = await ok(running, "schedule", "trigger", "tick")
    async with running.client() as c:
        assert (await c.follow(triggered))["state"] == "succeeded"
    async with running.client() as c:
        recorded = (await c.schedule_fires("tick", limit=1000))["fires"]
    since = [f for f in recorded if _at(f["recorded_at"]) > paused_at]
    assert [(f["task_id"], f["reason"]) for f in since] == [(triggered,
                                                             "triggered by a client")]

    (resumed,) = await ok(running, "schedule", "resume", "tick")
    assert resumed.startswith("tick: next fire "), resumed
    resumed_at = _at(json.loads("\n".join(await ok(running, "schedule", "show", "tick")))
                     ["updated_at"])
    await wait_until(lambda: ran(1, after=resumed_at), timeout_s=30,
                     what="a fire after resuming, run")

    assert await ok(running, "schedule", "delete", "tick") == ["deleted"]
    assert await ok(running, "schedule", "list") == ["NAME  WHEN  NEXT FIRE  PAUSED  OVERLAP"]
    gone = await strata(running, "schedule", "fires", "tick")
    assert (gone.returncode, gone.stderr) == (1, "strata: no schedule tick\n")


async def test_a_refused_schedule_is_the_apis_message(running: Cluster) -> None:
    bad = await strata(running, "schedule", "create", "n", "--cron", "61 * * * *",
                       "--command", "true")
    assert bad.returncode == 1
    assert bad.stderr.startswith("strata: cron: not a cron expression"), bad.stderr
    pinned = await strata(running, "schedule", "create", "n", "--every", "5",
                          "--task-json", '{"kind": "noop", "region": "nowhere"}')
    assert pinned.returncode == 1
    assert pinned.stderr.startswith("strata: region: no region named 'nowhere'"), pinned.stderr
