"""The region's worker stream handler: a reader that dies of something unexpected is
logged with its error, and the worker is marked disconnected with that reason."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from strata.common.batching import Batcher
from strata.proto import strata_pb2 as pb
from strata.regional.coordinator import Coordinator
from strata.regional.service import RegionService


class StreamContext:
    """The servicer side of one worker stream, in memory: the messages a worker would
    send, then an error where the next read would be."""

    def __init__(self, messages: list[pb.WorkerMessage], then: Exception) -> None:
        self._messages = list(messages)
        self._then = then
        self.written: list[pb.RegionMessage] = []

    async def read(self) -> pb.WorkerMessage:
        if self._messages:
            return self._messages.pop(0)
        raise self._then

    async def write(self, message: pb.RegionMessage) -> None:
        self.written.append(message)

    async def abort(self, code: Any, details: str) -> None:
        raise AssertionError(f"aborted: {code} {details}")


async def _noop(batch: list[pb.TaskEvent]) -> None:
    return None


async def test_a_reader_that_dies_is_logged_and_disconnects_the_worker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    coordinator = Coordinator(name="r", queue_factor=1.0, on_capacity_change=lambda: None,
                              hand_back=lambda specs, reason: None)
    service = RegionService(coordinator, Batcher(_noop, max_size=10, limit=10), 1.0)
    hello = pb.WorkerMessage(hello=pb.WorkerHello(worker_id="w1", capacity=2))
    context = StreamContext([hello], then=RuntimeError("boom in the reader"))
    with caplog.at_level(logging.INFO, logger="strata"):
        await service.Connect(None, context)  # type: ignore[arg-type]
    assert context.written[0].WhichOneof("body") == "welcome"
    (failed,) = [r for r in caplog.records if getattr(r, "action", "") == "worker_stream_failed"]
    assert failed.exc_info is not None and "boom in the reader" in str(failed.exc_info[1])
    (gone,) = [r for r in caplog.records if getattr(r, "action", "") == "worker_disconnected"]
    assert "boom in the reader" in gone.getMessage()
    assert coordinator.workers() == []
