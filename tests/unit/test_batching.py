"""Natural batching: what goes out together, in what order, and what happens on failure."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from strata.common.batching import Batcher


@dataclass
class Sink:
    """A send that records batches; it can be held (to keep a send in flight) or made to
    fail a number of times."""

    batches: list[list[int]] = field(default_factory=list)
    attempts: list[list[int]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    hold: bool = False
    failures: int = 0
    entered: asyncio.Queue[list[int]] = field(default_factory=asyncio.Queue)
    sent: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.release.set()

    async def send(self, batch: list[int]) -> None:
        self.attempts.append(list(batch))
        self.entered.put_nowait(list(batch))
        if self.hold:
            await self.release.wait()
        if self.failures:
            self.failures -= 1
            raise ConnectionError("link down")
        self.batches.append(list(batch))
        self.sent.set()

    def block(self) -> None:
        self.hold = True
        self.release.clear()

    def unblock(self) -> None:
        self.release.set()

    @property
    def items(self) -> list[int]:
        return [item for batch in self.batches for item in batch]


@pytest.fixture
def sink() -> Sink:
    return Sink()


@contextlib.asynccontextmanager
async def running(batcher: Batcher[int]) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(batcher.run(), name="batcher-under-test")
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def let_others_run(turns: int = 10) -> None:
    """Give every ready task a few turns, to show that something does *not* happen."""
    for _ in range(turns):
        await asyncio.sleep(0)


async def test_a_lone_item_goes_out_at_once(sink: Sink):
    batcher = Batcher(sink.send, max_size=100, limit=1000, retry_delay=0)
    async with running(batcher):
        await batcher.put(1)
        assert await sink.entered.get() == [1]
        await batcher.drained()
    assert sink.batches == [[1]]
    assert len(batcher) == 0


async def test_has_room_says_whether_put_would_wait(sink: Sink):
    batcher = Batcher(sink.send, max_size=100, limit=2, retry_delay=0)
    batcher.put_nowait(1)
    assert batcher.has_room()
    batcher.put_nowait(2)
    assert not batcher.has_room()
    put = asyncio.create_task(batcher.put(3))
    await let_others_run()
    assert not put.done()  # as has_room said: it waits for room
    async with running(batcher):
        await put
        await batcher.drained()
    assert [i for b in sink.batches for i in b] == [1, 2, 3]


async def test_items_put_during_a_send_go_out_together_next(sink: Sink):
    batcher = Batcher(sink.send, max_size=100, limit=1000, retry_delay=0)
    sink.block()
    async with running(batcher):
        await batcher.put(1)
        assert await sink.entered.get() == [1]  # first send now in flight, held
        for item in range(2, 7):
            await batcher.put(item)
        assert len(batcher) == 5
        sink.unblock()
        assert await sink.entered.get() == [2, 3, 4, 5, 6]
        await batcher.drained()
    assert sink.batches == [[1], [2, 3, 4, 5, 6]]


async def test_max_size_is_respected(sink: Sink):
    batcher = Batcher(sink.send, max_size=3, limit=1000, retry_delay=0)
    sink.block()
    async with running(batcher):
        await batcher.put(0)
        await sink.entered.get()
        for item in range(1, 9):
            batcher.put_nowait(item)
        sink.unblock()
        await batcher.drained()
    assert sink.batches == [[0], [1, 2, 3], [4, 5, 6], [7, 8]]


async def test_failed_send_is_retried_in_order_without_loss(sink: Sink):
    batcher = Batcher(sink.send, max_size=3, limit=1000, retry_delay=0)
    sink.failures = 2
    sink.block()
    async with running(batcher):
        await batcher.put(0)
        assert await sink.entered.get() == [0]
        for item in range(1, 6):
            batcher.put_nowait(item)
        sink.unblock()
        await batcher.drained()
    # [0] failed twice and went back to the front each time, ahead of what queued behind.
    assert sink.attempts[:3] == [[0], [0, 1, 2], [0, 1, 2]]
    assert sink.items == [0, 1, 2, 3, 4, 5]
    assert sink.batches == [[0, 1, 2], [3, 4, 5]]


async def test_failed_send_logs_an_action(sink: Sink, caplog: pytest.LogCaptureFixture):
    batcher = Batcher(sink.send, max_size=10, limit=10, retry_delay=0, name="reports")
    sink.failures = 1
    async with running(batcher):
        await batcher.put(1)
        await batcher.drained()
    failed = [r for r in caplog.records if getattr(r, "action", None) == "batch_send_failed"]
    assert len(failed) == 1
    assert getattr(failed[0], "batcher", None) == "reports"
    assert sink.batches == [[1]]


async def test_put_waits_while_the_buffer_is_full(sink: Sink):
    batcher = Batcher(sink.send, max_size=2, limit=2, retry_delay=0)
    sink.block()
    async with running(batcher):
        await batcher.put(0)
        await sink.entered.get()  # 0 in flight, buffer empty
        await batcher.put(1)
        await batcher.put(2)  # buffer at its limit
        blocked = asyncio.create_task(batcher.put(3), name="put-over-limit")
        try:
            await let_others_run()
            assert not blocked.done()
            assert len(batcher) == 2

            sink.unblock()
            await blocked
            await batcher.drained()
        finally:
            blocked.cancel()
    assert sink.items == [0, 1, 2, 3]
    assert sink.batches[:2] == [[0], [1, 2]]


async def test_drained_waits_for_everything(sink: Sink):
    batcher = Batcher(sink.send, max_size=2, limit=100, retry_delay=0)
    sink.block()
    async with running(batcher):
        await batcher.put(0)
        await sink.entered.get()
        for item in range(1, 5):
            batcher.put_nowait(item)
        drained = asyncio.create_task(batcher.drained(), name="drained")
        try:
            await let_others_run()
            assert not drained.done()
            sink.unblock()
            await drained
        finally:
            drained.cancel()
        assert sink.items == [0, 1, 2, 3, 4]
        assert len(batcher) == 0


async def test_drained_returns_at_once_when_nothing_was_put(sink: Sink):
    batcher = Batcher(sink.send, max_size=2, limit=100, retry_delay=0)
    await batcher.drained()
    assert sink.attempts == []


async def test_cancel_mid_send_keeps_the_batch(sink: Sink):
    batcher = Batcher(sink.send, max_size=10, limit=100, retry_delay=0)
    sink.block()
    async with running(batcher) as task:
        await batcher.put(1)
        await batcher.put(2)
        await sink.entered.get()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert len(batcher) == 2
    # A new runner sends what the cancelled one held, in order.
    sink.unblock()
    async with running(batcher):
        await batcher.drained()
    assert sink.batches == [[1, 2]]
