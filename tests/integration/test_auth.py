"""API tokens against a real PostgreSQL: ``strata token create / list / revoke`` (only a
hash stored, a name once), a master's guard that reads them (made and revoked tokens
count within a second, last use written back), the refusal to listen beyond loopback
with none, and REST behind it: which routes need one, and an event stream that ends
when its token is revoked."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from strata import cli
from strata.common import errors, tokens
from strata.common.client import Client, Unauthenticated
from strata.common.errors import ConfigError, Conflict, InvalidInput, NotFound
from strata.common.settings import MasterSettings
from strata.master import auth
from strata.master.api import Api
from strata.master.control import Control
from strata.master.db import Database
from strata.master.regions import RegionClients
from strata.master.stream import EventHub

pytestmark = pytest.mark.integration


def _main(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as caught:
        cli.main(argv)
    return int(caught.value.code or 0)


# ---- strata token ... ------------------------------------------------------------------

def test_the_token_commands_store_only_a_hash_and_a_name_once(
    database_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("STRATA_DATABASE_URL", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert _main(["token", "create", "ci", "--database-url", database_url]) == 0
    out, err = capsys.readouterr()
    token = out.strip()
    assert token.startswith("st_") and len(token) == 46 and "\n" not in token
    assert "shown this once" in err and token not in err

    monkeypatch.setenv("STRATA_DATABASE_URL", database_url)  # as `strata migrate` takes it
    assert _main(["token", "create", "ci"]) == 1
    assert "an API token named 'ci' exists already" in capsys.readouterr().err
    assert _main(["token", "create", "deploy"]) == 0
    second = capsys.readouterr().out.strip()
    assert second != token

    assert _main(["token", "list"]) == 0
    out = capsys.readouterr().out
    header, *rows = out.splitlines()
    assert header.split() == ["NAME", "CREATED", "LAST", "USED"]
    assert [r.split()[0] for r in rows] == ["ci", "deploy"]
    assert all(r.split()[2] == "never" for r in rows)
    assert token not in out and tokens.hash_token(token) not in out

    async def stored() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(database_url)
        try:
            return list(await conn.fetch("SELECT * FROM api_tokens ORDER BY name"))
        finally:
            await conn.close()

    rows_ = asyncio.run(stored())
    assert [r["hash"] for r in rows_] == [tokens.hash_token(token), tokens.hash_token(second)]
    assert not any(token in str(value) for r in rows_ for value in r.values())

    assert _main(["token", "revoke", "ci"]) == 0
    assert capsys.readouterr().out == "revoked ci\n"
    assert _main(["token", "revoke", "ci"]) == 1
    assert "no API token named 'ci'" in capsys.readouterr().err
    assert _main(["token", "create", "no spaces"]) == 1
    assert "not a token name" in capsys.readouterr().err
    assert [r["name"] for r in asyncio.run(stored())] == ["deploy"]


def test_the_token_commands_need_a_database(capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STRATA_DATABASE_URL", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert _main(["token", "list"]) == 2
    assert "no database configured" in capsys.readouterr().err


async def test_the_functions_under_the_commands(database_url: str) -> None:
    settings = MasterSettings(database_url=database_url)
    _, made = await auth.create_token(settings, "a")
    assert made.name == "a" and made.last_used_at is None
    with pytest.raises(Conflict):
        await auth.create_token(settings, "a")
    with pytest.raises(InvalidInput):
        await auth.create_token(settings, "")
    assert [t.name for t in await auth.list_tokens(settings)] == ["a"]
    await auth.revoke_token(settings, "a")
    with pytest.raises(NotFound):
        await auth.revoke_token(settings, "a")
    assert await auth.list_tokens(settings) == []


# ---- the guard on a database -------------------------------------------------------------

async def test_tokens_made_and_revoked_count_and_their_use_is_written_back(
    db: Database,
) -> None:
    guard = auth.Guard()
    assert not guard.required
    token = tokens.new_token()
    await db.tokens.create("ci", tokens.hash_token(token))
    await guard.refresh(db)
    assert guard.required
    with pytest.raises(errors.Unauthenticated):
        guard.check("127.0.0.1", "Bearer st_wrong", via="rest")
    assert guard.check("127.0.0.1", f"Bearer {token}", via="rest") is not None
    (before,) = await db.tokens.all()
    assert before.last_used_at is None
    await guard.refresh(db)  # writes the use back
    (after,) = await db.tokens.all()
    assert after.last_used_at is not None and after.last_used_at >= after.created_at
    await guard.refresh(db)  # unused since: not written again
    assert (await db.tokens.all())[0].last_used_at == after.last_used_at

    assert await db.tokens.revoke("ci")
    await guard.refresh(db)
    assert not guard.required  # none left, and the master listens on loopback


async def test_a_revoked_token_stops_counting_within_a_second(db: Database) -> None:
    token = tokens.new_token()
    await db.tokens.create("ci", tokens.hash_token(token))
    guard = auth.Guard(stored=await db.tokens.hashes(), fail_closed=True)
    digest = guard.check("127.0.0.1", f"Bearer {token}", via="rest")
    assert digest is not None
    refresher = asyncio.create_task(guard.run(db))
    try:
        gone = asyncio.ensure_future(guard.until_refused(digest))
        began = time.monotonic()
        assert await db.tokens.revoke("ci")
        await asyncio.wait_for(gone, timeout=5)
        took = time.monotonic() - began
    finally:
        refresher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await refresher
    assert took < auth.REFRESH_S + 0.5, took
    # Every token gone, on a master beyond loopback: closed, not open.
    with pytest.raises(errors.Unauthenticated, match="not valid"):
        guard.check("127.0.0.1", f"Bearer {token}", via="rest")


async def test_a_master_beyond_loopback_needs_a_token_to_start(
    db: Database, database_url: str, caplog: pytest.LogCaptureFixture,
) -> None:
    exposed = MasterSettings(database_url=database_url, http_host="0.0.0.0")
    with pytest.raises(ConfigError) as caught:
        await auth.start(exposed, db)
    assert "strata token create NAME" in str(caught.value)
    assert "STRATA_API_TOKENS" in str(caught.value)
    assert "http_host 0.0.0.0" in str(caught.value)
    assert not (await auth.start(MasterSettings(database_url=database_url), db)).required

    caplog.set_level(logging.INFO, logger="strata.master.auth")
    insecure = exposed.model_copy(update={"insecure_no_auth": True})
    guard = await auth.start(insecure, db)
    assert not guard.required
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.action == "insecure_no_auth"  # type: ignore[attr-defined]

    configured = MasterSettings(database_url=database_url, grpc_host="::",
                                api_tokens=["st_from_the_settings"])
    assert (await auth.start(configured, db)).counts == (1, 0)
    await db.tokens.create("ci", tokens.hash_token(tokens.new_token()))
    assert (await auth.start(exposed, db)).counts == (0, 1)


async def test_a_tokens_file_counts(db: Database, database_url: str, tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"st_one\nsha256:{hashlib.sha256(b'st_two').hexdigest()}\n")
    settings = MasterSettings(database_url=database_url, api_tokens_file=path,
                              http_host="0.0.0.0")
    guard = await auth.start(settings, db)
    for token in ("st_one", "st_two"):
        assert guard.check("127.0.0.1", f"Bearer {token}", via="rest") is not None
    with pytest.raises(ConfigError):
        await auth.start(settings.model_copy(update={"api_tokens_file": path / "x"}), db)


# ---- REST behind the guard ---------------------------------------------------------------

@dataclass
class Served:
    url: str
    guard: auth.Guard
    token: str


@pytest.fixture
async def served(db: Database, database_url: str) -> AsyncIterator[Served]:
    token = tokens.new_token()
    await db.tokens.create("ci", tokens.hash_token(token))
    guard = auth.Guard(stored=await db.tokens.hashes(), fail_closed=True)
    hub = EventHub(db, f"master-{uuid.uuid4().hex[:6]}")
    hub_task = asyncio.create_task(hub.run())
    refresher = asyncio.create_task(guard.run(db))
    regions = RegionClients()
    server = TestServer(Api(Control(db, regions, MasterSettings(database_url=database_url)),
                            hub, guard=guard).app())
    await server.start_server()
    try:
        yield Served(str(server.make_url("")).rstrip("/"), guard, token)
    finally:
        hub.close("test over")
        await server.close()
        for task in (hub_task, refresher):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await regions.close()


async def test_which_routes_need_a_token(served: Served) -> None:
    good = {"Authorization": f"Bearer {served.token}"}
    async with ClientSession() as s:
        for path in ("/healthz", "/readyz", "/", "/ui/app.js", "/ui/style.css"):
            async with s.get(served.url + path) as r:
                assert r.status == 200, path
        for path in ("/v1/tasks", "/v1/stats", "/v1/openapi.json", "/metrics",
                     "/status?task_id=x", "/v1/nothing-here", "/ui/../v1/stats"):
            async with s.get(served.url + path) as r:
                assert r.status == 401, path
                assert r.headers["WWW-Authenticate"] == 'Bearer realm="strata"'
                assert (await r.json())["error"]["code"] == "unauthenticated"
            async with s.get(served.url + path, headers=good) as r:
                assert r.status != 401, path
        async with s.post(served.url + "/healthz") as r:  # not a route: not open
            assert r.status == 401


async def test_an_event_stream_ends_when_its_token_is_revoked(served: Served, db: Database
                                                              ) -> None:
    async with Client(served.url, token=served.token) as client:
        stream = client.events()
        first = await anext(stream)
        assert first.event == "subscribed"
        began = time.monotonic()
        assert await db.tokens.revoke("ci")
        rest = [m async for m in stream]  # ends: the master closed it
        assert [m.event for m in rest] == []
        assert time.monotonic() - began < auth.REFRESH_S + 1.0
        with pytest.raises(Unauthenticated) as caught:
            await client.stats()
        assert caught.value.code == "invalid_token"
