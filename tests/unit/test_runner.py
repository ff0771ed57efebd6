"""The runner against real subprocesses, a real HTTP server and real Python handlers."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from strata.worker.runner import Outcome, Runner
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
