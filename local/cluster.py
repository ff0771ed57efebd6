"""Real ``strata`` processes for end-to-end tests (and benchmarks): a master, regions
and workers, each a child process that can be killed or added while the test runs."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from strata.common.client import Client
from strata.local import launcher
from strata.local.postgres import free_port

FAST_TIMINGS = {
    "STRATA_HEARTBEAT_INTERVAL": "0.2",
    "STRATA_WORKER_DEAD_AFTER": "1",
    "STRATA_REGION_DEAD_AFTER": "2",
    "STRATA_SCAN_INTERVAL": "0.5",
    "STRATA_LOG_LEVEL": "INFO",
}
READY_TIMEOUT_S = 30.0


async def wait_until(
    check: Callable[[], Awaitable[Any]], *, timeout_s: float = 20.0, what: str = "condition"
) -> Any:
    """Poll an observable condition until it holds (returns its truthy value)."""
    last: Any = None
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                last = await check()
                if last:
                    return last
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout_s}s waiting for {what}; last={last!r}")\
            from None


@dataclass
class Cluster:
    workdir: Path
    database_url: str
    env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    region_ports: dict[str, int] = field(default_factory=dict)
    region_http_ports: dict[str, int] = field(default_factory=dict)
    http_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def client(self) -> Client:
        return Client(self.api, timeout_s=30)

    def _spawn(self, name: str, argv: list[str], extra_env: dict[str, str] | None = None
               ) -> None:
        """Start ``argv`` (a :mod:`strata.local.launcher` command line) as ``name``, its
        output in ``<workdir>/<name>.log``."""
        env = launcher.child_env(FAST_TIMINGS, self.env, extra_env or {},
                                 {"STRATA_DATABASE_URL": self.database_url})
        log = (self.workdir / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            argv, env=env, cwd=self.workdir,
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text(errors="replace")

    # ---- addresses (a chaos cluster puts a proxy on each) --------------------------

    def master_address(self, region: str) -> str:
        """Where ``region`` dials the master."""
        return launcher.local_address(self.grpc_port)

    def advertised_address(self, region: str) -> str | None:
        """Where the master dials ``region``; None: wherever the region listens."""
        return None

    def worker_target(self, region: str) -> str:
        """Where the workers of ``region`` dial it."""
        return launcher.local_address(self.region_ports[region])

    # ---- starting -------------------------------------------------------------------

    async def start_master(self) -> None:
        self._spawn("master", launcher.master_argv(http_port=self.http_port,
                                                   grpc_port=self.grpc_port))
        async with self.client() as c:
            await wait_until(lambda: _ok(c.request("GET", "/readyz")),
                             timeout_s=READY_TIMEOUT_S, what="master ready")

    async def start_region(self, name: str, **env: str) -> None:
        port = self.region_ports.setdefault(name, free_port())
        http_port = self.region_http_ports.setdefault(name, free_port())
        self._spawn(name, launcher.regional_argv(name=name, master=self.master_address(name),
                                                 grpc_port=port,
                                                 advertise=self.advertised_address(name),
                                                 http_port=http_port), env)
        async with self.client() as c:
            await wait_until(lambda: _region_up(c, name), timeout_s=READY_TIMEOUT_S,
                             what=f"region {name} up")

    async def start_worker(self, region: str, worker_id: str, *, concurrency: int = 4,
                           wait: bool = True, **env: str) -> None:
        self._spawn(worker_id, launcher.worker_argv(region=self.worker_target(region),
                                                    worker_id=worker_id,
                                                    concurrency=concurrency), env)
        if wait:
            async with self.client() as c:
                await wait_until(lambda: _worker_up(c, worker_id), timeout_s=READY_TIMEOUT_S,
                                 what=f"worker {worker_id} up")

    # ---- stopping -------------------------------------------------------------------

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        proc.send_signal(sig)
        if sig == signal.SIGKILL:
            proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM everyone (workers first), then SIGKILL whatever is left."""
        order = sorted(self.procs, key=lambda n: (n == "master", n in self.region_ports))
        for name in order:
            if self.procs[name].poll() is None:
                self.procs[name].send_signal(signal.SIGTERM)
        for name in order:
            try:
                self.procs[name].wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.procs[name].kill()
                self.procs[name].wait()


async def _ok(aw: Awaitable[Any]) -> bool:
    try:
        await aw
    except Exception:
        return False
    return True


async def _listed_up(fetch: Callable[[], Awaitable[list[dict[str, Any]]]], key: str,
                     value: str) -> bool:
    """Whether the master lists this region or worker as up (False while it cannot say)."""
    try:
        listed = await fetch()
    except Exception:
        return False
    return any(item[key] == value and item["state"] == "up" for item in listed)


async def _region_up(c: Client, name: str) -> bool:
    return await _listed_up(c.regions, "name", name)


async def _worker_up(c: Client, worker_id: str) -> bool:
    return await _listed_up(c.workers, "id", worker_id)
