"""Unprivileged users for the tests of shell tasks run as another user (``--run-as``).
Switching users takes root, which CI is; elsewhere these tests skip, saying so."""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

NOBODY = "nobody"
_made = itertools.count()


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("running shell tasks as another user needs a worker running as root; "
                    f"these tests run as uid {os.geteuid()}")


@contextmanager
def unprivileged_user() -> Iterator[pwd.struct_passwd]:
    """``nobody``, or where there is none a user made for the test (removed after)."""
    require_root()
    try:
        entry: pwd.struct_passwd | None = pwd.getpwnam(NOBODY)
    except KeyError:
        entry = None
    if entry is not None:
        yield entry
        return
    with made_user() as made:
        yield made


@contextmanager
def made_user(home: Path | None = None) -> Iterator[pwd.struct_passwd]:
    """A system user of its own group with no login shell, named for this process (test
    runs side by side do not collide), with ``home`` as its home directory (made, and
    owned by it) or none; removed after."""
    require_root()
    name = f"strata-t{os.getpid()}-{next(_made)}"
    subprocess.run(
        ["useradd", "--system", "--user-group", "--no-create-home", "--shell",
         "/usr/sbin/nologin", "--home-dir", str(home or "/nonexistent"), name],
        check=True, capture_output=True,
    )
    try:
        entry = pwd.getpwnam(name)
        if home is not None:
            home.mkdir(mode=0o700, parents=True)
            os.chown(home, entry.pw_uid, entry.pw_gid)
        yield entry
    finally:
        subprocess.run(["userdel", name], check=True, capture_output=True)
        if home is not None:
            shutil.rmtree(home, ignore_errors=True)


def require_python_for(user: pwd.struct_passwd) -> None:
    """Skip unless ``user`` can run this interpreter and import Strata (it cannot where
    they sit in a directory only root may enter)."""
    check = subprocess.run(
        [sys.executable, "-c", "import strata.worker.app"], user=user.pw_uid,
        group=user.pw_gid, extra_groups=[], cwd="/", capture_output=True, text=True,
    )
    if check.returncode != 0:
        pytest.skip(f"{user.pw_name} cannot run {sys.executable} with Strata: "
                    f"{check.stderr.strip().splitlines()[-1:]}")
