"""Every bad-input case gets its 4xx and a JSON error body from a real master."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from strata.local.cluster import Cluster

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


UNKNOWN = "0b3c7f9e-8a7c-4c56-9d0e-2f6a3c1b9e11"
CASES: list[tuple[str, str, Any, int]] = [
    ("POST", "/v1/tasks", b"{not json", 400),
    ("POST", "/v1/tasks", [], 400),
    ("POST", "/v1/tasks", {"command": "echo"}, 400),
    ("POST", "/v1/tasks", {"kind": "teleport"}, 400),
    ("POST", "/v1/tasks", {"kind": "shell"}, 400),
    ("POST", "/v1/tasks", {"kind": "shell", "command": 5}, 400),
    ("POST", "/v1/tasks", {"kind": "shell", "command": "x", "priority": "high"}, 400),
    ("POST", "/v1/tasks", {"kind": "shell", "command": "x", "run_at": "next tuesday"}, 400),
    ("POST", "/v1/tasks", {"kind": "shell", "command": "x", "timeout_s": -1}, 400),
    ("POST", "/v1/tasks", {"kind": "http", "url": "file:///etc/passwd"}, 400),
    ("POST", "/v1/tasks", {"kind": "python", "handler": "no colon"}, 400),
    ("POST", "/v1/tasks/batch", {"tasks": "many"}, 400),
    ("POST", "/v1/tasks/batch", {"tasks": [{"kind": "noop"}, {"kind": "nope"}]}, 400),
    ("POST", "/v1/tasks/batch", {"tasks": [{"kind": "noop"}] * 10_001}, 400),
    ("POST", "/v1/tasks", b"x" * (1024 * 1024 + 1), 413),
    ("GET", f"/v1/tasks/{UNKNOWN}", None, 404),
    ("GET", "/v1/tasks/not-a-uuid", None, 400),
    ("POST", f"/v1/tasks/{UNKNOWN}/cancel", None, 404),
    ("GET", "/v1/tasks?state=sleeping", None, 400),
    ("GET", "/v1/tasks?limit=0", None, 400),
    ("GET", "/v1/tasks?cursor=%%%", None, 400),
    ("DELETE", "/v1/tasks", None, 405),
    ("PUT", "/v1/tasks/batch", None, 405),
    ("GET", "/schedule", None, 405),
    ("POST", "/schedule", {"scheduled_at": "2030-01-01T00:00:00Z"}, 400),
    ("POST", "/schedule", {"command": "x", "scheduled_at": "tomorrow"}, 400),
    ("POST", "/schedule", {"command": "x", "scheduled_at": True}, 400),
    ("GET", "/status", None, 400),
    ("GET", f"/status?task_id={UNKNOWN}", None, 404),
    ("GET", "/v2/anything", None, 404),
    # Text PostgreSQL cannot store, anywhere it can enter: one rule, one answer.
    ("GET", "/v1/tasks?region=a%00b", None, 400),
    ("GET", "/v1/tasks?kind=%ED%A0%80", None, 400),
    ("POST", "/v1/tasks", b'{"kind": "http", "url": "http://x/", "headers": {"a": "\\ud800"}}',
     400),
    ("POST", "/v1/tasks", b'{"kind": "python", "handler": "m:f", "args": {"k": ["\\ud800"]}}',
     400),
    ("POST", "/v1/tasks", b'{"kind": "python", "handler": "m:f", "args": {"\\u0000": 1}}', 400),
    ("POST", "/v1/tasks", ("[" * 1000 + "]" * 1000).encode(), 400),
    ("POST", "/v1/tasks", ("[" * 100_000 + "]" * 100_000).encode(), 400),
    # Deeper than Strata takes, well within what JSON can parse: still refused.
    ("POST", "/v1/tasks", json.dumps({"kind": "python", "handler": "m:f",
                                      "args": {"deep": _nested(40)}}).encode(), 400),
]


@pytest.fixture
async def api(cluster: Cluster) -> AsyncIterator[str]:
    await cluster.start_master()
    yield cluster.api


async def test_every_bad_input_gets_its_4xx_and_nothing_is_stored(api: str) -> None:
    async with aiohttp.ClientSession() as session:
        for method, path, body, status in CASES:
            raw = body if isinstance(body, bytes) else (
                json.dumps(body).encode() if body is not None else None)
            data = io.BytesIO(raw) if raw is not None else None
            async with session.request(method, api + path, data=data,
                                       headers={"Content-Type": "application/json"}) as resp:
                payload = await resp.json(content_type=None)
                assert resp.status == status, (method, path, resp.status, payload)
                assert resp.content_type == "application/json", (method, path)
                assert set(payload["error"]) == {"code", "message"}, payload
                assert payload["error"]["message"], (method, path)
        async with session.get(api + "/v1/stats") as resp:
            counts = (await resp.json())["counts"]
    assert sum(counts.values()) == 0, f"bad input left tasks behind: {counts}"



async def _raw_request(api: str, request_line: bytes) -> tuple[int, str, bytes]:
    """Send bytes aiohttp's parser refuses before any handler runs."""
    import asyncio
    from urllib.parse import urlsplit

    address = urlsplit(api)
    reader, writer = await asyncio.open_connection(address.hostname, address.port)
    try:
        writer.write(request_line + b"\r\nHost: x\r\nConnection: close\r\n\r\n")
        await writer.drain()
        response = await reader.read()
    finally:
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    content_type = next((line.split(b":", 1)[1].strip().decode()
                         for line in head.split(b"\r\n")
                         if line.lower().startswith(b"content-type:")), "")
    return status, content_type, body


@pytest.mark.parametrize("request_line", [
    b"GET /v1/tasks?" + b"x=1&" * 2250 + b" HTTP/1.1",  # a 9,000-byte request line
    b"GET /v1/tasks/\xff HTTP/1.1",  # a raw byte that is not ASCII
], ids=["long-query", "non-ascii-byte"])
async def test_errors_of_the_http_parser_are_json_too(api: str, request_line: bytes) -> None:
    status, content_type, body = await _raw_request(api, request_line)
    assert 400 <= status < 500
    assert content_type.startswith("application/json"), (content_type, body)
    error = json.loads(body)["error"]
    assert set(error) == {"code", "message"} and error["message"]
