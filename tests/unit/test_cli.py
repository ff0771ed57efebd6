"""The strata command's parser: every setting is a flag with help, every option has
help, and a bad flag or value gets the subcommand's own usage."""

from __future__ import annotations

import argparse
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from strata.cli import _build
from strata.common.settings import MasterSettings, RegionalSettings, UpSettings, WorkerSettings
from strata.flags import flag_name, settings_from

PROCESSES = {"master": MasterSettings, "regional": RegionalSettings,
             "worker": WorkerSettings, "migrate": MasterSettings, "up": UpSettings}


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]


@pytest.mark.parametrize("command", sorted(PROCESSES))
def test_every_setting_of_a_process_is_a_flag_of_its_subcommand(command: str):
    _, subs = _build()
    flags = {s for a in _options(subs[command]) for s in a.option_strings}
    settings = PROCESSES[command]
    for name, field in settings.model_fields.items():
        assert flag_name(name, field) in flags, f"strata {command} lacks a flag for {name}"
        assert field.description, f"{settings.__name__}.{name} has no description"


def test_every_option_of_every_command_has_help():
    _, subs = _build()
    missing = [f"{name} {a.dest}" for name, sub in subs.items() for a in _options(sub)
               if not a.help]
    assert missing == []


@pytest.mark.parametrize("command", sorted(PROCESSES))
def test_a_setting_flag_says_its_default_once_and_a_duration_takes_seconds(command: str):
    _, subs = _build()
    for action in _options(subs[command]):
        if action.dest not in PROCESSES[command].model_fields:
            continue
        assert action.help is not None and action.help.count("(default:") == 1, action.help
        field = PROCESSES[command].model_fields[action.dest]
        assert (action.metavar == "SECONDS") == (field.annotation is timedelta), action.dest


def test_flags_given_override_and_the_rest_stay_defaults(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("STRATA_CLAIM_BATCH", raising=False)
    monkeypatch.delenv("STRATA_SCAN_INTERVAL", raising=False)
    parser, subs = _build()
    args = parser.parse_args(["master", "--region-dead-after", "7.5", "--claim-batch", "20",
                              "--database-url", "postgresql://x/y"])
    settings = settings_from(subs["master"], args, MasterSettings)
    assert settings.region_dead_after == timedelta(seconds=7.5)
    assert settings.claim_batch == 20
    assert settings.database_url == "postgresql://x/y"
    assert settings.scan_interval == MasterSettings.model_fields["scan_interval"].default


def test_a_flag_wins_over_the_environment_and_only_flags_given_do(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("STRATA_CONCURRENCY=3\nSTRATA_HTTP_PORT=9101\n")
    monkeypatch.setenv("STRATA_CONCURRENCY", "5")
    monkeypatch.setenv("STRATA_SHUTDOWN_GRACE", "12")
    monkeypatch.delenv("STRATA_HTTP_PORT", raising=False)
    parser, subs = _build()
    args = parser.parse_args(["worker", "--concurrency", "7"])
    settings = settings_from(subs["worker"], args, WorkerSettings)
    assert settings.concurrency == 7
    assert settings.shutdown_grace == timedelta(seconds=12)
    assert settings.http_port == 9101


def test_a_list_setting_is_a_repeatable_flag():
    parser, subs = _build()
    args = parser.parse_args(["worker", "--python-module", "jobs", "--python-module", "etl"])
    assert settings_from(subs["worker"], args, WorkerSettings).python_modules == ["jobs", "etl"]


@pytest.mark.parametrize("argv, says", [
    (["worker", "--concurrency", "lots"], "--concurrency 'lots'"),
    (["worker", "--concurrency", "0"], "--concurrency"),
    (["regional", "--no-such-flag", "1"], "unrecognized arguments: --no-such-flag"),
    (["master", "--region-dead-after", "soon"], "--region-dead-after"),
    (["list", "--limit", "0"], "argument --limit: must be 1 or more, not 0"),
])
def test_a_bad_flag_or_value_prints_the_subcommands_usage(argv: list[str], says: str):
    result = subprocess.run([sys.executable, "-m", "strata", *argv], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith(f"usage: strata {argv[0]} "), result.stderr
    assert says in result.stderr, result.stderr
