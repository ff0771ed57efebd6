"""A report handler: what a python-kind task looks like.

A handler is a plain function (sync, run in a thread, or async) called with the task's
JSON ``args`` (a list as positional arguments, an object as keyword arguments). What it
returns is stored as the task's output, as JSON; what it raises fails the attempt.
"""

from __future__ import annotations

import asyncio
from datetime import date
from typing import Any


def build(day: str, sections: int = 3) -> dict[str, Any]:
    """A daily report of ``sections`` sections for ``day`` (YYYY-MM-DD)."""
    when = date.fromisoformat(day)
    if sections < 1:
        raise ValueError("a report needs at least one section")
    return {"day": when.isoformat(), "weekday": when.strftime("%A"),
            "sections": [f"section {n}" for n in range(1, sections + 1)]}


async def ping(delay_s: float = 0.0) -> str:
    """An async handler: waits ``delay_s`` seconds, then answers."""
    await asyncio.sleep(delay_s)
    return "pong"
