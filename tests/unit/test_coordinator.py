"""The region's queue and round-robin assignment, driven through plain callbacks."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pytest

from strata.common.events import TaskRef
from strata.proto import strata_pb2 as pb
from strata.regional.coordinator import MAX_QUEUE_FACTOR, Coordinator, Pace, WorkerConn, ref_of
from strata.regional.lease import Lease


def spec(n: int, attempt: int = 1) -> pb.TaskSpec:
    return pb.TaskSpec(id=f"task-{n}", attempt=attempt, kind="noop", payload_json="{}")


def specs(*ns: int) -> list[pb.TaskSpec]:
    return [spec(n) for n in ns]


def ids(tasks: list[pb.TaskSpec]) -> list[str]:
    return [t.id for t in tasks]


@dataclass
class FakeStream:
    """What a worker's stream would have been sent, and whether it was closed."""

    messages: list[pb.RegionMessage] = field(default_factory=list)
    closed: int = 0

    def send(self, message: pb.RegionMessage) -> None:
        self.messages.append(message)

    def close(self) -> None:
        self.closed += 1

    @property
    def assigns(self) -> list[list[str]]:
        return [ids(list(m.assign.tasks)) for m in self.messages
                if m.WhichOneof("body") == "assign"]

    @property
    def assigned(self) -> list[str]:
        return [task_id for batch in self.assigns for task_id in batch]

    @property
    def cancels(self) -> list[set[TaskRef]]:
        return [{ref_of(r) for r in m.cancel.tasks} for m in self.messages
                if m.WhichOneof("body") == "cancel"]


@dataclass
class Region:
    coordinator: Coordinator
    streams: dict[str, FakeStream] = field(default_factory=dict)
    handed_back: list[tuple[list[str], str]] = field(default_factory=list)
    evicted: list[tuple[str, list[str], str]] = field(default_factory=list)
    capacity_changes: int = 0

    def worker(self, worker_id: str, capacity: int) -> WorkerConn:
        stream = FakeStream()
        self.streams[worker_id] = stream
        return WorkerConn(id=worker_id, capacity=capacity, health_address="",
                          send=stream.send, close=stream.close)

    def join(self, worker_id: str, capacity: int, still_running: list[TaskRef] = ()) -> WorkerConn:
        conn = self.worker(worker_id, capacity)
        self.coordinator.join(conn, still_running)
        return conn


def make_region(queue_factor: float = 1.0, lease: Lease | None = None,
                queue_horizon_s: float = 0.0) -> Region:
    region: Region

    def capacity_changed() -> None:
        region.capacity_changes += 1

    def hand_back(tasks: list[pb.TaskSpec], reason: str) -> None:
        region.handed_back.append((ids(tasks), reason))

    def evicted(worker_id: str, tasks: list[pb.TaskSpec], reason: str) -> None:
        region.evicted.append((worker_id, ids(tasks), reason))

    region = Region(Coordinator(name="r", queue_factor=queue_factor, lease=lease,
                                queue_horizon_s=queue_horizon_s,
                                on_capacity_change=capacity_changed, hand_back=hand_back,
                                on_evicted=evicted))
    return region


@pytest.fixture
def region() -> Region:
    return make_region()


# ---- accepting work ---------------------------------------------------------------------


@pytest.mark.parametrize(("capacity", "factor", "expected"),
                         [(4, 1.0, 8), (3, 0.5, 5), (4, 0.0, 4), (1, 0.1, 2), (0, 1.0, 0)])
def test_max_outstanding(capacity: int, factor: float, expected: int):
    region = make_region(queue_factor=factor)
    if capacity:
        region.join("w1", capacity)
    assert region.coordinator.max_outstanding == expected


def test_accepts_up_to_max_outstanding_and_rejects_the_rest(region: Region):
    region.join("w1", 2)
    region.join("w2", 1)  # capacity 3, max_outstanding 3 + 3 = 6
    accepted, rejected = region.coordinator.accept(specs(*range(8)))
    assert ids(accepted) == [f"task-{n}" for n in range(6)]
    assert ids(rejected) == ["task-6", "task-7"]
    assert region.coordinator.running == 3
    assert region.coordinator.queued == 3

    # Full: nothing more fits until something finishes.
    accepted, rejected = region.coordinator.accept(specs(8))
    assert (accepted, ids(rejected)) == ([], ["task-8"])


