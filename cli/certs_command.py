"""``strata certs init DIR --regions a,b``: the certificates of mutual TLS between the
tiers (:mod:`strata.common.certs` makes them; this says what was written)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

LEAF_DAYS = 365  # strata.common.certs.LEAF_DAYS, not imported here: the CLI starts fast


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give region names separated by commas: a,b,c")
    return names


def _days(text: str) -> int:
    if not re.fullmatch(r"[1-9][0-9]{0,4}", text):
        raise argparse.ArgumentTypeError(f"a whole number of days, 1 or more: {text!r}")
    return int(text)


def add_commands(group: argparse.ArgumentParser,
                 subs: dict[str, argparse.ArgumentParser]) -> None:
    """``strata certs SUBCOMMAND``; each one's parser is ``subs["certs NAME"]``."""
    sub = group.add_subparsers(dest="certs_command", required=True, metavar="SUBCOMMAND",
                               help="what to do")
    text = ("make a CA (unless DIR has one: it is kept) and issue from it a certificate "
            "and key for the master, each region, the workers and gRPC API clients; "
            "run it again to rotate them")
    init = subs["certs init"] = sub.add_parser("init", help=text, description=text)
    init.add_argument("dir", metavar="DIR", help="where the files go (made if missing)")
    init.add_argument("--regions", type=_names, default=[], metavar="A,B,...",
                      help="the regions to issue certificates for, by name")
    init.add_argument("--host", action="append", default=[], dest="hosts", metavar="NAME",
                      help="one more DNS name or IP address the master's and the regions' "
                           "certificates answer to (repeatable)")
    init.add_argument("--days", type=_days, default=LEAF_DAYS,
                      help=f"how long the issued certificates are valid (default: {LEAF_DAYS})")
    init.add_argument("--force", action="store_true",
                      help="make a new CA even though DIR has one: certificates of the old "
                           "one are no longer trusted by processes given the new ca.pem")


def run(args: argparse.Namespace) -> int:
    from strata.common import certs

    assert args.certs_command == "init"
    written = certs.init(Path(args.dir), regions=args.regions, hosts=args.hosts,
                         force=args.force, days=args.days)
    where = written.directory
    if written.ca_created:
        print(f"made a new CA in {where}: {certs.CA_CERT} (give it to every process) and "
              f"{certs.CA_KEY} (keep it off the hosts that run Strata)")
    else:
        print(f"kept the CA in {where} ({certs.CA_CERT}): certificates already issued by "
              "it stay trusted")
    rows = [("master", certs.MASTER), *((f"region {r}", certs.region_stem(r))
                                        for r in dict.fromkeys(args.regions)),
            ("workers (all of them)", certs.WORKER),
            ("gRPC API clients (grpcurl)", certs.CLIENT)]
    width = max(len(f"{stem}.pem, {stem}-key.pem") for _, stem in rows)
    print("issued, with new keys (0600):")
    for who, stem in rows:
        print(f"  {f'{stem}.pem, {stem}-key.pem':<{width}}  {who}")
    print("each process: STRATA_TLS_CA=<DIR>/ca.pem STRATA_TLS_CERT=<DIR>/<its>.pem "
          "STRATA_TLS_KEY=<DIR>/<its>-key.pem; a running one takes new files on SIGHUP")
    return 0
