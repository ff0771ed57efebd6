"""GET /v1/openapi.json: a valid OpenAPI 3.1 document of every route the master serves,
whose request bodies are the models the API validates with and whose responses are the
models the handlers' JSON is held to (tests/e2e/test_openapi.py runs schemathesis on it).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from openapi_spec_validator import validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError
from pydantic import BaseModel

from strata.common import api_models as am
from strata.common.kinds import PAYLOADS
from strata.common.models import (
    MAX_KEY,
    OPTION_FIELDS,
    Task,
    TaskOptions,
    TaskResult,
    TaskState,
    parse_new_task,
)
from strata.common.schedules import PATCHABLE, ScheduleSpec
from strata.common.settings import MasterSettings
from strata.master.api import LIST_PARAMETERS, OPEN_ROUTES, Api
from strata.master.control import Control, schedule_json
from strata.master.db import Attempt, Database, ScheduleRow
from strata.master.openapi import (
    BATCH_KEY,
    REF,
    SCHEDULED_TASK_OMITS,
    batch_item_schema_name,
    document,
    scheduled_task_schema_name,
    task_schema_name,
)
from strata.master.regions import RegionClients

pytestmark = pytest.mark.integration

Client = TestClient[web.Request, web.Application]
# The dashboard's page and files: served by the master, not part of the REST API.
DASHBOARD = {("GET", "/"), ("HEAD", "/"), ("GET", "/ui/{name}"), ("HEAD", "/ui/{name}")}
METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


@pytest.fixture
async def app(db: Database, database_url: str) -> AsyncIterator[web.Application]:
    regions = RegionClients()
    settings = MasterSettings(database_url=database_url,
                              region_dead_after=timedelta(seconds=30))
    try:
        yield Api(Control(db, regions, settings)).app()
    finally:
        await regions.close()


@pytest.fixture
async def client(app: web.Application) -> AsyncIterator[Client]:
    test_client: Client = TestClient(TestServer(app))
    await test_client.start_server()
    try:
        yield test_client
    finally:
        await test_client.close()


def schema_of(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template=REF)
    schema.pop("$defs", None)
    return schema


def operations(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in doc["paths"].items()
            for method in item if method in METHODS}


async def test_the_document_is_valid_openapi_3_1_and_served_as_built(client: Client) -> None:
    response = await client.get("/v1/openapi.json")
    assert response.status == 200
    assert response.content_type == "application/json"
    served = await response.json()
    assert served == json.loads(json.dumps(document()))
    assert served["openapi"].startswith("3.1.")
    validate(served)  # raises on anything OpenAPI 3.1 does not allow
    # Every $ref resolves.
    text = json.dumps(served)
    for name in {part.split('"')[0] for part in text.split('"#/components/schemas/')[1:]}:
        assert name in served["components"]["schemas"], name
    # It takes no query parameter either, like every other route.
    assert (await client.get("/v1/openapi.json?x=1")).status == 400


def test_every_operation_but_the_probes_needs_the_api_token() -> None:
    doc = document()
    scheme = doc["components"]["securitySchemes"]["apiToken"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert doc["security"] == [{"apiToken": []}]
    # What needs no token: the routes REST lets through, less the dashboard's files.
    assert {p for p in OPEN_ROUTES if p in doc["paths"]} == {"/healthz", "/readyz"}
    assert OPEN_ROUTES - set(doc["paths"]) == {"/", "/ui/{name}"}
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            if path in OPEN_ROUTES:
                assert operation["security"] == [], (method, path)
                assert "401" not in responses and "429" not in responses
            else:
                assert "security" not in operation, (method, path)
                assert responses["401"] == {"$ref": "#/components/responses/E401"}
                assert responses["429"] == {"$ref": "#/components/responses/E429"}
    errors = doc["components"]["responses"]
    assert errors["E401"]["headers"]["WWW-Authenticate"]["required"] is True
    assert errors["E429"]["headers"]["Retry-After"]["required"] is True


def test_the_validator_refuses_a_broken_document() -> None:
    broken = json.loads(json.dumps(document()))
    broken["paths"]["/v1/tasks"]["post"]["responses"] = "none"
    with pytest.raises(OpenAPIValidationError):
        validate(broken)


def test_every_route_served_is_in_the_document_and_nothing_else(app: web.Application) -> None:
    served = {(route.method, route.resource.canonical) for route in app.router.routes()
              if route.resource is not None}
    served -= DASHBOARD
    # aiohttp answers HEAD for every GET; the document lists the GETs.
    heads = {(m, p) for m, p in served if m == "HEAD"}
    assert {("GET", p) for _, p in heads} <= served
    assert served - heads == operations(document())


def test_each_task_body_is_its_payload_and_the_options_and_kind() -> None:
    schemas = document()["components"]["schemas"]
    options = schema_of(TaskOptions)
    for kind, model in PAYLOADS.items():
        payload = schema_of(model)
        body = schemas[task_schema_name(kind)]
        assert body["properties"] == {
            "kind": {"const": kind, "type": "string"},
            **payload.get("properties", {}), **options["properties"],
        }
        assert set(body["required"]) == {"kind", *payload.get("required", [])}
        assert body["additionalProperties"] is False
        assert not set(payload.get("properties", {})) & OPTION_FIELDS
    union = schemas["TaskBody"]
    assert union["oneOf"] == [{"$ref": REF.format(model=task_schema_name(k))} for k in PAYLOADS]
    assert set(union["discriminator"]["mapping"]) == set(PAYLOADS)
    # A batch's item: the task body and a key, which other items' depends_on may name.
    batch = schemas["TaskBatch"]["properties"]["tasks"]
    assert batch["items"] == {"$ref": REF.format(model="BatchTaskBody")}
    items = schemas["BatchTaskBody"]
    assert items["oneOf"] == [{"$ref": REF.format(model=batch_item_schema_name(k))}
                              for k in PAYLOADS]
    assert set(items["discriminator"]["mapping"]) == set(PAYLOADS)
    for kind in PAYLOADS:
        body, item = schemas[task_schema_name(kind)], schemas[batch_item_schema_name(kind)]
        assert item["properties"] == {**body["properties"], "key": BATCH_KEY}
        assert item["required"] == body["required"]
        assert item["additionalProperties"] is False
    assert BATCH_KEY["anyOf"][0] == {"type": "string", "minLength": 1, "maxLength": MAX_KEY}
    paths = document()["paths"]
    assert (paths["/v1/tasks"]["post"]["requestBody"]["content"]["application/json"]["schema"]
            == {"$ref": REF.format(model="TaskBody")})
    assert schemas["ScheduleRequest"] == schema_of(am.ScheduleRequest)


def test_every_model_is_a_component_as_pydantic_makes_it() -> None:
    from strata.master.openapi import REQUEST_MODELS, RESPONSE_MODELS

    schemas = document()["components"]["schemas"]
    for model in (*REQUEST_MODELS, *RESPONSE_MODELS):
        assert schemas[model.__name__] == schema_of(model), model.__name__


def test_the_query_parameters_are_those_the_handlers_take() -> None:
    paths = document()["paths"]

    def names(path: str) -> list[str]:
        return [p["name"] for p in paths[path]["get"].get("parameters", []) if p["in"] == "query"]

    assert names("/v1/tasks") == list(LIST_PARAMETERS)
    assert names("/v1/events") == ["task", "state", "region"]
    assert names("/status") == names("/status/") == ["task_id"]
    assert names("/v1/stats") == []
    assert names("/v1/schedules/{name}/fires") == ["limit", "before"]
    assert names("/v1/schedules") == []
    assert names("/v1/tasks/{id}/graph") == ["limit", "depth"]
    assert names("/v1/concurrency") == names("/v1/concurrency/{key}") == []


def test_a_schedule_is_the_spec_its_task_a_task_body_without_run_at_or_key() -> None:
    schemas = document()["components"]["schemas"]
    spec = schema_of(ScheduleSpec)
    # pydantic sees a dict, which the spec validates as a task body: the document says which.
    assert spec["properties"]["task"] == {"additionalProperties": True, "title": "Task",
                                          "type": "object"}
    task = schemas["ScheduleSpec"]["properties"]["task"]
    assert task["$ref"] == REF.format(model="ScheduledTaskBody")
    assert schemas["ScheduleSpec"] == {**spec, "properties": {**spec["properties"],
                                                              "task": task}}
    assert len(spec["oneOf"]) == 2  # cron or every_s
    # Each fire is due at its fire time, made once, and waits for no other task.
    assert set(SCHEDULED_TASK_OMITS) == {"run_at", "idempotency_key", "depends_on"}
    # Its bounds as JSON Schema says them (pydantic wrote "ge"/"le", which it ignores).
    assert spec["properties"]["every_s"]["anyOf"][0] == {
        "type": "number", "minimum": 1.0, "maximum": 366 * 86400.0}
    for kind in PAYLOADS:
        body, scheduled = schemas[task_schema_name(kind)], \
            schemas[scheduled_task_schema_name(kind)]
        assert scheduled["properties"] == {
            name: schema for name, schema in body["properties"].items()
            if name not in SCHEDULED_TASK_OMITS}
        assert scheduled["required"] == body["required"]
        assert scheduled["additionalProperties"] is False
    union = schemas["ScheduledTaskBody"]
    assert union["oneOf"] == [{"$ref": REF.format(model=scheduled_task_schema_name(k))}
                              for k in PAYLOADS]
    # A change: any field but the name, none required, no default (absent: unchanged).
    change = schemas["ScheduleChange"]
    assert set(change["properties"]) == PATCHABLE == set(spec["properties"]) - {"name"}
    assert "required" not in change and change["additionalProperties"] is False
    for name, schema in change["properties"].items():
        assert schema == {k: v for k, v in schemas["ScheduleSpec"]["properties"][name].items()
                          if k != "default"}, name
    paths = document()["paths"]
    for path, method, model in (("/v1/schedules", "post", "ScheduleSpec"),
                                ("/v1/schedules/{name}", "patch", "ScheduleChange")):
        content = paths[path][method]["requestBody"]["content"]["application/json"]
        assert content["schema"] == {"$ref": REF.format(model=model)}


async def test_the_schedule_models_have_the_fields_the_handlers_write(client: Client) -> None:
    assert set(am.Schedule.model_fields) - {"next_fire_at", "last_task_id", "created_at",
                                            "updated_at"} == set(ScheduleSpec.model_fields)
    now = datetime.now(UTC)
    for body in ({"name": "a", "every_s": 60, "task": {"kind": "noop"}},
                 {"name": "b", "cron": "0 9 * * 1-5", "timezone": "Europe/Berlin",
                  "task": {"kind": "shell", "command": "true", "priority": 2},
                  "overlap": "skip", "catchup": "all", "start_at": "2030-01-01T00:00:00Z",
                  "end_at": "2031-01-01T00:00:00+02:00", "paused": True}):
        row = ScheduleRow(spec=ScheduleSpec.model_validate(body), next_fire_at=now,
                          last_task_id=None, last_task_state=None, created_at=now,
                          updated_at=now)
        out = schedule_json(row)
        am.Schedule.model_validate(out)
        assert set(out) == set(am.Schedule.model_fields)
        status, made = await post(client, "/v1/schedules", body)
        assert status == 201, made
        am.Schedule.model_validate(made)
    response = await client.get("/v1/schedules")
    assert len(am.ScheduleList.model_validate(await response.json()).schedules) == 2
    response = await client.post("/v1/schedules/a/trigger")
    assert response.status == 201
    fired = am.Fired.model_validate(await response.json())
    response = await client.get("/v1/schedules/a/fires?limit=1")
    page = am.FirePage.model_validate(await response.json())
    assert [f.task_id for f in page.fires] == [fired.task_id]
    assert page.next_before == fired.fire_time  # a full page: there may be more
    assert set(page.fires[0].model_dump()) == set(am.Fire.model_fields)
    response = await client.get("/v1/schedules/b/fires")
    assert am.FirePage.model_validate(await response.json()) == am.FirePage(
        fires=[], next_before=None)


def test_the_response_models_have_the_fields_the_handlers_write() -> None:
    assert list(am.StateCounts.model_fields) == [s.value for s in TaskState]
    assert set(am.TaskResultOut.model_fields) == set(TaskResult.model_fields)
    assert set(am.AttemptOut.model_fields) == {f.name for f in dataclasses.fields(Attempt)}
    now = datetime.now(UTC)
    task = Task.created(parse_new_task({"kind": "shell", "command": "true"}), now)
    ran = task.model_copy(update={
        "state": TaskState.SUCCEEDED, "assigned_region": "eu", "worker_id": "w",
        "picked_at": now, "started_at": now, "finished_at": now,
        "result": TaskResult(exit_code=0, output="x"),
    })
    for each in (task, ran):
        am.TaskOut.model_validate(each.to_json())  # extra="forbid": no field unknown
        assert set(each.to_json()) == set(am.TaskOut.model_fields)


async def test_the_dependency_and_concurrency_routes_answer_their_models(
    client: Client,
) -> None:
    status, made = await post(client, "/v1/tasks/batch", {"tasks": [
        {"kind": "noop", "key": "a", "concurrency_key": "k"},
        {"kind": "noop", "key": None, "depends_on": ["a"], "on_upstream_failure": "run"},
    ]})
    assert status == 201, made
    parent, child = am.BatchCreated.model_validate(made).ids
    response = await client.get(f"/v1/tasks/{child}")
    detail = am.TaskDetail.model_validate(await response.json())
    assert (detail.state, detail.depends_on, detail.dependents) == ("waiting", [parent], [])
    assert isinstance(detail.waiting_for, str)
    response = await client.get(f"/v1/tasks/{parent}/graph?limit=1&depth=1")
    assert response.status == 200, await response.text()
    graph = am.TaskGraph.model_validate(await response.json())
    assert (graph.root, graph.truncated) == (parent, True)
    response = await client.patch(f"/v1/tasks/{child}", json={"priority": 7})
    assert response.status == 200, await response.text()
    assert am.TaskOut.model_validate(await response.json()).priority == 7
    response = await client.put("/v1/concurrency/k", json={"limit": 2})
    assert response.status == 200, await response.text()
    assert am.ConcurrencyKeyOut.model_validate(await response.json()).limit == 2
    for path, model in (("/v1/concurrency/k", am.ConcurrencyKeyOut),
                        ("/v1/concurrency/none", am.ConcurrencyKeyOut),
                        ("/v1/concurrency", am.ConcurrencyKeys)):
        response = await client.get(path)
        assert response.status == 200, await response.text()
        model.model_validate(await response.json())
    assert (await client.delete("/v1/concurrency/k")).status == 204
    assert (await client.delete("/v1/concurrency/k")).status == 404


async def test_the_bodies_the_new_routes_refuse_are_those_the_document_refuses(
    client: Client,
) -> None:
    schemas = document()["components"]["schemas"]
    # A priority as a task body's, with no default: the body names it.
    assert schemas["TaskChange"]["properties"] == {"priority": {
        k: v for k, v in schema_of(TaskOptions)["properties"]["priority"].items()
        if k != "default"}}
    assert schemas["TaskChange"]["required"] == ["priority"]
    assert set(schemas["ConcurrencyLimit"]["properties"]) == {"limit"}
    status, made = await post(client, "/v1/tasks", {"kind": "noop"})
    assert status == 201, made
    for body in ({"priority": 1, "region": "eu"}, {}, {"priority": 2**31},
                 {"priority": 1.5}, [1]):
        response = await client.patch(f"/v1/tasks/{made['id']}", json=body)
        assert response.status == 400, (body, await response.text())
    for body in ({"limit": 0}, {"limit": 2**31}, {"limit": 1, "x": 1}, {"limit": True}):
        response = await client.put("/v1/concurrency/k", json=body)
        assert response.status == 400, (body, await response.text())
    # Only a batch's items have keys.
    status, body = await post(client, "/v1/tasks", {"kind": "noop", "key": "a"})
    assert status == 400, body
    assert "key" not in schemas[task_schema_name("noop")]["properties"]


# ---- what schemathesis found, each pinned down here ----------------------------------


async def post(client: Client, path: str, body: Any) -> tuple[int, Any]:
    response = await client.post(path, data=json.dumps(body),
                                 headers={"Content-Type": "application/json"})
    return response.status, await response.json()


@pytest.mark.parametrize("run_at", ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z"])
async def test_a_run_at_stored_as_infinity_reads_back(client: Client, run_at: str) -> None:
    """PostgreSQL keeps these two as -infinity and infinity, which asyncpg reads back as
    naive datetimes: a pending task's waiting_for, and the stats, were 500s."""
    status, made = await post(client, "/v1/tasks", {"kind": "noop", "run_at": run_at})
    assert status == 201, made
    response = await client.get(f"/v1/tasks/{made['id']}")
    assert response.status == 200, await response.text()
    got = await response.json()
    am.TaskDetail.model_validate(got)
    assert datetime.fromisoformat(got["run_at"]) == datetime.fromisoformat(run_at)
    assert isinstance(got["waiting_for"], str)
    response = await client.get("/v1/stats")
    assert response.status == 200, await response.text()
    am.Stats.model_validate(await response.json())


