"""``[[schedules]]`` of a topology applied by ``strata up``: made once the master is
ready, and changed to match the file when it is run again after an edit."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from strata.common.client import Client
from strata.local import launcher
from strata.local.cluster import wait_until
from strata.local.postgres import free_port
from tests.e2e.up_process import UpProcess

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

SCHEDULES = """
[[schedules]]
name = "tick"
every_s = 1
task = {{ kind = "shell", command = "echo {word}", region = "r1" }}

[[schedules]]
name = "nightly"
cron = "0 3 * * *"
timezone = "Europe/Berlin"
{nightly}
task = {{ kind = "noop" }}
"""


def _topology(path: Path, http: int, grpc: int, region: int, *, word: str, nightly: str
              ) -> None:
    path.write_text(f"""
name = "sched"
[master]
http_port = {http}
grpc_port = {grpc}
[settings]
heartbeat_interval = 0.2
[[regions]]
name = "r1"
grpc_port = {region}
workers = 1
concurrency = 2
""" + SCHEDULES.format(word=word, nightly=nightly))


@pytest.fixture
def data_home() -> Iterator[Path]:
    """The embedded server's data, outside pytest's temp tree (see tests/conftest.py)."""
    home = Path(tempfile.mkdtemp(prefix="strata-test-up-"))
    home.chmod(0o755)
    yield home
    shutil.rmtree(home, ignore_errors=True)


async def test_up_applies_the_topologys_schedules_and_an_edit_on_the_next_run(
    tmp_path: Path, data_home: Path
) -> None:
    topology = tmp_path / "sched.toml"
    http, grpc, region = free_port(), free_port(), free_port()
    _topology(topology, http, grpc, region, word="first", nightly="paused = true")
    env = launcher.child_env(
        {"STRATA_DATA_DIR": str(data_home), "STRATA_PG_PORT": str(free_port())},
        without=("STRATA_DATABASE_URL", "DATABASE_URL"))
    api = f"http://127.0.0.1:{http}"

    async def ran(c: Client, word: str) -> dict[str, Any] | None:
        for fire in (await c.schedule_fires("tick", limit=1000))["fires"]:
            if fire["outcome"] == "fired" and fire["task_state"] == "succeeded":
                task = await c.get(fire["task_id"])
                if task["result"]["output"] == f"{word}\n":
                    return task
        return None

    with UpProcess(topology, env) as first:
        ready = await first.until(f"ready: API at {api}")
        made = [line for line in first.lines[:ready] if "schedule " in line]
        assert any("schedule tick: created" in line for line in made), made
        assert any("schedule nightly: created" in line for line in made), made
        async with Client(api) as c:
            task = await wait_until(lambda: ran(c, "first"), timeout_s=30,
                                    what="a fire of tick, run")
            assert task["region"] == "r1"
            nightly = await c.schedule("nightly")
            assert (nightly["paused"], nightly["timezone"]) == (True, "Europe/Berlin")
        assert first.interrupt() == 0, "".join(first.lines[-40:])

    # Edited: tick runs another command, nightly is no longer paused and skips overlaps.
    _topology(topology, http, grpc, region, word="second",
              nightly='paused = false\noverlap = "skip"')
    with UpProcess(topology, env) as second:
        ready = await second.until(f"ready: API at {api}")
        changed = [line for line in second.lines[:ready] if "schedule " in line]
        assert any("schedule tick: updated to the topology's" in line for line in changed), \
            changed
        async with Client(api) as c:
            tick = await c.schedule("tick")
            assert tick["task"]["command"] == "echo second"
            nightly = await c.schedule("nightly")
            assert (nightly["paused"], nightly["overlap"]) == (False, "skip")
            assert nightly["next_fire_at"] is not None
            assert [s["name"] for s in await c.schedules()] == ["nightly", "tick"]
            await wait_until(lambda: ran(c, "second"), timeout_s=30,
                             what="a fire of the edited tick, run")
        assert second.interrupt() == 0, "".join(second.lines[-40:])


def test_a_topology_with_a_bad_schedule_is_refused_before_anything_starts(
    tmp_path: Path, data_home: Path
) -> None:
    topology = tmp_path / "bad.toml"
    topology.write_text(f"""
[[regions]]
name = "r1"
grpc_port = {free_port()}
[[schedules]]
name = "oops"
cron = "every day"
task = {{ kind = "noop" }}
""")
    out = subprocess.run(launcher.up_argv(topology), stdin=subprocess.DEVNULL,
                         env=launcher.child_env({"STRATA_DATA_DIR": str(data_home)}),
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2, out
    assert f"strata: {topology}: schedules[0] (oops): cron: not a cron expression" \
        in out.stderr, out.stderr
    assert not (data_home / "pgdata").exists()
