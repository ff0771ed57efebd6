"""``strata compose``: a topology rendered as a Docker Compose file.

One service per process kind: ``postgres``, ``master``, ``region-<name>`` per region and
``worker-<name>`` per region, scaled with ``--scale worker-<name>=N``. Every setting
reaches its process as a ``STRATA_*`` variable. A ``chaos`` profile adds toxiproxy in
front of the database and every region link; ``STRATA_LINKS_VIA=toxiproxy`` routes the
links through it.

The master listens beyond loopback, so API tokens are always required: it reads them
from the ``api_tokens`` secret (``./api_tokens`` beside the compose file). A topology
with ``tls = true`` also renders mutual TLS on every link and HTTPS for the API, with the
certificates of ``strata certs init certs ...`` (in ``certs/`` beside the compose file)
mounted as compose secrets."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from pydantic_settings import BaseSettings

from strata.common.errors import ConfigError
from strata.common.settings import MasterSettings, RegionalSettings, WorkerSettings
from strata.deploy.yamlout import Node, dump
from strata.topologies.topology import RegionSpec, Scalar, Topology, env_for

POSTGRES_IMAGE = "postgres:16"
TOXIPROXY_IMAGE = "ghcr.io/shopify/toxiproxy:2.12.0"
DATABASE = "strata"  # database, user and password of the compose PostgreSQL
DATABASE_ADDRESS = "postgres:5432"
WORKER_HTTP_PORT = 9100  # inside each worker container; never published (replicas share it)
TOXIPROXY_API_PORT = 8474
PROXY_BASE_PORT = 20000  # db's proxy; region i's on 20010 + 10 i + (0, 1, 2)
LINKS_VIA = "STRATA_LINKS_VIA"  # compose variable: route every link through this host
CHAOS_PROFILE = "chaos"
CERTS_DIR = "./certs"  # beside the compose file: `strata certs init certs --regions ...`
SECRETS = "/run/secrets"
API_TOKENS = "api_tokens"  # the secret, and its file beside the compose file
IMAGE_UID = 1000  # the image's `strata` user (Dockerfile): it must be able to read the keys
RESTART = "unless-stopped"
STOP_MARGIN_S = 5  # beyond a worker's shutdown grace before Docker kills it
LOG_LEVEL = "INFO"
# Compose service names double as DNS names, so no dots, underscores or capitals.
_SERVICE_SAFE = re.compile(r"[a-z0-9][a-z0-9-]*")

_BUILD: dict[str, Node] = {"context": ".", "dockerfile": "Dockerfile"}


def region_service(name: str) -> str:
    return f"region-{name}"


def worker_service(name: str) -> str:
    return f"worker-{name}"


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def _seconds(value: Any) -> float:
    """A duration setting: a timedelta default, or seconds from a topology file."""
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def _healthcheck(*test: str) -> dict[str, Node]:
    return {"test": list(test), "interval": "5s", "timeout": "3s", "retries": 5,
            "start_period": "10s"}


def _http_check(port: int, path: str) -> dict[str, Node]:
    # The slim image has no curl; a non-2xx answer raises, so the check fails.
    code = f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}{path}', " \
           "timeout=2)"
    return _healthcheck("CMD", "python", "-c", code)


def _port_check(port: int) -> dict[str, Node]:
    # A region serves gRPC only: its health is that the port takes connections.
    code = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2).close()"
    return _healthcheck("CMD", "python", "-c", code)


def _https_check(port: int, path: str) -> dict[str, Node]:
    code = ("import ssl, urllib.request; urllib.request.urlopen("
            f"'https://127.0.0.1:{port}{path}', timeout=2, "
            f"context=ssl.create_default_context(cafile='{SECRETS}/ca'))")
    return _healthcheck("CMD", "python", "-c", code)


def _tls(topology: Topology, stem: str) -> tuple[dict[str, str], list[str]]:
    """The variables and secrets that give a service the certificate ``<stem>.pem``;
    none when the topology has no TLS."""
    if not topology.tls:
        return {}, []
    names = ["ca", f"{stem}-cert", f"{stem}-key"]
    env = {f"STRATA_TLS_{kind}": f"{SECRETS}/{name}"
           for kind, name in zip(("CA", "CERT", "KEY"), names, strict=True)}
    return env, names


def _secrets(topology: Topology) -> dict[str, Node]:
    files: dict[str, str] = {}
    if topology.tls:
        files["ca"] = "ca.pem"
        for stem in ("master", *(region_service(r.name) for r in topology.regions),
                     "worker"):
            files[f"{stem}-cert"] = f"{stem}.pem"
            files[f"{stem}-key"] = f"{stem}-key.pem"
    out: dict[str, Node] = {name: {"file": f"{CERTS_DIR}/{file}"} for name, file in
                            files.items()}
    out[API_TOKENS] = {"file": f"./{API_TOKENS}"}
    return out


def _healthy(*services: str) -> dict[str, Node]:
    return {s: {"condition": "service_healthy"} for s in services}


def _env(settings: Mapping[str, Scalar], kind: type[BaseSettings],
         fixed: Mapping[str, str]) -> dict[str, Node]:
    """The settings this kind of process knows, then the values the deployment fixes."""
    env: dict[str, str] = {"STRATA_LOG_LEVEL": LOG_LEVEL}
    env.update(env_for({k: v for k, v in settings.items() if k in kind.model_fields}))
    env.update(fixed)
    return dict(sorted(env.items()))


def _link(direct: str, proxy_port: int) -> str:
    """``direct`` unless STRATA_LINKS_VIA names a proxy host, then that host:proxy_port."""
    return f"${{{LINKS_VIA}:-{direct}}}${{{LINKS_VIA}:+:{proxy_port}}}"


class _Proxies:
    """The chaos suite's links, each a toxiproxy proxy of its own so each can be faulted
    alone: ``db`` (master to PostgreSQL), and per region ``<r>.to_master``,
    ``<r>.from_master`` and ``<r>.workers`` (its workers' streams)."""

    def __init__(self, topology: Topology) -> None:
        self.master = f"master:{topology.master.grpc_port}"
        self.regions = topology.regions
        self.index = {r.name: i for i, r in enumerate(topology.regions)}

    def _port(self, region: RegionSpec, link: int) -> int:
        return PROXY_BASE_PORT + 10 * (1 + self.index[region.name]) + link

    def db(self) -> str:
        return _link(DATABASE_ADDRESS, PROXY_BASE_PORT)

    def to_master(self, region: RegionSpec) -> str:
        return _link(self.master, self._port(region, 0))

    def from_master(self, region: RegionSpec) -> str:
        return _link(f"{region_service(region.name)}:{region.grpc_port}", self._port(region, 1))

    def workers(self, region: RegionSpec) -> str:
        return _link(f"{region_service(region.name)}:{region.grpc_port}", self._port(region, 2))

    def config(self) -> list[dict[str, Any]]:
        links = [("db", PROXY_BASE_PORT, DATABASE_ADDRESS)]
        for region in self.regions:
            own = f"{region_service(region.name)}:{region.grpc_port}"
            links += [(f"{region.name}.to_master", self._port(region, 0), self.master),
                      (f"{region.name}.from_master", self._port(region, 1), own),
                      (f"{region.name}.workers", self._port(region, 2), own)]
        return [{"name": name, "listen": f"0.0.0.0:{port}", "upstream": upstream,
                 "enabled": True} for name, port, upstream in links]


def _validate(topology: Topology, proxies: _Proxies) -> None:
    for i, region in enumerate(topology.regions):
        _check(bool(_SERVICE_SAFE.fullmatch(region.name)),
               f"regions[{i}] ({region.name}).name: a compose service name needs lowercase "
               "letters, digits and '-'")
    # The chaos proxies listen in one container, beside toxiproxy's API.
    ports = {topology.master.http_port, topology.master.grpc_port,
             *(r.grpc_port for r in topology.regions),
             *(r.http_port for r in topology.regions if r.http_port is not None)}
    _check(TOXIPROXY_API_PORT not in ports,
           f"port {TOXIPROXY_API_PORT} is toxiproxy's API port in the compose deployment")
    listen = {int(p["listen"].rsplit(":", 1)[1]) for p in proxies.config()}
    clash = sorted(ports & listen)
    _check(not clash, f"ports {', '.join(map(str, clash))} are taken by the chaos proxies "
                      f"({PROXY_BASE_PORT} and up)")


def _postgres() -> dict[str, Node]:
    return {
        "image": POSTGRES_IMAGE,
        "environment": {"POSTGRES_DB": DATABASE, "POSTGRES_PASSWORD": DATABASE,
                        "POSTGRES_USER": DATABASE},
        "volumes": ["pgdata:/var/lib/postgresql/data"],
        "healthcheck": {"test": ["CMD-SHELL", f"pg_isready -U {DATABASE} -d {DATABASE}"],
                        "interval": "2s", "timeout": "3s", "retries": 15},
        "restart": RESTART,
    }


def _master(topology: Topology, proxies: _Proxies) -> dict[str, Node]:
    http, grpc = topology.master.http_port, topology.master.grpc_port
    tls_env, secrets = _tls(topology, "master")
    # Listening beyond loopback, the master refuses to start without a token.
    tls_env["STRATA_API_TOKENS_FILE"] = f"{SECRETS}/{API_TOKENS}"
    secrets.append(API_TOKENS)
    return {
        "build": _BUILD,
        "command": ["master"],
        "init": True,
        "environment": _env(topology.settings, MasterSettings, {
            "STRATA_DATABASE_URL":
                f"postgresql://{DATABASE}:{DATABASE}@{proxies.db()}/{DATABASE}",
            "STRATA_HTTP_HOST": "0.0.0.0", "STRATA_HTTP_PORT": str(http),
            "STRATA_GRPC_HOST": "0.0.0.0", "STRATA_GRPC_PORT": str(grpc), **tls_env,
        }),
        **({"secrets": secrets} if secrets else {}),
        "ports": [f"{http}:{http}", f"{grpc}:{grpc}"],
        "depends_on": _healthy("postgres"),
        "healthcheck": (_https_check if topology.tls else _http_check)(http, "/readyz"),
        "restart": RESTART,
    }


def _region(topology: Topology, region: RegionSpec, proxies: _Proxies) -> dict[str, Node]:
    settings = {**topology.settings, **region.settings}
    tls_env, secrets = _tls(topology, region_service(region.name))
    return {
        "build": _BUILD,
        "command": ["regional"],
        "init": True,
        "environment": _env(settings, RegionalSettings, {
            "STRATA_NAME": region.name,
            "STRATA_GRPC_HOST": "0.0.0.0", "STRATA_GRPC_PORT": str(region.grpc_port),
            "STRATA_MASTER": proxies.to_master(region),
            "STRATA_ADVERTISE": proxies.from_master(region),
            **({"STRATA_HTTP_HOST": "0.0.0.0", "STRATA_HTTP_PORT": str(region.http_port)}
               if region.http_port is not None else {}),
            **tls_env,
        }),
        **({"secrets": secrets} if secrets else {}),
        "depends_on": _healthy("master"),
        "healthcheck": _port_check(region.grpc_port),
        "restart": RESTART,
    }


def _worker(topology: Topology, region: RegionSpec, proxies: _Proxies) -> dict[str, Node]:
    # No id: every replica takes its own (host-pid-random), so --scale just works.
    settings = {k: v for k, v in {**topology.settings, **region.settings}.items() if k != "id"}
    grace = settings.get("shutdown_grace", WorkerSettings.model_fields["shutdown_grace"].default)
    tls_env, secrets = _tls(topology, "worker")
    if topology.tls:
        # The region's certificate is checked for its service name, whichever address
        # (the service, or toxiproxy's) the worker dials.
        tls_env["STRATA_TLS_SERVER_NAME"] = region_service(region.name)
    return {
        "build": _BUILD,
        "command": ["worker"],
        "init": True,  # reaps whatever a shell task leaves behind
        "environment": _env(settings, WorkerSettings, {
            "STRATA_REGION": proxies.workers(region),
            "STRATA_CONCURRENCY": str(region.concurrency),
            "STRATA_HTTP_HOST": "0.0.0.0", "STRATA_HTTP_PORT": str(WORKER_HTTP_PORT),
            **tls_env,
        }),
        **({"secrets": secrets} if secrets else {}),
        "deploy": {"replicas": region.workers},
        "depends_on": _healthy(region_service(region.name)),
        "healthcheck": _http_check(WORKER_HTTP_PORT, "/readyz"),
        "restart": RESTART,
        # Let running tasks finish (the worker's shutdown grace) before Docker kills it.
        "stop_grace_period": f"{_seconds(grace) + STOP_MARGIN_S:g}s",
    }


def _toxiproxy() -> dict[str, Node]:
    return {
        "image": TOXIPROXY_IMAGE,
        "profiles": [CHAOS_PROFILE],
        "command": ["-host=0.0.0.0", "-config=/toxiproxy.json"],
        "configs": [{"source": "toxiproxy", "target": "/toxiproxy.json"}],
        "ports": [f"{TOXIPROXY_API_PORT}:{TOXIPROXY_API_PORT}"],
        "healthcheck": _healthcheck("CMD", "/toxiproxy-cli", "list"),
        "restart": RESTART,
    }


def _json_lines(items: list[dict[str, Any]]) -> str:
    """A JSON list with one item a line: what toxiproxy's -config reads."""
    return "[\n" + ",\n".join(f"  {json.dumps(item)}" for item in items) + "\n]\n"


def document(topology: Topology) -> dict[str, Node]:
    """The compose file as data (what :func:`render` writes out)."""
    # The topology's [[schedules]] are not rendered: a compose file has no step that runs
    # once the master is up to make them. They are applied by `strata up` only (or by
    # `strata schedule create` against the deployment's API).
    proxies = _Proxies(topology)
    _validate(topology, proxies)
    services: dict[str, Node] = {"postgres": _postgres(), "master": _master(topology, proxies)}
    for region in topology.regions:
        services[region_service(region.name)] = _region(topology, region, proxies)
    for region in topology.regions:
        services[worker_service(region.name)] = _worker(topology, region, proxies)
    services["toxiproxy"] = _toxiproxy()
    return {
        "services": services,
        "volumes": {"pgdata": {}},
        "configs": {"toxiproxy": {"content": _json_lines(proxies.config())}},
        "secrets": _secrets(topology),
    }


def _tls_header(topology: Topology) -> list[str]:
    if not topology.tls:
        return [
            f"API tokens required. Before `up`, beside this file: ./{API_TOKENS}, the",
            "master's tokens (a token or sha256:<hex> hash a line), e.g.",
            "",
            f"  python -c 'import secrets; print(\"st_\" + secrets.token_urlsafe(32))' "
            f"> {API_TOKENS}",
            f"  sudo chown {IMAGE_UID} {API_TOKENS}   # the containers' user reads it",
            "",
            f"  curl -H 'Authorization: Bearer TOKEN' "
            f"http://localhost:{topology.master.http_port}/v1/stats",
            "",
        ]
    regions = ",".join(r.name for r in topology.regions)
    return [
        "Mutual TLS on every link, HTTPS for the API, API tokens required. Before `up`,",
        "beside this file: the certificates (compose secrets read from ./certs) and the",
        f"master's API tokens (./{API_TOKENS}: a token or sha256:<hex> hash a line):",
        "",
        f"  strata certs init certs --regions {regions}",
        f"  sudo chown {IMAGE_UID} certs/*-key.pem {API_TOKENS}   # the containers' user reads "
        "them",
        "",
        "Rotate: run the same `strata certs init` again (the CA is kept), then",
        "  docker compose -f FILE kill -s HUP master " +
        " ".join(region_service(r.name) for r in topology.regions) + " " +
        " ".join(worker_service(r.name) for r in topology.regions),
        "",
        f"  curl --cacert certs/ca.pem -H 'Authorization: Bearer TOKEN' "
        f"https://localhost:{topology.master.http_port}/v1/stats",
        "",
    ]


def render(topology: Topology) -> str:
    first = topology.regions[0].name
    return dump(document(topology), header=[
        *_tls_header(topology),
        f"Rendered by `strata compose` from the topology {topology.name!r}: edit the",
        "topology and render again rather than editing this file.",
        "",
        f"  docker compose -f FILE up --scale {worker_service(first)}=3",
        "",
        "Chaos: toxiproxy (API on :8474) on every link, with the chaos tests' proxy names",
        f"(db, {first}.to_master, {first}.from_master, {first}.workers, ...):",
        "",
        f"  {LINKS_VIA}=toxiproxy docker compose -f FILE --profile {CHAOS_PROFILE} up",
    ])
