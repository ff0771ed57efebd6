"""Python-kind tasks on real workers: Strata's own packages live under ``strata``, so a
user's package may be called ``common`` or ``worker`` and still run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from strata.local.cluster import Cluster

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

USER_HANDLERS = '''

def hello(name):
    return {"hello": name, "from": __file__}
'''


async def test_a_handler_in_a_user_package_named_common_runs(
    cluster: Cluster, tmp_path: Path
) -> None:
    user_path = tmp_path / "user_code"
    for package in ("common", "worker"):
        (user_path / package).mkdir(parents=True)
        (user_path / package / "__init__.py").write_text("")
        (user_path / package / "jobs.py").write_text(USER_HANDLERS)
    await cluster.start_master()
    await cluster.start_region("east")
    await cluster.start_worker(
        "east", "east-w1", PYTHONPATH=str(user_path),
        STRATA_PYTHON_MODULES=json.dumps(["common", "worker"]),
    )
    async with cluster.client() as c:
        for package in ("common", "worker"):
            created = await c.create(kind="python", handler=f"{package}.jobs:hello",
                                     args=["strata"])
            task = await c.wait(created["id"], timeout_s=30)
            assert task["state"] == "succeeded", task
            output = json.loads(task["result"]["output"])
            assert output["hello"] == "strata"
            assert output["from"] == str(user_path / package / "jobs.py")


async def test_the_shipped_example_handler_runs(cluster: Cluster) -> None:
    await cluster.start_master()
    await cluster.start_region("east")
    await cluster.start_worker("east", "east-w1",
                               STRATA_PYTHON_MODULES=json.dumps(["strata.examples"]))
    async with cluster.client() as c:
        created = await c.create(kind="python", handler="strata.examples.report:build",
                                 args={"day": "2030-01-01", "sections": 2})
        task = await c.wait(created["id"], timeout_s=30)
        assert task["state"] == "succeeded", task
        assert json.loads(task["result"]["output"]) == {
            "day": "2030-01-01", "weekday": "Tuesday", "sections": ["section 1", "section 2"]}
