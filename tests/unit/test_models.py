"""Validation of task bodies at the REST edge, and the stored task's JSON form."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from strata.common.errors import InvalidInput
from strata.common.models import (
    DEFAULT_TIMEOUT_S,
    MAX_BATCH,
    Task,
    TaskResult,
    TaskState,
    parse_batch,
    parse_new_task,
)


def rejected(body: Any) -> str:
    with pytest.raises(InvalidInput) as info:
        parse_new_task(body)
    return str(info.value)


# ---- accepted ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "payload"),
    [
        ({"kind": "shell", "command": "echo hi"}, {"command": "echo hi"}),
        (
            {"kind": "http", "url": "https://example.test/x", "method": "POST",
             "headers": {"A": "b"}, "body": "{}"},
            {"method": "POST", "url": "https://example.test/x", "headers": {"A": "b"},
             "body": "{}"},
        ),
        (
            {"kind": "http", "url": "http://example.test/"},
            {"method": "GET", "url": "http://example.test/", "headers": {}, "body": None},
        ),
        (
            {"kind": "python", "handler": "pkg.mod:func", "args": {"n": 1}},
            {"handler": "pkg.mod:func", "args": {"n": 1}},
        ),
        (
            {"kind": "python", "handler": "mod:func"},
            {"handler": "mod:func", "args": []},
        ),
        ({"kind": "noop"}, {}),
        ({"kind": "sleep", "seconds": 0.5}, {"seconds": 0.5}),
        ({"kind": "sleep", "seconds": 0}, {"seconds": 0.0}),
    ],
    ids=["shell", "http-full", "http-defaults", "python-args", "python-default-args",
         "noop", "sleep", "sleep-zero"],
)
def test_every_kind_is_accepted_with_its_fields(body: dict[str, Any], payload: dict[str, Any]):
    task = parse_new_task(body)
    assert task.kind == body["kind"]
    assert task.payload == payload
    assert isinstance(task.id, uuid.UUID)


def test_defaults():
    before = datetime.now(UTC)
    task = parse_new_task({"kind": "noop"})
    after = datetime.now(UTC)
    assert task.priority == 0
    assert task.max_attempts == 1
    assert task.timeout_s == DEFAULT_TIMEOUT_S == 3600.0
    assert task.region is None
    assert task.run_at.utcoffset() == timedelta(0)
    assert before <= task.run_at <= after


def test_explicit_options_are_kept_out_of_the_payload():
    task = parse_new_task({
        "kind": "shell", "command": "true", "priority": -5, "max_attempts": 3,
        "timeout_s": 2, "region": "eu-west.1", "run_at": "2030-01-02T03:04:05Z",
    })
    assert task.payload == {"command": "true"}
    assert (task.priority, task.max_attempts, task.timeout_s, task.region) == (
        -5, 3, 2.0, "eu-west.1")
    assert isinstance(task.timeout_s, float)
    assert task.run_at == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_each_task_gets_its_own_id():
    assert parse_new_task({"kind": "noop"}).id != parse_new_task({"kind": "noop"}).id


def test_run_at_with_offset_is_converted_to_utc():
    task = parse_new_task({"kind": "noop", "run_at": "2030-06-01T12:00:00+02:00"})
    assert task.run_at.tzinfo is UTC
    assert (task.run_at.hour, task.run_at.minute) == (10, 0)


def test_naive_run_at_is_taken_as_utc():
    task = parse_new_task({"kind": "noop", "run_at": "2030-06-01T12:00:00"})
    assert task.run_at == datetime(2030, 6, 1, 12, tzinfo=UTC)
    assert task.run_at.utcoffset() == timedelta(0)


def test_now_is_the_default_run_at_when_given():
    now = datetime(2031, 1, 1, tzinfo=UTC)
    assert parse_new_task({"kind": "noop"}, now=now).run_at == now


# ---- rejected ---------------------------------------------------------------------------


@pytest.mark.parametrize("body", [[{"kind": "noop"}], "noop", None, 3])
def test_non_object_body(body: Any):
    assert "object" in rejected(body)


def test_missing_kind():
    assert "kind" in rejected({"command": "true"})


def test_kind_not_a_string():
    assert "kind" in rejected({"kind": 1})


def test_unknown_kind():
    message = rejected({"kind": "docker"})
    assert "kind" in message
    assert "docker" in message


def test_missing_command():
    assert "command" in rejected({"kind": "shell"})


def test_empty_command():
    assert "command" in rejected({"kind": "shell", "command": ""})


def test_unknown_extra_field():
    assert "colour" in rejected({"kind": "shell", "command": "true", "colour": "red"})


def test_noop_takes_no_fields():
    assert "command" in rejected({"kind": "noop", "command": "true"})


@pytest.mark.parametrize("value", ["5", True, 1.5], ids=["string", "bool", "float"])
def test_priority_must_be_an_integer(value: Any):
    assert "priority" in rejected({"kind": "noop", "priority": value})


@pytest.mark.parametrize("value", ["10", True], ids=["string", "bool"])
def test_timeout_must_be_a_number(value: Any):
    assert "timeout_s" in rejected({"kind": "noop", "timeout_s": value})


@pytest.mark.parametrize("value", [0, -1, -0.5])
def test_timeout_must_be_positive(value: float):
    assert "timeout_s" in rejected({"kind": "noop", "timeout_s": value})


def test_max_attempts_zero():
    assert "max_attempts" in rejected({"kind": "noop", "max_attempts": 0})


def test_max_attempts_as_string():
    assert "max_attempts" in rejected({"kind": "noop", "max_attempts": "2"})


def test_bad_run_at_text():
    message = rejected({"kind": "noop", "run_at": "tomorrow"})
    assert "run_at" in message
    assert "tomorrow" in message


def test_run_at_as_number():
    assert "run_at" in rejected({"kind": "noop", "run_at": 1_700_000_000})


@pytest.mark.parametrize("name", ["", "-lead", "has space", "a/b", "x" * 64])
def test_bad_region_name(name: str):
    assert "region" in rejected({"kind": "noop", "region": name})


def test_http_url_without_scheme():
    assert "url" in rejected({"kind": "http", "url": "example.test/x"})


def test_http_unknown_method():
    assert "method" in rejected({"kind": "http", "url": "http://x.test", "method": "FETCH"})


def test_python_handler_without_colon():
    assert "handler" in rejected({"kind": "python", "handler": "pkg.mod.func"})


def test_sleep_seconds_negative():
    assert "seconds" in rejected({"kind": "sleep", "seconds": -1})



# ---- batches ----------------------------------------------------------------------------


def test_batch_parses_every_task_with_one_shared_now():
    tasks = parse_batch({"tasks": [{"kind": "noop"}, {"kind": "shell", "command": "true"}]})
    assert [t.kind for t in tasks] == ["noop", "shell"]
    assert tasks[0].run_at == tasks[1].run_at
    assert tasks[0].id != tasks[1].id


def test_batch_empty_list():
    with pytest.raises(InvalidInput, match="tasks"):
        parse_batch({"tasks": []})


@pytest.mark.parametrize("body", [[{"kind": "noop"}], {"tasks": {"kind": "noop"}}, {}],
                         ids=["bare-list", "tasks-object", "no-tasks"])
def test_batch_not_a_list(body: Any):
    with pytest.raises(InvalidInput, match="tasks"):
        parse_batch(body)


def test_batch_at_the_limit_is_accepted():
    assert len(parse_batch({"tasks": [{"kind": "noop"}] * MAX_BATCH})) == MAX_BATCH


def test_batch_over_the_limit():
    with pytest.raises(InvalidInput, match=str(MAX_BATCH + 1)):
        parse_batch({"tasks": [{"kind": "noop"}] * (MAX_BATCH + 1)})


def test_batch_error_names_the_index_and_the_field():
    items: list[Any] = [{"kind": "noop"}] * 3 + [{"kind": "shell"}] + [{"kind": "noop"}]
    with pytest.raises(InvalidInput) as info:
        parse_batch({"tasks": items})
    assert str(info.value).startswith("tasks[3]: ")
    assert "command" in str(info.value)


# ---- stored tasks -----------------------------------------------------------------------


def test_task_to_json():
    task_id, retried, parent = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    plus_two = timezone(timedelta(hours=2))
    task = Task(
        id=task_id, kind="shell", payload={"command": "true"}, state=TaskState.RUNNING,
        priority=3, run_at=datetime(2030, 1, 1, 12, tzinfo=UTC), region=None,
        assigned_region="eu-west", worker_id="w-1", attempt=2, max_attempts=3, timeout_s=9.5,
        created_at=datetime(2030, 1, 1, 14, tzinfo=plus_two), picked_at=None,
        started_at=datetime(2030, 1, 1, 12, 0, 1, tzinfo=UTC), finished_at=None,
        result=TaskResult(exit_code=None, output="tail", error=None, output_truncated=True),
        retry_of=retried, idempotency_key="order-17", depends_on=(parent,),
        run_on_upstream_failure=True, concurrency_key="tenant-1",
    )
    assert task.to_json() == {
        "id": str(task_id),
        "kind": "shell",
        "payload": {"command": "true"},
        "state": "running",
        "priority": 3,
        "run_at": "2030-01-01T12:00:00Z",
        "region": "eu-west",
        "pinned_region": None,
        "worker_id": "w-1",
        "attempt": 2,
        "max_attempts": 3,
        "timeout_s": 9.5,
        "created_at": "2030-01-01T12:00:00Z",
        "picked_at": None,
        "started_at": "2030-01-01T12:00:01Z",
        "finished_at": None,
        "result": {"exit_code": None, "output": "tail", "stderr": None, "error": None,
                   "output_truncated": True, "stderr_truncated": False,
                             "killed_processes": 0},
        "retry_of": str(retried),
        "idempotency_key": "order-17",
        "depends_on": [str(parent)],
        "on_upstream_failure": "run",
        "concurrency_key": "tenant-1",
    }


def test_task_to_json_region_falls_back_to_the_pinned_one():
    now = datetime(2030, 1, 1, tzinfo=UTC)
    task = Task(
        id=uuid.uuid4(), kind="noop", payload={}, state=TaskState.PENDING, priority=0,
        run_at=now, region="us-east", assigned_region=None, worker_id=None, attempt=0,
        max_attempts=1, timeout_s=1.0, created_at=now, picked_at=None, started_at=None,
        finished_at=None, result=TaskResult(exit_code=1, output="out", error="boom"),
    )
    data = task.to_json()
    assert data["region"] == data["pinned_region"] == "us-east"
    assert data["result"] == {"exit_code": 1, "output": "out", "stderr": None, "error": "boom",
                              "output_truncated": False, "stderr_truncated": False,
                             "killed_processes": 0}


def test_terminal_states():
    assert {s for s in TaskState if s.terminal} == {
        TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED}


# ---- idempotency keys -------------------------------------------------------------------


def test_an_idempotency_key_fingerprints_what_was_asked_for():
    def fingerprint(**fields: Any) -> str | None:
        return parse_new_task({"kind": "shell", "command": "true", "idempotency_key": "k",
                               **fields}).fingerprint

    assert fingerprint() == fingerprint()
    # A default spelled out asks for the same; the key itself is not part of it.
    assert fingerprint(priority=0, max_attempts=1, timeout_s=3600) == fingerprint()
    assert fingerprint(idempotency_key="other") == fingerprint()
    assert fingerprint(priority=1) != fingerprint()
    assert fingerprint(command="false") != fingerprint()
    assert fingerprint(run_at="2030-01-01T00:00:00Z") != fingerprint()
    assert parse_new_task({"kind": "noop"}).fingerprint is None


def test_a_batch_refuses_one_key_twice():
    items = [{"kind": "noop", "idempotency_key": "a"}, {"kind": "noop"},
             {"kind": "noop", "idempotency_key": "a"}]
    with pytest.raises(InvalidInput, match=r"tasks\[2\]: .*tasks\[0\]"):
        parse_batch({"tasks": items})


def test_worker_info_json_has_every_field_and_reads_back() -> None:
    """Written by hand for speed: a field added to WorkerInfo must be added there too."""
    from dataclasses import asdict

    from strata.common.status import WorkerInfo

    info = WorkerInfo(id="w", capacity=4, running=1, last_heartbeat=1.7e9,
                      health_address="127.0.0.1:1")
    assert info.to_json() == asdict(info)
    assert WorkerInfo.from_json(info.to_json()) == info
