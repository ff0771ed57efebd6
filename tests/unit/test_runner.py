"""The runner against real subprocesses, a real HTTP server and real Python handlers."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pwd
import shutil
import socket
import stat
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from strata.common.errors import ConfigError
from strata.worker.runner import Outcome, Runner, TaskUser, _Deadline, resolve_run_as
from tests.task_users import made_user, require_root, unprivileged_user
from tests.unit import handlers_for_runner

HANDLERS = handlers_for_runner.__name__
LIMIT = 1000


@pytest.fixture
async def runner() -> AsyncIterator[Runner]:
    runner = Runner(python_modules=[HANDLERS], output_limit=LIMIT)
    yield runner
    await runner.close()


@pytest.fixture
async def server() -> AsyncIterator[str]:
    release = asyncio.Event()

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    async def echo(request: web.Request) -> web.Response:
        body = await request.text()
        return web.Response(text=f"{request.method} {request.headers['X-Strata']} {body}")

    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=500, text="broken")

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=b"a" * 300_000 + b"END")

    async def hang(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="late")

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_post("/echo", echo)
    app.router.add_get("/broken", broken)
    app.router.add_get("/big", big)
    app.router.add_get("/hang", hang)
    app_runner = web.AppRunner(app)
    await app_runner.setup()
    await web.TCPSite(app_runner, "127.0.0.1", 0).start()
    host, port = app_runner.addresses[0][:2]
    yield f"http://{host}:{port}"
    release.set()  # so that cleanup does not wait for the hanging handler
    await app_runner.cleanup()


def shell(command: str) -> str:
    return json.dumps({"command": command})


def python(handler: str, args: list[Any] | dict[str, Any] | None = None) -> str:
    return json.dumps({"handler": handler, "args": [] if args is None else args})


async def wait_until_exited(*pids: int) -> None:
    """Waits on a pidfd, which turns readable when the process exits: unlike
    ``os.kill(pid, 0)`` it does not depend on init reaping the zombie, and some
    containers' PID 1 never does."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(5):
        for pid in pids:
            try:
                pidfd = os.pidfd_open(pid)
            except ProcessLookupError:
                continue  # exited and reaped already
            exited = loop.create_future()
            loop.add_reader(pidfd, exited.set_result, None)
            try:
                await exited
            finally:
                loop.remove_reader(pidfd)
                os.close(pidfd)


async def read_line_from_fifo(path: Path) -> str:
    # O_RDWR keeps a writer on the FIFO, so reading waits for the shell rather than
    # seeing end-of-file before the shell has opened it.
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
    )
    try:
        async with asyncio.timeout(10):
            return (await reader.readline()).decode().strip()
    finally:
        transport.close()


# shell


async def test_shell_success_keeps_stdout_and_stderr_apart(runner: Runner) -> None:
    outcome = await runner.run("shell", shell("echo out; echo err >&2; echo more"), 10)
    assert outcome == Outcome(ok=True, exit_code=0, output="out\nmore\n", stderr="err\n",
                              error=None)


async def test_each_stream_keeps_its_own_tail_and_says_it_was_cut(runner: Runner) -> None:
    command = "head -c 5000 /dev/zero | tr '\\0' e >&2; printf short"
    outcome = await runner.run("shell", shell(command), 10)
    assert (outcome.output, outcome.output_truncated) == ("short", False)
    assert (outcome.stderr, outcome.stderr_truncated) == ("e" * LIMIT, True)


async def test_shell_nonzero_exit(runner: Runner) -> None:
    outcome = await runner.run("shell", shell("echo partial; exit 3"), 10)
    assert outcome == Outcome(ok=False, exit_code=3, output="partial\n", error="exited with code 3")


async def test_shell_signal_death_keeps_negative_code(runner: Runner) -> None:
    outcome = await runner.run("shell", shell("kill -TERM $$"), 10)
    assert (outcome.ok, outcome.exit_code, outcome.error) == (False, -15, "killed by signal 15")


