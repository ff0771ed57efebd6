"""The embedded PostgreSQL and the per-test database fixtures, against a real server."""

from __future__ import annotations

import asyncio
import socket
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from strata.common.models import NewTask
from strata.local.postgres import EmbeddedPostgres, PostgresLaunchError, free_port
from strata.master.db import Database

pytestmark = pytest.mark.integration

# Databases seen by test_each_test_gets_its_own_database, across its rounds.
_seen_databases: list[str] = []


async def test_server_accepts_tcp_connections(postgres: EmbeddedPostgres) -> None:
    conn = await asyncpg.connect(postgres.url)
    try:
        # inet_server_addr() is NULL over a unix socket.
        server_addr = await conn.fetchval("SELECT host(inet_server_addr())")
    finally:
        await conn.close()
    assert server_addr is not None
    if isinstance(postgres, EmbeddedPostgres):
        assert server_addr == "127.0.0.1"
        assert postgres.url == f"postgresql://postgres@127.0.0.1:{postgres.port}/postgres"


async def test_fresh_database_is_migrated_and_empty(database_url: str, db: Database) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        name = await conn.fetchval("SELECT current_database()")
        migrations = await conn.fetch("SELECT name FROM schema_migrations ORDER BY version")
        tasks = await conn.fetchval("SELECT count(*) FROM tasks")
    finally:
        await conn.close()
    assert name.startswith("test_")
    assert database_url.endswith(f"/{name}")
    assert [m["name"] for m in migrations][:1] == ["0001_tasks.sql"]
    assert tasks == 0
    assert await db.counts_by_state() == {}


@pytest.mark.parametrize("round_", [1, 2])
async def test_each_test_gets_its_own_database(
    round_: int, database_url: str, db: Database
) -> None:
    assert database_url not in _seen_databases
    _seen_databases.append(database_url)
    assert await db.counts_by_state() == {}
    task = NewTask(
        id=uuid.uuid4(), kind="sleep", payload={"seconds": 0}, run_at=datetime.now(UTC),
        priority=0, region=None, max_attempts=1, timeout_s=10.0,
    )
    await db.insert_tasks([task])
    # Only this round's row: the other round's database is not this one.
    assert await db.counts_by_state() == {"pending": 1}


async def test_restart_on_same_data_dir_keeps_data(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path / "data", port=free_port())
    try:
        await asyncio.to_thread(server.start)
        await _execute(server.url, "CREATE TABLE kept (n int)", "INSERT INTO kept VALUES (42)")
        first_start = await _fetchval(server.url, "SELECT pg_postmaster_start_time()")

        # A second start() adopts the running server instead of failing.
        await asyncio.to_thread(server.start)
        assert await _fetchval(server.url, "SELECT pg_postmaster_start_time()") == first_start

        await asyncio.to_thread(server.stop)
        assert not (tmp_path / "data" / "postmaster.pid").exists()
        await asyncio.to_thread(server.stop)  # idempotent

        await asyncio.to_thread(server.start)
        assert await _fetchval(server.url, "SELECT pg_postmaster_start_time()") != first_start
        assert await _fetchval(server.url, "SELECT n FROM kept") == 42
    finally:
        await asyncio.to_thread(server.stop)


async def test_a_server_found_running_is_adopted_and_never_stopped(tmp_path: Path) -> None:
    """A second EmbeddedPostgres on the same data dir (as a second strata up would be)
    uses the running server, and its stop() leaves it to the one that started it."""
    owner = EmbeddedPostgres(tmp_path / "data", port=free_port())
    try:
        await asyncio.to_thread(owner.start)
        assert owner.adopted_pid is None
        started = await _fetchval(owner.url, "SELECT pg_postmaster_start_time()")
        pid = int((tmp_path / "data" / "postmaster.pid").read_text().split()[0])

        guest = EmbeddedPostgres(tmp_path / "data", port=owner.port)
        await asyncio.to_thread(guest.start)
        assert guest.adopted_pid == pid
        await asyncio.to_thread(guest.stop)

        assert await _fetchval(owner.url, "SELECT pg_postmaster_start_time()") == started
        assert (tmp_path / "data" / "postmaster.pid").exists()
        await asyncio.to_thread(owner.stop)
        assert not (tmp_path / "data" / "postmaster.pid").exists()
    finally:
        await asyncio.to_thread(owner.stop)


async def test_a_port_taken_by_another_program_is_named(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        server = EmbeddedPostgres(tmp_path / "data", port=port)
        with pytest.raises(PostgresLaunchError, match=f"port {port} on 127.0.0.1 is already "
                                                      "in use by another program"):
            await asyncio.to_thread(server.start)
    assert not (tmp_path / "data" / "postmaster.pid").exists()


async def _execute(url: str, *statements: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def _fetchval(url: str, query: str) -> object:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(query)
    finally:
        await conn.close()
