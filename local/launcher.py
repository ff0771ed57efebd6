"""How a ``strata`` process is launched: its command line and its environment.

``strata up``'s supervisor, the test cluster, the benchmarks and the end-to-end tests
all start their processes from here, so a change to how one is started (an interpreter
flag, a variable every child needs) is made once.

A child runs this interpreter with ``-m strata`` rather than a ``strata`` script on
PATH: it is then the very installation the parent imported, virtualenv or not.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

# Every child writes each log line as it happens: the supervisor prefixes lines as they
# come, and a test waits for a line, not for a buffer to fill.
CHILD_ENV = {"PYTHONUNBUFFERED": "1"}
LOCALHOST = "127.0.0.1"


def command(*args: str) -> list[str]:
    """The command line of ``strata <args>``."""
    return [sys.executable, "-m", "strata", *args]


def master_argv(*, http_port: int, grpc_port: int) -> list[str]:
    return command("master", "--http-port", str(http_port), "--grpc-port", str(grpc_port))


def regional_argv(*, name: str, master: str, grpc_port: int, advertise: str | None = None,
                  http_port: int = 0) -> list[str]:
    """A regional coordinator that dials the master at ``master`` (HOST:PORT) and is
    dialled back at ``advertise`` (default: where it listens); /healthz and /metrics on
    ``http_port`` (0: any free one)."""
    argv = command("regional", "--name", name, "--master", master,
                   "--grpc-port", str(grpc_port), "--http-port", str(http_port))
    if advertise is not None:
        argv += ["--advertise", advertise]
    return argv


def worker_argv(*, region: str, worker_id: str, concurrency: int, http_port: int = 0) -> list[str]:
    """A worker of the region at ``region`` (HOST:PORT); health port 0: any free one."""
    return command("worker", "--region", region, "--concurrency", str(concurrency),
                   "--http-port", str(http_port), "--id", worker_id)


def up_argv(topology: Path | str | None = None) -> list[str]:
    """``strata up`` of a topology file (default: the shipped local topology)."""
    return command("up") if topology is None else command("up", str(topology))


def local_address(port: int) -> str:
    return f"{LOCALHOST}:{port}"


def child_env(
    *layers: Mapping[str, str],
    base: Mapping[str, str] | None = None,
    without: Iterable[str] = (),
) -> dict[str, str]:
    """The environment of a child: ``base`` (default: ours) without the names in
    ``without``, then each layer in turn, then what every child needs."""
    removed = set(without)
    env = {k: v for k, v in (os.environ if base is None else base).items()
           if k not in removed}
    for layer in layers:
        env.update(layer)
    env.update(CHILD_ENV)
    return env
