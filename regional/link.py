"""The region's calls up to the master: register, heartbeat, report, hand back.

Each call goes through one breaker (tenacity retries inside it). Only registering and
heartbeats renew the region's lease: the master judges a region by its heartbeats, and
answers a report even from a region it has already declared down. The link knows
nothing of the coordinator: the composition root (``regional.app``) builds what it
sends and applies what comes back.

With several masters (``--master a:50051,b:50051``, or a name that resolves to several
addresses) the region talks to one at a time: the first of its list, at first (give
regions their lists in other orders to spread them over the masters). A call that
master cannot answer (unreachable, or its breaker open) goes to the next one at once:
every master reads and writes the same database, so the region keeps its tasks and its
lease, and its next heartbeat comes in time. It stays with the master that answers.

With TLS the master must present the master's certificate (whatever address it is
dialled at), and a certificate reload moves the next calls to a new channel. A master
that refuses this region's certificate (PERMISSION_DENIED: it is not the certificate of
a region of this name) is a configuration error: registering gives up at once."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import grpc

from strata.common import channels
from strata.common.breaker import TRANSIENT_GRPC, CircuitBreaker, RetryPolicy
from strata.common.errors import CircuitOpen, ConfigError
from strata.common.events import TaskRef
from strata.common.retry import Backoff, keep_trying
from strata.common.settings import RegionalSettings
from strata.common.tls import MASTER_NAME, Tls
from strata.proto import strata_pb2 as pb
from strata.proto import strata_pb2_grpc as rpc
from strata.regional.lease import Lease

logger = logging.getLogger(__name__)

CALL_TIMEOUT_S = 5.0
REGISTER_BACKOFF = Backoff(initial_s=0.05, max_s=2.0)
# Calls up to the master retry briefly; what still fails stays buffered and is tried
# again, so nothing is lost while the breaker is open.
MASTER_RETRY = RetryPolicy(attempts=3, initial_s=0.05, max_wait_s=0.5, deadline_s=8.0)

T = TypeVar("T")
Resolve = Callable[[str, int], Awaitable[list[str]]]


def split_masters(value: str) -> list[str]:
    """``--master``: one HOST:PORT or several, comma-separated (ConfigError if none)."""
    addresses = [a.strip() for a in value.split(",") if a.strip()]
    if not addresses:
        raise ConfigError(f"--master: no address in {value!r}: HOST:PORT[,HOST:PORT...]")
    for address in addresses:
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"--master: {address!r} is not HOST:PORT")
    return list(dict.fromkeys(addresses))


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def pick_addresses(infos: Sequence[tuple[int, str]]) -> list[str]:
    """Of what a name resolved to (family, address), the addresses to dial one by one:
    the IPv4 ones if there are several, else the IPv6 ones if there are several, else
    none (one machine: gRPC dials the name itself)."""
    for family in (socket.AF_INET, socket.AF_INET6):
        found = list(dict.fromkeys(a for f, a in infos if f == family))
        if len(found) > 1:
            return found
    return []


async def resolve(host: str, port: int) -> list[str]:
    """The addresses ``host`` names when it names several machines (see
    :func:`pick_addresses`); [] when it names one, is an address, or does not resolve."""
    try:
        ipaddress.ip_address(host.strip("[]"))
        return []
    except ValueError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM)
    except OSError:
        return []
    return [_join(a, port) for a in pick_addresses([(i[0], str(i[4][0])) for i in infos])]


class Masters:
    """The masters a region may talk to, and which one it talks to now."""

    def __init__(self, configured: Sequence[str], resolver: Resolve = resolve) -> None:
        self.configured = list(configured)
        self._resolver = resolver
        self.addresses = list(configured)
        self._index = 0

    @property
    def current(self) -> str:
        return self.addresses[self._index]

    async def expand(self) -> None:
        """Resolve the configured names again: one that names several machines stands
        for each of them."""
        expanded: list[str] = []
        for address in self.configured:
            host, _, port = address.rpartition(":")
            expanded += await self._resolver(host, int(port)) or [address]
        expanded = list(dict.fromkeys(expanded))
        if expanded != self.addresses:
            current = self.current
            self.addresses = expanded
            self._index = (expanded.index(current) if current in expanded
                           else self._index % len(expanded))

    def move_on(self) -> str:
        self._index = (self._index + 1) % len(self.addresses)
        return self.current


class MasterLink:
    def __init__(self, settings: RegionalSettings, lease: Lease, tls: Tls | None = None,
                 *, resolver: Resolve = resolve) -> None:
        self._settings = settings
        self._lease = lease
        self._tls = tls
        self.masters = Masters(split_masters(settings.master), resolver)
        self._dials: dict[str, channels.Dial[rpc.MasterStub]] = {}
        self._breakers: dict[str, CircuitBreaker] = {}
        self._expanded = False

    @property
    def address(self) -> str:
        """The master this region talks to now."""
        return self.masters.current

    @property
    def breaker(self) -> CircuitBreaker:
        """The breaker of the master this region talks to now."""
        return self._breaker(self.address)

    def breakers(self) -> list[CircuitBreaker]:
        return list(self._breakers.values())

    def _breaker(self, address: str) -> CircuitBreaker:
        if address not in self._breakers:
            name = (f"{self._settings.name}->master" if len(self.masters.addresses) == 1
                    else f"{self._settings.name}->master@{address}")
            self._breakers[address] = CircuitBreaker(
                name, failure_threshold=self._settings.breaker_failures,
                reset_timeout_s=self._settings.breaker_reset.total_seconds(),
                retry=MASTER_RETRY)
        return self._breakers[address]

    def _stub(self, address: str) -> rpc.MasterStub:
        if address not in self._dials:
            self._dials[address] = channels.Dial(
                address, rpc.MasterStub, tls=self._tls, server_name=MASTER_NAME,
                grace_s=2 * CALL_TIMEOUT_S)
        return self._dials[address].stub

    async def _call(self, what: str, call: Callable[[rpc.MasterStub], Awaitable[T]], *,
                    probe: bool = False) -> T:
        """``call`` on the master of now, through its breaker; if it cannot answer, on
        each of the others in turn. The last failure is raised. A ``probe`` goes out
        once even through an open breaker (see :meth:`CircuitBreaker.probe`)."""
        if not self._expanded:
            await self.masters.expand()
            self._expanded = True
        tried = 0
        while True:
            address = self.masters.current
            try:
                breaker = self._breaker(address)
                run = breaker.probe if probe else breaker.call
                return await run(functools.partial(call, self._stub(address)))
            except (grpc.aio.AioRpcError, CircuitOpen) as exc:
                tried += 1
                if not _elsewhere(exc) or len(self.masters.addresses) < 2:
                    raise
                if tried >= len(self.masters.addresses):
                    self._expanded = False  # the names may stand for others by now
                    raise
                moved = self.masters.move_on()
                logger.warning(
                    "%s: master %s cannot answer (%s); trying master %s", what, address,
                    _why(exc), moved,
                    extra={"action": "master_switched", "region": self._settings.name,
                           "master": moved},
                )

    async def register(self) -> pb.RegisterReply:
        """Register, retrying until a master answers. The reply's lease and heartbeat
        interval are the master's: it judges the region by them."""
        request = pb.RegisterRequest(
            region=self._settings.name, address=self._settings.advertised_address
        )
        try:
            reply: pb.RegisterReply = await keep_trying(
                f"registering with master {self._settings.master}",
                lambda: self._call("register", lambda stub: stub.Register(
                    request, timeout=CALL_TIMEOUT_S)),
                REGISTER_BACKOFF, retry_on=_worth_retrying,
                action="register_failed", extra={"region": self._settings.name},
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.PERMISSION_DENIED:
                raise
            logger.error(
                "the master refused this region's certificate: %s", exc.details(),
                extra={"action": "register_refused", "region": self._settings.name},
            )
            raise ConfigError(f"master {self.address} refused region "
                              f"{self._settings.name}: {exc.details()}") from None
        if reply.lease_s > 0:
            self._lease.lease_s = reply.lease_s
        self._lease.renew()
        logger.info(
            "registered with master %s as %s", self.address, self._settings.name,
            extra={"action": "region_registered", "region": self._settings.name},
        )
        return reply

    async def heartbeat(self, request: pb.RegionHeartbeat, *, deadline_s: float
                        ) -> pb.HeartbeatReply | None:
        """One beat; None if no master could be reached (logged). A beat is the
        breaker's trial: it goes out while the breaker cools down, because a master
        back from a restart declares a region down after a dead-after of silence, and
        a cool-down is about as long."""
        try:
            reply: pb.HeartbeatReply = await self._call(
                "heartbeat", lambda stub: stub.Heartbeat(request, timeout=deadline_s),
                probe=True)
        except (grpc.aio.AioRpcError, CircuitOpen) as exc:
            logger.warning(
                "heartbeat to master failed: %s", _why(exc),
                extra={"action": "heartbeat_failed", "region": self._settings.name},
            )
            return None
        return reply

    async def report(self, events: list[pb.TaskEvent]) -> list[TaskRef]:
        """Deliver events (or raise); returns the attempts the master no longer owns."""
        request = pb.ReportRequest(region=self._settings.name, events=events)
        reply = await self._call(
            "report", lambda stub: stub.Report(request, timeout=CALL_TIMEOUT_S))
        logger.debug("master applied %d of %d events", reply.applied, len(events),
                     extra={"action": "reported", "region": self._settings.name})
        return [TaskRef(r.task_id, r.attempt) for r in reply.stale]

    async def hand_back(self, specs: Sequence[pb.TaskSpec], reason: str) -> None:
        request = pb.HandBackRequest(
            region=self._settings.name,
            tasks=[pb.TaskRef(task_id=s.id, attempt=s.attempt) for s in specs],
            reason=reason,
        )
        reply = await self._call(
            "hand back", lambda stub: stub.HandBack(request, timeout=CALL_TIMEOUT_S))
        # Fewer back than sent: the rest were no longer ours (reclaimed, cancelled).
        logger.info(
            "master took back %d of %d tasks (%s)", reply.returned, len(specs), reason,
            extra={"action": "hand_back_done", "region": self._settings.name},
        )

    async def close(self) -> None:
        await asyncio.gather(*(d.close() for d in self._dials.values()))


def _elsewhere(exc: BaseException) -> bool:
    """Worth trying another master: this one could not be reached or did not answer in
    time (another reads the same database)."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code() in TRANSIENT_GRPC
    return isinstance(exc, CircuitOpen)


def _worth_retrying(exc: BaseException) -> bool:
    """A master that cannot be reached yet is waited for; one that refuses us is not."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return bool(exc.code() != grpc.StatusCode.PERMISSION_DENIED)
    return isinstance(exc, CircuitOpen)


def _why(exc: BaseException) -> str:
    return exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
