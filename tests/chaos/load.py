"""A steady stream of tasks that record each execution, and the bookkeeping after it.

Every task is ``echo <marker> >> <record file>`` with a marker of its own: a line in the
file is one execution (``O_APPEND`` writes this small are atomic), so the file tells how
often each task really ran, whatever the master's rows say.
"""

from __future__ import annotations

import asyncio
import shlex
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from strata.common.client import TERMINAL, Client
from strata.common.errors import StrataError

TICK_S = 0.1
PAGE = 1000
NOT_TERMINAL = ("pending", "dispatched", "running")


@dataclass(frozen=True, slots=True, kw_only=True)
class Summary:
    scenario: str
    tasks: int  # accepted with a 2xx
    rejected: int  # submissions that failed (their tasks may or may not exist)
    states: dict[str, int]
    executed: int  # accepted tasks that ran at least once
    duplicates: int  # executions beyond the first, over all tasks
    never_ran: int  # accepted tasks with no execution recorded
    reattempted: int  # tasks whose attempt went past 1 (retried or reclaimed)
    seconds: float  # from the first submission to the end of the drain
    # Region → (p50, p95) seconds from creation to finish, for the tasks that finished.
    turnaround: dict[str, tuple[float, float]]

    def line(self) -> str:
        states = " ".join(f"{k}={v}" for k, v in sorted(self.states.items()))
        turnaround = " ".join(f"{r}={p50:.2f}/{p95:.2f}s"
                              for r, (p50, p95) in sorted(self.turnaround.items()))
        return (
            f"{self.scenario}: tasks={self.tasks} rejected={self.rejected} [{states}] "
            f"executed={self.executed} duplicates={self.duplicates} "
            f"never_ran={self.never_ran} reattempted={self.reattempted} "
            f"duration={self.seconds:.1f}s turnaround p50/p95 [{turnaround}]"
        )


@dataclass
class Load:
    """Submits ``rate`` recording tasks a second through ``client``."""

    client: Client
    record: Path
    rate: float = 30.0
    # How long each task runs before it records itself: long enough, and tasks are
    # still running on a worker when its link fails.
    task_seconds: float = 0.0
    task_options: dict[str, Any] = field(default_factory=dict)  # e.g. region, max_attempts
    markers: dict[str, str] = field(default_factory=dict)  # task id → marker
    rejected: list[str] = field(default_factory=list)  # markers of failed submissions
    _seq: int = 0
    _started: float | None = None

    def _task(self) -> tuple[str, dict[str, Any]]:
        self._seq += 1
        marker = f"task-{self._seq:06d}"
        command = f"echo {marker} >> {shlex.quote(str(self.record))}"
        if self.task_seconds > 0:
            command = f"sleep {self.task_seconds}; {command}"
        return marker, {"kind": "shell", "command": command, **self.task_options}

    async def run(self, seconds: float) -> None:
        """Submit for ``seconds``, paced by the clock: a tick that ran late is caught up
        by the next one's batch, so the total is ``rate * seconds`` regardless."""
        total = round(self.rate * seconds)
        start = time.monotonic()
        if self._started is None:
            self._started = start
        sent = 0
        while sent < total:
            due = min(total, round((time.monotonic() - start + TICK_S) * self.rate))
            if due > sent:
                await self._submit(due - sent)
                sent = due
            # Pacing the load, not waiting for an event: the stream is the scenario.
            await asyncio.sleep(max(0.0, start + (sent / self.rate) - time.monotonic()))

    async def _submit(self, n: int) -> None:
        batch = [self._task() for _ in range(n)]
        try:
            ids = await self.client.create_batch([body for _, body in batch])
        except StrataError:
            self.rejected += [marker for marker, _ in batch]
            return
        self.markers.update(zip(ids, (marker for marker, _ in batch), strict=True))

    # ---- after the scenario ---------------------------------------------------------

    async def tasks(self) -> dict[str, dict[str, Any]]:
        """Task id → task for every task the master has, page by page."""
        found: dict[str, dict[str, Any]] = {}
        cursor: str | None = None
        while True:
            params = {"limit": str(PAGE), **({"cursor": cursor} if cursor else {})}
            page = await self.client.request("GET", "/v1/tasks", params=params)
            found.update({t["id"]: t for t in page["tasks"]})
            cursor = page["next_cursor"]
            if cursor is None:
                return found

    async def states(self) -> dict[str, str]:
        """Task id → state for every task the master has."""
        return {i: t["state"] for i, t in (await self.tasks()).items()}

    async def drain(self, *, timeout_s: float = 60.0) -> dict[str, str]:
        """Wait until no task is pending, dispatched or running; fail naming the stuck
        ones if that takes longer than ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            counts = (await self.client.stats())["counts"]
            if not any(counts.get(s, 0) for s in NOT_TERMINAL):
                return await self.states()
            if time.monotonic() > deadline:
                states = await self.states()
                stuck = {i: s for i, s in states.items() if s not in TERMINAL}
                raise AssertionError(
                    f"{len(stuck)} tasks not terminal {timeout_s}s after the load: "
                    f"{Counter(stuck.values())}; e.g. {list(stuck.items())[:5]}"
                )
            await asyncio.sleep(0.1)

    def executions(self) -> Counter[str]:
        """Marker → how many times it ran."""
        if not self.record.exists():
            return Counter()
        return Counter(self.record.read_text().split())

    async def assert_all_terminal(self, expected_state: str = "succeeded") -> dict[str, str]:
        """Every accepted task is in ``expected_state``; returns id → state."""
        states = await self.states()
        missing = [i for i in self.markers if i not in states]
        assert not missing, f"{len(missing)} accepted tasks are gone: {missing[:5]}"
        wrong = {i: states[i] for i in self.markers if states[i] != expected_state}
        assert not wrong, (
            f"{len(wrong)} of {len(self.markers)} tasks not {expected_state}: "
            f"{Counter(wrong.values())}; e.g. {list(wrong.items())[:5]}"
        )
        return states

    def duplicates(self) -> int:
        """Executions beyond the first, over every task."""
        return sum(n - 1 for n in self.executions().values() if n > 1)

    def never_ran(self) -> list[str]:
        """Ids of accepted tasks with no execution recorded."""
        ran = self.executions()
        return [i for i, marker in self.markers.items() if marker not in ran]

    async def summary(self, scenario: str) -> Summary:
        tasks = {i: t for i, t in (await self.tasks()).items() if i in self.markers}
        ran = self.executions()
        return Summary(
            scenario=scenario,
            tasks=len(self.markers),
            rejected=len(self.rejected),
            states=dict(Counter(t["state"] for t in tasks.values())),
            executed=sum(1 for m in self.markers.values() if m in ran),
            duplicates=self.duplicates(),
            never_ran=len(self.never_ran()),
            reattempted=sum(1 for t in tasks.values() if t["attempt"] > 1),
            seconds=time.monotonic() - (self._started or time.monotonic()),
            turnaround=_turnaround(tasks.values()),
        )


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _turnaround(tasks: Iterable[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    by_region: dict[str, list[float]] = defaultdict(list)
    for t in tasks:
        if t["finished_at"] and t["region"]:
            by_region[t["region"]].append(
                (_at(t["finished_at"]) - _at(t["created_at"])).total_seconds())
    return {region: (_quantile(times, 0.5), _quantile(times, 0.95))
            for region, times in by_region.items()}


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
