"""Mutual TLS between the tiers, on real processes: tasks run end to end; plaintext,
foreign and wrong-role callers are refused; a region cannot register under another's
name; REST is HTTPS; and every certificate is rotated under load with SIGHUP."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import ssl
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import grpc
import pytest
from cryptography import x509

from strata.common import certs
from strata.common.client import Client, Unavailable
from strata.local.cluster import Cluster, wait_until
from strata.proto import strata_pb2 as pb
from strata.proto import strata_pb2_grpc as rpc

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

TERMINAL = {"succeeded", "failed", "cancelled"}


@pytest.fixture
async def tls_cluster(database_url: str, tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(workdir=tmp_path, database_url=database_url, tls=True)
    try:
        yield c
    finally:
        c.stop()


def _channel(address: str, certs_dir: Path | None, stem: str = certs.CLIENT, *,
             ca: Path | None = None, name: str | None = None) -> grpc.aio.Channel:
    """A channel as an outsider would make one: plaintext without ``certs_dir``, else
    with ``<stem>.pem`` of ``certs_dir`` (trusting ``ca``, default that dir's CA)."""
    if certs_dir is None:
        return grpc.aio.insecure_channel(address)
    creds = grpc.ssl_channel_credentials(
        root_certificates=(ca or certs_dir / certs.CA_CERT).read_bytes(),
        private_key=(certs_dir / f"{stem}-key.pem").read_bytes(),
        certificate_chain=(certs_dir / f"{stem}.pem").read_bytes())
    options = [("grpc.ssl_target_name_override", name)] if name else []
    return grpc.aio.secure_channel(address, creds, options=options)


async def _code(call: Any) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def _served_serial(port: int, certs_dir: Path, server_name: str) -> int:
    """The serial of the certificate a fresh TLS handshake to ``port`` is shown (with
    the client certificate, which the gRPC ports require; asked for h2, as gRPC is)."""
    context = ssl.create_default_context(cafile=str(certs_dir / certs.CA_CERT))
    context.load_cert_chain(certs_dir / "client.pem", certs_dir / "client-key.pem")
    context.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=server_name) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def _file_serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


async def _healthz(port: int) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/healthz") as r:
        return dict(await r.json())


def _spec() -> pb.TaskSpec:
    return pb.TaskSpec(id=str(uuid.uuid4()), attempt=1, kind="shell",
                       payload_json=json.dumps({"command": "echo should-not-run"}),
                       lease_expires_at=time.time() + 60)


# ---- end to end ---------------------------------------------------------------------------


async def test_tasks_run_end_to_end_over_mutual_tls_and_rest_is_https(
    tls_cluster: Cluster,
) -> None:
    c = tls_cluster
    await c.start_master()
    await c.start_region("east")
    await c.start_worker("east", "east-w1")
    assert c.api.startswith("https://")
    async with c.client() as client:
        ids = [(await client.create(kind="shell", command=f"echo tls-{i}"))["id"]
               for i in range(5)]
        for i, task_id in enumerate(ids):
            task = await client.wait(task_id, timeout_s=30)
            assert task["state"] == "succeeded", task
            assert task["result"]["output"] == f"tls-{i}\n"
        regions = await client.regions()
    assert [r["name"] for r in regions if r["state"] == "up"] == ["east"]
    assert "mutual TLS" in c.log("master")

    # REST is HTTPS with the master's certificate: checked against the system's CAs
    # it is refused, and plain HTTP on its port gets no API.
    async with Client(c.api, timeout_s=5) as untrusting:
        with pytest.raises(Unavailable, match="certificate"):
            await untrusting.request("GET", "/readyz")
    async with Client(c.api.replace("https://", "http://"), timeout_s=5) as plain:
        with pytest.raises(Unavailable):
            await plain.request("GET", "/readyz")


