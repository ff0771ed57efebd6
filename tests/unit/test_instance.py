"""One ``strata up`` per data dir: the lock names its holder, is released when the
holder's block ends, and when its process dies, however it dies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from strata.local import instance

HOLD_AND_WAIT = """
import sys
from pathlib import Path
from strata.local import instance
with instance.hold(Path(sys.argv[1]), api="http://127.0.0.1:18080"):
    print("holding", flush=True)
    sys.stdin.read()
"""


def test_a_second_holder_is_refused_and_told_who_holds_it(tmp_path: Path) -> None:
    with instance.hold(tmp_path, api="http://127.0.0.1:8080") as me:
        assert me == instance.Holder(pid=os.getpid(), api="http://127.0.0.1:8080")
        written = json.loads((tmp_path / instance.LOCK_NAME).read_text())
        assert written == {"pid": os.getpid(), "api": "http://127.0.0.1:8080"}
        with pytest.raises(instance.AlreadyRunning) as refused, \
                instance.hold(tmp_path, api="http://127.0.0.1:9090"):
            pytest.fail("a second holder got the lock")
        assert refused.value.holder == me
        message = str(refused.value)
        assert f"pid {os.getpid()}, API at http://127.0.0.1:8080" in message
        assert str(tmp_path) in message
        # The refused attempt did not overwrite the holder's details.
        assert json.loads((tmp_path / instance.LOCK_NAME).read_text())["pid"] == os.getpid()
    # Released with the block, and emptied so no later run reads a stale holder.
    assert (tmp_path / instance.LOCK_NAME).read_text() == ""
    with instance.hold(tmp_path, api="http://127.0.0.1:9090") as next_one:
        assert next_one.api == "http://127.0.0.1:9090"


def test_the_lock_of_a_killed_holder_is_free_at_once(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_AND_WAIT, str(tmp_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "holding\n"
        with pytest.raises(instance.AlreadyRunning) as refused, \
                instance.hold(tmp_path, api="http://127.0.0.1:9090"):
            pytest.fail("got the lock of a live holder")
        assert refused.value.holder == instance.Holder(pid=holder.pid,
                                                       api="http://127.0.0.1:18080")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.close()
        holder.stdout.close()
    # Its details are still in the file, but nobody holds the lock: no stale lock.
    assert json.loads((tmp_path / instance.LOCK_NAME).read_text())["pid"] == holder.pid
    with instance.hold(tmp_path, api="http://127.0.0.1:9090") as me:
        assert me.pid == os.getpid()


def test_the_data_dir_is_created(tmp_path: Path) -> None:
    data_dir = tmp_path / "not" / "yet"
    with instance.hold(data_dir, api="http://127.0.0.1:8080"):
        assert (data_dir / instance.LOCK_NAME).is_file()
