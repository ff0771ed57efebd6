"""What a flood of wrong API tokens costs everyone else, on a real master with a token:
a good client on an address of its own (127.0.0.2) reads ``GET /v1/stats`` one request
at a time, first alone, then while another address (127.0.0.1) sends requests with
wrong tokens, so many at a time. The flood's address is refused (429) once past its
burst of failed attempts, without its tokens being hashed; the good client's p50/p99
both ways, and how the flood was answered.

Any 127.x address is this host's loopback on Linux: the good client's connections are
bound to 127.0.0.2 (``local_addr``), so the master counts them apart. The flood comes
from a process of its own, so that it takes nothing of the good client's event loop.

Run: python -m bench.auth_flood [--flood 20000] [--concurrency 50] [--good 300]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import time

import aiohttp

from bench.postgres import create_database, throwaway_postgres
from strata.common.tokens import new_token
from strata.local import launcher
from strata.local.cluster import Cluster

GOOD_ADDRESS = "127.0.0.2"
FLOOD_ADDRESS = "127.0.0.1"
PATH = "/v1/stats"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def flood(api: str, *, requests: int, concurrency: int, token: str = "st_wrong",
                local: str = FLOOD_ADDRESS) -> collections.Counter[int]:
    """``requests`` calls with a wrong token, ``concurrency`` at a time, from ``local``:
    how many got each status."""
    statuses: collections.Counter[int] = collections.Counter()
    left = iter(range(requests))
    connector = aiohttp.TCPConnector(limit=concurrency, local_addr=(local, 0))
    async with aiohttp.ClientSession(connector=connector,
                                     headers={"Authorization": f"Bearer {token}"}) as session:

        async def worker() -> None:
            for _ in left:
                async with session.get(api + PATH) as response:
                    await response.read()
                    statuses[response.status] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


async def flood_process(api: str, *, requests: int, concurrency: int
                        ) -> collections.Counter[int]:
    """:func:`flood` in a child process (``python -m bench.auth_flood --flooder``)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.auth_flood", "--flooder", api, "--flood", str(requests),
        "--concurrency", str(concurrency), env=launcher.child_env(),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"the flood's process failed (exit {proc.returncode})")
    return collections.Counter({int(k): v for k, v in json.loads(out).items()})


async def good_client(api: str, token: str, *, count: int = 0,
                      until: asyncio.Future[object] | None = None,
                      local: str = GOOD_ADDRESS) -> tuple[list[float], collections.Counter[int]]:
    """One request at a time from ``local`` with a good token: ``count`` of them, and
    as many more as fit before ``until`` is done. Each one's milliseconds, and the
    statuses."""
    latencies: list[float] = []
    statuses: collections.Counter[int] = collections.Counter()
    connector = aiohttp.TCPConnector(limit=1, local_addr=(local, 0))
    async with aiohttp.ClientSession(connector=connector,
                                     headers={"Authorization": f"Bearer {token}"}) as session:
        while len(latencies) < count or (until is not None and not until.done()):
            began = time.perf_counter()
            async with session.get(api + PATH) as response:
                await response.read()
                statuses[response.status] += 1
            latencies.append((time.perf_counter() - began) * 1000)
    return latencies, statuses


def line(name: str, latencies: list[float]) -> str:
    return (f"{name}: good client GET {PATH} from {GOOD_ADDRESS}, {len(latencies)} "
            f"requests one at a time: p50 {pct(latencies, 0.5):.1f} ms  "
            f"p99 {pct(latencies, 0.99):.1f} ms  max {max(latencies):.1f} ms")


async def measure(api: str, token: str, *, flood_requests: int, concurrency: int,
                  good: int) -> list[str]:
    """The benchmark's lines: the good client alone, then during the flood."""
    await good_client(api, token, count=20)  # warm up
    alone, _ = await good_client(api, token, count=good)
    began = time.perf_counter()
    flooding = asyncio.ensure_future(flood_process(api, requests=flood_requests,
                                                   concurrency=concurrency))
    during, statuses = await good_client(api, token, count=1, until=flooding)
    answered = await flooding
    took = time.perf_counter() - began
    assert set(statuses) == {200}, statuses
    return [
        line("alone", alone),
        line("flood", during),
        f"the flood: {flood_requests} requests with a wrong token from {FLOOD_ADDRESS}, "
        f"{concurrency} at a time from a process of its own, in {took:.2f}s: "
        + ", ".join(f"{n} x {status}" for status, n in sorted(answered.items())),
    ]


async def main(args: argparse.Namespace) -> None:
    async with throwaway_postgres("strata-bench-") as (home, pg):
        url = await create_database(pg)
        cluster = Cluster(workdir=home, database_url=url,
                          env={"STRATA_LOG_LEVEL": "WARNING"}, token=new_token())
        assert cluster.token is not None
        try:
            await cluster.start_master()
            print("1 master with an API token; PostgreSQL fsync off", flush=True)
            for text in await measure(cluster.api, cluster.token, flood_requests=args.flood,
                                      concurrency=args.concurrency, good=args.good):
                print(text, flush=True)
        finally:
            cluster.stop()


async def _flooder(args: argparse.Namespace) -> None:
    statuses = await flood(args.flooder, requests=args.flood, concurrency=args.concurrency)
    print(json.dumps(statuses), flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--flood", type=int, default=20_000, help="requests with a wrong token")
    p.add_argument("--concurrency", type=int, default=50, help="flood requests at a time")
    p.add_argument("--good", type=int, default=300,
                   help="the good client's requests alone (during the flood: as many as fit)")
    p.add_argument("--flooder", metavar="API", help=argparse.SUPPRESS)  # the flood's process
    parsed = p.parse_args()
    asyncio.run(_flooder(parsed) if parsed.flooder else main(parsed))
