"""``strata up`` waiting for a tier: a tier that never comes up is reported by name,
with how long it was given and why the last check failed."""

from __future__ import annotations

import time

import pytest

from strata.common.errors import Unavailable
from strata.local.up import NotReady, wait_ready


async def test_a_tier_that_never_comes_up_is_named_with_its_timeout() -> None:
    checks = 0

    async def never() -> bool:
        nonlocal checks
        checks += 1
        return False

    began = time.monotonic()
    with pytest.raises(NotReady) as raised:
        await wait_ready(never, "regions r1, r2", timeout_s=0.3, poll_s=0.01)
    assert str(raised.value) == "regions r1, r2 not ready within 0.3s"
    assert checks > 1
    assert 0.3 <= time.monotonic() - began < 5


async def test_the_last_failed_check_says_why() -> None:
    async def unreachable() -> bool:
        raise Unavailable("cannot reach http://127.0.0.1:1: connection refused")

    with pytest.raises(NotReady) as raised:
        await wait_ready(unreachable, "the master", timeout_s=0.1, poll_s=0.01)
    assert str(raised.value) == ("the master not ready within 0.1s (last check: cannot reach "
                                 "http://127.0.0.1:1: connection refused)")


async def test_a_check_whose_own_request_times_out_is_retried() -> None:
    answers = iter([TimeoutError(), TimeoutError(), True])

    async def slow_then_ready() -> bool:
        answer = next(answers)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    await wait_ready(slow_then_ready, "the master", timeout_s=5, poll_s=0.01)
    assert next(answers, None) is None


async def test_other_errors_of_a_check_are_not_hidden() -> None:
    async def broken() -> bool:
        raise KeyError("state")

    with pytest.raises(KeyError):
        await wait_ready(broken, "the workers", timeout_s=5, poll_s=0.01)
