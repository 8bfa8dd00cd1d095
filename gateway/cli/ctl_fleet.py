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
from gateway.operator import Accounts, GatewayRow, LossAccounts, fleet_status
from gateway.operator.fleet import age, stamp
from gateway.upstream import cloud_contract as contract

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


class _Verifier:
    """LossAccounts fed from paho's thread, read from the command's."""

    def __init__(self, gateways: list[str], since: int | None) -> None:
        self.wanted = set(gateways)
        self.accounts = LossAccounts(since)
        self.lock = threading.Lock()
        self.settlements: dict[str, list[int]] = {gw: [] for gw in gateways}  # their `issued`

    def on_message(self, topic: str, payload: bytes, props: list[tuple[str, str]]) -> None:
        if topic.endswith("/ledger"):
            self._settlement(payload)
            return
        found = dict(props)
        gw, seq = found.get("gw"), found.get("seq", "")
        if gw in self.wanted and seq.isdigit():
            with self.lock:
                self.accounts.telemetry(gw, int(seq))

    def _settlement(self, payload: bytes) -> None:
        try:
            doc = json.loads(payload)
            with self.lock:
                self.accounts.settlement(doc)
                self.settlements.setdefault(doc["gw"], []).append(int(doc["issued"]))
        except (ValueError, TypeError, KeyError) as exc:
            print(f"gatewayctl verify: ignored a ledger document: {exc}", file=sys.stderr)

    def snapshot(self) -> list[Accounts]:
        with self.lock:
            return [self.accounts.accounts(gw) for gw in sorted(self.wanted)]

    def settled(self, since_given: bool) -> bool:
        """Without --follow: done once every seq issued by the end of the judged window has
        ended. The window: from the start to the `issued` of the next settlement (with
        --since: of the first)."""
        with self.lock:
            for gw in self.wanted:
                issued = self.settlements.get(gw, [])
                need = 1 if since_given else 2
                if len(issued) < need:
                    return False
                if self.accounts.accounts(gw).settled_below < issued[need - 1]:
                    return False
        return True


def _verify(args: argparse.Namespace) -> int:
    verifier = _Verifier(args.gateways, args.since)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    # a session the broker keeps across a lost connection: nothing is missed while paho
    # reconnects (the broker queues it), so a broker restart is no false loss
    with ctl_cloud._Session(args, session_expiry=VERIFY_SESSION_SECS) as cloud:
        p = cloud.prefix
        filters = [contract.telemetry_topic(p, "+"), contract.telemetry_topic(p, "+/+")]
        filters += [contract.ledger_topic(p, gw) for gw in args.gateways]
        cloud.stream(filters, verifier.on_message)
        print(f"gatewayctl verify: listening for {', '.join(args.gateways)}; judging "
              + (f"from seq {args.since}" if args.since is not None
                 else "from the next settlement's issued"), file=sys.stderr, flush=True)
        deadline = time.monotonic() + args.timeout
        shown: list[dict] | None = None
        while not stop.wait(VERIFY_TICK_SECS):
            if args.follow:
                now = [a.to_json() for a in verifier.snapshot()]
                if now != shown:
                    _print_accounts(args, verifier.snapshot(), final=False)
                    shown = now
            elif verifier.settled(args.since is not None) or time.monotonic() >= deadline:
                break
    final = verifier.snapshot()
    _print_accounts(args, final, final=True)
    if any(a.unaccounted for a in final):
        return 1
    if not args.follow and not verifier.settled(args.since is not None):
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
