"""A fan-out / fan-in with the SDK: one task (``plan``) that N parallel tasks (``crunch``,
an async handler) depend on, and one task (``join``) that depends on all N and sums what
they returned, read through ``parent_outputs``. One batch makes the N + 2 tasks.

    python -m strata.examples.fanout [--api URL] [--parts 8]

Uses :class:`strata.client.AsyncClient`: its waits run side by side.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import strata
from strata.client import AsyncClient, TaskDetail, parent_results, python_task


@strata.task
def plan(parts: int, size: int) -> dict[str, int]:
    """How the work is cut: ``parts`` ranges of ``size`` numbers each."""
    if parts < 1 or size < 1:
        raise ValueError("parts and size must be 1 or more")
    return {"parts": parts, "size": size}


@strata.task(max_attempts=2)
async def crunch(part: int, parent_outputs: dict[str, str | None]) -> dict[str, int]:
    """The sum of the squares of part ``part``'s numbers, as cut by its parent (plan)."""
    (cut,) = parent_results(parent_outputs).values()
    start = part * cut["size"]
    await asyncio.sleep(0)  # an async handler runs on the worker's loop
    return {"part": part, "sum": sum(n * n for n in range(start, start + cut["size"]))}


@strata.task
def join(parent_outputs: dict[str, str | None]) -> dict[str, Any]:
    """What every crunch returned, added up: how many there were, and their total."""
    results = list(parent_results(parent_outputs).values())
    return {"parts": sorted(r["part"] for r in results), "total": sum(r["sum"] for r in results)}


def dag(parts: int, size: int) -> list[dict[str, Any]]:
    """plan, then ``parts`` crunches after it, then join after all of them."""
    crunches = [f"crunch-{n}" for n in range(parts)]
    return [
        {**python_task(plan, parts=parts, size=size), "key": "plan"},
        *({**python_task(crunch, part=n), "key": key, "depends_on": ["plan"]}
          for n, key in enumerate(crunches)),
        {**python_task(join), "key": "join", "depends_on": crunches},
    ]


def expected_total(parts: int, size: int) -> int:
    """The sum of the squares of 0 .. parts * size - 1, in closed form."""
    n = parts * size - 1
    return n * (n + 1) * (2 * n + 1) // 6


async def main(api_url: str | None = None, *, parts: int = 8, size: int = 1000
               ) -> list[TaskDetail]:
    """Submit the fan-out and wait for every task: plan, the crunches, join, in that
    order."""
    async with AsyncClient(api_url) as client:
        made = await client.submit_many(dag(parts, size))
        return list(await asyncio.gather(*(client.wait(i, timeout=120) for i in made.ids)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api", help="the master's REST API (default: $STRATA_API)")
    parser.add_argument("--parts", type=int, default=8, help="how many tasks fan out")
    args = parser.parse_args()
    *_, joined = asyncio.run(main(args.api, parts=args.parts))
    print(f"join {joined.state}: {joined.result.output or joined.result.error}")
    print(f"expected total: {expected_total(args.parts, 1000)}")
