"""Topology files: which regions exist, their ports, their workers, and the schedules
to keep on the master. One file drives both ``strata up`` (local processes; it also
applies the schedules) and ``strata compose`` (a compose file, without the schedules)."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from strata.common.errors import ConfigError, InvalidInput
from strata.common.models import REGION_NAME_PATTERN
from strata.common.schedules import ScheduleSpec, parse_schedule
from strata.common.settings import MasterSettings, RegionalSettings, WorkerSettings

TOPOLOGY_DIR = Path(__file__).resolve().parent
DEFAULT_TOPOLOGY = TOPOLOGY_DIR / "local.toml"

# A setting's value; a list (python_modules) reaches its process as JSON, as pydantic-settings
# reads it.
Scalar = str | int | float | bool | list[str]


# A region's settings reach its coordinator and its workers; the topology's reach everyone.
REGION_SETTINGS = frozenset(RegionalSettings.model_fields) | frozenset(WorkerSettings.model_fields)
ALL_SETTINGS = REGION_SETTINGS | frozenset(MasterSettings.model_fields)


def _known(settings: dict[str, Scalar], known: frozenset[str], of: str) -> dict[str, Scalar]:
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(f"not a setting of {of}: {', '.join(unknown)} "
                         f"(known: {', '.join(sorted(known))})")
    return settings


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MasterSpec(_Strict):
    http_port: int = Field(default=8080, ge=1, le=65535)
    grpc_port: int = Field(default=50051, ge=1, le=65535)


class RegionSpec(_Strict):
    name: str = Field(pattern=REGION_NAME_PATTERN)
    grpc_port: int = Field(ge=1, le=65535)
    # /healthz and /metrics; none given: any free port, named in the region's log.
    http_port: int | None = Field(default=None, ge=1, le=65535)
    workers: int = Field(default=2, ge=0, le=64)
    concurrency: int = Field(default=8, ge=1, le=10_000)
    # STRATA_* overrides for this region's processes, keyed without the prefix.
    settings: dict[str, Scalar] = Field(default_factory=dict)

    @field_validator("settings")
    @classmethod
    def _region_settings(cls, value: dict[str, Scalar]) -> dict[str, Scalar]:
        return _known(value, REGION_SETTINGS, "a region or its workers")


def _schedule(value: Any) -> ScheduleSpec:
    """A ``[[schedules]]`` table: a ``POST /v1/schedules`` body, checked as the master
    checks one (TOML's own date-times are taken for start_at and end_at too)."""
    if isinstance(value, ScheduleSpec):
        return value
    if not isinstance(value, dict):
        raise ValueError("a schedule must be a table ([[schedules]])")
    try:
        return parse_schedule(value)
    except InvalidInput as exc:
        raise ValueError(str(exc)) from None


class Topology(_Strict):
    name: str
    # Mutual TLS on every link, HTTPS for the REST API: `strata up` makes the
    # certificates (once, under its data dir); `strata compose` mounts them as secrets.
    tls: bool = False
    master: MasterSpec = MasterSpec()
    settings: dict[str, Scalar] = Field(default_factory=dict)
    regions: list[RegionSpec] = Field(min_length=1)
    # Made (or changed to match) on the master by ``strata up`` once it is ready.
    schedules: list[Annotated[ScheduleSpec, BeforeValidator(_schedule)]] = Field(
        default_factory=list)

    @field_validator("settings")
    @classmethod
    def _settings(cls, value: dict[str, Scalar]) -> dict[str, Scalar]:
        return _known(value, ALL_SETTINGS, "any process")

    @model_validator(mode="after")
    def _unique(self) -> Topology:
        names = [r.name for r in self.regions]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"region names must be unique; repeated: {', '.join(dupes)}")
        ports = [self.master.http_port, self.master.grpc_port] + [r.grpc_port for r in self.regions]
        ports += [r.http_port for r in self.regions if r.http_port is not None]
        clash = sorted({p for p in ports if ports.count(p) > 1})
        if clash:
            raise ValueError(f"ports must be unique; repeated: {', '.join(map(str, clash))}")
        schedules = [s.name for s in self.schedules]
        dupes = sorted({n for n in schedules if schedules.count(n) > 1})
        if dupes:
            raise ValueError(f"schedule names must be unique; repeated: {', '.join(dupes)}")
        for s in self.schedules:
            region = s.task.get("region")
            if region is not None and region not in names:
                raise ValueError(f"schedule {s.name}: task.region: no region named "
                                 f"{region!r} in this topology; its regions: {', '.join(names)}")
        return self


def _where(loc: tuple[Any, ...], raw: dict[str, Any]) -> str:
    """regions[1].grpc_port, with the region's name when it has one."""
    parts: list[str] = []
    node: Any = raw
    for item in loc:
        if isinstance(item, int):
            name = node[item].get("name") if isinstance(node, list) and item < len(node) and \
                isinstance(node[item], dict) else None
            parts[-1] += f"[{item}]" + (f" ({name})" if name else "")
            node = node[item] if isinstance(node, list) and item < len(node) else None
        else:
            parts.append(str(item))
            node = node.get(item) if isinstance(node, dict) else None
    return ".".join(parts) or "(top level)"


def parse(text: str, source: str) -> Topology:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    raw.setdefault("name", Path(source).stem)
    try:
        return Topology.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{_where(err['loc'], raw)}: {err['msg'].removeprefix('Value error, ')}"
            for err in exc.errors(include_url=False)
        )
        raise ConfigError(f"{source}: {problems}") from None


def load(path: Path | str) -> Topology:
    path = Path(path)
    if not path.exists() and not path.is_absolute() and (TOPOLOGY_DIR / path.name).exists():
        path = TOPOLOGY_DIR / path.name
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read topology: {exc.strerror}") from None
    return parse(text, str(path))


def _env_value(value: Scalar) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return json.dumps(value)
    return str(value)


def env_for(settings: Mapping[str, Scalar]) -> dict[str, str]:
    return {f"STRATA_{k.upper()}": _env_value(v) for k, v in settings.items()}
