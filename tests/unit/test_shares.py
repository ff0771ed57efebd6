"""How a scan splits what is due over the regions with room."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from strata.master.db import RegionRoom
from strata.master.scanner import shares


def _rooms(*sizes: int) -> dict[RegionRoom, int]:
    return {RegionRoom(name=f"r{i}", address=f"r{i}:1", room=n): n
            for i, n in enumerate(sizes)}


def _by_name(split: dict[RegionRoom, int]) -> dict[str, int]:
    return {r.name: n for r, n in split.items()}


def test_one_task_goes_to_one_region_in_turn() -> None:
    rooms = _rooms(64, 64)
    assert _by_name(shares(rooms, 1, turn=0)) == {"r0": 1}
    assert _by_name(shares(rooms, 1, turn=1)) == {"r1": 1}


def test_a_small_batch_is_spread_in_proportion_to_room() -> None:
    assert _by_name(shares(_rooms(64, 64), 10)) == {"r0": 5, "r1": 5}
    assert _by_name(shares(_rooms(30, 10), 8)) == {"r0": 6, "r1": 2}
    assert _by_name(shares(_rooms(16, 16, 16), 4, turn=1)) == {"r0": 1, "r1": 2, "r2": 1}


@given(st.lists(st.integers(min_value=1, max_value=500), min_size=2, max_size=40),
       st.data(), st.integers(min_value=0, max_value=100))
def test_the_shares_add_up_to_what_is_due_and_fit_every_room(
    sizes: list[int], data: st.DataObject, turn: int
) -> None:
    due = data.draw(st.integers(min_value=0, max_value=sum(sizes) - 1))
    rooms = _rooms(*sizes)
    split = shares(rooms, due, turn)
    assert sum(split.values()) == due
    assert all(0 < n <= rooms[r] for r, n in split.items())
    # Nobody gets more than one over its exact share.
    total = sum(sizes)
    assert all(n <= due * rooms[r] / total + 1 for r, n in split.items())


@pytest.mark.parametrize(("room", "floor", "most", "takes"), [
    (1, 1, 1000, True),    # no queue beyond the slots: any room is worth a batch
    (0, 1, 1000, False),
    (63, 64, 1000, False),  # the queue is more than half full: wait for a larger batch
    (64, 64, 1000, True),
    (100, 1024, 100, True),  # a full claim batch is always worth making
    (99, 1024, 100, False),
])
def test_a_region_takes_a_batch_once_half_its_queue_is_free(
    room: int, floor: int, most: int, takes: bool
) -> None:
    region = RegionRoom(name="r", address="r:1", room=room, floor=floor)
    assert region.takes_a_batch(most) is takes
