"""Schedules: what ``POST /v1/schedules`` takes, and when a schedule fires.

Cron expressions (5 fields, or 6 with seconds first) are read and iterated by cronsim,
in the schedule's IANA time zone, with its documented rule for daylight saving time
(Debian cron's): a job at a fixed time that falls in a gap (clocks forward) runs at the
first moment after it; one that falls in a repeated hour (clocks back) runs once, at
its first occurrence; jobs that run every so many minutes or hours follow the wall
clock through both (a gap has no such times, a repeat has them twice). An ``every_s``
schedule fires at its anchor (``start_at``, else when it was made) plus whole multiples
of the interval, whatever the clocks do.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from strata.common.errors import InvalidInput
from strata.common.models import (
    NewTask,
    StrictFloat,
    When,
    error_text,
    parse_new_task,
)

SCHEDULE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
MIN_EVERY_S = 1.0
MAX_EVERY_S = 366 * 86400.0
# Fires accounted for in one pass at most (a schedule every second, down for a day, is
# caught up over several passes).
MAX_FIRES_PER_PASS = 1000

# The bounds before StrictFloat's validator: after it (or on the optional field), pydantic
# writes them into the JSON schema as "ge"/"le", which JSON Schema ignores.
EveryS = Annotated[float, Field(ge=MIN_EVERY_S, le=MAX_EVERY_S), *StrictFloat.__metadata__]
Overlap = Literal["allow", "skip", "cancel_previous"]
Catchup = Literal["none", "all"]


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}: an IANA name such as "
                         "'Europe/Berlin' or 'UTC'") from None


def _check_cron(expr: str) -> str:
    try:
        CronSim(expr, datetime(2000, 1, 1, tzinfo=ZoneInfo("UTC")))
    except (CronSimError, ValueError, KeyError, IndexError) as exc:
        raise ValueError(f"not a cron expression (5 fields, or 6 with seconds first): "
                         f"{expr!r}: {exc}") from None
    return expr


def _check_task(body: dict[str, Any]) -> dict[str, Any]:
    for field in ("run_at", "idempotency_key"):
        if field in body:
            raise ValueError(f"{field}: a schedule's task has none (each fire is due at "
                             "its fire time, and is made once by the schedule)")
    if "depends_on" in body:
        raise ValueError("depends_on: a schedule's task has no parents (each fire runs at "
                         "its fire time)")
    try:
        parse_new_task(body)
    except InvalidInput as exc:
        raise ValueError(str(exc)) from None
    return body


# _one_way, as a JSON schema: a cron expression or an interval, not both, not neither.
ONE_WAY_SCHEMA: dict[str, Any] = {"oneOf": [
    {"properties": {"cron": {"type": "string"}}, "required": ["cron"]},
    {"properties": {"every_s": {"type": "number"}}, "required": ["every_s"]},
]}


class Timing(BaseModel):
    """When a schedule fires."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True,
                              json_schema_extra=ONE_WAY_SCHEMA)

    cron: str | None = Field(default=None, min_length=1, max_length=200)
    every_s: EveryS | None = None
    timezone: str = Field(default="UTC", max_length=64)
    start_at: When | None = None
    end_at: When | None = None

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        return None if value is None else _check_cron(value)

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        _zone(value)
        return value

    @model_validator(mode="after")
    def _one_way(self) -> Timing:
        if (self.cron is None) == (self.every_s is None):
            raise ValueError("give cron or every_s, one of the two")
        if self.start_at and self.end_at and self.end_at <= self.start_at:
            raise ValueError("end_at must come after start_at")
        return self

    def times(self, after: datetime, anchor: datetime) -> Iterator[datetime]:
        """Fire times from ``after`` on (``after`` itself included), up to ``end_at``.
        ``anchor`` is when an ``every_s`` schedule counts from, without a start_at.
        They end where datetime does, at 9999-12-31 (in UTC and in the time zone)."""
        try:
            yield from self._times(after, anchor)
        except OverflowError:
            return

    def _times(self, after: datetime, anchor: datetime) -> Iterator[datetime]:
        start = max(after, self.start_at) if self.start_at else after
        if self.every_s is not None:
            base = self.start_at or anchor
            step = timedelta(seconds=self.every_s)
            k = max(0, math.ceil((start - base) / step))
            times: Iterator[datetime] = (base + (k + i) * step for i in _count())
        else:
            assert self.cron is not None
            zone = _zone(self.timezone)
            # cronsim gives the times after a second; one microsecond back, truncated to
            # its second, lets start itself be one.
            # In UTC: a time zone's last times can be past where datetime ends in UTC.
            times = (t.astimezone(UTC) for t in CronSim(
                self.cron, (start - timedelta(microseconds=1)).astimezone(zone)))
        for t in times:
            if self.end_at is not None and t > self.end_at:
                return
            yield t


def _count() -> Iterator[int]:
    i = 0
    while True:
        yield i
        i += 1


class ScheduleSpec(Timing):
    """The body of ``POST /v1/schedules``."""

    name: str = Field(pattern=SCHEDULE_NAME_PATTERN)
    task: dict[str, Any]
    overlap: Overlap = "allow"
    catchup: Catchup = "none"
    paused: bool = False

    @field_validator("task")
    @classmethod
    def _task(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _check_task(value)


# What PATCH may change: all but the name.
PATCHABLE = frozenset(ScheduleSpec.model_fields) - {"name"}
# Those that decide when it fires.
TIMING_FIELDS = frozenset(Timing.model_fields)


def parse_schedule(body: Any) -> ScheduleSpec:
    if not isinstance(body, dict):
        raise InvalidInput("a schedule must be a JSON object")
    try:
        return ScheduleSpec.model_validate(body)
    except ValidationError as exc:
        raise InvalidInput(error_text(exc)) from None


def patched(spec: ScheduleSpec, changes: Any) -> ScheduleSpec:
    """``spec`` with ``changes`` (a PATCH body) applied, validated as a whole."""
    if not isinstance(changes, dict) or not changes:
        raise InvalidInput("a change must be a non-empty JSON object")
    unknown = sorted(set(changes) - PATCHABLE)
    if unknown:
        raise InvalidInput(f"unknown or unchangeable fields: {', '.join(unknown)}")
    merged = spec.model_dump(mode="json") | changes
    # cron and every_s are one choice: naming one drops the other.
    if "cron" in changes and changes["cron"] is not None and "every_s" not in changes:
        merged["every_s"] = None
    if "every_s" in changes and changes["every_s"] is not None and "cron" not in changes:
        merged["cron"] = None
    return parse_schedule(merged)


def fire_task(spec: ScheduleSpec, fire_time: datetime) -> NewTask:
    """The task of one fire: the schedule's task, due at its fire time."""
    task = parse_new_task({**spec.task, "run_at": fire_time.isoformat()})
    return task.model_copy(update={"id": uuid.uuid4()})
