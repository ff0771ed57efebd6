"""What travels back up the tree about an attempt, as every tier names it.

A ``TaskRef`` names one attempt of one task: the task's id and its ``attempt``, the
fencing token. ``Started`` and ``Finished`` are the events a worker reports about an
attempt; the master writes them only while the attempt still matches the row.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from strata.common.errors import InvalidInput

# A UUID in its canonical text form (what str(uuid.UUID(...)) gives): a fifth of the
# cost of parsing one.
_canonical = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}").fullmatch


class TaskRef(NamedTuple):
    """One attempt of one task. ``id`` is the task's id in its canonical text form.

    A named tuple: immutable and cheap to make and hash, as it is for every task on
    every hop."""

    id: str
    attempt: int

    @classmethod
    def parse(cls, task_id: str, attempt: int) -> TaskRef:
        """From the wire: the id must be a UUID (raises InvalidInput)."""
        if _canonical(task_id):  # as every id Strata sends: taken as it is
            return cls(task_id, attempt)
        try:
            canonical = str(uuid.UUID(task_id))
        except ValueError:
            raise InvalidInput(f"not a task id: {task_id!r}") from None
        return cls(canonical, attempt)


@dataclass(frozen=True, slots=True, kw_only=True)
class Started:
    id: str
    attempt: int
    worker_id: str
    started_at: datetime

    @property
    def ref(self) -> TaskRef:
        return TaskRef(self.id, self.attempt)


@dataclass(frozen=True, slots=True, kw_only=True)
class Finished:
    id: str
    attempt: int
    ok: bool
    worker_id: str
    started_at: datetime | None
    finished_at: datetime
    exit_code: int | None
    output: str | None
    error: str | None
    stderr: str | None = None
    output_truncated: bool = False
    stderr_truncated: bool = False
    killed_processes: int = 0
    timed_out: bool = False
    start_unreported: bool = False  # its start is known only from this result

    @property
    def ref(self) -> TaskRef:
        return TaskRef(self.id, self.attempt)


@dataclass(frozen=True, slots=True, kw_only=True)
class Evicted:
    """An attempt whose worker died: its region runs it again on another worker."""

    id: str
    attempt: int
    worker_id: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Report:
    """A region's batch of events, parsed: what started, what finished, what was
    handed back unfinished (to run again), and what lost its worker."""

    region: str
    started: list[Started]
    finished: list[Finished]
    returned: list[TaskRef]
    evicted: list[Evicted] = field(default_factory=list)
