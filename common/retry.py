"""Loops that keep trying: reconnects, restarts, waiting for a dependency.

Every one goes through tenacity with exponential backoff and jitter, like the calls
behind a breaker (``strata.common.breaker``). A loop that keeps something up for good
(a stream, a LISTEN connection, a child process) starts its backoff over once an
attempt has run for ``healthy_after_s``: a link that was up for an hour and then broke
is retried at once, not after the delay its last outage had grown to.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_delay,
    stop_never,
)
from tenacity.wait import wait_base, wait_exponential_jitter

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """How a loop waits between attempts."""

    initial_s: float = 0.05
    max_s: float = 2.0
    jitter_s: float = 0.05
    # An attempt that ran this long counts as a success: the next failure starts over.
    healthy_after_s: float | None = None
    # Give up (re-raise the last error) after this long; None: never.
    give_up_after_s: float | None = None


class _Resetting(wait_base):
    """Exponential with jitter, counted from the last attempt that ran healthily."""

    def __init__(self, backoff: Backoff) -> None:
        self._backoff = backoff
        self._inner = wait_exponential_jitter(
            multiplier=backoff.initial_s, max=backoff.max_s, jitter=backoff.jitter_s)
        self._attempt_began = time.monotonic()
        self._base = 0  # attempt number of the last healthy attempt

    def began(self, state: RetryCallState) -> None:
        self._attempt_began = time.monotonic()

    def __call__(self, retry_state: RetryCallState) -> float:
        healthy = self._backoff.healthy_after_s
        number = retry_state.attempt_number
        if healthy is not None and time.monotonic() - self._attempt_began >= healthy:
            self._base = number - 1
        shifted = RetryCallState(retry_state.retry_object, retry_state.fn, (), {})
        shifted.attempt_number = number - self._base
        return float(self._inner(shifted))


def retrying(
    name: str,
    backoff: Backoff,
    *,
    retry_on: Callable[[BaseException], bool],
    action: str,
    level: int = logging.WARNING,
    extra: dict[str, object] | None = None,
) -> AsyncRetrying:
    """A tenacity loop: ``async for attempt in retrying(...): with attempt: ...``.

    Each retry is logged once with ``action`` and the delay; errors ``retry_on`` does
    not accept are raised at once."""
    wait = _Resetting(backoff)

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        logger.log(
            level, "%s failed (%s); retrying in %.2fs", name, exc, delay,
            extra={"action": action, "retry_in_s": round(delay, 3), **(extra or {})},
        )

    stop = stop_never if backoff.give_up_after_s is None else stop_after_delay(
        backoff.give_up_after_s)
    return AsyncRetrying(
        retry=retry_if_exception(retry_on), wait=wait, stop=stop, before=wait.began,
        before_sleep=before_sleep, reraise=True,
    )


async def keep_trying(
    name: str,
    fn: Callable[[], Awaitable[T]],
    backoff: Backoff,
    *,
    retry_on: Callable[[BaseException], bool],
    action: str,
    extra: dict[str, object] | None = None,
) -> T:
    """Call ``fn`` until it returns, backing off between failures ``retry_on`` accepts."""
    async for attempt in retrying(name, backoff, retry_on=retry_on, action=action,
                                  extra=extra):
        with attempt:
            return await fn()
    raise AssertionError("tenacity stops by raising")  # pragma: no cover


def of_type(*types: type[BaseException]) -> Callable[[BaseException], bool]:
    return lambda exc: isinstance(exc, types)
