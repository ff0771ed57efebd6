"""Settings, one class per process. Read from flags (init), STRATA_* variables and
``.env``; durations are timedeltas given in seconds."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

from pydantic import AliasChoices, BeforeValidator, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _seconds(value: Any) -> Any:
    """``"0.5"`` from the environment means half a second, as a bare number does."""
    if isinstance(value, str):
        try:
            return timedelta(seconds=float(value))
        except ValueError:
            return value
    return value


Seconds = Annotated[timedelta, BeforeValidator(_seconds)]

DEFAULT_HEARTBEAT_INTERVAL = timedelta(seconds=1)
DEFAULT_WORKER_DEAD_AFTER = timedelta(seconds=3)
DEFAULT_REGION_DEAD_AFTER = timedelta(seconds=5)
DEFAULT_SCAN_INTERVAL = timedelta(milliseconds=500)
DEFAULT_HTTP_PORT = 8080
DEFAULT_GRPC_PORT = 50051
DEFAULT_CLAIM_BATCH = 1000
DEFAULT_CONCURRENCY = 8


class _Base(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="STRATA_", env_file=".env", extra="ignore", populate_by_name=True
    )

    log_level: str = "INFO"
    heartbeat_interval: Seconds = DEFAULT_HEARTBEAT_INTERVAL


class MasterSettings(_Base):
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("STRATA_DATABASE_URL", "DATABASE_URL",
                                                    "database_url"))
    http_host: str = "127.0.0.1"
    http_port: int = DEFAULT_HTTP_PORT
    grpc_host: str = "127.0.0.1"
    grpc_port: int = DEFAULT_GRPC_PORT
    region_dead_after: Seconds = DEFAULT_REGION_DEAD_AFTER
    scan_interval: Seconds = DEFAULT_SCAN_INTERVAL
    claim_batch: int = Field(default=DEFAULT_CLAIM_BATCH, ge=1, le=10_000)
    db_pool_size: int = Field(default=8, ge=2, le=100)
    # A statement that takes longer fails the request with 503 instead of hanging it.
    db_command_timeout: Seconds = timedelta(seconds=5)
    # The scanner's LISTEN connection must echo a NOTIFY this often, or it is replaced.
    listen_probe_interval: Seconds = timedelta(seconds=5)
    breaker_failures: int = Field(default=3, ge=1)
    breaker_reset: Seconds = timedelta(seconds=2)
    retry_backoff_base: Seconds = timedelta(seconds=1)
    retry_backoff_max: Seconds = timedelta(minutes=5)


class RegionalSettings(_Base):
    name: str = "local"
    master: str = f"127.0.0.1:{DEFAULT_GRPC_PORT}"
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 50061
    advertise: str | None = None
    worker_dead_after: Seconds = DEFAULT_WORKER_DEAD_AFTER
    # How many delegated tasks the region may hold beyond what its workers run, as a
    # multiple of its capacity: enough to keep workers busy between two batches.
    queue_factor: float = Field(default=1.0, ge=0, le=16)
    report_batch: int = Field(default=1000, ge=1, le=10_000)
    breaker_failures: int = Field(default=3, ge=1)
    breaker_reset: Seconds = timedelta(seconds=2)

    @property
    def advertised_address(self) -> str:
        return self.advertise or f"{self.grpc_host}:{self.grpc_port}"


class WorkerSettings(_Base):
    region: str = "127.0.0.1:50061"
    concurrency: int = Field(default=DEFAULT_CONCURRENCY, ge=1, le=10_000)
    http_host: str = "127.0.0.1"
    http_port: int = 0
    id: str | None = None
    # Python handlers may come only from these modules (or their submodules).
    python_modules: list[str] = Field(default_factory=list)
    shutdown_grace: Seconds = timedelta(seconds=30)
    output_limit: int = 64 * 1024


class UpSettings(_Base):
    """What ``strata up`` needs beyond the topology file."""

    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("STRATA_DATABASE_URL", "DATABASE_URL",
                                                    "database_url"))
    data_dir: Path = Path("~/.local/share/strata")

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()
    pg_port: int = 54329
