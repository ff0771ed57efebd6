"""Real ``strata`` processes for end-to-end tests (and benchmarks): a master, regions
and workers, each a child process that can be killed or added while the test runs.

``tls=True``: mutual TLS on every link and HTTPS for the REST API, with certificates
made under ``<workdir>/certs`` by :mod:`strata.common.certs` (a region's when it first
starts)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from strata.common import certs
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
LOG_TAIL_LINES = 20


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
    tls: bool = False
    # An API token the master accepts (STRATA_API_TOKENS), and its clients send.
    token: str | None = None
    # Masters beside the first ("master", on http_port and grpc_port): name -> (HTTP
    # port, gRPC port), each on the same database.
    other_masters: dict[str, tuple[int, int]] = field(default_factory=dict)
    # The masters a region dials, in order (default: the first master only).
    region_masters: dict[str, list[str]] = field(default_factory=dict)

    @property
    def api(self) -> str:
        return self.api_of("master")

    def ports(self, master: str) -> tuple[int, int]:
        """The HTTP and gRPC ports of ``master``."""
        if master == "master":
            return self.http_port, self.grpc_port
        return self.other_masters.setdefault(master, (free_port(), free_port()))

    def api_of(self, master: str) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.ports(master)[0]}"

    def client(self, master: str = "master") -> Client:
        return Client(self.api_of(master), timeout_s=30, ca=self.ca if self.tls else None,
                      token=self.token)

    # ---- certificates (tls=True) ------------------------------------------------------

    @property
    def certs_dir(self) -> Path:
        return self.workdir / "certs"

    @property
    def ca(self) -> Path:
        return self.certs_dir / certs.CA_CERT

    def tls_env(self, stem: str) -> dict[str, str]:
        """The variables that give a process the certificate ``<stem>.pem`` (made now if
        it is a region's that has none yet); none without TLS."""
        if not self.tls:
            return {}
        if not self.ca.exists():
            certs.init(self.certs_dir)
        cert, key = self.certs_dir / f"{stem}.pem", self.certs_dir / f"{stem}-key.pem"
        if not cert.exists() and stem.startswith("region-"):
            certs.issue_into(self.certs_dir, certs.region_leaf(stem.removeprefix("region-")))
        return {"STRATA_TLS_CA": str(self.ca), "STRATA_TLS_CERT": str(cert),
                "STRATA_TLS_KEY": str(key)}

    def rotate_certificates(self) -> None:
        """Issue every leaf certificate again from the same CA, with new keys, over the
        old files (the processes take them on SIGHUP)."""
        certs.init(self.certs_dir, regions=list(self.region_ports))

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
        """Where ``region`` dials the master (or its masters, comma-separated)."""
        return ",".join(launcher.local_address(self.ports(m)[1])
                        for m in self.region_masters.get(region, ["master"]))

    def advertised_address(self, region: str) -> str | None:
        """Where the master dials ``region``; None: wherever the region listens."""
        return None

    def worker_target(self, region: str) -> str:
        """Where the workers of ``region`` dial it."""
        return launcher.local_address(self.region_ports[region])

    # ---- starting -------------------------------------------------------------------

    async def start_master(self, name: str = "master", **env: str) -> None:
        http_port, grpc_port = self.ports(name)
        self._spawn(name, launcher.master_argv(http_port=http_port, grpc_port=grpc_port),
                    {**self.tls_env(certs.MASTER),
                     **({"STRATA_API_TOKENS": self.token} if self.token else {}), **env})
        async with self.client(name) as c:
            await self._wait_started(name, lambda: _ok(c.request("GET", "/readyz")),
                                     f"{name} ready")

    async def start_region(self, name: str, *, wait: bool = True,
                           masters: list[str] | None = None, **env: str) -> None:
        if masters is not None:
            self.region_masters[name] = masters
        port = self.region_ports.setdefault(name, free_port())
        http_port = self.region_http_ports.setdefault(name, free_port())
        self._spawn(name, launcher.regional_argv(name=name, master=self.master_address(name),
                                                 grpc_port=port,
                                                 advertise=self.advertised_address(name),
                                                 http_port=http_port),
                    {**self.tls_env(certs.region_stem(name)), **env})
        if not wait:
            return
        async with self.client() as c:
            await self._wait_started(name, lambda: _region_up(c, name), f"region {name} up")

    async def start_worker(self, region: str, worker_id: str, *, concurrency: int = 4,
                           wait: bool = True, **env: str) -> None:
        self._spawn(worker_id, launcher.worker_argv(region=self.worker_target(region),
                                                    worker_id=worker_id,
                                                    concurrency=concurrency),
                    {**self.tls_env(certs.WORKER), **env})
        if wait:
            async with self.client() as c:
                await self._wait_started(worker_id, lambda: _worker_up(c, worker_id),
                                         f"worker {worker_id} up")

    async def _wait_started(self, name: str, check: Callable[[], Awaitable[bool]],
                            what: str) -> None:
        """Wait until ``check`` holds; a process that exits meanwhile fails at once, with
        the end of its log."""
        proc = self.procs[name]

        async def started() -> bool:
            if proc.poll() is not None:
                tail = "\n".join(self.log(name).splitlines()[-LOG_TAIL_LINES:])
                raise AssertionError(
                    f"{name} exited with {proc.returncode} before {what}:\n{tail}")
            return await check()

        try:
            await wait_until(started, timeout_s=READY_TIMEOUT_S, what=what)
        except AssertionError as exc:
            if "timed out" not in str(exc):
                raise
            tail = "\n".join(self.log(name).splitlines()[-LOG_TAIL_LINES:])
            raise AssertionError(f"{exc}\nthe end of {name}'s log:\n{tail}") from None

    # ---- stopping -------------------------------------------------------------------

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        proc.send_signal(sig)
        if sig == signal.SIGKILL:
            proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM everyone (workers first), then SIGKILL whatever is left."""
        masters = {"master", *self.other_masters}
        order = sorted(self.procs, key=lambda n: (n in masters, n in self.region_ports))
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
