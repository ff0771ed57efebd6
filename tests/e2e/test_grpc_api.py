"""The gRPC client API (strata.v1.Tasks) on a real master: the same calls, validation and
errors as REST, every REST bad-input case with its gRPC twin; and the standard health
and reflection services on the master and on a region."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2, struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from strata.local.cluster import Cluster
from strata.proto import tasks_pb2 as pb
from strata.proto import tasks_pb2_grpc as rpc

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

UNKNOWN = "0b3c7f9e-8a7c-4c56-9d0e-2f6a3c1b9e11"
TERMINAL = {"succeeded", "failed", "cancelled"}


def task(kind: str, **fields: Any) -> pb.NewTask:
    options = {k: fields.pop(k) for k in list(fields) if k in pb.NewTask.DESCRIPTOR.fields_by_name}
    payload = struct_pb2.Struct()
    payload.update(fields)
    return pb.NewTask(kind=kind, payload=payload, **options)


@pytest.fixture
async def stub(cluster: Cluster) -> AsyncIterator[rpc.TasksStub]:
    await cluster.start_master()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{cluster.grpc_port}") as channel:
        yield rpc.TasksStub(channel)


async def _until_done(stub: rpc.TasksStub, task_id: str) -> pb.Task:
    """Watch the task (subscribed first, then read once), until it has ended."""
    stream = stub.Watch(pb.WatchRequest(task=[task_id]))
    first = await stream.read()
    assert first.event == "subscribed"
    current = await stub.Get(pb.TaskId(id=task_id))
    while current.state not in TERMINAL:
        event = await stream.read()
        assert event.event == "task" and event.task.id == task_id and event.event_id
        current = await stub.Get(pb.TaskId(id=task_id))
    stream.cancel()
    return current


async def test_submit_watch_list_cancel_retry_and_schedules(
    cluster: Cluster, stub: rpc.TasksStub
) -> None:
    await cluster.start_region("east")
    await cluster.start_worker("east", "east-w1")
    made = await stub.Submit(pb.SubmitRequest(task=task("shell", command="echo hi",
                                                        priority=3)))
    assert (made.kind, made.state, made.priority) == ("shell", "pending", 3)
    assert dict(made.payload) == {"command": "echo hi"}
    done = await _until_done(stub, made.id)
    assert done.state == "succeeded" and done.result.output == "hi\n"
    assert done.started_at.ToDatetime() <= done.finished_at.ToDatetime()
    attempts = await stub.Attempts(pb.TaskId(id=made.id))
    assert [(a.attempt, a.outcome) for a in attempts.attempts] == [(1, "succeeded")]

    # A DAG in one call, by keys; its child shows its parent, and waits for it.
    batch = await stub.SubmitBatch(pb.SubmitBatchRequest(tasks=[
        task("sleep", seconds=0.3, key="a"), task("noop", key="b", depends_on=["a"])]))
    parent, child = batch.ids
    assert list(batch.existed) == [False, False]
    shown = await stub.Get(pb.TaskId(id=child))
    assert list(shown.depends_on) == [parent] and shown.state == "waiting"
    assert shown.waiting_for == "its parent to succeed"
    assert (await _until_done(stub, child)).state == "succeeded"

    page = await stub.List(pb.ListRequest(limit=2))
    assert len(page.tasks) == 2 and page.HasField("next_cursor")
    rest = await stub.List(pb.ListRequest(limit=2, cursor=page.next_cursor))
    # Oldest first; a batch's tasks share their created_at, and go by id.
    assert [t.id for t in [*page.tasks, *rest.tasks]] == [made.id, *sorted([parent, child])]
    assert not rest.HasField("next_cursor")

    long = await stub.Submit(pb.SubmitRequest(task=task("sleep", seconds=60,
                                                        region="east")))
    cancelled = await stub.Cancel(pb.TaskId(id=long.id))
    assert cancelled.state == "cancelled"
    with pytest.raises(grpc.aio.AioRpcError) as twice:
        await stub.Cancel(pb.TaskId(id=long.id))
    assert twice.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    again = await stub.Retry(pb.TaskId(id=long.id))
    assert again.retry_of == long.id and again.state == "pending"

    schedule = await stub.CreateSchedule(pb.CreateScheduleRequest(
        name="nightly", cron="0 2 * * *", timezone="Europe/Berlin", task=task("noop")))
    assert schedule.name == "nightly" and schedule.next_fire_at.seconds > 0
    listed = await stub.ListSchedules(empty_pb2.Empty())
    assert [s.name for s in listed.schedules] == ["nightly"]
    await stub.DeleteSchedule(pb.ScheduleName(name="nightly"))
    assert not (await stub.ListSchedules(empty_pb2.Empty())).schedules


# Every case of tests/e2e/test_bad_input.py that is about what the API takes, as the
# gRPC call that asks the same (a typed field cannot carry text where a number goes:
# there the twin is the typed value out of range). HTTP's own refusals (405, an
# unknown path, a body over 1 MiB, malformed JSON) have no counterpart in gRPC, whose
# messages are typed and framed.
NESTED: list[Any] = []
for _ in range(40):
    NESTED = [NESTED]
TWINS: list[tuple[str, str, Any, grpc.StatusCode]] = [
    ("no kind", "Submit", pb.SubmitRequest(task=task("", command="echo")),
     grpc.StatusCode.INVALID_ARGUMENT),
    ("unknown kind", "Submit", pb.SubmitRequest(task=task("teleport")),
     grpc.StatusCode.INVALID_ARGUMENT),
    ("shell without command", "Submit", pb.SubmitRequest(task=task("shell")),
     grpc.StatusCode.INVALID_ARGUMENT),
    ("command not text", "Submit", pb.SubmitRequest(task=task("shell", command=5)),
     grpc.StatusCode.INVALID_ARGUMENT),
    ("no attempts", "Submit", pb.SubmitRequest(task=task(
        "shell", command="x", max_attempts=0)), grpc.StatusCode.INVALID_ARGUMENT),
    ("negative timeout", "Submit", pb.SubmitRequest(task=task(
        "shell", command="x", timeout_s=-1)), grpc.StatusCode.INVALID_ARGUMENT),
    ("file url", "Submit", pb.SubmitRequest(task=task("http", url="file:///etc/passwd")),
     grpc.StatusCode.INVALID_ARGUMENT),
    ("handler without colon", "Submit", pb.SubmitRequest(task=task(
        "python", handler="no colon")), grpc.StatusCode.INVALID_ARGUMENT),
    ("an option inside the payload", "Submit", pb.SubmitRequest(task=pb.NewTask(
        kind="noop", payload=struct_pb2.Struct(fields={
            "priority": struct_pb2.Value(number_value=3)}))),
     grpc.StatusCode.INVALID_ARGUMENT),
    ("a batch item of an unknown kind", "SubmitBatch", pb.SubmitBatchRequest(
        tasks=[task("noop"), task("nope")]), grpc.StatusCode.INVALID_ARGUMENT),
    ("a batch over 10,000", "SubmitBatch", pb.SubmitBatchRequest(
        tasks=[task("noop")] * 10_001), grpc.StatusCode.INVALID_ARGUMENT),
    ("a cycle", "SubmitBatch", pb.SubmitBatchRequest(tasks=[
        task("noop", key="a", depends_on=["b"]), task("noop", key="b", depends_on=["a"])]),
     grpc.StatusCode.INVALID_ARGUMENT),
    ("an unknown parent", "Submit", pb.SubmitRequest(task=task(
        "noop", depends_on=[UNKNOWN])), grpc.StatusCode.INVALID_ARGUMENT),
    ("unknown task", "Get", pb.TaskId(id=UNKNOWN), grpc.StatusCode.NOT_FOUND),
    ("not a task id", "Get", pb.TaskId(id="not-a-uuid"), grpc.StatusCode.INVALID_ARGUMENT),
    ("cancel an unknown task", "Cancel", pb.TaskId(id=UNKNOWN), grpc.StatusCode.NOT_FOUND),
    ("retry an unknown task", "Retry", pb.TaskId(id=UNKNOWN), grpc.StatusCode.NOT_FOUND),
    ("attempts of an unknown task", "Attempts", pb.TaskId(id=UNKNOWN),
     grpc.StatusCode.NOT_FOUND),
    ("unknown state", "List", pb.ListRequest(state="sleeping"),
     grpc.StatusCode.INVALID_ARGUMENT),
    ("limit 0", "List", pb.ListRequest(limit=0), grpc.StatusCode.INVALID_ARGUMENT),
    ("bad cursor", "List", pb.ListRequest(cursor="%%%"), grpc.StatusCode.INVALID_ARGUMENT),
    ("NUL in a filter", "List", pb.ListRequest(region="a\x00b"),
     grpc.StatusCode.INVALID_ARGUMENT),
    ("NUL in a payload key", "Submit", pb.SubmitRequest(
        task=task("python", handler="m:f", args={"\x00": 1})),
     grpc.StatusCode.INVALID_ARGUMENT),
    ("nested too deep", "Submit", pb.SubmitRequest(task=task(
        "python", handler="m:f", args={"deep": NESTED})), grpc.StatusCode.INVALID_ARGUMENT),
    ("a schedule without a rule", "CreateSchedule", pb.CreateScheduleRequest(
        name="s", task=task("noop")), grpc.StatusCode.INVALID_ARGUMENT),
    ("a scheduled task with parents", "CreateSchedule", pb.CreateScheduleRequest(
        name="s", every_s=60, task=task("noop", depends_on=[UNKNOWN])),
     grpc.StatusCode.INVALID_ARGUMENT),
    ("delete an unknown schedule", "DeleteSchedule", pb.ScheduleName(name="nope"),
     grpc.StatusCode.NOT_FOUND),
    ("watch an unknown state", "Watch", pb.WatchRequest(state="sleeping"),
     grpc.StatusCode.INVALID_ARGUMENT),
]


async def test_every_bad_input_has_its_status_code_and_nothing_is_stored(
    stub: rpc.TasksStub,
) -> None:
    wrong = []
    for name, method, request, code in TWINS:
        try:
            call = getattr(stub, method)(request)
            await (call.read() if method == "Watch" else call)
        except grpc.aio.AioRpcError as refused:
            # The right code, and why in words.
            if refused.code() is not code or not refused.details():
                wrong.append((name, refused.code(), refused.details()))
        else:
            wrong.append((name, "accepted", None))
    assert not wrong, wrong
    assert not (await stub.List(pb.ListRequest())).tasks
    assert not (await stub.ListSchedules(empty_pb2.Empty())).schedules


async def test_health_and_reflection_on_the_master_and_a_region(cluster: Cluster) -> None:
    await cluster.start_master()
    await cluster.start_region("east")
    for address, services in (
        (f"127.0.0.1:{cluster.grpc_port}", ["strata.v1.Tasks", "strata.v1.Master"]),
        (f"127.0.0.1:{cluster.region_ports['east']}", ["strata.v1.Region"]),
    ):
        async with grpc.aio.insecure_channel(address) as channel:
            checks = health_pb2_grpc.HealthStub(channel)
            for name in ("", *services):
                reply = await checks.Check(health_pb2.HealthCheckRequest(service=name))
                assert reply.status == health_pb2.HealthCheckResponse.SERVING, name
            with pytest.raises(grpc.aio.AioRpcError) as unknown:
                await checks.Check(health_pb2.HealthCheckRequest(service="nope"))
            assert unknown.value.code() is grpc.StatusCode.NOT_FOUND
        # Reflection, as grpcurl uses it (the sync API: its descriptor database is).
        listed = await asyncio.to_thread(_reflected, address)
        assert set(services) | {"grpc.health.v1.Health"} <= set(listed), listed


def _reflected(address: str) -> list[str]:
    with grpc.insecure_channel(address) as channel:
        return list(ProtoReflectionDescriptorDatabase(channel).get_services())
