"""A cluster of real ``strata`` processes whose every link runs through toxiproxy.

    master ──db──────────────▶ PostgreSQL
    region ──<r>.to_master───▶ master gRPC         (--master)
    master ──<r>.from_master─▶ region gRPC         (--advertise)
    worker ──<r>.workers─────▶ region gRPC         (--region; one proxy per region)

REST calls from the test go straight to the master: the harness observes, it is not
under test.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from strata.local.cluster import Cluster
from strata.local.postgres import free_port
from tests.chaos.links import Link, LinkGroup, ToxiproxyServer


def _with_address(url: str, address: str) -> str:
    """The same database URL, reached at HOST:PORT ``address``."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{address}" if userinfo else address
    return urlunsplit(parts._replace(netloc=netloc))


def _host_port(url: str) -> str:
    parts = urlsplit(url)
    if not parts.hostname or not parts.port:
        raise ValueError(f"the chaos cluster needs a TCP database URL, not {url!r}")
    return f"{parts.hostname}:{parts.port}"


@dataclass
class ChaosCluster(Cluster):
    """:class:`Cluster` with a proxy on every link; build it with :meth:`create`."""

    toxiproxy: ToxiproxyServer | None = None
    links: dict[str, Link] = field(default_factory=dict)

    @classmethod
    async def create(cls, *, workdir: Path, database_url: str, toxiproxy: ToxiproxyServer
                     ) -> ChaosCluster:
        db = await toxiproxy.create_link("db", _host_port(database_url))
        cluster = cls(workdir=workdir, database_url=_with_address(database_url, db.listen),
                      toxiproxy=toxiproxy)
        cluster.links["db"] = db
        return cluster

    # ---- links ----------------------------------------------------------------------

    @property
    def db(self) -> Link:
        """master → PostgreSQL."""
        return self.links["db"]

    def to_master(self, region: str) -> Link:
        """region → master: registration, heartbeats, reports, hand-backs."""
        return self.links[f"{region}.to_master"]

    def from_master(self, region: str) -> Link:
        """master → region: delegation and cancellations."""
        return self.links[f"{region}.from_master"]

    def master_link(self, region: str) -> LinkGroup:
        """Both directions between the master and ``region``."""
        return LinkGroup.of([self.to_master(region), self.from_master(region)])

    def workers_link(self, region: str) -> Link:
        """workers of ``region`` → region (every worker stream of that region)."""
        return self.links[f"{region}.workers"]

    def all_links(self) -> LinkGroup:
        return LinkGroup.of(self.links.values())

    async def _link(self, name: str, upstream: str) -> Link:
        if name not in self.links:
            assert self.toxiproxy is not None, "build a ChaosCluster with ChaosCluster.create"
            self.links[name] = await self.toxiproxy.create_link(name, upstream)
        return self.links[name]

    # ---- addresses the processes dial: the proxies ----------------------------------

    def master_address(self, region: str) -> str:
        return self.to_master(region).listen

    def advertised_address(self, region: str) -> str | None:
        return self.from_master(region).listen

    def worker_target(self, region: str) -> str:
        return self.workers_link(region).listen

    async def start_region(self, name: str, *, wait: bool = True, **env: str) -> None:
        port = self.region_ports.setdefault(name, free_port())
        await self._link(f"{name}.to_master", f"127.0.0.1:{self.grpc_port}")
        await self._link(f"{name}.from_master", f"127.0.0.1:{port}")
        await self._link(f"{name}.workers", f"127.0.0.1:{port}")
        await super().start_region(name, wait=wait, **env)

    # ---- what the processes said ----------------------------------------------------

    def events(self, action: str, *, process: str | None = None) -> int:
        """How many log lines carry ``action=<action>`` (in one process's log, or all)."""
        pattern = re.compile(rf"\baction={re.escape(action)}\b")
        names = [process] if process is not None else list(self.procs)
        return sum(len(pattern.findall(self.log(name))) for name in names)
