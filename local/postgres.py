"""A PostgreSQL server of our own on 127.0.0.1, for `strata up` and the tests.

PostgreSQL refuses to run as root, so as root every server command runs as the system
user ``pgserver``, the way the ``pgserver`` wheel (whose binaries we prefer) does it.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import os
import random
import re
import shlex
import shutil
import socket
import stat
import subprocess
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from types import ModuleType
from urllib.parse import urlsplit, urlunsplit

from strata.common.errors import StrataError
from strata.local import ports

logger = logging.getLogger(__name__)

SYSTEM_USER = "pgserver"
SUPERUSER = "postgres"
HOST = "127.0.0.1"
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30
MAX_CONNECTIONS = 200
LOG_FILE = "server.log"
LOG_TAIL_LINES = 30
# sockaddr_un.sun_path is 108 bytes on Linux, 104 on macOS: keep well below both.
MAX_SOCKET_PATH = 100
# Durability traded for speed: only for throw-away test data.
FAST_OPTIONS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")


class PostgresLaunchError(StrataError):
    """Our embedded PostgreSQL could not be initialised, started or stopped."""

    code = "postgres_launch_failed"


# Ports handed out by free_port in this process: never the same one twice.
_handed_out: set[int] = set()
# Below this, ports are system ones; free_port picks between it and the ephemeral range.
_LOWEST_PORT = 10_000


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, and that the kernel will not
    give anyone meanwhile: it is picked below the ephemeral range, where neither a
    listener on port 0 nor the source port of an outgoing connection lands, and this
    process never hands it out twice. (A port the kernel chose, closed and handed to a
    server that starts later may meanwhile become some connection's source port, or
    another port-0 listener's, and the server then cannot bind it.)"""
    low = _LOWEST_PORT
    high = _ephemeral_range()[0] - 1
    if high - low < 1000:  # an unusual range: fall back to the kernel's choice
        low, high = 0, 0
    for _ in range(1000):
        candidate = random.randint(low, high) if high else 0
        if candidate in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((HOST, candidate))
            except OSError:
                continue
            port: int = sock.getsockname()[1]
        _handed_out.add(port)
        return port
    raise OSError("no free TCP port found on 127.0.0.1")