def test_room_counts_what_is_already_held(region: Region):
    region.join("w1", 2)  # max_outstanding 4
    region.coordinator.accept(specs(0, 1, 2))
    accepted, rejected = region.coordinator.accept(specs(3, 4))
    assert ids(accepted) == ["task-3"]
    assert ids(rejected) == ["task-4"]


def test_an_attempt_named_twice_in_one_delegation_is_queued_once(region: Region):
    region.join("w1", 1)  # max_outstanding 2
    accepted, rejected = region.coordinator.accept([spec(0), spec(0), spec(1)])
    assert (ids(accepted), rejected) == (["task-0", "task-0", "task-1"], [])
    assert region.coordinator.running + region.coordinator.queued == 2


def test_no_workers_accepts_nothing(region: Region):
    accepted, rejected = region.coordinator.accept(specs(1))
    assert accepted == []
    assert ids(rejected) == ["task-1"]


def test_not_accepting_gives_max_outstanding_zero(region: Region):
    region.join("w1", 4)
    region.coordinator.accepting = False
    assert region.coordinator.max_outstanding == 0
    accepted, rejected = region.coordinator.accept(specs(1))
    assert accepted == []
    assert ids(rejected) == ["task-1"]
    assert region.streams["w1"].messages == []


# ---- round robin ------------------------------------------------------------------------


def test_round_robin_splits_a_batch_evenly(region: Region):
    region.join("w1", 5)
    region.join("w2", 5)
    region.coordinator.accept(specs(*range(10)))
    w1, w2 = region.streams["w1"], region.streams["w2"]
    assert w1.assigned == [f"task-{n}" for n in range(0, 10, 2)]
    assert w2.assigned == [f"task-{n}" for n in range(1, 10, 2)]
    # One Assign message per worker for the whole round.
    assert len(w1.assigns) == len(w2.assigns) == 1


def test_round_robin_pointer_persists_across_accepts(region: Region):
    region.join("w1", 5)
    region.join("w2", 5)
    for n in range(10):
        region.coordinator.accept([spec(n)])
    w1, w2 = region.streams["w1"], region.streams["w2"]
    assert w1.assigns == [[f"task-{n}"] for n in range(0, 10, 2)]
    assert w2.assigns == [[f"task-{n}"] for n in range(1, 10, 2)]


def test_worker_without_a_free_slot_is_skipped(region: Region):
    region.join("w1", 1)
    region.join("w2", 3)
    region.coordinator.accept(specs(*range(4)))
    assert region.streams["w1"].assigned == ["task-0"]
    assert region.streams["w2"].assigned == ["task-1", "task-2", "task-3"]
    assert region.coordinator.queued == 0


def test_tasks_stay_queued_when_every_worker_is_full(region: Region):
    w1 = region.join("w1", 2)
    region.coordinator.accept(specs(*range(4)))
    assert region.streams["w1"].assigns == [["task-0", "task-1"]]
    assert set(w1.inflight) == {TaskRef("task-0", 1), TaskRef("task-1", 1)}
    assert region.coordinator.queued == 2
    assert region.coordinator.assign() == 0
    assert len(region.streams["w1"].messages) == 1


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_pace_counts_the_last_half_second_only():
    clock = Clock()
    pace = Pace(clock)
    pace.add(10)
    clock.now += 0.25
    pace.add(40)
    assert pace.per_second() == pytest.approx(50 / 0.5)
    clock.now += 0.3  # the first bucket is out of the window; the second is not
    assert pace.per_second() == pytest.approx(40 / 0.5)
    clock.now += 10  # a long silence: nothing left, however far the clock moved
    assert pace.per_second() == 0
    pace.add(5)
    assert pace.per_second() == pytest.approx(5 / 0.5)


