"""``strata worker --run-as USER`` on real processes: a worker running as root runs its
shell tasks as USER, and a worker that cannot switch users refuses to start."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from strata.common.client import Client
from strata.local import launcher
from strata.local.cluster import FAST_TIMINGS, Cluster, wait_until
from tests.task_users import require_python_for, require_root, unprivileged_user

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

REGION = "east"
START_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def other_user() -> Iterator[pwd.struct_passwd]:
    with unprivileged_user() as entry:
        yield entry


@pytest.fixture
def root_only_dir() -> Iterator[Path]:
    """A directory only root may enter, in one everyone may (``tmp_path`` is root's)."""
    path = Path(tempfile.mkdtemp(prefix="strata-root-only-"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o700 and path.stat().st_uid == 0
    yield path
    shutil.rmtree(path)


def _as(user: pwd.struct_passwd) -> dict[str, Any]:
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": [], "cwd": "/"}


def _spawn_worker(cluster: Cluster, worker_id: str, *flags: str,
                  user: pwd.struct_passwd | None = None, env: dict[str, str] | None = None
                  ) -> None:
    """A worker of ``REGION`` given ``flags``, as ``user`` (from /) or as we are; its
    output in ``<workdir>/<worker_id>.log``, stopped with the cluster."""
    argv = [*launcher.worker_argv(region=cluster.worker_target(REGION), worker_id=worker_id,
                                  concurrency=4), *flags]
    with (cluster.workdir / f"{worker_id}.log").open("ab") as log:
        cluster.procs[worker_id] = subprocess.Popen(
            argv, env=launcher.child_env(FAST_TIMINGS, cluster.env, env or {}),
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            **(_as(user) if user is not None else {"cwd": cluster.workdir}),
        )


async def _worker_up(c: Client, worker_id: str) -> bool:
    return any(w["id"] == worker_id and w["state"] == "up" for w in await c.workers())


async def _run(c: Client, command: str, **fields: Any) -> dict[str, Any]:
    created = await c.create(kind="shell", command=command, region=REGION, **fields)
    return await c.wait(created["id"], timeout_s=30)


def _running(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie waiting for its parent does not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            return stat_file.read().rpartition(b")")[2].split()[0] != b"Z"
    except FileNotFoundError:
        return False


async def test_a_root_worker_runs_shell_tasks_as_the_run_as_user(
    cluster: Cluster, other_user: pwd.struct_passwd, root_only_dir: Path
) -> None:
    name = other_user.pw_name
    await cluster.start_master()
    await cluster.start_region(REGION)
    _spawn_worker(cluster, "as-user", "--run-as", name)
    async with cluster.client() as c:
        await wait_until(lambda: _worker_up(c, "as-user"), timeout_s=START_TIMEOUT_S,
                         what="worker as-user up")

        task = await _run(c, 'id -u; id -un; printf "%s %s\\n" "$HOME" "$LOGNAME"')
        assert task["state"] == "succeeded", task["result"]
        assert task["result"]["output"] == (
            f"{other_user.pw_uid}\n{name}\n{other_user.pw_dir} {name}\n")

        target = root_only_dir / "written"
        task = await _run(c, f"touch {target}")
        assert (task["state"], task["result"]["exit_code"]) == ("failed", 1), task
        assert "Permission denied" in task["result"]["stderr"]
        assert not target.exists()

        task = await _run(c, "sleep 60 & echo $!; sleep 60", timeout_s=1)
        assert task["state"] == "failed", task
        assert task["result"]["error"] == "timed out after 1.0s"
        assert task["result"]["killed_processes"] == 3  # the shell and both sleeps
        child = int(task["result"]["output"])
        await wait_until(lambda: _gone(child), timeout_s=5, what=f"process {child} gone")

    log = cluster.log("as-user")
    assert f"action=run_as shell tasks run as {name} (uid {other_user.pw_uid}" in log
    assert "action=tasks_run_as_root" not in log


async def _gone(pid: int) -> bool:
    return not _running(pid)


async def test_a_root_worker_without_run_as_warns_that_shell_tasks_run_as_root(
    cluster: Cluster,
) -> None:
    require_root()
    await cluster.start_master()
    await cluster.start_region(REGION)
    await cluster.start_worker(REGION, "as-root")
    async with cluster.client() as c:
        task = await _run(c, "id -u")
        assert (task["state"], task["result"]["output"]) == ("succeeded", "0\n"), task
    assert "WARNING strata.worker.runner action=tasks_run_as_root" in cluster.log("as-root")


async def test_a_worker_run_as_its_own_user_runs_as_it_changing_nothing(
    cluster: Cluster, other_user: pwd.struct_passwd
) -> None:
    require_python_for(other_user)
    await cluster.start_master()
    await cluster.start_region(REGION)
    _spawn_worker(cluster, "self", user=other_user,
                  env={"STRATA_RUN_AS": other_user.pw_name})
    async with cluster.client() as c:
        await wait_until(lambda: _worker_up(c, "self"), timeout_s=START_TIMEOUT_S,
                         what="worker self up")
        task = await _run(c, "id -u; pwd")
        assert task["state"] == "succeeded", task["result"]
        # The worker's own directory, as without --run-as.
        assert task["result"]["output"] == f"{other_user.pw_uid}\n/\n"
    assert "action=run_as_self" in cluster.log("self")


def _start_refused(argv: Sequence[str], **popen: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*argv, "--region", "127.0.0.1:9", "--http-port", "0"],
        env=launcher.child_env(FAST_TIMINGS), stdin=subprocess.DEVNULL, capture_output=True,
        text=True, timeout=START_TIMEOUT_S, **popen,
    )


def test_a_worker_not_running_as_root_refuses_to_run_tasks_as_another_user() -> None:
    if os.geteuid() == 0:  # the worker runs as an unprivileged user, started by us
        with unprivileged_user() as user:
            require_python_for(user)
            ran = _start_refused(launcher.command("worker", "--run-as", "root"), **_as(user))
    else:  # the worker runs as we do
        user = pwd.getpwuid(os.geteuid())
        ran = _start_refused(launcher.command("worker", "--run-as", "root"))
    assert ran.returncode == 2, ran
    assert ran.stderr.splitlines()[-1] == (
        f"strata: --run-as root: the worker runs as {user.pw_name} (uid {user.pw_uid}), "
        "not as root, so it cannot run tasks as another user: start it as root, or "
        "without --run-as")
    assert "worker_ready" not in ran.stderr  # refused before it listened


def test_a_worker_refuses_to_run_tasks_as_an_unknown_user() -> None:
    ran = _start_refused(launcher.command("worker", "--run-as", "strata-no-such-user"))
    assert ran.returncode == 2, ran
    assert ran.stderr.splitlines()[-1] == "strata: --run-as strata-no-such-user: no such user"


def test_a_root_worker_that_may_not_change_ids_refuses_to_start(
    other_user: pwd.struct_passwd,
) -> None:
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is not installed: cannot start a worker as root "
                    "without CAP_SETUID")
    # Root, without the capabilities to change its ids, as in a container that drops them.
    drop = [setpriv, "--bounding-set", "-setuid,-setgid", "--inh-caps", "-setuid,-setgid",
            "--"]
    ran = _start_refused([*drop, *launcher.command("worker", "--run-as", other_user.pw_name)])
    assert ran.returncode == 2, ran
    assert ran.stderr.splitlines()[-1] == (
        f"strata: --run-as {other_user.pw_name}: cannot switch to uid {other_user.pw_uid}: "
        "Operation not permitted")
