"""Runs one task of any kind and reports what happened as an ``Outcome``.

A failing task is an outcome, not an exception: ``run`` raises only ``CancelledError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import json
import logging
import os
import signal
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from strata.common.kinds import (
    HttpPayload,
    NoopPayload,
    Payload,
    PythonPayload,
    ShellPayload,
    SleepPayload,
    parse_payload,
)

logger = logging.getLogger(__name__)

DEFAULT_OUTPUT_LIMIT = 64 * 1024
READ_CHUNK = 64 * 1024
# How long a killed process group gets to close its pipe before we stop waiting for it.
REAP_GRACE_S = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    ok: bool
    exit_code: int | None
    output: str
    error: str | None
    stderr: str = ""
    output_truncated: bool = False
    stderr_truncated: bool = False
    # Processes of the task's group still running when it ended, killed then.
    killed_processes: int = 0
    timed_out: bool = False


class _Tail:
    """The last ``limit`` bytes of a stream, kept bounded while it is read."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._buffer = bytearray()
        self.truncated = False  # bytes were dropped from the head

    def add(self, data: bytes) -> None:
        self._buffer += data
        excess = len(self._buffer) - self._limit
        if excess > 0:
            del self._buffer[:excess]
            self.truncated = True

    def add_text(self, text: str) -> None:
        self.add(text.encode("utf-8", errors="replace"))

    async def read_from(self, stream: asyncio.StreamReader | aiohttp.StreamReader) -> None:
        while chunk := await stream.read(READ_CHUNK):
            self.add(chunk)

    def text(self) -> str:
        decoded = bytes(self._buffer).decode("utf-8", errors="replace")
        # A replacement character takes three bytes: cut again to keep the byte bound,
        # dropping a character split by the cut.
        encoded = decoded.encode("utf-8")
        return encoded[max(0, len(encoded) - self._limit) :].decode("utf-8", errors="ignore")


