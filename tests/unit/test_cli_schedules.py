"""``strata schedule ...``: what create sends, what list and fires print, and a bad
flag or value gets the subcommand's own usage (exit 2)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any

import pytest

from strata import commands
from strata.cli import SCHEDULE_COMMANDS, _build

BASE = ["schedule", "create", "nightly"]


def parsed(*argv: str) -> argparse.Namespace:
    parser, _ = _build()
    return parser.parse_args(list(argv))


def test_create_of_a_shell_task_with_every_flag():
    args = parsed(*BASE, "--cron", "0 3 * * *", "--timezone", "Europe/Berlin",
                  "--command", "backup.sh", "--region", "r1", "--priority", "5",
                  "--max-attempts", "3", "--timeout", "30", "--overlap", "skip",
                  "--catchup", "all", "--start-at", "2030-01-01T00:00:00Z",
                  "--end-at", "2031-01-01T00:00:00Z", "--paused")
    assert commands.schedule_body(args) == {
        "name": "nightly", "cron": "0 3 * * *", "timezone": "Europe/Berlin",
        "overlap": "skip", "catchup": "all", "start_at": "2030-01-01T00:00:00Z",
        "end_at": "2031-01-01T00:00:00Z", "paused": True,
        "task": {"kind": "shell", "command": "backup.sh", "region": "r1", "priority": 5,
                 "max_attempts": 3, "timeout_s": 30.0},
    }


def test_create_sends_only_what_is_given():
    args = parsed(*BASE, "--every", "1", "--command", "true")
    assert commands.schedule_body(args) == {
        "name": "nightly", "every_s": 1.0, "task": {"kind": "shell", "command": "true"}}


def test_task_json_is_any_task_and_the_task_flags_go_on_it():
    task = {"kind": "python", "handler": "strata.examples.report:build",
            "args": {"day": "2030-01-01"}, "priority": 1}
    args = parsed(*BASE, "--every", "60", "--task-json", json.dumps(task), "--priority", "9")
    assert commands.schedule_body(args)["task"] == {**task, "priority": 9}


@pytest.mark.parametrize("argv, says", [
    ([*BASE, "--command", "true"], "one of the arguments --cron --every is required"),
    ([*BASE, "--cron", "* * * * *", "--every", "5", "--command", "true"],
     "argument --every: not allowed with argument --cron"),
    ([*BASE, "--every", "5"], "one of the arguments --command --task-json is required"),
    ([*BASE, "--every", "5", "--command", "true", "--task-json", "{}"],
     "argument --task-json: not allowed with argument --command"),
    ([*BASE, "--every", "soon", "--command", "true"], "argument --every: not a number"),
    ([*BASE, "--every", "0", "--command", "true"], "argument --every: must be more than 0"),
    ([*BASE, "--every", "5", "--task-json", "{nope"], "argument --task-json: not JSON"),
    ([*BASE, "--every", "5", "--task-json", "[]"], "argument --task-json: must be a JSON "
                                                    "object"),
    ([*BASE, "--every", "5", "--command", "true", "--overlap", "never"],
     "argument --overlap: invalid choice: 'never'"),
    (["schedule", "fires", "nightly", "--limit", "0"], "argument --limit: must be 1 or more"),
    (["schedule", "list", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["schedule", "pause"], "the following arguments are required: name"),
])
def test_a_bad_flag_or_value_prints_the_subcommands_usage(argv: list[str], says: str):
    result = subprocess.run([sys.executable, "-m", "strata", *argv], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith(f"usage: strata {argv[0]} {argv[1]} "), result.stderr
    assert says in result.stderr, result.stderr


def test_no_subcommand_is_a_usage_error():
    result = subprocess.run([sys.executable, "-m", "strata", "schedule"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: strata schedule "), result.stderr


def test_an_unreachable_master_is_strata_message_and_exit_1():
    result = subprocess.run([sys.executable, "-m", "strata", "schedule", "list",
                             "--api", "http://127.0.0.1:1"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith("strata: cannot reach http://127.0.0.1:1"), result.stderr


def test_every_subcommand_has_a_command():
    _, subs = _build()
    assert {k.removeprefix("schedule ") for k in subs if k.startswith("schedule ")} \
        == set(SCHEDULE_COMMANDS)


class FakeClient:
    """Answers as the API does, and records what it was asked."""

    def __init__(self, schedules: list[dict[str, Any]] | None = None,
                 pages: list[dict[str, Any]] | None = None) -> None:
        self._schedules = list(schedules or [])
        self._pages = list(pages or [])
        self.asked: list[tuple[str, Any]] = []

    async def schedules(self) -> list[dict[str, Any]]:
        return self._schedules

    async def schedule_fires(self, name: str, *, limit: int | None = None,
                             before: str | None = None) -> dict[str, Any]:
        self.asked.append(("fires", (name, limit, before)))
        return self._pages.pop(0)

    async def change_schedule(self, name: str, **changes: Any) -> dict[str, Any]:
        self.asked.append(("change", (name, changes)))
        return {**self._schedules[0], **changes,
                "next_fire_at": None if changes.get("paused") else "2030-01-01T00:00:05.5Z"}


SCHEDULE = {"name": "tick", "cron": None, "every_s": 1.0, "timezone": "UTC", "paused": False,
            "overlap": "allow", "next_fire_at": "2030-01-01T00:00:01.25Z"}


async def test_list_prints_a_table(capsys: pytest.CaptureFixture[str]):
    nightly = {**SCHEDULE, "name": "nightly", "cron": "0 3 * * *", "every_s": None,
               "timezone": "Europe/Berlin", "paused": True, "overlap": "skip",
               "next_fire_at": None}
    client = FakeClient([SCHEDULE, nightly])
    assert await commands.list_schedules(client, parsed("schedule", "list")) == 0  # type: ignore[arg-type]
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "WHEN", "NEXT", "FIRE", "PAUSED", "OVERLAP"]
    assert lines[1].split() == ["tick", "every", "1s", "2030-01-01T00:00:01Z", "no", "allow"]
    assert lines[2].split() == ["nightly", "0", "3", "*", "*", "*", "(Europe/Berlin)", "-",
                                "yes", "skip"]


async def test_fires_pages_until_the_limit(capsys: pytest.CaptureFixture[str]):
    fire = {"fire_time": "2030-01-01T00:00:02Z", "outcome": "fired", "reason": None,
            "task_id": "t2", "task_state": "succeeded", "recorded_at": "2030-01-01T00:00:02Z"}
    skipped = {**fire, "fire_time": "2030-01-01T00:00:01.5Z", "outcome": "skipped",
               "reason": "the previous task is still running", "task_id": None,
               "task_state": None}
    client = FakeClient(pages=[{"fires": [fire], "next_before": fire["fire_time"]},
                               {"fires": [skipped], "next_before": None}])
    args = parsed("schedule", "fires", "tick", "--limit", "5")
    assert await commands.schedule_fires(client, args) == 0  # type: ignore[arg-type]
    assert client.asked == [("fires", ("tick", 5, None)),
                            ("fires", ("tick", 4, "2030-01-01T00:00:02Z"))]
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split("  ")[0] == "FIRE TIME" and "TASK STATE" in header
    assert rows[0].split() == ["2030-01-01T00:00:02Z", "fired", "t2", "succeeded", "-"]
    assert rows[1].split()[:4] == ["2030-01-01T00:00:01Z", "skipped", "-", "-"]
    assert rows[1].endswith("the previous task is still running")


async def test_pause_and_resume_patch_paused(capsys: pytest.CaptureFixture[str]):
    client = FakeClient([SCHEDULE])
    await commands.pause_schedule(client, parsed("schedule", "pause", "tick"))  # type: ignore[arg-type]
    await commands.resume_schedule(client, parsed("schedule", "resume", "tick"))  # type: ignore[arg-type]
    assert client.asked == [("change", ("tick", {"paused": True})),
                            ("change", ("tick", {"paused": False}))]
    assert capsys.readouterr().out.splitlines() == [
        "tick: paused", "tick: next fire 2030-01-01T00:00:05Z"]
