"""The one place that knows how a strata process is launched: its command lines are
ones the strata command accepts, and every child gets the environment it needs."""

from __future__ import annotations

import os
import sys

import pytest

from strata.cli import _build
from strata.common.settings import MasterSettings, RegionalSettings, WorkerSettings
from strata.flags import settings_from
from strata.local import launcher

SETTINGS = {"master": MasterSettings, "regional": RegionalSettings, "worker": WorkerSettings}

PREFIX = [sys.executable, "-m", "strata"]


def _parsed(argv: list[str]) -> dict[str, object]:
    """What the strata command reads from ``argv``: its arguments and, for a process,
    the settings it runs with."""
    assert argv[:3] == PREFIX, argv
    parser, subs = _build()
    args = parser.parse_args(argv[3:])
    parsed = vars(args)
    if args.command in SETTINGS:
        settings = settings_from(subs[args.command], args, SETTINGS[args.command])
        parsed |= {name: getattr(settings, name) for name in type(settings).model_fields}
    return parsed


def _reads(argv: list[str], **expected: object) -> None:
    parsed = _parsed(argv)
    assert {k: parsed[k] for k in expected} == expected, parsed


def test_each_command_line_is_what_the_cli_reads() -> None:
    _reads(launcher.master_argv(http_port=8081, grpc_port=50052),
           command="master", http_port=8081, grpc_port=50052)
    _reads(launcher.regional_argv(name="eu-west", master="127.0.0.1:50052", grpc_port=50062),
           command="regional", name="eu-west", master="127.0.0.1:50052", grpc_port=50062,
           advertise=None)
    _reads(launcher.regional_argv(name="eu-west", master="m:1", grpc_port=2,
                                  advertise="proxy:3"), advertise="proxy:3")
    _reads(launcher.worker_argv(region="127.0.0.1:50062", worker_id="eu-west-w1",
                                concurrency=4),
           command="worker", region="127.0.0.1:50062", id="eu-west-w1", concurrency=4,
           http_port=0)
    _reads(launcher.up_argv("lab.toml"), command="up", topology="lab.toml")
    _reads(launcher.up_argv(), command="up", topology=None)


def test_a_child_inherits_our_environment_layered_and_unbuffered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STRATA_TEST_INHERITED", "ours")
    monkeypatch.setenv("DATABASE_URL", "postgresql://elsewhere/db")
    monkeypatch.setenv("PYTHONUNBUFFERED", "")
    env = launcher.child_env({"STRATA_LOG_LEVEL": "DEBUG", "STRATA_X": "first"},
                             {"STRATA_X": "second"}, without=("DATABASE_URL",))
    assert env["STRATA_TEST_INHERITED"] == "ours"
    assert "DATABASE_URL" not in env
    assert env["STRATA_LOG_LEVEL"] == "DEBUG"
    assert env["STRATA_X"] == "second"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert os.environ["PYTHONUNBUFFERED"] == ""  # ours is left as it was


def test_a_given_base_replaces_our_environment() -> None:
    env = launcher.child_env({"B": "2"}, base={"A": "1"})
    assert env == {"A": "1", "B": "2", "PYTHONUNBUFFERED": "1"}