class Runner:
    def __init__(
        self, *, python_modules: Sequence[str], output_limit: int = DEFAULT_OUTPUT_LIMIT
    ) -> None:
        self._python_modules = tuple(python_modules)
        self._output_limit = output_limit
        self._session: aiohttp.ClientSession | None = None

    async def run(self, kind: str, payload_json: str, timeout_s: float) -> Outcome:
        """Run a task; ``timeout_s`` of zero or less means no timeout."""
        try:
            payload = parse_payload(kind, json.loads(payload_json))
        except KeyError:
            logger.warning(
                "unknown task kind %s", kind, extra={"action": "payload_rejected", "kind": kind}
            )
            return _failed(f"unknown task kind {kind!r}")
        except ValueError as exc:  # both JSONDecodeError and pydantic's ValidationError
            logger.warning(
                "rejected %s payload: %s", kind, exc,
                extra={"action": "payload_rejected", "kind": kind},
            )
            return _failed(f"invalid {kind} payload: {_one_line(exc)}")

        out = _Output(_Tail(self._output_limit), _Tail(self._output_limit))
        deadline = asyncio.timeout(timeout_s if timeout_s > 0 else None)
        try:
            async with deadline:
                return await self._run_kind(payload, out)
        except TimeoutError as exc:
            if not deadline.expired():  # raised by the task itself, not our deadline
                return _crashed(kind, exc, out)
            logger.info(
                "%s task timed out after %ss", kind, timeout_s,
                extra={"action": "task_timed_out", "kind": kind},
            )
            return out.outcome(ok=False, exit_code=None, error=f"timed out after {timeout_s}s",
                               timed_out=True)
        except asyncio.CancelledError:
            logger.info("%s task cancelled", kind, extra={"action": "task_cancelled", "kind": kind})
            raise
        except Exception as exc:
            return _crashed(kind, exc, out)

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def _run_kind(self, payload: Payload, out: _Output) -> Outcome:
        match payload:
            case ShellPayload():
                return await self._run_shell(payload, out)
            case HttpPayload():
                return await self._run_http(payload, out.stdout)
            case PythonPayload():
                return await self._run_python(payload, out)
            case SleepPayload():
                await asyncio.sleep(payload.seconds)
                return Outcome(ok=True, exit_code=None, output="", error=None)
            case NoopPayload():
                return Outcome(ok=True, exit_code=None, output="", error=None)
        raise TypeError(f"no runner for {type(payload).__name__}")

    async def _run_shell(self, payload: ShellPayload, out: _Output) -> Outcome:
        shell = await _spawn_shell(payload.command, out)
        reading = asyncio.create_task(out.read_from(shell.process), name="read_output")
        try:
            await shell.exited.wait()
        except BaseException:
            # Timed out or cancelled: kill the whole group, children that outlived the
            # shell and still hold the pipes included.
            await _end_group(shell, out, reading)
            raise
        # The task is over when its shell is: whatever it left running in its group
        # (`sleep 300 &`) dies with it, outside every limit otherwise.
        await _end_group(shell, out, reading)
        code = shell.process.returncode
        assert code is not None
        if code == 0:
            return out.outcome(ok=True, exit_code=0, error=None)
        reason = f"exited with code {code}" if code > 0 else f"killed by signal {-code}"
        return out.outcome(ok=False, exit_code=code, error=reason)

    async def _run_http(self, payload: HttpPayload, tail: _Tail) -> Outcome:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(),  # run() enforces each task's own deadline
                cookie_jar=aiohttp.DummyCookieJar(),  # tasks must not share cookies
            )
        try:
            async with self._session.request(
                payload.method, payload.url, headers=payload.headers, data=payload.body
            ) as response:
                await tail.read_from(response.content)
        except aiohttp.ClientError as exc:
            return _failed(f"request failed: {type(exc).__name__}: {_one_line(exc)}")
        status = response.status
        ok = 200 <= status < 300
        error = None if ok else f"HTTP {status} {response.reason or ''}".rstrip()
        return Outcome(ok=ok, exit_code=status, output=tail.text(), error=error,
                       output_truncated=tail.truncated)

    async def _run_python(self, payload: PythonPayload, out: _Output) -> Outcome:
        module_name, _, function_name = payload.handler.partition(":")
        if not any(
            module_name == allowed or module_name.startswith(allowed + ".")
            for allowed in self._python_modules
        ):
            logger.warning(
                "python handler %s refused", payload.handler,
                extra={"action": "python_handler_refused", "handler": payload.handler},
            )
            return _failed(f"module {module_name!r} is not allowed")
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # whatever the module raises while it is imported
            return _failed(f"cannot import {module_name}: {type(exc).__name__}: {exc}")
        function = getattr(module, function_name, None)
        if not callable(function):
            return _failed(f"{payload.handler} is not a callable")

        args: list[Any] = payload.args if isinstance(payload.args, list) else []
        kwargs: dict[str, Any] = payload.args if isinstance(payload.args, dict) else {}
        try:
            if inspect.iscoroutinefunction(function):
                value = await function(*args, **kwargs)
            else:
                # A sync handler runs in a thread. A thread cannot be killed: when its
                # task times out or is cancelled, the handler runs on to its end.
                value = await asyncio.to_thread(function, *args, **kwargs)
            out.stdout.add_text(json.dumps(value, default=str))
        except Exception as exc:
            out.stderr.add_text(traceback.format_exc())
            return out.outcome(ok=False, exit_code=None, error=f"{type(exc).__name__}: {exc}")
        return out.outcome(ok=True, exit_code=None, error=None)


