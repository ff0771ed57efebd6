"""The committed stubs are exactly what the protos in proto/ generate."""

from __future__ import annotations

from pathlib import Path

import pytest

from strata.proto.generate import HERE, STUBS, generate


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stubs")
    generate(out)
    return out


def test_generator_writes_exactly_the_stubs(generated: Path):
    assert sorted(p.name for p in generated.iterdir()) == sorted(STUBS)


@pytest.mark.parametrize("name", STUBS)
def test_committed_stub_matches_the_proto(generated: Path, name: str):
    committed = (HERE / name).read_bytes()
    fresh = (generated / name).read_bytes()
    assert committed == fresh, (
        f"proto/{name} is out of date with proto/strata.proto; "
        "run `python -m strata.proto.generate` and commit the result"
    )