def finish_all(region: Region, worker_id: str, done: list[pb.TaskSpec]) -> None:
    region.coordinator.finished(worker_id, [ref_of(s) for s in done])


def test_short_tasks_make_the_region_hold_its_workers_pace_times_the_horizon():
    region = make_region(queue_factor=1.0, queue_horizon_s=0.25)
    clock = Clock()
    region.coordinator.pace = Pace(clock)
    region.join("w1", 4)
    c = region.coordinator
    assert c.advertise() == 4 + 4  # no pace yet: queue_factor's share
    changes = region.capacity_changes
    # 40 tasks finished within the last half second: 80 a second, 20 in a quarter.
    c.accept(specs(*range(8)))
    finish_all(region, "w1", specs(*range(4)))
    clock.now += 0.1
    c.accept(specs(*range(8, 12)))
    finish_all(region, "w1", specs(*range(4, 8)))
    c.pace.add(32)
    assert c.max_outstanding == 8  # what was advertised holds until the next heartbeat
    finish_all(region, "w1", [])
    assert region.capacity_changes > changes  # the pace doubled: a heartbeat is asked for
    assert c.advertise() == 4 + 20
    held = c.queued + c.running
    accepted, rejected = c.accept(specs(*range(100, 130)))
    assert (len(accepted), len(rejected)) == (24 - held, 30 - (24 - held))
    assert c.queued + c.running == 24


def test_the_paced_share_is_capped_by_capacity():
    region = make_region(queue_factor=0.0, queue_horizon_s=10.0)
    region.coordinator.pace = Pace(Clock())
    region.join("w1", 2)
    region.coordinator.pace.add(10_000)
    assert region.coordinator.advertise() == 2 + 2 * MAX_QUEUE_FACTOR


def test_a_light_pace_under_queue_factors_share_asks_for_no_heartbeat():
    region = make_region(queue_factor=1.0, queue_horizon_s=0.25)
    region.coordinator.pace = Pace(Clock())
    region.join("w1", 8)
    region.coordinator.advertise()
    changes = region.capacity_changes
    region.coordinator.accept(specs(*range(8)))
    finish_all(region, "w1", specs(*range(8)))  # 16 a second: 4 held, under 8
    assert region.capacity_changes == changes
    assert region.coordinator.advertise() == 8 + 8


def test_long_tasks_keep_queue_factors_share():
    region = make_region(queue_factor=1.0, queue_horizon_s=0.25)
    region.coordinator.pace = Pace(Clock())
    region.join("w1", 8)
    region.coordinator.pace.add(2)  # 4 a second: one in a quarter of a second
    assert region.coordinator.advertise() == 8 + 8


def test_without_a_horizon_the_pace_is_not_kept():
    region = make_region(queue_factor=1.0)
    region.join("w1", 2)
    region.coordinator.accept(specs(0, 1))
    changes = region.capacity_changes
    finish_all(region, "w1", specs(0, 1))
    assert region.coordinator.pace.per_second() == 0
    assert region.capacity_changes == changes
    assert region.coordinator.advertise() == 4


def test_finished_frees_slots_and_assigns_queued_tasks(region: Region):
    w1 = region.join("w1", 2)
    region.coordinator.accept(specs(*range(4)))
    region.coordinator.finished("w1", [TaskRef("task-0", 1), TaskRef("task-1", 1)])
    assert region.streams["w1"].assigns == [["task-0", "task-1"], ["task-2", "task-3"]]
    assert set(w1.inflight) == {TaskRef("task-2", 1), TaskRef("task-3", 1)}
    assert region.coordinator.queued == 0


def test_finished_with_a_wrong_attempt_frees_nothing(region: Region):
    w1 = region.join("w1", 1)
    region.coordinator.accept(specs(0, 1))
    region.coordinator.finished("w1", [TaskRef("task-0", 7)])
    assert set(w1.inflight) == {TaskRef("task-0", 1)}
    assert region.coordinator.queued == 1


