"""The region's gRPC face: the master delegates and cancels; workers hold a stream.

With mutual TLS, Delegate and Cancel are taken only from the master's certificate
(``strata:master``) and Connect only from a worker's (``strata:worker``); any other
certificate of the CA (another region's, a client's) is refused PERMISSION_DENIED."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from strata.common.batching import Batcher
from strata.common.tls import has_role, require
from strata.proto import strata_pb2 as pb
from strata.regional.coordinator import Coordinator, WorkerConn, ref_of

logger = logging.getLogger(__name__)

_RESULTS = (pb.EVENT_TYPE_SUCCEEDED, pb.EVENT_TYPE_FAILED, pb.EVENT_TYPE_RETURNED)


class RegionService:
    def __init__(
        self, coordinator: Coordinator, events: Batcher[pb.TaskEvent],
        heartbeat_interval_s: float, *, mtls: bool = False,
    ) -> None:
        self._mtls = mtls
        self._coordinator = coordinator
        self._events = events
        self._heartbeat_interval_s = heartbeat_interval_s

    async def Delegate(
        self, request: pb.DelegateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.DelegateReply:
        if self._mtls:
            await require(context, has_role("master"), "the master", "Delegate")
        accepted, rejected = self._coordinator.accept(request.tasks)
        if rejected:
            logger.info(
                "rejected %d of %d delegated tasks", len(rejected), len(request.tasks),
                extra={"action": "delegate_rejected", "region": self._coordinator.name},
            )
        return pb.DelegateReply(
            accepted=[pb.TaskRef(task_id=s.id, attempt=s.attempt) for s in accepted],
            rejected=[pb.TaskRef(task_id=s.id, attempt=s.attempt) for s in rejected],
        )

    async def Cancel(
        self, request: pb.CancelRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CancelReply:
        if self._mtls:
            await require(context, has_role("master"), "the master", "Cancel")
        count = self._coordinator.cancel(ref_of(r) for r in request.tasks)
        return pb.CancelReply(cancelled=count)

    async def Connect(
        self, request_iterator: AsyncIterator[pb.WorkerMessage],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        # The first message is read before a caller is refused: a refusal that races
        # the caller's first write can reach it as INTERNAL instead of what it is.
        first = await context.read()
        if self._mtls:
            await require(context, has_role("worker"), "workers", "Connect")
        if first is grpc.aio.EOF or first.WhichOneof("body") != "hello":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "first message must be hello")
            return
        hello = first.hello
        outbox: asyncio.Queue[pb.RegionMessage | None] = asyncio.Queue()
        conn = WorkerConn(
            id=hello.worker_id, capacity=hello.capacity, health_address=hello.health_address,
            send=outbox.put_nowait, close=lambda: outbox.put_nowait(None),
        )
        await context.write(
            pb.RegionMessage(welcome=pb.Welcome(heartbeat_interval_s=self._heartbeat_interval_s))
        )
        self._coordinator.join(conn, still_running=[ref_of(r) for r in hello.running])
        reader = asyncio.create_task(self._read(conn, context), name=f"read-{conn.id}")
        reason = "stream closed"
        try:
            while (message := await outbox.get()) is not None:
                await context.write(message)
        except Exception as exc:
            reason = f"stream broke: {exc!r}"
            raise
        finally:
            reader.cancel()
            (outcome,) = await asyncio.gather(reader, return_exceptions=True)
            if isinstance(outcome, Exception):
                # The reader died of something it did not expect: say so, not just that
                # the worker went away.
                reason = f"reading its stream failed: {outcome!r}"
                logger.error(
                    "reading worker %s's stream failed", conn.id, exc_info=outcome,
                    extra={"action": "worker_stream_failed", "worker": conn.id},
                )
            self._coordinator.disconnect(conn.id, reason, conn=conn)

    async def _read(self, conn: WorkerConn, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        try:
            while (message := await context.read()) is not grpc.aio.EOF:
                body = message.WhichOneof("body")
                if body == "beat":
                    conn.beat(message.beat.running)
                    if message.beat.draining and conn.capacity:
                        self._coordinator.drain(conn.id)
                elif body == "events":
                    conn.beat(conn.running)
                    done = []
                    for event in message.events.events:
                        if event.type in _RESULTS:
                            ref = ref_of(event)
                            done.append(ref)
                            if not self._coordinator.first_result(ref):
                                continue  # replayed after a broken stream: sent already
                        # Waits when the buffer to the master is full: back-pressure
                        # reaches the worker instead of memory growing.
                        if self._events.has_room():
                            self._events.put_nowait(event)
                        else:
                            await self._events.put(event)
                    # In our buffer now, delivered to the master from there: acknowledged
                    # with the tasks that fill the freed slots, or on its own.
                    conn.ack = message.events.seq
                    if done:
                        self._coordinator.finished(conn.id, done)
                    if conn.ack:
                        conn.send(pb.RegionMessage(ack=pb.Ack(seq=conn.ack)))
                        conn.ack = 0
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
            logger.info(
                "worker %s stream ended: %s", conn.id, exc,
                extra={"action": "worker_stream_ended", "worker": conn.id},
            )
        finally:
            conn.close()
