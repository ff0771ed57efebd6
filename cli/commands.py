"""The commands that talk to a running master over REST: submit, status, list, cancel,
logs, retry, reprioritize, ``concurrency ...`` and ``schedule ...``. An answer the API
refuses (a 4xx) is printed as ``strata: <message>`` on stderr with exit code 1, as is a
master that cannot be reached.

They hold the SDK's :class:`~strata.client.AsyncClient` (its address, token and errors)
and print what the master answers as it sent it, through the SDK's JSON level
(``AsyncClient.rest``): ``strata status`` is the API's JSON, field for field."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

from strata.client import (
    API_ENV,
    DEFAULT_API,
    TOKEN_ENV,
    AsyncClient,
    RestClient,
    Unauthenticated,
)
from strata.common.client import TERMINAL
from strata.common.errors import StrataError

PAGE = 1000


def api_of(args: argparse.Namespace) -> str:
    return str(args.api or os.environ.get(API_ENV, DEFAULT_API))


def add_api_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api", default=None, metavar="URL",
                        help=f"the master's REST API (default: $STRATA_API or {DEFAULT_API})")
    parser.add_argument("--ca", default=None, metavar="FILE",
                        help="PEM file of the CA an https:// master's certificate is "
                             "checked against (default: $STRATA_TLS_CA, else the system's)")
    parser.add_argument("--token", default=None, metavar="TOKEN",
                        help=f"the API token sent as Authorization: Bearer (default: "
                             f"${TOKEN_ENV}, which, unlike a flag, other users' ps does not "
                             "show)")


async def run(args: argparse.Namespace,
              command: Callable[[RestClient, argparse.Namespace], Awaitable[int]]) -> int:
    try:
        async with AsyncClient(api_of(args), ca=args.ca, token=args.token) as client:
            return await command(client.rest, args)
    except Unauthenticated as exc:
        print(f"strata: {exc} (give one: ${TOKEN_ENV} or --token)", file=sys.stderr)
        return 1
    except StrataError as exc:
        print(f"strata: {exc}", file=sys.stderr)
        return 1


def _print_stream(text: str | None, cut: bool, name: str, out: TextIO) -> None:
    if cut:
        print(f"[{name} cut: only its tail was kept]", file=out)
    if text:
        out.write(text if text.endswith("\n") else text + "\n")
    # Both streams often end in one terminal or file: stdout must be out before stderr.
    out.flush()


def print_result(task: dict[str, Any], *, headers: bool) -> None:
    """A task's stdout to stdout, then its stderr to stderr, each marked if it was cut."""
    result = task["result"]
    for name, out, cut in (("output", sys.stdout, "output_truncated"),
                           ("stderr", sys.stderr, "stderr_truncated")):
        text = result.get(name)
        if headers and (text or result.get(cut)):
            print(f"--- {'stdout' if name == 'output' else 'stderr'} ---", file=out)
        _print_stream(text, bool(result.get(cut)), name, out)
    out_of = sys.stdout if task["state"] == "succeeded" else sys.stderr
    if result.get("killed_processes"):
        print(f"[{result['killed_processes']} processes it left running were killed]",
              file=out_of, flush=True)


async def submit(client: RestClient, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"kind": "shell", "command": args.shell_command}
    if args.at:
        body["run_at"] = args.at
    for key in ("region", "priority", "max_attempts", "timeout_s", "depends_on",
                "on_upstream_failure", "concurrency_key"):
        if getattr(args, key) is not None:
            body[key] = getattr(args, key)
    task = await client.create(**body)
    print(task["id"], flush=True)
    if not args.wait:
        return 0
    final = await client.follow(task["id"])
    if final["state"] == "succeeded":
        print(final["state"], flush=True)
        print_result(final, headers=True)
        return 0
    error = final["result"].get("error")
    print(final["state"] + (f": {error}" if error else ""), flush=True)
    print_result(final, headers=True)
    return 1


