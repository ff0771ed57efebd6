"""Certificates for mutual TLS between the tiers (``strata certs init``).

One private CA signs a certificate for the master, one for each region, one that every
worker shares and one for API clients (grpcurl and the like). Each certificate says
whose it is twice: its common name (``master``, the region's name, ``worker``,
``client``) and a URI subject alternative name that marks the role, which is what the
processes check:

==========================  ================================  ===========================
file (with ``-key.pem``)    URI SAN                           DNS / IP SANs
==========================  ================================  ===========================
``master.pem``              ``strata:master``                 master, localhost, 127.0.0.1
``region-<name>.pem``       ``strata:region:<name>``          <name>, region-<name>,
                                                              localhost, 127.0.0.1
``worker.pem``              ``strata:worker``                 (none: it is never dialled)
``client.pem``              ``strata:client``                 (none)
==========================  ================================  ===========================

``ca.pem`` is the CA's certificate (every process trusts it) and ``ca-key.pem`` its key.
Keys are ECDSA P-256, written 0600; certificates 0644. Files are replaced atomically, so
a process that reloads them (SIGHUP) reads either the old file or the new, never half.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from strata.common.errors import ConfigError
from strata.common.models import REGION_NAME_PATTERN

CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"
MASTER = "master"
WORKER = "worker"
CLIENT = "client"
URI_PREFIX = "strata:"
ORGANIZATION = "Strata"
CA_DAYS = 3650
LEAF_DAYS = 365
# Issued a little in the past: a host whose clock is behind still takes it.
BACKDATE = datetime.timedelta(hours=1)
# Names every server certificate answers to, so local and compose clients can verify it.
LOCAL_NAMES = ("localhost", "127.0.0.1")

Key = ec.EllipticCurvePrivateKey


def region_stem(name: str) -> str:
    """The files of region ``name``'s certificate: ``region-<name>.pem`` and its key."""
    return f"region-{name}"


def uri_of(role: str, name: str | None = None) -> str:
    """``strata:master``, ``strata:region:<name>``, ``strata:worker``, ``strata:client``."""
    return URI_PREFIX + role + (f":{name}" if name is not None else "")


@dataclass(frozen=True, slots=True)
class Leaf:
    """One certificate to issue: its files' stem, names, and whether it serves."""

    stem: str
    role: str
    common_name: str
    uri: str
    hosts: tuple[str, ...] = ()
    server: bool = False

    @property
    def cert_file(self) -> str:
        return f"{self.stem}.pem"

    @property
    def key_file(self) -> str:
        return f"{self.stem}-key.pem"


def master_leaf(hosts: Sequence[str] = ()) -> Leaf:
    return Leaf(stem=MASTER, role="master", common_name=MASTER, uri=uri_of("master"),
                hosts=_unique((MASTER, *LOCAL_NAMES, *hosts)), server=True)


def region_leaf(name: str, hosts: Sequence[str] = ()) -> Leaf:
    check_region_name(name)
    dns = name.lower()
    return Leaf(stem=region_stem(name), role="region", common_name=name,
                uri=uri_of("region", name),
                hosts=_unique((dns, region_stem(dns), *LOCAL_NAMES, *hosts)), server=True)


def worker_leaf() -> Leaf:
    return Leaf(stem=WORKER, role="worker", common_name=WORKER, uri=uri_of("worker"))


def client_leaf() -> Leaf:
    return Leaf(stem=CLIENT, role="client", common_name=CLIENT, uri=uri_of("client"))


def leaves(regions: Iterable[str] = (), hosts: Sequence[str] = ()) -> list[Leaf]:
    """The master's, each region's, the workers' and the client's certificates.

    A name one certificate answers to must not be another's: the master checks a region
    by the name its certificate carries, so regions ``a`` and ``region-a`` (whose
    certificates would both answer to ``region-a``), or a region called ``master``, are
    refused."""
    made = [master_leaf(hosts), *(region_leaf(r, hosts) for r in _unique(regions)),
            worker_leaf(), client_leaf()]
    owner: dict[str, Leaf] = {}
    for leaf in made:
        for host in leaf.hosts:
            if host in LOCAL_NAMES or host in hosts:
                continue
            other = owner.setdefault(host.lower(), leaf)
            if other.stem != leaf.stem:
                raise ConfigError(
                    f"the certificates of {other.role} {other.common_name!r} and "
                    f"{leaf.role} {leaf.common_name!r} would both answer to the name "
                    f"{host!r}: rename the region")
    return made


def check_region_name(name: str) -> None:
    if not re.fullmatch(REGION_NAME_PATTERN, name):
        raise ConfigError(f"not a region name: {name!r} (letters, digits and _.-, "
                          "starting with a letter or digit)")


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


