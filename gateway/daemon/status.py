"""The gateway's state in one dict and in one line.

`report()` answers the control socket (`gatewayctl status`) and every metrics scrape
(daemon/metrics.py renders the same dict), so the two never disagree and nothing is counted per
message for them: every number is read from the object that holds it when someone asks. `line()`
is the short form systemd shows (sd_notify STATUS=) and the hourly summary in the journal.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gateway
from gateway.child.offline_trust import AuditLog, OfflineTrust
from gateway.child.registry_sync import RegistrySync
from gateway.child.server import ChildServer
from gateway.daemon.rates import Rates, projections
from gateway.daemon.uplink_slot import UplinkSlot
from gateway.hub.local_hub import LocalHub
from gateway.hub.router import Router
from gateway.hub.settings import SettingsSync
from gateway.storage.disk_guard import DiskGuard, disk_usage
from gateway.storage.salvage import SalvageReport
from gateway.storage.store import Store
from gateway.storage.writer import Writer
from gateway.upstream.dead_letters import DeadLetters
from gateway.upstream.ingest import Ingest
from gateway.upstream.outbox import Outbox


@dataclass
class Endpoints:
    """What start-up bound, filled in by the lifecycle as it binds (empty before)."""

    listeners: list[tuple[str, int]] = field(default_factory=list)
    metrics: tuple[str, int] | None = None


class Status:
    """Reads the facts from their holders; holds nothing but the start time and write count."""

    def __init__(
        self,
        *,
        gateway_id: str,
        storage_path: Path,
        endpoints: Endpoints,
        server: ChildServer,
        registry: RegistrySync,
        settings: SettingsSync,
        router: Router,
        ingest: Ingest,
        outbox: Outbox,
        dead_letters: DeadLetters,
        salvage: SalvageReport | None,
        disk: DiskGuard,
        trust: OfflineTrust,
        audit: AuditLog,
        hub: LocalHub,
        uplink: UplinkSlot,
        rates: Rates,
        writer: Writer,
        store: Store,
        modules: Callable[[], dict] = dict,
        ledger: Callable[[], dict] = dict,
    ) -> None:
        self._gateway_id = gateway_id
        self._path = storage_path
        self._endpoints = endpoints
        self._server = server
        self._registry = registry
        self._settings = settings
        self._router = router
        self._ingest = ingest
        self._outbox = outbox
        self._dead_letters = dead_letters
        self._salvage = salvage
        self._disk = disk
        self._trust = trust
        self._audit = audit
        self._hub = hub
        self._uplink = uplink
        self._rates = rates
        self._writer = writer
        self._store = store
        self._modules = modules  # the agent's account of the deployment and its modules
        self._ledger = ledger  # the loss ledger's settlements (daemon/ledger_report.py)
        self._started = time.time()
        self._io_at_start = _write_bytes()

    def line(self) -> str:
        oldest = self._outbox.oldest_enqueued_ms()
        age = f", oldest {time.time() - oldest / 1000:.0f} s" if oldest else ""
        free = disk_usage(str(self._path)).free
        return (
            f"uplink {self._uplink.state()}; {len(self._server.sessions)} children; "
            f"backlog {self._outbox.stats.count} msgs{age}; disk free {free // 2**20} MiB"
        )

    def site(self) -> dict:
        """The few numbers the fleet view needs from every gateway (the reported twin carries
        them): disk free, when it fills at the current rates, dead letters, software version."""
        free = disk_usage(str(self._path)).free
        full = projections(self._outbox.stats.count, free, self._rates.per_second())
        return {"disk": {"freeBytes": free, "fullInSecs": full["disk_full_secs"]},
                "deadLetters": self._dead_letters.count,
                "softwareVersion": software_version()}

    def report(self) -> dict:
        stats = self._outbox.stats
        oldest = self._outbox.oldest_enqueued_ms()
        disk = disk_usage(str(self._path))
        uplink = self._uplink.stats()
        rates = self._rates.per_second()
        metrics = self._endpoints.metrics
        return {
            "gateway_id": self._gateway_id,
            "version": software_version(),
            "pid": os.getpid(),
            "uptime_secs": round(time.time() - self._started, 1),
            "listeners": [f"{h}:{p}" for h, p in self._endpoints.listeners],
            "metrics": "{}:{}".format(*metrics) if metrics else None,
            "uplink": vars(uplink) if uplink is not None else {"state": "disabled"},
            "children": sorted(self._server.sessions),
            "child_listeners": {d: c.listener for d, c in sorted(self._server.sessions.items())},
            "connections": self._server.connections_by_listener(),
            "children_refused": self._server.refused,
            "children_admitted": self._server.admitted,
            "https_methods": {"served": self._server.https_served,
                              "refused": self._server.https_refused},
            "registry_version": self._registry.registry.version,
            "registry_children": len(self._registry.registry.children),
            "registry_last_refusal": self._registry.last_refusal,
            "settings_version": self._settings.settings.version,
            "settings_last_refusal": self._settings.last_refusal,
            "time_to_live_secs": self._ingest.ttl_secs,
            "last_child_refusal": self._server.last_refusal,
            "audit_pending": self._audit.count,
            "offline_trust": {
                "trust_secs": self._trust.trust_secs,
                "fresh_at": self._trust.fresh_at,
                "expired": self._trust.expired(),
            },
            "hub": self._hub.status(),
            "modules": self._modules(),
            "routes": self._router.describe(),
            "unrouted": self._router.unrouted,
            "dead_letters": self._dead_letters.count,
            "backlog": {
                "messages": stats.count,
                "bytes": stats.bytes,
                "oldest_age_secs": round(time.time() - oldest / 1000, 1) if oldest else None,
                "by_priority": {str(p): n for p, n in self._outbox.backlog_by_priority().items()},
            },
            "rates": rates,
            "projections": projections(stats.count, disk.free, rates),
            "store_bytes": _tree_bytes(self._path),
            "outbox": vars(stats),
            "next_seq": self._outbox.next_seq,
            "ledger": self._ledger(),
            "store_error": self._writer.store_error,
            "writer": {
                "commits": self._writer.commits,
                "jobs_committed": self._writer.jobs_committed,
                "backlog": self._writer.backlog,
                "synced_writes": self._store.synced_writes,
                "sync_guard": self._store.sync_guarded,
                "sync_refused_on_loop": self._store.sync_refused,
            },
            "salvage": self._salvage_report(),
            "disk": self._disk_report(disk),
            "process_write_bytes": _write_bytes() - self._io_at_start,
        }

    def _salvage_report(self) -> dict | None:
        salvage = self._salvage
        if salvage is None:
            return None
        return {
            "quarantine": str(salvage.quarantine),
            "messages": salvage.messages,
            "unreadable": salvage.unreadable,
            "other_records": salvage.other_records,
            "error": salvage.error,
        }

    def _disk_report(self, usage) -> dict:
        guard = self._disk
        return {
            "free_bytes": usage.free,
            "total_bytes": usage.total,
            "free_percent": guard.state.free_percent,
            "min_free_percent": guard.min_free_percent,
            "max_bytes": guard.max_bytes,
            "policy": guard.policy,
            "full": guard.state.full,
            "full_reason": guard.state.reason,
            "dropped": guard.state.dropped,
            "refused": guard.state.refused,
        }


def software_version() -> str:
    """The package's version, from the package itself: importlib.metadata would cost 2.5 MiB
    of RSS (email, zipfile and csv come with it) for one string (issue 18)."""
    return gateway.__version__


def _tree_bytes(path) -> int:
    total = 0
    with contextlib.suppress(OSError):
        for entry in os.scandir(path):
            with contextlib.suppress(OSError):
                if entry.is_file(follow_symlinks=False):
                    total += entry.stat().st_size
    return total


def _write_bytes() -> int:
    """Bytes this process caused to be written to storage (proc_pid_io(5)); 0 without it."""
    try:
        with open("/proc/self/io", "rb") as io:
            for line in io:
                if line.startswith(b"write_bytes:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0
