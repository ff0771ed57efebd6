"""The ``strata`` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from strata import certs_command, commands, token_command
from strata.common import logs
from strata.common.errors import StrataError
from strata.common.settings import MasterSettings, RegionalSettings, UpSettings, WorkerSettings
from strata.flags import add_settings_flags, settings_from

S = TypeVar("S", MasterSettings, RegionalSettings, WorkerSettings)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    return _build()[0]


def _build() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The parser, and each subcommand's own parser (for its usage on a bad value)."""
    p = argparse.ArgumentParser(prog="strata", description="Hierarchical task scheduler.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    subs: dict[str, argparse.ArgumentParser] = {}

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        subs[name] = sub.add_parser(name, help=help_text, description=help_text)
        return subs[name]

    up = command("up", "run a topology as local processes (embedded PostgreSQL unless "
                       "a database is configured)")
    up.add_argument("topology", nargs="?", help="topology file (default: topologies/local.toml)")
    add_settings_flags(up, UpSettings)

    c = command("compose", "print a topology as a Docker Compose file")
    c.add_argument("topology", help="topology file, e.g. topologies/three-regions.toml")

    add_settings_flags(command("master", "run the master (REST + gRPC + scanner)"),
                       MasterSettings)
    add_settings_flags(command("regional", "run a regional coordinator"), RegionalSettings)
    add_settings_flags(command("worker", "run a worker"), WorkerSettings)
    add_settings_flags(command("migrate", "apply database migrations, then exit"),
                       MasterSettings)

    s = command("submit", "schedule a shell task; prints its id")
    s.add_argument("--command", required=True, dest="shell_command", metavar="COMMAND",
                   help="the shell command to run (by /bin/sh -c)")
    s.add_argument("--at", help="ISO 8601 time to run at (default: now)")
    s.add_argument("--region", help="run it only in this region")
    s.add_argument("--priority", type=int, help="higher runs first (default: 0)")
    s.add_argument("--max-attempts", type=int, help="attempts before it fails (default: 1)")
    s.add_argument("--timeout", type=float, dest="timeout_s", metavar="SECONDS",
                   help="each attempt's time limit (default: 3600)")
    s.add_argument("--depends-on", action="append", metavar="ID",
                   help="start only once this task has ended (repeat for more); if it "
                        "did not succeed, see --on-upstream-failure")
    s.add_argument("--on-upstream-failure", choices=("cancel", "run"),
                   help="if a task it depends on fails or is cancelled: cancel this one, "
                        "or run it anyway (default: cancel)")
    s.add_argument("--concurrency-key", metavar="KEY",
                   help="count it against KEY's limit (strata concurrency set KEY N)")
    s.add_argument("--wait", action="store_true",
                   help="wait for the end; print the state and the output (exit 1 if it "
                        "did not succeed)")
    commands.add_api_flag(s)

    w = command("watch", "print task state changes as they happen (of the tasks named, "
                         "or of every task)")
    w.add_argument("task_ids", nargs="*", metavar="ID", help="only these tasks")
    w.add_argument("--state", help="only changes into this state")
    w.add_argument("--region", help="only changes of tasks in this region")
    w.add_argument("--json", action="store_true", help="one JSON object a line")
    commands.add_api_flag(w)

    st = command("status", "show a task as JSON")
    st.add_argument("task_id", help="the task's id")
    commands.add_api_flag(st)

    ls = command("list", "list tasks, oldest first")
    ls.add_argument("--state", help="only tasks in this state")
    ls.add_argument("--region", help="only tasks of this region")
    ls.add_argument("--kind", help="only tasks of this kind")
    ls.add_argument("--limit", type=_positive, default=50, metavar="N",
                    help="at most this many (default: 50)")
    ls.add_argument("--newest-first", action="store_true", help="newest first")
    commands.add_api_flag(ls)

    for name, help_text in (("cancel", "cancel a task that has not finished"),
                            ("logs", "print a task's stdout and stderr (each marked if cut "
                                     "to its tail)"),
                            ("retry", "run a failed or cancelled task again, as a new "
                                      "task; prints its id")):
        one = command(name, help_text)
        one.add_argument("task_id", help="the task's id")
        commands.add_api_flag(one)
    rp = command("reprioritize", "change the priority of a task that has not started; "
                                 "prints its new priority and its state")
    rp.add_argument("task_id", help="the task's id")
    rp.add_argument("priority", type=int, metavar="N",
                    help="the new priority: higher runs first (may be negative)")
    commands.add_api_flag(rp)
    _concurrency_commands(command("concurrency", "set, list, show and clear limits on how "
                                                 "many tasks of a concurrency key run at "
                                                 "once"), subs)
    _schedule_commands(command("schedule", "make, list, pause, resume and delete schedules "
                                           "(tasks made on a cron or every so many seconds)"),
                       subs)
    certs_command.add_commands(command("certs", "make the certificates of mutual TLS "
                                                "between the master, regions and workers"),
                               subs)
    token_command.add_commands(command("token", "make, list and revoke API tokens (in the "
                                                "master's database)"), subs)
    return p, subs


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, not {text}")
    return value


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object (a POST /v1/tasks body)")
    return value


def _schedule_commands(group: argparse.ArgumentParser,
                       subs: dict[str, argparse.ArgumentParser]) -> None:
    """``strata schedule SUBCOMMAND``; each one's parser is ``subs["schedule NAME"]``."""
    sub = group.add_subparsers(dest="schedule_command", required=True, metavar="SUBCOMMAND",
                               help="what to do")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        subs[f"schedule {name}"] = one = sub.add_parser(name, help=help_text,
                                                        description=help_text)
        return one

    def named(name: str, help_text: str) -> argparse.ArgumentParser:
        one = command(name, help_text)
        one.add_argument("name", help="the schedule's name")
        commands.add_api_flag(one)
        return one

    c = command("create", "make a schedule of a shell task (or of any task, --task-json)")
    c.add_argument("name", help="its name: letters, digits and _.:- (unique)")
    when = c.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", metavar="EXPR",
                      help="a cron expression: 5 fields, or 6 with seconds first")
    when.add_argument("--every", type=_seconds, dest="every_s", metavar="SECONDS",
                      help="fire every so many seconds (1 or more)")
    c.add_argument("--timezone", metavar="TZ",
                   help="the IANA time zone a cron expression is read in (default: UTC)")
    what = c.add_mutually_exclusive_group(required=True)
    what.add_argument("--command", dest="shell_command", metavar="COMMAND",
                      help="the shell command each fire runs (by /bin/sh -c)")
    what.add_argument("--task-json", type=_json_object, metavar="JSON",
                      help="the task each fire makes, as a POST /v1/tasks body without "
                           "run_at, of any kind")
    c.add_argument("--region", help="run its tasks only in this region")
    c.add_argument("--priority", type=int, help="higher runs first (default: 0)")
    c.add_argument("--max-attempts", type=int,
                   help="attempts before a task fails (default: 1)")
    c.add_argument("--timeout", type=float, dest="timeout_s", metavar="SECONDS",
                   help="each attempt's time limit (default: 3600)")
    c.add_argument("--overlap", choices=("allow", "skip", "cancel_previous"),
                   help="a fire while the previous task runs: runs too, is skipped, or "
                        "cancels the previous one (default: allow)")
    c.add_argument("--catchup", choices=("none", "all"),
                   help="fires missed while the master was down: dropped or all made "
                        "(default: none)")
    c.add_argument("--start-at", metavar="T", help="ISO 8601 time of the first fire at the "
                                                   "earliest (default: now)")
    c.add_argument("--end-at", metavar="T", help="ISO 8601 time after which it fires no more")
    c.add_argument("--paused", action="store_true", help="make it paused")
    commands.add_api_flag(c)

    ls = command("list", "list schedules: when each fires next, paused or not")
    commands.add_api_flag(ls)
    named("show", "show a schedule as JSON")
    named("pause", "stop a schedule firing until resumed")
    named("resume", "let a paused schedule fire again, from now on")
    named("delete", "delete a schedule (the tasks it made stay)")
    named("trigger", "fire a schedule now, once; prints the task's id")
    f = named("fires", "a schedule's fires, newest first: outcome, task and its state")
    f.add_argument("--limit", type=_positive, default=20, metavar="N",
                   help="at most this many (default: 20)")


