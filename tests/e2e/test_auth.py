"""API tokens on real processes: REST and the gRPC client API refuse a call without a
token, or with a wrong one, and write nothing for it; the probes stay open; tokens made
and revoked with ``strata token`` count on a running master within a second; a master
that would listen beyond loopback with no token refuses to start (unless
--insecure-no-auth); the CLI and the SDK send the token; and a flood of wrong tokens
from one address is refused (429) while a good client elsewhere keeps its latency."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import grpc
import pytest
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.auth_flood import flood, good_client, pct
from strata.client import AsyncClient, Client, RateLimited, Unauthenticated
from strata.common.client import Client as RestClient
from strata.common.tokens import hash_token, new_token
from strata.local.cluster import Cluster, wait_until
from strata.local.launcher import command as strata_command
from strata.proto import tasks_pb2 as pb
from strata.proto import tasks_pb2_grpc as rpc

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

CHALLENGE = 'Bearer realm="strata"'
INVALID = 'Bearer realm="strata", error="invalid_token"'
# Every route that writes, each with a body it would take.
WRITES: list[tuple[str, str, Any]] = [
    ("POST", "/v1/tasks", {"kind": "noop"}),
    ("POST", "/v1/tasks/batch", {"tasks": [{"kind": "noop"}, {"kind": "noop"}]}),
    ("POST", "/schedule", {"command": "true"}),
    ("POST", "/v1/schedules", {"name": "s", "every_s": 60, "task": {"kind": "noop"}}),
    ("PUT", "/v1/concurrency/k", {"limit": 2}),
]


@pytest.fixture
async def guarded(cluster: Cluster) -> AsyncIterator[Cluster]:
    cluster.token = new_token()
    await cluster.start_master()
    yield cluster


async def _count(database_url: str, table: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))  # constants only
    finally:
        await conn.close()


async def test_rest_needs_the_token_and_writes_nothing_without_it(cluster: Cluster) -> None:
    # More wrong tokens than the default burst: every one of them a 401, none a 429.
    cluster.env = {"STRATA_AUTH_FAILURE_BURST": "100"}
    cluster.token = new_token()
    await cluster.start_master()
    guarded = cluster
    api = guarded.api
    async with aiohttp.ClientSession() as s:
        for header, challenge, code in ((None, CHALLENGE, "unauthenticated"),
                                        ("Bearer st_wrong", INVALID, "invalid_token"),
                                        ("Basic c3RyYXRhOnN0cmF0YQ==", CHALLENGE,
                                         "unauthenticated")):
            headers = {"Authorization": header} if header else {}
            for method, path, body in [*WRITES, ("GET", "/v1/tasks", None),
                                       ("GET", "/v1/stats", None), ("GET", "/metrics", None),
                                       ("GET", "/v1/openapi.json", None),
                                       ("GET", "/status?task_id=x", None)]:
                async with s.request(method, api + path, json=body, headers=headers) as r:
                    assert r.status == 401, (method, path, header, await r.text())
                    assert r.headers["WWW-Authenticate"] == challenge
                    assert r.content_type == "application/json"
                    error = (await r.json())["error"]
                    assert error["code"] == code and error["message"], error
        for path in ("/healthz", "/readyz", "/", "/ui/app.js"):
            async with s.get(api + path) as r:
                assert r.status == 200, path
    # Nothing was written, as the master itself counts and as the database holds.
    async with guarded.client() as c:
        stats = await c.stats()
        assert sum(stats["counts"].values()) == 0, stats
        assert await c.schedules() == [] and await c.concurrency_limits() == []
        made = await c.create(kind="noop")
        assert (await c.get(made["id"]))["id"] == made["id"]
    for table, rows in (("tasks", 1), ("schedules", 0), ("concurrency_limits", 0)):
        assert await _count(guarded.database_url, table) == rows, table


async def test_the_grpc_client_api_needs_the_token(guarded: Cluster) -> None:
    assert guarded.token is not None
    good = (("authorization", f"Bearer {guarded.token}"),)
    noop = pb.SubmitRequest(task=pb.NewTask(kind="noop", payload=struct_pb2.Struct()))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{guarded.grpc_port}") as channel:
        stub = rpc.TasksStub(channel)
        for metadata, says in ((None, "needs a token"),
                               ((("authorization", "Bearer st_wrong"),), "not valid")):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Submit(noop, metadata=metadata)
            assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
            assert says in (caught.value.details() or "")
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.List(pb.ListRequest(), metadata=metadata)
            assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
            watch = stub.Watch(pb.WatchRequest(), metadata=metadata)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await watch.read()
            assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
        # Refused before anything of the request is looked at: a bad one too.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Get(pb.TaskId(id="not an id"))
        assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert await _count(guarded.database_url, "tasks") == 0

        made = await stub.Submit(noop, metadata=good)
        assert made.kind == "noop"
        assert [t.id for t in (await stub.List(pb.ListRequest(), metadata=good)).tasks] == [
            made.id]
        watch = stub.Watch(pb.WatchRequest(), metadata=good)
        assert (await watch.read()).event == "subscribed"
        watch.cancel()
        # The standard health service needs none (mutual TLS guards the channel).
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service="strata.v1.Tasks"))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

        # Past its burst of wrong tokens (3 so far), the address is refused outright.
        codes = []
        for _ in range(12):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.List(pb.ListRequest(), metadata=(("authorization",
                                                             "Bearer st_wrong"),))
            codes.append(caught.value.code())
        assert codes[:7] == [grpc.StatusCode.UNAUTHENTICATED] * 7, codes
        assert codes[-1] is grpc.StatusCode.RESOURCE_EXHAUSTED, codes
        assert "too many API tokens that are not valid" in (caught.value.details() or "")
        assert int(dict(caught.value.trailing_metadata() or ())["retry-after"]) >= 1


async def test_a_grpc_watch_ends_when_its_token_is_revoked(guarded: Cluster) -> None:
    token = new_token()
    conn = await asyncpg.connect(guarded.database_url)
    try:
        await conn.execute("INSERT INTO api_tokens (name, hash) VALUES ('ci', $1)",
                           hash_token(token))
        metadata = (("authorization", f"Bearer {token}"),)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{guarded.grpc_port}") as channel:
            stub = rpc.TasksStub(channel)

            async def accepted() -> bool:
                try:
                    await stub.List(pb.ListRequest(), metadata=metadata)
                except grpc.aio.AioRpcError:
                    return False
                return True

            await wait_until(accepted, timeout_s=10, what="the token stored to count")
            watch = stub.Watch(pb.WatchRequest(), metadata=metadata)
            assert (await watch.read()).event == "subscribed"
            await conn.execute("DELETE FROM api_tokens WHERE name = 'ci'")
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await asyncio.wait_for(watch.read(), timeout=10)
            assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
            assert "revoked" in (caught.value.details() or "")
    finally:
        await conn.close()


async def test_tokens_made_and_revoked_with_the_cli_count_on_a_running_master(
    cluster: Cluster,
) -> None:
    await cluster.start_master()  # on loopback with no token: open
    async with RestClient(cluster.api) as open_client:
        await open_client.stats()
        tokenless = open_client.watch()
        assert (await anext(tokenless)).event == "subscribed"

        def strata(*args: str) -> subprocess.CompletedProcess[str]:
            env = {**os.environ, "STRATA_DATABASE_URL": cluster.database_url}
            return subprocess.run(strata_command("token", *args), env=env, text=True,
                                  capture_output=True, timeout=60)

        made = await asyncio.to_thread(strata, "create", "ci")
        assert made.returncode == 0, made.stderr
        token = made.stdout.strip()
        kept = await asyncio.to_thread(strata, "create", "keeper")
        assert kept.returncode == 0, kept.stderr

        async def refused() -> bool:
            try:
                await open_client.stats()
            except Unauthenticated:
                return True
            return False

        began = time.monotonic()
        await wait_until(refused, timeout_s=10, what="the new token to be needed")
        print(f"a token made counted after {time.monotonic() - began:.2f}s")
        # A stream opened without one ends, and is not let in again.
        with pytest.raises(Unauthenticated):
            await asyncio.wait_for(anext(tokenless), timeout=10)
        await tokenless.aclose()
        assert "action=auth_enabled" in cluster.log("master")

        async with AsyncClient(cluster.api, token=token) as sdk:
            assert (await sdk.stats()).counts.pending == 0
            watch = sdk.watch()
            await watch.subscribe()
            listed = await asyncio.to_thread(strata, "list")
            assert listed.returncode == 0
            assert [row.split()[0] for row in listed.stdout.splitlines()[1:]] == [
                "ci", "keeper"]
            revoked = await asyncio.to_thread(strata, "revoke", "ci")
            assert revoked.returncode == 0, revoked.stderr
            began = time.monotonic()
            # Its open stream ends, and taking it up again is refused.
            with pytest.raises(Unauthenticated) as caught:
                await anext(watch)
            took = time.monotonic() - began
            print(f"a token revoked stopped counting after {took:.2f}s")
            assert took < 5, took
            assert caught.value.code == "invalid_token"
            await watch.aclose()
            with pytest.raises(Unauthenticated):
                await sdk.stats()
        gone = await asyncio.to_thread(strata, "revoke", "ci")
        assert gone.returncode == 1 and "no API token named 'ci'" in gone.stderr


async def test_a_master_beyond_loopback_without_a_token_refuses_to_start(
    cluster: Cluster,
) -> None:
    cluster.env = {"STRATA_HTTP_HOST": "0.0.0.0"}
    with pytest.raises(AssertionError, match="master exited with 2"):
        await cluster.start_master()
    assert cluster.procs["master"].returncode == 2
    log = cluster.log("master")
    assert "beyond loopback (http_host 0.0.0.0) with no API token" in log, log
    assert "strata token create NAME" in log and "STRATA_API_TOKENS" in log
    assert "--insecure-no-auth" in log
    assert "master_ready" not in log


async def test_insecure_no_auth_starts_it_loudly(cluster: Cluster) -> None:
    cluster.env = {"STRATA_GRPC_HOST": "0.0.0.0", "STRATA_INSECURE_NO_AUTH": "true"}
    await cluster.start_master()
    log = cluster.log("master")
    warned = [line for line in log.splitlines() if "action=insecure_no_auth" in line]
    assert len(warned) == 1 and " WARNING " in warned[0], log
    assert "grpc_host 0.0.0.0" in warned[0]
    async with RestClient(cluster.api) as c:
        await c.stats()  # open, as it was told


async def test_beyond_loopback_a_token_in_the_database_is_enough(cluster: Cluster) -> None:
    env = {**os.environ, "STRATA_DATABASE_URL": cluster.database_url}
    made = await asyncio.to_thread(subprocess.run, strata_command("token", "create", "ops"),
                                   env=env, text=True, capture_output=True, timeout=60)
    assert made.returncode == 0, made.stderr
    cluster.env = {"STRATA_HTTP_HOST": "0.0.0.0"}
    cluster.token = made.stdout.strip()
    # (The cluster passes its token as STRATA_API_TOKENS too; the one stored is the same.)
    await cluster.start_master()
    async with cluster.client() as c:
        await c.stats()
    async with RestClient(cluster.api) as c:
        with pytest.raises(Unauthenticated):
            await c.stats()


async def test_the_cli_and_the_sdk_send_the_token(guarded: Cluster) -> None:
    assert guarded.token is not None
    env = {k: v for k, v in os.environ.items() if k != "STRATA_TOKEN"}

    def strata(*args: str, **more_env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*strata_command(*args), "--api", guarded.api],
                              env={**env, **more_env}, text=True, capture_output=True,
                              timeout=60)

    refused = await asyncio.to_thread(strata, "list")
    assert refused.returncode == 1
    assert "needs a token" in refused.stderr and "$STRATA_TOKEN or --token" in refused.stderr
    wrong = await asyncio.to_thread(strata, "list", "--token", "st_wrong")
    assert wrong.returncode == 1 and "not valid" in wrong.stderr
    by_env = await asyncio.to_thread(strata, "submit", "--command", "true",
                                     STRATA_TOKEN=guarded.token)
    assert by_env.returncode == 0, by_env.stderr
    by_flag = await asyncio.to_thread(strata, "list", "--token", guarded.token)
    assert by_flag.returncode == 0, by_flag.stderr
    assert by_env.stdout.strip() in by_flag.stdout

    async with AsyncClient(guarded.api, token="st_wrong") as wrong_sdk:
        with pytest.raises(Unauthenticated) as caught:
            await wrong_sdk.stats()
        assert (caught.value.status, caught.value.code) == (401, "invalid_token")
    with Client(guarded.api, token=guarded.token) as sync:
        assert sync.stats().counts.pending == 1


async def test_a_flood_of_wrong_tokens_is_refused_and_others_are_not_held_back(
    guarded: Cluster,
) -> None:
    """1,000 wrong tokens from 127.0.0.1: past the burst, 429 without a look at them;
    meanwhile a good client on 127.0.0.2 (another address, to the master) keeps going."""
    assert guarded.token is not None
    await good_client(guarded.api, guarded.token, count=20)  # warm up
    alone, _ = await good_client(guarded.api, guarded.token, count=100)
    flooding = asyncio.ensure_future(flood(guarded.api, requests=1000, concurrency=20))
    during, statuses = await good_client(guarded.api, guarded.token, count=1, until=flooding)
    answered = await flooding
    print(f"good client from 127.0.0.2: alone p50 {pct(alone, 0.5):.1f} ms p99 "
          f"{pct(alone, 0.99):.1f} ms; during the flood ({len(during)} requests) p50 "
          f"{pct(during, 0.5):.1f} ms p99 {pct(during, 0.99):.1f} ms; the flood: "
          f"{dict(sorted(answered.items()))}")
    assert sum(answered.values()) == 1000
    assert set(answered) <= {401, 429}, answered
    assert answered[429] >= 900, answered  # the burst (10), then about one a second
    assert statuses == {200: len(during)}, statuses
    assert pct(during, 0.99) < 1000, during

    # The flood's address is told when to try again; its failures are a few log lines.
    async with AsyncClient(guarded.api, token="st_wrong") as flooder:
        with pytest.raises(RateLimited) as caught:
            await flooder.stats()
        assert caught.value.status == 429 and caught.value.retry_after_s >= 1
    log = [line for line in guarded.log("master").splitlines() if "action=auth_" in line]
    assert any("action=auth_rate_limited" in line and "127.0.0.1" in line for line in log)
    assert 2 <= len([line for line in log if "peer=127.0.0.1" in line]) <= 5, log
