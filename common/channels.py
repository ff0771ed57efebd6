"""gRPC channels for every link, set up the same way.

Retry timing belongs to our breakers and tenacity policies; gRPC's own reconnect
backoff (1 s growing to 120 s by default) would otherwise keep a channel failing every
call long after the other side is back, e.g. a region after its master restarted.

With TLS (:class:`strata.common.tls.Tls`) every channel and port is mutual TLS; a
client names the identity it expects of the server (``server_name``, checked against
the certificate's names instead of the dialled host)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from strata.common.tls import Tls

OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # Notice a dead peer on an idle link within seconds, not at the next call.
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
)

# A server must accept the clients' keepalive pings rather than close the connection.
SERVER_OPTIONS = (
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_ping_strikes", 0),
)


StubT = TypeVar("StubT")


def channel(address: str, *, tls: Tls | None = None,
            server_name: str | None = None) -> grpc.aio.Channel:
    """A channel to ``address``: plaintext, or mutual TLS with the current credentials
    of ``tls`` and the server's certificate checked for ``server_name`` (default: the
    host of ``address``)."""
    if tls is None:
        return grpc.aio.insecure_channel(address, options=OPTIONS)
    options: tuple[tuple[str, int | str], ...] = OPTIONS
    if server_name:
        options += (("grpc.ssl_target_name_override", server_name),)
    return grpc.aio.secure_channel(address, tls.channel_credentials(), options=options)


def server() -> grpc.aio.Server:
    return grpc.aio.server(options=SERVER_OPTIONS)


def listen(server: grpc.aio.Server, address: str, tls: Tls | None = None) -> int:
    """Listen on ``address`` (HOST:PORT): plaintext, or mutual TLS that requires a
    client certificate of the CA and takes a reloaded certificate from the next
    handshake on. Returns the port."""
    if tls is None:
        return int(server.add_insecure_port(address))
    return int(server.add_secure_port(address, tls.server_credentials()))


class Dial(Generic[StubT]):
    """A stub on a channel to one address. After a TLS reload the next call gets a new
    channel, made with the new credentials; the old one closes once the calls on it
    are done (within ``grace_s``, longer than any call made on it may take)."""

    def __init__(self, address: str, make_stub: Callable[[grpc.aio.Channel], StubT], *,
                 tls: Tls | None = None, server_name: str | None = None,
                 grace_s: float = 10.0) -> None:
        self.address = address
        self._make_stub = make_stub
        self._tls = tls
        self._server_name = server_name
        self._grace_s = grace_s
        self._closing: set[asyncio.Task[None]] = set()
        self._generation, self._channel, self._stub = self._dial()

    def _dial(self) -> tuple[int, grpc.aio.Channel, StubT]:
        made = channel(self.address, tls=self._tls, server_name=self._server_name)
        return (self._tls.generation if self._tls else 0), made, self._make_stub(made)

    @property
    def stub(self) -> StubT:
        if self._tls is not None and self._tls.generation != self._generation:
            old = self._channel
            self._generation, self._channel, self._stub = self._dial()
            task = asyncio.create_task(old.close(self._grace_s), name="close-old-channel")
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        return self._stub

    async def close(self) -> None:
        await self._channel.close(None)
        for task in list(self._closing):
            task.cancel()
        await asyncio.gather(*self._closing, return_exceptions=True)


def serve_health_and_reflection(server: grpc.aio.Server, services: list[str]
                                ) -> health.aio.HealthServicer:
    """The standard health service (each of ``services`` and the server as a whole,
    ``""``, SERVING) and server reflection, so that grpcurl and load balancers work.
    Returns the health servicer: set NOT_SERVING on it when stopping."""
    checks = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    reflection.enable_server_reflection(
        (*services, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    return checks


async def set_serving(checks: health.aio.HealthServicer, services: list[str],
                      serving: bool) -> None:
    status = (health_pb2.HealthCheckResponse.SERVING if serving
              else health_pb2.HealthCheckResponse.NOT_SERVING)
    for name in ("", *services):
        await checks.set(name, status)
