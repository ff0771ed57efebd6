"""What a region says about itself in every heartbeat: its figures and its workers.

The master stores the workers as JSON and reads them back into ``WorkerInfo``."""

from __future__ import annotations

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
        # By hand: dataclasses.asdict (a deep copy of every field) was a tenth of a
        # master's CPU under many regions' heartbeats, each listing its workers.
        return {"id": self.id, "capacity": self.capacity, "running": self.running,
                "last_heartbeat": self.last_heartbeat, "health_address": self.health_address}

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
