"""The master's composition root: settings, database, gRPC server, REST, scanner."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid

from aiohttp import web

from strata.common import channels
from strata.common import tls as tlsmod
from strata.common.errors import ConfigError
from strata.common.settings import MasterSettings
from strata.common.supervise import TaskSet, first_of, stop_on_signals
from strata.master import auth
from strata.master.api import Api, ApiRunner
from strata.master.client_api import SERVICE as CLIENT_SERVICE
from strata.master.client_api import TasksService
from strata.master.control import Control
from strata.master.db import Database, wait_for_database
from strata.master.metrics import MasterMetrics
from strata.master.reclaimer import Reclaimer
from strata.master.regions import RegionClients
from strata.master.retention import Retention
from strata.master.scanner import Scanner
from strata.master.service import MasterService
from strata.master.stream import EventHub
from strata.proto import strata_pb2_grpc as rpc
from strata.proto import tasks_pb2_grpc as tasks_rpc

logger = logging.getLogger(__name__)

GRPC_GRACE_S = 2.0
MASTER_SERVICE = "strata.v1.Master"  # what regions call (proto/strata.proto)


async def migrate(settings: MasterSettings) -> list[str]:
    if not settings.database_url:
        raise ConfigError("no database configured: set STRATA_DATABASE_URL or DATABASE_URL")
    await wait_for_database(settings.database_url)
    db = await Database.connect(settings.database_url, pool_size=2)
    try:
        return await db.migrate()
    finally:
        await db.close()


async def serve(settings: MasterSettings, stop: asyncio.Event | None = None) -> None:
    if not settings.database_url:
        raise ConfigError("no database configured: set STRATA_DATABASE_URL or DATABASE_URL")
    tls = tlsmod.from_settings(settings)  # a bad file is a ConfigError now, not later
    stop = stop or stop_on_signals()
    if tls is not None:
        tls.reload_on()  # SIGHUP
    await wait_for_database(settings.database_url)
    db = await Database.connect(
        settings.database_url, pool_size=settings.db_pool_size,
        command_timeout_s=settings.db_command_timeout.total_seconds(),
        priority_aging=settings.priority_aging,
    )
    applied = await db.migrate()
    if applied:
        logger.info("applied migrations %s", applied, extra={"action": "migrated"})
    if made := await db.prepare_aging():
        logger.info("made the claim indexes of priority aging %s", made,
                    extra={"action": "aging_indexes_made"})
    try:  # before listening: beyond loopback, no token is a refusal to start
        guard = await auth.start(settings, db)
    except BaseException:
        await db.close()
        raise
    regions = RegionClients(
        failure_threshold=settings.breaker_failures,
        reset_timeout_s=settings.breaker_reset.total_seconds(), tls=tls,
    )
    metrics = MasterMetrics()
    # This master among the others on the database: regions that talk to it are its own.
    instance = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    scanner = Scanner(db, regions, settings, metrics, instance=instance)
    reclaimer = Reclaimer(db, settings, on_reclaimed=scanner.wake, metrics=metrics)
    service = MasterService(db, settings, scanner.wake, metrics, mtls=tls is not None,
                            instance=instance)

    events = EventHub(db, instance,
                      window=settings.events_window, buffer=settings.events_buffer)
    control = Control(db, regions, settings, metrics)

    server = channels.server()
    rpc.add_MasterServicer_to_server(service, server)
    tasks_rpc.add_TasksServicer_to_server(TasksService(control, events, guard), server)
    grpc_services = [MASTER_SERVICE, CLIENT_SERVICE]
    checks = channels.serve_health_and_reflection(server, grpc_services)
    channels.listen(server, f"{settings.grpc_host}:{settings.grpc_port}", tls)
    await server.start()
    await channels.set_serving(checks, grpc_services, True)
    api = Api(control, events,
              keepalive_s=settings.events_keepalive.total_seconds(), guard=guard)
    runner = ApiRunner(api.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.http_host, settings.http_port,
                       ssl_context=tls.rest_context() if tls is not None else None)
    await site.start()

    tasks = TaskSet()
    tasks.spawn("scanner", scanner.run())
    tasks.spawn("reclaimer", reclaimer.run())
    tasks.spawn("events", events.run())
    tasks.spawn("scheduler", control.scheduler.run())
    tasks.spawn("retention", Retention(db, settings, metrics).run())
    tasks.spawn("auth", guard.run(db))
    logger.info(
        "master ready: %s://%s:%d grpc %s:%d%s", "https" if tls else "http",
        settings.http_host, settings.http_port, settings.grpc_host, settings.grpc_port,
        " (mutual TLS)" if tls else "",
        extra={"action": "master_ready"},
    )
    try:
        await first_of(stop, tasks.failed)
    finally:
        # Intake first (no new REST or gRPC calls), then the scanner, then connections.
        # Event streams end first: they would hold the REST server open.
        events.close("the master is stopping")
        await channels.set_serving(checks, grpc_services, False)
        await runner.cleanup()
        await server.stop(GRPC_GRACE_S)
        await tasks.cancel_all()
        await regions.close()
        await db.close()
        logger.info("master stopped", extra={"action": "master_stopped"})
    if tasks.failure is not None:
        raise tasks.failure

