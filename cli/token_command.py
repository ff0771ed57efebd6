"""``strata token create | list | revoke``: API tokens, straight in the master's database
(its URL as ``strata migrate`` takes it), so that the first one can be made before any
master accepts a call. A token is printed once, when it is made; only its hash is kept.

A name taken (create) or unknown (revoke) is ``strata: <message>`` on stderr, exit 1."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import datetime

from strata.common.errors import Conflict, InvalidInput, NotFound
from strata.common.settings import MasterSettings


def add_commands(group: argparse.ArgumentParser,
                 subs: dict[str, argparse.ArgumentParser]) -> None:
    """``strata token SUBCOMMAND``; each one's parser is ``subs["token NAME"]``."""
    sub = group.add_subparsers(dest="token_command", required=True, metavar="SUBCOMMAND",
                               help="what to do")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        subs[f"token {name}"] = one = sub.add_parser(name, help=help_text,
                                                     description=help_text)
        one.add_argument("--database-url", dest="database_url", metavar="URL",
                         help=MasterSettings.model_fields["database_url"].description)
        return one

    c = command("create", "make an API token and print it (once: only its hash is kept)")
    c.add_argument("name", help="its name: 1 to 64 letters, digits and _.:- (unique)")
    command("list", "list the API tokens in the database: names, when made and last used")
    r = command("revoke", "revoke an API token: every master refuses it within a second")
    r.add_argument("name", help="the token's name")


def _when(stamp: datetime | None) -> str:
    return stamp.strftime("%Y-%m-%dT%H:%M:%SZ") if stamp is not None else "never"


def run(args: argparse.Namespace, settings: MasterSettings) -> int:
    # Imported here: the master's code is loaded only by the commands that need it.
    from strata.master import auth

    try:
        if args.token_command == "create":
            token, made = asyncio.run(auth.create_token(settings, args.name))
            print(token, flush=True)
            print(f"strata: API token {made.name!r} made; it is shown this once. Send it "
                  "as Authorization: Bearer <token> (STRATA_TOKEN for the CLI and the "
                  "SDK).", file=sys.stderr)
        elif args.token_command == "list":
            rows = [("NAME", "CREATED", "LAST USED")] + [
                (t.name, _when(t.created_at), _when(t.last_used_at))
                for t in asyncio.run(auth.list_tokens(settings))]
            widths = [max(len(row[i]) for row in rows) for i in range(3)]
            for row in rows:
                print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
                      .rstrip())
        else:
            asyncio.run(auth.revoke_token(settings, args.name))
            print(f"revoked {args.name}")
    except (Conflict, InvalidInput, NotFound) as exc:
        print(f"strata: {exc}", file=sys.stderr)
        return 1
    return 0
