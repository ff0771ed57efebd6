"""A nightly schedule with the SDK: a ``@strata.task`` handler run every night at 02:00 in
a time zone (cron ``0 2 * * *``), made (or, when it exists already, changed to this) with
``create_schedule``, then fired once now with ``trigger``, without waiting for the night.

    python -m strata.examples.nightly [--api URL] [--timezone Europe/Berlin]
"""

from __future__ import annotations

import argparse
from datetime import date, timedelta
from typing import Any

import strata
from strata.client import Client, Conflict, Schedule, TaskDetail, python_task
from strata.examples.report import build

NAME = "nightly-report"
CRON = "0 2 * * *"


@strata.task(max_attempts=3, timeout_s=600)
def nightly_report(sections: int = 2) -> dict[str, Any]:
    """Yesterday's report (``strata.examples.report.build``), as of when it runs."""
    return build((date.today() - timedelta(days=1)).isoformat(), sections)


def main(api_url: str | None = None, *, timezone: str = "Europe/Berlin"
         ) -> tuple[Schedule, TaskDetail]:
    """Make the schedule (or bring it back to this one), fire it once, and wait for that
    fire's task: the schedule, as it stands after the fire, and the task."""
    spec: dict[str, Any] = {"cron": CRON, "timezone": timezone, "overlap": "skip",
                            "task": python_task(nightly_report, sections=3)}
    with Client(api_url) as client:
        try:
            client.create_schedule(NAME, **spec)
        except Conflict:  # made by an earlier run: the same again, and firing
            client.change_schedule(NAME, **spec, paused=False)
        fired = client.trigger(NAME)
        task = client.wait(fired.task_id, timeout=120)
        return client.schedule(NAME), task


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api", help="the master's REST API (default: $STRATA_API)")
    parser.add_argument("--timezone", default="Europe/Berlin", help="an IANA time zone")
    args = parser.parse_args()
    schedule, task = main(args.api, timezone=args.timezone)
    print(f"{schedule.name}: {schedule.cron} ({schedule.timezone}), next fire "
          f"{schedule.next_fire_at}")
    print(f"triggered now: task {task.id} {task.state}: {task.result.output}")
