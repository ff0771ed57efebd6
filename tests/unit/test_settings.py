"""Settings come from init kwargs, STRATA_* variables and a .env file, in that order."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from strata.common.settings import (
    DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_REGION_DEAD_AFTER,
    DEFAULT_WORKER_DEAD_AFTER,
    MasterSettings,
    RegionalSettings,
    UpSettings,
    WorkerSettings,
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No STRATA_* or DATABASE_URL from the caller's shell, and no stray .env file."""
    for name in list(os.environ):
        if name.startswith("STRATA_") or name == "DATABASE_URL":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield


def test_defaults():
    master = MasterSettings()
    assert master.heartbeat_interval == DEFAULT_HEARTBEAT_INTERVAL
    assert master.region_dead_after == DEFAULT_REGION_DEAD_AFTER
    assert master.database_url is None
    assert RegionalSettings().worker_dead_after == DEFAULT_WORKER_DEAD_AFTER


def test_heartbeat_interval_from_the_environment_in_seconds(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("STRATA_HEARTBEAT_INTERVAL", "0.2")
    for settings in (MasterSettings(), RegionalSettings(), WorkerSettings()):
        assert settings.heartbeat_interval == timedelta(seconds=0.2)


def test_worker_dead_after(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("STRATA_WORKER_DEAD_AFTER", "1.5")
    assert RegionalSettings().worker_dead_after == timedelta(seconds=1.5)


def test_region_dead_after(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("STRATA_REGION_DEAD_AFTER", "12")
    assert MasterSettings().region_dead_after == timedelta(seconds=12)


def test_queue_horizon(monkeypatch: pytest.MonkeyPatch):
    assert RegionalSettings().queue_horizon == timedelta(milliseconds=250)
    monkeypatch.setenv("STRATA_QUEUE_HORIZON", "0")
    assert RegionalSettings().queue_horizon == timedelta(0)
    monkeypatch.setenv("STRATA_QUEUE_HORIZON", "-1")
    with pytest.raises(ValidationError, match="queue_horizon"):
        RegionalSettings()


def test_a_bad_duration_is_rejected(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("STRATA_HEARTBEAT_INTERVAL", "soon")
    with pytest.raises(ValidationError, match="heartbeat_interval"):
        MasterSettings()


def test_database_url_is_honoured(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://plain/db")
    assert MasterSettings().database_url == "postgresql://plain/db"
    assert UpSettings().database_url == "postgresql://plain/db"


def test_strata_database_url_is_honoured(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("STRATA_DATABASE_URL", "postgresql://prefixed/db")
    assert MasterSettings().database_url == "postgresql://prefixed/db"
    assert UpSettings().database_url == "postgresql://prefixed/db"


def test_strata_database_url_wins_over_database_url(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://plain/db")
    monkeypatch.setenv("STRATA_DATABASE_URL", "postgresql://prefixed/db")
    assert MasterSettings().database_url == "postgresql://prefixed/db"


def test_init_kwargs_override_the_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("STRATA_HTTP_PORT", "9000")
    monkeypatch.setenv("STRATA_HEARTBEAT_INTERVAL", "5")
    monkeypatch.setenv("DATABASE_URL", "postgresql://env/db")
    settings = MasterSettings(
        http_port=9100, heartbeat_interval=timedelta(seconds=2),
        database_url="postgresql://flag/db",
    )
    assert settings.http_port == 9100
    assert settings.heartbeat_interval == timedelta(seconds=2)
    assert settings.database_url == "postgresql://flag/db"


def test_init_kwargs_take_seconds_too():
    assert RegionalSettings(worker_dead_after=0.25).worker_dead_after == timedelta(seconds=0.25)


def test_dotenv_file_is_read(tmp_path: Path):
    (tmp_path / ".env").write_text(
        "STRATA_HEARTBEAT_INTERVAL=0.3\n"
        "STRATA_REGION_DEAD_AFTER=7\n"
        "STRATA_NAME=eu-west\n"
        "DATABASE_URL=postgresql://dotenv/db\n"
    )
    master = MasterSettings()
    assert master.heartbeat_interval == timedelta(seconds=0.3)
    assert master.region_dead_after == timedelta(seconds=7)
    assert master.database_url == "postgresql://dotenv/db"
    assert RegionalSettings().name == "eu-west"


def test_environment_wins_over_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / ".env").write_text("STRATA_HTTP_PORT=9000\n")
    monkeypatch.setenv("STRATA_HTTP_PORT", "9001")
    assert MasterSettings().http_port == 9001


def test_advertised_address():
    assert RegionalSettings(grpc_port=6000).advertised_address == "127.0.0.1:6000"
    assert RegionalSettings(advertise="r1:7000").advertised_address == "r1:7000"


def test_up_settings_expand_the_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("STRATA_DATA_DIR", "~/pg")
    assert UpSettings().data_dir == tmp_path / "pg"


def test_the_master_and_regions_run_on_uvloop_and_workers_on_asyncio() -> None:
    import uvloop

    from strata.cli import _loop_factory
    from strata.common.settings import MasterSettings, RegionalSettings, WorkerSettings

    assert MasterSettings().event_loop == RegionalSettings().event_loop == "uvloop"
    assert not hasattr(WorkerSettings(), "event_loop")
    assert MasterSettings(event_loop="asyncio").event_loop == "asyncio"
    factory = _loop_factory("uvloop")
    assert factory is not None
    loop = factory()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()
    assert _loop_factory("asyncio") is None  # asyncio.Runner's own loop
