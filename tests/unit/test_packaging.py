"""The wheel: one top-level package, ``strata``, carrying every module and data file of
the folders mapped into it, and working when installed on its own."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )
    (built,) = out.glob("strata-*.whl")
    return built


def _package_dirs() -> dict[str, str]:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs: dict[str, str] = setuptools["package-dir"]
    return dirs


def test_the_wheel_has_exactly_one_top_level_package(wheel: Path):
    with zipfile.ZipFile(wheel) as zf:
        tops = {name.split("/")[0] for name in zf.namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"strata"}


def test_every_file_of_every_mapped_folder_is_in_the_wheel(wheel: Path):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    expected = []
    for package, folder in _package_dirs().items():
        prefix = package.replace(".", "/")
        for path in (ROOT / folder).iterdir():
            if path.is_file() and path.suffix in {".py", ".pyi", ".sql", ".toml", ".proto"}:
                expected.append(f"{prefix}/{path.name}")
    assert expected
    missing = sorted(e for e in expected if e not in names)
    assert missing == [], f"not in the wheel: {missing}"


def test_the_installed_wheel_runs_alone(wheel: Path, tmp_path: Path):
    """Installed without the repository on the path, it finds its queries, migrations
    and topologies through ``strata.*`` alone."""
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
         str(wheel)],
        check=True, capture_output=True, timeout=300,
    )
    probe = (
        "import strata, strata.master.db as db, strata.topologies.topology as t\n"
        f"assert strata.__file__.startswith({str(target)!r}), strata.__file__\n"
        "assert 'claim_due' in db.Q\n"
        "assert [m[1] for m in db._migrations()][0].startswith('0001_')\n"
        "assert t.load(t.DEFAULT_TOPOLOGY).regions\n"
        "print('ok')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
