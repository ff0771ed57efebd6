"""One ``strata up`` per data dir.

A run holds an exclusive ``flock`` on ``<data dir>/up.lock`` for as long as it lives,
and writes its pid and API address into the file. A second run on the same data dir
cannot take the lock, so it refuses at once and names the first. The kernel drops the
lock when its holder's process ends, however it ends (SIGKILL included), so a lock file
left behind never blocks a later run.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from strata.common.errors import StrataError

logger = logging.getLogger(__name__)

LOCK_NAME = "up.lock"
# The holder writes its details right after it takes the lock: a run that finds the lock
# taken in between waits this long for them.
HOLDER_WRITE_TIMEOUT_S = 2.0
HOLDER_POLL_S = 0.05


@dataclass(frozen=True, slots=True, kw_only=True)
class Holder:
    pid: int
    api: str

    def dumps(self) -> str:
        return json.dumps({"pid": self.pid, "api": self.api}) + "\n"

    @classmethod
    def loads(cls, text: str) -> Holder | None:
        try:
            data = json.loads(text)
            return cls(pid=int(data["pid"]), api=str(data["api"]))
        except (ValueError, TypeError, KeyError):
            return None  # empty (not written yet) or not ours


class AlreadyRunning(StrataError):
    """Another ``strata up`` holds this data dir."""

    code = "already_running"

    def __init__(self, data_dir: Path, holder: Holder | None) -> None:
        who = (f"pid {holder.pid}, API at {holder.api}" if holder is not None
               else f"its lock is {data_dir / LOCK_NAME}")
        super().__init__(
            f"strata up is already running on {data_dir} ({who}); stop it first, or give "
            f"this one a data dir of its own (STRATA_DATA_DIR)")
        self.holder = holder


@contextlib.contextmanager
def hold(data_dir: Path, *, api: str) -> Iterator[Holder]:
    """Hold ``data_dir`` for this process (serving ``api``) until the block ends; raise
    :class:`AlreadyRunning` at once if another process holds it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / LOCK_NAME
    # Not O_TRUNC: until we hold the lock, what is in the file is the holder's.
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AlreadyRunning(data_dir, _holder(fd)) from None
        me = Holder(pid=os.getpid(), api=api)
        os.ftruncate(fd, 0)
        os.pwrite(fd, me.dumps().encode(), 0)
        logger.info("holding %s", path, extra={"action": "instance_locked", "pid": me.pid})
        try:
            yield me
        finally:
            # Emptied before the lock goes, so no later run reads us as its holder.
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the lock


def _holder(fd: int) -> Holder | None:
    """The holder named in the file, once it names a live process."""
    deadline = time.monotonic() + HOLDER_WRITE_TIMEOUT_S
    while True:
        holder = Holder.loads(os.pread(fd, 4096, 0).decode(errors="replace"))
        if holder is not None and _alive(holder.pid):
            return holder
        if time.monotonic() > deadline:
            return None
        time.sleep(HOLDER_POLL_S)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, someone else's
    return True