def test_finished_from_an_unknown_worker_is_ignored(region: Region):
    region.join("w1", 1)
    region.coordinator.accept(specs(0, 1))
    region.coordinator.finished("ghost", [TaskRef("task-0", 1)])
    assert region.coordinator.running == 1
    assert region.coordinator.queued == 1


# ---- workers leaving and coming back ----------------------------------------------------


def test_leave_requeues_in_flight_tasks_at_the_front_in_order(region: Region):
    region.join("w1", 3)
    w2 = region.join("w2", 3)
    region.coordinator.accept(specs(*range(6)))  # w1: 0 2 4, w2: 1 3 5
    region.coordinator.accept(specs(6, 7))  # queued behind
    assert region.coordinator.queued == 2

    region.coordinator.leave("w1", "stream closed")
    # w2 is still full: the orphans wait at the front, in their order.
    assert region.coordinator.queued == 5
    region.coordinator.finished(
        "w2", [TaskRef("task-1", 1), TaskRef("task-3", 1), TaskRef("task-5", 1)])
    assert region.streams["w2"].assigns[-1] == ["task-0", "task-2", "task-4"]
    assert set(w2.inflight) == {TaskRef("task-0", 1), TaskRef("task-2", 1), TaskRef("task-4", 1)}
    assert region.coordinator.queued == 2
    assert region.handed_back == []
    # The master hears of each attempt that lost its worker.
    assert region.evicted == [("w1", ["task-0", "task-2", "task-4"],
                               "worker w1 left: stream closed")]


def test_a_worker_that_leaves_with_nothing_in_flight_evicts_nothing(region: Region):
    region.join("w1", 2)
    region.coordinator.leave("w1", "gone")
    assert region.evicted == []


def test_leave_sends_orphans_to_the_remaining_worker_at_once(region: Region):
    region.join("w1", 2)
    region.join("w2", 4)
    region.coordinator.accept(specs(*range(4)))  # w1: 0 2, w2: 1 3
    region.coordinator.leave("w1", "gone")
    assert region.streams["w2"].assigns == [["task-1", "task-3"], ["task-0", "task-2"]]
    assert region.streams["w1"].assigned == ["task-0", "task-2"]
    assert [w.id for w in region.coordinator.workers()] == ["w2"]


def test_leave_of_the_last_worker_hands_the_queue_back(region: Region):
    region.join("w1", 2)
    region.coordinator.accept(specs(*range(3)))  # 0 1 running, 2 queued
    region.coordinator.leave("w1", "gone")
    assert region.handed_back == [(["task-0", "task-1", "task-2"], "no live worker")]
    assert region.coordinator.queued == 0
    assert region.coordinator.running == 0
    assert region.coordinator.capacity == 0
    assert region.coordinator.max_outstanding == 0


def test_leave_of_the_last_idle_worker_hands_nothing_back(region: Region):
    region.join("w1", 2)
    region.coordinator.leave("w1", "gone")
    assert region.handed_back == []


def test_leave_of_an_unknown_worker_is_ignored(region: Region):
    region.join("w1", 2)
    changes = region.capacity_changes
    region.coordinator.leave("ghost", "gone")
    assert region.capacity_changes == changes
    assert region.coordinator.capacity == 2


def test_leave_with_a_stale_conn_is_ignored_after_reconnect(region: Region):
    old = region.join("w1", 2)
    region.coordinator.accept(specs(0))
    old_stream = region.streams["w1"]
    new = region.join("w1", 2)  # reconnected before the old stream was noticed dead
    assert old_stream.closed == 1
    assert region.streams["w1"].assigned == ["task-0"]  # requeued from the old conn

    region.coordinator.leave("w1", "old stream ended", conn=old)
    assert region.coordinator.workers() == [new]
    assert set(new.inflight) == {TaskRef("task-0", 1)}
    assert region.handed_back == []

    region.coordinator.leave("w1", "new stream ended", conn=new)
    assert region.coordinator.workers() == []
    assert region.handed_back == [(["task-0"], "no live worker")]



