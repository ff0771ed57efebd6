"""/metrics on every tier of a real cluster, in Prometheus's text format, with the
contract's names; and /healthz on a region."""

from __future__ import annotations

import aiohttp
import pytest

from strata.local.cluster import Cluster, wait_until
from tests.e2e.scrape import Samples, scrape, total, value

pytestmark = pytest.mark.e2e

HOPS = ("due_to_claimed", "claimed_to_started", "started_to_finished", "finished_to_recorded")
TASKS = 20


async def test_every_tier_serves_its_metrics(cluster: Cluster) -> None:
    await cluster.start_master()
    await cluster.start_region("east")
    await cluster.start_worker("east", "east-w1", concurrency=4)
    async with cluster.client() as c:
        ids = await c.create_batch([{"kind": "shell", "command": "true"}] * TASKS)
        for task_id in ids:
            assert (await c.wait(task_id, timeout_s=30))["state"] == "succeeded"
        (worker,) = await c.workers()

    master_url = f"{cluster.api}/metrics"

    async def master_applied_all() -> Samples | None:
        samples = await scrape(master_url)
        done = value(samples, "strata_tasks_finished_total", state="succeeded") == TASKS
        return samples if done else None

    m = await wait_until(master_applied_all, what="the master counting every task")
    assert value(m, "strata_tasks_created_total") == TASKS
    assert value(m, "strata_tasks", state="succeeded") == TASKS
    assert value(m, "strata_tasks", state="pending") == 0
    for hop in HOPS:
        assert value(m, "strata_task_hop_seconds_count", hop=hop, region="east") == TASKS, hop
        # Every task took less than the histogram's top bucket in every hop.
        assert value(m, "strata_task_hop_seconds_bucket", hop=hop, region="east",
                     le="600.0") == TASKS, hop
    assert value(m, "strata_region_up", region="east") == 1
    assert value(m, "strata_region_capacity", region="east") == 4
    assert ("strata_region_queued", frozenset({("region", "east")})) in m
    assert ("strata_region_running", frozenset({("region", "east")})) in m
    assert value(m, "strata_breaker_open", link="master->east") == 0
    assert value(m, "strata_stale_results_total") == 0
    assert total(m, "strata_attempts_reclaimed_total") == 0
    assert value(m, "strata_task_rescue_seconds_count") == 0

    region = f"http://127.0.0.1:{cluster.region_http_ports['east']}"
    r = await scrape(f"{region}/metrics")
    assert value(r, "strata_region_capacity", region="east") == 4
    assert value(r, "strata_region_workers", region="east") == 1
    assert value(r, "strata_region_running", region="east") == 0
    assert value(r, "strata_breaker_open", link="east->master") == 0
    async with aiohttp.ClientSession() as session, session.get(f"{region}/healthz") as resp:
        health = await resp.json()
    assert health["region"] == "east" and health["master"]["lease_valid"] is True
    assert health["master"]["address"] == f"127.0.0.1:{cluster.grpc_port}"
    assert health["master"]["breaker"]["state"] == "closed"
    assert health["master"]["last_heartbeat_s_ago"] is not None
    assert [w["id"] for w in health["workers"]] == ["east-w1"]

    w = await scrape(f"http://{worker['health_address']}/metrics")
    assert value(w, "strata_worker_capacity") == 4
    assert value(w, "strata_worker_running") == 0
    assert value(w, "strata_worker_completed_total") == TASKS
    assert ("strata_breaker_open", frozenset({("link", "east-w1->region")})) in w
    assert value(w, "strata_breaker_open", link="east-w1->region") == 0