# ---- making certificates ---------------------------------------------------------------


def new_key() -> Key:
    return ec.generate_private_key(ec.SECP256R1())


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def new_ca(*, days: int = CA_DAYS, common_name: str = "Strata CA"
           ) -> tuple[x509.Certificate, Key]:
    key = new_key()
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True,
            content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def issue(leaf: Leaf, ca_cert: x509.Certificate, ca_key: Key, *, days: int = LEAF_DAYS
          ) -> tuple[x509.Certificate, Key]:
    """A new key, and a certificate for it signed by the CA."""
    key = new_key()
    now = _now()
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if leaf.server:
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(leaf.uri)]
    names += [_general_name(h) for h in leaf.hosts]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, leaf.role),
            x509.NameAttribute(NameOID.COMMON_NAME, leaf.common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=False, crl_sign=False,
            content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


# ---- files -----------------------------------------------------------------------------


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: Key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` atomically with ``data``; the file is ``mode`` from its first
    byte (a key is never readable by others, not even for a moment)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_pair(directory: Path, stem: str, cert: x509.Certificate, key: Key) -> list[Path]:
    """``<stem>.pem`` and ``<stem>-key.pem``: the key first, so that a reader that sees
    the new certificate finds its key already there."""
    key_path, cert_path = directory / f"{stem}-key.pem", directory / f"{stem}.pem"
    write_file(key_path, key_pem(key), 0o600)
    write_file(cert_path, cert_pem(cert), 0o644)
    return [cert_path, key_path]


def load_ca(directory: Path) -> tuple[x509.Certificate, Key]:
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except OSError as exc:
        raise ConfigError(f"cannot read the CA in {directory}: {exc.strerror}: "
                          f"{exc.filename}") from None
    except ValueError as exc:
        raise ConfigError(f"the CA in {directory} is not a PEM certificate and key: "
                          f"{exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{key_path}: the CA's key must be an EC key")
    if key.public_key() != cert.public_key():
        raise ConfigError(f"{key_path} is not the key of {cert_path}")
    return cert, key


@dataclass(slots=True)
class Written:
    """What :func:`init` did: whether it made a new CA, and the files it wrote."""

    directory: Path
    ca_created: bool
    files: list[Path] = field(default_factory=list)


def init(directory: Path | str, *, regions: Iterable[str] = (), hosts: Sequence[str] = (),
         force: bool = False, only_missing: bool = False, days: int = LEAF_DAYS,
         ca_days: int = CA_DAYS) -> Written:
    """Make ``directory``'s CA unless it has one, then issue every leaf certificate.

    An existing CA is kept (its certificates stay trusted) and the leaves are issued
    again from it, with new keys: that is how certificates are rotated. ``force`` makes
    a new CA instead (every old certificate stops being trusted). ``only_missing``
    issues only the leaves that have no files yet (``strata up``: once, then reused).
    Half a CA (a certificate without its key, or the reverse) is refused."""
    directory = Path(directory).expanduser()
    wanted = leaves(regions, hosts)
    directory.mkdir(parents=True, exist_ok=True)
    has_cert, has_key = (directory / CA_CERT).exists(), (directory / CA_KEY).exists()
    written = Written(directory=directory, ca_created=False)
    if force or not (has_cert or has_key):
        ca_cert, ca_key = new_ca(days=ca_days)
        written.files += write_pair_ca(directory, ca_cert, ca_key)
        written.ca_created = True
    elif has_cert != has_key:
        raise ConfigError(
            f"{directory} has {CA_CERT if has_cert else CA_KEY} but not "
            f"{CA_KEY if has_cert else CA_CERT}: restore it, or make a new CA with --force")
    else:
        ca_cert, ca_key = load_ca(directory)
    for leaf in wanted:
        if only_missing and not written.ca_created and (directory / leaf.cert_file).exists() \
                and (directory / leaf.key_file).exists():
            continue
        cert, key = issue(leaf, ca_cert, ca_key, days=days)
        written.files += write_pair(directory, leaf.stem, cert, key)
    return written


def write_pair_ca(directory: Path, cert: x509.Certificate, key: Key) -> list[Path]:
    write_file(directory / CA_KEY, key_pem(key), 0o600)
    write_file(directory / CA_CERT, cert_pem(cert), 0o644)
    return [directory / CA_CERT, directory / CA_KEY]


def issue_into(directory: Path | str, leaf: Leaf, *, days: int = LEAF_DAYS) -> list[Path]:
    """Issue one leaf from ``directory``'s CA into it (over the old files, if any)."""
    directory = Path(directory)
    ca_cert, ca_key = load_ca(directory)
    cert, key = issue(leaf, ca_cert, ca_key, days=days)
    return write_pair(directory, leaf.stem, cert, key)