def test_reconnect_adopts_still_running_refs_from_the_queue():
    region = make_region()
    region.join("w1", 2)
    region.join("w2", 2)
    region.coordinator.accept(specs(0, 1, 2, 3))  # w1: 0 2, w2: 1 3
    region.coordinator.leave("w1", "stream broke")  # 0 and 2 queued, w2 full
    assert region.coordinator.queued == 2

    back = region.join("w1", 2, still_running=[TaskRef("task-0", 1), TaskRef("task-2", 1)])
    assert set(back.inflight) == {TaskRef("task-0", 1), TaskRef("task-2", 1)}
    assert region.streams["w1"].messages == []  # not sent to run a second time
    assert region.coordinator.queued == 0
    assert region.coordinator.running == 4


def test_reconnect_takes_back_only_the_matching_attempt_from_the_queue():
    region = make_region()
    region.join("w1", 1)
    region.join("w2", 1)
    region.coordinator.accept(specs(0, 1))  # w1: 0, w2: 1
    region.coordinator.leave("w1", "stream broke")
    back = region.join("w1", 1, still_running=[TaskRef("task-0", 99)])
    # The worker still runs attempt 99, which fills its one slot; the queued attempt 1
    # is a different attempt, so it stays queued rather than overfilling the worker.
    assert set(back.inflight) == {TaskRef("task-0", 99)}
    assert region.coordinator.queued == 1
    assert region.streams["w1"].assigned == []
    assert {TaskRef("task-0", 99), TaskRef("task-0", 1)} <= region.coordinator.held()


def test_rejoin_of_a_live_worker_id_requeues_and_readopts():
    region = make_region()
    old = region.join("w1", 2)
    region.coordinator.accept(specs(0, 1))
    old_stream = region.streams["w1"]
    new = region.join("w1", 2, still_running=[TaskRef("task-1", 1)])
    assert old_stream.closed == 1
    assert old.inflight == {}
    assert set(new.inflight) == {TaskRef("task-0", 1), TaskRef("task-1", 1)}
    assert region.streams["w1"].assigned == ["task-0"]


def test_evict_silent_evicts_only_silent_workers(region: Region):
    quiet = region.join("quiet", 2)
    region.join("chatty", 2)
    region.coordinator.accept(specs(0, 1, 2, 3))  # quiet: 0 2, chatty: 1 3
    quiet.last_beat = time.monotonic() - 10

    assert region.coordinator.evict_silent(5.0) == ["quiet"]
    assert region.streams["quiet"].closed == 1
    assert region.streams["chatty"].closed == 0
    assert [w.id for w in region.coordinator.workers()] == ["chatty"]
    assert region.coordinator.queued == 2
    assert region.coordinator.evict_silent(5.0) == []


def test_evict_silent_of_every_worker_hands_back(region: Region):
    w1 = region.join("w1", 1)
    region.coordinator.accept(specs(0))
    w1.last_beat = time.monotonic() - 10
    assert region.coordinator.evict_silent(5.0) == ["w1"]
    assert region.handed_back == [(["task-0"], "no live worker")]


def test_beat_keeps_a_worker_alive(region: Region):
    w1 = region.join("w1", 1)
    w1.last_beat = time.monotonic() - 10
    w1.beat(running=1)
    assert w1.running == 1
    assert region.coordinator.evict_silent(5.0) == []


# ---- cancel and drain -------------------------------------------------------------------


def test_cancel_drops_queued_and_asks_the_worker_to_stop_running(region: Region):
    region.join("w1", 1)
    region.join("w2", 1)
    region.coordinator.accept(specs(0, 1, 2, 3))  # w1: 0, w2: 1, queued: 2 3
    count = region.coordinator.cancel(
        [TaskRef("task-0", 1), TaskRef("task-2", 1), TaskRef("unknown", 1)])
    assert count == 2
    assert region.streams["w1"].cancels == [{TaskRef("task-0", 1)}]
    assert region.streams["w2"].cancels == []
    assert region.coordinator.queued == 1
    # The worker's slot frees only when it reports the result.
    region.coordinator.finished("w1", [TaskRef("task-0", 1)])
    assert region.streams["w1"].assigned == ["task-0", "task-3"]


