"""``strata up`` as a user runs it: embedded PostgreSQL, readiness, Ctrl-C."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from strata.local import launcher
from strata.local.postgres import free_port
from tests.e2e.up_process import UpProcess

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

# A refusal comes before anything is started: an interpreter start and a few checks.
REFUSE_WITHIN_S = 20.0


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


def _up_env(data_home: Path) -> dict[str, str]:
    """strata up with its embedded PostgreSQL in data_home, on a port of its own."""
    return launcher.child_env(
        {"STRATA_DATA_DIR": str(data_home), "STRATA_PG_PORT": str(free_port())},
        without=("STRATA_DATABASE_URL", "DATABASE_URL"))


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
    env = _up_env(data_home)
    api = f"http://127.0.0.1:{http}"

    with UpProcess(topology, env) as first:
        first.wait_for(f"ready: API at {api}")
        children = first.children()
        assert len(children) >= 5, children  # master, two regions, two workers
        task_id, state, *output = _cli(env, "submit", "--command", "echo persisted",
                                       "--wait", "--api", api)
        assert state == "succeeded"
        assert output == ["---", "stdout", "---", "persisted"]
        code = first.interrupt()
    assert code == 0, "".join(first.lines[-40:])
    out = first.output
    # Stopped in order: workers, then regions, then the master.
    assert out.index("action=worker_stopped") < out.index("action=region_stopped") \
        < out.index("action=master_stopped")
    alive = [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, alive
    assert not _postgres_of(data_home)

    with UpProcess(topology, env) as second:
        second.wait_for(f"ready: API at {api}")
        status = _cli(env, "status", task_id, "--api", api)
        assert '"succeeded",' in status
        assert second.interrupt() == 0


def test_a_second_up_refuses_at_once_and_leaves_the_first_running(
    tmp_path: Path, data_home: Path
) -> None:
    topology, http = _topology(tmp_path)
    env = _up_env(data_home)
    api = f"http://127.0.0.1:{http}"

    with UpProcess(topology, env) as first:
        first.wait_for(f"ready: API at {api}")
        postgres = _postgres_of(data_home)
        assert postgres

        # The same data dir: refused, naming the running one, before starting anything.
        began = time.monotonic()
        second = _up(topology, env)
        assert second.returncode != 0, second.stdout
        assert time.monotonic() - began < REFUSE_WITHIN_S
        assert f"pid {first.proc.pid}, API at {api}" in second.stdout, second.stdout
        assert "PostgreSQL" not in second.stdout, second.stdout

        # Another data dir, the same ports: refused, naming the port, before PostgreSQL.
        other_home = tmp_path / "other-data"
        began = time.monotonic()
        third = _up(topology, {**env, "STRATA_DATA_DIR": str(other_home)})
        assert third.returncode != 0, third.stdout
        assert time.monotonic() - began < REFUSE_WITHIN_S
        assert f"port {http} (the master's HTTP port) is already in use" in third.stdout, \
            third.stdout
        assert not (other_home / "pgdata").exists()

        # The first one still serves, on the same PostgreSQL, and never restarted anything.
        with urllib.request.urlopen(f"{api}/readyz", timeout=10) as ready:
            assert ready.status == 200
        _, state, *_ = _cli(env, "submit", "--command", "echo still here", "--wait",
                            "--api", api)
        assert state == "succeeded"
        assert [p.pid for p in _postgres_of(data_home)] == [p.pid for p in postgres]
        assert "restarting" not in first.output
        code = first.interrupt()
    assert code == 0, "".join(first.lines[-40:])
    assert "stopped" in first.lines[-1]
    assert not _postgres_of(data_home)


def _up(topology: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """A strata up expected to refuse: its exit code and all its output."""
    return subprocess.run(
        launcher.up_argv(topology), env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60, check=False,
    )


def _postgres_of(data_home: Path) -> list[psutil.Process]:
    """The PostgreSQL processes serving data under data_home."""
    data_dir = str(data_home)
    return [p for p in psutil.process_iter(["cmdline"])
            if p.info["cmdline"] and data_dir in " ".join(p.info["cmdline"])]


def test_up_of_a_tls_topology_makes_its_certificates_once_and_serves_https(
    tmp_path: Path, data_home: Path
) -> None:
    from cryptography import x509

    topology, http = _topology(tmp_path)
    topology.write_text(topology.read_text().replace('name = "test"\n',
                                                     'name = "test"\ntls = true\n'))
    env = _up_env(data_home)
    api = f"https://127.0.0.1:{http}"
    certs_dir = data_home / "certs"
    ca = certs_dir / "ca.pem"

    with UpProcess(topology, env) as first:
        first.wait_for(f"ready: API at {api}")
        assert f"certificates in {certs_dir} (made now)" in first.output
        task_id, state, *_ = _cli(env, "submit", "--command", "echo over-tls", "--wait",
                                  "--api", api, "--ca", str(ca))
        assert state == "succeeded"
        # Every process has its own certificate: the master's, its region's, the workers'.
        given = {}
        for child in first.children():
            argv = child.cmdline()
            if argv[1:3] == ["-m", "strata"]:
                name = argv[argv.index("--name") + 1] if "--name" in argv else argv[3]
                given[name] = Path(child.environ()["STRATA_TLS_CERT"]).name
        assert given == {"master": "master.pem", "r1": "region-r1.pem", "r2": "region-r2.pem",
                         "worker": "worker.pem"}, given
        assert first.interrupt() == 0
    serial = x509.load_pem_x509_certificate(ca.read_bytes()).serial_number
    assert (certs_dir / "ca-key.pem").stat().st_mode & 0o777 == 0o600

    with UpProcess(topology, env) as second:
        second.wait_for(f"ready: API at {api}")
        assert f"certificates in {certs_dir} (made before, reused)" in second.output
        assert '"succeeded",' in _cli(env, "status", task_id, "--api", api, "--ca", str(ca))
        assert second.interrupt() == 0
    assert x509.load_pem_x509_certificate(ca.read_bytes()).serial_number == serial