async def test_an_integral_number_is_an_integer(client: Client) -> None:
    """JSON Schema's integer (and JSON itself) takes 3.0 for 3."""
    status, made = await post(client, "/v1/tasks",
                              {"kind": "noop", "priority": 3.0, "max_attempts": 2.0})
    assert status == 201, made
    assert (made["priority"], made["max_attempts"]) == (3, 2)
    for bad in ({"priority": 3.5}, {"priority": True}, {"priority": "3"},
                {"max_attempts": 1e300}):
        status, body = await post(client, "/v1/tasks", {"kind": "noop", **bad})
        assert status == 400, (bad, body)


async def test_a_batch_refuses_a_field_it_does_not_know(client: Client) -> None:
    status, body = await post(client, "/v1/tasks/batch",
                              {"tasks": [{"kind": "noop"}], "priority": 5})
    assert status == 400, body
    assert "priority" in body["error"]["message"]


async def test_get_on_the_batch_route_is_a_405_not_a_task_id(client: Client) -> None:
    response = await client.get("/v1/tasks/batch")
    assert response.status == 405
    assert response.headers["Allow"] == "POST"


@pytest.mark.parametrize("handler", ["", "m:f\n", "mödule:f", "m:f:g", "m.:f"])
async def test_a_handler_the_schema_refuses_is_refused(client: Client, handler: str) -> None:
    """The handler's pattern in the schema (ECMA-262) and the validator agree: ASCII,
    matched whole."""
    status, body = await post(client, "/v1/tasks", {"kind": "python", "handler": handler})
    assert status == 400, body
    pattern = document()["components"]["schemas"]["PythonTask"]["properties"]["handler"]
    assert pattern["pattern"] == "^[A-Za-z_][A-Za-z0-9_]*(\\.[A-Za-z_][A-Za-z0-9_]*)*:" \
                                 "[A-Za-z_][A-Za-z0-9_]*$"


async def test_an_empty_filter_is_no_filter(client: Client) -> None:
    response = await client.get("/v1/tasks?state=&kind=&cursor=&region=")
    assert response.status == 200, await response.text()


async def test_scheduled_at_in_unix_seconds_takes_exactly_the_documented_range(
    client: Client,
) -> None:
    for value in (am.MIN_UNIX_S, 0, am.MAX_UNIX_S):
        status, body = await post(client, "/schedule", {"command": "true", "scheduled_at": value})
        assert status == 200, (value, body)
    # Past the end: fromtimestamp would round 253402300799.00003 to a valid microsecond.
    for value in (am.MAX_UNIX_S + 0.00003, am.MIN_UNIX_S - 0.5, 1e300):
        status, body = await post(client, "/schedule", {"command": "true", "scheduled_at": value})
        assert status == 400, (value, body)
