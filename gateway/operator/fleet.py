"""The fleet at a glance: one row per gateway from what each leaves retained on the broker.

A gateway keeps two retained documents that together say how it is doing: its status (online
with a since, or the last will's offline) and its reported twin (backlog, disk, dead letters,
software version, republished every minute, stamped `reportedAt`). Reading both for every gateway
under the prefix is one retained read, whatever the fleet's size, and needs nothing from the
gateways themselves, so a gateway that is down still has a row: its last words.
"""

from __future__ import annotations

import calendar
import json
import time
from dataclasses import asdict, dataclass

from gateway.operator.session import CloudSession


@dataclass(frozen=True)
class GatewayRow:
    """One gateway as the fleet view shows it; None where its documents do not say."""

    gateway: str
    online: bool
    since: float | None  # online since, or offline since (a clean stop says when)
    last_seen: float | None  # its latest reported twin, or its online status
    backlog_messages: int | None
    oldest_age_secs: float | None
    disk_free_bytes: int | None
    disk_full_secs: float | None
    dead_letters: int | None
    version: str | None

    def to_json(self) -> dict:
        return asdict(self)


def fleet_filters(prefix: str) -> list[str]:
    return [f"{prefix}gateways/+/status", f"{prefix}gateways/+/twin/reported"]


def rows_from_documents(prefix: str, documents: dict[str, bytes]) -> list[GatewayRow]:
    """The rows for a retained read of `fleet_filters(prefix)`; a gateway with only one of the
    two documents still gets a row (a twin alone: never connected since the status existed)."""
    status: dict[str, dict] = {}
    twins: dict[str, dict] = {}
    base = f"{prefix}gateways/"
    for topic, payload in documents.items():
        if not topic.startswith(base):
            continue
        gw, _, kind = topic[len(base):].partition("/")
        doc = _json(payload)
        if kind == "status":
            status[gw] = doc
        elif kind == "twin/reported":
            twins[gw] = doc
    return [gateway_row(gw, status.get(gw, {}), twins.get(gw, {}))
            for gw in sorted(status.keys() | twins.keys())]


def gateway_row(gateway: str, status: dict, twin: dict) -> GatewayRow:
    """A row from one gateway's status document and reported twin (either may be {})."""
    online = status.get("state") == "online"
    since = _number(status.get("since"))
    reported_at = _parse_iso(twin.get("reportedAt"))
    seen = [t for t in (reported_at, since if online else None) if t is not None]
    backlog = _dict(twin.get("backlog"))
    disk = _dict(twin.get("disk"))
    version = twin.get("softwareVersion")
    return GatewayRow(
        gateway=gateway,
        online=online,
        since=since,
        last_seen=max(seen) if seen else None,
        backlog_messages=_int(backlog.get("messages")),
        oldest_age_secs=_number(backlog.get("oldestAgeSecs")),
        disk_free_bytes=_int(disk.get("freeBytes")),
        disk_full_secs=_number(disk.get("fullInSecs")),
        dead_letters=_int(twin.get("deadLetters")),
        version=version if isinstance(version, str) else None,
    )


def worst_first(rows: list[GatewayRow]) -> list[GatewayRow]:
    """Offline first (the longest silent first), then the oldest backlog, the soonest full disk,
    the most dead letters; the gateway id breaks ties so that the order is stable."""
    def key(row: GatewayRow) -> tuple:
        return (
            row.online,
            row.last_seen if not row.online and row.last_seen is not None else float("inf"),
            -(row.oldest_age_secs or 0.0),
            row.disk_full_secs if row.disk_full_secs is not None else float("inf"),
            -(row.dead_letters or 0),
            row.gateway,
        )
    return sorted(rows, key=key)


def fleet_status(session: CloudSession) -> list[GatewayRow]:
    """Every gateway under the session's prefix, worst first."""
    found = session.read_retained(fleet_filters(session.prefix))
    return worst_first(rows_from_documents(session.prefix, found))


def _json(payload: bytes) -> dict:
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _dict(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _parse_iso(value: object) -> float | None:
    """The reported twin's `2026-11-23T04:00:00Z` as Unix time."""
    if not isinstance(value, str):
        return None
    try:
        return float(calendar.timegm(time.strptime(value, "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:
        return None


def stamp(t: float) -> str:
    """A moment as every fleet view prints it: UTC, to the second."""
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(t))


def age(secs: float) -> str:
    """A duration in the two largest units, as an operator reads a backlog's age."""
    secs = int(secs)
    if secs >= 86400:
        return f"{secs // 86400} d {secs % 86400 // 3600} h"
    if secs >= 3600:
        return f"{secs // 3600} h {secs % 3600 // 60} min"
    if secs >= 60:
        return f"{secs // 60} min {secs % 60} s"
    return f"{secs} s"
