"""``strata up``: PostgreSQL (embedded unless configured), then the topology's
processes under the supervisor, until Ctrl-C or SIGTERM.

A topology with ``tls = true`` runs with mutual TLS on every link and HTTPS for the
API: the certificates are made under ``<data dir>/certs`` on the first run (a CA, the
master's, each region's, the workers', a client's) and reused after; a region added to
the topology later gets its certificate from the same CA."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg

from strata.common import certs
from strata.common.client import ApiError, Client
from strata.common.errors import StrataError
from strata.common.settings import UpSettings
from strata.local import instance, launcher, ports
from strata.local.ports import Port
from strata.local.supervisor import Proc, Supervisor
from strata.topologies.topology import Topology, env_for

logger = logging.getLogger(__name__)

READY_TIMEOUT_S = 60.0
POLL_S = 0.1
EMBEDDED_DATABASE = "strata"


def tls_env(certs_dir: Path | None, stem: str) -> dict[str, str]:
    """The variables that give a process ``<certs_dir>/<stem>.pem`` (none without TLS)."""
    if certs_dir is None:
        return {}
    return {"STRATA_TLS_CA": str(certs_dir / certs.CA_CERT),
            "STRATA_TLS_CERT": str(certs_dir / f"{stem}.pem"),
            "STRATA_TLS_KEY": str(certs_dir / f"{stem}-key.pem")}


def plan(topology: Topology, database_url: str, *,
         certs_dir: Path | None = None) -> list[Proc]:
    """The processes of a topology, with their command lines and environments (each
    with its certificate from ``certs_dir``, when given)."""
    base = {"STRATA_DATABASE_URL": database_url, **env_for(topology.settings)}
    master_address = launcher.local_address(topology.master.grpc_port)
    procs = [
        Proc(
            name="master", tier=0, env=launcher.child_env(base, tls_env(certs_dir,
                                                                        certs.MASTER)),
            argv=launcher.master_argv(http_port=topology.master.http_port,
                                      grpc_port=topology.master.grpc_port),
        )
    ]
    for region in topology.regions:
        env = launcher.child_env(base, env_for(region.settings))
        procs.append(
            Proc(
                name=region.name, tier=1,
                env={**env, **tls_env(certs_dir, certs.region_stem(region.name))},
                argv=launcher.regional_argv(name=region.name, master=master_address,
                                            grpc_port=region.grpc_port,
                                            http_port=region.http_port or 0),
            )
        )
        for index in range(1, region.workers + 1):
            worker_id = f"{region.name}-w{index}"
            procs.append(
                Proc(
                    name=worker_id, tier=2, env={**env, **tls_env(certs_dir, certs.WORKER)},
                    argv=launcher.worker_argv(region=launcher.local_address(region.grpc_port),
                                              worker_id=worker_id,
                                              concurrency=region.concurrency),
                )
            )
    return procs


class NotReady(StrataError):
    """A tier of ``strata up`` did not come up in time."""

    code = "not_ready"


async def wait_ready(check: Callable[[], Awaitable[bool]], what: str, *,
                     timeout_s: float = READY_TIMEOUT_S, poll_s: float = POLL_S) -> None:
    """Poll ``check`` until it holds; :class:`NotReady` naming ``what`` after ``timeout_s``.

    A check that fails (the API not answering yet) counts as not ready; the last such
    failure is part of the message."""
    last: BaseException | None = None
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                try:
                    if await check():
                        return
                    last = None
                except (StrataError, TimeoutError) as exc:
                    # A TimeoutError here is the check's own request timing out: the
                    # deadline above cancels instead, and turns into TimeoutError below.
                    last = exc
                await asyncio.sleep(poll_s)
    except TimeoutError:
        why = f" (last check: {last})" if last is not None and str(last) else ""
        raise NotReady(f"{what} not ready within {timeout_s:g}s{why}") from None


async def ensure_database(server_url: str, name: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


class ScheduleRefused(StrataError):
    """The master refused a schedule of the topology."""

    code = "schedule_refused"


async def apply_schedules(client: Client, topology: Topology) -> list[str]:
    """Make each schedule of the topology on the master; one of that name there already
    is changed to the declared one (the file is the truth: a field left out is its
    default again), except ``paused``, which it keeps unless the file says it. One line
    a schedule, saying which it was."""
    said: list[str] = []
    for spec in topology.schedules:
        body = spec.model_dump(mode="json")
        try:
            try:
                await client.create_schedule(**body)
                said.append(f"schedule {spec.name}: created")
                continue
            except ApiError as exc:
                if exc.status != 409:
                    raise
            changes = {k: v for k, v in body.items()
                       if k != "name" and (k != "paused" or "paused" in spec.model_fields_set)}
            await client.change_schedule(spec.name, **changes)
            said.append(f"schedule {spec.name}: updated to the topology's")
        except StrataError as exc:
            raise ScheduleRefused(f"schedule {spec.name} of topology {topology.name!r}: "
                                  f"{exc}") from exc
    return said


def listening_ports(topology: Topology) -> list[Port]:
    """The fixed ports the topology's processes listen on (workers take any free one)."""
    found = [Port(number=topology.master.http_port, what="the master's HTTP port"),
             Port(number=topology.master.grpc_port, what="the master's gRPC port")]
    found += [Port(number=r.grpc_port, what=f"region {r.name}'s gRPC port")
              for r in topology.regions]
    found += [Port(number=r.http_port, what=f"region {r.name}'s HTTP port")
              for r in topology.regions if r.http_port is not None]
    return found


