"""The floor under due -> started: what one hop between two processes costs on this
machine, idle between calls (as at 50 tasks/s) and back to back (as under load).

A server process serves the region's own gRPC service (``Delegate`` answered empty,
``Connect`` echoing an acknowledgement per event batch) and a plain TCP echo; a client
process times, one call at a time:

- a TCP round trip (asyncio streams): the operating system's share;
- a unary ``Delegate`` call: the master -> region hop;
- a message and its answer on an open ``Connect`` stream: the region <-> worker hop.

Each is timed after a pause of ``--gap`` seconds (the machine idles, as between tasks at
a light load) and with no pause. Printed: the median of each.

Run: python -m bench.grpc_floor [--calls 300] [--gap 0.02]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from strata.local.cluster import wait_until
from strata.local.postgres import free_port
from strata.proto import strata_pb2 as pb
from strata.proto import strata_pb2_grpc as rpc


class Echo(rpc.RegionServicer):
    async def Delegate(self, request: pb.DelegateRequest, context: Any) -> pb.DelegateReply:
        return pb.DelegateReply()

    async def Connect(self, requests: AsyncIterator[pb.WorkerMessage],
                      context: Any) -> AsyncIterator[pb.RegionMessage]:
        async for message in requests:
            yield pb.RegionMessage(ack=pb.Ack(seq=message.events.seq))


async def _echo_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(100):
        writer.write(data)
        await writer.drain()


async def serve(grpc_port: int, tcp_port: int) -> None:
    server = grpc.aio.server()
    rpc.add_RegionServicer_to_server(Echo(), server)
    server.add_insecure_port(f"127.0.0.1:{grpc_port}")
    await server.start()
    tcp = await asyncio.start_server(_echo_tcp, "127.0.0.1", tcp_port)
    async with tcp:
        await server.wait_for_termination()


async def _median_ms(call: Callable[[], Awaitable[object]], calls: int, gap: float) -> float:
    for _ in range(20):  # warm up: connections made, code paths taken
        await call()
    times = []
    for _ in range(calls):
        if gap:
            await asyncio.sleep(gap)
        began = time.perf_counter()
        await call()
        times.append(time.perf_counter() - began)
    return statistics.median(times) * 1000


async def measure(grpc_port: int, tcp_port: int, calls: int, gap: float) -> None:
    async def tcp_ready() -> bool:
        try:
            _, w = await asyncio.open_connection("127.0.0.1", tcp_port)
        except OSError:
            return False
        w.close()
        return True

    await wait_until(tcp_ready, timeout_s=20, what="the echo server")
    reader, writer = await asyncio.open_connection("127.0.0.1", tcp_port)

    async def tcp_round_trip() -> None:
        writer.write(b"x")
        await reader.read(100)

    channel = grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}")
    stub = rpc.RegionStub(channel)
    stream = stub.Connect()
    seq = 0

    async def unary() -> None:
        await stub.Delegate(pb.DelegateRequest())

    async def stream_round_trip() -> None:
        nonlocal seq
        seq += 1
        await stream.write(pb.WorkerMessage(events=pb.EventBatch(seq=seq)))
        await stream.read()

    for name, call in (("TCP round trip", tcp_round_trip), ("gRPC unary call", unary),
                       ("gRPC stream round trip", stream_round_trip)):
        idle = await _median_ms(call, calls, gap)
        busy = await _median_ms(call, calls, 0.0)
        print(f"{name}: p50 {idle:.2f} ms after {gap * 1000:.0f} ms idle, "
              f"{busy:.2f} ms back to back", flush=True)
    stream.cancel()
    await channel.close()
    writer.close()


def main(args: argparse.Namespace) -> None:
    grpc_port, tcp_port = free_port(), free_port()
    server = subprocess.Popen([sys.executable, "-m", "bench.grpc_floor", "--serve",
                               str(grpc_port), str(tcp_port)])
    try:
        asyncio.run(measure(grpc_port, tcp_port, args.calls, args.gap))
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--calls", type=int, default=300)
    p.add_argument("--gap", type=float, default=0.02, help="seconds idle before each call")
    p.add_argument("--serve", nargs=2, type=int, metavar=("GRPC_PORT", "TCP_PORT"),
                   help=argparse.SUPPRESS)
    parsed = p.parse_args()
    if parsed.serve:
        asyncio.run(serve(*parsed.serve))
    else:
        main(parsed)
