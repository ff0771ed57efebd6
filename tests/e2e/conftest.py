"""End-to-end fixtures: a fresh database and a cluster of real processes per test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from strata.local.cluster import Cluster


@pytest.fixture
async def cluster(database_url: str, tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(workdir=tmp_path, database_url=database_url)
    try:
        yield c
    finally:
        c.stop()
