"""What a region says about itself in every heartbeat: its figures and its workers.

The master stores the workers as JSON and reads them back into ``WorkerInfo``."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerInfo:
    id: str
    capacity: int
    running: int
    last_heartbeat: float  # unix seconds, as the region last heard from it
    health_address: str | None = None

    def to_json(self) -> dict[str, Any]:
        return _worker_json(self)

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> WorkerInfo:
        return cls(
            id=value["id"], capacity=value["capacity"], running=value["running"],
            last_heartbeat=value["last_heartbeat"],
            health_address=value.get("health_address") or None,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class RegionStatus:
    name: str
    address: str
    capacity: int = 0  # slots of live workers
    max_outstanding: int = 0  # how many tasks it will hold at once
    running: int = 0
    queued: int = 0
    workers: tuple[WorkerInfo, ...] = field(default_factory=tuple)


def _worker_json(w: Any) -> dict[str, Any]:
    # By hand: dataclasses.asdict (a deep copy of every field) was a tenth of a
    # master's CPU under many regions' heartbeats, each listing its workers.
    return {"id": w.id, "capacity": w.capacity, "running": w.running,
            "last_heartbeat": w.last_heartbeat, "health_address": w.health_address or None}


def workers_json(workers: Iterable[Any]) -> str:
    """The workers as the master stores them: of ``WorkerInfo``, or straight from a
    heartbeat's messages (the same fields; no address is empty there), which spares a
    beat making an object of each worker first."""
    return json.dumps([_worker_json(w) for w in workers])
