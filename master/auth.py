"""API tokens: who may call REST and the gRPC client API (``strata.v1.Tasks``).

The master holds the hashes of every token it accepts: those of its settings
(``api_tokens``, ``api_tokens_file``) and those ``strata token create`` stored in the
database, which it reads again about once a second (one read of a table of a handful of
rows), so that a token made or revoked anywhere counts on every master within that. A
token revoked also ends the event streams opened with it (and the first token made, those
opened without one).

When any token exists, every call but ``/healthz``, ``/readyz`` and the dashboard's
static files needs ``Authorization: Bearer <token>``: 401 (gRPC UNAUTHENTICATED)
without one, or with one that is not valid. A master that listens beyond loopback needs
a token from the start (or ``--insecure-no-auth``), and keeps needing one if every token
is revoked.

A token presented is hashed (SHA-256) and compared with every hash known in constant
time. Failed attempts are counted per address in a token bucket (a burst, then so many a
second): an address past it is refused (429, gRPC RESOURCE_EXHAUSTED) before anything it
sends is looked at, and its failures are logged a line per address every so often, with
counts, rather than a line each. The table of addresses is bounded.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from aiohttp import hdrs, web

from strata.common import tokens
from strata.common.errors import (
    ConfigError,
    InvalidInput,
    NotFound,
    RateLimited,
    StrataError,
    Unauthenticated,
)
from strata.common.settings import MasterSettings
from strata.master.db import Database, StoredToken

logger = logging.getLogger(__name__)

REFRESH_S = 1.0
# Where a REST handler finds the token (its hash's digest; None: none was needed) its
# request came with.
TOKEN_KEY = "strata.token"
TOKEN_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
# Failed attempts logged: a line per address at most this often (with counts), and at
# most LOG_BURST lines at once, LOG_RATE a second, across all addresses.
LOG_EVERY_S = 10.0
LOG_BURST = 20
LOG_RATE = 1.0
MAX_PEERS = 10_000
IPV6_GROUP = 64  # an IPv6 host is counted by its /64: one host usually has all of it

Clock = Callable[[], float]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# ---- addresses -------------------------------------------------------------------------

def is_loopback(host: str) -> bool:
    """Whether a listening address reaches this host only: 127.0.0.0/8, ::1, localhost.
    ``0.0.0.0``, ``::`` and an empty host (every interface) do not; nor does a name
    other than localhost (it may resolve anywhere)."""
    text = host.strip().strip("[]").lower()
    if text == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def peer_key(address: str | None) -> str:
    """What failed attempts are counted against: the IPv4 address, an IPv6 address's
    /64, or the text (a Unix socket's path, say)."""
    if not address:
        return "unknown"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{ip.exploded}/{IPV6_GROUP}", strict=False))
    return str(ip)


def grpc_peer_address(peer: str | None) -> str | None:
    """``ipv4:127.0.0.1:5000`` and ``ipv6:[::1]:5000`` (or ``%5B::1%5D``): the host."""
    if not peer:
        return None
    kind, _, rest = unquote(peer).partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0] or rest
    if kind == "ipv6":
        host = rest.rpartition(":")[0] if rest.startswith("[") else rest
        return host.strip("[]")
    return peer


# ---- failed attempts, per address -------------------------------------------------------

@dataclass(slots=True)
class _Peer:
    allowance: float  # failed attempts it may make now
    stamp: float
    failures: int = 0  # since its last log line
    refused: int = 0  # requests refused (over its limit) since its last log line
    since: float = 0.0  # when the counts began
    logged_at: float | None = None
    limited: bool = False