def test_cancel_of_nothing(region: Region):
    region.join("w1", 1)
    assert region.coordinator.cancel([]) == 0
    assert region.streams["w1"].messages == []


def test_drain_stops_assignment_to_that_worker(region: Region):
    region.join("w1", 2)
    region.join("w2", 2)
    changes = region.capacity_changes
    region.coordinator.drain("w1")
    assert region.capacity_changes == changes + 1
    assert region.coordinator.capacity == 2
    region.coordinator.accept(specs(0, 1, 2))
    assert region.streams["w1"].messages == []
    assert region.streams["w2"].assigned == ["task-0", "task-1"]
    assert region.coordinator.queued == 1


def test_drain_with_in_flight_tasks_assigns_nothing_more(region: Region):
    region.join("w1", 2)
    region.coordinator.accept(specs(0, 1, 2))
    region.coordinator.drain("w1")
    region.coordinator.finished("w1", [TaskRef("task-0", 1)])
    assert region.streams["w1"].assigned == ["task-0", "task-1"]
    assert region.coordinator.queued == 1


def test_capacity_change_is_reported_on_join_and_leave(region: Region):
    assert region.capacity_changes == 0
    region.join("w1", 2)
    assert region.capacity_changes == 1
    region.join("w2", 2)
    assert region.capacity_changes == 2
    region.coordinator.leave("w1", "gone")
    assert region.capacity_changes == 3
    assert region.coordinator.capacity == 2


def test_drain_queue_takes_everything_queued(region: Region):
    region.join("w1", 2)
    region.coordinator.accept(specs(0, 1, 2, 3))
    assert ids(region.coordinator.drain_queue()) == ["task-2", "task-3"]
    assert region.coordinator.queued == 0
    assert region.coordinator.running == 2


def test_a_disconnected_worker_keeps_its_tasks_but_gets_nothing_new():
    region = make_region()
    w1 = region.join("w1", 2)
    region.join("w2", 2)
    region.coordinator.accept(specs(0, 1))  # w1: 0, w2: 1
    region.coordinator.disconnect("w1", "stream closed", conn=w1)
    assert set(w1.inflight) == {TaskRef("task-0", 1)}
    assert TaskRef("task-0", 1) in region.coordinator.held()
    assert region.coordinator.capacity == 2
    assert [w.id for w in region.coordinator.workers()] == ["w2"]
    region.coordinator.accept(specs(2))
    assert region.streams["w2"].assigned == ["task-1", "task-2"]


def test_a_reconnecting_worker_gets_back_what_it_still_holds_without_a_rerun():
    region = make_region()
    w1 = region.join("w1", 2)
    region.coordinator.accept(specs(0, 1))
    region.coordinator.disconnect("w1", "stream closed", conn=w1)
    # task-0 still runs; task-1 finished and its result waits to be sent.
    back = region.join("w1", 2, still_running=[TaskRef("task-0", 1), TaskRef("task-1", 1)])
    assert set(back.inflight) == {TaskRef("task-0", 1), TaskRef("task-1", 1)}
    assert region.coordinator.queued == 0
    assert region.streams["w1"].assigned == []  # nothing sent twice


def test_a_disconnected_worker_that_stays_silent_is_evicted_and_its_tasks_requeued():
    region = make_region()
    w1 = region.join("w1", 1)
    region.coordinator.accept(specs(0))
    region.coordinator.disconnect("w1", "stream closed", conn=w1)
    w1.last_beat -= 10
    assert region.coordinator.evict_silent(3.0) == ["w1"]
    # No connected worker is left: the requeued task goes back to the master.
    assert [t for t, _ in region.handed_back] == [["task-0"]]


def test_a_replayed_result_is_recognised_and_memory_stays_bounded(monkeypatch):
    import strata.regional.coordinator as coordinator_module

    monkeypatch.setattr(coordinator_module, "REMEMBERED_RESULTS", 3)
    region = make_region()
    assert region.coordinator.first_result(TaskRef("task-0", 1)) is True
    assert region.coordinator.first_result(TaskRef("task-0", 1)) is False
    assert region.coordinator.first_result(TaskRef("task-0", 2)) is True  # another attempt
    for n in (1, 2, 3):
        region.coordinator.first_result((f"task-{n}", 1))
    # The oldest is forgotten once more than the bound are remembered.
    assert region.coordinator.first_result(TaskRef("task-0", 1)) is True


