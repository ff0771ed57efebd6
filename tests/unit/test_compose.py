"""``strata compose``: the committed compose file is the rendering of three-regions.toml,
and every rendering holds together (there is no Docker engine here to try it on).

The structural checks read the YAML back with PyYAML, resolve compose's ``${VAR:-x}``
and ``${VAR:+x}`` interpolation both ways (direct links, and links through toxiproxy),
and check that each service's command, environment, ports, health check and
``depends_on`` agree with each other and with the topology."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic_settings import BaseSettings

from strata import cli
from strata.common.errors import ConfigError
from strata.common.settings import MasterSettings, RegionalSettings, WorkerSettings
from strata.deploy.compose import LINKS_VIA, render
from strata.deploy.yamlout import dump
from strata.topologies.topology import TOPOLOGY_DIR, Topology, env_for, load, parse

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.regions.yml"
SHIPPED = sorted(TOPOLOGY_DIR.glob("*.toml"))
PROCESS_SETTINGS: dict[str, type[BaseSettings]] = {
    "master": MasterSettings, "regional": RegionalSettings, "worker": WorkerSettings}
_INTERPOLATION = re.compile(r"\$\{(\w+)(:[-+])([^}]*)\}")


# ---- the committed file ------------------------------------------------------------------


def test_committed_compose_file_is_three_regions_rendered() -> None:
    rendered = render(load(TOPOLOGY_DIR / "three-regions.toml"))
    assert COMPOSE_FILE.read_text() == rendered, (
        "docker-compose.regions.yml drifted from topologies/three-regions.toml; run\n"
        "  strata compose topologies/three-regions.toml > docker-compose.regions.yml")


def test_strata_compose_prints_it(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["compose", str(TOPOLOGY_DIR / "three-regions.toml")])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == COMPOSE_FILE.read_text()


def test_strata_compose_names_a_bad_file(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[[regions]]\nname = 'a'\ngrpc_port = 'x'\n")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["compose", str(bad)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "regions[0] (a).grpc_port" in err


def test_strata_compose_names_the_file_of_a_topology_it_cannot_deploy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    upper = tmp_path / "upper.toml"
    upper.write_text("[[regions]]\nname = 'EU'\ngrpc_port = 6000\n")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["compose", str(upper)])
    assert exit_.value.code == 2
    assert f"{upper}: regions[0] (EU).name: a compose service name" in capsys.readouterr().err


def test_rendering_is_deterministic() -> None:
    topology = load(TOPOLOGY_DIR / "three-regions.toml")
    assert render(topology) == render(topology)
    assert render(topology).endswith("\n") and not render(topology).endswith("\n\n")


# ---- structure ---------------------------------------------------------------------------


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's interpolation, for the two forms the renderer uses (and nothing else)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.groups()
        assert name == LINKS_VIA, f"unexpected variable {name}"
        given = env.get(name, "")
        if op == ":-":
            return given or arg
        return arg if given else ""

    resolved = _INTERPOLATION.sub(one, value)
    assert "$" not in resolved, f"literal $ would be interpolated by compose: {value!r}"
    return resolved


def deployment(text: str, via: str | None) -> dict[str, Any]:
    """The compose file as ``docker compose`` would see it, with or without the proxy."""
    doc = interpolate(yaml.safe_load(text), {LINKS_VIA: via} if via else {})
    active = {"chaos"} if via else set()
    doc["services"] = {name: svc for name, svc in doc["services"].items()
                       if not svc.get("profiles") or active & set(svc["profiles"])}
    return dict(doc)


def settings_of(svc: dict[str, Any]) -> Any:
    """The service's process settings, exactly as its process would read them."""
    cls = PROCESS_SETTINGS[svc["command"][0]]
    env = svc["environment"]
    assert all(isinstance(v, str) for v in env.values()), env
    for key in env:
        assert key.startswith("STRATA_"), key
        assert key.removeprefix("STRATA_").lower() in cls.model_fields, \
            f"{key} is not a setting of {svc['command'][0]}"
    with mock.patch.dict(os.environ, env, clear=True):
        return cls(_env_file=None)