async def test_shell_output_keeps_the_tail(runner: Runner) -> None:
    command = "head -c 300000 /dev/zero | tr '\\0' a; printf END"
    outcome = await runner.run("shell", shell(command), 10)
    assert outcome.ok
    assert outcome.output == "a" * (LIMIT - 3) + "END"
    assert outcome.output_truncated


async def test_shell_output_tail_stays_within_limit_in_utf8_bytes() -> None:
    runner = Runner(python_modules=[], output_limit=5)
    # Six bytes: the cut lands inside the first "é", which is dropped, not replaced.
    outcome = await runner.run("shell", shell("printf 'ééé'"), 10)
    assert outcome.output == "éé"


async def test_shell_timeout_kills_the_process_group(
    runner: Runner, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pid_file = tmp_path / "child.pid"
    command = f"sleep 30 & echo $! > {pid_file}; sleep 30"
    with caplog.at_level(logging.INFO, logger="strata.worker.runner"):
        outcome = await runner.run("shell", shell(command), 0.5)
    assert outcome == Outcome(ok=False, exit_code=None, output="", error="timed out after 0.5s",
                              killed_processes=3, timed_out=True)
    assert [getattr(r, "action", None) for r in caplog.records] == [
        "process_group_killed", "task_timed_out"]
    await wait_until_exited(int(pid_file.read_text()))


async def test_shell_child_holding_stdout_does_not_outlast_the_timeout(runner: Runner) -> None:
    started = time.monotonic()
    outcome = await runner.run("shell", shell("sleep 30 & echo started; sleep 30"), 0.5)
    assert time.monotonic() - started < 5
    assert (outcome.ok, outcome.error) == (False, "timed out after 0.5s")
    assert outcome.output == "started\n"  # what came before the timeout is kept
    assert outcome.killed_processes == 3  # the shell and both sleeps


async def test_shell_timeout_of_a_noisy_command_returns_bounded_output(runner: Runner) -> None:
    outcome = await runner.run("shell", shell("yes"), 0.5)
    assert outcome.error == "timed out after 0.5s"
    assert 0 < len(outcome.output) <= LIMIT
    assert set(outcome.output) <= {"y", "\n"}


async def test_cancelling_run_kills_the_process_group_and_reraises(
    runner: Runner, tmp_path: Path
) -> None:
    fifo = tmp_path / "pids"
    os.mkfifo(fifo)
    command = f"sleep 30 & echo $$ $! > {fifo}; wait"
    task = asyncio.create_task(runner.run("shell", shell(command), 60))
    shell_pid, child_pid = map(int, (await read_line_from_fifo(fifo)).split())
    os.kill(child_pid, 0)  # running: raises ProcessLookupError otherwise
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_until_exited(shell_pid, child_pid)


# http


async def test_http_2xx_is_ok(runner: Runner, server: str) -> None:
    outcome = await runner.run("http", json.dumps({"url": f"{server}/ok"}), 10)
    assert outcome == Outcome(ok=True, exit_code=200, output="hello", error=None)


async def test_http_sends_method_headers_and_body(runner: Runner, server: str) -> None:
    payload = {"method": "POST", "url": f"{server}/echo", "headers": {"X-Strata": "yes"},
               "body": "ping"}
    outcome = await runner.run("http", json.dumps(payload), 10)
    assert (outcome.ok, outcome.output) == (True, "POST yes ping")


async def test_http_500_is_not_ok(runner: Runner, server: str) -> None:
    outcome = await runner.run("http", json.dumps({"url": f"{server}/broken"}), 10)
    assert outcome == Outcome(
        ok=False, exit_code=500, output="broken", error="HTTP 500 Internal Server Error"
    )


async def test_http_body_keeps_the_tail(runner: Runner, server: str) -> None:
    outcome = await runner.run("http", json.dumps({"url": f"{server}/big"}), 10)
    assert outcome.output == "a" * (LIMIT - 3) + "END"


async def test_http_connection_refused(runner: Runner) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    outcome = await runner.run("http", json.dumps({"url": f"http://127.0.0.1:{port}/"}), 10)
    assert (outcome.ok, outcome.exit_code) == (False, None)
    assert outcome.error is not None
    assert outcome.error.startswith("request failed: ClientConnectorError")


async def test_http_timeout(runner: Runner, server: str) -> None:
    outcome = await runner.run("http", json.dumps({"url": f"{server}/hang"}), 0.3)
    assert outcome == Outcome(ok=False, exit_code=None, output="", error="timed out after 0.3s",
                              timed_out=True)


async def test_close_is_idempotent(runner: Runner, server: str) -> None:
    await runner.run("http", json.dumps({"url": f"{server}/ok"}), 10)
    await runner.close()
    await runner.close()


# python


async def test_python_sync_handler(runner: Runner) -> None:
    outcome = await runner.run("python", python(f"{HANDLERS}:add", [2, 3]), 10)
    assert outcome == Outcome(ok=True, exit_code=None, output="5", error=None)


async def test_python_async_handler_with_kwargs(runner: Runner) -> None:
    outcome = await runner.run("python", python(f"{HANDLERS}:greet", {"name": "strata"}), 10)
    assert json.loads(outcome.output) == {"greeting": "hello strata!"}


async def test_python_sync_handler_with_kwargs_and_non_json_result(runner: Runner) -> None:
    args = {"colour": "red", "size": 3}
    outcome = await runner.run("python", python(f"{HANDLERS}:describe", args), 10)
    assert json.loads(outcome.output) == {
        "colour": "red", "size": 3, "at": "2024-01-02 00:00:00+00:00"
    }


async def test_python_submodule_of_an_allowed_module_is_allowed() -> None:
    runner = Runner(python_modules=["os"])
    outcome = await runner.run("python", python("os.path:join", ["a", "b"]), 10)
    assert (outcome.ok, outcome.output) == (True, '"a/b"')


async def test_python_disallowed_module_is_not_imported(runner: Runner) -> None:
    assert "tabnanny" not in sys.modules
    outcome = await runner.run("python", python("tabnanny:check", ["."]), 10)
    assert outcome == Outcome(
        ok=False, exit_code=None, output="", error="module 'tabnanny' is not allowed"
    )
    assert "tabnanny" not in sys.modules


async def test_python_module_sharing_only_a_name_prefix_is_not_allowed(runner: Runner) -> None:
    outcome = await runner.run("python", python(f"{HANDLERS}_evil:add"), 10)
    assert outcome.error == f"module '{HANDLERS}_evil' is not allowed"


async def test_python_import_error() -> None:
    runner = Runner(python_modules=["strata_no_such_module"])
    outcome = await runner.run("python", python("strata_no_such_module:f"), 10)
    assert not outcome.ok
    assert outcome.error is not None
    assert outcome.error.startswith("cannot import strata_no_such_module: ModuleNotFoundError")


async def test_python_missing_function(runner: Runner) -> None:
    outcome = await runner.run("python", python(f"{HANDLERS}:nothing_here"), 10)
    assert outcome.error == f"{HANDLERS}:nothing_here is not a callable"


async def test_python_raising_handler(runner: Runner) -> None:
    outcome = await runner.run("python", python(f"{HANDLERS}:fail", ["boom"]), 10)
    assert (outcome.ok, outcome.error) == (False, "ValueError: boom")
    assert outcome.output == ""
    assert outcome.stderr.startswith("Traceback")
    assert outcome.stderr.endswith("ValueError: boom\n")


async def test_python_handler_raising_timeout_error_is_not_a_timeout(runner: Runner) -> None:
    outcome = await runner.run("python", python(f"{HANDLERS}:raise_timeout"), 10)
    assert outcome.error == "TimeoutError: upstream gave up"


async def test_python_timeout(runner: Runner) -> None:
    outcome = await runner.run("python", python(f"{HANDLERS}:hang"), 0.2)
    assert (outcome.ok, outcome.error) == (False, "timed out after 0.2s")


# parent outputs

PARENTS = {"t-1": "first\n", "t-2": None}


async def test_shell_task_sees_its_parents_outputs(runner: Runner) -> None:
    outcome = await runner.run("shell", shell('printf %s "$STRATA_PARENT_OUTPUTS"'), 10,
                               parent_outputs_json=json.dumps(PARENTS))
    assert outcome.ok
    assert json.loads(outcome.output) == PARENTS


async def test_shell_task_keeps_the_rest_of_the_environment_with_parents(
    runner: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STRATA_TEST_INHERITED", "kept")
    outcome = await runner.run("shell", shell('printf %s "$STRATA_TEST_INHERITED"'), 10,
                               parent_outputs_json=json.dumps(PARENTS))
    assert outcome.output == "kept"


async def test_shell_task_without_parents_has_no_parent_outputs_variable(
    runner: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STRATA_PARENT_OUTPUTS", raising=False)
    outcome = await runner.run("shell", shell('printf %s "${STRATA_PARENT_OUTPUTS-unset}"'), 10)
    assert outcome.output == "unset"


async def test_python_handler_with_a_parent_outputs_parameter_receives_them(
    runner: Runner
) -> None:
    outcome = await runner.run("python", python(f"{HANDLERS}:with_parents"), 10,
                               parent_outputs_json=json.dumps(PARENTS))
    assert json.loads(outcome.output) == {"parent_outputs": PARENTS}


async def test_python_handler_without_parents_is_not_given_parent_outputs(
    runner: Runner
) -> None:
    outcome = await runner.run("python", python(f"{HANDLERS}:with_parents"), 10)
    assert json.loads(outcome.output) == {"parent_outputs": None}


async def test_python_handler_with_kwargs_receives_parent_outputs_beside_its_args(
    runner: Runner
) -> None:
    outcome = await runner.run("python", python(f"{HANDLERS}:with_kwargs", {"x": 1}), 10,
                               parent_outputs_json=json.dumps(PARENTS))
    assert json.loads(outcome.output) == {"x": 1, "parent_outputs": PARENTS}


async def test_python_handler_that_cannot_take_parent_outputs_runs_as_before(
    runner: Runner
) -> None:
    outcome = await runner.run("python", python(f"{HANDLERS}:add", [2, 3]), 10,
                               parent_outputs_json=json.dumps(PARENTS))
    assert outcome == Outcome(ok=True, exit_code=None, output="5", error=None)


async def test_python_args_naming_parent_outputs_are_refused_when_there_are_parents(
    runner: Runner
) -> None:
    args = {"parent_outputs": {"forged": "x"}}
    outcome = await runner.run("python", python(f"{HANDLERS}:with_kwargs", args), 10,
                               parent_outputs_json=json.dumps(PARENTS))
    assert outcome == Outcome(
        ok=False, exit_code=None, output="",
        error="args may not name parent_outputs: it is the parents' outputs",
    )
    # Without parents the name is the task's own.
    outcome = await runner.run("python", python(f"{HANDLERS}:with_kwargs", args), 10)
    assert json.loads(outcome.output) == args


async def test_other_kinds_ignore_parent_outputs(runner: Runner) -> None:
    outcome = await runner.run("noop", "{}", 10, parent_outputs_json=json.dumps(PARENTS))
    assert outcome == Outcome(ok=True, exit_code=None, output="", error=None)


@pytest.mark.parametrize(
    ("parent_outputs_json", "reason"),
    [
        ("{not json", "Expecting property name enclosed in double quotes"),
        ('["t-1"]', 'not a JSON object: ["t-1"]'),
        ("null", "not a JSON object: null"),
        ('{"t-1": 7}', "the output of parent 't-1' is neither text nor null"),
    ],
)
async def test_malformed_parent_outputs_fail_the_task(
    runner: Runner, parent_outputs_json: str, reason: str
) -> None:
    outcome = await runner.run("shell", shell("echo ran"), 10,
                               parent_outputs_json=parent_outputs_json)
    assert (outcome.ok, outcome.output) == (False, "")
    assert outcome.error is not None
    assert outcome.error.startswith(f"invalid parent outputs: {reason}")


# noop, sleep, bad input


async def test_noop(runner: Runner) -> None:
    outcome = await runner.run("noop", "{}", 10)
    assert outcome == Outcome(ok=True, exit_code=None, output="", error=None)


async def test_sleep(runner: Runner) -> None:
    outcome = await runner.run("sleep", json.dumps({"seconds": 0.01}), 10)
    assert outcome.ok


async def test_sleep_timeout(runner: Runner) -> None:
    outcome = await runner.run("sleep", json.dumps({"seconds": 30}), 0.1)
    assert outcome.error == "timed out after 0.1s"


@pytest.mark.parametrize("outside", [False, True])
async def test_a_deadline_turns_only_its_own_cancel_into_a_timeout(outside: bool) -> None:
    """The deadline fires; with a cancel from outside as well, before the run sees
    either, the run is cancelled (the worker hands the task back), not timed out."""
    deadlines: list[_Deadline] = []

    async def run() -> None:
        with _Deadline(60) as deadline:
            deadlines.append(deadline)
            await asyncio.Event().wait()

    task = asyncio.create_task(run())
    await asyncio.sleep(0)  # running, under its deadline
    deadlines[0]._expire()  # the deadline's timer, now rather than in a minute
    if outside:
        task.cancel()
    with pytest.raises(asyncio.CancelledError if outside else TimeoutError):
        await task
    assert deadlines[0].expired


async def test_a_run_that_ends_in_time_leaves_nothing_to_cancel(runner: Runner) -> None:
    """A deadline that did not fire leaves no cancellation behind: the caller's next
    await is not interrupted, long after the deadline has passed."""
    outcome = await runner.run("sleep", json.dumps({"seconds": 0.01}), 0.05)
    assert outcome.ok
    await asyncio.sleep(0.1)
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_zero_timeout_means_no_timeout(runner: Runner) -> None:
    outcome = await runner.run("sleep", json.dumps({"seconds": 0.05}), 0)
    assert outcome.ok


@pytest.mark.parametrize(
    "payload_json",
    ["{not json", '["echo hi"]', '{"command": ""}', '{"command": "true", "extra": 1}', "null"],
)
async def test_bad_payload_is_an_outcome(runner: Runner, payload_json: str) -> None:
    outcome = await runner.run("shell", payload_json, 10)
    assert not outcome.ok
    assert outcome.error is not None
    assert outcome.error.startswith("invalid shell payload: ")


async def test_unknown_kind_is_an_outcome(runner: Runner) -> None:
    outcome = await runner.run("bogus", "{}", 10)
    assert outcome == Outcome(
        ok=False, exit_code=None, output="", error="unknown task kind 'bogus'"
    )


async def test_a_finished_shell_task_leaves_nothing_running(runner: Runner) -> None:
    began = time.monotonic()
    outcome = await runner.run("shell", shell("sleep 300 & echo $!; echo hi"), 60)
    assert time.monotonic() - began < 10, "the task waited for its background child"
    assert outcome.ok and outcome.killed_processes == 1
    child_pid, said = outcome.output.split()
    assert said == "hi"
    await wait_gone(int(child_pid))


async def test_a_task_that_leaves_nothing_running_killed_nothing(runner: Runner) -> None:
    outcome = await runner.run("shell", shell("true"), 10)
    assert outcome.ok and outcome.killed_processes == 0


def _running(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie waiting for its parent does not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rpartition(b")")[2].split()[0] != b"Z"
    except FileNotFoundError:
        return False


async def wait_gone(pid: int) -> None:
    for _ in range(500):
        if not _running(pid):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"process {pid} still runs")


# shell tasks as another user (the worker as root, --run-as)


@pytest.fixture(scope="module")
def other_user() -> Iterator[pwd.struct_passwd]:
    with unprivileged_user() as entry:
        yield entry


@pytest.fixture
async def task_user(other_user: pwd.struct_passwd) -> TaskUser:
    user = await resolve_run_as(other_user.pw_name)
    assert user is not None
    return user


@pytest.fixture
async def runner_as(task_user: TaskUser) -> AsyncIterator[Runner]:
    runner = Runner(python_modules=[HANDLERS], output_limit=LIMIT, run_as=task_user)
    yield runner
    await runner.close()


@pytest.fixture
def root_only_dir() -> Iterator[Path]:
    """A directory only root may enter, in one everyone may (``tmp_path`` is root's)."""
    path = Path(tempfile.mkdtemp(prefix="strata-root-only-"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o700 and path.stat().st_uid == 0
    yield path
    shutil.rmtree(path)


@pytest.fixture
def fifo_for(other_user: pwd.struct_passwd, root_only_dir: Path) -> Path:
    """A FIFO the user may write to, in a directory it may pass but not list."""
    root_only_dir.chmod(0o711)
    fifo = root_only_dir / "pids"
    os.mkfifo(fifo)
    os.chown(fifo, other_user.pw_uid, other_user.pw_gid)
    return fifo


async def test_a_shell_task_runs_as_the_run_as_user_with_its_groups_and_names(
    runner_as: Runner, other_user: pwd.struct_passwd
) -> None:
    name, uid, gid = other_user.pw_name, other_user.pw_uid, other_user.pw_gid
    command = ('id -u; id -g; id -G; grep -E "^(Uid|Gid):" /proc/self/status; '
               'printf "%s %s %s\\n" "$HOME" "$USER" "$LOGNAME"')
    outcome = await runner_as.run("shell", shell(command), 10)
    assert outcome.ok, outcome
    lines = outcome.output.splitlines()
    assert lines[:2] == [str(uid), str(gid)]
    # The user's own groups, root's none: the worker's are not inherited.
    assert {int(g) for g in lines[2].split()} == set(os.getgrouplist(name, gid))
    # Real, effective, saved and filesystem ids alike: no way back to root.
    assert lines[3].split() == ["Uid:", *[str(uid)] * 4]
    assert lines[4].split() == ["Gid:", *[str(gid)] * 4]
    assert lines[5] == f"{other_user.pw_dir} {name} {name}"


async def test_a_shell_task_as_another_user_cannot_write_where_only_root_can(
    runner: Runner, runner_as: Runner, root_only_dir: Path
) -> None:
    target = root_only_dir / "written"
    outcome = await runner_as.run("shell", shell(f"touch {target}"), 10)
    assert (outcome.ok, outcome.exit_code) == (False, 1)
    assert "Permission denied" in outcome.stderr
    assert not target.exists()
    # The same task as the worker's own user, root, can.
    assert (await runner.run("shell", shell(f"touch {target}"), 10)).ok
    assert target.exists()


async def test_a_shell_task_as_another_user_keeps_the_environment_and_sees_its_parents(
    runner_as: Runner, other_user: pwd.struct_passwd, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STRATA_TEST_INHERITED", "kept")
    command = 'printf "%s|%s|%s" "$STRATA_TEST_INHERITED" "$USER" "$STRATA_PARENT_OUTPUTS"'
    outcome = await runner_as.run("shell", shell(command), 10,
                                  parent_outputs_json=json.dumps(PARENTS))
    inherited, user, parents = outcome.output.split("|")
    assert (inherited, user, json.loads(parents)) == ("kept", other_user.pw_name, PARENTS)


@pytest.fixture
def user_with_home() -> Iterator[pwd.struct_passwd]:
    # Under a directory everyone may enter: pytest's own are root's alone.
    base = Path(tempfile.mkdtemp(prefix="strata-home-"))
    base.chmod(0o755)
    try:
        with made_user(home=base / "home") as entry:
            yield entry
    finally:
        shutil.rmtree(base)


async def test_a_shell_task_as_another_user_starts_in_its_home_if_it_can_enter_it(
    user_with_home: pwd.struct_passwd,
) -> None:
    home = user_with_home.pw_dir
    user = await resolve_run_as(user_with_home.pw_name)
    assert user is not None and user.cwd == home
    outcome = await Runner(python_modules=[], run_as=user).run(
        "shell", shell("pwd; touch mine && echo wrote"), 10)
    assert outcome.output == f"{home}\nwrote\n", outcome
    # A home the user may not enter (root's 0700 now): its tasks start in / instead.
    os.chown(home, 0, 0)
    user = await resolve_run_as(user_with_home.pw_name)
    assert user is not None and user.cwd == "/"
    outcome = await Runner(python_modules=[], run_as=user).run("shell", shell("pwd"), 10)
    assert outcome.output == "/\n"


async def test_a_shell_task_as_a_user_without_a_home_starts_in_root(
    runner_as: Runner, task_user: TaskUser
) -> None:
    if task_user.cwd != "/":
        pytest.skip(f"{task_user.name} has a home it may enter, {task_user.home}")
    outcome = await runner_as.run("shell", shell("pwd"), 10)
    assert outcome.output == "/\n"


async def test_a_timeout_kills_the_group_of_a_task_running_as_another_user(
    runner_as: Runner, other_user: pwd.struct_passwd
) -> None:
    command = "sleep 30 & echo $! $(id -u); sleep 30"
    outcome = await runner_as.run("shell", shell(command), 0.5)
    assert (outcome.ok, outcome.error, outcome.timed_out) == (
        False, "timed out after 0.5s", True)
    assert outcome.killed_processes == 3  # the shell and both sleeps
    child_pid, child_uid = outcome.output.split()
    assert int(child_uid) == other_user.pw_uid
    await wait_until_exited(int(child_pid))


async def test_cancelling_kills_the_group_of_a_task_running_as_another_user(
    runner_as: Runner, other_user: pwd.struct_passwd, fifo_for: Path
) -> None:
    command = f"sleep 30 & echo $$ $! > {fifo_for}; wait"
    task = asyncio.create_task(runner_as.run("shell", shell(command), 60))
    shell_pid, child_pid = map(int, (await read_line_from_fifo(fifo_for)).split())
    for pid in (shell_pid, child_pid):
        assert os.stat(f"/proc/{pid}").st_uid == other_user.pw_uid  # running, as the user
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_until_exited(shell_pid, child_pid)


async def test_http_and_python_tasks_run_in_the_worker_as_its_own_user(
    runner_as: Runner, server: str
) -> None:
    outcome = await runner_as.run("python", python(f"{HANDLERS}:add", [2, 3]), 10)
    assert (outcome.ok, outcome.output) == (True, "5")
    outcome = await runner_as.run("http", json.dumps({"url": f"{server}/ok"}), 10)
    assert (outcome.ok, outcome.output) == (True, "hello")
    assert os.geteuid() == 0  # they ran in this process, which is root's


async def test_run_as_an_unknown_user_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"^--run-as strata-no-such-user: no such user$"):
        await resolve_run_as("strata-no-such-user")


async def test_run_as_the_workers_own_user_changes_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    me = pwd.getpwuid(os.geteuid()).pw_name
    with caplog.at_level(logging.INFO, logger="strata.worker.runner"):
        assert await resolve_run_as(me) is None
    assert [getattr(r, "action", None) for r in caplog.records] == ["run_as_self"]


async def test_a_root_worker_without_run_as_warns_that_shell_tasks_run_as_root(
    caplog: pytest.LogCaptureFixture,
) -> None:
    require_root()
    with caplog.at_level(logging.INFO, logger="strata.worker.runner"):
        assert await resolve_run_as(None) is None
        assert await resolve_run_as(None, python_modules=["jobs"]) is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [getattr(r, "action", None) for r in warnings] == ["tasks_run_as_root"] * 2
    assert "--run-as USER" in warnings[0].getMessage()
    assert "python handlers" not in warnings[0].getMessage()
    assert "python handlers" in warnings[1].getMessage()


async def test_a_root_worker_with_run_as_warns_that_python_handlers_still_run_as_root(
    other_user: pwd.struct_passwd, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="strata.worker.runner"):
        assert await resolve_run_as(other_user.pw_name, python_modules=["jobs"]) is not None
    assert [getattr(r, "action", None) for r in caplog.records] == [
        "run_as", "python_handlers_run_as_root"]
