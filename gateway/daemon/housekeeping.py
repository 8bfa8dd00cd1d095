"""The daemon's periodic tick: everything that must happen by time rather than by a message.

Once a second: the systemd watchdog keep-alive (at half of WatchdogSec), the expiry sweep of the
outbox and of the children's queues, the rates, the disk guard, the offline-trust clock, the
audit trail to the cloud once it is back, and STATUS= for `systemctl status`. Less often: the
loss ledger's settlement (cloud.ledger_interval_secs), the gateway's reported twin (a minute), a
summary line in the journal (an hour), and the line counting expired messages, at most once a
minute however many expire in between, so that a long outage leaves a few lines in the journal
and not thousands.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable

from gateway.child.offline_trust import AuditLog, OfflineTrust
from gateway.daemon.ledger_report import LedgerReport
from gateway.daemon.rates import Rates, Sample
from gateway.daemon.reported_twin import ReportedTwin
from gateway.daemon.uplink_slot import UplinkSlot
from gateway.hub.local_hub import LocalHub
from gateway.log import Event, event
from gateway.storage.disk_guard import DiskGuard
from gateway.storage.store import Store
from gateway.storage.writer import Writer
from gateway.upstream import cloud_contract as contract
from gateway.upstream.ingest import Ingest
from gateway.upstream.outbox import Outbox

TICK_SECS = 1.0
EXPIRY_SWEEP_SECS = 1.0
EXPIRY_LOG_SECS = 60.0
SUMMARY_SECS = 3600.0
REPORTED_TWIN_SECS = 60.0
RECLAIM_SECS = 2.0


class DiskPolicy:
    """The disk guard's limits applied to the outbox: drop the oldest, or let the handler
    refuse new telemetry. Run every tick and after every group commit (a fast ingest fills a
    small disk between two ticks)."""

    def __init__(self, disk: DiskGuard, outbox: Outbox, store: Store, writer: Writer) -> None:
        self._disk = disk
        self._outbox = outbox
        self._store = store
        self._writer = writer
        self._reclaimed_at = 0.0
        self._reclaiming = False

    def check(self) -> None:
        disk, outbox = self._disk, self._outbox
        disk.check(outbox.stats.bytes)
        if not disk.drops():
            return
        dropped, _ = outbox.drop_oldest(disk.drop_budget(outbox.stats.count))
        disk.state.dropped += dropped
        outbox.flush_deletes()
        now = time.monotonic()
        if dropped and disk.state.free_percent < disk.min_free_percent \
                and now - self._reclaimed_at >= RECLAIM_SECS and not self._reclaiming:
            self._reclaimed_at = now
            self._reclaiming = True  # deleted messages free nothing until compacted
            asyncio.get_running_loop().create_task(self._reclaim(), name="reclaim")
        disk.check(outbox.stats.bytes)

    async def _reclaim(self) -> None:
        """A memtable flush and compaction sync files: on the writer's thread, between commits."""
        try:
            await self._writer.call(self._store.reclaim_outbox)
        except Exception as exc:  # RocksDB's text; the next drop tries again
            event(Event.STORE_ERROR, f"store: reclaiming space failed: {exc}",
                  level=logging.WARNING)
        finally:
            self._reclaiming = False
        self._disk.check(self._outbox.stats.bytes)


class Housekeeping:
    """The tick's jobs and their cadences; `run` is the daemon's housekeeping task."""

    def __init__(
        self,
        *,
        gateway_id: str,
        clock: Callable[[], float],
        notify: Callable[[str], None],
        status_line: Callable[[], str],
        outbox: Outbox,
        ingest: Ingest,
        hub: LocalHub,
        disk: DiskPolicy,
        rates: Rates,
        trust: OfflineTrust,
        audit: AuditLog,
        reported: ReportedTwin,
        uplink: UplinkSlot,
        ledger: LedgerReport | None = None,
    ) -> None:
        self._gateway_id = gateway_id
        self._ledger = ledger
        self._clock = clock
        self._notify = notify
        self._status_line = status_line
        self._outbox = outbox
        self._ingest = ingest
        self._hub = hub
        self._disk = disk
        self._rates = rates
        self._trust = trust
        self._audit = audit
        self._reported = reported
        self._uplink = uplink
        self._expired_logged = 0
        self._expired_logged_at = -EXPIRY_LOG_SECS
        self._audit_inflight = False

    async def run(self) -> None:
        watchdog = watchdog_interval()
        last_sweep = last_summary = last_watchdog = last_reported = time.monotonic()
        while True:
            await asyncio.sleep(TICK_SECS if watchdog is None else min(watchdog, TICK_SECS))
            now = time.monotonic()
            if watchdog is not None and now - last_watchdog >= watchdog:
                self._notify("WATCHDOG=1")
                last_watchdog = now
            if now - last_sweep >= EXPIRY_SWEEP_SECS:
                last_sweep = now
                self.sweep_expired()
                self._hub.sweep()
            if now - last_reported >= REPORTED_TWIN_SECS:
                last_reported = now
                self._reported.publish()
            if now - last_summary >= SUMMARY_SECS:
                last_summary = now
                event(Event.SUMMARY, "summary: " + self._status_line())
            self._rates.add(Sample(now, self._ingest.accepted, self._ingest.accepted_bytes,
                                   self._outbox.stats.delivered))
            self._disk.check()
            if self._trust.refresh(self._uplink.online()) and self._ledger is not None:
                self._ledger.persist()  # in the same WAL page as the trust's minute write
            self.publish_audit()
            if self._ledger is not None:
                self._ledger.tick(now)
            self._notify("STATUS=" + self._status_line())

    def sweep_expired(self) -> None:
        """Drop what outlived its time to live; one journal line a minute at most."""
        self._outbox.expire(int(self._clock() * 1000))
        self._outbox.flush_deletes()
        expired = self._outbox.stats.expired
        now = time.monotonic()
        if expired != self._expired_logged and now - self._expired_logged_at >= EXPIRY_LOG_SECS:
            self._expired_logged_at = now
            event(
                Event.MESSAGES_EXPIRED,
                f"outbox: {expired - self._expired_logged} messages expired unsent "
                f"(time_to_live_secs={self._ingest.ttl_secs}; {expired} since start)",
                level=logging.WARNING,
            )
            self._expired_logged = expired

    def publish_audit(self) -> None:
        """Offline authentications go to the cloud once it is back, a batch at a time."""
        if self._audit_inflight or not self._audit.count or not self._uplink.online():
            return
        keys, entries = self._audit.pending()
        if not keys:
            return

        def done(ok: bool) -> None:
            self._audit_inflight = False
            if ok:
                self._audit.published(keys)

        topic = contract.audit_topic(self._uplink.prefix, self._gateway_id)
        self._audit_inflight = self._uplink.publish(topic, json.dumps(entries).encode(),
                                                    on_done=done)


def watchdog_interval() -> float | None:
    """Half of WatchdogSec when systemd asked for keep-alives (WATCHDOG_USEC), else None."""
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec or os.environ.get("WATCHDOG_PID", str(os.getpid())) != str(os.getpid()):
        return None
    return int(usec) / 2_000_000
