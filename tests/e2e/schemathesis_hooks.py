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
  their own (else 400). Neither is a property of the one value a schema describes, so a
  case generated as valid gets the region the test registered and keys made distinct.
  A case generated as invalid is left exactly as generated.
"""

from __future__ import annotations

import base64
import os
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import schemathesis
from hypothesis import strategies as st
from schemathesis.core.parameters import ParameterLocation

KNOWN_REGION = os.environ.get("STRATA_TEST_REGION", "eu")
CREATES = {"POST /v1/tasks", "POST /v1/tasks/batch"}


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


def _repair(task: Any, index: int) -> None:
    if not isinstance(task, dict):
        return
    if isinstance(task.get("region"), str):
        task["region"] = KNOWN_REGION
    key = task.get("idempotency_key")
    if isinstance(key, str) and index >= 0:
        task["idempotency_key"] = f"{key[:190]}#{index}"


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    meta = case.meta
    if meta is None or case.operation.label not in CREATES:
        return
    if meta.is_negative_at(ParameterLocation.BODY):
        return
    body = case.body
    if case.operation.label == "POST /v1/tasks":
        _repair(body, -1)
    elif isinstance(body, dict) and isinstance(body.get("tasks"), list):
        for index, task in enumerate(body["tasks"]):
            _repair(task, index)
