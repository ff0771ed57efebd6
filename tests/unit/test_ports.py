"""A port something listens on is reported before anything starts, by number and role."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from strata.local import ports
from strata.local.postgres import free_port


def test_a_listening_port_is_in_use_and_named() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        taken = sock.getsockname()[1]
        assert ports.in_use(taken)
        free = ports.Port(number=free_port(), what="a free one")
        with pytest.raises(ports.PortInUse) as raised:
            ports.ensure_free([free, ports.Port(number=taken, what="the master's HTTP port")],
                              hint="stop it")
    assert str(raised.value) == (f"port {taken} (the master's HTTP port) is already in use "
                                 "by another program; stop it")
    assert raised.value.port.number == taken


def test_a_closed_port_is_free() -> None:
    port = free_port()
    assert not ports.in_use(port)
    ports.ensure_free([ports.Port(number=port, what="x")], hint="-")


def test_free_ports_lie_below_the_ephemeral_range_and_never_repeat() -> None:
    """Ports the kernel hands to port-0 listeners and outgoing connections come from the
    ephemeral range: a port picked there for a server that starts later can be taken
    meanwhile."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    picked = [free_port() for _ in range(200)]
    assert len(set(picked)) == len(picked)
    assert all(10_000 <= p < low for p in picked), picked
