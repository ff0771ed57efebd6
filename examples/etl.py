"""An ETL chain with the SDK: extract -> transform -> load, three ``@strata.task``
handlers submitted as one DAG (one ``POST /v1/tasks/batch``, each item naming a ``key``
and the keys it ``depends_on``). Each child reads what its parent returned through the
``parent_outputs`` keyword argument the worker passes to a handler that takes it.

    python -m strata.examples.etl [--api URL] [--day 2030-01-01]

Uses the synchronous :class:`strata.client.Client`: plain code, no event loop.
"""

from __future__ import annotations

import argparse
from datetime import date
from typing import Any

import strata
from strata.client import Client, TaskDetail, parent_results, python_task

STEPS = ("extract", "transform", "load")


@strata.task(max_attempts=3, timeout_s=60)
def extract(day: str, orders: int = 5) -> list[dict[str, Any]]:
    """The day's orders: a made-up but deterministic sample of ``orders`` rows."""
    when = date.fromisoformat(day)
    return [{"order": f"{when.isoformat()}-{n}", "amount_cents": 250 * n + when.day}
            for n in range(1, orders + 1)]


@strata.task
def transform(parent_outputs: dict[str, str | None]) -> dict[str, Any]:
    """The orders of its one parent (extract), summed up."""
    (rows,) = parent_results(parent_outputs).values()
    amounts = [row["amount_cents"] for row in rows]
    return {"orders": len(amounts), "total_cents": sum(amounts), "largest_cents": max(amounts)}


@strata.task
def load(parent_outputs: dict[str, str | None], target: str = "warehouse") -> dict[str, Any]:
    """Where the summary of its one parent (transform) went."""
    (summary,) = parent_results(parent_outputs).values()
    return {"target": target, "loaded": summary}


def dag(day: str, *, target: str = "warehouse") -> list[dict[str, Any]]:
    """The three tasks, as one batch: each names its parent by the parent's key."""
    return [
        {**python_task(extract, day=day), "key": "extract"},
        {**python_task(transform), "key": "transform", "depends_on": ["extract"]},
        {**python_task(load, target=target), "key": "load", "depends_on": ["transform"]},
    ]


def main(api_url: str | None = None, *, day: str = "2030-01-01") -> dict[str, TaskDetail]:
    """Submit the chain and wait for each step; each step's task, by name."""
    with Client(api_url) as client:
        made = client.submit_many(dag(day))
        return {step: client.wait(task_id, timeout=120)
                for step, task_id in zip(STEPS, made.ids, strict=True)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api", help="the master's REST API (default: $STRATA_API)")
    parser.add_argument("--day", default="2030-01-01", help="the day to process")
    args = parser.parse_args()
    for step, task in main(args.api, day=args.day).items():
        print(f"{step:<10} {task.state:<10} {task.result.output or task.result.error}")
