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