def _concurrency_commands(group: argparse.ArgumentParser,
                          subs: dict[str, argparse.ArgumentParser]) -> None:
    """``strata concurrency SUBCOMMAND``; each one's parser is ``subs["concurrency NAME"]``."""
    sub = group.add_subparsers(dest="concurrency_command", required=True,
                               metavar="SUBCOMMAND", help="what to do")

    def command(name: str, help_text: str, *, keyed: bool = True) -> argparse.ArgumentParser:
        subs[f"concurrency {name}"] = one = sub.add_parser(name, help=help_text,
                                                           description=help_text)
        if keyed:
            one.add_argument("key", help="the concurrency key (a task's concurrency_key)")
        commands.add_api_flag(one)
        return one

    s = command("set", "let at most N tasks of KEY be dispatched or running at once")
    s.add_argument("limit", type=_positive, metavar="N", help="the limit (1 or more)")
    command("list", "list the keys that have a limit: LIMIT, ACTIVE, PENDING", keyed=False)
    command("show", "show a key's limit and its active and pending tasks as JSON")
    command("clear", "remove a key's limit: its tasks run unlimited again")


def main(argv: Sequence[str] | None = None) -> None:
    parser, subs = _build()
    args, extra = parser.parse_known_args(argv)
    own = subs[_key(args)]
    if extra:  # told with the subcommand's own usage, not the top-level one
        own.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        code = _dispatch(args, own)
    except StrataError as exc:
        print(f"strata: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


def _key(args: argparse.Namespace) -> str:
    """The (sub)command's key in the parsers of :func:`_build`: ``schedule create``."""
    if args.command == "schedule":
        return f"schedule {args.schedule_command}"
    if args.command == "concurrency":
        return f"concurrency {args.concurrency_command}"
    if args.command == "certs":
        return f"certs {args.certs_command}"
    if args.command == "token":
        return f"token {args.token_command}"
    return str(args.command)


SCHEDULE_COMMANDS = {
    "create": commands.create_schedule, "list": commands.list_schedules,
    "show": commands.show_schedule, "pause": commands.pause_schedule,
    "resume": commands.resume_schedule, "delete": commands.delete_schedule,
    "trigger": commands.trigger_schedule, "fires": commands.schedule_fires,
}

CONCURRENCY_COMMANDS = {
    "set": commands.set_concurrency, "list": commands.list_concurrency,
    "show": commands.show_concurrency, "clear": commands.clear_concurrency,
}

CLIENT_COMMANDS = {
    "submit": commands.submit, "status": commands.status, "list": commands.list_tasks,
    "cancel": commands.cancel, "logs": commands.logs, "retry": commands.retry,
    "watch": commands.watch, "reprioritize": commands.reprioritize,
}


def _serve(parser: argparse.ArgumentParser, args: argparse.Namespace, settings: type[S],
           serve: Callable[[S], Coroutine[Any, Any, None]]) -> int:
    """Run a process (master, region, worker) with its settings until it stops."""
    given = settings_from(parser, args, settings)
    logs.configure(given.log_level)
    # Workers stay on asyncio's loop: under uvloop a shell task's process was seen to die
    # of SIGSEGV before it ran (libuv forks beside gRPC's threads; asyncio's subprocesses
    # start through the standard library's way, which this worker is tested with).
    loop = getattr(given, "event_loop", "asyncio")
    with asyncio.Runner(loop_factory=_loop_factory(loop)) as runner:
        runner.run(serve(given))
    return 0


def _loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return None


def _dispatch(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.command in CLIENT_COMMANDS:
        return asyncio.run(commands.run(args, CLIENT_COMMANDS[args.command]))
    if args.command == "schedule":
        return asyncio.run(commands.run(args, SCHEDULE_COMMANDS[args.schedule_command]))
    if args.command == "concurrency":
        return asyncio.run(commands.run(args,
                                        CONCURRENCY_COMMANDS[args.concurrency_command]))
    if args.command == "certs":
        return certs_command.run(args)
    if args.command == "master":
        from strata.master import app as master_app

        return _serve(parser, args, MasterSettings, master_app.serve)
    if args.command == "regional":
        from strata.regional import app as regional_app

        return _serve(parser, args, RegionalSettings, regional_app.serve)
    if args.command == "worker":
        from strata.worker import app as worker_app

        return _serve(parser, args, WorkerSettings, worker_app.serve)
    if args.command == "migrate":
        from strata.master import app as master_app

        ms = settings_from(parser, args, MasterSettings)
        logs.configure(ms.log_level)
        applied = asyncio.run(master_app.migrate(ms))
        print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
        return 0
    if args.command == "token":
        ms = settings_from(parser, args, MasterSettings)
        logs.configure(ms.log_level)
        return token_command.run(args, ms)
    if args.command == "up":
        from strata.local import up
        from strata.topologies.topology import DEFAULT_TOPOLOGY, load

        topology = load(args.topology or DEFAULT_TOPOLOGY)
        us = settings_from(parser, args, UpSettings)
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
    raise AssertionError(args.command)


if __name__ == "__main__":
    main()
