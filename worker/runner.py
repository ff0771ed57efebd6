"""Runs one task of any kind and reports what happened as an ``Outcome``.

A failing task is an outcome, not an exception: ``run`` raises only ``CancelledError``.

A shell task may run as another user than the worker (``--run-as``, see
:func:`resolve_run_as`): its process drops to that user before it becomes the shell.
Http and python tasks always run in the worker process, as the worker's own user.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import inspect
import json
import logging
import os
import pwd
import signal
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from strata.common.errors import ConfigError
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
# How a task with parents receives their outputs: a shell task in this variable, a
# python handler as this keyword argument.
PARENT_OUTPUTS_ENV = "STRATA_PARENT_OUTPUTS"
PARENT_OUTPUTS_ARG = "parent_outputs"

# Each parent task's id to its output (stdout's tail), or None.
ParentOutputs = dict[str, str | None]
# How long the check that the worker can switch to the --run-as user may take.
RUN_AS_CHECK_TIMEOUT_S = 10.0
# What a shell task as another user is started through: this interpreter, isolated (-I
# -S: no site, no PYTHON* variables), changes its groups, gid and uid (real, effective
# and saved alike: root cannot be taken back), then execs the rest of its arguments in
# its place, same pid. Not Popen's user=, group= and extra_groups=: given those, Popen
# forks instead of vforking, and fork runs the fork handlers of the libraries in the
# worker; gRPC's start threads in the child, which crash it.
_SWITCH_FAILED = 126
_NO_HOME = 3  # the start-up check's shell could not enter the user's home
_SWITCH_USER = f"""\
import os, sys
uid, gid, groups = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
try:
    os.setgroups([int(g) for g in groups.split(",") if g])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
except OSError as exc:
    sys.stderr.write(f"cannot switch to uid {{uid}}: {{exc.strerror}}\\n")
    sys.exit({_SWITCH_FAILED})
