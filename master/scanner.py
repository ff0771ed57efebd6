"""Claims due tasks and delegates each live region its share in one call.

With several masters, each serves the regions that talk to it (their heartbeats reach
it): a region gets its batches from one scanner, and a master's scans cost what its own
regions do.

Woken by LISTEN/NOTIFY when a task is inserted, by result ingestion and region
heartbeats when capacity frees up, and by a timer for the next future task; the
periodic scan is only the safety net."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
from datetime import datetime

import grpc

from strata.common.errors import CircuitOpen, DatabaseUnavailable
from strata.common.events import TaskRef
from strata.common.retry import Backoff, of_type, retrying
from strata.common.settings import MasterSettings
from strata.common.timeutil import to_unix, utcnow
from strata.master.db import Claimed, Database, Listener, RegionRoom
from strata.master.metrics import MasterMetrics
from strata.master.regions import RegionClients
from strata.proto import strata_pb2 as pb

logger = logging.getLogger(__name__)

DELEGATE_TIMEOUT_S = 2.0
# Tasks coming within the claim horizon made claimable per scan: a short statement even
# when a million come due at once; the scanner goes on until none is left.
PROMOTE_BATCH = 5_000
DB_BACKOFF = Backoff(initial_s=0.05, max_s=2.0, healthy_after_s=10.0)


def shares(rooms: dict[RegionRoom, int], due: int, turn: int = 0) -> dict[RegionRoom, int]:
    """``due`` tasks (fewer than the rooms hold) split over the regions in proportion to
    their rooms, largest remainders first and ties from the ``turn``-th region on: a
    batch smaller than the first region's room is spread over every live region rather
    than taken by one, and no region is sent to claim what another's share took."""
    total = sum(rooms.values())
    order = list(rooms)
    order = order[turn % len(order):] + order[:turn % len(order)]
    exact = {r: due * rooms[r] / total for r in order}
    split = {r: math.floor(exact[r]) for r in order}
    left = due - sum(split.values())
    for r in sorted(order, key=lambda r: split[r] - exact[r]):  # stable: ties in order
        if left <= 0:
            break
        split[r] += 1
        left -= 1
    return {r: n for r, n in split.items() if n}


# An event loop's timers may fire up to a millisecond or so early (uvloop keeps time in
# whole milliseconds). A scan that wakes for a task before it is due claims nothing, and
# the lookup after it no longer sees the task as coming (it is due now): the scanner
# would sleep a whole scan interval. So it wakes this much after the due time instead.
TIMER_SLACK_S = 0.002


def idle_timeout(scan_interval_s: float, next_due: datetime | None, now: datetime) -> float:
    """How long an idle scanner sleeps: until just after the next task comes due, at
    most a scan interval. One that came due since it was looked up (between the query
    and ``now``) is scanned for at once, not a whole scan interval late."""
    timeout = scan_interval_s
    if next_due is not None:
        timeout = min(timeout, (next_due - now).total_seconds() + TIMER_SLACK_S)
    return max(timeout, 0.001)


