"""Settings, one class per process. Read from flags (init), STRATA_* variables and
``.env``; durations are timedeltas given in seconds."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AliasChoices, BeforeValidator, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from strata.common import tokens


def _seconds(value: Any) -> Any:
    """``"0.5"`` from the environment means half a second, as a bare number does."""
    if isinstance(value, str):
        try:
            return timedelta(seconds=float(value))
        except ValueError:
            return value
    return value


Seconds = Annotated[timedelta, BeforeValidator(_seconds)]


def _token_entries(value: Any) -> Any:
    """``STRATA_API_TOKENS=a,b`` (or a JSON list, as a topology's settings are passed)."""
    if isinstance(value, str):
        if value.strip().startswith("["):
            try:
                return json.loads(value)
            except ValueError:
                return value
        return tokens.split_entries(value)
    return value


# Each entry hashed as it is read: the settings never hold a token itself.
TokenHashes = Annotated[list[Annotated[str, AfterValidator(tokens.as_hash)]], NoDecode,
                        BeforeValidator(_token_entries)]

DEFAULT_HEARTBEAT_INTERVAL = timedelta(seconds=1)
# Work a region holds beyond what its workers run, in time: what they get through in
# this long at their recent pace covers the master's turn-around between two batches.
DEFAULT_QUEUE_HORIZON = timedelta(milliseconds=250)
DEFAULT_WORKER_DEAD_AFTER = timedelta(seconds=3)
DEFAULT_REGION_DEAD_AFTER = timedelta(seconds=5)
DEFAULT_SCAN_INTERVAL = timedelta(milliseconds=500)
DEFAULT_HTTP_PORT = 8080
DEFAULT_GRPC_PORT = 50051
DEFAULT_CLAIM_BATCH = 1000
DEFAULT_CONCURRENCY = 8


_DATABASE_URL = AliasChoices("STRATA_DATABASE_URL", "DATABASE_URL", "database_url")


class _Base(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="STRATA_", env_file=".env", extra="ignore", populate_by_name=True
    )

    log_level: str = Field(default="INFO", description="DEBUG, INFO, WARNING or ERROR")
    heartbeat_interval: Seconds = Field(
        default=DEFAULT_HEARTBEAT_INTERVAL,
        description="seconds between worker -> region and region -> master heartbeats")
    # Mutual TLS on every gRPC link (and HTTPS for the master's REST API): all three or
    # none; reloaded on SIGHUP (strata.common.tls).
    tls_ca: Path | None = Field(
        default=None, description="PEM file of the CA that signs every peer's certificate "
                                  "(turns mutual TLS on, with --tls-cert and --tls-key)")
    tls_cert: Path | None = Field(default=None,
                                  description="PEM file of this process's certificate")
    tls_key: Path | None = Field(default=None,
                                 description="PEM file of this process's private key")


class MasterSettings(_Base):
    event_loop: Literal["uvloop", "asyncio"] = Field(
        default="uvloop", description="the process's event loop: uvloop, or asyncio's own")
    database_url: str | None = Field(
        default=None, validation_alias=_DATABASE_URL,
        description="PostgreSQL URL (also DATABASE_URL)")
    http_host: str = Field(default="127.0.0.1", description="address the REST API listens on")
    http_port: int = Field(default=DEFAULT_HTTP_PORT, description="REST API port")
    grpc_host: str = Field(default="127.0.0.1",
                           description="address the gRPC server (for regions) listens on")
    grpc_port: int = Field(default=DEFAULT_GRPC_PORT, description="gRPC port")
    region_dead_after: Seconds = Field(
        default=DEFAULT_REGION_DEAD_AFTER,
        description="seconds of silence after which a region is down and its work reclaimed")
    scan_interval: Seconds = Field(
        default=DEFAULT_SCAN_INTERVAL,
        description="seconds between safety-net scans (inserts wake the scanner at once)")
    claim_batch: int = Field(default=DEFAULT_CLAIM_BATCH, ge=1, le=10_000,
                             description="most tasks claimed for one region at once")
    db_pool_size: int = Field(default=8, ge=2, le=100, description="database connections")
    # A statement that takes longer fails the request with 503 instead of hanging it.
    db_command_timeout: Seconds = Field(
        default=timedelta(seconds=5),
        description="seconds a statement may take before its request fails with 503")
    listen_probe_interval: Seconds = Field(
        default=timedelta(seconds=5),
        description="seconds between checks that the scanner's LISTEN connection delivers")
    breaker_failures: int = Field(default=3, ge=1,
                                  description="consecutive failures that open a breaker")
    breaker_reset: Seconds = Field(default=timedelta(seconds=2),
                                   description="seconds an open breaker waits to try again")
    retry_backoff_base: Seconds = Field(
        default=timedelta(seconds=1),
        description="seconds before the first retry of a failed attempt (doubles each time)")
    retry_backoff_max: Seconds = Field(default=timedelta(minutes=5),
                                       description="longest wait before a retry, seconds")
    # A batch of ten thousand tasks is ten thousand events at once: room for a few.
    retention: Seconds = Field(
        default=timedelta(days=7), ge=timedelta(0),
        description="seconds finished tasks (and their attempts) are kept; 0: forever")
    priority_aging: float = Field(
        default=0.0, ge=0, le=1e6, allow_inf_nan=False,
        description="priority points a due task gains per minute it waits past its run_at, "
                    "so that none starves (0: off); the same on every master")
    events_buffer: int = Field(
        default=50_000, ge=1, le=1_000_000,
        description="events a /v1/events subscriber may fall behind before it is dropped")
    events_window: int = Field(
        default=50_000, ge=1, le=1_000_000,
        description="recent events kept so a /v1/events client can resume (Last-Event-ID)")
    events_keepalive: Seconds = Field(
        default=timedelta(seconds=15),
        description="seconds between keep-alive comments on /v1/events")
    api_tokens: TokenHashes = Field(
        default_factory=list,
        description="an API token, or its hash as sha256:<hex>, that REST and the gRPC "
                    "client API accept (STRATA_API_TOKENS: comma-separated; a flag shows "
                    "in ps); tokens made with `strata token create` are accepted too")
    api_tokens_file: Path | None = Field(
        default=None,
        description="a file of API tokens, one token or sha256:<hex> hash a line (read "
                    "at start)")
    insecure_no_auth: bool = Field(
        default=False,
        description="serve on an address that is not loopback even when no API token "
                    "exists: anyone who reaches it may use the API")
    auth_failure_burst: int = Field(
        default=10, ge=1, le=100_000,
        description="failed token attempts an address may make in a burst before its "
                    "requests are refused (429)")
    auth_failure_rate: float = Field(
        default=1.0, gt=0, le=100_000, allow_inf_nan=False,
        description="failed token attempts per second an address may make past its burst")


class RegionalSettings(_Base):
    name: str = Field(default="local", description="the region's name")
    event_loop: Literal["uvloop", "asyncio"] = Field(
        default="uvloop", description="the process's event loop: uvloop, or asyncio's own")
    master: str = Field(default=f"127.0.0.1:{DEFAULT_GRPC_PORT}",
                        description="HOST:PORT of the master's gRPC server, or several, "
                                    "comma-separated (a region moves on to the next when "
                                    "its master cannot answer)")
    grpc_host: str = Field(default="127.0.0.1", description="address the gRPC server listens on")
    grpc_port: int = Field(default=50061, description="gRPC port (master and workers dial it)")
    http_host: str = Field(default="127.0.0.1",
                           description="address /healthz and /metrics listen on")
    http_port: int = Field(default=0, ge=0, le=65535,
                           description="/healthz and /metrics port (0: any free one)")
    advertise: str | None = Field(
        default=None, description="HOST:PORT the master should dial (default: where it listens)")
    worker_dead_after: Seconds = Field(
        default=DEFAULT_WORKER_DEAD_AFTER,
        description="seconds of silence after which a worker is evicted")
    # How many delegated tasks the region may hold beyond what its workers run, as a
    # multiple of its capacity: enough to keep workers busy between two batches.
    queue_factor: float = Field(
        default=1.0, ge=0, le=16,
        description="tasks held beyond what workers run, as a multiple of their capacity")
    # And more while tasks are short: as many as the workers finish in this long, at the
    # pace of the last half second (up to 16 times their capacity). Long tasks finish
    # slowly, so a region never hoards them; a flood of short ones is held deep enough
    # that workers do not idle while the master turns around.
    queue_horizon: Seconds = Field(
        default=DEFAULT_QUEUE_HORIZON,
        description="seconds of work, at the workers' recent pace, held beyond what they "
                    "run when that is more than queue_factor gives (0: off)")
    report_batch: int = Field(default=1000, ge=1, le=10_000,
                              description="most events in one report to the master")
    breaker_failures: int = Field(default=3, ge=1,
                                  description="consecutive failures that open a breaker")
    breaker_reset: Seconds = Field(default=timedelta(seconds=2),
                                   description="seconds an open breaker waits to try again")

    @field_validator("queue_horizon")
    @classmethod
    def _not_negative(cls, value: timedelta) -> timedelta:
        if value < timedelta(0):
            raise ValueError("must be 0 or more seconds")
        return value

    @property
    def advertised_address(self) -> str:
        return self.advertise or f"{self.grpc_host}:{self.grpc_port}"


class WorkerSettings(_Base):
    region: str = Field(default="127.0.0.1:50061",
                        description="HOST:PORT of the region's gRPC server")
    concurrency: int = Field(default=DEFAULT_CONCURRENCY, ge=1, le=10_000,
                             description="tasks run at once")
    http_host: str = Field(default="127.0.0.1",
                           description="address the health endpoint listens on")
    http_port: int = Field(default=0, description="health endpoint port (0: any free one)")
    id: str | None = Field(default=None, description="worker id (default: host-pid-random)")
    # Python handlers may come only from these modules (or their submodules).
    python_modules: list[str] = Field(
        default_factory=list, description="a package python tasks may run handlers from")
    shutdown_grace: Seconds = Field(
        default=timedelta(seconds=30),
        description="seconds a stopping worker lets running tasks finish")
    output_limit: int = Field(default=64 * 1024, ge=1,
                              description="bytes of each output stream kept (the tail)")
    tls_server_name: str | None = Field(
        default=None, description="with TLS: the name the region's certificate must carry "
                                  "(default: the host of --region)")
    run_as: str | None = Field(
        default=None, min_length=1,
        description="user shell tasks run as (the worker must run as root to switch); "
                    "http and python tasks run in the worker process, as its own user")


class UpSettings(_Base):
    """What ``strata up`` needs beyond the topology file."""

    database_url: str | None = Field(
        default=None, validation_alias=_DATABASE_URL,
        description="PostgreSQL URL (also DATABASE_URL); without it, an embedded one")
    data_dir: Path = Field(default=Path("~/.local/share/strata"),
                           description="where the embedded PostgreSQL keeps its data")
    pg_port: int = Field(default=54329, description="the embedded PostgreSQL's port")

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()