class FailureLimiter:
    """A token bucket of failed attempts per address (``burst``, then ``rate`` a second),
    and the log of them, each bounded: at most ``max_peers`` addresses are kept (the one
    that failed longest ago goes first), and an address's failures are a line every
    LOG_EVERY_S at most, its counts in it."""

    def __init__(self, *, burst: float = 10, rate: float = 1.0, max_peers: int = MAX_PEERS,
                 clock: Clock = time.monotonic) -> None:
        self.burst = float(burst)
        self.rate = float(rate)
        self.max_peers = max_peers
        self._clock = clock
        self._peers: collections.OrderedDict[str, _Peer] = collections.OrderedDict()
        # The log's own bucket, across addresses.
        self._lines = float(LOG_BURST)
        self._lines_stamp = clock()
        self._forgotten = 0  # failures of addresses dropped from the table, not logged

    def __len__(self) -> int:
        return len(self._peers)

    def _peer(self, key: str, now: float) -> _Peer | None:
        peer = self._peers.get(key)
        if peer is not None:
            peer.allowance = min(self.burst, peer.allowance + (now - peer.stamp) * self.rate)
            peer.stamp = now
        return peer

    def refusal(self, key: str) -> float | None:
        """Seconds until ``key`` may try again if it is over its limit (its request is
        refused), else None."""
        now = self._clock()
        peer = self._peer(key, now)
        if peer is None or peer.allowance >= 1:
            # Over its limit until quiet long enough to be back to a full burst: one
            # guessing at the allowed pace is one episode (one line), not one a second.
            if peer is not None and peer.allowance >= self.burst:
                peer.limited = False
            return None
        peer.refused += 1
        if not peer.limited:
            peer.limited = True
            self._log(key, peer, now, limited=True)
        return (1 - peer.allowance) / self.rate

    def failed(self, key: str, *, via: str) -> None:
        """``key`` presented a token that is not valid."""
        now = self._clock()
        peer = self._peer(key, now)
        if peer is None:
            peer = self._peers[key] = _Peer(allowance=self.burst, stamp=now, since=now)
            while len(self._peers) > self.max_peers:
                _, gone = self._peers.popitem(last=False)
                self._forgotten += gone.failures + gone.refused
        self._peers.move_to_end(key)
        peer.allowance -= 1
        if peer.failures == 0 and peer.refused == 0:
            peer.since = now
        peer.failures += 1
        if peer.logged_at is None or now - peer.logged_at >= LOG_EVERY_S:
            self._log(key, peer, now, via=via)

    def flush(self) -> None:
        """Log what is left unlogged of addresses whose last line is old enough, and
        forget the addresses that are back to a full bucket with nothing to log."""
        now = self._clock()
        for key in list(self._peers):
            peer = self._peer(key, now)
            assert peer is not None
            pending = peer.failures or peer.refused
            if pending and (peer.logged_at is None or now - peer.logged_at >= LOG_EVERY_S):
                self._log(key, peer, now)
                pending = peer.failures or peer.refused
            if not pending and peer.allowance >= self.burst:
                del self._peers[key]
        if self._forgotten and self._take_line(now):
            logger.warning("%d failed API token attempts of addresses no longer tracked "
                           "were not logged one by one", self._forgotten,
                           extra={"action": "auth_failures_summary",
                                  "failures": self._forgotten})
            self._forgotten = 0

    def _take_line(self, now: float) -> bool:
        self._lines = min(LOG_BURST, self._lines + (now - self._lines_stamp) * LOG_RATE)
        self._lines_stamp = now
        if self._lines < 1:
            return False
        self._lines -= 1
        return True

    def _log(self, key: str, peer: _Peer, now: float, *, via: str | None = None,
             limited: bool = False) -> None:
        """A line of the address's counts (then reset), if the log has room: otherwise
        the counts wait for a later line."""
        if not self._take_line(now):
            return
        extra: dict[str, Any] = {"peer": key, "failures": peer.failures,
                                 "refused": peer.refused}
        if via is not None:
            extra["via"] = via
        if limited:
            wait = (1 - peer.allowance) / self.rate
            logger.warning(
                "%s is over its limit of failed API token attempts: its requests are "
                "refused (429) for %.1fs, then allowed %g a second", key, wait, self.rate,
                extra={"action": "auth_rate_limited", **extra})
        elif peer.failures + peer.refused <= 1:
            logger.warning("an API token that is not valid, from %s", key,
                           extra={"action": "auth_failed", **extra})
        else:
            logger.warning(
                "%d API tokens that are not valid, and %d requests refused over the "
                "limit, from %s in the last %.0fs", peer.failures, peer.refused, key,
                now - peer.since, extra={"action": "auth_failed", **extra})
        peer.failures = peer.refused = 0
        peer.since = now
        peer.logged_at = now


# ---- the guard -------------------------------------------------------------------------

def bearer(authorization: str | None) -> str | None:
    """The token of ``Authorization: Bearer <token>``; None without one (no header, or
    another scheme). ``Bearer`` alone is the empty token (not valid)."""
    if authorization is None:
        return None
    scheme, _, rest = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return rest.strip()


