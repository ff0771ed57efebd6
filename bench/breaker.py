"""How the breakers react to a black-holed region, with the default timings, through a
real toxiproxy (``make toxiproxy`` builds it into ./bin).

1. master -> region: only the master's direction of one region's link is black-holed,
   so the region keeps heartbeating and stays up; under a trickle of tasks the master's
   delegations to it time out. Measured: black hole -> breaker open (from /v1/regions),
   the tasks meanwhile served by the other region, heal -> breaker closed.
2. region -> master: only the region's direction is black-holed. Measured from the
   region's own log: black hole -> its breaker open, heal -> closed.

Run: python -m bench.breaker [--trials 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path

from bench.postgres import throwaway_postgres
from strata.common.client import Client
from strata.local.cluster import wait_until
from strata.local.postgres import EmbeddedPostgres
from tests.chaos.harness import ChaosCluster
from tests.chaos.links import ToxiproxyServer, find_binary

ENV = {"STRATA_LOG_LEVEL": "INFO", "STRATA_HEARTBEAT_INTERVAL": "1",
       "STRATA_REGION_DEAD_AFTER": "5", "STRATA_WORKER_DEAD_AFTER": "3"}


async def _breaker(c: Client, region: str) -> str:
    return str(next(r for r in await c.regions() if r["name"] == region)["breaker"]["state"])


async def _until(check: Callable[[], Awaitable[bool]]) -> float:
    """Seconds until an observable condition holds."""
    began = time.monotonic()
    await wait_until(check, timeout_s=60, what="breaker state")
    return time.monotonic() - began


async def _trickle(c: Client, stop: asyncio.Event) -> None:
    while not stop.is_set():
        await c.create_batch([{"kind": "noop"} for _ in range(5)])
        await asyncio.sleep(0.1)  # pacing the load


def _log_times(log: str, action: str) -> list[datetime]:
    return [datetime.fromisoformat(m.group(1)) for m in
            re.finditer(rf"^(\S+) \S+ \S+ action={action}\b", log, re.MULTILINE)]


async def main(args: argparse.Namespace) -> None:
    binary = find_binary()
    if binary is None:
        raise SystemExit("toxiproxy-server not found: run `make toxiproxy`")
    async with throwaway_postgres("strata-breaker-") as (home, pg):
        await run(home, pg, binary, args)


async def run(home: Path, pg: EmbeddedPostgres, binary: Path, args: argparse.Namespace
              ) -> None:
    proxy = ToxiproxyServer(binary, home / "toxiproxy.log")
    await asyncio.to_thread(proxy.start)
    chaos = await ChaosCluster.create(workdir=home, database_url=pg.url, toxiproxy=proxy)
    chaos.env.update(ENV)
    try:
        await chaos.start_master()
        for region in ("east", "west"):
            await chaos.start_region(region)
            await chaos.start_worker(region, f"{region}-w1", concurrency=8)
        opened, closed = [], []
        async with chaos.client() as c:
            stop = asyncio.Event()
            trickle = asyncio.create_task(_trickle(c, stop), name="trickle")
            try:
                for n in range(1, args.trials + 1):
                    began = time.monotonic()
                    await chaos.from_master("east").black_hole()
                    t_open = await _until(lambda: _is(c, "east", "open"))
                    await asyncio.sleep(3.0)  # hold the fault a little longer
                    await chaos.from_master("east").clear()
                    t_closed = await _until(lambda: _is(c, "east", "closed"))
                    opened.append(t_open)
                    closed.append(t_closed)
                    print(f"master->east trial {n}: breaker open {t_open:.2f}s after the "
                          f"black hole; closed {t_closed:.2f}s after healing "
                          f"({time.monotonic() - began:.1f}s in all)")
            finally:
                stop.set()
                await trickle
            print(f"master->region median: open after {statistics.median(opened):.2f}s, "
                  f"closed {statistics.median(closed):.2f}s after healing "
                  f"(delegation deadline 2s x 2 tries, threshold 3, cool-down 2s)")

            mark = datetime.now()
            await chaos.to_master("east").black_hole()
            await _until(lambda: _logged(chaos, "east", "breaker_open", mark))
            await asyncio.sleep(3.0)  # hold the fault a little longer
            healed = datetime.now()
            await chaos.to_master("east").clear()
            await _until(lambda: _logged(chaos, "east", "breaker_closed", healed))
            log = chaos.log("east")
            t_open = min(t for t in _log_times(log, "breaker_open") if t >= mark) - mark
            t_closed = min(t for t in _log_times(log, "breaker_closed") if t >= healed) - healed
            print(f"east->master: breaker open {t_open.total_seconds():.2f}s after the black "
                  f"hole; closed {t_closed.total_seconds():.2f}s after healing "
                  f"(heartbeat deadline 2s, threshold 3, cool-down 2s)")
    finally:
        with contextlib.suppress(Exception):
            await chaos.all_links().clear()
        chaos.stop()
        await asyncio.to_thread(proxy.stop)


async def _is(c: Client, region: str, state: str) -> bool:
    return await _breaker(c, region) == state


async def _logged(chaos: ChaosCluster, process: str, action: str, since: datetime) -> bool:
    return any(t >= since for t in _log_times(chaos.log(process), action))


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--trials", type=int, default=3)
    asyncio.run(main(p.parse_args()))
