"""Retention: finished tasks older than ``retention`` go, with their attempts, and fire
records as old go too. One master at a time (an advisory lock; the others stand by), in
bounded batches that skip rows others hold and never wait for them, each followed by a
VACUUM so that the space is reused: the tables stop growing once they hold a retention
period's worth of rows."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from strata.common.errors import DatabaseUnavailable
from strata.common.retry import Backoff, of_type, retrying
from strata.common.settings import MasterSettings
from strata.common.timeutil import utcnow
from strata.master.db import RETENTION_LOCK_ID, Database
from strata.master.metrics import MasterMetrics

logger = logging.getLogger(__name__)

BATCH = 1000  # tasks of each final state in one statement
STANDBY_RETRY_S = 5.0
DB_BACKOFF = Backoff(initial_s=0.5, max_s=10.0, healthy_after_s=30.0)


class Retention:
    def __init__(self, db: Database, settings: MasterSettings, metrics: MasterMetrics) -> None:
        self._db = db
        self._keep = settings.retention
        self._metrics = metrics
        # A few passes per retention period, at most a minute apart.
        self.period_s = min(60.0, max(1.0, self._keep.total_seconds() / 4))

    async def run(self) -> None:
        if not self._keep:
            logger.info("retention off: finished tasks are kept",
                        extra={"action": "retention_off"})
            return
        async for attempt in retrying("retention", DB_BACKOFF,
                                      retry_on=of_type(DatabaseUnavailable),
                                      action="retention_db_lost"):
            with attempt:
                while True:
                    async with self._db.singleton(RETENTION_LOCK_ID) as held:
                        if held is not None:
                            await self._duty(held)
                    await asyncio.sleep(STANDBY_RETRY_S)

    async def _duty(self, held: Callable[[], bool]) -> None:
        while held():
            await self.pass_once()
            await asyncio.sleep(self.period_s)
        raise DatabaseUnavailable("lost the connection holding the retention lock")

    async def pass_once(self) -> int:
        """Remove what is past retention now; how many tasks went."""
        began = time.monotonic()
        cutoff = utcnow() - self._keep
        removed = 0
        while True:
            n = await self._db.remove_finished(cutoff, BATCH)
            removed += n
            if n == 0:
                break
        fires = 0
        while n := await self._db.remove_old_fires(cutoff, BATCH):
            fires += n
        if removed or fires:
            await self._db.vacuum_task_tables()
            self._metrics.removed.inc(removed)
            logger.info(
                "removed %d finished tasks and %d fire records older than %s in %.1fs",
                removed, fires, cutoff.isoformat(), time.monotonic() - began,
                extra={"action": "retention_pass", "count": removed})
        return removed