def checked_port(svc: dict[str, Any]) -> int:
    """The port the service's health check probes (and that the check is valid Python)."""
    test = svc["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1:3] == ["python", "-c"], test
    compile(test[3], "<healthcheck>", "exec")
    found = re.search(r"127\.0\.0\.1(?::|', )(\d+)", test[3])
    assert found, test
    return int(found.group(1))


def listening(services: dict[str, Any], address: str, proxies: dict[int, str]) -> str:
    """Where a connection to ``address`` ends up: through toxiproxy if it goes there."""
    host, port = address.rsplit(":", 1)
    assert host in services, f"{address}: no such service"
    if host == "toxiproxy":
        assert int(port) in proxies, f"{address}: toxiproxy has no proxy there"
        return listening(services, proxies[int(port)], {})
    if host == "postgres":
        assert port == "5432", address  # the official image's port
        return address
    svc = services[host]
    settings = settings_of(svc)
    assert settings.grpc_port == int(port), address
    assert settings.grpc_host == "0.0.0.0", address
    return address


def check(text: str, topology: Topology, via: str | None) -> None:
    doc = deployment(text, via)
    services: dict[str, Any] = doc["services"]
    regions = {r.name: r for r in topology.regions}
    expected = {"postgres", "master", *(f"region-{n}" for n in regions),
                *(f"worker-{n}" for n in regions)} | ({"toxiproxy"} if via else set())
    assert set(services) == expected

    proxies: dict[int, str] = {}  # toxiproxy's listen port -> upstream
    named: dict[str, int] = {}  # proxy name -> listen port
    if via:
        config = doc["configs"][services["toxiproxy"]["configs"][0]["source"]]["content"]
        listed = json.loads(config)
        proxies = {int(p["listen"].rsplit(":", 1)[1]): p["upstream"] for p in listed}
        named = {p["name"]: int(p["listen"].rsplit(":", 1)[1]) for p in listed}
        assert len(proxies) == len(named) == len(listed) == 1 + 3 * len(regions)

    for name, svc in services.items():
        assert ("image" in svc) != ("build" in svc), name
        if "build" in svc:
            assert (ROOT / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()
            cli._parser().parse_args(svc["command"])
        assert svc["restart"] in ("always", "unless-stopped"), name
        assert "container_name" not in svc, name  # fixed names cannot scale
        assert "healthcheck" in svc, name
        for target, how in svc.get("depends_on", {}).items():
            assert target in services, f"{name} depends on missing {target}"
            assert not services[target].get("profiles"), f"{name} needs an optional service"
            assert how == {"condition": "service_healthy"}
            assert "healthcheck" in services[target]
    for volume in services["postgres"]["volumes"]:
        assert volume.split(":")[0] in doc["volumes"]

    # PostgreSQL: the official image, and the credentials the master dials.
    pg = services["postgres"]
    assert pg["image"].startswith("postgres:")
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    master = settings_of(services["master"])
    url = urlsplit(master.database_url)
    assert (url.username, url.password, url.path) == (
        pg["environment"]["POSTGRES_USER"], pg["environment"]["POSTGRES_PASSWORD"],
        "/" + pg["environment"]["POSTGRES_DB"])
    assert listening(services, url.netloc.rsplit("@", 1)[1], proxies) == "postgres:5432"
    # Each link by the name the chaos tests give it, and the address that takes it.
    links = {"db": url.netloc.rsplit("@", 1)[1]}

    # Master: listens on every interface, publishes both ports, checks its readiness.
    spec = topology.master
    assert services["master"]["command"] == ["master"]
    assert services["master"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert (master.http_host, master.http_port) == ("0.0.0.0", spec.http_port)
    assert (master.grpc_host, master.grpc_port) == ("0.0.0.0", spec.grpc_port)
    assert set(services["master"]["ports"]) == {f"{spec.http_port}:{spec.http_port}",
                                                f"{spec.grpc_port}:{spec.grpc_port}"}
    assert checked_port(services["master"]) == spec.http_port
    for key, value in topology.settings.items():
        if key in MasterSettings.model_fields:
            assert services["master"]["environment"][f"STRATA_{key.upper()}"] == \
                env_for({key: value})[f"STRATA_{key.upper()}"]

    for rname, region in regions.items():
        rsvc, wsvc = services[f"region-{rname}"], services[f"worker-{rname}"]
        rs = settings_of(rsvc)
        assert rsvc["command"] == ["regional"] and rs.name == rname
        assert rsvc["depends_on"] == {"master": {"condition": "service_healthy"}}
        assert "ports" not in rsvc
        assert checked_port(rsvc) == region.grpc_port
        # It reaches the master, and the master reaches it back, by service name.
        assert listening(services, rs.master, proxies) == f"master:{spec.grpc_port}"
        advertised = rs.advertised_address
        assert listening(services, advertised, proxies) == f"region-{rname}:{region.grpc_port}"

        ws = settings_of(wsvc)
        assert wsvc["command"] == ["worker"]
        assert wsvc["depends_on"] == {f"region-{rname}": {"condition": "service_healthy"}}
        assert wsvc["deploy"]["replicas"] == region.workers
        assert "ports" not in wsvc, "replicas cannot share published ports"
        assert ws.id is None, "replicas need ids of their own"
        assert ws.concurrency == region.concurrency
        assert ws.http_host == "0.0.0.0"
        assert checked_port(wsvc) == ws.http_port != 0
        assert listening(services, ws.region, proxies) == \
            f"region-{rname}:{region.grpc_port}"
        for key, value in {**topology.settings, **region.settings}.items():
            for svc in (rsvc, wsvc):
                cls = PROCESS_SETTINGS[svc["command"][0]]
                if key in cls.model_fields and key != "id":
                    assert svc["environment"][f"STRATA_{key.upper()}"] == \
                        env_for({key: value})[f"STRATA_{key.upper()}"]
        if "python_modules" in topology.settings:
            assert ws.python_modules == topology.settings["python_modules"]
        links |= {f"{rname}.to_master": rs.master, f"{rname}.from_master": advertised,
                  f"{rname}.workers": ws.region}

    if via:
        # Every link goes through a proxy of its own, so each can be faulted alone.
        assert links == {name: f"{via}:{port}" for name, port in named.items()}
        tp = services["toxiproxy"]
        assert tp["profiles"] == ["chaos"]
        assert "8474:8474" in tp["ports"]
        assert "-config=/toxiproxy.json" in tp["command"]
        assert tp["configs"][0]["target"] == "/toxiproxy.json"
    else:
        assert not any("toxiproxy" in a for a in links.values()), links
    check_tls(doc, topology)


STEMS = {"master": "master", "regional": None, "worker": "worker"}


def check_tls(doc: dict[str, Any], topology: Topology) -> None:
    """The master always gets its API tokens as a secret (it listens beyond loopback,
    so it requires them). With ``tls = true``: every Strata service also gets the CA,
    its own certificate and key as compose secrets read from ./certs (the files `strata
    certs init` writes), and health checks that speak HTTPS. Without: no TLS at all."""
    services: dict[str, Any] = doc["services"]
    strata = {n: svc for n, svc in services.items() if "build" in svc}
    if not topology.tls:
        assert doc["secrets"] == {"api_tokens": {"file": "./api_tokens"}}
        assert services["master"]["secrets"] == ["api_tokens"]
        master = settings_of(services["master"])
        assert str(master.api_tokens_file) == "/run/secrets/api_tokens"
        for name, svc in strata.items():
            if name != "master":
                assert "secrets" not in svc
            assert not any(k.startswith("STRATA_TLS_") for k in svc["environment"])
        return
    secrets = doc["secrets"]
    issued = {p.name for p in _issued(topology)}
    for name, svc in strata.items():
        settings = settings_of(svc)
        kind = svc["command"][0]
        stem = STEMS[kind] or name  # a region's files are named as its service
        assert svc["secrets"][:3] == ["ca", f"{stem}-cert", f"{stem}-key"], name
        for field, secret in zip(("tls_ca", "tls_cert", "tls_key"), svc["secrets"],
                                 strict=False):
            assert str(getattr(settings, field)) == f"/run/secrets/{secret}", (name, field)
        for secret in svc["secrets"]:
            source = secrets[secret]["file"]
            assert source.startswith("./"), source
            if secret != "api_tokens":
                assert source.startswith("./certs/") and source[len("./certs/"):] in issued
    master = settings_of(services["master"])
    assert services["master"]["secrets"][3:] == ["api_tokens"]
    assert str(master.api_tokens_file) == "/run/secrets/api_tokens"
    assert secrets["api_tokens"] == {"file": "./api_tokens"}
    check = services["master"]["healthcheck"]["test"][3]
    assert "https://127.0.0.1" in check and "cafile='/run/secrets/ca'" in check
    for region in topology.regions:
        worker = settings_of(services[f"worker-{region.name}"])
        # It checks the region's certificate for a name that certificate carries.
        assert worker.tls_server_name in _leaf_hosts(region.name)


def _issued(topology: Topology) -> list[Path]:
    import tempfile

    from strata.common import certs

    with tempfile.TemporaryDirectory() as tmp:
        return certs.init(tmp, regions=[r.name for r in topology.regions]).files


def _leaf_hosts(region: str) -> tuple[str, ...]:
    from strata.common import certs

    return certs.region_leaf(region).hosts


@pytest.mark.parametrize("via", [None, "toxiproxy"], ids=["direct", "chaos"])
def test_committed_compose_file_holds_together(via: str | None) -> None:
    check(COMPOSE_FILE.read_text(), load(TOPOLOGY_DIR / "three-regions.toml"), via)


@pytest.mark.parametrize("via", [None, "toxiproxy"], ids=["direct", "chaos"])
@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_topology_renders_a_coherent_file(path: Path, via: str | None) -> None:
    topology = load(path)
    check(render(topology), topology, via)


def test_settings_overrides_reach_only_the_processes_that_know_them() -> None:
    topology = parse("""
name = "custom"
[master]
http_port = 9000
grpc_port = 9001
[settings]
region_dead_after = 7
worker_dead_after = 2
log_level = "DEBUG"
[[regions]]
name = "lab"
grpc_port = 9100
workers = 0
concurrency = 3
settings = { queue_factor = 0.5, shutdown_grace = 60, id = "fixed" }
[[regions]]
name = "edge-2"
grpc_port = 9200
workers = 5
""", "custom.toml")
    text = render(topology)
    for via in (None, "toxiproxy"):
        check(text, topology, via)
    services = yaml.safe_load(text)["services"]
    master, region, worker = (services[s]["environment"] for s in
                              ("master", "region-lab", "worker-lab"))
    assert master["STRATA_REGION_DEAD_AFTER"] == "7" and master["STRATA_LOG_LEVEL"] == "DEBUG"
    assert "STRATA_WORKER_DEAD_AFTER" not in master
    assert region["STRATA_WORKER_DEAD_AFTER"] == "2" and region["STRATA_QUEUE_FACTOR"] == "0.5"
    assert "STRATA_REGION_DEAD_AFTER" not in region and "STRATA_SHUTDOWN_GRACE" not in region
    assert worker["STRATA_SHUTDOWN_GRACE"] == "60" and "STRATA_ID" not in worker
    # Docker waits out the worker's own grace before it kills.
    assert services["worker-lab"]["stop_grace_period"] == "65s"
    assert services["worker-edge-2"]["stop_grace_period"] == "35s"
    assert services["worker-lab"]["deploy"]["replicas"] == 0
    assert services["worker-edge-2"]["environment"]["STRATA_LOG_LEVEL"] == "DEBUG"


REGION = "[[regions]]\nname = '{name}'\ngrpc_port = {port}\n"


@pytest.mark.parametrize(("text", "message"), [
    (REGION.format(name="Upper", port=6000), "regions[0] (Upper).name: a compose service"),
    (REGION.format(name="a.b", port=6000), "regions[0] (a.b).name"),
    (REGION.format(name="a", port=8474), "8474 is toxiproxy's API port"),
    (REGION.format(name="a", port=6000) + REGION.format(name="b", port=20000),
     "ports 20000 are taken by the chaos proxies"),
    (REGION.format(name="a", port=20012), "ports 20012 are taken by the chaos proxies"),
])
def test_what_compose_cannot_deploy_is_refused(text: str, message: str) -> None:
    topology = parse(text, "t.toml")  # fine for `strata up`
    with pytest.raises(ConfigError, match=re.escape(message)):
        render(topology)


# ---- the image ---------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [(word.upper(), rest.strip()) for word, _, rest in
            (line.partition(" ") for line in lines if line and not line.startswith("#"))]


def test_dockerfile_installs_strata_on_a_slim_base_as_a_plain_user() -> None:
    instructions = dockerfile()
    words = [word for word, _ in instructions]
    assert instructions[0] == ("FROM", "python:3.11-slim")
    run = " ".join(rest for word, rest in instructions if word == "RUN")
    assert "useradd" in run and "pip install --no-cache-dir" in run
    users = [rest for word, rest in instructions if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert words.index("USER") > max(i for i, word in enumerate(words) if word == "RUN")
    assert ("ENTRYPOINT", '["strata"]') in instructions


def _ignored(rel: str, patterns: list[str]) -> bool:
    parts = rel.split("/")
    for pattern in patterns:
        if pattern.startswith("**/"):
            if any(fnmatch.fnmatch(part, pattern[3:]) for part in parts):
                return True
        elif fnmatch.fnmatch(rel, pattern) or fnmatch.fnmatch(parts[0], pattern):
            return True
    return False


def test_dockerignore_keeps_what_pip_install_needs_and_drops_the_rest() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = [*project["tool"]["setuptools"]["package-dir"].values(), "pyproject.toml",
              project["project"]["readme"]]
    for path in needed:
        assert not _ignored(path, patterns), f".dockerignore drops {path}"
    for path in (".git", "tests", "common/__pycache__", ".strata", ".env"):
        assert _ignored(path, patterns), f".dockerignore keeps {path}"


# ---- the YAML writer ---------------------------------------------------------------------


TRICKY = ["", "yes", "No", "on", "off", "null", "~", "true", "8080:8080", "0.0.0.0", "1",
          "1e3", "0x10", ".5", "-c", "a: b", "a #b", "#x", "- x", "[x]", "{x}", "x,y", " x",
          "x ", "'q'", '"q"', "back\\slash", "tab\there", "${VAR:-x}", "é", "@x", "*x", "&x",
          "!x", "%x", "|", ">", "?", "<<"]


def test_strings_read_back_as_the_same_strings() -> None:
    doc = {"plain": "simple-name_1.x/y", "tricky": TRICKY, "as_values": dict.fromkeys(TRICKY, "v")
           | {k: k for k in TRICKY if k}, "n": 3, "b": False, "nested": [{"a": 1, "b": [2]}],
           "empty": {}, "none": []}
    assert yaml.safe_load(dump(doc)) == doc
    assert "plain: simple-name_1.x/y\n" in dump(doc)


def test_multi_line_strings_become_literal_blocks_when_they_read_back_exactly() -> None:
    for text in ["[\n  1,\n  2\n]\n", "one\n\ntwo\n", "no newline\nat end", "two at end\n\n",
                 " leading\n", "trailing \nspace\n"]:
        out = dump({"content": text})
        assert yaml.safe_load(out) == {"content": text}, out
    assert yaml.safe_load(dump({"lines": ["a\nb", "c"]})) == {"lines": ["a\nb", "c"]}
    assert dump({"c": "a\nb\n"}) == "c: |\n  a\n  b\n"


def test_header_and_layout() -> None:
    out = dump({"a": {"b": 1}, "c": [1, 2]}, header=["made by a test", ""])
    assert out == "# made by a test\n#\n\na:\n  b: 1\n\nc: [1, 2]\n"


@pytest.mark.parametrize("bad", [{"a": None}, {"a": 1.5}, {"a": [[1]]}, {"a": [{}]},
                                 {1: "a"}])
def test_unsupported_values_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(TypeError):
        dump(bad)


def test_a_tls_topology_says_how_to_make_its_certificates_and_rotate_them() -> None:
    text = render(load(TOPOLOGY_DIR / "tls.toml"))
    header = [line.removeprefix("# ") for line in text.splitlines() if line.startswith("#")]
    assert "  strata certs init certs --regions region-a,region-b" in header
    assert any("chown 1000 certs/*-key.pem api_tokens" in line for line in header)
    assert any("kill -s HUP master region-region-a region-region-b worker-region-a "
               "worker-region-b" in line for line in header)
    # The files the header makes are the ones the secrets read.
    sources = {v["file"] for v in yaml.safe_load(text)["secrets"].values()}
    assert sources - {"./api_tokens"} == {f"./certs/{p.name}" for p in _issued(
        load(TOPOLOGY_DIR / "tls.toml")) if p.name != "ca-key.pem" and
        not p.name.startswith("client")}