class Guard:
    """The tokens a master accepts, and the check of each call."""

    def __init__(self, configured: Iterable[str] = (), stored: Iterable[str] = (), *,
                 fail_closed: bool = False, limiter: FailureLimiter | None = None) -> None:
        self._configured = frozenset(tokens.digests(configured))
        self._fail_closed = fail_closed
        self.limiter = limiter if limiter is not None else FailureLimiter()
        self._used: set[bytes] = set()
        self._changed = asyncio.Event()
        self._refresh_failing = False
        self._stored: dict[bytes, str] = self._digests(stored)
        self._known: tuple[bytes, ...] = tuple(sorted(self._configured | self._stored.keys()))

    @property
    def required(self) -> bool:
        """Whether a call needs a token: when any exists, or always on a master that
        listens beyond loopback (unless --insecure-no-auth)."""
        return bool(self._known) or self._fail_closed

    @property
    def counts(self) -> tuple[int, int]:
        """(tokens from the settings, tokens in the database)."""
        return len(self._configured), len(self._stored)

    @staticmethod
    def _digests(hashes: Iterable[str]) -> dict[bytes, str]:
        return {bytes.fromhex(h.removeprefix(tokens.HASH_PREFIX)): h for h in hashes}

    def _set_stored(self, hashes: Iterable[str]) -> bool:
        """Take the database's tokens as read now; whether they changed."""
        stored = self._digests(hashes)
        if stored.keys() == self._stored.keys():
            return False
        was = self.required
        self._stored = stored
        self._known = tuple(sorted(self._configured | stored.keys()))
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        if was and not self.required:
            logger.warning("no API token is left: the API is open to whoever reaches "
                           "this master's loopback address",
                           extra={"action": "auth_disabled"})
        elif not was and self.required:
            logger.info("an API token exists now: every API call needs one",
                        extra={"action": "auth_enabled"})
        return True

    def accepts(self, digest: bytes | None) -> bool:
        """Whether a call with the token of ``digest`` (None: none) gets through."""
        return not self.required or (digest is not None and digest in self._known)

    def _match(self, digest: bytes) -> bytes | None:
        """The known digest equal to ``digest``: compared with every one, in constant
        time, whichever matches."""
        found = None
        for known in self._known:
            if hmac.compare_digest(digest, known):
                found = known
        return found

    def check(self, peer: str | None, authorization: str | None, *, via: str
              ) -> bytes | None:
        """The digest of the token the call came with (None: none is needed); raises
        :class:`RateLimited` for an address over its limit of failures, without a look
        at the token, and :class:`Unauthenticated` for a token missing or not valid."""
        if not self.required:
            return None
        key = peer_key(peer)
        wait = self.limiter.refusal(key)
        if wait is not None:
            raise RateLimited(f"too many API tokens that are not valid from {key}: try "
                              f"again in {math.ceil(wait)}s", retry_after_s=wait)
        token = bearer(authorization)
        if token is None:
            raise Unauthenticated("this API needs a token: send Authorization: Bearer "
                                  "<token> (`strata token create NAME` makes one)")
        found = self._match(hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest())
        if found is None:
            self.limiter.failed(key, via=via)
            raise Unauthenticated("the API token is not valid: wrong, or revoked",
                                  invalid_token=True)
        self._used.add(found)
        return found

    def check_grpc(self, context: Any) -> bytes | None:
        """:meth:`check` of a gRPC call (a grpc.aio.ServicerContext): its peer and its
        ``authorization`` metadata."""
        header = next((value for key, value in context.invocation_metadata() or ()
                       if key == "authorization" and isinstance(value, str)), None)
        return self.check(grpc_peer_address(context.peer()), header, via="grpc")

    async def until_refused(self, digest: bytes | None) -> None:
        """Return once a call with the token of ``digest`` would be refused: the token
        revoked, or (None: a call without one) a token needed now."""
        while True:
            changed = self._changed
            if not self.accepts(digest):
                return
            await changed.wait()

    async def refresh(self, db: Database) -> None:
        """Read the database's tokens again; mark those used since the last time."""
        if self._set_stored(await db.tokens.hashes()):
            configured, stored = self.counts
            logger.info("API tokens changed: %d in the database, %d from the settings",
                        stored, configured, extra={"action": "auth_tokens_changed"})
        used = [self._stored[d] for d in self._used if d in self._stored]
        self._used.clear()
        if used:
            await db.tokens.touch(used)

    async def run(self, db: Database, *, every_s: float = REFRESH_S) -> None:
        """Refresh every ``every_s`` for ever. While the database cannot be read, the
        tokens read last stay."""
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.refresh(db)
            except StrataError as exc:
                if not self._refresh_failing:
                    logger.warning("cannot read the API tokens (the ones read last still "
                                   "count): %s", exc, extra={"action": "auth_refresh_failed"})
                self._refresh_failing = True
            else:
                if self._refresh_failing:
                    logger.info("reading the API tokens again",
                                extra={"action": "auth_refresh_recovered"})
                self._refresh_failing = False
            self.limiter.flush()


