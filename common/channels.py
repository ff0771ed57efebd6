"""gRPC channels for every link, set up the same way.

Retry timing belongs to our breakers and tenacity policies; gRPC's own reconnect
backoff (1 s growing to 120 s by default) would otherwise keep a channel failing every
call long after the other side is back, e.g. a region after its master restarted."""

from __future__ import annotations

import grpc

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


def channel(address: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, options=OPTIONS)


def server() -> grpc.aio.Server:
    return grpc.aio.server(options=SERVER_OPTIONS)
