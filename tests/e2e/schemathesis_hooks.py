"""Schemathesis hooks for test_openapi.py (loaded by the CLI from SCHEMATHESIS_HOOKS).

They teach it what a JSON schema cannot say, so that the data it calls valid is valid,
and nothing else: every check stays on, for every case.

- ``strata-cursor``: the format of ``GET /v1/tasks``' ``cursor``, opaque to clients; a
  valid one is what the API hands out (base64url of ``<created_at>|<task id>``).
- ``date-time``: the API takes an RFC 3339 instant UTC can hold, 0001-01-01T00:00:00Z to
  9999-12-31T23:59:59.999999Z, as its document says in words; 0001-01-01T00:00:00+02:00
  is RFC 3339 but a 400 (out of range in UTC). Valid date-times are drawn from that range.
- A task pinned to a region must name a region the master knows (else 400: it would
  wait forever), and the items of a batch that name an idempotency key each need a key of
  their own (else 400), as do the items that have a ``key``. A task's ``depends_on``
  names tasks that exist, or in a batch other items by key, without a cycle (else 400).
  None of these is a property of the one value a schema describes, so a case generated
  as valid gets the region the test registered, keys made distinct, and parents that
  exist: the task the test made (STRATA_TEST_PARENT) or, in a batch, earlier items
  (given a key if they had none). A case generated as invalid is left exactly as
  generated.
- A schedule's ``cron`` must be a cron expression and its ``timezone`` an IANA time zone
  (the schema says strings: which strings, only cronsim and tzdata know); a valid case
  gets one of a few real ones, chosen by the generated text. Its ``end_at`` must come
  after its ``start_at``: a valid case has the two in order. A change is checked with the
  schedule it changes, which no schema of the change can see: a valid one that names one
  bound names the other too (as null), and one that names one way to fire as null names
  the other way.
"""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import schemathesis
from hypothesis import strategies as st
from schemathesis.core.parameters import ParameterLocation

KNOWN_REGION = os.environ.get("STRATA_TEST_REGION", "eu")
# A task that exists: what a valid depends_on names, but for other items of a batch.
PARENT = os.environ.get("STRATA_TEST_PARENT")
CREATES = {"POST /v1/tasks", "POST /v1/tasks/batch"}
SCHEDULES = {"POST /v1/schedules", "PATCH /v1/schedules/{name}"}
CRONS = ("* * * * *", "*/5 * * * *", "0 9 * * 1-5", "30 2 * * *", "0 0 1 * *",
         "*/10 * * * * *", "15 3 29 2 *")
ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe",
         "Pacific/Kiritimati", "Etc/GMT+12", "Asia/Kathmandu")


def _cursor(created_at: datetime, task_id: uuid.UUID) -> str:
    raw = f"{created_at.isoformat()}|{task_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


schemathesis.openapi.format(
    "strata-cursor",
    st.builds(_cursor, st.datetimes(timezones=st.just(UTC)), st.uuids()),
)


def _in_utc(when: datetime) -> bool:
    try:
        when.astimezone(UTC)
    except OverflowError:
        return False
    return True


def _rfc3339(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


# Offsets as RFC 3339 writes them: whole minutes, under a day.
_OFFSETS = st.integers(-(24 * 60 - 1), 24 * 60 - 1).map(lambda m: timezone(timedelta(minutes=m)))
schemathesis.openapi.format(
    "date-time", st.datetimes(timezones=_OFFSETS).filter(_in_utc).map(_rfc3339))


def _repair(task: Any, index: int, earlier: Sequence[str] = ()) -> None:
    """A task body (index -1) or a batch's item (``earlier``: the keys of the items before
    it) made valid in what its schema cannot say."""
    if not isinstance(task, dict):
        return
    if isinstance(task.get("region"), str):
        task["region"] = KNOWN_REGION
    for field in ("idempotency_key", "key"):
        key = task.get(field)
        if isinstance(key, str) and index >= 0:
            task[field] = f"{key[:190]}#{index}"
    parents = task.get("depends_on")
    if isinstance(parents, list):
        # Earlier items only: no cycle, no item its own parent.
        choices = len(earlier) + (PARENT is not None)
        task["depends_on"] = [
            earlier[n] if n < len(earlier) else PARENT
            for n in (sum(map(ord, str(p))) % choices for p in parents)] if choices else []


def _repair_batch(tasks: list[Any]) -> None:
    """Items whose depends_on names earlier items, each of which then needs a key."""
    last_child = max((i for i, t in enumerate(tasks)
                      if isinstance(t, dict) and t.get("depends_on")), default=-1)
    earlier: list[str] = []
    for index, task in enumerate(tasks):
        _repair(task, index, earlier)
        if not isinstance(task, dict):
            continue
        if not isinstance(task.get("key"), str) and index < last_child:
            task["key"] = f"item#{index}"
        if isinstance(task.get("key"), str):
            earlier.append(task["key"])


def _pick(choices: tuple[str, ...], generated: str) -> str:
    return choices[sum(map(ord, generated)) % len(choices)]


def _repair_schedule(body: Any, change: bool) -> None:
    if not isinstance(body, dict):
        return
    if isinstance(body.get("cron"), str):
        body["cron"] = _pick(CRONS, body["cron"])
    if isinstance(body.get("timezone"), str):
        body["timezone"] = _pick(ZONES, body["timezone"])
    _repair(body.get("task"), -1)
    if change:
        for bound, other in (("start_at", "end_at"), ("end_at", "start_at")):
            if bound in body and other not in body:
                body[other] = None
        if "cron" in body and body["cron"] is None and "every_s" not in body:
            body["every_s"] = 60.0
        if "every_s" in body and body["every_s"] is None and "cron" not in body:
            body["cron"] = CRONS[0]
    start, end = body.get("start_at"), body.get("end_at")
    if isinstance(start, str) and isinstance(end, str):
        first, last = sorted((start, end), key=datetime.fromisoformat)
        if datetime.fromisoformat(first) == datetime.fromisoformat(last):
            body["end_at"] = None
        else:
            body["start_at"], body["end_at"] = first, last


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    meta = case.meta
    label = case.operation.label
    if meta is None or label not in CREATES | SCHEDULES:
        return
    if meta.is_negative_at(ParameterLocation.BODY):
        return
    body = case.body
    if label in SCHEDULES:
        _repair_schedule(body, change=label.startswith("PATCH"))
        return
    if case.operation.label == "POST /v1/tasks":
        _repair(body, -1)
    elif isinstance(body, dict) and isinstance(body.get("tasks"), list):
        _repair_batch(body["tasks"])
