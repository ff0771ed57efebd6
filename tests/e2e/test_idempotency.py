"""Ingest a client can retry: a master killed around a batch's commit, on real processes.

A client whose create got no answer cannot tell whether it went through. Sent again with
the same idempotency keys, the batch makes each task exactly once either way."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from typing import Any

import aiohttp
import asyncpg
import pytest

from strata.local.cluster import Cluster, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

BATCH = 1_000


def _batch(tag: str) -> list[dict[str, object]]:
    return [{"kind": "noop", "idempotency_key": f"{tag}-{i}"} for i in range(BATCH)]


async def _send_unanswered(
    cluster: Cluster, tasks: list[dict[str, object]]
) -> asyncio.StreamWriter:
    """POST the batch and read not a byte of the answer, as a client whose connection
    breaks before it does. The connection is left open: closed, it could stop the
    request early, and that is not the case to test."""
    body = json.dumps({"tasks": tasks}).encode()
    _, writer = await asyncio.open_connection("127.0.0.1", cluster.http_port)
    writer.write(
        b"POST /v1/tasks/batch HTTP/1.1\r\nHost: strata\r\n"
        b"Content-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    await writer.drain()
    return writer


async def _hang_up(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def _keyed(conn: asyncpg.Connection, tag: str) -> dict[str, str]:
    rows = await conn.fetch(
        "SELECT idempotency_key, id::text FROM tasks WHERE idempotency_key LIKE $1",
        f"{tag}-%")
    return {r["idempotency_key"]: r["id"] for r in rows}


async def _retry(cluster: Cluster, tasks: list[dict[str, object]]) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.post(
        cluster.api + "/v1/tasks/batch", json={"tasks": tasks}
    ) as resp:
        return resp.status, await resp.json()


async def test_a_batch_committed_before_the_master_died_is_found_not_made_again(
    cluster: Cluster,
) -> None:
    await cluster.start_master()
    tasks = _batch("committed")
    conn = await asyncpg.connect(cluster.database_url)
    try:
        writer = await _send_unanswered(cluster, tasks)

        async def committed() -> bool:
            return len(await _keyed(conn, "committed")) == BATCH

        await wait_until(committed, timeout_s=30, what="the batch committed")
        cluster.kill("master", signal.SIGKILL)
        await _hang_up(writer)
        await cluster.start_master()

        status, body = await _retry(cluster, tasks)
        assert status == 200, body
        assert body["existed"] == [True] * BATCH
        stored = await _keyed(conn, "committed")
        assert body["ids"] == [stored[f"committed-{i}"] for i in range(BATCH)]
        assert await conn.fetchval("SELECT count(*) FROM tasks") == BATCH
    finally:
        await conn.close()


async def test_a_batch_cut_off_at_any_point_is_made_exactly_once_by_its_retry(
    cluster: Cluster,
) -> None:
    await cluster.start_master()
    conn = await asyncpg.connect(cluster.database_url)
    try:
        for round_ in range(3):
            tag = f"cut{round_}"
            tasks = _batch(tag)
            writer = await _send_unanswered(cluster, tasks)
            # Killed at once: before, during or after the commit, whichever came first.
            cluster.kill("master", signal.SIGKILL)
            await _hang_up(writer)
            await cluster.start_master()
            status, body = await _retry(cluster, tasks)
            assert status in (200, 201), body
            stored = await _keyed(conn, tag)
            assert len(stored) == BATCH
            assert body["ids"] == [stored[f"{tag}-{i}"] for i in range(BATCH)]
        assert await conn.fetchval("SELECT count(*) FROM tasks") == 3 * BATCH
    finally:
        await conn.close()
