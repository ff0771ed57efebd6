"""``strata up topologies/three-regions.toml`` end to end: pinned tasks run in their
region and the rest spread over all three; a worker killed under the supervisor comes
back; Ctrl-C stops workers, then regions, then the master, and leaves nothing behind.

The topology is the shipped file with free ports and fast heartbeats; the database is
the test's own (``strata up`` embedding PostgreSQL is covered by test_up.py)."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import signal
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from strata.common.client import Client
from strata.common.retry import Backoff
from strata.local import launcher, supervisor
from strata.local.cluster import wait_until
from strata.local.postgres import free_port
from strata.topologies.topology import TOPOLOGY_DIR, Topology, load
from tests.e2e.up_process import UpProcess

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

FAST = {"heartbeat_interval": 0.2, "worker_dead_after": 1, "region_dead_after": 2}


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value)  # a TOML basic string


def on_free_ports(shipped: Topology, path: Path) -> Topology:
    """The same topology (regions, workers, concurrency) on free ports, beating fast."""
    lines = [f"name = {_toml(shipped.name)}", "[master]",
             f"http_port = {free_port()}", f"grpc_port = {free_port()}", "[settings]"]
    lines += [f"{k} = {_toml(v)}" for k, v in {**shipped.settings, **FAST}.items()]
    for region in shipped.regions:
        lines += ["[[regions]]", f"name = {_toml(region.name)}", f"grpc_port = {free_port()}",
                  f"workers = {region.workers}", f"concurrency = {region.concurrency}"]
        if region.settings:
            pairs = ", ".join(f"{k} = {_toml(v)}" for k, v in region.settings.items())
            lines.append(f"settings = {{ {pairs} }}")
    path.write_text("\n".join(lines) + "\n")
    copy = load(path)
    assert [(r.name, r.workers, r.concurrency) for r in copy.regions] == \
        [(r.name, r.workers, r.concurrency) for r in shipped.regions]
    return copy


class Run:
    def __init__(self, up: UpProcess, topology: Topology) -> None:
        self.up = up
        self.topology = topology
        self.api = f"http://127.0.0.1:{topology.master.http_port}"

    def client(self) -> Client:
        return Client(self.api, timeout_s=30)

    def workers_of(self, region: str) -> set[str]:
        spec = next(r for r in self.topology.regions if r.name == region)
        return {f"{region}-w{i}" for i in range(1, spec.workers + 1)}

    def worker_process(self, worker_id: str) -> psutil.Process:
        found = [p for p in self.up.children() if _has_id(p, worker_id)]
        assert len(found) == 1, found
        return found[0]


def _has_id(proc: psutil.Process, worker_id: str) -> bool:
    try:
        cmdline = proc.cmdline()
    except psutil.NoSuchProcess:
        return False
    return any(a == "--id" and b == worker_id for a, b in itertools.pairwise(cmdline))


@pytest.fixture
def three_regions(tmp_path: Path, database_url: str) -> Iterator[Run]:
    topology = on_free_ports(load(TOPOLOGY_DIR / "three-regions.toml"), tmp_path / "three.toml")
    env = launcher.child_env({"STRATA_DATABASE_URL": database_url, "STRATA_LOG_LEVEL": "INFO"},
                             without=("DATABASE_URL",))
    with UpProcess(tmp_path / "three.toml", env) as up:
        run = Run(up, topology)
        up.wait_for(f"ready: API at {run.api} (3 regions, 7 workers)")
        yield run


async def test_pinned_tasks_run_in_their_region_and_the_rest_spread_over_all(
    three_regions: Run,
) -> None:
    regions = [r.name for r in three_regions.topology.regions]
    assert regions == ["us-east", "eu-west", "ap-south"]
    async with three_regions.client() as c:
        up = {w["id"] for w in await c.workers() if w["state"] == "up"}
        assert up == set().union(*(three_regions.workers_of(r) for r in regions))
        pinned = {r: await c.create_batch([{"kind": "shell", "command": "echo pinned",
                                            "region": r} for _ in range(10)])
                  for r in regions}
        # More than any two regions hold at once (capacity x 2: 48 + 32), so all three
        # must take a share of the very first claims.
        free = await c.create_batch([{"kind": "noop"} for _ in range(150)])
        for region, ids in pinned.items():
            for task_id in ids:
                task = await c.wait(task_id, timeout_s=30)
                assert task["state"] == "succeeded", task
                assert task["region"] == region, task
                assert task["worker_id"] in three_regions.workers_of(region), task
                assert task["result"]["output"] == "pinned\n"
        finished = [await c.wait(task_id, timeout_s=30) for task_id in free]
    assert all(t["state"] == "succeeded" for t in finished)
    for task in finished:
        assert task["worker_id"] in three_regions.workers_of(task["region"]), task
    per_region = Counter(t["region"] for t in finished)
    assert set(per_region) == set(regions), per_region


async def test_a_killed_worker_is_restarted_by_the_supervisor(three_regions: Run) -> None:
    victim = three_regions.worker_process("us-east-w1")
    async with three_regions.client() as c:
        before = next(w for w in await c.workers() if w["id"] == "us-east-w1")
        mark = len(three_regions.up.lines) - 1
        victim.send_signal(signal.SIGKILL)
        await three_regions.up.until(
            lambda line: "us-east-w1 was killed by SIGKILL; restarting in" in line, after=mark)

        async def back_up() -> bool:
            return any(w["id"] == "us-east-w1" and w["state"] == "up"
                       and w["health_address"] != before["health_address"]
                       for w in await c.workers())

        await wait_until(back_up, timeout_s=30, what="us-east-w1 back up as a new process")
        assert three_regions.worker_process("us-east-w1").pid != victim.pid
        assert not victim.is_running()
        # The new process takes its turn in the region's round-robin.
        ids = await c.create_batch([{"kind": "noop", "region": "us-east"} for _ in range(30)])
        finished = [await c.wait(task_id, timeout_s=30) for task_id in ids]
    assert all(t["state"] == "succeeded" for t in finished)
    assert "us-east-w1" in {t["worker_id"] for t in finished}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_stops_workers_then_regions_then_the_master(
    three_regions: Run, sig: signal.Signals
) -> None:
    children = three_regions.up.children()
    assert len(children) == 1 + 3 + 7, children
    code = three_regions.up.interrupt(sig)
    lines = three_regions.up.lines
    assert code == 0, "".join(lines[-40:])

    def at(action: str) -> list[int]:
        return [i for i, line in enumerate(lines) if f"action={action}" in line]

    workers, regions, master = at("worker_stopped"), at("region_stopped"), at("master_stopped")
    assert (len(workers), len(regions), len(master)) == (7, 3, 1), "".join(lines[-60:])
    assert max(workers) < min(regions) and max(regions) < min(master)
    assert "stopped" in lines[-1] and "restarting" not in "".join(lines)
    alive = [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, alive


async def test_supervisor_restarts_a_crashing_process_with_growing_backoff(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(supervisor, "RESTART_MIN_S", 0.1)
    out = io.StringIO()
    crasher = supervisor.Proc(name="crasher", tier=0, env=launcher.child_env(),
                              argv=[sys.executable, "-c", "print('boom'); raise SystemExit(3)"])
    sup = supervisor.Supervisor([crasher], out=out)

    async def restarted_thrice() -> None:
        await wait_until(lambda: _at_least(crasher, 3), what="three restarts")

    await sup.start_tier(0, restarted_thrice)
    await sup.stop()
    lines = out.getvalue().splitlines()
    assert lines.count("crasher | boom") >= 3, lines
    said = [line for line in lines if line.startswith("strata  | crasher exited with code 3")]
    assert said[:3] == [f"strata  | crasher exited with code 3; restarting in {d}s (restart {n})"
                        for n, d in ((1, "0.1"), (2, "0.2"), (3, "0.4"))], said


async def _at_least(proc: supervisor.Proc, restarts: int) -> bool:
    return proc.restarts >= restarts


async def test_supervisor_backoff_starts_over_after_a_healthy_run(tmp_path: Path) -> None:
    """Runs 1, 2 and 4 crash at once; run 3 stays up past healthy_after_s before it
    exits, so the delay after it is the first one again, not the doubled one."""
    runs = tmp_path / "runs"
    script = (
        "import pathlib, sys, time\n"
        f"runs = pathlib.Path({str(runs)!r})\n"
        "n = len(runs.read_text()) + 1 if runs.exists() else 1\n"
        "runs.write_text('x' * n)\n"
        "print(f'run {n}')\n"
        "time.sleep(1.5 if n == 3 else 0)\n"
        "sys.exit(n)\n"
    )
    out = io.StringIO()
    flaky = supervisor.Proc(name="flaky", tier=0, env=launcher.child_env(),
                            argv=[sys.executable, "-c", script])
    backoff = Backoff(initial_s=0.1, max_s=10.0, jitter_s=0.0, healthy_after_s=1.0)
    sup = supervisor.Supervisor([flaky], out=out, backoff=backoff)

    async def restarted_four_times() -> None:
        await wait_until(lambda: _at_least(flaky, 4), what="four restarts")

    await sup.start_tier(0, restarted_four_times)
    await sup.stop()
    # Stopped for good: no restart loop left to start it again, no process left running.
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "flaky"]
    assert flaky.process is not None and flaky.process.returncode is not None
    said = [line for line in out.getvalue().splitlines() if "restarting in" in line]
    assert said[:4] == [f"strata | flaky exited with code {n}; restarting in {d}s (restart {n})"
                        for n, d in ((1, "0.1"), (2, "0.2"), (3, "0.1"), (4, "0.2"))], said
