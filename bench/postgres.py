"""A throwaway PostgreSQL for a benchmark run."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg

from strata.local.postgres import EmbeddedPostgres, free_port


def _start(prefix: str, fast: bool, bindir: Path | None, options: Sequence[str]
           ) -> tuple[Path, EmbeddedPostgres]:
    home = Path(tempfile.mkdtemp(prefix=prefix))
    home.chmod(0o755)  # the server runs as another user when we are root
    pg = EmbeddedPostgres(home / "pg", port=free_port(), fast=fast, bindir=bindir,
                          options=options)
    pg.start()
    return home, pg


@asynccontextmanager
async def throwaway_postgres(prefix: str, *, fast: bool = True, bindir: Path | None = None,
                             options: Sequence[str] = ()
                             ) -> AsyncIterator[tuple[Path, EmbeddedPostgres]]:
    """A server in a fresh folder (also the run's work folder), removed afterwards;
    ``bindir`` and ``options`` as :class:`EmbeddedPostgres` takes them."""
    home, pg = await asyncio.to_thread(_start, prefix, fast, bindir, options)
    try:
        yield home, pg
    finally:
        await asyncio.to_thread(pg.stop)
        shutil.rmtree(home, ignore_errors=True)


async def create_database(pg: EmbeddedPostgres, name: str = "bench") -> str:
    """A new empty database on ``pg``; its URL."""
    conn = await asyncpg.connect(pg.url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return pg.url_for(name)
