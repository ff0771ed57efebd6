"""A half-open LISTEN connection: the database link goes silent without closing. The
probe notices within its timeout, and the scanner reconnects instead of falling back to
its periodic timer for good."""

from __future__ import annotations

import asyncio
import time

import pytest

from strata.common.errors import DatabaseUnavailable
from strata.master.db import Database
from tests.chaos.harness import _host_port, _with_address
from tests.chaos.links import ToxiproxyServer

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(60)]


async def test_a_silent_listen_connection_fails_its_probe(
    database_url: str, toxiproxy_clean: ToxiproxyServer
) -> None:
    link = await toxiproxy_clean.create_link("db", _host_port(database_url))
    db = await Database.connect(_with_address(database_url, link.listen), pool_size=2,
                                command_timeout_s=2)
    woken = asyncio.Event()
    try:
        async with db.listen(woken.set) as listener:
            await listener.probe(2.0)  # a healthy link answers
            await link.black_hole()  # data stops, the connection stays open
            began = time.monotonic()
            with pytest.raises(DatabaseUnavailable, match="probe"):
                await listener.probe(1.0)
            assert time.monotonic() - began < 1.5
    finally:
        await link.clear()
        await db.close()
