"""The ``strata`` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from strata.common import logs
from strata.common.errors import StrataError
from strata.common.settings import MasterSettings, RegionalSettings, UpSettings, WorkerSettings


def _given(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """Only the flags the user passed: the rest come from STRATA_* and .env."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="strata", description="Hierarchical task scheduler.")
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run a topology as local processes")
    up.add_argument("topology", nargs="?", help="topology file (default: topologies/local.toml)")

    c = sub.add_parser("compose", help="print a topology as a Docker Compose file")
    c.add_argument("topology", help="topology file, e.g. topologies/three-regions.toml")

    m = sub.add_parser("master", help="run the master (REST + gRPC + scanner)")
    m.add_argument("--http-port", type=int)
    m.add_argument("--http-host")
    m.add_argument("--grpc-port", type=int)
    m.add_argument("--grpc-host")
    m.add_argument("--database-url")

    r = sub.add_parser("regional", help="run a regional coordinator")
    r.add_argument("--name")
    r.add_argument("--master", help="HOST:PORT of the master's gRPC server")
    r.add_argument("--grpc-port", type=int)
    r.add_argument("--grpc-host")
    r.add_argument("--advertise", help="HOST:PORT the master should dial")

    w = sub.add_parser("worker", help="run a worker")
    w.add_argument("--region", help="HOST:PORT of the region's gRPC server")
    w.add_argument("--concurrency", type=int)
    w.add_argument("--http-port", type=int)
    w.add_argument("--http-host")
    w.add_argument("--id")
    w.add_argument("--python-module", action="append", dest="python_modules",
                   help="allow python handlers from this module (repeatable)")

    mg = sub.add_parser("migrate", help="apply database migrations")
    mg.add_argument("--database-url")

    s = sub.add_parser("submit", help="schedule a shell task")
    s.add_argument("--command", required=True, dest="shell_command")
    s.add_argument("--at", help="ISO 8601 time to run at (default: now)")
    s.add_argument("--region")
    s.add_argument("--priority", type=int)
    s.add_argument("--max-attempts", type=int)
    s.add_argument("--timeout", type=float, dest="timeout_s")
    s.add_argument("--wait", action="store_true", help="wait and print the final state")
    s.add_argument("--api", default=None)

    st = sub.add_parser("status", help="show a task")
    st.add_argument("task_id")
    st.add_argument("--api", default=None)
    return p


def _api(args: argparse.Namespace) -> str:
    return str(args.api or os.environ.get("STRATA_API", "http://127.0.0.1:8080"))


async def _submit(args: argparse.Namespace) -> int:
    from strata.common.client import Client

    body: dict[str, Any] = {"kind": "shell", "command": args.shell_command}
    if args.at:
        body["run_at"] = args.at
    for key in ("region", "priority", "max_attempts", "timeout_s"):
        if getattr(args, key) is not None:
            body[key] = getattr(args, key)
    async with Client(_api(args)) as client:
        task = await client.create(**body)
        print(task["id"], flush=True)
        if not args.wait:
            return 0
        final = await client.wait(task["id"], timeout_s=float("inf"))
        print(final["state"])
        return 0 if final["state"] == "succeeded" else 1


async def _status(args: argparse.Namespace) -> int:
    from strata.common.client import Client

    async with Client(_api(args)) as client:
        print(json.dumps(await client.get(args.task_id), indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        code = _dispatch(args)
    except StrataError as exc:
        print(f"strata: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "master":
        from strata.master import app as master_app

        ms = MasterSettings(**_given(args, "http_port", "http_host", "grpc_port", "grpc_host",
                                     "database_url"))
        logs.configure(ms.log_level)
        asyncio.run(master_app.serve(ms))
        return 0
    if args.command == "regional":
        from strata.regional import app as regional_app

        rs = RegionalSettings(**_given(args, "name", "master", "grpc_port", "grpc_host",
                                       "advertise"))
        logs.configure(rs.log_level)
        asyncio.run(regional_app.serve(rs))
        return 0
    if args.command == "worker":
        from strata.worker import app as worker_app

        ws = WorkerSettings(**_given(args, "region", "concurrency", "http_port", "http_host",
                                     "id", "python_modules"))
        logs.configure(ws.log_level)
        asyncio.run(worker_app.serve(ws))
        return 0
    if args.command == "migrate":
        from strata.master import app as master_app

        ms = MasterSettings(**_given(args, "database_url"))
        logs.configure(ms.log_level)
        applied = asyncio.run(master_app.migrate(ms))
        print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
        return 0
    if args.command == "up":
        from strata.local import up
        from strata.topologies.topology import DEFAULT_TOPOLOGY, load

        topology = load(args.topology or DEFAULT_TOPOLOGY)
        us = UpSettings()
        logs.configure(us.log_level)
        return asyncio.run(up.run(topology, us))
    if args.command == "compose":
        from strata.common.errors import ConfigError
        from strata.deploy.compose import render
        from strata.topologies.topology import load

        topology = load(args.topology)
        try:
            text = render(topology)
        except ConfigError as exc:
            raise ConfigError(f"{args.topology}: {exc}") from None
        sys.stdout.write(text)
        return 0
    if args.command == "submit":
        return asyncio.run(_submit(args))
    if args.command == "status":
        return asyncio.run(_status(args))
    raise AssertionError(args.command)


if __name__ == "__main__":
    main()
