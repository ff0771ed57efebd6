"""Mutual TLS between the tiers, at run time: a process's CA, certificate and key
(``STRATA_TLS_CA``, ``STRATA_TLS_CERT``, ``STRATA_TLS_KEY``: all three or none), the
credentials made of them, reloading them on SIGHUP, and who a peer is.

When set, every gRPC link is mutual TLS: each server requires a client certificate
signed by the CA and each client verifies the server's against it. Who may call what is
decided from the peer's certificate (its ``strata:<role>[:<name>]`` URI, see
:mod:`strata.common.certs`) by the servicers, with :func:`require`.

Reloading: :meth:`Tls.reload` (on SIGHUP) reads the three files again. gRPC servers use
dynamic credentials that take the new certificate for every handshake from then on;
clients make a new channel for their next call (:class:`strata.common.channels.Dial`);
the REST server's SSL context loads the new chain in place. A reload that fails (a file
missing, a key that is not the certificate's) is logged and changes nothing.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from strata.common.certs import URI_PREFIX
from strata.common.errors import ConfigError

logger = logging.getLogger(__name__)

# The names clients expect a server's certificate to carry (grpc.ssl_target_name_override):
# the master's, and each region's own name (see strata.common.certs).
MASTER_NAME = "master"
ENV = ("STRATA_TLS_CA", "STRATA_TLS_CERT", "STRATA_TLS_KEY")


def region_name(name: str) -> str:
    """The name a region's certificate answers to: the master dials it by this."""
    return name.lower()


class _HasTls(Protocol):
    tls_ca: Path | None
    tls_cert: Path | None
    tls_key: Path | None


@dataclass(frozen=True, slots=True)
class Files:
    ca: Path
    cert: Path
    key: Path


def files_of(settings: _HasTls) -> Files | None:
    """The three files, or None when TLS is off; some but not all is a ConfigError."""
    given = {"STRATA_TLS_CA (--tls-ca)": settings.tls_ca,
             "STRATA_TLS_CERT (--tls-cert)": settings.tls_cert,
             "STRATA_TLS_KEY (--tls-key)": settings.tls_key}
    missing = [name for name, value in given.items() if value is None]
    if len(missing) == len(given):
        return None
    if missing:
        present = [name for name, value in given.items() if value is not None]
        raise ConfigError(
            f"TLS needs all three of STRATA_TLS_CA, STRATA_TLS_CERT and STRATA_TLS_KEY: "
            f"{', '.join(present)} given, {', '.join(missing)} missing")
    assert settings.tls_ca and settings.tls_cert and settings.tls_key
    return Files(ca=Path(settings.tls_ca).expanduser(), cert=Path(settings.tls_cert).expanduser(),
                 key=Path(settings.tls_key).expanduser())


@dataclass(frozen=True, slots=True)
class Material:
    """The three files' contents, checked: PEM, and a key that is the certificate's."""

    ca: bytes
    cert: bytes
    key: bytes
    serial: int
    identity: Identity | None


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the TLS {what} {path}: {exc.strerror}") from None


def read(files: Files) -> Material:
    ca, cert, key = (_read(files.ca, "CA"), _read(files.cert, "certificate"),
                     _read(files.key, "key"))
    try:
        cas = x509.load_pem_x509_certificates(ca)
    except ValueError as exc:
        raise ConfigError(f"{files.ca} is not a PEM certificate (the CA): {exc}") from None
    if not cas:
        raise ConfigError(f"{files.ca} holds no certificate")
    try:
        leaf = x509.load_pem_x509_certificates(cert)[0]
    except (ValueError, IndexError) as exc:
        raise ConfigError(f"{files.cert} is not a PEM certificate: {exc}") from None
    try:
        private = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{files.key} is not an unencrypted PEM private key: {exc}") \
            from None
    if private.public_key() != leaf.public_key():
        raise ConfigError(f"{files.key} is not the key of the certificate {files.cert}")
    return Material(ca=ca, cert=cert, key=key, serial=leaf.serial_number,
                    identity=identity_of(leaf))


