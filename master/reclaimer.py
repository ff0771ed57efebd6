"""Declares silent regions down and takes their work back. One master at a time
does this (a PostgreSQL advisory lock); the others stand by to take over."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from strata.common.errors import DatabaseUnavailable
from strata.common.retry import Backoff, of_type, retrying
from strata.common.settings import MasterSettings
from strata.master.db import RECLAIMER_LOCK_ID, Database
from strata.master.metrics import MasterMetrics

logger = logging.getLogger(__name__)

STANDBY_RETRY_S = 1.0
DB_BACKOFF = Backoff(initial_s=0.1, max_s=5.0, healthy_after_s=10.0)


class Reclaimer:
    def __init__(
        self, db: Database, settings: MasterSettings, on_reclaimed: Callable[[], None],
        metrics: MasterMetrics | None = None,
    ) -> None:
        self._db = db
        self._metrics = metrics or MasterMetrics()
        self._settings = settings
        self._on_reclaimed = on_reclaimed
        # Both queries are cheap (a handful of regions, a partial index over in-flight
        # tasks), and every pass period adds to how long a dead region's work waits.
        self._period = min(
            settings.heartbeat_interval.total_seconds() / 4,
            settings.region_dead_after.total_seconds() / 20,
        )

    async def run(self) -> None:
        async for attempt in retrying(
            "reclaimer", DB_BACKOFF, retry_on=of_type(DatabaseUnavailable),
            action="reclaimer_db_lost",
        ):
            with attempt:
                await self._serve()

    async def _serve(self) -> None:
        """Stand by until this master holds the lock, then do the duty while it does."""
        while True:
            async with self._db.singleton(RECLAIMER_LOCK_ID) as held:
                if held is not None:
                    logger.info("this master now reclaims dead regions' tasks",
                                extra={"action": "reclaimer_active"})
                    await self._duty(held)
            await asyncio.sleep(STANDBY_RETRY_S)

    async def _duty(self, held: Callable[[], bool]) -> None:
        # Heartbeats could not be recorded while this master was away from the database
        # (or not running): give every region a full dead-after of recorded heartbeats
        # before calling it silent, or a healthy region would lose its work.
        watching_since = time.monotonic()
        dead_after = self._settings.region_dead_after
        while held():
            if time.monotonic() - watching_since >= dead_after.total_seconds():
                await self.pass_once()
            await asyncio.sleep(self._period)
        raise DatabaseUnavailable("lost the connection holding the reclaimer lock")

    async def pass_once(self) -> int:
        for name, last in await self._db.mark_regions_down(self._settings.region_dead_after):
            logger.warning(
                "region %s is down: no heartbeat since %s", name, last.isoformat(),
                extra={"action": "region_down", "region": name},
            )
        reclaimed = await self._db.reclaim_down_regions()
        for region, count in reclaimed.items():
            logger.warning(
                "reclaimed %d tasks from region %s", count, region,
                extra={"action": "tasks_reclaimed", "region": region, "count": count},
            )
        total = sum(reclaimed.values())
        if total:
            self._metrics.reclaimed.labels("region_down").inc(total)
            self._on_reclaimed()
        return total
