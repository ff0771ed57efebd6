"""One construct for every remote call: a circuit breaker whose calls run through a
tenacity retry policy.

closed → open after ``failure_threshold`` consecutive transient failures → half-open
after ``reset_timeout`` (one trial call) → closed on success, open again on failure.
Retries use exponential backoff with jitter and only for transient errors; an open
breaker fails fast with CircuitOpen, which is never retried.

A call that keeps its own schedule and is the very thing that proves the other side
alive (a region's heartbeat) goes through :meth:`CircuitBreaker.probe`: one attempt even
while the breaker cools down, so the link is back at the first beat that gets through,
not a cool-down later."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

import grpc
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from strata.common.errors import CircuitOpen, Unavailable

logger = logging.getLogger(__name__)

T = TypeVar("T")

TRANSIENT_GRPC = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


def transient(exc: BaseException) -> bool:
    """Worth retrying: the other side may answer next time. CircuitOpen never is."""
    if isinstance(exc, CircuitOpen):
        return False
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code() in TRANSIENT_GRPC
    return isinstance(exc, Unavailable | ConnectionError | TimeoutError)


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    attempts: int = 3
    initial_s: float = 0.05
    max_wait_s: float = 1.0
    jitter_s: float = 0.05
    deadline_s: float = 10.0


NO_RETRY = RetryPolicy(attempts=1)


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 5,
        reset_timeout_s: float = 2.0,
        retry: RetryPolicy = RetryPolicy(),
        is_transient: Callable[[BaseException], bool] = transient,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._threshold = failure_threshold
        self._reset_timeout_s = reset_timeout_s
        self._retry = retry
        self._is_transient = is_transient
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial_running = False
        self.opened_count = 0

    @property
    def state(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self._cool_down_over():
            return BreakerState.HALF_OPEN
        return self._state

    @property
    def allows_calls(self) -> bool:
        """False while open and cooling down: callers should route around it."""
        return self.state is not BreakerState.OPEN

    def _cool_down_over(self) -> bool:
        return self._clock() - self._opened_at >= self._reset_timeout_s

    def _transition(self, to: BreakerState, why: str) -> None:
        if to is self._state:
            return
        self._state = to
        level = logging.WARNING if to is BreakerState.OPEN else logging.INFO
        logger.log(
            level, "breaker %s %s: %s", self.name, to.value, why,
            extra={"action": f"breaker_{to.value}", "breaker": self.name},
        )

    def _before(self) -> None:
        if self._state is BreakerState.OPEN:
            if not self._cool_down_over():
                raise CircuitOpen(f"circuit {self.name} is open", retry_after_s=self._remaining())
            self._transition(BreakerState.HALF_OPEN, "cool-down over, trying one call")
        if self._state is BreakerState.HALF_OPEN:
            if self._trial_running:
                raise CircuitOpen(f"circuit {self.name} is half-open, trial in progress")
            self._trial_running = True

    def _remaining(self) -> float:
        return max(0.0, self._reset_timeout_s - (self._clock() - self._opened_at))

    def record_success(self) -> None:
        self._failures = 0
        self._trial_running = False
        self._transition(BreakerState.CLOSED, "call succeeded")

    def record_failure(self, exc: BaseException) -> None:
        self._trial_running = False
        if not self._is_transient(exc):
            # The other side answered, just not with what we wanted: it is alive.
            return
        self._failures += 1
        if self._state is BreakerState.HALF_OPEN or self._failures >= self._threshold:
            self._opened_at = self._clock()
            self.opened_count += 1
            self._transition(
                BreakerState.OPEN, f"{self._failures} consecutive failures, last: {exc!r}"
            )

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        policy = self._retry
        retrying = AsyncRetrying(
            retry=retry_if_exception(self._is_transient),
            stop=stop_after_attempt(policy.attempts) | stop_after_delay(policy.deadline_s),
            wait=wait_exponential_jitter(
                multiplier=policy.initial_s, max=policy.max_wait_s, jitter=policy.jitter_s
            ),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                self._before()
                try:
                    result = await fn()
                except BaseException as exc:
                    if isinstance(exc, Exception):
                        self.record_failure(exc)
                    else:
                        self._trial_running = False
                    raise
                self.record_success()
                return result
        raise AssertionError("tenacity stops by raising")  # pragma: no cover

    async def probe(self, fn: Callable[[], Awaitable[T]]) -> T:
        """``fn`` once, even while open and cooling down (unless a trial is running):
        the caller's schedule paces the trials. Success closes the breaker; a transient
        failure keeps it open and starts its cool-down again. When not open, a
        :meth:`call`."""
        if self._state is not BreakerState.OPEN:
            return await self.call(fn)
        if self._trial_running:
            raise CircuitOpen(f"circuit {self.name} is open, trial in progress",
                              retry_after_s=self._remaining())
        self._trial_running = True
        try:
            result = await fn()
        except Exception as exc:
            if self._is_transient(exc):
                self._opened_at = self._clock()
            raise
        finally:
            self._trial_running = False
        self.record_success()
        return result

    def snapshot(self) -> dict[str, object]:
        return {"state": self.state.value, "consecutive_failures": self._failures,
                "opened": self.opened_count}
