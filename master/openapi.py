"""The REST API as an OpenAPI 3.1 document, served at ``GET /v1/openapi.json``.

Built from the models the API validates with, so it cannot drift from them: a task body
is what ``parse_new_task`` takes (the kind's payload fields, the options every kind
shares, and ``kind``), one schema per kind, merged from the JSON schemas of
``TaskOptions`` and ``PAYLOADS[kind]``; the responses are the models of
``strata.common.api_models``, which the tests hold every response to. A schedule's body
is ``ScheduleSpec``'s schema, its ``task`` a task body without ``run_at``,
``idempotency_key`` or ``depends_on``; a change to one is the same fields but its name,
all optional. A batch's item is a task body that may also have a ``key``, which the
``depends_on`` of other items of the batch name it by.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import cache
from typing import Any

from pydantic import BaseModel

from strata.common import api_models as am
from strata.common.kinds import PAYLOADS
from strata.common.models import MAX_BATCH, MAX_KEY, OPTION_FIELDS, TaskOptions
from strata.common.schedules import PATCHABLE, ScheduleSpec
from strata.master.api import (
    DEFAULT_GRAPH_DEPTH,
    DEFAULT_PAGE,
    MAX_BODY,
    MAX_GRAPH_DEPTH,
    MAX_PAGE,
    OPEN_ROUTES,
)

OPENAPI_VERSION = "3.1.0"
REF = "#/components/schemas/{model}"
JSON = "application/json"
# /metrics: the Prometheus text exposition format.
PROMETHEUS = "text/plain; version=0.0.4"
EVENT_STREAM = "text/event-stream"

Schema = dict[str, Any]

# Every model whose schema is a component, under its own name.
RESPONSE_MODELS: tuple[type[BaseModel], ...] = (
    am.Error, am.TaskOut, am.TaskDetail, am.BatchCreated, am.TaskPage, am.Attempts,
    am.Stats, am.Regions, am.Workers, am.Health, am.Ready, am.ScheduleReply,
    am.StatusReply, am.TaskEventData, am.Schedule, am.ScheduleList, am.Fired, am.Fire,
    am.FirePage, am.TaskGraph, am.GraphNode, am.GraphEdge, am.ConcurrencyKeys,
    am.ConcurrencyKeyOut,
)
REQUEST_MODELS: tuple[type[BaseModel], ...] = (am.ScheduleRequest,)


def ref(name: str) -> Schema:
    return {"$ref": REF.format(model=name)}


def task_schema_name(kind: str) -> str:
    return f"{kind.capitalize()}Task"


class _Components:
    """Component schemas, each name given one schema only."""

    def __init__(self) -> None:
        self.schemas: dict[str, Schema] = {}

    def add(self, name: str, schema: Schema) -> None:
        if self.schemas.setdefault(name, schema) != schema:
            raise ValueError(f"two schemas named {name!r}")

    def model(self, model: type[BaseModel]) -> Schema:
        """The model's JSON schema, its definitions moved into the components."""
        schema = copy.deepcopy(model.model_json_schema(ref_template=REF))
        for name, definition in schema.pop("$defs", {}).items():
            self.add(name, definition)
        return schema


def task_body_schema(kind: str, components: _Components) -> Schema:
    """What ``POST /v1/tasks`` takes for ``kind``: its payload's fields, the shared
    options and ``kind``, nothing else (both models forbid extra fields)."""
    options = components.model(TaskOptions)
    payload = components.model(PAYLOADS[kind])
    overlap = set(payload.get("properties", {})) & OPTION_FIELDS
    if overlap:  # parse_new_task would never hand them to the payload
        raise ValueError(f"kind {kind}: payload fields named like options: {sorted(overlap)}")
    properties: Schema = {
        "kind": {"const": kind, "type": "string"},
        **payload.get("properties", {}),
        **options["properties"],
    }
    return {
        "title": task_schema_name(kind),
        "description": f"A task of kind {kind}: "
                       f"{PAYLOADS[kind].__name__}'s fields and TaskOptions'.",
        "type": "object",
        "properties": properties,
        "required": ["kind", *payload.get("required", []), *options.get("required", [])],
        "additionalProperties": False,
    }


