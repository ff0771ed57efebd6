"""``strata up`` as a user runs it: embedded PostgreSQL, readiness, Ctrl-C."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from strata.local import launcher
from strata.local.postgres import free_port
from tests.e2e.up_process import UpProcess

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


def _topology(tmp_path: Path) -> tuple[Path, int]:
    http = free_port()
    text = f"""
name = "test"
[master]
http_port = {http}
grpc_port = {free_port()}
[settings]
heartbeat_interval = 0.2
[[regions]]
name = "r1"
grpc_port = {free_port()}
workers = 1
concurrency = 2
[[regions]]
name = "r2"
grpc_port = {free_port()}
workers = 1
concurrency = 2
"""
    path = tmp_path / "test.toml"
    path.write_text(text)
    return path, http


def _cli(env: dict[str, str], *args: str) -> list[str]:
    out = subprocess.run(
        launcher.command(*args), env=env, capture_output=True,
        text=True, timeout=60, check=False,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


@pytest.fixture
def data_home() -> Iterator[Path]:
    """The embedded server's data, outside pytest's temp tree (see tests/conftest.py)."""
    home = Path(tempfile.mkdtemp(prefix="strata-test-up-"))
    home.chmod(0o755)
    yield home
    shutil.rmtree(home, ignore_errors=True)


def test_up_runs_a_task_persists_data_and_ctrl_c_leaves_nothing(
    tmp_path: Path, data_home: Path
) -> None:
    topology, http = _topology(tmp_path)
    env = launcher.child_env(
        {"STRATA_DATA_DIR": str(data_home), "STRATA_PG_PORT": str(free_port())},
        without=("STRATA_DATABASE_URL", "DATABASE_URL"))
    api = f"http://127.0.0.1:{http}"

    with UpProcess(topology, env) as first:
        first.wait_for(f"ready: API at {api}")
        children = first.children()
        assert len(children) >= 5, children  # master, two regions, two workers
        task_id, state = _cli(env, "submit", "--command", "echo persisted", "--wait",
                              "--api", api)
        assert state == "succeeded"
        code = first.interrupt()
    assert code == 0, "".join(first.lines[-40:])
    out = first.output
    # Stopped in order: workers, then regions, then the master.
    assert out.index("action=worker_stopped") < out.index("action=region_stopped") \
        < out.index("action=master_stopped")
    alive = [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, alive
    data_dir = str(data_home)
    postgres_left = [p for p in psutil.process_iter(["cmdline"])
                     if p.info["cmdline"] and data_dir in " ".join(p.info["cmdline"])]
    assert not postgres_left, postgres_left

    with UpProcess(topology, env) as second:
        second.wait_for(f"ready: API at {api}")
        status = _cli(env, "status", task_id, "--api", api)
        assert '"succeeded",' in status
        assert second.interrupt() == 0
