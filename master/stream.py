"""The event stream behind ``GET /v1/events``: task state changes, from any master.

Every statement that changes a task's state publishes it (a trigger, migration 0008),
in batches, with NOTIFY on ``strata_events``, but only while some master has a
subscriber: such a master keeps a row in ``event_listeners``, renewed, that expires when
it dies. Each master LISTENs while it has subscribers (and for a while after, so a client
that reconnects can resume), keeps the last events in a ring, and hands each subscriber
those that match its filter. A subscriber that falls behind never slows anything: its
buffer is bounded, and when it fills the subscriber is told and dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from strata.common.errors import DatabaseUnavailable, StrataError, Unavailable
from strata.common.retry import Backoff, of_type, retrying
from strata.master.db import Database

logger = logging.getLogger(__name__)

RECONNECT = Backoff(initial_s=0.2, max_s=5.0, jitter_s=0.1, healthy_after_s=10.0)


@dataclass(slots=True)
class TaskEvent:
    event_id: str
    task: str
    state: str
    attempt: int
    region: str | None
    worker_id: str | None
    at: float
    _wire: bytes | None = None

    @property
    def data(self) -> dict[str, object]:
        return {
            "id": self.task, "state": self.state, "attempt": self.attempt,
            "region": self.region, "worker_id": self.worker_id,
            "at": datetime.fromtimestamp(self.at, UTC).isoformat().replace("+00:00", "Z"),
        }

    @property
    def wire(self) -> bytes:
        """The event as Server-Sent Events put it on the wire, made once whatever the
        number of subscribers (its JSON has no line breaks: one data line)."""
        if self._wire is None:
            self._wire = (f"id: {self.event_id}\r\nevent: task\r\n"
                          f"data: {json.dumps(self.data)}\r\n\r\n").encode()
        return self._wire


def parse_batch(payload: str) -> list[TaskEvent]:
    """``<seq> [[id, state, attempt, region, worker_id, at], ...]`` as events, whose ids
    (``<seq>-<n>``) are the same on every master."""
    seq, _, body = payload.partition(" ")
    return [
        TaskEvent(f"{seq}-{n}", row[0], row[1], row[2], row[3], row[4], float(row[5]))
        for n, row in enumerate(json.loads(body))
    ]


@dataclass(frozen=True, slots=True)
class Filter:
    tasks: frozenset[str] = frozenset()
    state: str | None = None
    region: str | None = None

    def matches(self, event: TaskEvent) -> bool:
        return ((not self.tasks or event.task in self.tasks)
                and (self.state is None or event.state == self.state)
                and (self.region is None or event.region == self.region))


class Dropped(StrataError):
    """The subscriber's buffer filled: it missed events and is let go."""


@dataclass(eq=False)
class Subscription:
    filter: Filter
    capacity: int
    # Set at subscribe: Last-Event-ID was given but is no longer (or never was) in the
    # ring, so events between it and the first one sent are unknown.
    missed: bool = False
    _queue: deque[TaskEvent] = field(default_factory=deque)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _dropped: str | None = None

    def offer(self, event: TaskEvent) -> None:
        if self._dropped is not None or not self.filter.matches(event):
            return
        if len(self._queue) >= self.capacity:
            self.drop(f"it fell more than {self.capacity} events behind")
            return
        self._queue.append(event)
        self._wake.set()

    @property
    def dropped(self) -> bool:
        return self._dropped is not None

    def drop(self, reason: str) -> None:
        if self._dropped is None:
            self._dropped = reason
            self._queue.clear()
        self._wake.set()

    async def next(self) -> list[TaskEvent]:
        """The events waiting, at least one; raises Dropped once the buffer has filled
        (or the stream behind it broke)."""
        while not self._queue:
            if self._dropped is not None:
                raise Dropped(self._dropped)
            self._wake.clear()
            await self._wake.wait()
        if self._dropped is not None:
            raise Dropped(self._dropped)
        out = list(self._queue)
        self._queue.clear()
        return out


