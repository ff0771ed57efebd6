"""Natural batching: a lone item goes out at once; items that arrive while a send
is in flight wait for it and go out together in the next send."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
logger = logging.getLogger(__name__)


class Batcher(Generic[T]):
    """Collects items and hands them to ``send`` in batches of at most ``max_size``.

    ``send`` must either deliver the whole batch or raise; on an exception the batch
    goes back to the front of the buffer, in order, and is retried after ``retry_delay``.
    ``limit`` bounds the buffer: ``put`` waits while it is full.
    """

    def __init__(
        self,
        send: Callable[[list[T]], Awaitable[None]],
        *,
        max_size: int,
        limit: int,
        retry_delay: float = 0.2,
        name: str = "batcher",
    ) -> None:
        self._send = send
        self._max = max_size
        self._limit = limit
        self._retry_delay = retry_delay
        self._name = name
        self._buffer: deque[T] = deque()
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._failures = 0
        self._sending: list[T] = []

    def __len__(self) -> int:
        return len(self._buffer)

    def pending(self) -> list[T]:
        """Everything not yet delivered: buffered, and the batch being sent."""
        return [*self._sending, *self._buffer]

    def has_room(self) -> bool:
        """Whether ``put`` would not wait now (``put_nowait`` then does the same)."""
        return len(self._buffer) < self._limit

    async def put(self, item: T) -> None:
        while len(self._buffer) >= self._limit:
            self._room.clear()
            await self._room.wait()
        self.put_nowait(item)

    def put_nowait(self, item: T) -> None:
        self._buffer.append(item)
        self._idle.clear()
        self._ready.set()

    async def drained(self) -> None:
        """Wait until everything put so far has been sent."""
        await self._idle.wait()

    async def run(self) -> None:
        while True:
            await self._ready.wait()
            if not self._buffer:
                self._ready.clear()
                self._idle.set()
                continue
            batch = [self._buffer.popleft() for _ in range(min(self._max, len(self._buffer)))]
            self._sending = batch
            try:
                await self._send(batch)
            except asyncio.CancelledError:
                self._buffer.extendleft(reversed(batch))
                raise
            except Exception as exc:
                self._buffer.extendleft(reversed(batch))
                self._failures += 1
                # One warning per outage, not one per retry.
                logger.log(
                    logging.WARNING if self._failures == 1 else logging.DEBUG,
                    "%s: send of %d failed (%d buffered), retrying: %s", self._name,
                    len(batch), len(self._buffer), exc,
                    extra={"action": "batch_send_failed", "batcher": self._name},
                )
                await asyncio.sleep(self._retry_delay)
                continue
            finally:
                self._sending = []
            if self._failures:
                logger.info(
                    "%s: delivering again after %d failed tries", self._name, self._failures,
                    extra={"action": "batch_send_restored", "batcher": self._name},
                )
                self._failures = 0
            if len(self._buffer) < self._limit:
                self._room.set()
            if not self._buffer:
                self._ready.clear()
                self._idle.set()
