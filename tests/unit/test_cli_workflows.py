"""``strata reprioritize``, ``strata concurrency ...`` and the workflow flags of ``strata
submit``, run as the command against a stand-in for the master's REST API: the request
each one sends (method, path, body), what it prints, and an answer the API refuses as
``strata: <message>`` with exit 1 and no traceback."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest

from strata.cli import CONCURRENCY_COMMANDS, _build, main
from tests.unit.test_client import FakeMaster


@pytest.fixture
async def master() -> AsyncIterator[FakeMaster]:
    async with FakeMaster() as fake:
        yield fake


Run = tuple[int, str, str]


async def strata(capsys: pytest.CaptureFixture[str], master: FakeMaster, *argv: str) -> Run:
    """``strata ARGV --api <the fake>`` in this process: its exit code, stdout, stderr.
    In a thread, as the command runs its own event loop."""
    with pytest.raises(SystemExit) as exited:
        await asyncio.to_thread(main, [*argv, "--api", master.url])
    out, err = capsys.readouterr()
    code = exited.value.code
    assert isinstance(code, int), code
    return code, out, err


# ---- strata reprioritize ------------------------------------------------------------------

@pytest.mark.parametrize("given, priority", [("7", 7), ("-3", -3), ("0", 0)])
async def test_reprioritize_patches_and_prints_the_new_priority_and_state(
        capsys: pytest.CaptureFixture[str], master: FakeMaster, given: str, priority: int):
    assert await strata(capsys, master, "reprioritize", "t1", given) == (
        0, f"t1: priority {priority}, pending\n", "")
    assert master.asked == [("PATCH", "/v1/tasks/t1", {"priority": priority})]


async def test_reprioritizing_a_started_task_is_the_apis_409_message_and_exit_1(
        capsys: pytest.CaptureFixture[str], master: FakeMaster):
    code, out, err = await strata(capsys, master, "reprioritize", "t2", "5")
    assert (code, out) == (1, "")
    assert err == ("strata: task t2 is running: only a task that has not started can be "
                   "reprioritized\n")
    assert master.asked == [("PATCH", "/v1/tasks/t2", {"priority": 5})]
    assert master.tasks["t2"]["priority"] == 0


async def test_the_409_as_a_user_sees_it_no_traceback(master: FakeMaster):
    result = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "strata", "reprioritize", "t2", "5",
                         "--api", master.url], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    assert result.stderr == ("strata: task t2 is running: only a task that has not started "
                             "can be reprioritized\n")


async def test_reprioritizing_an_unknown_task_is_not_found_and_exit_1(
        capsys: pytest.CaptureFixture[str], master: FakeMaster):
    assert await strata(capsys, master, "reprioritize", "nope", "1") == (
        1, "", "strata: no task nope\n")


@pytest.mark.parametrize("argv, says", [
    (["reprioritize", "t1", "high"], "argument N: invalid int value: 'high'"),
    (["reprioritize", "t1", "1.5"], "argument N: invalid int value: '1.5'"),
    (["reprioritize", "t1"], "the following arguments are required: N"),
    (["concurrency", "set", "etl", "0"], "argument N: must be 1 or more, not 0"),
    (["concurrency", "set", "etl", "-1"], "argument N: must be 1 or more, not -1"),
    (["concurrency", "set", "etl"], "the following arguments are required: N"),
    (["concurrency", "show"], "the following arguments are required: key"),
    (["concurrency", "list", "etl"], "unrecognized arguments: etl"),
    (["submit", "--command", "true", "--on-upstream-failure", "skip"],
     "argument --on-upstream-failure: invalid choice: 'skip'"),
])
async def test_a_bad_value_is_the_subcommands_usage_and_nothing_is_sent(
        capsys: pytest.CaptureFixture[str], master: FakeMaster, argv: list[str], says: str):
    code, out, err = await strata(capsys, master, *argv)
    assert (code, out) == (2, "")
    usage = " ".join(argv[:2] if argv[0] == "concurrency" else argv[:1])
    assert err.startswith(f"usage: strata {usage} "), err
    assert says in err, err
    assert master.asked == []


# ---- strata concurrency ... ---------------------------------------------------------------

async def test_concurrency_set_puts_the_limit_and_prints_its_line(
        capsys: pytest.CaptureFixture[str], master: FakeMaster):
    assert await strata(capsys, master, "concurrency", "set", "etl", "2") == (
        0, "etl: limit 2, 1 active, 5 pending\n", "")
    assert master.asked == [("PUT", "/v1/concurrency/etl", {"limit": 2})]
    assert master.limits == {"etl": 2}


async def test_concurrency_list_prints_a_table_of_the_keys_with_a_limit(
        capsys: pytest.CaptureFixture[str], master: FakeMaster):
    master.limits.update({"etl": 2, "team a/backups": 10})
    code, out, err = await strata(capsys, master, "concurrency", "list")
    assert (code, err) == (0, "")
    assert out.splitlines() == ["KEY             LIMIT  ACTIVE  PENDING",
                                "etl             2      1       5",
                                "team a/backups  10     0       0"]
    assert master.asked == [("GET", "/v1/concurrency", None)]


async def test_concurrency_list_of_none_is_the_header_alone(
        capsys: pytest.CaptureFixture[str], master: FakeMaster):
    assert await strata(capsys, master, "concurrency", "list") == (
        0, "KEY  LIMIT  ACTIVE  PENDING\n", "")


@pytest.mark.parametrize("limits, limit", [({"etl": 4}, 4), ({}, None)])
async def test_concurrency_show_prints_the_key_as_json(
        capsys: pytest.CaptureFixture[str], master: FakeMaster, limits: dict[str, int],
        limit: int | None):
    master.limits.update(limits)
    code, out, err = await strata(capsys, master, "concurrency", "show", "etl")
    assert (code, err) == (0, "")
    assert json.loads(out) == {"key": "etl", "limit": limit, "active": 1, "pending": 5}
    assert master.asked == [("GET", "/v1/concurrency/etl", None)]


async def test_concurrency_clear_deletes_and_a_key_without_a_limit_is_exit_1(
        capsys: pytest.CaptureFixture[str], master: FakeMaster):
    master.limits["etl"] = 2
    assert await strata(capsys, master, "concurrency", "clear", "etl") == (
        0, "etl: no limit\n", "")
    assert master.limits == {}
    assert await strata(capsys, master, "concurrency", "clear", "etl") == (
        1, "", "strata: no limit on etl\n")
    assert master.asked == [("DELETE", "/v1/concurrency/etl", None)] * 2


async def test_a_key_with_a_slash_and_a_space_is_one_path_segment(
        capsys: pytest.CaptureFixture[str], master: FakeMaster):
    assert await strata(capsys, master, "concurrency", "set", "team a/etl", "3") == (
        0, "team a/etl: limit 3, 0 active, 0 pending\n", "")
    assert master.limits == {"team a/etl": 3}
    assert master.asked == [("PUT", "/v1/concurrency/team%20a%2Fetl", {"limit": 3})]


async def test_a_key_that_cannot_be_in_a_path_is_refused_unsent(
        capsys: pytest.CaptureFixture[str], master: FakeMaster):
    assert await strata(capsys, master, "concurrency", "show", "..") == (
        1, "", "strata: cannot be named in a URL path: '..'\n")
    assert master.asked == []


def test_every_concurrency_subcommand_has_a_command():
    _, subs = _build()
    assert {k.removeprefix("concurrency ") for k in subs if k.startswith("concurrency ")} \
        == set(CONCURRENCY_COMMANDS) == {"set", "list", "show", "clear"}


# ---- strata submit's workflow flags -------------------------------------------------------

async def test_submit_sends_the_workflow_fields_given(
        capsys: pytest.CaptureFixture[str], master: FakeMaster):
    assert await strata(capsys, master, "submit", "--command", "make report",
                        "--depends-on", "t1", "--depends-on", "t2",
                        "--on-upstream-failure", "run", "--concurrency-key", "etl") == (
        0, "t9\n", "")
    assert master.asked == [("POST", "/v1/tasks", {
        "kind": "shell", "command": "make report", "depends_on": ["t1", "t2"],
        "on_upstream_failure": "run", "concurrency_key": "etl"})]


async def test_submit_sends_no_workflow_field_not_given(
        capsys: pytest.CaptureFixture[str], master: FakeMaster):
    assert await strata(capsys, master, "submit", "--command", "true",
                        "--depends-on", "t1") == (0, "t9\n", "")
    assert await strata(capsys, master, "submit", "--command", "true") == (0, "t9\n", "")
    assert [body for _, _, body in master.asked] == [
        {"kind": "shell", "command": "true", "depends_on": ["t1"]},
        {"kind": "shell", "command": "true"}]