os.execv(sys.argv[4], sys.argv[4:])
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskUser:
    """The user shell tasks run as, looked up once when the worker starts: a change to
    the user's groups or home reaches its tasks when the worker restarts."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]  # every group of the user, as initgroups(3) gives them
    home: str
    cwd: str  # where its shells start: its home if it can enter it, else /

    def environment(self, base: Mapping[str, str]) -> dict[str, str]:
        """``base`` (the worker's environment), with the user's HOME, USER and LOGNAME."""
        return {**base, "HOME": self.home, "USER": self.name, "LOGNAME": self.name}

    def argv(self, program: str, *args: str) -> list[str]:
        """The command line that runs ``program`` as this user (see ``_SWITCH_USER``).
        Its whole list of groups is always given, else it would keep the worker's."""
        return [sys.executable, "-I", "-S", "-c", _SWITCH_USER, str(self.uid), str(self.gid),
                ",".join(map(str, self.groups)), program, *args]


async def resolve_run_as(
    name: str | None, *, python_modules: Sequence[str] = ()
) -> TaskUser | None:
    """The user shell tasks run as, or None for the worker's own user; called once, as
    the worker starts. Raises ``ConfigError`` for a user that does not exist, or one the
    worker cannot switch to: only root can, and it is checked by running a shell as
    that user. Naming the worker's own user changes nothing (None).

    A worker running as root without ``--run-as`` runs its shell tasks as root: that is
    allowed, with a warning."""
    euid = os.geteuid()
    as_root = euid == 0
    if name is None:
        if as_root:
            also = " and python handlers" if python_modules else ""
            logger.warning(
                "the worker runs as root, and so do its shell tasks%s: give --run-as USER "
                "(STRATA_RUN_AS) to run shell tasks as an unprivileged user", also,
                extra={"action": "tasks_run_as_root"},
            )
        return None
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise ConfigError(f"--run-as {name}: no such user") from None
    if entry.pw_uid == euid:
        logger.info(
            "shell tasks run as %s, the worker's own user", name,
            extra={"action": "run_as_self", "user": name},
        )
        return None
    if not as_root:
        raise ConfigError(
            f"--run-as {name}: the worker runs as {_user_name(euid)}, not as root, so it "
            "cannot run tasks as another user: start it as root, or without --run-as")
    user = await _checked(TaskUser(
        name=name, uid=entry.pw_uid, gid=entry.pw_gid,
        groups=tuple(os.getgrouplist(name, entry.pw_gid)), home=entry.pw_dir, cwd="/",
    ))
    where = user.cwd if user.cwd == user.home else f"/ (it cannot enter its home {user.home})"
    logger.info(
        "shell tasks run as %s (uid %d, gid %d), in %s", name, user.uid, user.gid, where,
        extra={"action": "run_as", "user": name, "uid": user.uid},
    )
    if python_modules:
        logger.warning(
            "python handlers still run as root, in the worker process: --run-as applies "
            "to shell tasks only", extra={"action": "python_handlers_run_as_root"},
        )
    return user


async def _checked(user: TaskUser) -> TaskUser:
    """Start a shell as ``user`` the way a task's is started, from /, and have it enter
    the user's home: the switch works (it does not where the worker lacks the right to
    change ids, a container without CAP_SETUID for one), and the shells start in the
    home if it can, else in /."""
    process = await asyncio.create_subprocess_exec(
        *user.argv("/bin/sh", "-c", f'cd -- "$1" 2>/dev/null || exit {_NO_HOME}', "sh",
                   user.home),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE, env=user.environment(os.environ), cwd=user.cwd,
    )
    try:
        async with asyncio.timeout(RUN_AS_CHECK_TIMEOUT_S):
            _, stderr = await process.communicate()
    except TimeoutError:  # a home on a file system that hangs
        process.kill()
        await process.wait()
        raise ConfigError(f"--run-as {user.name}: a shell started as {user.name} did not "
                          f"enter its home {user.home} within {RUN_AS_CHECK_TIMEOUT_S:g}s"
                          ) from None
    if process.returncode == _NO_HOME:
        return user  # its shells start in /
    if process.returncode != 0:
        why = stderr.decode(errors="replace").strip() or f"exit code {process.returncode}"
        raise ConfigError(f"--run-as {user.name}: {why}")
    return dataclasses.replace(user, cwd=user.home)


def _user_name(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


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


class _Deadline:
    """``asyncio.timeout`` for one run, at about half its cost per task (no coroutines to
    enter and leave it): a timer that cancels the running task at ``timeout_s`` (none
    when zero or less) and, on the way out, turns that cancellation, and only that one,
    into TimeoutError."""

    __slots__ = ("_cancelling", "_handle", "_task", "expired")

    def __init__(self, timeout_s: float) -> None:
        self.expired = False
        self._handle: asyncio.TimerHandle | None = None
        if timeout_s > 0:
            task = asyncio.current_task()
            if task is None:
                raise RuntimeError("a deadline runs inside a task")
            self._task = task
            self._cancelling = task.cancelling()
            loop = asyncio.get_running_loop()
            self._handle = loop.call_at(loop.time() + timeout_s, self._expire)

    def _expire(self) -> None:
        self.expired = True
        self._task.cancel()

    def __enter__(self) -> _Deadline:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: object) -> None:
        if self._handle is None:
            return
        self._handle.cancel()
        # As asyncio.timeout: our cancellation is taken back whatever the task raised;
        # it becomes TimeoutError when it is what ended the run, and no other is pending.
        if self.expired and self._task.uncancel() <= self._cancelling \
                and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc


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
        self, *, python_modules: Sequence[str], output_limit: int = DEFAULT_OUTPUT_LIMIT,
        run_as: TaskUser | None = None,
    ) -> None:
        """``run_as``: the user shell tasks run as (see :func:`resolve_run_as`); None,
        the worker's own."""
        self._python_modules = tuple(python_modules)
        self._output_limit = output_limit
        self._run_as = run_as
        self._session: aiohttp.ClientSession | None = None

    async def run(
        self, kind: str, payload_json: str, timeout_s: float, parent_outputs_json: str = ""
    ) -> Outcome:
        """Run a task; ``timeout_s`` of zero or less means no timeout.

        ``parent_outputs_json`` is empty for a task without parents, else a JSON object of
        each parent's id to its output (or null): a shell task finds it verbatim in
        ``STRATA_PARENT_OUTPUTS``, a python handler that can take it gets it parsed as
        ``parent_outputs``, and the other kinds have no use for it.
        """
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
        try:
            parents = _parse_parent_outputs(parent_outputs_json)
        except ValueError as exc:
            logger.warning(
                "rejected the parent outputs of a %s task: %s", kind, exc,
                extra={"action": "parent_outputs_rejected", "kind": kind},
            )
            return _failed(f"invalid parent outputs: {_one_line(exc)}")

        out = _Output(_Tail(self._output_limit), _Tail(self._output_limit))
        deadline = _Deadline(timeout_s)
        try:
            with deadline:
                return await self._run_kind(payload, out, parents, parent_outputs_json)
        except TimeoutError as exc:
            if not deadline.expired:  # raised by the task itself, not our deadline
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

    async def _run_kind(
        self, payload: Payload, out: _Output, parents: ParentOutputs | None,
        parent_outputs_json: str,
    ) -> Outcome:
        match payload:
            case ShellPayload():
                # No parents, no variable.
                env = self._shell_env(None if parents is None else parent_outputs_json)
                return await self._run_shell(payload, out, env)
            case HttpPayload():
                return await self._run_http(payload, out.stdout)
            case PythonPayload():
                return await self._run_python(payload, out, parents)
            case SleepPayload():
                await asyncio.sleep(payload.seconds)
                return Outcome(ok=True, exit_code=None, output="", error=None)
            case NoopPayload():
                return Outcome(ok=True, exit_code=None, output="", error=None)
        raise TypeError(f"no runner for {type(payload).__name__}")

    def _shell_env(self, parent_outputs_json: str | None) -> dict[str, str] | None:
        """A shell task's environment: the worker's, with its user's HOME, USER and
        LOGNAME when it runs as another user, and its parents' outputs when it has
        parents. None: nothing to add, the worker's own as it is."""
        env = None if self._run_as is None else self._run_as.environment(os.environ)
        if parent_outputs_json is not None:
            env = {**(os.environ if env is None else env),
                   PARENT_OUTPUTS_ENV: parent_outputs_json}
        return env

    async def _run_shell(
        self, payload: ShellPayload, out: _Output, env: dict[str, str] | None
    ) -> Outcome:
        shell = await _spawn_shell(payload.command, out, env, self._run_as)
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

    async def _run_python(
        self, payload: PythonPayload, out: _Output, parents: ParentOutputs | None
    ) -> Outcome:
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
        if parents is not None:
            # Refused rather than letting one silently replace the other.
            if PARENT_OUTPUTS_ARG in kwargs:
                return _failed(f"args may not name {PARENT_OUTPUTS_ARG}: "
                               "it is the parents' outputs")
            if _takes_parent_outputs(function):
                kwargs = {**kwargs, PARENT_OUTPUTS_ARG: parents}
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


