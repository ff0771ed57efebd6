"""Python handlers that the runner tests call by name."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime


def add(a: int, b: int) -> int:
    return a + b


async def greet(name: str, punctuation: str = "!") -> dict[str, str]:
    return {"greeting": f"hello {name}{punctuation}"}


def describe(*, colour: str, size: int) -> dict[str, object]:
    # A datetime is not JSON: the runner falls back to str() for it.
    return {"colour": colour, "size": size, "at": datetime(2024, 1, 2, tzinfo=UTC)}


def fail(message: str) -> None:
    raise ValueError(message)


def raise_timeout() -> None:
    raise TimeoutError("upstream gave up")


async def hang() -> None:
    await asyncio.Event().wait()  # never set: only a timeout or a cancel ends it


def with_parents(parent_outputs: dict[str, str | None] | None = None) -> object:
    # The default tells a call without parents from one with them.
    return {"parent_outputs": parent_outputs}


async def with_kwargs(**kwargs: object) -> dict[str, object]:
    return kwargs
