"""The one retry loop: tenacity with exponential backoff, jitter, and a fresh start after
an attempt that ran healthily."""

from __future__ import annotations

import asyncio
import logging

import pytest

from strata.common.retry import Backoff, keep_trying, of_type, retrying


class Flaky(Exception):
    pass


async def test_keep_trying_returns_once_the_call_succeeds(caplog: pytest.LogCaptureFixture):
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise Flaky(f"try {calls}")
        return "done"

    with caplog.at_level(logging.WARNING, logger="strata.common.retry"):
        result = await keep_trying("flaky", flaky, Backoff(initial_s=0.001, max_s=0.002),
                                   retry_on=of_type(Flaky), action="flaky_retry")
    assert (result, calls) == ("done", 3)
    assert [r.action for r in caplog.records] == ["flaky_retry", "flaky_retry"]  # type: ignore[attr-defined]


async def test_errors_it_does_not_retry_are_raised_at_once():
    calls = 0

    async def broken() -> None:
        nonlocal calls
        calls += 1
        raise ValueError("not transient")

    with pytest.raises(ValueError):
        await keep_trying("broken", broken, Backoff(initial_s=0.001),
                          retry_on=of_type(Flaky), action="x")
    assert calls == 1


async def test_it_gives_up_after_its_deadline_with_the_last_error():
    async def never() -> None:
        raise Flaky("still down")

    with pytest.raises(Flaky, match="still down"):
        await keep_trying("never", never, Backoff(initial_s=0.01, give_up_after_s=0.05),
                          retry_on=of_type(Flaky), action="x")


async def test_the_delay_grows_then_starts_over_after_a_healthy_attempt():
    backoff = Backoff(initial_s=0.001, max_s=1.0, jitter_s=0.0, healthy_after_s=0.05)
    delays: list[float] = []
    healthy_on = {4}  # the fourth attempt stays up a while before it breaks
    number = 0
    loop = retrying("x", backoff, retry_on=of_type(Flaky), action="x")
    loop.before_sleep = lambda state: delays.append(state.next_action.sleep)  # type: ignore[union-attr]
    async for attempt in loop:
        with attempt:
            number += 1
            if number in healthy_on:
                await asyncio.sleep(0.06)
            if number < 6:
                raise Flaky(str(number))
    assert delays == pytest.approx([0.001, 0.002, 0.004, 0.001, 0.002])