class Tls:
    """A process's TLS material, reloaded by :meth:`reload`. ``generation`` counts the
    reloads that took: a client whose channel is of an older one dials again."""

    def __init__(self, files: Files) -> None:
        self.files = files
        self.material = read(files)
        self.generation = 0
        self._listeners: list[Callable[[], None]] = []
        self._rest_contexts: list[ssl.SSLContext] = []
        self._lock = threading.Lock()

    # ---- reloading --------------------------------------------------------------------

    def on_reload(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (in the event loop) after each reload that took."""
        self._listeners.append(listener)

    def reload(self) -> bool:
        """Read the files again; on success every new handshake and channel uses them."""
        try:
            material = read(self.files)
            for context in self._rest_contexts:
                context.load_cert_chain(self.files.cert, self.files.key)
        except (ConfigError, OSError, ssl.SSLError) as exc:
            logger.error("TLS reload failed, keeping the current certificate: %s", exc,
                         extra={"action": "tls_reload_failed"})
            return False
        with self._lock:
            self.material = material
            self.generation += 1
        logger.info(
            "TLS certificate reloaded from %s (serial %x)", self.files.cert, material.serial,
            extra={"action": "tls_reloaded", "serial": f"{material.serial:x}"},
        )
        for listener in self._listeners:
            listener()
        return True

    def reload_on(self, sig: int = signal.SIGHUP) -> None:
        """Reload on ``sig`` (in the running loop)."""
        asyncio.get_running_loop().add_signal_handler(sig, self.reload)

    # ---- credentials ------------------------------------------------------------------

    def channel_credentials(self) -> grpc.ChannelCredentials:
        m = self.material
        return grpc.ssl_channel_credentials(root_certificates=m.ca, private_key=m.key,
                                            certificate_chain=m.cert)

    def server_credentials(self) -> grpc.ServerCredentials:
        """Credentials that require a client certificate of the CA, and that take the
        current material for each new handshake (gRPC asks before every one)."""
        seen = [self.generation]

        def configuration(m: Material) -> Any:
            return grpc.ssl_server_certificate_configuration([(m.key, m.cert)],
                                                             root_certificates=m.ca)

        def fetch() -> Any:
            # Called by gRPC's own threads: read once, answer None when unchanged.
            with self._lock:
                generation, material = self.generation, self.material
            if generation == seen[0]:
                return None
            seen[0] = generation
            return configuration(material)

        return grpc.dynamic_ssl_server_credentials(
            configuration(self.material), fetch, require_client_authentication=True)

    def rest_context(self) -> ssl.SSLContext:
        """The REST server's context (no client certificate asked for: tokens guard the
        API). The same object stays in use: a reload loads the new chain into it."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.files.cert, self.files.key)
        self._rest_contexts.append(context)
        return context


def from_settings(settings: _HasTls) -> Tls | None:
    """The process's TLS, read and checked now (a clear ConfigError at start-up), or
    None when it is off."""
    files = files_of(settings)
    return Tls(files) if files is not None else None


# ---- who the peer is -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Identity:
    """What a certificate says it is: ``role`` (master, region, worker, client) and, for
    a region, its ``name``."""

    role: str
    name: str | None = None

    def __str__(self) -> str:
        return self.role + (f" {self.name}" if self.name is not None else "")


def identity_of(cert: x509.Certificate) -> Identity | None:
    """The certificate's ``strata:`` URI, read as an identity; None without one."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if not uri.startswith(URI_PREFIX):
            continue
        role, _, name = uri.removeprefix(URI_PREFIX).partition(":")
        if role == "region" and name:
            return Identity("region", name)
        if role in ("master", "worker", "client") and not name:
            return Identity(role)
    return None


# Every region's certificate on each of its beats: room for a thousand regions and more,
# beating in turn (a smaller cache would miss on every one of them).
@functools.lru_cache(maxsize=4096)
def _identity_of_pem(pem: bytes) -> Identity | None:
    try:
        return identity_of(x509.load_pem_x509_certificate(pem))
    except ValueError:
        return None


def peer_identity(context: grpc.aio.ServicerContext[Any, Any]) -> Identity | None:
    """Who called, from the certificate it presented (None: no certificate, or none of
    ours)."""
    pems = context.auth_context().get("x509_pem_cert")
    return _identity_of_pem(pems[0]) if pems else None


async def require(context: grpc.aio.ServicerContext[Any, Any], allowed: Callable[[Identity], bool],
                  wanted: str, method: str) -> Identity:
    """The caller's identity if ``allowed``; otherwise the call ends PERMISSION_DENIED
    (``wanted`` says who may make it)."""
    who = peer_identity(context)
    if who is not None and allowed(who):
        return who
    shown = str(who) if who is not None else "no Strata certificate"
    logger.warning(
        "refused %s from %s (%s): only %s may call it", method, context.peer(), shown, wanted,
        extra={"action": "peer_refused", "method": method, "peer": shown},
    )
    await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                        f"{method} is for {wanted}; this certificate is {shown}")
    raise AssertionError("abort raises")  # pragma: no cover


def is_region(name: str) -> Callable[[Identity], bool]:
    return lambda who: who.role == "region" and who.name == name


def has_role(role: str) -> Callable[[Identity], bool]:
    return lambda who: who.role == role
