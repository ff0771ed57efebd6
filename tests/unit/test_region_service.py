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


def _results(seq: int, *task_ids: str) -> pb.WorkerMessage:
    return pb.WorkerMessage(events=pb.EventBatch(seq=seq, events=[
        pb.TaskEvent(task_id=t, attempt=1, type=pb.EVENT_TYPE_SUCCEEDED) for t in task_ids]))


class ScriptedContext(StreamContext):
    """As StreamContext; ``before`` runs ahead of reading the message of that index."""

    def __init__(self, messages: list[pb.WorkerMessage], then: Exception,
                 before: dict[int, Any]) -> None:
        super().__init__(messages, then)
        self._before = before
        self._read = 0

    async def read(self) -> pb.WorkerMessage:
        hook = self._before.get(self._read)
        self._read += 1
        if hook is not None:
            hook()
        return await super().read()


async def test_results_are_acknowledged_with_the_tasks_that_fill_their_slots() -> None:
    coordinator = Coordinator(name="r", queue_factor=1.0, on_capacity_change=lambda: None,
                              hand_back=lambda specs, reason: None)
    service = RegionService(coordinator, Batcher(_noop, max_size=10, limit=10), 1.0)
    tasks = [pb.TaskSpec(id=f"t{n}", attempt=1, kind="noop", payload_json="{}")
             for n in range(4)]
    context = ScriptedContext(
        [pb.WorkerMessage(hello=pb.WorkerHello(worker_id="w1", capacity=2)),
         _results(1, "t0", "t1"),   # frees two slots: t2 and t3 fill them
         _results(2, "t2")],        # nothing left to send: acknowledged on its own
        then=RuntimeError("the worker went away"),
        before={1: lambda: coordinator.accept(tasks)})
    await service.Connect(None, context)  # type: ignore[arg-type]
    sent = [(m.WhichOneof("body"), [t.id for t in m.assign.tasks], m.assign.ack, m.ack.seq)
            for m in context.written]
    assert sent == [("welcome", [], 0, 0),
                    ("assign", ["t0", "t1"], 0, 0),
                    ("assign", ["t2", "t3"], 1, 0),
                    ("ack", [], 0, 2)]
