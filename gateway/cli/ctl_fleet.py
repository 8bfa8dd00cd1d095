"""`gatewayctl` commands over the whole fleet, from the cloud broker.

    gatewayctl fleet status [--json]     one line per gateway, worst first
    gatewayctl verify GATEWAY... [--since SEQ] [--follow] [--timeout SECS] [--json]
                                         the loss ledger checked against the telemetry

The broker flags are ctl_cloud's (--cloud URL or --config FILE, --prefix...).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time

from gateway.cli import ctl_cloud
from gateway.errors import EX_TEMPFAIL
from gateway.operator import Accounts, GatewayRow, LedgerWatch, fleet_status
from gateway.operator.fleet import age, stamp

VERIFY_TICK_SECS = 0.5
VERIFY_SESSION_SECS = 3600


def _fleet_status(args: argparse.Namespace) -> int:
    with ctl_cloud._Session(args) as cloud:
        rows = fleet_status(cloud)
    if args.json:
        print(json.dumps([r.to_json() for r in rows], indent=2, sort_keys=True))
        return 0
    now = time.time()
    table = [("GATEWAY", "UPLINK", "BACKLOG", "OLDEST", "DISK FREE", "FULL IN", "DEAD",
              "VERSION", "LAST SEEN")]
    table += [fleet_line(r, now) for r in rows]
    ctl_cloud._print(args, None, table)
    print(f"{len(rows)} gateways, {sum(not r.online for r in rows)} offline")
    return 0


def fleet_line(row: GatewayRow, now: float) -> tuple[str, ...]:
    """The cells of one gateway's line; `-` where its documents do not say."""
    if row.online:
        uplink = "online"
    elif row.since is not None:
        uplink = f"offline since {stamp(row.since)}"
    else:
        uplink = "offline (last will)"
    return (
        row.gateway,
        uplink,
        _or_dash(row.backlog_messages, lambda n: f"{n} msgs"),
        _or_dash(row.oldest_age_secs, age),
        _or_dash(row.disk_free_bytes, lambda b: f"{b // 2**20} MiB"),
        _or_dash(row.disk_full_secs, age),
        _or_dash(row.dead_letters, str),
        row.version or "-",
        _or_dash(row.last_seen, lambda t: f"{stamp(t)} ({age(max(0.0, now - t))} ago)"),
    )


def _or_dash(value, fmt) -> str:
    return "-" if value is None else fmt(value)


# -- verify --------------------------------------------------------------------------------------


def _verify(args: argparse.Namespace) -> int:
    gateways = sorted(set(args.gateways))
    watch = LedgerWatch(args.since, gateways, on_ignored=lambda exc: print(
        f"gatewayctl verify: ignored a ledger document: {exc}", file=sys.stderr))
    since_given = args.since is not None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    # a session the broker keeps across a lost connection: nothing is missed while paho
    # reconnects (the broker queues it), so a broker restart is no false loss
    with ctl_cloud._Session(args, session_expiry=VERIFY_SESSION_SECS) as cloud:
        watch.start(cloud)
        print(f"gatewayctl verify: listening for {', '.join(args.gateways)}; judging "
              + (f"from seq {args.since}" if since_given
                 else "from the next settlement's issued"), file=sys.stderr, flush=True)
        deadline = time.monotonic() + args.timeout
        shown: list[dict] | None = None
        while not stop.wait(VERIFY_TICK_SECS):
            if args.follow:
                accounts = watch.snapshot(gateways)
                now = [a.to_json() for a in accounts]
                if now != shown:
                    _print_accounts(args, accounts, final=False)
                    shown = now
            elif watch.settled(gateways, since_given) or time.monotonic() >= deadline:
                break
    final = watch.snapshot(gateways)
    _print_accounts(args, final, final=True)
    if any(a.unaccounted for a in final):
        return 1
    if not args.follow and not watch.settled(gateways, since_given):
        print(f"gatewayctl verify: not everything was settled within {args.timeout:g} s "
              f"(is the gateway online?); the counts above are partial", file=sys.stderr)
        return EX_TEMPFAIL
    return 0


def _print_accounts(args: argparse.Namespace, accounts: list[Accounts], final: bool) -> None:
    for a in accounts:
        if args.json:
            print(json.dumps({**a.to_json(), "final": final}, sort_keys=True), flush=True)
        else:
            print(verify_line(a), flush=True)


def verify_line(a: Accounts) -> str:
    """One gateway's accounts as the operator reads them."""
    if a.start is None:
        return f"{a.gateway}: no ledger settlement received yet; nothing judged"
    line = (f"{a.gateway}: issued {a.issued}, delivered {a.delivered}, duplicates {a.duplicates},"
            f" expired {a.expired}, dropped {a.dropped}, dead letters {a.dead_lettered}, "
            f"reordered {a.reordered}, unaccounted {a.unaccounted} (pending {a.pending}, "
            f"never issued {a.never_issued}; judged from seq {a.start}, settled below "
            f"{a.settled_below})")
    if a.unaccounted_seqs:
        ranges = [f"{x}" if y - x == 1 else f"{x}-{y - 1}" for x, y in a.unaccounted_seqs]
        shown = ", ".join(ranges[:20]) + (f" and {len(ranges) - 20} more" if len(ranges) > 20
                                          else "")
        line += f"; unaccounted seqs: {shown}"
    return line


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register the fleet commands on gatewayctl's parser."""
    fleet = sub.add_parser("fleet", help="every gateway under the prefix (in the cloud)")
    fsub = fleet.add_subparsers(dest="fleet_command", required=True)
    status = fsub.add_parser("status", help="one line per gateway, worst first")
    ctl_cloud._connection(status)
    status.set_defaults(func=_fleet_status)

    verify = sub.add_parser("verify", help="check a gateway's loss ledger against its telemetry")
    verify.add_argument("gateways", nargs="+", metavar="GATEWAY")
    verify.add_argument("--since", type=int, metavar="SEQ",
                        help="judge from this seq (default: from the next settlement's issued)")
    verify.add_argument("--follow", action="store_true",
                        help="keep counting; a line per change, a last one on SIGINT/SIGTERM")
    verify.add_argument("--timeout", type=float, default=300.0,
                        help="without --follow: give up after this many seconds (exit 75)")
    ctl_cloud._connection(verify)
    verify.set_defaults(func=_verify)