async def _start_shell(command: str, env: dict[str, str] | None,
                       user: TaskUser | None) -> _Shell:
    """``env`` None inherits the worker's environment; ``user`` None runs the shell as
    the worker's own user, in the worker's directory."""
    loop = asyncio.get_running_loop()
    shell = ("/bin/sh", "-c", command)
    transport, protocol = await loop.subprocess_exec(
        lambda: _ExitAware(limit=READ_CHUNK, loop=loop),
        *(shell if user is None else user.argv(*shell)),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # its own process group, so one kill reaches every child
        env=env,
        # As another user the worker is root: the group is made before the ids change,
        # the switch keeps the pid, and root may kill any process.
        cwd=None if user is None else user.cwd,
    )
    return _Shell(asyncio.subprocess.Process(transport, protocol, loop), protocol.exited)


async def _spawn_shell(command: str, out: _Output, env: dict[str, str] | None,
                       user: TaskUser | None) -> _Shell:
    spawning = asyncio.create_task(_start_shell(command, env, user), name="spawn_shell")
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
        # A task run as another user is a root worker's, and root may signal any
        # process: the kill, and the count from /proc, are the same for it.
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


def _parse_parent_outputs(text: str) -> ParentOutputs | None:
    """The parents' outputs, or None for a task without parents (an empty text).
    Raises ValueError when the text is not an object of outputs (text or null)."""
    if not text:
        return None
    parents = json.loads(text)
    if not isinstance(parents, dict):
        raise ValueError(f"not a JSON object: {text[:100]}")
    for parent, output in parents.items():
        if output is not None and not isinstance(output, str):
            raise ValueError(f"the output of parent {parent!r} is neither text nor null")
    return parents


def _takes_parent_outputs(function: Callable[..., Any]) -> bool:
    """Whether ``function`` accepts ``parent_outputs`` as a keyword: by that name or
    through ``**kwargs``. A handler that cannot is called as it was before parents."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # some builtins have no signature
        return False
    return any(
        p.kind is inspect.Parameter.VAR_KEYWORD
        or (p.name == PARENT_OUTPUTS_ARG
            and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                           inspect.Parameter.KEYWORD_ONLY))
        for p in parameters
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
