"""One ``strata up`` run as a user starts it, for end-to-end tests.

A thread reads its output as it comes (a cluster of a dozen processes talks a lot, and
a full pipe would stall the supervisor); tests wait for lines, never for time."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import psutil

from strata.local import launcher

STOP_TIMEOUT_S = 60.0
Match = str | Callable[[str], bool]


class UpProcess:
    def __init__(self, topology: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            launcher.up_argv(topology), env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        self._lines: list[str] = []
        self._eof = False
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, name="strata-up-output", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._changed:
                self._lines.append(raw.decode(errors="replace"))
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    @property
    def lines(self) -> list[str]:
        with self._changed:
            return list(self._lines)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def _find(self, match: Match, start: int) -> int | None:
        test = match if callable(match) else (lambda line: match in line)
        return next((i for i in range(start, len(self._lines)) if test(self._lines[i])), None)

    def wait_for(self, match: Match, *, timeout_s: float = 90.0, after: int = -1) -> int:
        """Index of the first output line after ``after`` that matches (a substring, or
        a predicate); fails with the tail of the output if none comes in time."""
        with self._changed:
            found = self._changed.wait_for(
                lambda: self._find(match, after + 1) is not None or self._eof, timeout_s)
            index = self._find(match, after + 1) if found else None
            if index is not None:
                return index
            tail = "".join(self._lines[-60:])
        raise AssertionError(f"no line matching {match!r} in the output of strata up "
                             f"({'it exited' if self._eof else 'timed out'}):\n{tail}")

    async def until(self, match: Match, *, timeout_s: float = 90.0, after: int = -1) -> int:
        return await asyncio.to_thread(self.wait_for, match, timeout_s=timeout_s, after=after)

    def children(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)

    def interrupt(self, sig: int = signal.SIGINT) -> int:
        """Ctrl-C (or another signal); its exit code once it has stopped everything."""
        self.proc.send_signal(sig)
        return self._finish()

    def _finish(self) -> int:
        code = self.proc.wait(timeout=STOP_TIMEOUT_S)
        # Its output ends when it does (every process it started writes into its pipes).
        self._reader.join(timeout=STOP_TIMEOUT_S)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return code

    def close(self) -> None:
        """Make sure nothing outlives the test, whatever state it left the run in."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                for child in self.children():
                    child.kill()
                self.proc.kill()
        assert self.proc.stdout is not None
        if not self.proc.stdout.closed:
            self._finish()

    def __enter__(self) -> UpProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
