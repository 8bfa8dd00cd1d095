"""What the pages show, in words: the fleet's cells and a twin's two sides, key by key.

Kept apart from the routes so that the wording is one function each, and the templates only lay
it out.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from gateway.operator import Accounts, GatewayRow
from gateway.operator.fleet import age, stamp


@dataclass(frozen=True)
class FleetCells:
    """One gateway's line on the fleet page; `state` is the CSS class (online, offline)."""

    gateway: str
    state: str
    uplink: str
    backlog: str
    oldest: str
    disk: str
    dead_letters: str
    version: str
    last_seen: str


def fleet_cells(rows: list[GatewayRow], now: float | None = None) -> list[FleetCells]:
    now = time.time() if now is None else now
    return [_cells(r, now) for r in rows]


def _cells(row: GatewayRow, now: float) -> FleetCells:
    if row.online:
        uplink = f"online since {stamp(row.since)}" if row.since else "online"
    elif row.since is not None:
        uplink = f"offline since {stamp(row.since)}"
    else:
        uplink = "offline"
    disk = "-"
    if row.disk_free_bytes is not None:
        disk = f"{row.disk_free_bytes // 2**20} MiB free"
        if row.disk_full_secs is not None:
            disk += f", full in {age(row.disk_full_secs)}"
    return FleetCells(
        gateway=row.gateway,
        state="online" if row.online else "offline",
        uplink=uplink,
        backlog="-" if row.backlog_messages is None else f"{row.backlog_messages} msgs",
        oldest="-" if row.oldest_age_secs is None else age(row.oldest_age_secs),
        disk=disk,
        dead_letters="-" if row.dead_letters is None else str(row.dead_letters),
        version=row.version or "-",
        last_seen="-" if row.last_seen is None else f"{age(max(0.0, now - row.last_seen))} ago",
    )


@dataclass(frozen=True)
class TwinRow:
    key: str
    desired: str
    reported: str
    differs: bool  # both sides have the key, with different values


def twin_sides(desired: dict | None, reported: dict | None) -> list[TwinRow]:
    """The top-level properties of both halves side by side, `$version` first."""
    d, r = desired or {}, reported or {}
    keys = sorted(d.keys() | r.keys(), key=lambda k: (k != "$version", k))
    return [TwinRow(k, _show(d, k), _show(r, k), k in d and k in r and d[k] != r[k]
                    and k != "$version") for k in keys]


def _show(doc: dict, key: str) -> str:
    return json.dumps(doc[key], sort_keys=True) if key in doc else ""


def ledger_cells(accounts: Accounts | None) -> dict:
    """The loss ledger's accounts as the gateway page lays them out: `state` says whether
    there is anything to show (off, waiting for a settlement, judged)."""
    if accounts is None:
        return {"state": "off"}
    if accounts.start is None:
        return {"state": "waiting"}
    ranges = [f"{a}" if b - a == 1 else f"{a}-{b - 1}" for a, b in accounts.unaccounted_seqs]
    return {"state": "judged", "start": accounts.start, "settled_below": accounts.settled_below,
            "counts": [("issued", accounts.issued), ("delivered", accounts.delivered),
                       ("duplicates", accounts.duplicates), ("expired", accounts.expired),
                       ("dropped", accounts.dropped), ("dead letters", accounts.dead_lettered),
                       ("reordered", accounts.reordered), ("unaccounted", accounts.unaccounted),
                       ("pending", accounts.pending), ("never issued", accounts.never_issued)],
            "unaccounted": accounts.unaccounted,
            "unaccounted_seqs": ", ".join(ranges[:20]) + (
                f" and {len(ranges) - 20} more" if len(ranges) > 20 else "")}
