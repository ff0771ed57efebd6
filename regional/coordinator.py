"""A region's state: the tasks it holds and the workers it hands them to.

Plain synchronous code on purpose: every method runs to completion on the event
loop, so the queue and the workers' in-flight sets never need a lock. I/O (the
worker streams, the master link) happens elsewhere and is fed through callbacks.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from strata.common.events import TaskRef
from strata.proto import strata_pb2 as pb
from strata.regional.lease import Lease

logger = logging.getLogger(__name__)

# Results forwarded lately, to recognise one sent again after a broken stream; bounded
# so that memory follows the region's capacity, not its history.
REMEMBERED_RESULTS = 50_000
# The most a region holds beyond what its workers run, whatever their pace: memory
# follows capacity.
MAX_QUEUE_FACTOR = 16


class Pace:
    """Tasks finished per second over the last half second, counted in buckets of a
    tenth of a second: a few integer additions a batch, however many tasks it has."""

    BUCKET_S = 0.1
    BUCKETS = 5

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._counts = [0] * self.BUCKETS
        self._bucket = self._now()

    def _now(self) -> int:
        return math.floor(self._clock() / self.BUCKET_S)

    def _roll(self) -> int:
        now = self._now()
        for b in range(max(self._bucket + 1, now - self.BUCKETS + 1), now + 1):
            self._counts[b % self.BUCKETS] = 0
        self._bucket = max(self._bucket, now)
        return self._bucket

    def add(self, n: int) -> None:
        self._counts[self._roll() % self.BUCKETS] += n

    def per_second(self) -> float:
        self._roll()
        return sum(self._counts) / (self.BUCKETS * self.BUCKET_S)


_ref = tuple.__new__  # TaskRef's own __new__ is Python: this is half its cost


def ref_of(spec: pb.TaskSpec | pb.TaskEvent | pb.TaskRef) -> TaskRef:
    if type(spec) is pb.TaskSpec:
        return _ref(TaskRef, (spec.id, spec.attempt))
    return _ref(TaskRef, (spec.task_id, spec.attempt))  # type: ignore[union-attr]


def to_pb(refs: Iterable[TaskRef]) -> list[pb.TaskRef]:
    return [pb.TaskRef(task_id=r.id, attempt=r.attempt) for r in refs]


@dataclass(eq=False)
class WorkerConn:
    """One worker's stream, as the region sees it."""

    id: str
    capacity: int
    health_address: str
    send: Callable[[pb.RegionMessage], None]
    close: Callable[[], None]
    inflight: dict[TaskRef, pb.TaskSpec] = field(default_factory=dict)
    running: int = 0
    # False once its stream closed: it gets nothing new, but keeps what it runs until it
    # reconnects (and says what it still holds) or stays silent past the dead-after.
    connected: bool = True
    # The last event batch read from it, not yet acknowledged: the next message to it
    # carries the acknowledgement.
    ack: int = 0
    last_beat: float = field(default_factory=time.monotonic)
    last_beat_wall: float = field(default_factory=time.time)

    @property
    def free(self) -> int:
        return self.capacity - len(self.inflight)

    def beat(self, running: int) -> None:
        self.running = running
        self.last_beat = time.monotonic()
        self.last_beat_wall = time.time()