class _Output:
    """A task's two streams, each kept to its tail."""

    def __init__(self, stdout: _Tail, stderr: _Tail) -> None:
        self.stdout = stdout
        self.stderr = stderr
        self.killed = 0  # processes of its group killed when it ended

    async def read_from(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None and process.stderr is not None
        await asyncio.gather(self.stdout.read_from(process.stdout),
                             self.stderr.read_from(process.stderr))

    def outcome(self, *, ok: bool, exit_code: int | None, error: str | None,
                timed_out: bool = False) -> Outcome:
        return Outcome(
            ok=ok, exit_code=exit_code, error=error,
            output=self.stdout.text(), output_truncated=self.stdout.truncated,
            stderr=self.stderr.text(), stderr_truncated=self.stderr.truncated,
            killed_processes=self.killed, timed_out=timed_out,
        )


class _ExitAware(asyncio.subprocess.SubprocessStreamProtocol):
    """asyncio's subprocess protocol, telling also when the process itself exited:
    ``Process.wait`` returns only once every pipe is closed, and a child the shell left
    running holds them open."""

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=limit, loop=loop)
        self.exited = asyncio.Event()

    def process_exited(self) -> None:
        super().process_exited()
        self.exited.set()


@dataclass(frozen=True, slots=True)
class _Shell:
    process: asyncio.subprocess.Process
    exited: asyncio.Event

    @property
    def pid(self) -> int:
        return self.process.pid  # also its process group's id (a session of its own)


async def _start_shell(command: str) -> _Shell:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.subprocess_exec(
        lambda: _ExitAware(limit=READ_CHUNK, loop=loop),
        "/bin/sh", "-c", command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # its own process group, so one kill reaches every child
    )
    return _Shell(asyncio.subprocess.Process(transport, protocol, loop), protocol.exited)


async def _spawn_shell(command: str, out: _Output) -> _Shell:
    spawning = asyncio.create_task(_start_shell(command), name="spawn_shell")
    try:
        return await asyncio.shield(spawning)
    except asyncio.CancelledError:
        # The shell may already be running its command, and a cancelled spawn would
        # kill the shell alone: finish the spawn so that its whole group can be killed.
        await asyncio.wait([spawning])
        if spawning.exception() is None:
            shell = spawning.result()
            reading = asyncio.create_task(out.read_from(shell.process), name="read_output")
            await _end_group(shell, out, reading)
        raise


def _group_members(pgid: int) -> int:
    """How many live processes are in process group ``pgid`` (Linux /proc)."""
    count = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                fields = stat.read().rpartition(b")")[2].split()
        except OSError:
            continue  # gone meanwhile
        # After the command's name: state, ppid, pgrp. A zombie is already dead.
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != b"Z":
            count += 1
    return count


async def _end_group(shell: _Shell, out: _Output, reading: asyncio.Task[None]) -> None:
    """Kill whatever is left of the task's process group, then collect its output and
    its exit. Counts what was killed into ``out``."""
    left = _group_members(shell.pid)
    if left:
        with contextlib.suppress(ProcessLookupError):  # the group may be gone already
            os.killpg(shell.pid, signal.SIGKILL)
        out.killed += left
        logger.info(
            "killed %d processes left in the task's group %s", left, shell.pid,
            extra={"action": "process_group_killed", "pid": shell.pid, "count": left},
        )
    # Once the group is dead its pipes close; a grandchild that left the group could
    # hold one open forever, hence the grace.
    try:
        async with asyncio.timeout(REAP_GRACE_S):
            await asyncio.shield(reading)
            await shell.process.wait()
    except TimeoutError:
        reading.cancel()
        logger.warning(
            "process group %s still holds its pipe after SIGKILL", shell.pid,
            extra={"action": "process_reap_abandoned", "pid": shell.pid},
        )


def _failed(error: str, *, output: str = "") -> Outcome:
    return Outcome(ok=False, exit_code=None, output=output, error=error)


def _crashed(kind: str, exc: Exception, out: _Output) -> Outcome:
    logger.error(
        "%s task failed in the runner", kind,
        exc_info=exc, extra={"action": "task_runner_failed", "kind": kind},
    )
    return out.outcome(ok=False, exit_code=None, error=f"{type(exc).__name__}: {exc}")


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())
