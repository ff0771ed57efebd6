"""Which masters a region dials: ``--master`` parsed, names that stand for several
machines expanded, and the master it talks to chosen and moved on from."""

from __future__ import annotations

import socket

import pytest

from strata.common.errors import ConfigError
from strata.regional.link import Masters, pick_addresses, resolve, split_masters


def test_master_takes_one_address_or_several() -> None:
    assert split_masters("a:50051") == ["a:50051"]
    assert split_masters(" a:50051, b:50052 ,a:50051") == ["a:50051", "b:50052"]
    assert split_masters("[::1]:50051,10.0.0.2:1") == ["[::1]:50051", "10.0.0.2:1"]


@pytest.mark.parametrize("bad", ["", " , ", "a", "a:", ":50051", "a:port", "a:0", "a:70000",
                                 "a:1,b"])
def test_a_bad_master_list_is_a_config_error(bad: str) -> None:
    with pytest.raises(ConfigError, match="--master"):
        split_masters(bad)


def test_a_name_stands_for_several_machines_only_when_it_resolves_to_several() -> None:
    v4, v6 = socket.AF_INET, socket.AF_INET6
    assert pick_addresses([(v4, "10.0.0.1"), (v4, "10.0.0.2"), (v4, "10.0.0.1")]) == [
        "10.0.0.1", "10.0.0.2"]
    # One machine with an address in each family (localhost): gRPC dials the name.
    assert pick_addresses([(v4, "127.0.0.1"), (v6, "::1")]) == []
    assert pick_addresses([(v6, "fd00::1"), (v6, "fd00::2")]) == ["fd00::1", "fd00::2"]
    assert pick_addresses([]) == []


async def test_addresses_and_one_machine_names_resolve_to_themselves() -> None:
    assert await resolve("127.0.0.1", 50051) == []
    assert await resolve("[::1]", 50051) == []
    assert await resolve("localhost", 50051) == []
    assert await resolve("no-such-host.invalid", 50051) == []


async def _two_machines(host: str, port: int) -> list[str]:
    return [f"10.0.0.1:{port}", f"10.0.0.2:{port}"] if host == "masters" else []


async def test_a_region_starts_with_the_first_master_and_moves_on_in_turn() -> None:
    m = Masters(["a:1", "b:1", "c:1"])
    assert m.current == "a:1"
    assert [m.move_on() for _ in range(4)] == ["b:1", "c:1", "a:1", "b:1"]


async def test_a_name_for_several_masters_stands_for_each() -> None:
    m = Masters(["other:50051", "masters:50051"], resolver=_two_machines)
    await m.expand()
    assert m.addresses == ["other:50051", "10.0.0.1:50051", "10.0.0.2:50051"]
    assert m.current == "other:50051"
    assert m.move_on() == "10.0.0.1:50051"
    await m.expand()  # the master of now stays the one talked to
    assert m.current == "10.0.0.1:50051"
