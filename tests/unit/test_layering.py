"""The three tiers never import each other; common and proto stay below them.

Every module of ours is imported as ``strata.<package>...``; the scan reads the package
from the second part of the name."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = frozenset({"proto", "common", "sql", "master", "regional", "worker", "topologies",
                  "local", "deploy", "examples", "cli", "strata"})

# What each package may import of ours, besides itself (DESIGN.md, "Layout").
ALLOWED: dict[str, frozenset[str]] = {
    "proto": frozenset(),
    "sql": frozenset(),
    "common": frozenset({"proto"}),
    "master": frozenset({"common", "proto", "sql"}),
    "regional": frozenset({"common", "proto"}),
    "worker": frozenset({"common", "proto"}),
}


def _ours(name: str) -> str | None:
    """``strata.master.db`` -> ``master``; a bare ``master`` (the old layout) counts too."""
    parts = name.split(".")
    if parts[0] == "strata":
        return parts[1] if len(parts) > 1 else "strata"
    return parts[0]


def imported_packages(source: str, package: str) -> set[tuple[str, int]]:
    """Our packages that a module of ``package`` imports, anywhere in its body
    (function-level imports included), each with the line of the import."""
    found: set[tuple[str, int]] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            tops = [_ours(alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # A relative import cannot climb above its own package.
                tops = [package]
            elif node.module == "strata":
                tops = [alias.name for alias in node.names]
            else:
                tops = [_ours(node.module or "")]
        else:
            continue
        found.update((top, node.lineno) for top in tops if top in OURS)
    return found


def modules_of(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_the_layout_allows(package: str):
    modules = modules_of(package)
    assert modules, f"no modules found under {package}/"
    allowed = ALLOWED[package] | {package}
    violations = [
        f"{path.relative_to(ROOT)}:{line} imports {top}"
        for path in modules
        for top, line in sorted(imported_packages(path.read_text(), package))
        if top not in allowed
    ]
    assert violations == [], f"{package}/ may import only {sorted(allowed)}"


def test_the_scan_finds_every_form_of_import():
    source = (
        "import os\n"
        "import strata.master.db\n"
        "from strata.regional import coordinator\n"
        "from . import sibling\n"
        "def late():\n"
        "    from strata.worker.runner import Runner\n"
        "    import strata.topologies as t\n"
        "    from strata import local\n"
    )
    assert imported_packages(source, "common") == {
        ("master", 2), ("regional", 3), ("common", 4), ("worker", 6), ("topologies", 7),
        ("local", 8)}


def test_import_linter_contracts_are_kept():
    lint_imports = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    lint_imports = lint_imports or shutil.which("lint-imports")
    if lint_imports is None:
        pytest.fail("lint-imports is not installed (pip install -e '.[test]')")
    result = subprocess.run(
        [lint_imports, "--no-cache", "--no-logo"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "3 kept, 0 broken" in output, output
