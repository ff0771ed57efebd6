"""Whether the ports a local run is about to listen on are free, checked before anything
is started: a taken port is then one clear refusal naming it, not a process that dies
and is restarted over and over."""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from strata.common.errors import StrataError

# The wildcard address: binding it fails if anything listens on the port at any local
# IPv4 address, whichever one the process would have used.
ANY_HOST = "0.0.0.0"


@dataclass(frozen=True, slots=True, kw_only=True)
class Port:
    number: int
    what: str  # "the master's HTTP port", for the message


class PortInUse(StrataError):
    code = "port_in_use"

    def __init__(self, port: Port, hint: str) -> None:
        super().__init__(f"port {port.number} ({port.what}) is already in use by another "
                         f"program; {hint}")
        self.port = port


def in_use(port: int, host: str = ANY_HOST) -> bool:
    """Whether a server of ours could not listen on ``host:port`` now. SO_REUSEADDR, as
    our servers set it, so connections of an earlier run left in TIME_WAIT do not count;
    a socket that listens there does."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def ensure_free(ports: Iterable[Port], *, hint: str) -> None:
    """Raise :class:`PortInUse` for the first port something already listens on."""
    for port in ports:
        if in_use(port.number):
            raise PortInUse(port, hint)