async def watch(client: RestClient, args: argparse.Namespace) -> int:
    """Until interrupted. A stream the master drops (this terminal fell behind) or ends
    (it restarted) is taken up again where it stopped (``watch`` of the SDK's JSON
    level), and says what it missed."""
    async with contextlib.aclosing(client.watch(
        tasks=args.task_ids, state=args.state, region=args.region,
    )) as stream:
        async for message in stream:
            if message.event == "task":
                print(json.dumps(message.data) if args.json else _change_line(message.data),
                      flush=True)
            elif message.event in ("missed", "dropped"):
                print(f"[{message.event}: {message.data.get('reason', '')}]",
                      file=sys.stderr, flush=True)
    return 0  # the stream is taken up again for ever: only an error or Ctrl-C ends it


def _change_line(change: dict[str, Any]) -> str:
    where = change["region"] or "-"
    worker = change["worker_id"] or "-"
    return (f"{_to_the_second(change['at'])}  {change['id']}  {change['state']:<10}  "
            f"attempt {change['attempt']}  region {where}  worker {worker}")


async def status(client: RestClient, args: argparse.Namespace) -> int:
    print(json.dumps(await client.get(args.task_id), indent=2))
    return 0


async def list_tasks(client: RestClient, args: argparse.Namespace) -> int:
    params = {k: v for k, v in (("state", args.state), ("region", args.region),
                                ("kind", args.kind)) if v}
    if args.newest_first:
        params["order"] = "desc"
    rows: list[dict[str, Any]] = []
    cursor: str | None = None
    while len(rows) < args.limit:
        page = await client.list_tasks(
            **params, limit=str(min(PAGE, args.limit - len(rows))),
            **({"cursor": cursor} if cursor else {}))
        rows += page["tasks"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    _print_table([("ID", "STATE", "KIND", "REGION", "ATTEMPT", "CREATED")] + [
        (t["id"], t["state"], t["kind"], t["region"] or "-", str(t["attempt"]),
         _to_the_second(t["created_at"])) for t in rows])
    return 0


def _print_table(table: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
              .rstrip())


def _to_the_second(stamp: str) -> str:
    """``2030-01-01T03:00:00.123456Z`` as ``2030-01-01T03:00:00Z``: a table needs no more."""
    whole, dot, _ = stamp.partition(".")
    return whole + "Z" if dot else stamp


async def cancel(client: RestClient, args: argparse.Namespace) -> int:
    task = await client.cancel(args.task_id)
    print(task["state"])
    return 0


async def logs(client: RestClient, args: argparse.Namespace) -> int:
    task = await client.get(args.task_id)
    if task["state"] not in TERMINAL:
        print(f"[task is {task['state']}: its output is kept when it ends]", file=sys.stderr)
    print_result(task, headers=False)
    return 0


async def retry(client: RestClient, args: argparse.Namespace) -> int:
    task = await client.retry(args.task_id)
    print(task["id"])
    return 0


async def reprioritize(client: RestClient, args: argparse.Namespace) -> int:
    task = await client.reprioritize(args.task_id, args.priority)
    print(f"{task['id']}: priority {task['priority']}, {task['state']}")
    return 0


# ---- strata concurrency ... ------------------------------------------------------------

def _concurrency_line(limit: dict[str, Any]) -> str:
    """``etl: limit 2, 1 active, 5 pending``, or ``etl: no limit, ...``."""
    cap = "no limit" if limit["limit"] is None else f"limit {limit['limit']}"
    return f"{limit['key']}: {cap}, {limit['active']} active, {limit['pending']} pending"


async def set_concurrency(client: RestClient, args: argparse.Namespace) -> int:
    print(_concurrency_line(await client.set_concurrency(args.key, args.limit)))
    return 0


async def list_concurrency(client: RestClient, args: argparse.Namespace) -> int:
    _print_table([("KEY", "LIMIT", "ACTIVE", "PENDING")] + [
        (c["key"], "-" if c["limit"] is None else str(c["limit"]), str(c["active"]),
         str(c["pending"])) for c in await client.concurrency_limits()])
    return 0


async def show_concurrency(client: RestClient, args: argparse.Namespace) -> int:
    print(json.dumps(await client.concurrency(args.key), indent=2))
    return 0


async def clear_concurrency(client: RestClient, args: argparse.Namespace) -> int:
    await client.clear_concurrency(args.key)
    print(f"{args.key}: no limit")
    return 0


# ---- strata schedule ... ---------------------------------------------------------------

TASK_FLAGS = ("region", "priority", "max_attempts", "timeout_s")
SCHEDULE_FLAGS = ("cron", "every_s", "timezone", "overlap", "catchup", "start_at", "end_at")


def schedule_body(args: argparse.Namespace) -> dict[str, Any]:
    """The ``POST /v1/schedules`` body of ``strata schedule create``: a shell task of
    --command, or --task-json's task, with the task flags given set on it."""
    task: dict[str, Any] = (dict(args.task_json) if args.task_json is not None
                            else {"kind": "shell", "command": args.shell_command})
    task.update({k: getattr(args, k) for k in TASK_FLAGS if getattr(args, k) is not None})
    body: dict[str, Any] = {"name": args.name, "task": task}
    body.update({k: getattr(args, k) for k in SCHEDULE_FLAGS if getattr(args, k) is not None})
    if args.paused:
        body["paused"] = True
    return body


def _when(schedule: dict[str, Any]) -> str:
    if schedule.get("cron"):
        zone = schedule.get("timezone") or "UTC"
        return f"{schedule['cron']}" + ("" if zone == "UTC" else f" ({zone})")
    return f"every {schedule['every_s']:g}s"


def _next_fire(schedule: dict[str, Any]) -> str:
    if schedule["paused"]:
        return "-"
    return _to_the_second(schedule["next_fire_at"]) if schedule["next_fire_at"] else "none"


def _schedule_line(schedule: dict[str, Any]) -> str:
    """``nightly: paused`` or ``nightly: next fire 2030-01-01T03:00:00Z``."""
    if schedule["paused"]:
        return f"{schedule['name']}: paused"
    if not schedule["next_fire_at"]:
        return f"{schedule['name']}: fires no more (past its end_at)"
    return f"{schedule['name']}: next fire {_to_the_second(schedule['next_fire_at'])}"


async def create_schedule(client: RestClient, args: argparse.Namespace) -> int:
    print(_schedule_line(await client.create_schedule(**schedule_body(args))))
    return 0


async def list_schedules(client: RestClient, args: argparse.Namespace) -> int:
    _print_table([("NAME", "WHEN", "NEXT FIRE", "PAUSED", "OVERLAP")] + [
        (s["name"], _when(s), _next_fire(s), "yes" if s["paused"] else "no", s["overlap"])
        for s in await client.schedules()])
    return 0


async def show_schedule(client: RestClient, args: argparse.Namespace) -> int:
    print(json.dumps(await client.schedule(args.name), indent=2))
    return 0


async def pause_schedule(client: RestClient, args: argparse.Namespace) -> int:
    print(_schedule_line(await client.change_schedule(args.name, paused=True)))
    return 0


async def resume_schedule(client: RestClient, args: argparse.Namespace) -> int:
    print(_schedule_line(await client.change_schedule(args.name, paused=False)))
    return 0


async def delete_schedule(client: RestClient, args: argparse.Namespace) -> int:
    await client.delete_schedule(args.name)
    print("deleted")
    return 0


async def trigger_schedule(client: RestClient, args: argparse.Namespace) -> int:
    print((await client.trigger_schedule(args.name))["task_id"])
    return 0


async def schedule_fires(client: RestClient, args: argparse.Namespace) -> int:
    fires: list[dict[str, Any]] = []
    before: str | None = None
    while len(fires) < args.limit:
        page = await client.schedule_fires(args.name, limit=min(PAGE, args.limit - len(fires)),
                                           before=before)
        fires += page["fires"]
        before = page["next_before"]
        if before is None:
            break
    _print_table([("FIRE TIME", "OUTCOME", "TASK", "TASK STATE", "REASON")] + [
        (_to_the_second(f["fire_time"]), f["outcome"], f["task_id"] or "-",
         f["task_state"] or "-", f["reason"] or "-") for f in fires])
    return 0
