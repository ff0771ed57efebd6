"""gRPC clients for the regions, one channel per region address.

With TLS the master checks that whoever answers at a region's address holds that
region's certificate (its name, not the address dialled: regions advertise IPs, compose
service names or proxies), and a certificate reload moves the next calls to new
channels."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from strata.common import channels
from strata.common.breaker import CircuitBreaker, RetryPolicy
from strata.common.tls import Tls, region_name
from strata.proto import strata_pb2_grpc as rpc

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Link:
    address: str
    dial: channels.Dial[rpc.RegionStub]


# Delegation retries briefly: a batch that cannot go now goes back to pending and the
# next scan offers it to whichever region answers.
DELEGATE_RETRY = RetryPolicy(attempts=2, initial_s=0.05, max_wait_s=0.2, deadline_s=6.0)


class RegionClients:
    """One channel and one breaker per region (this master's view of each link)."""

    def __init__(self, *, failure_threshold: int = 3, reset_timeout_s: float = 2.0,
                 tls: Tls | None = None) -> None:
        self._tls = tls
        self._links: dict[str, _Link] = {}
        self._breakers: dict[str, CircuitBreaker] = {}
        self._threshold = failure_threshold
        self._reset_timeout_s = reset_timeout_s

    def breaker(self, name: str) -> CircuitBreaker:
        breaker = self._breakers.get(name)
        if breaker is None:
            breaker = CircuitBreaker(
                f"master->{name}", failure_threshold=self._threshold,
                reset_timeout_s=self._reset_timeout_s, retry=DELEGATE_RETRY,
            )
            self._breakers[name] = breaker
        return breaker

    def breakers(self) -> list[CircuitBreaker]:
        return list(self._breakers.values())

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
            dial = channels.Dial(address, rpc.RegionStub, tls=self._tls,
                                 server_name=region_name(name),
                                 grace_s=DELEGATE_RETRY.deadline_s + 1)
            link = _Link(address=address, dial=dial)
            self._links[name] = link
        return link.dial.stub

    async def close(self) -> None:
        for link in self._links.values():
            await link.dial.close()
        self._links.clear()
