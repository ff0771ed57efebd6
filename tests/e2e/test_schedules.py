"""A schedule on two real masters: each fire once, each fire's task run; and a master
SIGKILLed while they race loses no fire."""

from __future__ import annotations

import itertools
import signal
from datetime import datetime, timedelta
from typing import Any

import pytest

from strata.common.client import Client
from strata.local.cluster import Cluster, wait_until
from tests.e2e.scrape import scrape, total

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text)


async def _fires(c: Client, name: str) -> list[dict[str, Any]]:
    page = await c.request("GET", f"/v1/schedules/{name}/fires", params={"limit": "1000"})
    return sorted(page["fires"], key=lambda f: f["fire_time"])


async def test_every_second_on_two_masters_then_one_is_killed(cluster: Cluster) -> None:
    await cluster.start_master()
    await cluster.start_master("master2")
    await cluster.start_region("east")
    await cluster.start_worker("east", "east-w1", concurrency=8)
    async with cluster.client() as c:
        made = await c.request("POST", "/v1/schedules", json={
            "name": "tick", "every_s": 1, "task": {"kind": "shell", "command": "true"}})
        begun = _at(made["next_fire_at"])

        async def fired_through(seconds: float) -> list[dict[str, Any]] | None:
            fires = await _fires(c, "tick")
            # The fires of the first ``seconds`` seconds: [begun, begun + seconds).
            upto = [f for f in fires if _at(f["fire_time"]) < begun + timedelta(seconds=seconds)]
            done = all(f["task_state"] == "succeeded" for f in upto)
            return upto if done and fires and _at(fires[-1]["fire_time"]) >= begun + timedelta(
                seconds=seconds) else None

        first = await wait_until(lambda: fired_through(10), timeout_s=30,
                                 what="ten seconds of fires, each run")
        # Both masters race for each fire; one of them is killed now.
        cluster.kill("master2", signal.SIGKILL)
        after_kill = _at(first[-1]["fire_time"])
        rest = await wait_until(lambda: fired_through(16), timeout_s=30,
                                what="fires after the kill, each run")
        tasks = [await c.get(f["task_id"]) for f in rest]
        metrics = await scrape(f"{cluster.api}/metrics")

    times = [_at(f["fire_time"]) for f in rest]
    # Ten seconds, ten fires (10 ± 1), each once, each fired; and every one after the
    # kill too: no gap, no duplicate, nothing missed.
    assert 9 <= len(first) <= 11, first
    assert len(set(times)) == len(times) == len(rest)
    assert all(b - a == timedelta(seconds=1) for a, b in itertools.pairwise(times))
    assert {f["outcome"] for f in rest} == {"fired"}
    assert all(t["state"] == "succeeded" for t in tasks)
    # Each task ran at its fire time (not a pass later), also after the kill; the run of
    # no fire waited more than two seconds.
    starts = [_at(t["started_at"]) for t in tasks]
    lags = [(s - t).total_seconds() for s, t in zip(starts, times, strict=True)]
    assert max(lags) < 2.0, lags
    assert any(t > after_kill for t in times)
    assert total(metrics, "strata_schedule_lag_seconds_count", schedule="tick") >= 1