# What a schedule's task may not name: each fire is due at its fire time, made once, and
# waits for no other task.
SCHEDULED_TASK_OMITS = ("run_at", "idempotency_key", "depends_on")


def _in_words(names: tuple[str, ...]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def scheduled_task_schema_name(kind: str) -> str:
    return f"Scheduled{task_schema_name(kind)}"


def scheduled_task_schema(kind: str, components: _Components) -> Schema:
    """A schedule's ``task``: the task body of ``kind`` without SCHEDULED_TASK_OMITS."""
    body = task_body_schema(kind, components)
    return {
        **body,
        "title": scheduled_task_schema_name(kind),
        "description": f"{body['description']} Without {_in_words(SCHEDULED_TASK_OMITS)}.",
        "properties": {name: schema for name, schema in body["properties"].items()
                       if name not in SCHEDULED_TASK_OMITS},
        "required": [name for name in body["required"] if name not in SCHEDULED_TASK_OMITS],
    }


def _union(title: str, description: str, name: Callable[[str], str]) -> Schema:
    """One of the kinds' schemas (named by ``name(kind)``), told apart by ``kind``."""
    return {
        "title": title, "description": description,
        "oneOf": [ref(name(kind)) for kind in PAYLOADS],
        "discriminator": {"propertyName": "kind", "mapping": {
            kind: REF.format(model=name(kind)) for kind in PAYLOADS}},
    }


SCHEDULED_TASK = {
    **ref("ScheduledTaskBody"),
    "description": "the task each fire makes: a POST /v1/tasks body without "
                   f"{_in_words(SCHEDULED_TASK_OMITS)} (each fire's task is due at its "
                   "fire time, and waits for no other task)",
}

# What a batch's item may have that a task body does not (strata.common.models.parse_batch).
BATCH_KEY: Schema = {
    "anyOf": [{"type": "string", "minLength": 1, "maxLength": MAX_KEY}, {"type": "null"}],
    "default": None,
    "title": "Key",
    "description": "the item's name in the batch, unique in it: the depends_on of other "
                   "items name it by this (absent or null: none). Only a batch's items "
                   "have keys.",
}


def batch_item_schema_name(kind: str) -> str:
    return f"Batch{task_schema_name(kind)}"


def batch_item_schema(kind: str, components: _Components) -> Schema:
    """An item of ``POST /v1/tasks/batch``: the task body of ``kind`` and its ``key``."""
    body = task_body_schema(kind, components)
    if "key" in body["properties"]:
        raise ValueError(f"kind {kind}: a field named key, like a batch item's key")
    return {
        **body,
        "title": batch_item_schema_name(kind),
        "description": f"{body['description']} And, in a batch, its key.",
        "properties": {**body["properties"], "key": BATCH_KEY},
    }


def schedule_spec_schema(components: _Components) -> Schema:
    """``POST /v1/schedules``' body: ScheduleSpec's schema, its ``task`` (validated as a
    task body, a dict to pydantic) the schema of what it is validated as."""
    schema = components.model(ScheduleSpec)
    schema["properties"]["task"] = SCHEDULED_TASK
    return schema


def schedule_change_schema(spec: Schema) -> Schema:
    """``PATCH /v1/schedules/{name}``'s body (``strata.common.schedules.patched``): any of
    the spec's fields but its name, none with a default (absent is unchanged). Naming
    cron drops every_s and the other way round, so naming both (or neither, as null)
    leaves a schedule with two ways to fire, or none."""
    properties = {}
    for name in sorted(PATCHABLE, key=list(spec["properties"]).index):
        field = dict(spec["properties"][name])
        field.pop("default", None)
        properties[name] = field
    both = {"required": ["cron", "every_s"]}
    return {
        "title": "ScheduleChange",
        "description": "What to change: any of a schedule's fields but its name.",
        "type": "object",
        "properties": properties,
        "minProperties": 1,
        "additionalProperties": False,
        "not": {"anyOf": [
            {**both, "properties": {"cron": {"type": "string"}, "every_s": {"type": "number"}}},
            {**both, "properties": {"cron": {"type": "null"}, "every_s": {"type": "null"}}},
        ]},
    }


def _error(description: str, *, retry_after: bool = False,
           headers: Schema | None = None) -> Schema:
    response: Schema = {"description": description, "content": {JSON: {"schema": ref("Error")}}}
    if retry_after:
        response["headers"] = {"Retry-After": {
            "description": "seconds to wait before trying again",
            "schema": {"type": "string", "pattern": "^[0-9]+$"},
        }}
    if headers:
        response["headers"] = {**response.get("headers", {}), **headers}
    return response


# The bearer token every operation but the probes needs once any token exists.
SECURITY_SCHEME = "apiToken"
SECURITY_SCHEMES: Schema = {SECURITY_SCHEME: {
    "type": "http", "scheme": "bearer",
    "description": "An API token (`strata token create NAME`, or one of the master's "
                   "STRATA_API_TOKENS), as `Authorization: Bearer <token>`. Needed by "
                   "every operation but /healthz and /readyz whenever the master has a "
                   "token, and always by a master that listens beyond loopback.",
}}


ERRORS: dict[str, Schema] = {
    "400": _error("Invalid input: a malformed or mistyped body, an unknown or repeated "
                  "query parameter, text PostgreSQL cannot store."),
    "404": _error("No such task, region or schedule, or no limit on the concurrency key."),
    "409": _error("The object's state forbids it."),
    "413": _error(f"A body over {MAX_BODY} bytes."),
    "503": _error("The database cannot be reached.", retry_after=True),
    "401": _error(
        "No API token (code unauthenticated), or one that is not valid: wrong, or revoked "
        "(code invalid_token).",
        headers={"WWW-Authenticate": {
            "description": 'the challenge: Bearer realm="strata", and error="invalid_token" '
                           "for a token that is not valid",
            "required": True, "schema": {"type": "string", "pattern": "^Bearer realm="},
        }}),
    "429": _error(
        "Too many API tokens that were not valid came from the caller's address: its "
        "requests are refused, whatever they send, until Retry-After.",
        headers={"Retry-After": {
            "description": "seconds to wait before trying again",
            "required": True, "schema": {"type": "string", "pattern": "^[0-9]+$"},
        }}),
}
# The operations that need no token: the probes (OPEN_ROUTES, less the dashboard's files,
# which are not part of the API).
OPEN_PATHS = frozenset(path for path in OPEN_ROUTES if path != "/" and not path.startswith("/ui/"))


def _json(description: str, name: str, *, links: Schema | None = None) -> Schema:
    response: Schema = {"description": description,
                        "content": {JSON: {"schema": ref(name)}}}
    if links:
        response["links"] = links
    return response


def _responses(ok: dict[str, Schema], *errors: str) -> Schema:
    return {**ok, **{status: {"$ref": f"#/components/responses/E{status}"}
                     for status in errors}}


def _link(operation: str, **parameters: str) -> Schema:
    return {"operationId": operation, "parameters": parameters}


SCHEDULE_NAME = {"name": "name", "in": "path", "required": True,
                 "schema": {"type": "string"}, "description": "a schedule's name"}
_BY_NAME = "$response.body#/name"
SCHEDULE_LINKS = {
    "GetSchedule": _link("getSchedule", name=_BY_NAME),
    "ChangeSchedule": _link("changeSchedule", name=_BY_NAME),
    "DeleteSchedule": _link("deleteSchedule", name=_BY_NAME),
    "TriggerSchedule": _link("triggerSchedule", name=_BY_NAME),
    "ScheduleFires": _link("scheduleFires", name=_BY_NAME),
}

TASK_ID = {"name": "id", "in": "path", "required": True,
           "schema": {"type": "string", "format": "uuid"}, "description": "a task's id"}

# What the create answers lead to: the task, its attempts, its graph, its cancel, its
# retry and a change of its priority.
_BY_ID = "$response.body#/id"
TASK_LINKS = {
    "GetTask": _link("getTask", id=_BY_ID),
    "ReprioritizeTask": _link("reprioritizeTask", id=_BY_ID),
    "CancelTask": _link("cancelTask", id=_BY_ID),
    "RetryTask": _link("retryTask", id=_BY_ID),
    "TaskAttempts": _link("taskAttempts", id=_BY_ID),
    "TaskGraph": _link("taskGraph", id=_BY_ID),
    "TaskMasterStatus": _link("status", task_id=_BY_ID),
}

CONCURRENCY_KEY = {"name": "key", "in": "path", "required": True,
                   "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY},
                   "description": "a concurrency key (a task's concurrency_key), as one "
                                  "path segment: / percent-encoded as %2F, . and .. as %2E "
                                  "and %2E%2E"}
_BY_KEY = "$response.body#/key"
CONCURRENCY_LINKS = {
    "GetConcurrencyKey": _link("getConcurrencyKey", key=_BY_KEY),
    "SetConcurrencyLimit": _link("setConcurrencyLimit", key=_BY_KEY),
    "ClearConcurrencyLimit": _link("clearConcurrencyLimit", key=_BY_KEY),
}


def task_change_schema(components: _Components) -> Schema:
    """``PATCH /v1/tasks/{id}``'s body: a priority, as a task body's, and nothing else."""
    priority = dict(components.model(TaskOptions)["properties"]["priority"])
    priority.pop("default", None)
    return {
        "title": "TaskChange",
        "description": "A task's new priority: only a task that has not started (waiting "
                       "or pending) can change it, and nothing else.",
        "type": "object",
        "properties": {"priority": priority},
        "required": ["priority"],
        "additionalProperties": False,
    }


# PUT /v1/concurrency/{key}'s body: one field, nothing else.
CONCURRENCY_LIMIT: Schema = {
    "title": "ConcurrencyLimit",
    "description": "How many of a key's tasks may be in flight (dispatched or running) at "
                   "once.",
    "type": "object",
    "properties": {"limit": {"type": "integer", "minimum": 1, "maximum": 2**31 - 1,
                             "title": "Limit"}},
    "required": ["limit"],
    "additionalProperties": False,
}


def _body(schema: Schema) -> Schema:
    return {"required": True, "content": {JSON: {"schema": schema}}}


def or_empty(schema: Schema) -> Schema:
    """A filter's value, or empty text: the same as leaving the filter out."""
    return {"anyOf": [schema, {"type": "string", "const": ""}]}


def _paths() -> Schema:
    def query(name: str, schema: Schema, description: str, **more: Any) -> Schema:
        return {"name": name, "in": "query", "required": False, "schema": schema,
                "description": description, **more}

    state_param = query("state", or_empty(ref("TaskState")), "only tasks in this state")
    task = _json("The task.", "TaskOut", links=TASK_LINKS)
    return {
        "/v1/tasks": {
            "post": {
                "operationId": "createTask", "tags": ["tasks"],
                "summary": "Create a task",
                "requestBody": _body(ref("TaskBody")),
                "responses": _responses(
                    {"201": _json("Created.", "TaskOut", links=TASK_LINKS),
                     "200": _json("Its idempotency key was taken: the task it made.",
                                  "TaskOut", links=TASK_LINKS)},
                    "400", "409", "413", "503"),
            },
            "get": {
                "operationId": "listTasks", "tags": ["tasks"],
                "summary": "List tasks, a page at a time, by creation time",
                "parameters": [
                    state_param,
                    query("region", {"type": "string"}, "only tasks in (or pinned to) it"),
                    query("kind", or_empty({"type": "string", "enum": list(PAYLOADS)}),
                          "only tasks of this kind"),
                    query("order", {"type": "string", "enum": ["asc", "desc"],
                                    "default": "asc"}, "asc: oldest first; desc: newest"),
                    query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE,
                                    "default": DEFAULT_PAGE}, "tasks per page"),
                    query("cursor", or_empty({"type": "string", "format": "strata-cursor"}),
                          "a previous page's next_cursor: the page after it"),
                ],
                "responses": _responses(
                    {"200": _json("A page of tasks.", "TaskPage", links={
                        "NextPage": _link("listTasks", cursor="$response.body#/next_cursor"),
                    })}, "400", "503"),
            },
        },
        "/v1/tasks/batch": {"post": {
            "operationId": "createBatch", "tags": ["tasks"],
            "summary": "Create many tasks, all or none",
            "requestBody": _body(ref("TaskBatch")),
            "responses": _responses(
                {"201": _json("Created (some items may have existed).", "BatchCreated",
                              links={"GetFirst": _link("getTask", id="$response.body#/ids/0")}),
                 "200": _json("Every item's idempotency key was taken: nothing new.",
                              "BatchCreated")},
                "400", "409", "413", "503"),
        }},
        "/v1/tasks/{id}": {
            "get": {
                "operationId": "getTask", "tags": ["tasks"], "summary": "A task",
                "parameters": [TASK_ID],
                "responses": _responses({"200": _json("The task.", "TaskDetail")},
                                        "400", "404", "503"),
            },
            "patch": {
                "operationId": "reprioritizeTask", "tags": ["tasks"],
                "summary": "Change the priority of a task that has not started",
                "parameters": [TASK_ID],
                "requestBody": _body(ref("TaskChange")),
                "responses": _responses(
                    {"200": _json("The task, its priority changed.", "TaskOut"),
                     "409": _error("The task has started, or ended.")},
                    "400", "404", "413", "503"),
            },
        },
        "/v1/tasks/{id}/graph": {"get": {
            "operationId": "taskGraph", "tags": ["tasks"],
            "summary": "The tasks around a task (its ancestors and descendants), nearest "
                       "first, and the dependencies among them",
            "parameters": [
                TASK_ID,
                query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE,
                                "default": DEFAULT_PAGE}, "at most this many tasks"),
                query("depth", {"type": "integer", "minimum": 1, "maximum": MAX_GRAPH_DEPTH,
                                "default": DEFAULT_GRAPH_DEPTH},
                      "at most this many dependencies away from the task"),
            ],
            "responses": _responses({"200": _json("Its graph.", "TaskGraph")},
                                    "400", "404", "503"),
        }},
        "/v1/tasks/{id}/cancel": {"post": {
            "operationId": "cancelTask", "tags": ["tasks"],
            "summary": "Cancel a task that has not finished",
            "parameters": [TASK_ID],
            "responses": _responses({"200": _json("The task, cancelled.", "TaskOut",
                                                  links={"RetryTask": TASK_LINKS["RetryTask"]})},
                                    "400", "404", "409", "503"),
        }},
        "/v1/tasks/{id}/retry": {"post": {
            "operationId": "retryTask", "tags": ["tasks"],
            "summary": "Run a failed or cancelled task again, as a new task",
            "parameters": [TASK_ID],
            "responses": _responses({"201": task}, "400", "404", "409", "503"),
        }},
        "/v1/tasks/{id}/attempts": {"get": {
            "operationId": "taskAttempts", "tags": ["tasks"],
            "summary": "Every attempt of a task, and how it ended",
            "parameters": [TASK_ID],
            "responses": _responses({"200": _json("Its attempts.", "Attempts")},
                                    "400", "404", "503"),
        }},
        "/v1/events": {"get": {
            "operationId": "events", "tags": ["tasks"],
            "summary": "Task state changes, as Server-Sent Events",
            "description": "A stream that does not end. First `event: subscribed` "
                           '(`data: {"resumed_after"}`), then one `event: task` per state '
                           "change that matches, its `data:` a TaskEventData object and its "
                           "`id:` what Last-Event-ID resumes after. `event: missed` says "
                           "events after Last-Event-ID are no longer kept; `event: dropped` "
                           "that the client fell too far behind, and the stream ends "
                           '(`data: {"reason"}`). Comments keep the connection alive.',
            "parameters": [
                query("task", {"type": "array", "items": {"type": "string", "format": "uuid"}},
                      "only these tasks (repeat the parameter for more)",
                      style="form", explode=True),
                state_param,
                query("region", {"type": "string"}, "only events in this region"),
                {"name": "Last-Event-ID", "in": "header", "required": False,
                 "schema": {"type": "string"},
                 "description": "the last event seen: resume after it"},
            ],
            "responses": _responses({"200": {
                "description": "The stream.",
                "content": {EVENT_STREAM: {
                    "schema": {"type": "string",
                               "description": "event: task / id: <id> / data: TaskEventData"},
                    "x-event-data": ref("TaskEventData"),
                }},
            }}, "400", "503"),
        }},
        "/v1/concurrency": {"get": {
            "operationId": "concurrencyKeys", "tags": ["concurrency"],
            "summary": "Every concurrency key with a limit, by key",
            "responses": _responses({"200": _json("The keys.", "ConcurrencyKeys", links={
                "GetConcurrencyKey": _link("getConcurrencyKey",
                                           key="$response.body#/keys/0/key"),
            })}, "400", "503"),
        }},
        "/v1/concurrency/{key}": {
            "get": {
                "operationId": "getConcurrencyKey", "tags": ["concurrency"],
                "summary": "A concurrency key: its limit, if it has one, and its tasks in "
                           "flight and waiting",
                "parameters": [CONCURRENCY_KEY],
                "responses": _responses({"200": _json("The key.", "ConcurrencyKeyOut")},
                                        "400", "503"),
            },
            "put": {
                "operationId": "setConcurrencyLimit", "tags": ["concurrency"],
                "summary": "Limit how many of a key's tasks are in flight at once",
                "parameters": [CONCURRENCY_KEY],
                "requestBody": _body(ref("ConcurrencyLimit")),
                "responses": _responses(
                    {"200": _json("The key, limited.", "ConcurrencyKeyOut",
                                  links=CONCURRENCY_LINKS)},
                    "400", "413", "503"),
            },
            "delete": {
                "operationId": "clearConcurrencyLimit", "tags": ["concurrency"],
                "summary": "Remove a key's limit: its tasks are in flight as many at once "
                           "as there is room for",
                "parameters": [CONCURRENCY_KEY],
                "responses": _responses({"204": {"description": "Removed."}},
                                        "400", "404", "503"),
            },
        },
        "/v1/schedules": {
            "post": {
                "operationId": "createSchedule", "tags": ["schedules"],
                "summary": "Create a schedule: a task made at each fire time",
                "requestBody": _body(ref("ScheduleSpec")),
                "responses": _responses(
                    {"201": _json("Created.", "Schedule", links=SCHEDULE_LINKS),
                     "409": _error("A schedule of that name exists.")},
                    "400", "413", "503"),
            },
            "get": {
                "operationId": "listSchedules", "tags": ["schedules"],
                "summary": "Every schedule, by name",
                "responses": _responses({"200": _json("The schedules.", "ScheduleList", links={
                    "GetSchedule": _link("getSchedule", name="$response.body#/schedules/0/name"),
                })}, "400", "503"),
            },
        },
        "/v1/schedules/{name}": {
            "get": {
                "operationId": "getSchedule", "tags": ["schedules"], "summary": "A schedule",
                "parameters": [SCHEDULE_NAME],
                "responses": _responses({"200": _json("The schedule.", "Schedule")},
                                        "400", "404", "503"),
            },
            "patch": {
                "operationId": "changeSchedule", "tags": ["schedules"],
                "summary": "Change a schedule: when it fires from now on, or what",
                "description": "A change to when it fires (or resuming it) counts its fire "
                               "times anew from now: the times it was paused over are not "
                               "missed fires.",
                "parameters": [SCHEDULE_NAME],
                "requestBody": _body(ref("ScheduleChange")),
                "responses": _responses({"200": _json("The schedule, changed.", "Schedule")},
                                        "400", "404", "413", "503"),
            },
            "delete": {
                "operationId": "deleteSchedule", "tags": ["schedules"],
                "summary": "Delete a schedule and its fires (not the tasks it made)",
                "parameters": [SCHEDULE_NAME],
                "responses": _responses({"204": {"description": "Deleted."}},
                                        "400", "404", "503"),
            },
        },
        "/v1/schedules/{name}/trigger": {"post": {
            "operationId": "triggerSchedule", "tags": ["schedules"],
            "summary": "Fire a schedule now, whatever its overlap; its own times unchanged",
            "parameters": [SCHEDULE_NAME],
            "responses": _responses({"201": _json("Fired.", "Fired", links={
                "GetTask": _link("getTask", id="$response.body#/task_id"),
            })}, "400", "404", "503"),
        }},
        "/v1/schedules/{name}/fires": {"get": {
            "operationId": "scheduleFires", "tags": ["schedules"],
            "summary": "A schedule's fire times and what became of each, newest first",
            "parameters": [
                SCHEDULE_NAME,
                query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE,
                                "default": DEFAULT_PAGE}, "fires per page"),
                query("before", or_empty({"type": "string", "format": "date-time"}),
                      "only fire times before it: a previous page's next_before"),
            ],
            "responses": _responses({"200": _json("A page of fires.", "FirePage", links={
                "NextPage": _link("scheduleFires", name="$request.path.name",
                                  before="$response.body#/next_before"),
            })}, "400", "404", "503"),
        }},
        "/v1/stats": {"get": {
            "operationId": "stats", "tags": ["cluster"], "summary": "The master's figures",
            "responses": _responses({"200": _json("Its figures.", "Stats")}, "400", "503"),
        }},
        "/v1/regions": {"get": {
            "operationId": "regions", "tags": ["cluster"], "summary": "Every region",
            "responses": _responses({"200": _json("The regions.", "Regions", links={
                "DeleteRegion": _link("deleteRegion", name="$response.body#/regions/0/name"),
            })}, "400", "503"),
        }},
        "/v1/regions/{name}": {"delete": {
            "operationId": "deleteRegion", "tags": ["cluster"],
            "summary": "Forget a region that is down and named by no unfinished task",
            "parameters": [{"name": "name", "in": "path", "required": True,
                            "schema": {"type": "string"}, "description": "the region"}],
            "responses": _responses({"204": {"description": "Removed."}},
                                    "400", "404", "409", "503"),
        }},
        "/v1/workers": {"get": {
            "operationId": "workers", "tags": ["cluster"],
            "summary": "Every worker the regions report",
            "responses": _responses({"200": _json("The workers.", "Workers")}, "400", "503"),
        }},
        "/v1/openapi.json": {"get": {
            "operationId": "openapi", "tags": ["meta"], "summary": "This document",
            "responses": _responses({"200": {
                "description": "An OpenAPI 3.1 document.",
                "content": {JSON: {"schema": {"type": "object"}}},
            }}, "400"),
        }},
        "/healthz": {"get": {
            "operationId": "healthz", "tags": ["meta"], "summary": "The process is up",
            "responses": _responses({"200": _json("Up.", "Health")}, "400"),
        }},
        "/readyz": {"get": {
            "operationId": "readyz", "tags": ["meta"],
            "summary": "The master can reach its database",
            "responses": _responses({"200": _json("Ready.", "Ready")}, "400", "503"),
        }},
        "/metrics": {"get": {
            "operationId": "metrics", "tags": ["meta"], "summary": "Prometheus metrics",
            "responses": _responses({"200": {
                "description": "The Prometheus text exposition format.",
                "content": {PROMETHEUS: {"schema": {"type": "string"}}},
            }}, "400"),
        }},
        "/schedule": {"post": {
            "operationId": "schedule", "tags": ["taskmaster"],
            "summary": "TaskMaster-compatible: schedule a shell command",
            "requestBody": _body(ref("ScheduleRequest")),
            "responses": _responses({"200": _json("Scheduled.", "ScheduleReply", links={
                "TaskMasterStatus": _link("status", task_id="$response.body#/task_id"),
                "GetTask": _link("getTask", id="$response.body#/task_id"),
            })}, "400", "413", "503"),
        }},
        **{path: {"get": {
            "operationId": operation_id, "tags": ["taskmaster"],
            "summary": "TaskMaster-compatible: a task's state and times",
            "parameters": [{"name": "task_id", "in": "query", "required": True,
                            "schema": {"type": "string", "format": "uuid"},
                            "description": "the task"}],
            "responses": _responses({"200": _json("The task.", "StatusReply")},
                                    "400", "404", "503"),
        }} for path, operation_id in (("/status", "status"), ("/status/", "statusSlash"))},
    }