class EventHub:
    def __init__(self, db: Database, master: str, *, window: int = 50_000,
                 buffer: int = 50_000, linger_s: float = 60.0, renew_s: float = 10.0) -> None:
        self._db = db
        self._master = master
        self._window = window
        self.buffer = buffer
        self._linger_s = linger_s
        self._renew_s = renew_s
        self._ring: deque[TaskEvent] = deque(maxlen=window)
        self._subscribers: set[Subscription] = set()
        self._joining = 0  # subscribers waiting for the stream to be on
        self._wanted = asyncio.Event()  # someone subscribed: listen
        self._ready = asyncio.Event()  # listening, and registered: events flow
        self._last_left = time.monotonic()
        # Set while the master neither listens nor publishes (no subscriber for a window).
        self.idle = asyncio.Event()
        self.idle.set()

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    async def subscribe(self, filter: Filter, last_event_id: str | None, *,
                        timeout_s: float = 10.0) -> Subscription:
        """A subscription that receives every matching change committed from now on,
        after those in the ring that follow ``last_event_id``. Returns once events flow,
        so a change made after it returns is never missed."""
        sub = Subscription(filter, self.buffer)
        self._joining += 1
        self._wanted.set()
        try:
            async with asyncio.timeout(timeout_s):
                await self._ready.wait()
        except TimeoutError:
            raise Unavailable("the event stream is not available: the database does not "
                              "answer", retry_after_s=1.0) from None
        finally:
            self._joining -= 1
        self._subscribers.add(sub)
        if last_event_id is not None:
            self._replay(sub, last_event_id)
        return sub

    def _replay(self, sub: Subscription, last_event_id: str) -> None:
        ring = list(self._ring)
        for index in range(len(ring) - 1, -1, -1):
            if ring[index].event_id == last_event_id:
                later = [e for e in ring[index + 1:] if sub.filter.matches(e)]
                if len(later) > sub.capacity:
                    # More than it may hold: replayed, they would drop it again at
                    # once. It is told it missed events, and goes on from now.
                    sub.missed = True
                    return
                for event in later:
                    sub.offer(event)
                return
        sub.missed = True

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)
        if not self._subscribers:
            self._last_left = time.monotonic()

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        try:
            events = parse_batch(str(payload))
        except (ValueError, IndexError, TypeError):
            logger.warning("an event batch that does not parse: %.200s", payload,
                           extra={"action": "event_batch_unparsed"})
            return
        self._fan_out(events)

    def _fan_out(self, events: Iterable[TaskEvent]) -> None:
        subs = tuple(self._subscribers)
        for event in events:
            self._ring.append(event)
            for sub in subs:
                sub.offer(event)
        for sub in subs:
            if sub.dropped:  # gone now, though its stream may take a while to close
                self.unsubscribe(sub)

    def _idle(self) -> bool:
        return (not self._subscribers and not self._joining
                and time.monotonic() - self._last_left > self._linger_s)

    def close(self, reason: str) -> None:
        """End every stream (the master is stopping, or the stream has a gap): every
        subscriber is told and let go; a resume across the gap finds its id gone from
        the ring and is told it missed events."""
        self._ready.clear()
        self._ring.clear()
        for sub in tuple(self._subscribers):
            sub.drop(reason)
            self._subscribers.discard(sub)

    async def run(self) -> None:
        """Listen while there are subscribers (and ``linger_s`` after the last leaves)."""
        while True:
            await self._wanted.wait()
            async for attempt in retrying(
                "event stream", RECONNECT, retry_on=of_type(DatabaseUnavailable),
                action="event_stream_interrupted",
            ):
                with attempt:
                    try:
                        await self._listen()
                    except DatabaseUnavailable:
                        self.close("the master lost its link to the database")
                        raise
                    finally:
                        with contextlib.suppress(StrataError):
                            await self._db.unregister_event_listener(self._master)
            if not self._wanted.is_set():
                self.idle.set()

    async def _listen(self) -> None:
        self.idle.clear()
        async with self._db.listen_events(self._on_notify) as alive:
            await self._db.register_event_listener(self._master, 3 * self._renew_s)
            renewed = time.monotonic()
            self._ready.set()
            logger.info("event stream on", extra={"action": "event_stream_on"})
            while not self._idle():
                if not alive():
                    raise DatabaseUnavailable("the LISTEN connection closed")
                await asyncio.sleep(1.0)
                if time.monotonic() - renewed >= self._renew_s:
                    await self._db.register_event_listener(self._master, 3 * self._renew_s)
                    renewed = time.monotonic()
            # No await from the check to here: a subscriber that comes now finds
            # _wanted set again after this, and the loop listens anew.
            self._ready.clear()
            self._wanted.clear()
            self._ring.clear()
            logger.info("event stream off: no subscribers", extra={"action": "event_stream_off"})