async def test_the_cli_reaches_a_tls_master_with_the_ca(tls_cluster: Cluster) -> None:
    c = tls_cluster
    await c.start_master()
    from strata.local import launcher

    env = launcher.child_env({"STRATA_API": c.api}, without=("STRATA_TLS_CA",))
    proc = await asyncio.create_subprocess_exec(
        *launcher.command("list", "--ca", str(c.ca)), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert out.decode().split() == ["ID", "STATE", "KIND", "REGION", "ATTEMPT", "CREATED"]
    refused = await asyncio.create_subprocess_exec(
        *launcher.command("list"), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await refused.communicate()
    assert refused.returncode == 1 and b"certificate" in err, err


# ---- who may call what ------------------------------------------------------------------


async def test_a_tls_region_refuses_plaintext_foreign_and_wrong_role_callers(
    tls_cluster: Cluster, tmp_path: Path,
) -> None:
    c = tls_cluster
    await c.start_master()
    await c.start_region("east")
    await c.start_worker("east", "east-w1")
    region = f"127.0.0.1:{c.region_ports['east']}"
    master = f"127.0.0.1:{c.grpc_port}"
    foreign = tmp_path / "foreign"
    certs.init(foreign, regions=["east"])  # another CA, with a look-alike of every cert

    async def delegate(channel: grpc.aio.Channel) -> grpc.StatusCode:
        async with channel:
            return await _code(rpc.RegionStub(channel).Delegate(
                pb.DelegateRequest(tasks=[_spec()]), timeout=5))

    # No TLS at all: the handshake fails, nothing reaches the servicer.
    assert await delegate(_channel(region, None)) == grpc.StatusCode.UNAVAILABLE
    # A client certificate of another CA (trusting ours, so only the client side fails).
    assert await delegate(_channel(region, foreign, "master", ca=c.ca, name="east")) == \
        grpc.StatusCode.UNAVAILABLE
    # Our CA, but not the master: a client's, a worker's, another region's certificate.
    for stem in (certs.CLIENT, certs.WORKER):
        assert await delegate(_channel(region, c.certs_dir, stem, name="east")) == \
            grpc.StatusCode.PERMISSION_DENIED, stem
    c.tls_env(certs.region_stem("west"))  # issue region west's certificate
    assert await delegate(_channel(region, c.certs_dir, "region-west", name="east")) == \
        grpc.StatusCode.PERMISSION_DENIED
    # Only workers may hold a stream; the master may not either.
    async with _channel(region, c.certs_dir, certs.MASTER, name="east") as channel:
        call = rpc.RegionStub(channel).Connect()

        async def hello() -> None:
            await call.write(pb.WorkerMessage(hello=pb.WorkerHello(worker_id="intruder",
                                                                   capacity=4)))
            await call.read()

        assert await _code(hello()) == grpc.StatusCode.PERMISSION_DENIED

    # The master's gRPC port is mutual TLS too: a region's calls need that region's cert.
    register = pb.RegisterRequest(region="east", address=region)
    for stem in (certs.CLIENT, certs.WORKER, "region-west"):
        async with _channel(master, c.certs_dir, stem, name="master") as channel:
            assert await _code(rpc.MasterStub(channel).Register(register, timeout=5)) == \
                grpc.StatusCode.PERMISSION_DENIED, stem
    async with _channel(master, None) as channel:
        assert await _code(rpc.MasterStub(channel).Register(register, timeout=5)) == \
            grpc.StatusCode.UNAVAILABLE

    # Nothing was delegated: the region holds nothing, its worker ran nothing.
    state = await _healthz(c.region_http_ports["east"])
    assert (state["queued"], state["running"]) == (0, 0), state
    assert [w["id"] for w in state["workers"]] == ["east-w1"]
    assert "should-not-run" not in c.log("east-w1")
    worker = json.loads(await _worker_health(c, "east-w1"))
    assert worker["completed"] == 0 and worker["running"] == 0, worker
    assert c.log("east").count("action=peer_refused") == 4  # 3 Delegates, 1 Connect
    assert "worker intruder joined" not in c.log("east")


async def _worker_health(c: Cluster, worker_id: str) -> str:
    async with c.client() as client:
        workers = await client.workers()
    (address,) = [w["health_address"] for w in workers if w["id"] == worker_id]
    async with aiohttp.ClientSession() as s, s.get(f"http://{address}/healthz") as r:
        return await r.text()


async def test_a_region_with_another_regions_certificate_never_registers(
    tls_cluster: Cluster,
) -> None:
    c = tls_cluster
    await c.start_master()
    west = c.tls_env(certs.region_stem("west"))
    await c.start_region("east", wait=False, STRATA_TLS_CERT=west["STRATA_TLS_CERT"],
                         STRATA_TLS_KEY=west["STRATA_TLS_KEY"])
    # It is told why and stops (a configuration error), rather than retry for ever.
    code = await asyncio.to_thread(c.procs["east"].wait, 30)
    assert code == 2, c.log("east")
    assert "action=register_refused" in c.log("east")
    assert "region west" in c.log("east")
    assert "action=peer_refused" in c.log("master")
    async with c.client() as client:
        assert await client.regions() == []


# ---- rotation ----------------------------------------------------------------------------


async def test_every_certificate_rotates_under_load_with_sighup_and_no_task_is_lost(
    tls_cluster: Cluster,
) -> None:
    c = tls_cluster
    await c.start_master()
    for region in ("east", "west"):
        await c.start_region(region)
        await c.start_worker(region, f"{region}-w1", concurrency=8)
    names = {"master": "master", "east": "east", "west": "west"}
    ports = {"master": c.grpc_port, "east": c.region_ports["east"],
             "west": c.region_ports["west"]}
    stems = {"master": certs.MASTER, "east": "region-east", "west": "region-west"}
    before = {p: _served_serial(ports[p], c.certs_dir, names[p]) for p in ports}
    assert before == {p: _file_serial(c.certs_dir / f"{stems[p]}.pem") for p in ports}

    submitted: list[str] = []
    stop_load = asyncio.Event()

    async def load() -> None:
        """A steady trickle: 20 short tasks every 50 ms, spread over both regions."""
        async with c.client() as client:
            while not stop_load.is_set():
                batch = [{"kind": "sleep", "seconds": 0.05,
                          "region": "east" if i % 2 else "west"} for i in range(20)]
                submitted.extend(await client.create_batch(batch))
                await asyncio.sleep(0.05)

    async def succeeded() -> int:
        async with c.client() as client:
            return int((await client.stats())["counts"].get("succeeded", 0))

    loader = asyncio.create_task(load())
    try:
        await wait_until(lambda: _at_least(succeeded, 200), timeout_s=60,
                         what="the load running")
        reloads = {name: c.log(name).count("action=tls_reloaded") for name in c.procs}
        renewals = {w: c.log(w).count("action=region_stream_renewed")
                    for w in ("east-w1", "west-w1")}
        c.rotate_certificates()
        for name in c.procs:
            c.kill(name, signal.SIGHUP)
        await wait_until(lambda: _all_logged(c, "tls_reloaded", reloads), timeout_s=30,
                         what="every process reloaded its certificate")
        await wait_until(lambda: _all_logged(c, "region_stream_renewed", renewals),
                         timeout_s=30, what="every worker's stream renewed")
        # Fresh handshakes see the new certificates, on gRPC and on REST.
        after = {p: _served_serial(ports[p], c.certs_dir, names[p]) for p in ports}
        for p in ports:
            assert after[p] != before[p], p
            assert after[p] == _file_serial(c.certs_dir / f"{stems[p]}.pem"), p
        assert _served_serial(c.http_port, c.certs_dir, "127.0.0.1") == after["master"]
        done_at_rotation = await succeeded()
        await wait_until(lambda: _at_least(succeeded, done_at_rotation + 400), timeout_s=60,
                         what="the load carrying on after the rotation")
    finally:
        stop_load.set()
        await loader

    async with c.client() as client:
        async def all_ended() -> bool:
            stats = (await client.stats())["counts"]
            return sum(stats.get(s, 0) for s in TERMINAL) == len(submitted)

        await wait_until(all_ended, timeout_s=60, what="every task ended")
        stats = (await client.stats())["counts"]
        assert stats.get("succeeded", 0) == len(submitted), stats
    # Nothing ran twice: each task has one attempt that started, the one that succeeded.
    # (A region whose only worker renews its stream hands its queue back, as for any
    # worker leaving: those attempts end "returned", never started.)
    conn = await asyncpg.connect(c.database_url)
    try:
        twice = await conn.fetch(
            "SELECT task_id, count(*) FROM attempts WHERE started_at IS NOT NULL "
            "AND outcome <> 'succeeded' GROUP BY 1 LIMIT 5")
        reruns = await conn.fetchval(
            "SELECT count(*) FROM attempts WHERE outcome NOT IN ('succeeded', 'returned')")
    finally:
        await conn.close()
    assert twice == [] and reruns == 0, twice
    for name in c.procs:
        assert c.procs[name].poll() is None, f"{name} exited: {c.log(name)[-2000:]}"
        assert "tls_reload_failed" not in c.log(name)


async def _at_least(count: Any, n: int) -> bool:
    return bool(await count() >= n)


async def _all_logged(c: Cluster, action: str, before: dict[str, int]) -> bool:
    return all(c.log(name).count(f"action={action}") > n for name, n in before.items())


async def test_a_worker_checks_its_regions_certificate_for_the_name_it_is_given(
    tls_cluster: Cluster,
) -> None:
    """As compose's workers do (their region's service name, whatever they dial): the
    right name connects, another region's name never does."""
    c = tls_cluster
    await c.start_master()
    await c.start_region("east")
    await c.start_worker("east", "east-named", STRATA_TLS_SERVER_NAME="region-east")
    await c.start_worker("east", "east-wrong", wait=False, STRATA_TLS_SERVER_NAME="west")
    await wait_until(lambda: _logged(c, "east-wrong", "action=region_link_lost", 2),
                     what="the wrong-name worker failing to connect")
    async with c.client() as client:
        assert [w["id"] for w in await client.workers()] == ["east-named"]
    assert "region_connected" not in c.log("east-wrong")


async def _logged(c: Cluster, name: str, text: str, times: int) -> bool:
    return c.log(name).count(text) >= times