class Coordinator:
    def __init__(
        self,
        *,
        name: str,
        queue_factor: float,
        queue_horizon_s: float = 0.0,
        on_capacity_change: Callable[[], None],
        hand_back: Callable[[list[pb.TaskSpec], str], None],
        lease: Lease | None = None,
        on_evicted: Callable[[str, list[pb.TaskSpec], str], None] | None = None,
    ) -> None:
        self.name = name
        self._queue_factor = queue_factor
        self._queue_horizon_s = queue_horizon_s
        self.pace = Pace()
        # Tasks held beyond capacity for the workers' pace, as last advertised to the
        # master: the master claims by what it was told, so the region accepts that much
        # until its next heartbeat says otherwise.
        self._paced = 0
        self._on_capacity_change = on_capacity_change
        self._hand_back = hand_back
        # Told (worker id, its attempts, why) when a worker is gone for good and its
        # attempts are queued again here: the master records them as evicted.
        self._on_evicted = on_evicted
        self._queue: deque[pb.TaskSpec] = deque()
        self._workers: dict[str, WorkerConn] = {}
        self._rr = 0  # index of the worker that gets the next task
        self._lease = lease or Lease()
        self._lease_lapsed = False
        # When each queued attempt was accepted (monotonic): its own lease is judged
        # against the heartbeats taken since.
        self._accepted_at: dict[TaskRef, float] = {}
        # Every attempt the region holds (queued or on a worker): a delegation that
        # arrives twice (a retried call) must not run twice.
        self._held: set[TaskRef] = set()
        self._reported: OrderedDict[TaskRef, None] = OrderedDict()
        self.accepting = True

    # ---- figures the master sees -------------------------------------------------

    @property
    def capacity(self) -> int:
        return sum(w.capacity for w in self._workers.values() if w.connected)

    @property
    def max_outstanding(self) -> int:
        if not self.accepting:
            return 0
        capacity = self.capacity
        return capacity + self._beyond(capacity, self._paced)

    def _beyond(self, capacity: int, paced: int) -> int:
        """Tasks held beyond capacity: queue_factor's share, or the pace's if more."""
        return max(math.ceil(capacity * self._queue_factor),
                   min(paced, capacity * MAX_QUEUE_FACTOR))

    def _paced_now(self) -> int:
        return math.ceil(self.pace.per_second() * self._queue_horizon_s)

    def advertise(self) -> int:
        """max_outstanding for a heartbeat: the workers' pace as it is now."""
        self._paced = self._paced_now()
        return self.max_outstanding

    def _pace_moved(self) -> bool:
        """What the region would hold beyond capacity at the pace of now has doubled or
        halved since it was advertised (a pace under queue_factor's share moves
        nothing)."""
        capacity = self.capacity
        told = self._beyond(capacity, self._paced)
        now = self._beyond(capacity, self._paced_now())
        return now > 2 * told or 2 * now < told

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> int:
        return sum(len(w.inflight) for w in self._workers.values())

    def held(self) -> set[TaskRef]:
        return set(self._held)

    def workers(self) -> list[WorkerConn]:
        """The connected workers."""
        return [w for w in self._workers.values() if w.connected]

    # ---- work from the master ------------------------------------------------------

    def accept(self, tasks: Iterable[pb.TaskSpec]) -> tuple[list[pb.TaskSpec], list[pb.TaskSpec]]:
        """Queue what fits within max_outstanding; the rest goes straight back."""
        room = self.max_outstanding - self.queued - self.running
        accepted: list[pb.TaskSpec] = []
        rejected: list[pb.TaskSpec] = []
        fresh: list[pb.TaskSpec] = []
        now = time.monotonic()
        for spec in tasks:
            ref = ref_of(spec)
            if ref in self._held:
                accepted.append(spec)  # already ours: a repeated delivery
            elif len(fresh) < room:
                accepted.append(spec)
                fresh.append(spec)
                self._held.add(ref)
                self._accepted_at[ref] = now
            else:
                rejected.append(spec)
        self._queue.extend(fresh)
        self.assign()
        return accepted, rejected

    def cancel(self, refs: Iterable[TaskRef]) -> int:
        """Drop queued attempts and tell workers to stop running ones (their slots free
        up when the worker reports them returned)."""
        wanted = set(refs)
        if not wanted:
            return 0
        before = len(self._queue)
        self._queue = deque(s for s in self._queue if ref_of(s) not in wanted)
        self._held -= wanted
        for ref in wanted:
            self._accepted_at.pop(ref, None)
        count = before - len(self._queue)
        for worker in self._workers.values():
            hits = to_pb(r for r in wanted if r in worker.inflight)
            if hits:
                worker.send(pb.RegionMessage(cancel=pb.CancelRequest(tasks=hits)))
                count += len(hits)
        return count

    def drain_queue(self) -> list[pb.TaskSpec]:
        """Take every queued task out (to hand it back to the master)."""
        taken = list(self._queue)
        self._queue.clear()
        self._held.difference_update(ref_of(s) for s in taken)
        self._accepted_at.clear()
        return taken

    def forget(self, refs: set[TaskRef]) -> int:
        """The master reclaimed these attempts (we were declared down): drop them from
        the queue and stop them on the workers; their results would be stale anyway.
        Only these: work delivered after the master took us back is ours."""
        before = len(self._queue)
        self._queue = deque(s for s in self._queue if ref_of(s) not in refs)
        dropped = before - len(self._queue)
        for worker in self._workers.values():
            hits = [r for r in worker.inflight if r in refs]
            if hits:
                # The slots stay taken until the worker answers that it stopped them.
                worker.send(pb.RegionMessage(cancel=pb.CancelRequest(tasks=to_pb(hits))))
                dropped += len(hits)
        self._held -= refs
        for ref in refs:
            self._accepted_at.pop(ref, None)
        logger.warning(
            "the master gave our work away while we were unreachable; dropped %d attempts",
            dropped, extra={"action": "region_reset", "region": self.name},
        )
        self._on_capacity_change()
        return dropped

    # ---- workers --------------------------------------------------------------------

    def join(self, worker: WorkerConn, still_running: Iterable[TaskRef] = ()) -> None:
        old = self._workers.pop(worker.id, None)
        if old is not None:
            # The same worker reconnected before its old stream was noticed dead.
            self._requeue(old)
            old.close()
        # Tasks the worker still runs from an earlier connection: if they sit in our
        # queue (requeued when it dropped), take them back instead of running them twice.
        adopt = set(still_running)
        if adopt:
            keep: deque[pb.TaskSpec] = deque()
            for spec in self._queue:
                ref = ref_of(spec)
                if ref in adopt:
                    worker.inflight[ref] = spec
                    self._accepted_at.pop(ref, None)
                else:
                    keep.append(spec)
            self._queue = keep
            # Ones we never saw (this region restarted) are held all the same: the worker
            # runs them and will report them.
            for ref in adopt - worker.inflight.keys():
                worker.inflight[ref] = pb.TaskSpec(id=ref.id, attempt=ref.attempt)
            self._held |= adopt
        self._workers[worker.id] = worker
        logger.info(
            "worker %s joined (capacity %d)", worker.id, worker.capacity,
            extra={"action": "worker_joined", "region": self.name, "worker": worker.id},
        )
        self.assign()
        self._on_capacity_change()

    def _requeue(self, worker: WorkerConn) -> list[pb.TaskSpec]:
        orphans = list(worker.inflight.values())
        worker.inflight.clear()
        # To the front, in their order: they were due before what is queued now.
        self._queue.extendleft(reversed(orphans))
        return orphans

    def disconnect(self, worker_id: str, reason: str, *, conn: WorkerConn) -> None:
        """A worker's stream closed. A worker that only lost its connection still runs
        its tasks: keep them held for it until it is back or declared dead, rather than
        running them twice. Its queue share goes back now if no worker is left."""
        worker = self._workers.get(worker_id)
        if worker is None or worker is not conn or not worker.connected:
            return
        worker.connected = False
        logger.warning(
            "worker %s disconnected: %s; holding its %d tasks for its return", worker_id,
            reason, len(worker.inflight),
            extra={"action": "worker_disconnected", "region": self.name, "worker": worker_id},
        )
        if not self.workers() and self._queue:
            self._hand_back(self.drain_queue(), "no live worker")
        self._on_capacity_change()

    def leave(self, worker_id: str, reason: str, *, conn: WorkerConn | None = None) -> None:
        """Remove a worker and requeue its tasks. With ``conn``, only if that stream is
        still the worker's current one (it may have reconnected meanwhile)."""
        worker = self._workers.get(worker_id)
        if worker is None or (conn is not None and worker is not conn):
            return
        del self._workers[worker_id]
        orphans = self._requeue(worker)
        logger.warning(
            "worker %s left: %s; %d in-flight tasks requeued", worker_id, reason, len(orphans),
            extra={"action": "worker_evicted", "region": self.name, "worker": worker_id},
        )
        if orphans and self._on_evicted is not None:
            self._on_evicted(worker_id, orphans, f"worker {worker_id} left: {reason}")
        if not self.workers() and self._queue:
            self._hand_back(self.drain_queue(), "no live worker")
        self.assign()
        self._on_capacity_change()

    def drain(self, worker_id: str) -> None:
        """The worker is stopping: it gets nothing more."""
        worker = self._workers.get(worker_id)
        if worker is None:
            return
        worker.capacity = 0
        logger.info(
            "worker %s draining", worker_id,
            extra={"action": "worker_draining", "region": self.name, "worker": worker_id},
        )
        self._on_capacity_change()

    def forgive_stall(self, stalled_s: float) -> None:
        now = time.monotonic()
        for worker in self._workers.values():
            worker.last_beat = now
        logger.warning(
            "this region stalled for %.1fs; workers get a fresh heartbeat window", stalled_s,
            extra={"action": "region_stalled", "region": self.name},
        )

    def evict_silent(self, dead_after_s: float) -> list[str]:
        now = time.monotonic()
        silent = [w for w in self._workers.values() if now - w.last_beat > dead_after_s]
        for worker in silent:
            self.leave(worker.id, f"no heartbeat for {now - worker.last_beat:.1f}s")
            worker.close()
        return [w.id for w in silent]

    def first_result(self, ref: TaskRef) -> bool:
        """True the first time a result of this attempt comes in (forward it), False for
        a repeat (a worker replaying what it was not sure had arrived)."""
        if ref in self._reported:
            return False
        self._reported[ref] = None
        if len(self._reported) > REMEMBERED_RESULTS:
            self._reported.popitem(last=False)
        return True

    def finished(self, worker_id: str, refs: Iterable[TaskRef]) -> None:
        """A worker reported results: its slots are free again."""
        done = set(refs)
        self._held -= done
        if self._queue_horizon_s:
            self.pace.add(len(done))
            if self._pace_moved():
                self._on_capacity_change()  # a heartbeat now tells the master
        worker = self._workers.get(worker_id)
        if worker is None:
            return
        for ref in done:
            worker.inflight.pop(ref, None)
        self.assign()

    # ---- assignment -------------------------------------------------------------------

    def assign(self) -> int:
        """Hand queued tasks round-robin to live workers with free slots, one message
        per worker for the whole round."""
        if not self._queue or not self.accepting:
            return 0
        if not self._lease.valid():
            # Cut off from the master past the lease: it will reclaim what we hold, so
            # starting it now would only run it twice.
            if not self._lease_lapsed:
                self._lease_lapsed = True
                logger.warning(
                    "lease lapsed: not starting %d queued tasks until the master answers",
                    len(self._queue), extra={"action": "lease_lapsed", "region": self.name},
                )
            return 0
        if self._lease_lapsed:
            self._lease_lapsed = False
            logger.info("lease renewed: starting queued work again",
                        extra={"action": "lease_renewed", "region": self.name})
        workers = self.workers()
        if not workers:
            return 0
        batches: dict[str, list[pb.TaskSpec]] = {}
        free = {w.id: w.free for w in workers}
        idle_in_a_row = 0
        expired: list[pb.TaskSpec] = []
        while self._queue and idle_in_a_row < len(workers):
            worker = workers[self._rr % len(workers)]
            self._rr = (self._rr + 1) % len(workers)
            if free[worker.id] <= 0:
                idle_in_a_row += 1
                continue
            idle_in_a_row = 0
            spec = self._queue.popleft()
            ref = ref_of(spec)
            accepted_at = self._accepted_at.pop(ref, None)
            if accepted_at is not None and not self._lease.allows(spec, accepted_at):
                self._held.discard(ref)
                expired.append(spec)
                continue
            free[worker.id] -= 1
            worker.inflight[ref] = spec
            batches.setdefault(worker.id, []).append(spec)
        for worker_id, specs in batches.items():
            worker = self._workers[worker_id]
            ack, worker.ack = worker.ack, 0
            worker.send(pb.RegionMessage(assign=pb.Assign(tasks=specs, ack=ack)))
        if expired:
            self._hand_back(expired, "its lease expired before it could start")
            self._on_capacity_change()
        return sum(len(s) for s in batches.values())
