"""A real ``toxiproxy-server`` process, and the faults a test puts on its proxies.

Every link between Strata's processes runs through one toxiproxy proxy (a :class:`Link`);
a test adds toxics to a link, or to several at once (a :class:`LinkGroup`), holds them
for as long as the scenario says, and removes them. The ``toxiproxy-python`` client is
synchronous (``requests``), so each call runs in a thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import toxiproxy

from strata.local.postgres import free_port

REPO = Path(__file__).resolve().parents[2]
BINARY = "toxiproxy-server"
LOCAL_BINARY = REPO / "bin" / BINARY  # where `make toxiproxy` puts it
START_TIMEOUT_S = 10.0
HOST = "127.0.0.1"

Stream = Literal["upstream", "downstream", "both"]


def find_binary() -> str | None:
    """``toxiproxy-server`` on PATH, else the one ``make toxiproxy`` built into ./bin."""
    on_path = shutil.which(BINARY)
    if on_path:
        return on_path
    if LOCAL_BINARY.is_file() and os.access(LOCAL_BINARY, os.X_OK):
        return str(LOCAL_BINARY)
    return None


@dataclass
class ToxiproxyServer:
    """One ``toxiproxy-server`` process on a free port of 127.0.0.1."""

    binary: str
    log_path: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def api(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> None:
        self.port = free_port()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "-host", HOST, "-port", str(self.port)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                # Its debug level logs every API request; info keeps the log readable.
                env={**os.environ, "LOG_LEVEL": "info"},
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._answers():
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.binary} exited with {self.proc.returncode}; see {self.log_path}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.binary} did not answer on {self.api} in time")
            time.sleep(0.02)
        # The client keeps its server address in a class attribute: one server a session.
        toxiproxy.Toxiproxy().update_api_consumer(HOST, self.port)

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.api}/version", timeout=1) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def client(self) -> toxiproxy.Toxiproxy:
        return toxiproxy.Toxiproxy()

    def version(self) -> str:
        return str(self.client().version().decode().strip())

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    async def create_link(self, name: str, upstream: str) -> Link:
        """A proxy on a free port of 127.0.0.1 forwarding to ``upstream``."""
        proxy = await asyncio.to_thread(
            self.client().create, upstream=upstream, name=name,
            listen=f"{HOST}:{free_port()}"
        )
        return Link(name=name, proxy=proxy)

    async def destroy_all(self) -> None:
        await asyncio.to_thread(self.client().destroy_all)


def _streams(stream: Stream) -> tuple[str, ...]:
    return ("upstream", "downstream") if stream == "both" else (stream,)


class Faults(ABC):
    """The faults a test can put on a link or a group of links.

    ``upstream`` is the direction from the dialling side to the listening side (a
    region's requests to the master on its master link), ``downstream`` the replies.
    """

    @abstractmethod
    async def add_toxic(self, kind: str, attributes: dict[str, Any], stream: Stream) -> None:
        """Add one toxic of this type on each stream; one of a type per stream at a time."""

    @abstractmethod
    async def remove_toxic(self, kind: str) -> None:
        """Remove every toxic of this type (a no-op where there is none)."""

    @abstractmethod
    async def set_enabled(self, enabled: bool) -> None: ...

    @abstractmethod
    async def clear(self) -> None:
        """No toxics, proxy enabled: the link as it was."""

    async def latency(self, ms: int, *, jitter_ms: int = 0, stream: Stream = "both") -> None:
        """Delay every chunk by ``ms`` ± ``jitter_ms`` (order is kept), on each stream."""
        await self.add_toxic("latency", {"latency": ms, "jitter": jitter_ms}, stream)

    async def black_hole(self, *, stream: Stream = "both") -> None:
        """Drop every byte and keep the connection open (a ``timeout`` toxic of 0).

        Removing it closes the connections it held, as toxiproxy does."""
        await self.add_toxic("timeout", {"timeout": 0}, stream)

    async def timeout(self, ms: int, *, stream: Stream = "both") -> None:
        """Drop every byte, then close the connection after ``ms``."""
        await self.add_toxic("timeout", {"timeout": ms}, stream)

    async def reset_peer(self, *, after_ms: int = 0, stream: Stream = "both") -> None:
        """Reset (TCP RST) each connection once data flows, after ``after_ms``; new
        connections are reset too until the toxic is removed."""
        await self.add_toxic("reset_peer", {"timeout": after_ms}, stream)

    async def bandwidth(self, rate_kb: int = 0, *, stream: Stream = "both") -> None:
        """Cap the rate in KB/s; 0 stalls every byte until the toxic is removed."""
        await self.add_toxic("bandwidth", {"rate": rate_kb}, stream)

    async def cut(self) -> None:
        """Disable the proxy: open connections drop and new ones are refused."""
        await self.set_enabled(False)

    async def restore(self) -> None:
        await self.set_enabled(True)


@dataclass
class Link(Faults):
    """One toxiproxy proxy."""

    name: str
    proxy: toxiproxy.Proxy

    @property
    def listen(self) -> str:
        """HOST:PORT to dial instead of the upstream."""
        return str(self.proxy.listen)

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])

    async def add_toxic(self, kind: str, attributes: dict[str, Any], stream: Stream) -> None:
        for direction in _streams(stream):
            await asyncio.to_thread(
                self.proxy.add_toxic, type=kind, stream=direction,
                name=f"{kind}_{direction}", attributes=attributes,
            )

    async def toxics(self) -> dict[str, dict[str, Any]]:
        """Name → type, stream and attributes of each toxic the server has on the link."""
        found = await asyncio.to_thread(self.proxy.toxics)
        return {name: {"type": t.type, "stream": t.stream, "attributes": t.attributes}
                for name, t in found.items()}

    async def remove_toxic(self, kind: str) -> None:
        for name, toxic in (await self.toxics()).items():
            if toxic["type"] == kind:
                await asyncio.to_thread(self.proxy.destroy_toxic, name)

    async def set_enabled(self, enabled: bool) -> None:
        await asyncio.to_thread(self.proxy.enable if enabled else self.proxy.disable)

    async def clear(self) -> None:
        for name in await self.toxics():
            await asyncio.to_thread(self.proxy.destroy_toxic, name)
        await self.set_enabled(True)


@dataclass
class LinkGroup(Faults):
    """Several links faulted as one (say, both directions between master and region)."""

    links: tuple[Link, ...]

    @classmethod
    def of(cls, links: Iterable[Link]) -> LinkGroup:
        return cls(tuple(links))

    async def add_toxic(self, kind: str, attributes: dict[str, Any], stream: Stream) -> None:
        await asyncio.gather(*(link.add_toxic(kind, attributes, stream) for link in self.links))

    async def remove_toxic(self, kind: str) -> None:
        await asyncio.gather(*(link.remove_toxic(kind) for link in self.links))

    async def set_enabled(self, enabled: bool) -> None:
        await asyncio.gather(*(link.set_enabled(enabled) for link in self.links))

    async def clear(self) -> None:
        await asyncio.gather(*(link.clear() for link in self.links))