@cache
def document() -> Schema:
    """The whole document (built once; callers must not change it)."""
    components = _Components()
    for kind in PAYLOADS:
        components.add(task_schema_name(kind), task_body_schema(kind, components))
    components.add("TaskBody", _union(
        "TaskBody", "A task: `kind` says which of these it is.", task_schema_name))
    for kind in PAYLOADS:
        components.add(scheduled_task_schema_name(kind), scheduled_task_schema(kind, components))
    components.add("ScheduledTaskBody", _union(
        "ScheduledTaskBody", "A schedule's task: `kind` says which of these it is.",
        scheduled_task_schema_name))
    spec = schedule_spec_schema(components)
    components.add("ScheduleSpec", spec)
    components.add("ScheduleChange", schedule_change_schema(spec))
    for kind in PAYLOADS:
        components.add(batch_item_schema_name(kind), batch_item_schema(kind, components))
    components.add("BatchTaskBody", _union(
        "BatchTaskBody", "A batch's item: a task, and its key; `kind` says which of these "
        "it is.", batch_item_schema_name))
    components.add("TaskBatch", {
        "title": "TaskBatch", "type": "object",
        "properties": {"tasks": {"type": "array", "items": ref("BatchTaskBody"),
                                 "minItems": 1, "maxItems": MAX_BATCH}},
        "required": ["tasks"], "additionalProperties": False,
        "description": "Each item is a task; items that name an idempotency key need "
                       "one of their own, and items that have a key one of their own. An "
                       "item's depends_on names tasks by id, or other items of the batch "
                       "by key; the items' dependencies may not make a cycle.",
    })
    components.add("TaskChange", task_change_schema(components))
    components.add("ConcurrencyLimit", CONCURRENCY_LIMIT)
    for model in (*REQUEST_MODELS, *RESPONSE_MODELS):
        components.add(model.__name__, components.model(model))
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "Strata",
            "version": "1",
            "description": "The master's REST API. Every error is JSON "
                           '`{"error": {"code", "message"}}`; a query parameter an '
                           "operation does not take, or one given twice, is a 400. Calls "
                           "carry an API token (`Authorization: Bearer <token>`) whenever "
                           "the master has one.",
        },
        "paths": _secured(_paths()),
        "components": {
            "schemas": dict(sorted(components.schemas.items())),
            "responses": {f"E{status}": response for status, response in ERRORS.items()},
            "securitySchemes": SECURITY_SCHEMES,
        },
        "security": [{SECURITY_SCHEME: []}],
    }


def _secured(paths: Schema) -> Schema:
    """Every operation but the open ones answers 401 and 429 too; the open ones need no
    token (an empty ``security``)."""
    for path, item in paths.items():
        for operation in item.values():
            if path in OPEN_PATHS:
                operation["security"] = []
            else:
                operation["responses"].update(_responses({}, "401", "429"))
    return paths