def with_database(url: str, database: str) -> str:
    """The same server URL, naming another database."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


@dataclass(frozen=True, slots=True)
class _RunAs:
    """Who runs the server commands: ourselves, or ``pgserver`` when we are root."""

    user: int | None = None
    group: int | None = None

    @property
    def extra_groups(self) -> list[int] | None:
        # Drop root's supplementary groups along with its uid.
        return [] if self.user is not None else None


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path.parent.name))


def _has_server(bindir: Path) -> bool:
    return all((bindir / exe).is_file() for exe in ("initdb", "postgres", "pg_ctl", "pg_isready"))


def find_bindir() -> Path:
    """pgserver's bundled binaries, else ``pg_config --bindir``, else the newest
    /usr/lib/postgresql/*/bin."""
    candidates: list[Path] = []
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.origin is not None:
        candidates.append(Path(spec.origin).parent / "pginstall" / "bin")
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            out = subprocess.run(
                [pg_config, "--bindir"], check=True, capture_output=True, text=True, timeout=10
            )
            candidates.append(Path(out.stdout.strip()))
    candidates.extend(
        sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    )
    for bindir in candidates:
        if _has_server(bindir):
            return bindir
    raise PostgresLaunchError(
        "no PostgreSQL server binaries found (install pgserver, or PostgreSQL server package)"
    )


def _pgserver_utils() -> ModuleType:
    # Importing pgserver warns when XDG_RUNTIME_DIR is unset (platformdirs), which
    # filterwarnings=error would turn into an import failure; we use none of that part.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver.utils

    return pgserver.utils


@functools.cache
def _prepare_root(bindir: Path) -> _RunAs:
    """Create the ``pgserver`` user and let it reach the binaries (once per process)."""
    import pwd

    utils = _pgserver_utils()
    utils.ensure_user_exists(SYSTEM_USER)
    entry = pwd.getpwnam(SYSTEM_USER)
    read = stat.S_IRGRP | stat.S_IROTH
    execute = stat.S_IXGRP | stat.S_IXOTH
    # The wheel may sit under /root (mode 0700): open the path down to it, as pgserver does.
    utils.ensure_prefix_permissions(bindir)
    utils.ensure_folder_permissions(bindir, read | execute)
    if (bindir.parent / "lib").is_dir():
        utils.ensure_folder_permissions(bindir.parent / "lib", read)
    return _RunAs(user=entry.pw_uid, group=entry.pw_gid)


class EmbeddedPostgres:
    """A PostgreSQL server of our own on 127.0.0.1, data kept in data_dir between runs."""

    def __init__(self, data_dir: Path, *, port: int, fast: bool = False,
                 bindir: Path | None = None, options: Sequence[str] = ()) -> None:
        """``bindir``: the server binaries to use (default: :func:`find_bindir`);
        ``options``: more ``name=value`` server settings, each passed as ``-c``."""
        self.data_dir = data_dir.expanduser().resolve()
        self.port = port
        self.fast = fast
        self.options = tuple(options)
        self.log_file = self.data_dir / LOG_FILE
        self._bindir: Path | None = bindir
        self._started_here = False
        # Found running on data_dir by start(), not started by us: stop() leaves it be.
        self.adopted_pid: int | None = None

    @property
    def url(self) -> str:
        return self.url_for(SUPERUSER)

    def url_for(self, database: str) -> str:
        return f"postgresql://{SUPERUSER}@{HOST}:{self.port}/{database}"

    # ---- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        """Initialise data_dir if needed, start the server (or adopt the one already
        running on data_dir) and return once it accepts TCP connections.

        A server this object did not start (one left by an earlier run, or started by
        someone else) is adopted: used, never stopped by :meth:`stop`."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        self._prepare_data_dir()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        running = self._running_pid()
        if running is not None:
            self._adopt(running)
            self.adopted_pid = None if self._started_here else running
        else:
            self._pg_ctl_start()
            self._started_here = True
            self.adopted_pid = None
        self._wait_ready(deadline)
        logger.info(
            "postgres ready at %s:%s (data %s)", HOST, self.port, self.data_dir,
            extra={"action": "postgres_ready", "port": self.port},
        )

    def stop(self) -> None:
        """Fast shutdown (rolls back open transactions); nothing to do if not running,
        or if the server was adopted rather than started here."""
        if self._running_pid() is None:
            return
        if self.adopted_pid is not None:
            logger.info(
                "leaving postgres pid %s running on %s: not started here", self.adopted_pid,
                self.data_dir,
                extra={"action": "postgres_left_running", "port": self.port,
                       "pid": self.adopted_pid},
            )
            return
        try:
            self._run(
                [self._bin("pg_ctl"), "stop", "-D", str(self.data_dir), "-m", "fast", "-w",
                 "-t", str(STOP_TIMEOUT_S)],
                timeout=STOP_TIMEOUT_S + 5,
            )
        except PostgresLaunchError:
            # It may have gone away between our look and pg_ctl's.
            if self._running_pid() is not None:
                raise
        logger.info(
            "postgres stopped (data %s)", self.data_dir,
            extra={"action": "postgres_stopped", "port": self.port},
        )

    # ---- steps ----------------------------------------------------------------

    def _prepare_data_dir(self) -> None:
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        uid, gid = (run_as := self._run_as()).user, run_as.group
        if uid is not None and gid is not None:
            _pgserver_utils().ensure_prefix_permissions(self.data_dir)
            if self.data_dir.stat().st_uid != uid:
                # Created by root (e.g. by a test's tmp dir): hand it all over.
                os.chown(self.data_dir, uid, gid)
                for root, dirs, files in os.walk(self.data_dir):
                    for name in (*dirs, *files):
                        os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)
        # PostgreSQL refuses a data directory that others can read.
        self.data_dir.chmod(0o700)

    def _initdb(self) -> None:
        started = time.monotonic()
        args = [
            self._bin("initdb"), "-D", str(self.data_dir), "--auth=trust", f"-U{SUPERUSER}",
            "--encoding=UTF8", "--no-locale", "--no-instructions",
        ]
        if self.fast:
            args.append("--no-sync")
        self._run(args, timeout=120)
        logger.info(
            "initdb done in %.1f s (data %s)", time.monotonic() - started, self.data_dir,
            extra={"action": "postgres_initdb"},
        )

    def _adopt(self, pid: int) -> None:
        port = self._pid_file_line(3)
        if port != str(self.port):
            raise PostgresLaunchError(
                f"a PostgreSQL server (pid {pid}) already runs on {self.data_dir} "
                f"but on port {port}, not {self.port}: stop it or use that port"
            )
        logger.info(
            "reusing postgres pid %s already running on %s", pid, self.data_dir,
            extra={"action": "postgres_reused", "port": self.port, "pid": pid},
        )

    def _pg_ctl_start(self) -> None:
        if ports.in_use(self.port, HOST):
            raise PostgresLaunchError(
                f"port {self.port} on {HOST} is already in use by another program (not a "
                f"PostgreSQL running on {self.data_dir}): stop it or choose another port "
                f"(STRATA_PG_PORT for strata up)"
            )
        options = [
            "-h", HOST, "-p", str(self.port), "-k", str(self._socket_dir()),
            "-c", f"max_connections={MAX_CONNECTIONS}",
        ]
        for option in (*(FAST_OPTIONS if self.fast else ()), *self.options):
            options += ["-c", option]
        logger.info(
            "starting postgres on %s:%s (data %s)", HOST, self.port, self.data_dir,
            extra={"action": "postgres_starting", "port": self.port},
        )
        # pg_ctl detaches the postmaster (own session, output to the log file), so it
        # outlives us unless stop() is called; -w returns once it is ready or dead.
        self._run(
            [self._bin("pg_ctl"), "start", "-D", str(self.data_dir), "-l", str(self.log_file),
             "-w", "-t", str(int(READY_TIMEOUT_S)), "-o", shlex.join(options)],
            timeout=READY_TIMEOUT_S + 5,
        )

    def _wait_ready(self, deadline: float) -> None:
        """Poll pg_isready over TCP: the address the callers will use."""
        args = [self._bin("pg_isready"), "-h", HOST, "-p", str(self.port), "-U", SUPERUSER,
                "-d", SUPERUSER, "-t", "1"]
        while True:
            result = subprocess.run(args, capture_output=True, text=True, timeout=10)
            if result.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise PostgresLaunchError(
                    f"PostgreSQL on {HOST}:{self.port} not ready after {READY_TIMEOUT_S:.0f} s "
                    f"({result.stdout.strip()}){self._log_tail()}"
                )
            time.sleep(0.1)

    # ---- helpers --------------------------------------------------------------

    def _bin_dir(self) -> Path:
        if self._bindir is None:
            self._bindir = find_bindir()
        return self._bindir

    def _run_as(self) -> _RunAs:
        return _prepare_root(self._bin_dir()) if os.geteuid() == 0 else _RunAs()

    def _bin(self, name: str) -> str:
        return str(self._bin_dir() / name)

    def _socket_dir(self) -> Path:
        """The data dir itself (private, mode 0700) unless its path is too long for a
        unix socket; then a private dir under /tmp named after it."""
        if len(str(self.data_dir / f".s.PGSQL.{self.port}.lock")) <= MAX_SOCKET_PATH:
            return self.data_dir
        digest = sha256(str(self.data_dir).encode()).hexdigest()[:12]
        path = Path(tempfile.gettempdir()) / f"strata-pg-{digest}"
        path.mkdir(mode=0o700, exist_ok=True)
        run_as = self._run_as()
        if run_as.user is not None and run_as.group is not None:
            os.chown(path, run_as.user, run_as.group)
        path.chmod(0o700)
        return path

    def _pid_file_line(self, index: int) -> str | None:
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except FileNotFoundError:
            return None
        return lines[index].strip() if len(lines) > index else None

    def _running_pid(self) -> int | None:
        """The postmaster's pid if postmaster.pid names a live process."""
        first = self._pid_file_line(0)
        if first is None or not first.isdigit():
            return None
        pid = int(first)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid  # alive, owned by someone else
        return pid

    def _run(self, args: Sequence[str], *, timeout: float) -> None:
        # Output goes to a file, not a pipe: a postmaster that inherited a pipe would keep
        # it open and make us wait for its exit.
        run_as = self._run_as()
        with tempfile.TemporaryFile("w+") as output:
            try:
                subprocess.run(
                    args, check=True, stdin=subprocess.DEVNULL, stdout=output, stderr=output,
                    text=True, timeout=timeout, cwd="/", user=run_as.user,
                    group=run_as.group, extra_groups=run_as.extra_groups,
                )
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
                output.seek(0)
                raise PostgresLaunchError(
                    f"{Path(args[0]).name} failed ({exc}):\n{output.read().strip()}"
                    f"{self._log_tail()}"
                ) from exc

    def _log_tail(self) -> str:
        try:
            lines = self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        tail = "\n".join(lines[-LOG_TAIL_LINES:])
        return f"\n--- last lines of {self.log_file} ---\n{tail}"
