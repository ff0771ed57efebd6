"""The master's gRPC face on a real server and a real database: bad input gets
INVALID_ARGUMENT, hand-backs carry their reason, a report applies in one transaction."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import timedelta

import grpc
import pytest

from strata.common import channels
from strata.common.settings import MasterSettings
from strata.local.postgres import free_port
from strata.master.db import Database
from strata.master.service import MasterService
from strata.proto import strata_pb2 as pb
from strata.proto import strata_pb2_grpc as rpc
from tests.integration.test_db import due_task

pytestmark = pytest.mark.integration


@pytest.fixture
async def master(db: Database, database_url: str) -> AsyncIterator[rpc.MasterStub]:
    settings = MasterSettings(database_url=database_url,
                              region_dead_after=timedelta(seconds=30))
    server = channels.server()
    rpc.add_MasterServicer_to_server(MasterService(db, settings, lambda: None), server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    channel = channels.channel(f"127.0.0.1:{port}")
    try:
        yield rpc.MasterStub(channel)
    finally:
        await channel.close(None)
        await server.stop(None)


@pytest.mark.parametrize("call", ["report", "hand_back", "heartbeat"])
async def test_a_malformed_task_id_is_invalid_argument(master: rpc.MasterStub, call: str):
    bad = pb.TaskRef(task_id="not-a-task-id", attempt=1)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        if call == "report":
            await master.Report(pb.ReportRequest(region="r", events=[pb.TaskEvent(
                task_id=bad.task_id, attempt=1, type=pb.EVENT_TYPE_STARTED)]))
        elif call == "hand_back":
            await master.HandBack(pb.HandBackRequest(region="r", tasks=[bad], reason="x"))
        else:
            await master.Heartbeat(pb.RegionHeartbeat(region="r", address="a:1", held=[bad]))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a task id" in (raised.value.details() or "")


async def test_a_hand_back_is_logged_with_its_reason(
    master: rpc.MasterStub, db: Database, caplog: pytest.LogCaptureFixture
):
    task = due_task()
    await db.insert_tasks([task])
    (claimed,) = await db.claim("r", 10)
    with caplog.at_level(logging.INFO, logger="strata.master.service"):
        reply = await master.HandBack(pb.HandBackRequest(
            region="r", tasks=[pb.TaskRef(task_id=str(claimed.id), attempt=claimed.attempt)],
            reason="no live worker"))
    assert reply.returned == 1
    (record,) = [r for r in caplog.records if getattr(r, "action", "") == "tasks_handed_back"]
    assert "(no live worker)" in record.getMessage()
    back = await db.get_task(task.id)
    assert back is not None and back.state == "pending"


async def test_a_heartbeat_wakes_the_scanner_only_for_room_the_region_did_not_have(
    db: Database, database_url: str
) -> None:
    settings = MasterSettings(database_url=database_url,
                              region_dead_after=timedelta(seconds=30))
    wakes: list[int] = []
    service = MasterService(db, settings, lambda: wakes.append(1))

    async def beat(running: int, queued: int = 0, most: int = 8) -> int:
        before = len(wakes)
        await service.Heartbeat(pb.RegionHeartbeat(
            region="r", address="a:1", capacity=4, max_outstanding=most, running=running,
            queued=queued, built_at=0), None)  # type: ignore[arg-type]
        return len(wakes) - before

    assert await beat(running=0) == 1  # new, with room
    assert [await beat(running=0) for _ in range(5)] == [0] * 5  # the same room: no news
    assert await beat(running=4, queued=4) == 0  # full
    assert await beat(running=4) == 1  # room again
    assert await beat(running=4, most=16) == 1  # a worker joined: more room
    assert await beat(running=4, most=16) == 0