class Scanner:
    def __init__(self, db: Database, regions: RegionClients, settings: MasterSettings,
                 metrics: MasterMetrics | None = None, *, instance: str | None = None
                 ) -> None:
        self._db = db
        # The regions this scanner serves: those that talk to this master (None: all).
        self._instance = instance
        self._metrics = metrics or MasterMetrics()
        self._regions = regions
        self._settings = settings
        self._wake = asyncio.Event()
        # At most one delegation in flight per region, each its own task: a slow or
        # black-holed region delays only its own batch, never the other regions'.
        self._delegating: dict[str, asyncio.Task[int]] = {}
        self._turn = 0
        # The last scan filled every region's share: more is due than there is room for.
        self._backlogged = False
        # The last scan promoted a full batch: more tasks may be near.
        self._promoting = False
        # When tasks are next promoted (loop time): once a scan interval is plenty for
        # tasks promoted a whole claim horizon before they are due, and spares the
        # scans between a round trip each.
        self._promote_at = 0.0
        self._live: list[str] = []  # the live regions at the last scan

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Scan until cancelled; ride out database outages with capped backoff."""
        try:
            await self._run()
        finally:
            # Attempts whose delivery is cut short stay dispatched; the region's next
            # heartbeat shows it does not hold them and they are reclaimed.
            pending = list(self._delegating.values())
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _run(self) -> None:
        async for attempt in retrying(
            "scanner", DB_BACKOFF, retry_on=of_type(DatabaseUnavailable),
            action="scanner_db_lost",
        ):
            with attempt:
                async with self._db.listen(self.wake) as listener:
                    if attempt.retry_state.attempt_number > 1:
                        logger.info("scanner reconnected to the database",
                                    extra={"action": "scanner_db_restored"})
                    await self._loop(listener)

    async def _loop(self, listener: Listener) -> None:
        """Scan whenever woken, and at least every scan interval. Every probe interval
        the LISTEN connection must prove it still delivers, or it is replaced: a silent
        one would leave only the timer to find new work."""
        loop = asyncio.get_running_loop()
        probe_every = self._settings.listen_probe_interval.total_seconds()
        next_probe = loop.time() + probe_every
        while listener.alive():
            if loop.time() >= next_probe:
                await listener.probe(self._settings.db_command_timeout.total_seconds())
                next_probe = loop.time() + probe_every
            self._wake.clear()
            sent = await self.scan_once()
            if sent or self._promoting:
                continue
            timeout = min(await self._idle_timeout(), max(next_probe - loop.time(), 0.001))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
        raise DatabaseUnavailable("the LISTEN connection was lost")

    async def _idle_timeout(self) -> float:
        return idle_timeout(self._settings.scan_interval.total_seconds(),
                            await self._db.next_due(self._live), utcnow())

    async def scan_once(self) -> int:
        """Claim each free region's share and start delivering it; returns how many
        tasks were claimed."""
        now = asyncio.get_running_loop().time()
        if self._promoting or now >= self._promote_at:
            self._promoting = await self._db.promote_near(PROMOTE_BATCH) == PROMOTE_BATCH
            self._promote_at = now + self._settings.scan_interval.total_seconds()
        # A region whose breaker is open gets nothing: its share stays pending for the
        # regions that answer.
        # With a backlog every share is full: what is due need not be counted.
        count_up_to = 0 if self._backlogged else self._settings.claim_batch * max(
            1, len(self._live))
        rooms = await self._db.region_room(self._settings.region_dead_after, self._instance,
                                           count_up_to=count_up_to)
        live = rooms.regions
        self._live = [r.name for r in live]
        ready = [
            r for r in live
            if r.takes_a_batch(self._settings.claim_batch) and r.name not in self._delegating
            and self._regions.breaker(r.name).allows_calls
        ]
        claimed_total = 0
        shares = self._shares(ready, None if self._backlogged else rooms.due)
        # A backlog fills every share: the next scan need not count what is due.
        self._backlogged = bool(shares)
        # Tasks with concurrency keys are due: claims go key by key, within limits.
        for region, quota in shares.items():
            claimed = await self._db.claim(region.name, quota, fair=rooms.keyed_due)
            self._metrics.claimed(region.name, claimed)
            if len(claimed) < quota:
                self._backlogged = False
            if not claimed:
                continue
            claimed_total += len(claimed)
            task = asyncio.create_task(
                self._delegate(region, claimed), name=f"delegate-{region.name}")
            self._delegating[region.name] = task
            task.add_done_callback(functools.partial(self._delegated, region.name))
        return claimed_total

    def _shares(self, ready: list[RegionRoom], due: int | None) -> dict[RegionRoom, int]:
        """How many tasks each region claims this scan (see :func:`shares`)."""
        rooms = {r: min(r.room, self._settings.claim_batch) for r in ready}
        if len(rooms) < 2 or due is None or due >= sum(rooms.values()):
            return rooms
        # Start at a different region each scan: ties go to whoever is first.
        self._turn = (self._turn + 1) % len(ready)
        return shares(rooms, due, self._turn)

    def _delegated(self, region: str, task: asyncio.Task[int]) -> None:
        self._delegating.pop(region, None)
        if not task.cancelled():
            exc = task.exception()
            if exc is not None:
                logger.error(
                    "delivering to %s failed: %r", region, exc, exc_info=exc,
                    extra={"action": "delegate_error", "region": region},
                )
        self.wake()

    async def _delegate(self, region: RegionRoom, claimed: list[Claimed]) -> int:
        lease_until = to_unix(utcnow() + self._settings.region_dead_after)
        request = pb.DelegateRequest(
            tasks=[
                pb.TaskSpec(
                    id=str(c.id), attempt=c.attempt, kind=c.kind, payload_json=c.payload_json,
                    timeout_s=c.timeout_s, lease_expires_at=lease_until,
                    parent_outputs_json=c.parent_outputs_json,
                )
                for c in claimed
            ]
        )
        stub = self._regions.stub(region.name, region.address)
        try:
            reply = await self._regions.breaker(region.name).call(
                lambda: stub.Delegate(request, timeout=DELEGATE_TIMEOUT_S)
            )
        except (grpc.aio.AioRpcError, CircuitOpen) as exc:
            # Undeliverable: back to pending at once, for whichever region answers. If the
            # call did arrive after all, the next claim's new attempt fences it off.
            reason = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
            returned = await self._db.return_to_pending(
                [c.ref for c in claimed], f"delegation to region {region.name} failed: {reason}")
            self._metrics.reclaimed.labels("returned").inc(returned)
            logger.warning(
                "delegation of %d tasks to %s failed (%s); %d back to pending",
                len(claimed), region.name, reason, returned,
                extra={"action": "delegate_failed", "region": region.name},
            )
            return 0
        if reply.rejected:
            refs = [TaskRef.parse(r.task_id, r.attempt) for r in reply.rejected]
            rejected = await self._db.return_to_pending(
                refs, f"region {region.name} had no room for it when it was delegated")
            self._metrics.reclaimed.labels("returned").inc(rejected)
            logger.info(
                "region %s rejected %d tasks", region.name, len(refs),
                extra={"action": "delegate_rejected", "region": region.name},
            )
        logger.debug(
            "delegated %d tasks to %s", len(reply.accepted), region.name,
            extra={"action": "delegated", "region": region.name},
        )
        return len(reply.accepted)

