"""Shared fixtures: one PostgreSQL per test session, a migrated template database, and a
fresh clone of it for every test that asks (``CREATE DATABASE ... TEMPLATE``).

Set ``STRATA_TEST_DATABASE_URL`` (e.g. ``postgresql://postgres@127.0.0.1:5432/postgres``)
to use a server of your own instead of starting one. Its role must be allowed to create
and drop databases; ``strata_template`` on it is dropped and rebuilt every session.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest

from strata.local.postgres import EmbeddedPostgres, free_port, with_database
from strata.master.db import Database

TEMPLATE_DB = "strata_template"

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ExternalPostgres:
    """The server named by STRATA_TEST_DATABASE_URL: used, never started or stopped."""

    url: str

    def url_for(self, database: str) -> str:
        return with_database(self.url, database)


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine from a sync fixture on a private loop, leaving pytest-asyncio's alone."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


async def execute(url: str, *statements: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def postgres() -> Iterator[EmbeddedPostgres | ExternalPostgres]:
    """Our own fast (fsync off) server on a free port, or STRATA_TEST_DATABASE_URL's."""
    external = os.environ.get("STRATA_TEST_DATABASE_URL")
    if external:
        yield ExternalPostgres(external)
        return
    # Not under pytest's own temp tree: a pytest session that starts meanwhile sets it
    # back to 0700, and the server runs as another user when we are root.
    home = Path(tempfile.mkdtemp(prefix="strata-test-pg-"))
    home.chmod(0o755)
    server = EmbeddedPostgres(home / "data", port=free_port(), fast=True)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def template_db(postgres: EmbeddedPostgres | ExternalPostgres) -> str:
    """A database with every migration applied, cloned by each test's database."""

    async def build() -> None:
        await execute(
            postgres.url,
            f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}" WITH (FORCE)',
            f'CREATE DATABASE "{TEMPLATE_DB}"',
        )
        db = await Database.connect(postgres.url_for(TEMPLATE_DB), pool_size=1)
        try:
            await db.migrate()
        finally:
            await db.close()

    run_sync(build())
    return TEMPLATE_DB


@pytest.fixture
def database_url(postgres: EmbeddedPostgres | ExternalPostgres, template_db: str) -> Iterator[str]:
    """URL of a migrated, empty database of this test's own, dropped afterwards."""
    name = f"test_{uuid.uuid4().hex}"
    run_sync(execute(postgres.url, f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"'))
    try:
        yield postgres.url_for(name)
    finally:
        # FORCE: a test that leaked a connection must not leak its database too.
        run_sync(execute(postgres.url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = await Database.connect(database_url)
    try:
        yield database
    finally:
        await database.close()


@pytest.fixture
async def raw(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection for test setup (ageing rows) and for reading raw columns."""
    conn = await asyncpg.connect(database_url)
    try:
        yield conn
    finally:
        await conn.close()
