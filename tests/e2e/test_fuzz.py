"""Thousands of generated requests against a real master: never a 5xx, every error in
the JSON error shape, and nothing written for a request that was refused. Again with an
API token: each request with it, without one or with a wrong one; every one without the
token is a 401 (but for the probes, which need none), and writes nothing.

Derandomized (a fixed seed), so a run is the same every time and a failure reproduces.
"""

from __future__ import annotations

import asyncio
import http.client
import json
from typing import Any
from urllib.parse import quote, urlsplit

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from strata.common.tokens import new_token
from strata.local.cluster import Cluster

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

EXAMPLES = 3000
KNOWN_ID = "0b3c7f9e-8a7c-4c56-9d0e-2f6a3c1b9e11"

# Text of every kind: NUL, lone surrogates, controls, the astral planes.
text = st.text(alphabet=st.characters(codec=None, min_codepoint=0), max_size=40) | st.sampled_from(
    ["", "\x00", "\ud800", "a\udfffb", "shell", "noop", "pending", "desc", "region-a",
     "2030-01-01T00:00:00Z", "-1", "1e309", KNOWN_ID])
scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | text
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12)

TASK_FIELDS = ["kind", "command", "run_at", "priority", "region", "max_attempts", "timeout_s",
               "url", "method", "headers", "body", "handler", "args", "seconds",
               "idempotency_key"]
task_bodies = st.fixed_dictionaries(
    {"kind": st.sampled_from(["shell", "http", "python", "noop", "sleep"]) | text},
    optional={name: json_values for name in TASK_FIELDS[1:]},
)
# Tasks that are nearly right, so that many are accepted and the rest fail on one field.
nearly = st.one_of(
    st.fixed_dictionaries({"kind": st.just("noop")}, optional={
        "priority": st.integers(-(2**33), 2**33), "max_attempts": st.integers(-5, 200),
        "timeout_s": st.floats(), "run_at": text | st.datetimes().map(str),
        "idempotency_key": st.sampled_from(["k1", "k2", "k3"]) | text}),
    st.fixed_dictionaries({"kind": st.just("shell"), "command": text}),
    st.fixed_dictionaries({"kind": st.just("python"), "handler": text,
                           "args": st.lists(json_values, max_size=3)}),
)
tasks = nearly | task_bodies
bodies = st.one_of(
    tasks, json_values,
    st.builds(lambda items: {"tasks": items}, st.lists(tasks, max_size=4)),
    st.fixed_dictionaries({"command": text}, optional={"scheduled_at": scalars}),
)

ROUTES = [
    ("POST", "/v1/tasks"), ("POST", "/v1/tasks/batch"), ("GET", "/v1/tasks"),
    ("GET", "/v1/tasks/{id}"), ("POST", "/v1/tasks/{id}/cancel"),
    ("POST", "/v1/tasks/{id}/retry"), ("GET", "/v1/tasks/{id}/attempts"),
    ("GET", "/v1/stats"), ("GET", "/v1/regions"),
    ("DELETE", "/v1/regions/{id}"), ("GET", "/v1/workers"), ("POST", "/schedule"),
    ("GET", "/status"), ("GET", "/healthz"), ("GET", "/readyz"),
]
CREATES = [("POST", "/v1/tasks"), ("POST", "/v1/tasks/batch"), ("POST", "/schedule")]
OPEN = {("GET", "/healthz"), ("GET", "/readyz")}  # what needs no token
QUERY_KEYS = ["state", "region", "kind", "order", "limit", "cursor", "task_id", "x"]


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, bytes | None]:
    method, path = draw(st.sampled_from(ROUTES) | st.sampled_from(CREATES))
    if draw(st.integers(0, 9)) == 0:  # now and then, a method the path does not take
        method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]))
    segment = draw(st.just(KNOWN_ID) | text)
    path = path.replace("{id}", quote(segment.encode("utf-8", "surrogatepass"), safe=""))
    query = draw(st.lists(st.tuples(st.sampled_from(QUERY_KEYS), text), max_size=3)
                 | st.just([]))
    if query:
        path += "?" + "&".join(
            f"{k}={quote(v.encode('utf-8', 'surrogatepass'), safe='')}" for k, v in query)
    if method in ("GET", "DELETE"):
        return method, path, None
    raw = draw(st.sampled_from(["json", "bytes"]))
    if raw == "bytes":
        return method, path, draw(st.binary(max_size=64))
    body = draw(bodies)
    return method, path, json.dumps(body, allow_nan=True).encode("utf-8", "surrogatepass")


