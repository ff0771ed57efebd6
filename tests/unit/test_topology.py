"""Topology files: the shipped ones load, and every mistake names the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from strata.common.errors import ConfigError
from strata.topologies.topology import DEFAULT_TOPOLOGY, TOPOLOGY_DIR, env_for, load, parse

REGION = """
[[regions]]
name = "{name}"
grpc_port = {port}
"""


def write(tmp_path: Path, text: str, name: str = "topo.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    return message


def test_local_topology():
    topology = load(TOPOLOGY_DIR / "local.toml")
    assert topology.name == "local"
    assert [(r.name, r.grpc_port, r.workers, r.concurrency) for r in topology.regions] == [
        ("region-a", 50061, 2, 8), ("region-b", 50062, 2, 8)]
    assert (topology.master.http_port, topology.master.grpc_port) == (8080, 50051)
    assert DEFAULT_TOPOLOGY == TOPOLOGY_DIR / "local.toml"


def test_three_regions_topology():
    topology = load(TOPOLOGY_DIR / "three-regions.toml")
    assert topology.name == "three-regions"
    assert [r.name for r in topology.regions] == ["us-east", "eu-west", "ap-south"]
    assert len({r.grpc_port for r in topology.regions}) == 3
    assert topology.settings == {
        "heartbeat_interval": 1, "region_dead_after": 5, "worker_dead_after": 3}


def test_a_bare_shipped_name_is_found_in_the_topology_dir(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    assert load("three-regions.toml").name == "three-regions"


def test_name_defaults_to_the_file_stem(tmp_path: Path):
    path = write(tmp_path, REGION.format(name="r1", port=6000), name="lab.toml")
    topology = load(path)
    assert topology.name == "lab"
    assert topology.regions[0].workers == 2
    assert topology.regions[0].settings == {}


def test_invalid_toml(tmp_path: Path):
    path = write(tmp_path, 'name = "x"\n[[regions]\nname = "a"\n')
    message = load_error(path)
    assert "TOML" in message
    assert "line" in message


def test_duplicate_region_names(tmp_path: Path):
    path = write(tmp_path, REGION.format(name="a", port=6001) + REGION.format(name="a", port=6002))
    assert "region names must be unique; repeated: a" in load_error(path)


def test_duplicate_region_ports(tmp_path: Path):
    path = write(tmp_path, REGION.format(name="a", port=6001) + REGION.format(name="b", port=6001))
    assert "ports must be unique; repeated: 6001" in load_error(path)


def test_region_port_clashing_with_the_master(tmp_path: Path):
    path = write(tmp_path, REGION.format(name="a", port=50051))
    assert "ports must be unique; repeated: 50051" in load_error(path)


def test_unknown_key(tmp_path: Path):
    path = write(tmp_path, REGION.format(name="a", port=6001) + "colour = 'red'\n")
    message = load_error(path)
    assert "regions[0] (a).colour" in message


def test_unknown_top_level_key(tmp_path: Path):
    path = write(tmp_path, "flavour = 1\n" + REGION.format(name="a", port=6001))
    assert "flavour" in load_error(path)


def test_wrong_type_names_the_region(tmp_path: Path):
    path = write(tmp_path, REGION.format(name="a", port=6001)
                 + REGION.format(name="b", port='"six"'))
    message = load_error(path)
    assert "regions[1] (b).grpc_port" in message


def test_wrong_type_in_master(tmp_path: Path):
    path = write(tmp_path, "[master]\nhttp_port = 'x'\n" + REGION.format(name="a", port=6001))
    assert "master.http_port" in load_error(path)


def test_no_regions(tmp_path: Path):
    assert "regions" in load_error(write(tmp_path, 'name = "empty"\n'))


def test_empty_region_list(tmp_path: Path):
    assert "regions" in load_error(write(tmp_path, "regions = []\n"))


def test_missing_file(tmp_path: Path):
    path = tmp_path / "nowhere.toml"
    message = load_error(path)
    assert "cannot read" in message


def test_parse_names_its_source():
    with pytest.raises(ConfigError, match=r"^inline: "):
        parse("regions = []", "inline")


def test_env_for():
    env = env_for({"heartbeat_interval": 0.5, "queue_factor": 2, "debug": True,
                   "verbose": False, "log_level": "DEBUG"})
    assert env == {
        "STRATA_HEARTBEAT_INTERVAL": "0.5",
        "STRATA_QUEUE_FACTOR": "2",
        "STRATA_DEBUG": "true",
        "STRATA_VERBOSE": "false",
        "STRATA_LOG_LEVEL": "DEBUG",
    }


def test_unknown_setting_is_named(tmp_path: Path):
    path = write(tmp_path, "[settings]\nheartbeat_intervall = 1\n"
                 + REGION.format(name="a", port=6001))
    message = load_error(path)
    assert "settings: not a setting of any process: heartbeat_intervall" in message


def test_region_settings_are_those_of_a_region_or_its_workers(tmp_path: Path):
    ok = REGION.format(name="a", port=6001) + "settings = {queue_factor = 2, shutdown_grace = 5}\n"
    assert load(write(tmp_path, ok)).regions[0].settings == {"queue_factor": 2,
                                                             "shutdown_grace": 5}
    master_only = REGION.format(name="a", port=6001) + "settings = { region_dead_after = 9 }\n"
    message = load_error(write(tmp_path, master_only))
    assert "regions[0] (a).settings: not a setting of a region or its workers: " \
           "region_dead_after" in message
