"""Chaos fixtures: one ``toxiproxy-server`` per session, no proxies left over between
tests, and a :class:`ChaosCluster` per test.

Without the binary (``make toxiproxy`` builds it into ./bin) the chaos tests skip, unless
``STRATA_REQUIRE_CHAOS=1`` (CI) makes that a failure.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from tests.chaos.harness import ChaosCluster
from tests.chaos.links import ToxiproxyServer, find_binary
from tests.chaos.load import Summary

RESULTS = pytest.StashKey[list[str]]()


@pytest.fixture(scope="session")
def toxiproxy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ToxiproxyServer]:
    binary = find_binary()
    if binary is None:
        reason = ("toxiproxy-server is neither on PATH nor in ./bin "
                  "(`make toxiproxy` builds it)")
        if os.environ.get("STRATA_REQUIRE_CHAOS") == "1":
            pytest.fail(f"STRATA_REQUIRE_CHAOS=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    server = ToxiproxyServer(binary, tmp_path_factory.mktemp("toxiproxy") / "server.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def toxiproxy_clean(toxiproxy_server: ToxiproxyServer) -> AsyncIterator[ToxiproxyServer]:
    """No proxy from an earlier test before, and none of this test's after."""
    await toxiproxy_server.destroy_all()
    try:
        yield toxiproxy_server
    finally:
        await toxiproxy_server.destroy_all()


@pytest.fixture
async def chaos(database_url: str, tmp_path: Path, toxiproxy_clean: ToxiproxyServer
                ) -> AsyncIterator[ChaosCluster]:
    cluster = await ChaosCluster.create(workdir=tmp_path, database_url=database_url,
                                       toxiproxy=toxiproxy_clean)
    try:
        yield cluster
    finally:
        # Faults off first, so that the processes can say goodbye to each other.
        await cluster.all_links().clear()
        cluster.stop()


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Callable[[Summary], None]:
    """Print a scenario's figures and keep them for the end-of-run summary."""

    def record(summary: Summary) -> None:
        line = summary.line()
        print(line)
        request.config.stash.setdefault(RESULTS, []).append(line)

    return record


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter,
                            config: pytest.Config) -> None:
    lines = config.stash.get(RESULTS, [])
    if lines:
        terminalreporter.section("chaos results")
        for line in lines:
            terminalreporter.write_line(line)
