"""Runs a topology as local processes: master, then regions, then workers.

Prefixes every line a process prints with its name, restarts a process that dies
with backoff (``strata.common.retry``: doubling, starting over once a run stayed up
``HEALTHY_AFTER_S``), and stops them in reverse order (workers, regions, master)."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TextIO

from tenacity import RetryCallState

from strata.common.errors import StrataError
from strata.common.retry import Backoff, retrying

logger = logging.getLogger(__name__)

STOP_GRACE_S = 10.0
RESTART_MIN_S = 0.5
RESTART_MAX_S = 10.0
HEALTHY_AFTER_S = 10.0  # a process up this long resets its restart backoff


def restart_backoff() -> Backoff:
    """No jitter: these are our own processes on one machine, with no herd to spread."""
    return Backoff(initial_s=RESTART_MIN_S, max_s=RESTART_MAX_S, jitter_s=0.0,
                   healthy_after_s=HEALTHY_AFTER_S)


class ProcessExited(StrataError):
    """A supervised process ended while the supervisor was not stopping it."""

    code = "process_exited"

    def __init__(self, name: str, returncode: int) -> None:
        super().__init__(f"{name} {_how(returncode)}")
        self.name = name
        self.returncode = returncode


def _die_with_parent() -> None:
    """Children get SIGTERM if the supervisor itself is killed (Linux only)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except OSError:
        pass


@dataclass(eq=False)
class Proc:
    name: str
    tier: int  # 0 master, 1 regions, 2 workers: started in order, stopped in reverse
    argv: list[str]
    env: dict[str, str]
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    started: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None


class Supervisor:
    def __init__(self, procs: list[Proc], *, out: TextIO = sys.stdout,
                 backoff: Backoff | None = None) -> None:
        self.procs = procs
        self._out = out
        self._backoff = backoff if backoff is not None else restart_backoff()
        self._stopping = False
        self._loops: list[asyncio.Task[None]] = []
        self._width = max(len(p.name) for p in procs)

    def say(self, text: str) -> None:
        print(f"{'strata':<{self._width}} | {text}", file=self._out, flush=True)

    async def start_tier(self, tier: int, ready: Callable[[], Awaitable[None]]) -> None:
        for proc in self.procs:
            if proc.tier == tier:
                loop = asyncio.create_task(self._keep(proc), name=proc.name)
                loop.add_done_callback(self._loop_done)
                self._loops.append(loop)
        await ready()

    def _loop_done(self, loop: asyncio.Task[None]) -> None:
        # A process that cannot even be spawned (its interpreter gone, say) ends its loop:
        # say so rather than leave it silently unsupervised.
        if not loop.cancelled() and (exc := loop.exception()) is not None:
            self.say(f"{loop.get_name()} cannot be run: {exc!r}")
            logger.error("supervision of %s ended: %r", loop.get_name(), exc,
                         extra={"action": "supervision_failed", "process": loop.get_name()})

    async def _keep(self, proc: Proc) -> None:
        """Run ``proc`` until the supervisor stops; each exit meanwhile is a failed
        attempt of a tenacity loop, which waits out the backoff and starts it again."""
        loop = retrying(
            proc.name, self._backoff, action="process_restarting", level=logging.DEBUG,
            retry_on=lambda exc: isinstance(exc, ProcessExited) and not self._stopping,
            extra={"process": proc.name},
        )
        log_retry = loop.before_sleep

        def announce(state: RetryCallState) -> None:
            if log_retry is not None:
                log_retry(state)
            delay = state.next_action.sleep if state.next_action is not None else 0.0
            proc.restarts += 1
            exited = state.outcome.exception() if state.outcome is not None else None
            self.say(f"{exited}; restarting in {delay:.1f}s (restart {proc.restarts})")

        loop.before_sleep = announce
        async for attempt in loop:
            with attempt:
                await self._run_once(proc)

    async def _run_once(self, proc: Proc) -> None:
        if self._stopping:
            return
        proc.process = await asyncio.create_subprocess_exec(
            *proc.argv, env=proc.env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True, preexec_fn=_die_with_parent,
        )
        proc.started.set()
        await self._pump(proc)
        code = await proc.process.wait()
        if not self._stopping:
            raise ProcessExited(proc.name, code)

    async def _pump(self, proc: Proc) -> None:
        assert proc.process is not None and proc.process.stdout is not None
        prefix = f"{proc.name:<{self._width}} | "
        while line := await proc.process.stdout.readline():
            self._out.write(prefix + line.decode(errors="replace"))
            self._out.flush()

    async def stop(self) -> None:
        """Workers, then regions, then the master; each gets SIGTERM and a grace."""
        self._stopping = True
        for tier in sorted({p.tier for p in self.procs}, reverse=True):
            group = [p for p in self.procs if p.tier == tier and p.process is not None
                     and p.process.returncode is None]
            for proc in group:
                assert proc.process is not None
                proc.process.send_signal(signal.SIGTERM)
            for proc in group:
                assert proc.process is not None
                try:
                    await asyncio.wait_for(proc.process.wait(), STOP_GRACE_S)
                except TimeoutError:
                    self.say(f"{proc.name} did not stop in {STOP_GRACE_S:.0f}s; killing it")
                    proc.process.kill()
                    await proc.process.wait()
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        # A process respawned while the tiers were being stopped has not been signalled.
        for proc in self.procs:
            if proc.process is not None and proc.process.returncode is None:
                proc.process.kill()
                await proc.process.wait()


def _how(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            pass
    return f"exited with code {code}"
