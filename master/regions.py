"""gRPC clients for the regions, one channel per region address."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc

from proto import strata_pb2_grpc as rpc

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Link:
    address: str
    channel: grpc.aio.Channel
    stub: rpc.RegionStub


class RegionClients:
    def __init__(self) -> None:
        self._links: dict[str, _Link] = {}

    def stub(self, name: str, address: str) -> rpc.RegionStub:
        link = self._links.get(name)
        if link is None or link.address != address:
            if link is not None:
                logger.info(
                    "region %s moved to %s", name, address,
                    extra={"action": "region_address_changed", "region": name},
                )
                # The old channel is closed when the garbage collector finds it;
                # in-flight calls on it finish first.
            channel = grpc.aio.insecure_channel(address)
            link = _Link(address=address, channel=channel, stub=rpc.RegionStub(channel))
            self._links[name] = link
        return link.stub

    async def close(self) -> None:
        for link in self._links.values():
            await link.channel.close(None)
        self._links.clear()
