"""`gatewayctl` commands over the whole fleet, from the cloud broker.

    gatewayctl fleet status [--json]     one line per gateway, worst first

The broker flags are ctl_cloud's (--cloud URL or --config FILE, --prefix...).
"""

from __future__ import annotations

import argparse
import json
import time

from gateway.cli import ctl_cloud
from gateway.operator import GatewayRow, fleet_status


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
        uplink = f"offline since {_stamp(row.since)}"
    else:
        uplink = "offline (last will)"
    return (
        row.gateway,
        uplink,
        _or_dash(row.backlog_messages, lambda n: f"{n} msgs"),
        _or_dash(row.oldest_age_secs, _age),
        _or_dash(row.disk_free_bytes, lambda b: f"{b // 2**20} MiB"),
        _or_dash(row.disk_full_secs, _age),
        _or_dash(row.dead_letters, str),
        row.version or "-",
        _or_dash(row.last_seen, lambda t: f"{_stamp(t)} ({_age(max(0.0, now - t))} ago)"),
    )


def _or_dash(value, fmt) -> str:
    return "-" if value is None else fmt(value)


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(t))


def _age(secs: float) -> str:
    secs = int(secs)
    if secs >= 86400:
        return f"{secs // 86400} d {secs % 86400 // 3600} h"
    if secs >= 3600:
        return f"{secs // 3600} h {secs % 3600 // 60} min"
    if secs >= 60:
        return f"{secs // 60} min {secs % 60} s"
    return f"{secs} s"


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register the fleet commands on gatewayctl's parser."""
    fleet = sub.add_parser("fleet", help="every gateway under the prefix (in the cloud)")
    fsub = fleet.add_subparsers(dest="fleet_command", required=True)
    status = fsub.add_parser("status", help="one line per gateway, worst first")
    ctl_cloud._connection(status)
    status.set_defaults(func=_fleet_status)
