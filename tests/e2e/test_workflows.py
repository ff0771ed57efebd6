"""Workflows on real processes: DAGs submitted in one call and run in dependency order,
parents' outputs handed to children, failures that cancel what depends on them."""

from __future__ import annotations

import json
import random
from datetime import datetime
from typing import Any

import pytest

from strata.common.client import Client
from strata.common.errors import InvalidInput
from strata.local.cluster import Cluster, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

DAG_SIZE = 10_000


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _dag(shape: str, n: int) -> list[dict[str, Any]]:
    rng = random.Random(11)
    items = []
    for i in range(n):
        if shape == "chain":
            parents = [f"t{i - 1}"] if i else []
        elif shape == "fan":  # one root, n - 2 children of it, one child of them all
            parents = [] if i == 0 else ["t0"] if i < n - 1 else [
                f"t{j}" for j in range(1, n - 1)]
        else:  # random: up to three parents among the tasks before it
            parents = [f"t{j}" for j in rng.sample(range(i), min(i, rng.randint(0, 3)))]
        item: dict[str, Any] = {"kind": "noop", "key": f"t{i}"}
        if parents:
            item["depends_on"] = parents
        items.append(item)
    return items


async def _all_tasks(c: Client) -> list[dict[str, Any]]:
    tasks: list[dict[str, Any]] = []
    cursor = ""
    while True:
        page = await c.list_tasks(limit="1000", cursor=cursor)
        tasks += page["tasks"]
        if page["next_cursor"] is None:
            return tasks
        cursor = page["next_cursor"]


async def _succeeded(c: Client, n: int) -> bool:
    counts = (await c.stats())["counts"]
    assert counts["failed"] == counts["cancelled"] == 0, counts
    return bool(counts["succeeded"] == n)


@pytest.mark.parametrize("shape", ["chain", "fan", "random"])
async def test_a_dag_of_ten_thousand_in_one_call_runs_in_dependency_order(
    cluster: Cluster, shape: str
) -> None:
    await cluster.start_master()
    await cluster.start_region("east")
    await cluster.start_worker("east", "east-w1", concurrency=64)
    await cluster.start_worker("east", "east-w2", concurrency=64)
    async with cluster.client() as c:
        ids = await c.create_batch(_dag(shape, DAG_SIZE))
        assert len(ids) == DAG_SIZE
        root = await c.get(ids[0])
        if shape == "chain":
            assert root["dependents"] == [ids[1]]
        elif shape == "fan":  # the first thousand of them, by id
            assert root["dependents"] == sorted(ids[1:-1])[:1000]
        if shape != "random":
            assert (await c.get(ids[1]))["depends_on"] == [ids[0]]
        await wait_until(lambda: _succeeded(c, DAG_SIZE), timeout_s=240,
                         what=f"the {shape} DAG done")
        tasks = {t["id"]: t for t in await _all_tasks(c)}
    assert len(tasks) == DAG_SIZE
    # Every child started after its parents ended (worker clocks: one machine).
    for task in tasks.values():
        for parent in task["depends_on"]:
            assert _at(tasks[parent]["finished_at"]) <= _at(task["started_at"]), (parent, task)


async def test_children_read_their_parents_outputs(cluster: Cluster) -> None:
    await cluster.start_master()
    await cluster.start_region("east")
    await cluster.start_worker("east", "east-w1")
    async with cluster.client() as c:
        ids = await c.create_batch([
            {"kind": "shell", "command": "printf left", "key": "a"},
            {"kind": "shell", "command": "printf right", "key": "b"},
            {"kind": "shell", "command": 'printf %s "$STRATA_PARENT_OUTPUTS"', "key": "c",
             "depends_on": ["a", "b"]},
        ])
        child = await c.wait(ids[2], timeout_s=30)
    assert child["state"] == "succeeded"
    assert json.loads(child["result"]["output"]) == {ids[0]: "left", ids[1]: "right"}
    assert child["depends_on"] == ids[:2]


async def test_a_failure_cancels_what_depends_on_it_unless_it_runs_anyway(
    cluster: Cluster,
) -> None:
    await cluster.start_master()
    await cluster.start_region("east")
    await cluster.start_worker("east", "east-w1")
    async with cluster.client() as c:
        ids = await c.create_batch([
            {"kind": "shell", "command": "exit 3", "key": "build"},
            {"kind": "noop", "key": "test", "depends_on": ["build"]},
            {"kind": "noop", "key": "deploy", "depends_on": ["test"]},
            {"kind": "shell", "command": "echo cleaning", "key": "cleanup",
             "depends_on": ["build"], "on_upstream_failure": "run"},
        ])
        build, test, deploy, cleanup = [await c.wait(i, timeout_s=30) for i in ids]
    assert build["state"] == "failed"
    assert (test["state"], deploy["state"]) == ("cancelled", "cancelled")
    assert test["result"]["error"] == deploy["result"]["error"] == f"upstream {ids[0]} failed"
    assert cleanup["state"] == "succeeded"


async def test_a_task_can_wait_for_one_made_before_it(cluster: Cluster) -> None:
    await cluster.start_master()
    await cluster.start_region("east")
    await cluster.start_worker("east", "east-w1")
    async with cluster.client() as c:
        parent = await c.create(kind="sleep", seconds=0.5)
        child = await c.create(kind="noop", depends_on=[parent["id"]])
        assert child["state"] == "waiting"
        shown = await c.get(child["id"])
        assert shown["waiting_for"] == "its parent to succeed"
        assert (await c.get(parent["id"]))["dependents"] == [child["id"]]
        done = await c.wait(child["id"], timeout_s=30)
        assert done["state"] == "succeeded"
        # Bad graphs are refused whole, with the reason.
        for body, reason in (
            ({"tasks": [{"kind": "noop", "key": "a", "depends_on": ["b"]},
                        {"kind": "noop", "key": "b", "depends_on": ["a"]}]}, "cycle"),
            ({"tasks": [{"kind": "noop", "key": "a", "depends_on": ["a"]}]}, "itself"),
            ({"tasks": [{"kind": "noop", "depends_on": [
                "6f1c1f55-54a8-4b8e-a1c3-2c1f1b1d9a11"]}]}, "no task"),
        ):
            with pytest.raises(InvalidInput, match=reason):  # a 400
                await c.request("POST", "/v1/tasks/batch", json=body)
        assert (await c.stats())["counts"]["succeeded"] == 2
