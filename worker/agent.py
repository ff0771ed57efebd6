"""The worker's side of its region stream: take assignments, run them, report back.

One persistent bidirectional stream; reconnects with capped, jittered backoff. Events
wait in an ordered buffer while the stream is down and go out on the next one.

With TLS, a certificate reload (SIGHUP) ends the stream on purpose and opens a new one
with the new credentials at once: the worker stops writing and half-closes, reads what
the region still sends until the region ends its side, then says hello again with what
it runs, as after any reconnect. Nothing is lost: results not yet acknowledged are sent
again, and the region keeps a reconnecting worker's tasks for it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import Any

import grpc

from strata.common import channels
from strata.common.batching import Batcher
from strata.common.breaker import CircuitBreaker, RetryPolicy
from strata.common.errors import CircuitOpen, StrataError, Unavailable
from strata.common.events import TaskRef
from strata.common.retry import Backoff, of_type, retrying
from strata.common.settings import WorkerSettings
from strata.common.tls import Tls
from strata.proto import strata_pb2 as pb
from strata.proto import strata_pb2_grpc as rpc
from strata.worker.runner import Runner

logger = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT_S = 5.0
RECONNECT = Backoff(initial_s=0.05, max_s=5.0, jitter_s=0.05, healthy_after_s=5.0)
EVENT_BATCH = 1000


class NotConnected(Exception):
    pass


class LinkLost(Exception):
    """The stream to the region ended; the agent connects again."""


class Agent:
    def __init__(self, settings: WorkerSettings, runner: Runner, worker_id: str, *,
                 tls: Tls | None = None) -> None:
        self.id = worker_id
        self._settings = settings
        self._tls = tls
        # Set by a TLS reload: end the current stream and open one with the new files.
        self._renew = asyncio.Event()
        self._renewing = False
        if tls is not None:
            tls.on_reload(self._renew.set)
        self._runner = runner
        self._running: dict[TaskRef, asyncio.Task[None]] = {}
        self._call: grpc.aio.StreamStreamCall[pb.WorkerMessage, pb.RegionMessage] | None = None
        self._write_lock = asyncio.Lock()
        self.events: Batcher[pb.TaskEvent] = Batcher(
            self._send_events, max_size=EVENT_BATCH,
            limit=max(4 * settings.concurrency, EVENT_BATCH), retry_delay=0.05, name="events",
        )
        self.breaker = CircuitBreaker(
            f"{worker_id}->region", failure_threshold=3,
            reset_timeout_s=settings.heartbeat_interval.total_seconds(),
            retry=RetryPolicy(attempts=2, initial_s=0.05, max_wait_s=0.2, deadline_s=10),
        )
        # Event batches written but not yet acknowledged by the region: a stream that
        # breaks may have lost them, so they are sent again on the next one.
        self._unacked: deque[tuple[int, list[pb.TaskEvent]]] = deque()
        # STARTED events still waiting in the buffer: a result that is ready before its
        # STARTED went out takes its place, so a fast task costs one event, not two.
        self._unsent_started: dict[TaskRef, pb.TaskEvent] = {}
        self._seq = 0
        self.health_address = ""
        self.connected = False
        self.draining = False
        self.completed = 0

    @property
    def capacity(self) -> int:
        return self._settings.concurrency

    @property
    def running(self) -> int:
        return len(self._running)

    # ---- the stream -----------------------------------------------------------------

    async def run(self) -> None:
        """Keep a stream to the region, reconnecting with backoff that starts over once
        a stream has stayed up a while. An open breaker is waited out, not counted as a
        new failure. A stream ended for new credentials is opened again at once."""
        while True:
            async for attempt in retrying(
                "region link", RECONNECT, retry_on=of_type(LinkLost),
                action="region_link_lost", extra={"worker": self.id},
            ):
                with attempt:
                    await self._connected_session()

    async def _connected_session(self) -> None:
        """Returns only when the stream was ended to take up new credentials."""
        self._renew.clear()  # a new stream takes the current files anyway
        self._renewing = False
        try:
            await self._session()
            if self._renewing:
                logger.info(
                    "stream to region %s ended for new TLS credentials; reconnecting",
                    self._settings.region,
                    extra={"action": "region_stream_renewed", "worker": self.id},
                )
                return
            raise LinkLost("the region closed the stream")
        except CircuitOpen as exc:
            logger.debug("region breaker open", extra={"action": "region_breaker_wait"})
            await asyncio.sleep(max(exc.retry_after_s, RECONNECT.initial_s))
            raise LinkLost(str(exc)) from exc
        except (grpc.aio.AioRpcError, StrataError, TimeoutError) as exc:
            why = f"{exc.code().name} {exc.details()}" \
                if isinstance(exc, grpc.aio.AioRpcError) else repr(exc)
            raise LinkLost(why) from exc
        finally:
            self.connected = False
            self._call = None

    async def _handshake(self, channel: grpc.aio.Channel) -> tuple[Any, float]:
        call = rpc.RegionStub(channel).Connect()
        try:
            await call.write(
                pb.WorkerMessage(
                    hello=pb.WorkerHello(
                        worker_id=self.id,
                        capacity=0 if self.draining else self.capacity,
                        health_address=self.health_address,
                        running=[pb.TaskRef(task_id=r.id, attempt=r.attempt)
                                 for r in self._holding()],
                    )
                )
            )
            async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                welcome = await call.read()
        except BaseException:
            call.cancel()
            raise
        if welcome is grpc.aio.EOF:
            raise Unavailable("region closed the stream before welcoming us")
        interval = welcome.welcome.heartbeat_interval_s or (
            self._settings.heartbeat_interval.total_seconds()
        )
        return call, interval

    async def _session(self) -> None:
        async with channels.channel(self._settings.region, tls=self._tls,
                                    server_name=self._settings.tls_server_name) as channel:
            call, interval = await self.breaker.call(lambda: self._handshake(channel))
            async with self._write_lock:
                for seq, events in list(self._unacked):
                    await call.write(pb.WorkerMessage(events=pb.EventBatch(events=events,
                                                                           seq=seq)))
            self._call = call
            self.connected = True
            logger.info(
                "connected to region %s", self._settings.region,
                extra={"action": "region_connected", "worker": self.id},
            )
            beats = asyncio.create_task(self._beat(interval), name="beats")
            renewal = asyncio.create_task(self._end_for_renewal(call), name="renewal")
            try:
                while (message := await call.read()) is not grpc.aio.EOF:
                    body = message.WhichOneof("body")
                    if body == "assign":
                        for spec in message.assign.tasks:
                            self._start(spec)
                        self._acked(message.assign.ack)
                    elif body == "cancel":
                        for ref in message.cancel.tasks:
                            task = self._running.get(TaskRef(ref.task_id, ref.attempt))
                            if task is not None:
                                task.cancel()
                    elif body == "ack":
                        self._acked(message.ack.seq)
            finally:
                beats.cancel()
                renewal.cancel()
                await asyncio.gather(beats, renewal, return_exceptions=True)

    def _acked(self, seq: int) -> None:
        """Every event batch up to ``seq`` is safe with the region (0: none said)."""
        while self._unacked and self._unacked[0][0] <= seq:
            self._unacked.popleft()

    async def _end_for_renewal(self, call: Any) -> None:
        """Once told to renew: stop writing on this stream (writes wait for the next) and
        half-close it; the region then ends its side, after what it still had for us."""
        await self._renew.wait()
        async with self._write_lock:
            self._renewing = True
            if self._call is call:
                self._call = None
                self.connected = False
            await call.done_writing()

    def _holding(self) -> set[TaskRef]:
        """What this worker still answers for: running, or finished with the result not
        yet delivered. The region keeps these for us instead of giving them away."""
        unsent = [*self.events.pending(), *(e for _, batch in self._unacked for e in batch)]
        results = {TaskRef(e.task_id, e.attempt) for e in unsent
                   if e.type != pb.EVENT_TYPE_STARTED}
        return set(self._running) | results

    async def _write(self, message: pb.WorkerMessage) -> None:
        call = self._call
        if call is None:
            raise NotConnected("no region stream")
        async with self._write_lock:
            await call.write(message)

    async def _beat(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self._write(
                pb.WorkerMessage(beat=pb.WorkerBeat(running=self.running, draining=self.draining))
            )

    async def _send_events(self, events: list[pb.TaskEvent]) -> None:
        # Before any await: from here on these STARTED events are no longer ours to change.
        for event in events:
            if event.type == pb.EVENT_TYPE_STARTED:
                self._unsent_started.pop(TaskRef(event.task_id, event.attempt), None)
        self._seq += 1
        seq = self._seq
        await self._write(pb.WorkerMessage(events=pb.EventBatch(events=events, seq=seq)))
        self._unacked.append((seq, events))

    # ---- running tasks -------------------------------------------------------------------

    def _start(self, spec: pb.TaskSpec) -> None:
        ref = TaskRef(spec.id, spec.attempt)
        if ref in self._running:
            return  # the region re-sent what we already run (reconnect race)
        if self.draining or self.running >= self.capacity:
            self.events.put_nowait(
                pb.TaskEvent(task_id=spec.id, attempt=spec.attempt,
                             type=pb.EVENT_TYPE_RETURNED, worker_id=self.id)
            )
            return
        task = asyncio.create_task(self._execute(spec), name=f"task-{spec.id}")
        self._running[ref] = task
        task.add_done_callback(lambda _: self._running.pop(ref, None))

    async def _execute(self, spec: pb.TaskSpec) -> None:
        ref = TaskRef(spec.id, spec.attempt)
        started_at = time.time()
        started = pb.TaskEvent(task_id=spec.id, attempt=spec.attempt,
                               type=pb.EVENT_TYPE_STARTED, worker_id=self.id,
                               started_at=started_at)
        self._unsent_started[ref] = started
        self.events.put_nowait(started)
        try:
            outcome = await self._runner.run(spec.kind, spec.payload_json, spec.timeout_s,
                                             parent_outputs_json=spec.parent_outputs_json)
        except asyncio.CancelledError:
            self._unsent_started.pop(ref, None)
            # Stopped (by the region, or by our shutdown): say so, which frees the slot
            # the region keeps for it. A still-current attempt goes back to pending; a
            # stale or cancelled one matches nothing at the master.
            self.events.put_nowait(
                pb.TaskEvent(task_id=spec.id, attempt=spec.attempt,
                             type=pb.EVENT_TYPE_RETURNED, worker_id=self.id)
            )
            raise
        self.completed += 1
        result = pb.TaskEvent(
            task_id=spec.id, attempt=spec.attempt,
            type=pb.EVENT_TYPE_SUCCEEDED if outcome.ok else pb.EVENT_TYPE_FAILED,
            worker_id=self.id, started_at=started_at, finished_at=time.time(),
            has_exit_code=outcome.exit_code is not None, exit_code=outcome.exit_code or 0,
            output=outcome.output, error=outcome.error or "", stderr=outcome.stderr,
            output_truncated=outcome.output_truncated,
            stderr_truncated=outcome.stderr_truncated,
            killed_processes=outcome.killed_processes, timed_out=outcome.timed_out,
        )
        pending_started = self._unsent_started.pop(ref, None)
        if pending_started is not None:
            result.start_unreported = True
            pending_started.CopyFrom(result)  # the result goes out in the STARTED's place
        else:
            self.events.put_nowait(result)

    async def drain(self, grace_s: float) -> None:
        """Stop taking work, let running tasks finish within the grace, return the rest."""
        self.draining = True
        if self._call is not None:
            # Best effort: if the stream is down the region learns it from the hello.
            with contextlib.suppress(grpc.aio.AioRpcError, NotConnected,
                                     asyncio.InvalidStateError):
                await self._write(
                    pb.WorkerMessage(beat=pb.WorkerBeat(running=self.running, draining=True))
                )
        pending = list(self._running.values())
        if pending:
            _, late = await asyncio.wait(pending, timeout=grace_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