def exposed(settings: MasterSettings) -> list[str]:
    """The listening addresses that are not loopback, as ``name host``."""
    return [f"{name} {host or '(every interface)'}"
            for name, host in (("http_host", settings.http_host),
                               ("grpc_host", settings.grpc_host))
            if not is_loopback(host)]


def configured_hashes(settings: MasterSettings) -> list[str]:
    """The hashes of the settings' tokens: api_tokens, and api_tokens_file's."""
    file = tokens.read_file(settings.api_tokens_file) if settings.api_tokens_file else []
    return [*settings.api_tokens, *file]


async def start(settings: MasterSettings, db: Database) -> Guard:
    """The master's guard, from its settings and its database; :class:`ConfigError`
    when it would listen beyond loopback with no token at all."""
    configured = configured_hashes(settings)
    stored = await db.tokens.hashes()
    beyond = exposed(settings)
    if beyond and not configured and not stored and not settings.insecure_no_auth:
        raise ConfigError(
            f"the master would listen beyond loopback ({', '.join(beyond)}) with no API "
            "token: anyone who reaches it could use the API. Make a token first: "
            "`strata token create NAME` (stored in this database), or set "
            "STRATA_API_TOKENS (or STRATA_API_TOKENS_FILE); or, to serve without one, "
            "--insecure-no-auth")
    guard = Guard(configured, stored, fail_closed=bool(beyond) and not settings.insecure_no_auth,
                  limiter=FailureLimiter(burst=settings.auth_failure_burst,
                                         rate=settings.auth_failure_rate))
    if settings.insecure_no_auth:
        if beyond and not guard.required:
            why = f"the API is served without any token to whoever reaches {', '.join(beyond)}"
        else:
            why = "set, but not needed: a token is needed whenever one exists"
        logger.warning("--insecure-no-auth: %s", why, extra={"action": "insecure_no_auth"})
    configured_n, stored_n = guard.counts
    if guard.required:
        logger.info("API tokens needed: %d from the settings, %d in the database",
                    configured_n, stored_n, extra={"action": "auth_enabled"})
    else:
        logger.info("no API token exists: the API is open to whoever reaches %s "
                    "(`strata token create NAME` makes one)",
                    ", ".join(sorted({settings.http_host, settings.grpc_host})),
                    extra={"action": "auth_open"})
    return guard


def middleware(guard: Guard, is_open: Callable[[web.Request], bool]) -> Any:
    """REST's check: every request but those ``is_open`` lets through needs a token
    (raised as :class:`Unauthenticated` or :class:`RateLimited`, which the errors
    middleware outside this one answers)."""

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not is_open(request):
            request[TOKEN_KEY] = guard.check(
                request.remote, request.headers.get(hdrs.AUTHORIZATION), via="rest")
        return await handler(request)

    return authenticate


# ---- strata token create / list / revoke -----------------------------------------------

def check_name(name: str) -> str:
    if not re.fullmatch(TOKEN_NAME_PATTERN, name):
        raise InvalidInput(f"not a token name: {name!r}: 1 to 64 letters, digits and _.:-, "
                           "starting with a letter or a digit")
    return name


@contextlib.asynccontextmanager
async def _database(settings: MasterSettings) -> AsyncIterator[Database]:
    if not settings.database_url:
        raise ConfigError("no database configured: set STRATA_DATABASE_URL or DATABASE_URL")
    db = await Database.connect(settings.database_url, pool_size=2)
    try:
        await db.migrate()  # the table may not exist yet: no master has started
        yield db
    finally:
        await db.close()


async def create_token(settings: MasterSettings, name: str) -> tuple[str, StoredToken]:
    """A new random token named ``name``, its hash stored: the token (shown once) and
    its row. A name taken is a Conflict."""
    check_name(name)
    token = tokens.new_token()
    async with _database(settings) as db:
        return token, await db.tokens.create(name, tokens.hash_token(token))


async def list_tokens(settings: MasterSettings) -> list[StoredToken]:
    async with _database(settings) as db:
        return await db.tokens.all()


async def revoke_token(settings: MasterSettings, name: str) -> None:
    """No such token is NotFound."""
    async with _database(settings) as db:
        if not await db.tokens.revoke(name):
            raise NotFound(f"no API token named {name!r} (`strata token list` lists them)")