def _send(conn: http.client.HTTPConnection, method: str, path: str, data: bytes | None,
          authorization: str | None = None) -> tuple[int, str, bytes, str | None]:
    headers = {"Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    conn.request(method, path, body=data, headers=headers)
    resp = conn.getresponse()
    raw = resp.read()
    if resp.getheader("Connection", "").lower() == "close":
        conn.close()
    return (resp.status, resp.getheader("Content-Type", ""), raw,
            resp.getheader("WWW-Authenticate"))


def _fuzz(host: str, port: int, token: str | None = None) -> tuple[dict[int, int], int]:
    """Sends the generated requests (with ``token``: each with it, without one, or with
    a wrong one); returns the statuses seen and the tasks created."""
    conn = http.client.HTTPConnection(host, port, timeout=30)
    statuses: dict[int, int] = {}
    created = 0
    # Mostly the token, so that most requests go on to be fuzzed past it.
    auths = (st.sampled_from([f"Bearer {token}"] * 3 + [None, "Bearer st_wrong", "Basic x"])
             if token else st.just(None))

    @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(request=requests(), authorization=auths)
    def one(request: tuple[str, str, bytes | None], authorization: str | None) -> None:
        nonlocal created
        method, path, data = request
        status, content_type, raw, challenge = _send(conn, method, path, data, authorization)
        statuses[status] = statuses.get(status, 0) + 1
        assert status < 500, (method, path, data, status, raw[:300])
        if token and authorization != f"Bearer {token}" and (
                (method, path.partition("?")[0]) not in OPEN):
            assert status == 401, (method, path, authorization, status, raw[:300])
            assert challenge is not None and challenge.startswith('Bearer realm="strata"')
        if status >= 400:
            assert content_type.startswith("application/json"), (method, path, raw[:300])
            error = json.loads(raw)["error"]
            assert set(error) == {"code", "message"} and error["message"], raw[:300]
        elif method == "POST" and status == 201:
            body: dict[str, Any] = json.loads(raw)
            # A batch's items whose idempotency key was taken made nothing new.
            created += body["existed"].count(False) if "ids" in body else 1
        elif method == "POST" and path.startswith("/schedule"):
            created += 1

    try:
        one()
    finally:
        conn.close()
    return statuses, created


@pytest.mark.parametrize("with_token", [False, True], ids=["open", "token"])
async def test_no_request_gets_a_5xx_or_writes_what_it_was_refused(
    cluster: Cluster, with_token: bool,
) -> None:
    if with_token:
        cluster.token = new_token()
        # Every refusal a 401: none of the wrong tokens is past the limit (a 429).
        cluster.env = {"STRATA_AUTH_FAILURE_BURST": str(10 * EXAMPLES)}
    await cluster.start_master()
    address = urlsplit(cluster.api)
    assert address.hostname is not None and address.port is not None
    statuses, created = await asyncio.to_thread(_fuzz, address.hostname, address.port,
                                                cluster.token)
    conn = await asyncpg.connect(cluster.database_url)
    try:
        rows = await conn.fetchval("SELECT count(*) FROM tasks")
    finally:
        await conn.close()
    print(f"fuzz: {sum(statuses.values())} requests, statuses {sorted(statuses.items())}, "
          f"{created} tasks created")
    assert rows == created, "a refused request wrote rows, or an accepted one did not"
    assert sum(statuses.values()) >= EXAMPLES
    assert any(400 <= s < 500 and s != 401 for s in statuses) and any(s < 300 for s in statuses)
    assert (401 in statuses) == with_token, statuses
