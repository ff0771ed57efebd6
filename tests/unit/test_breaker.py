"""The circuit breaker: opens after consecutive transient failures, fails fast while it
cools down, lets one trial through after, and lets a probe through at any time."""

from __future__ import annotations

import asyncio

import pytest

from strata.common.breaker import NO_RETRY, BreakerState, CircuitBreaker
from strata.common.errors import CircuitOpen, Unavailable


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Peer:
    """The other side of a link: down (Unavailable) or up, counting the calls it saw."""

    def __init__(self) -> None:
        self.up = False
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if not self.up:
            raise Unavailable("down")
        return "ok"


def _breaker(clock: Clock) -> CircuitBreaker:
    return CircuitBreaker("test", failure_threshold=2, reset_timeout_s=2.0, retry=NO_RETRY,
                          clock=clock)


async def _open(breaker: CircuitBreaker, peer: Peer) -> None:
    for _ in range(2):
        with pytest.raises(Unavailable):
            await breaker.call(peer)
    assert breaker.state is BreakerState.OPEN


async def test_it_opens_fails_fast_then_tries_once_after_the_cool_down() -> None:
    clock, peer = Clock(), Peer()
    breaker = _breaker(clock)
    await _open(breaker, peer)
    with pytest.raises(CircuitOpen):
        await breaker.call(peer)
    assert peer.calls == 2, "an open breaker sent a call"
    clock.now = 2.0
    assert breaker.state is BreakerState.HALF_OPEN
    with pytest.raises(Unavailable):
        await breaker.call(peer)  # the trial fails: open again, for a whole cool-down
    assert breaker.state is BreakerState.OPEN
    clock.now = 3.9
    with pytest.raises(CircuitOpen):
        await breaker.call(peer)
    clock.now, peer.up = 4.0, True
    assert await breaker.call(peer) == "ok"
    assert breaker.state is BreakerState.CLOSED


async def test_a_probe_goes_out_while_open_and_closes_it_at_once() -> None:
    clock, peer = Clock(), Peer()
    breaker = _breaker(clock)
    await _open(breaker, peer)
    clock.now = 0.5
    with pytest.raises(Unavailable):
        await breaker.probe(peer)
    assert (peer.calls, breaker.state) == (3, BreakerState.OPEN)
    # A failed probe starts the cool-down again: a plain call still fails fast 2 s on.
    clock.now = 2.2
    with pytest.raises(CircuitOpen):
        await breaker.call(peer)
    peer.up = True
    assert await breaker.probe(peer) == "ok"
    assert breaker.state is BreakerState.CLOSED
    assert await breaker.call(peer) == "ok"  # and calls flow again, with no cool-down


async def test_one_probe_at_a_time() -> None:
    clock = Clock()
    breaker = _breaker(clock)
    peer = Peer()
    await _open(breaker, peer)
    release = asyncio.Event()

    async def slow() -> str:
        await release.wait()
        return "ok"

    first = asyncio.create_task(breaker.probe(slow))
    await asyncio.sleep(0)
    with pytest.raises(CircuitOpen, match="trial in progress"):
        await breaker.probe(peer)
    release.set()
    assert await first == "ok"
    assert breaker.state is BreakerState.CLOSED


async def test_a_probe_through_a_closed_breaker_is_a_call() -> None:
    clock, peer = Clock(), Peer()
    breaker = _breaker(clock)
    with pytest.raises(Unavailable):
        await breaker.probe(peer)
    with pytest.raises(Unavailable):
        await breaker.probe(peer)
    assert breaker.state is BreakerState.OPEN  # counted like calls: two failures open it