def test_forget_drops_only_the_reclaimed_attempts():
    region = make_region(queue_factor=2.0)
    region.join("w1", 1)
    accepted, _ = region.coordinator.accept(specs(0, 1, 2))
    assert len(accepted) == 3  # w1 runs task-0; task-1, task-2 queued
    reclaimed = {TaskRef("task-0", 1), TaskRef("task-1", 1)}
    assert region.coordinator.forget(reclaimed) == 2
    # task-0 is stopped on the worker; its slot stays taken until the worker says so.
    assert region.streams["w1"].cancels == [{TaskRef("task-0", 1)}]
    assert region.streams["w1"].assigned == ["task-0"]
    assert region.coordinator.held() == {TaskRef("task-2", 1)}
    region.coordinator.finished("w1", [TaskRef("task-0", 1)])  # the worker's RETURNED
    # task-2 (delivered after the master took us back) stays ours and now runs.
    assert region.streams["w1"].assigned == ["task-0", "task-2"]


def test_a_cancelled_attempt_keeps_its_slot_until_the_worker_returns_it():
    region = make_region()
    w1 = region.join("w1", 1)
    region.coordinator.accept(specs(0, 1))  # task-0 runs, task-1 queued
    region.coordinator.cancel([TaskRef("task-0", 1)])
    assert w1.free == 0  # still running on the worker until it says otherwise
    assert region.streams["w1"].assigned == ["task-0"]
    region.coordinator.finished("w1", [TaskRef("task-0", 1)])  # the worker's RETURNED
    assert region.streams["w1"].assigned == ["task-0", "task-1"]


# ---- leases --------------------------------------------------------------------------


def leased(n: int, expires_in_s: float) -> pb.TaskSpec:
    return pb.TaskSpec(id=f"task-{n}", attempt=1, kind="noop", payload_json="{}",
                       lease_expires_at=time.time() + expires_in_s)


def test_an_attempt_whose_own_lease_passed_is_handed_back_not_started():
    region = make_region(lease=Lease(lease_s=60))
    region.join("w1", 2)
    region.coordinator.accept([leased(0, -1), leased(1, 60)])
    assert region.streams["w1"].assigned == ["task-1"]
    assert region.handed_back == [(["task-0"], "its lease expired before it could start")]
    assert TaskRef("task-0", 1) not in region.coordinator.held()


@pytest.mark.parametrize("beat_answered", [True, False])
def test_a_heartbeat_answered_after_acceptance_renews_an_attempts_lease(beat_answered: bool):
    lease = Lease(lease_s=60)
    region = make_region(lease=lease)
    region.join("w1", 1)
    region.coordinator.accept([leased(5, 60), leased(0, -1)])  # task-0 waits in the queue
    assert region.streams["w1"].assigned == ["task-5"]
    if beat_answered:
        lease.renew(beat_taken=time.monotonic())  # a beat listing it, answered
    region.coordinator.finished("w1", [TaskRef("task-5", 1)])
    if beat_answered:
        assert region.streams["w1"].assigned == ["task-5", "task-0"]
        assert region.handed_back == []
    else:
        assert region.streams["w1"].assigned == ["task-5"]
        assert region.handed_back == [(["task-0"], "its lease expired before it could start")]


def test_nothing_starts_while_the_regions_own_lease_has_lapsed():
    lease = Lease(lease_s=0.0)  # lapsed at once: the master has not answered
    region = make_region(lease=lease)
    region.join("w1", 1)
    region.coordinator.accept([leased(0, 60)])
    assert region.streams["w1"].assigned == []
    lease.lease_s = 60
    lease.renew()
    region.coordinator.assign()
    assert region.streams["w1"].assigned == ["task-0"]
