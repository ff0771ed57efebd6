"""split_events: a region's report becomes started / finished / returned at the edge."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from strata.common.errors import InvalidInput
from strata.common.events import TaskRef
from strata.master.service import split_events
from strata.proto import strata_pb2 as pb

T0 = 1_900_000_000.0  # 2030-03-17, unix seconds


def event(task_id: uuid.UUID, type_: int, attempt: int = 1, **fields: object) -> pb.TaskEvent:
    return pb.TaskEvent(task_id=str(task_id), attempt=attempt, type=type_,
                        worker_id="w-1", **fields)


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def test_started_alone_is_kept():
    task = uuid.uuid4()
    report = split_events("r", [event(task, pb.EVENT_TYPE_STARTED, attempt=3, started_at=T0)])
    assert report.finished == []
    assert report.returned == []
    [started] = report.started
    assert (started.id, started.attempt, started.worker_id) == (str(task), 3, "w-1")
    assert started.started_at == at(T0)
    assert started.started_at.tzinfo is not None


def test_started_and_finished_in_one_batch_keep_only_the_result():
    task = uuid.uuid4()
    report = split_events("r", [
        event(task, pb.EVENT_TYPE_STARTED, started_at=T0),
        event(task, pb.EVENT_TYPE_SUCCEEDED, started_at=T0, finished_at=T0 + 2,
              has_exit_code=True, exit_code=0, output="hello"),
    ])
    assert report.started == []
    [finished] = report.finished
    assert finished.id == str(task)
    assert finished.ok is True
    assert finished.started_at == at(T0)
    assert finished.finished_at == at(T0 + 2)
    assert finished.exit_code == 0
    assert finished.output == "hello"
    assert finished.error is None


def test_a_started_of_another_attempt_is_not_suppressed():
    task = uuid.uuid4()
    report = split_events("r", [
        event(task, pb.EVENT_TYPE_FAILED, attempt=1, started_at=T0, finished_at=T0 + 1),
        event(task, pb.EVENT_TYPE_STARTED, attempt=2, started_at=T0 + 5),
    ])
    assert [(s.id, s.attempt) for s in report.started] == [(str(task), 2)]
    assert [(f.id, f.attempt) for f in report.finished] == [(str(task), 1)]


def test_events_of_several_tasks_are_sorted_apart():
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    report = split_events("r", [
        event(a, pb.EVENT_TYPE_STARTED, started_at=T0),
        event(b, pb.EVENT_TYPE_STARTED, started_at=T0),
        event(c, pb.EVENT_TYPE_RETURNED),
        event(b, pb.EVENT_TYPE_SUCCEEDED, started_at=T0, finished_at=T0 + 1),
    ])
    assert [s.id for s in report.started] == [str(a)]
    assert [f.id for f in report.finished] == [str(b)]
    assert report.returned == [TaskRef(str(c), 1)]


def test_returned_suppresses_the_started_of_the_same_attempt():
    task = uuid.uuid4()
    report = split_events("r", [
        event(task, pb.EVENT_TYPE_STARTED, attempt=2, started_at=T0),
        event(task, pb.EVENT_TYPE_RETURNED, attempt=2),
    ])
    assert report.returned == [TaskRef(str(task), 2)]
    assert report.started == []
    assert report.finished == []


def test_returned_keeps_the_started_of_another_attempt():
    task = uuid.uuid4()
    report = split_events("r", [
        event(task, pb.EVENT_TYPE_RETURNED, attempt=1),
        event(task, pb.EVENT_TYPE_STARTED, attempt=2, started_at=T0),
    ])
    assert report.returned == [TaskRef(str(task), 1)]
    assert [(s.id, s.attempt) for s in report.started] == [(str(task), 2)]


def test_failed_with_an_exit_code():
    task = uuid.uuid4()
    [finished] = split_events("r", [
        event(task, pb.EVENT_TYPE_FAILED, started_at=T0, finished_at=T0 + 1,
              has_exit_code=True, exit_code=3, output="partial", error="exit status 3"),
    ]).finished
    assert finished.ok is False
    assert finished.exit_code == 3
    assert finished.output == "partial"
    assert finished.error == "exit status 3"


def test_failed_without_an_exit_code():
    task = uuid.uuid4()
    [finished] = split_events("r", [
        event(task, pb.EVENT_TYPE_FAILED, started_at=T0, finished_at=T0 + 1,
              has_exit_code=False, exit_code=7, error="timed out"),
    ]).finished
    assert finished.ok is False
    assert finished.exit_code is None  # exit_code without has_exit_code means nothing
    assert finished.output is None
    assert finished.error == "timed out"


def test_exit_code_zero_is_kept_when_present():
    [finished] = split_events("r", [
        event(uuid.uuid4(), pb.EVENT_TYPE_FAILED, finished_at=T0, has_exit_code=True,
              exit_code=0, error="http 500"),
    ]).finished
    assert finished.exit_code == 0
    assert finished.started_at is None  # never started: no time made up


def test_missing_times_fall_back_to_now():
    before = datetime.now(UTC)
    task = uuid.uuid4()
    report = split_events("r", [
        event(task, pb.EVENT_TYPE_STARTED),
        event(uuid.uuid4(), pb.EVENT_TYPE_SUCCEEDED),
    ])
    after = datetime.now(UTC)
    assert before <= report.started[0].started_at <= after
    assert before <= report.finished[0].finished_at <= after


def test_unspecified_events_are_dropped():
    report = split_events("r", [event(uuid.uuid4(), pb.EVENT_TYPE_UNSPECIFIED)])
    assert (report.started, report.finished, report.returned) == ([], [], [])


def test_nul_in_output_is_replaced_so_the_batch_can_be_stored() -> None:
    report = split_events("r", [
        pb.TaskEvent(task_id=str(uuid.uuid4()), attempt=1, type=pb.EVENT_TYPE_FAILED,
                     output="a\x00b", error="bad\x00", finished_at=1.0)
    ])
    (result,) = report.finished
    assert result.output == "a\ufffdb" and result.error == "bad\ufffd"


def test_a_malformed_task_id_is_invalid_input():
    with pytest.raises(InvalidInput, match="not a task id"):
        split_events("r", [pb.TaskEvent(task_id="not-a-uuid", attempt=1,
                                        type=pb.EVENT_TYPE_STARTED)])


@pytest.mark.parametrize("written", [
    str.upper, lambda s: "{" + s + "}", lambda s: s.replace("-", ""), lambda s: s,
])
def test_a_task_id_in_any_form_a_uuid_takes_is_made_canonical(written: Any) -> None:
    """Every form of one id is one attempt's key: the canonical text, however written."""
    task_id = str(uuid.uuid4())
    assert TaskRef.parse(written(task_id), 3) == TaskRef(task_id, 3)


@pytest.mark.parametrize("task_id", [
    "", "0" * 35, "g" * 8 + "-0000-0000-0000-" + "0" * 12, str(uuid.uuid4()) + "\n",
])
def test_a_text_that_is_no_uuid_is_not_a_task_id(task_id: str) -> None:
    with pytest.raises(InvalidInput, match="not a task id"):
        TaskRef.parse(task_id, 1)