async def run(topology: Topology, settings: UpSettings) -> int:
    """Run the topology until Ctrl-C or SIGTERM; its exit code.

    Refuses at once, before starting anything, when another ``strata up`` holds the
    data dir (:class:`~strata.local.instance.AlreadyRunning`, naming it) or a port of
    the topology is taken (:class:`~strata.local.ports.PortInUse`)."""
    api = f"{'https' if topology.tls else 'http'}://{launcher.LOCALHOST}:" \
          f"{topology.master.http_port}"
    with contextlib.ExitStack() as held:
        if not settings.database_url:
            # The embedded server's data dir is this run's alone. With a database of the
            # user's own no data dir is in use: the port check below still applies.
            held.enter_context(instance.hold(settings.data_dir, api=api))
        ports.ensure_free(
            listening_ports(topology),
            hint=f"is another strata up running? Stop it, or give topology "
                 f"{topology.name!r} other ports")
        return await _run(topology, settings, api)


async def _run(topology: Topology, settings: UpSettings, api: str) -> int:
    from strata.local.postgres import EmbeddedPostgres

    certs_dir = settings.data_dir / "certs" if topology.tls else None
    if certs_dir is not None:
        made = await asyncio.to_thread(certs.init, certs_dir,
                                       regions=[r.name for r in topology.regions],
                                       only_missing=True)
        print(f"strata | mutual TLS: certificates in {certs_dir} "
              f"({'made now' if made.files else 'made before, reused'}); "
              f"the API is HTTPS, use --ca {certs_dir / certs.CA_CERT}", flush=True)
    embedded: EmbeddedPostgres | None = None
    database_url = settings.database_url
    if not database_url:
        data_dir = settings.data_dir / "pgdata"
        embedded = EmbeddedPostgres(data_dir, port=settings.pg_port)
        print(f"strata | starting embedded PostgreSQL in {data_dir}", flush=True)
        await asyncio.to_thread(embedded.start)
        if embedded.adopted_pid is not None:
            print(f"strata | PostgreSQL (pid {embedded.adopted_pid}) was already running in "
                  f"{data_dir}: using it, and leaving it running when this run stops",
                  flush=True)
        try:
            await ensure_database(embedded.url, EMBEDDED_DATABASE)
        except BaseException:
            await asyncio.to_thread(embedded.stop)
            raise
        database_url = embedded.url_for(EMBEDDED_DATABASE)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    supervisor = Supervisor(plan(topology, database_url, certs_dir=certs_dir))
    # A token of the embedded database's, if one was made (`strata token create`).
    client = Client(api, timeout_s=2, token=os.environ.get("STRATA_TOKEN") or None,
                    ca=certs_dir / certs.CA_CERT if certs_dir is not None else None)

    async def master_ready() -> bool:
        await client.request("GET", "/readyz")
        return True

    async def regions_ready() -> bool:
        up = {r["name"] for r in await client.regions() if r["state"] == "up"}
        return {r.name for r in topology.regions} <= up

    async def workers_ready() -> bool:
        live = [w for w in await client.workers() if w["state"] == "up"]
        return len(live) >= sum(r.workers for r in topology.regions)

    async def bring_up() -> None:
        await supervisor.start_tier(0, lambda: wait_ready(master_ready, "the master"))
        regions = "regions " + ", ".join(r.name for r in topology.regions)
        await supervisor.start_tier(1, lambda: wait_ready(regions_ready, regions))
        # After the regions: a schedule whose task is pinned to one needs it known.
        for line in await apply_schedules(client, topology):
            supervisor.say(line)
        workers = f"{sum(r.workers for r in topology.regions)} workers"
        await supervisor.start_tier(2, lambda: wait_ready(workers_ready, workers))
        supervisor.say(
            f"ready: API at {api} ({len(topology.regions)} regions, "
            f"{sum(r.workers for r in topology.regions)} workers); Ctrl-C stops everything"
        )

    starting = asyncio.create_task(bring_up(), name="bring_up")
    stopper = asyncio.create_task(stop.wait(), name="stop")
    code = 0
    try:
        done, _ = await asyncio.wait({starting, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if starting in done and starting.exception() is not None:
            failure = starting.exception()
            supervisor.say(f"start-up failed: {str(failure) or repr(failure)}")
            code = 1
        else:
            await stopper
    finally:
        starting.cancel()
        stopper.cancel()
        await asyncio.gather(starting, stopper, return_exceptions=True)
        supervisor.say("stopping: workers, then regions, then the master")
        await supervisor.stop()
        await client.close()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
        supervisor.say("stopped")
    return code
