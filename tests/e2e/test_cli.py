"""The strata command against real processes: submit --wait, list, logs, retry, cancel."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess

import pytest

from strata.local.cluster import Cluster
from strata.local.launcher import command as strata_command

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


async def strata(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, [*strata_command(*args), "--api", cluster.api], capture_output=True,
        text=True, timeout=60)


async def strata_merged(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    """stdout and stderr into one pipe, buffered as when written to a file."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    return await asyncio.to_thread(
        subprocess.run, [*strata_command(*args), "--api", cluster.api], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)


@pytest.fixture
async def running(cluster: Cluster) -> Cluster:
    await cluster.start_master()
    await cluster.start_region("east")
    await cluster.start_worker("east", "east-w1")
    return cluster


async def test_a_failing_task_from_submit_to_retry(running: Cluster) -> None:
    failed = await strata(running, "submit", "--command", "echo out; echo oops >&2; exit 3",
                          "--wait")
    assert failed.returncode == 1, failed.stderr
    task_id, state = failed.stdout.splitlines()[:2]
    assert state == "failed: exited with code 3"
    assert "out" in failed.stdout.splitlines()[2:]
    assert "oops" in failed.stderr.splitlines()

    listed = await strata(running, "list", "--state", "failed")
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["ID", "STATE", "KIND", "REGION", "ATTEMPT", "CREATED"]
    assert [r.split()[:5] for r in rows] == [[task_id, "failed", "shell", "east", "1"]]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", rows[0].split()[5])

    logs = await strata(running, "logs", task_id)
    assert (logs.returncode, logs.stdout, logs.stderr) == (0, "out\n", "oops\n")

    finished = await strata(running, "cancel", task_id)
    assert finished.returncode == 1
    assert finished.stderr == f"strata: task {task_id} is already failed\n"

    retried = await strata(running, "retry", task_id)
    assert retried.returncode == 0, retried.stderr
    new_id = retried.stdout.strip()
    assert new_id != task_id
    async with running.client() as c:
        again = await c.wait(new_id, timeout_s=30)
    assert again["retry_of"] == task_id and again["state"] == "failed"


async def test_stdout_comes_before_stderr_in_one_file(running: Cluster) -> None:
    failed = await strata_merged(running, "submit", "--command",
                                 "echo out; echo oops >&2; exit 3", "--wait")
    assert failed.returncode == 1
    assert failed.stdout.splitlines()[1:] == [
        "failed: exited with code 3", "--- stdout ---", "out", "--- stderr ---", "oops"]


async def test_a_succeeding_task_prints_its_output_and_a_cut_is_marked(running: Cluster) -> None:
    big = "head -c 100000 /dev/zero | tr '\\0' x; echo"
    done = await strata(running, "submit", "--command",
                        f"{big}; echo tail; ({big}; echo end) >&2", "--wait")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[1] == "succeeded"
    assert "[output cut: only its tail was kept]" in lines
    assert lines[-1] == "tail"
    assert "[stderr cut: only its tail was kept]" in done.stderr.splitlines()
    assert done.stderr.splitlines()[-1] == "end"

    logs = await strata(running, "logs", lines[0])
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout.splitlines()[0] == "[output cut: only its tail was kept]"
    assert logs.stdout.splitlines()[-1] == "tail"
    assert logs.stderr.splitlines()[0] == "[stderr cut: only its tail was kept]"
    assert logs.stderr.splitlines()[-1] == "end"


async def test_cancel_a_pending_task_and_refuse_a_finished_one(running: Cluster) -> None:
    later = await strata(running, "submit", "--command", "true", "--at", "2099-01-01T00:00:00Z")
    task_id = later.stdout.strip()
    cancelled = await strata(running, "cancel", task_id)
    assert (cancelled.returncode, cancelled.stdout.strip()) == (0, "cancelled")
    again = await strata(running, "cancel", task_id)
    assert again.returncode == 1
    assert again.stderr.startswith("strata: ") and "already cancelled" in again.stderr
    unknown = await strata(running, "logs", "0b3c7f9e-8a7c-4c56-9d0e-2f6a3c1b9e11")
    assert unknown.returncode == 1 and "no task" in unknown.stderr


async def test_an_unreachable_master_is_a_clear_error(cluster: Cluster) -> None:
    result = await strata(cluster, "list")  # nothing started: nobody answers
    assert result.returncode == 1
    assert result.stderr.startswith("strata: cannot reach "), result.stderr
