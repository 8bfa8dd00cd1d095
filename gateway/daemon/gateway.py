"""The daemon: wiring of the modules, sd_notify, watchdog, signals, periodic housekeeping.

Start-up order is the promise order: the store opens (or the daemon exits with one line saying
why), the registry cache loads, the listeners bind, and only then READY=1 goes to systemd. Stop
order is the reverse: listeners close, the commit under way finishes, the rest is committed and
RocksDB is closed cleanly, all inside TimeoutStopSec.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import ssl
import time
from collections.abc import Callable

import psutil
import sdnotify

from gateway import log
from gateway.child import auth, dialect
from gateway.child.offline_trust import AuditLog, OfflineTrust
from gateway.child.registry_sync import RegistrySync
from gateway.child.server import ChildConnection, ChildServer, Handler, Refusal, Verdict
from gateway.clock import SteadyClock
from gateway.config import load_config
from gateway.daemon import reload as reload_rules
from gateway.daemon.control import ControlServer
from gateway.daemon.metrics import MetricsServer
from gateway.daemon.rates import Rates, Sample, projections
from gateway.errors import GatewayError
from gateway.hub.local_hub import LocalHub
from gateway.hub.routes import MessageView, check_routes, parse_routes
from gateway.hub.settings import SettingsSync
from gateway.log import Event, event
from gateway.mqtt.codec import Connect, Publish
from gateway.storage import ballast
from gateway.storage.disk_guard import DiskGuard
from gateway.storage.salvage import open_or_salvage
from gateway.upstream import cloud_contract as contract
from gateway.upstream.dead_letters import DeadLetters
from gateway.upstream.ingest import Ingest
from gateway.upstream.outbox import Outbox
from gateway.upstream.resolver import CloudResolver
from gateway.upstream.uplink import CloudMessage, Uplink

HOUSEKEEPING_SECS = 1.0
EXPIRY_SWEEP_SECS = 1.0
EXPIRY_LOG_SECS = 60.0
SUMMARY_SECS = 3600.0
REPORTED_TWIN_SECS = 60.0
RECLAIM_SECS = 2.0


class Gateway(Handler):
    """One running gateway: every long-lived object, and the Handler the child server calls."""

    def __init__(self, config) -> None:
        self.config = config
        self.started = time.time()
        self._stop = asyncio.Event()
        self._notifier = sdnotify.SystemdNotifier()
        self._process = psutil.Process()
        self._io_at_start = _write_bytes(self._process)
        self.bound: list[tuple[str, int]] = []
        self._expired_logged = 0
        self._expired_logged_at = -EXPIRY_LOG_SECS
        self._registry_synced_at: float | None = None
        self.rates = Rates()
        self._reclaimed_at = 0.0

    # -- start and stop ----------------------------------------------------------------------

    async def run(self) -> int:
        """Returns the exit status: 0, or EX_TEMPFAIL after a full disk (systemd restarts)."""
        cfg = self.config
        self.exit_code = 0
        self.store, self.salvage = open_or_salvage(cfg.storage.path)
        problem = ballast.ensure(cfg.storage.path, cfg.storage.reserve_bytes)
        if problem:
            event(Event.DISK_FULL, f"storage: {problem}", level=logging.WARNING)
        try:
            await self._run_open()
        finally:
            try:
                self.store.close()
            except Exception as exc:  # after ENOSPC RocksDB cannot even close; the log is safe
                event(Event.STORE_ERROR, f"store: close failed ({exc}); its log holds every "
                                         f"acknowledged message", level=logging.ERROR)
        event(Event.STOPPED, "gatewayd stopped; every accepted message is on disk or delivered")
        return self.exit_code

    def _disk_full(self, reason: str) -> None:
        if self.exit_code == ballast.EX_TEMPFAIL:
            return  # already on the way out
        released = ballast.release(self.config.storage.path)
        event(Event.DISK_FULL,
              f"storage: the disk is full ({reason.splitlines()[0][:160]}); RocksDB accepts no "
              f"more writes until it is reopened: "
              + ("released the reserve and " if released else "no reserve to release; ")
              + "restarting to reopen the store (nothing PUBACKed is lost)",
              level=logging.CRITICAL)
        self.exit_code = ballast.EX_TEMPFAIL
        self._stop.set()

    async def _run_open(self) -> None:
        cfg = self.config
        self.registry = RegistrySync(self.store)
        self.clock = SteadyClock()  # TTL, SAS and trust expiry: immune to wall-clock jumps
        self.trust = OfflineTrust(self.store, cfg.auth.offline_trust_secs, self.clock)
        self.audit = AuditLog(self.store)
        self._audit_inflight = False
        self.settings = SettingsSync(self.store, check_routes)
        self.routes = parse_routes(self.settings.settings.routes)
        self.unrouted = 0
        self.outbox = Outbox(self.store)
        self.dead_letters = DeadLetters(self.store, self.outbox)
        self.ingest = Ingest(
            self.outbox,
            clock=self.clock,
            ttl_secs=self.settings.settings.ttl_secs or cfg.storage.time_to_live_secs,
            commit_interval_ms=cfg.storage.commit_interval_ms,
            commit_max=cfg.storage.commit_max_messages,
            on_new=self._wake_uplink,
            cloud_online=self._cloud_online,
        )
        self.server = ChildServer(cfg.listen, self)
        st = cfg.storage
        self.disk = DiskGuard(st.path, st.max_bytes, st.min_free_percent, st.full_policy)
        self.hub = LocalHub(
            self.store, self.server, cfg.cloud.prefix, lambda: self.registry.registry.children
        )
        self.hub.route_allows_call = lambda caller, target: self.routes.allows_call(caller, target)
        self.uplink: Uplink | None = None
        self._uplink_task: asyncio.Task | None = None
        self.control = ControlServer(
            cfg.control.socket, {"status": self.status, "dlq": self.dead_letter_command}
        )
        self.bound = await self.server.start(_server_tls(cfg.listen))
        await self.control.start()
        self.metrics = MetricsServer(cfg.metrics.host, cfg.metrics.port, self.status)
        await self.metrics.start()
        self.ingest.on_disk_full = self._disk_full
        self.ingest.after_commit = self._guard_disk
        self.ingest.start()
        tasks = [asyncio.create_task(self._housekeeping(), name="housekeeping")]
        self._start_uplink(cfg.cloud)
        self._install_signals()
        self._started_event()
        self._notifier.notify("READY=1\nSTATUS=" + self.status_line())
        await self._stop.wait()
        self._notifier.notify("STOPPING=1")
        await self._shutdown(tasks)

    def _started_event(self) -> None:
        listeners = ", ".join(f"{h}:{p}" for h, p in self.bound) or "none"
        stats = self.outbox.stats
        event(
            Event.STARTED,
            f"gatewayd {self.config.gateway.id} ready: listening on {listeners}; store "
            f"{self.config.storage.path} holds {stats.count} messages; registry version "
            f"{self.registry.registry.version} with {len(self.registry.registry.children)} "
            f"children; cloud {self.config.cloud.url or 'not configured (offline)'}",
        )

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload)

    def _start_uplink(self, cloud) -> None:
        if not cloud.enabled:
            return
        self.uplink = Uplink(
            cloud,
            self.config.gateway.id,
            self.outbox,
            on_cloud_message=self._on_cloud_message,
            subscriptions=sorted(self._cloud_subscriptions()),
            clock=self.clock,
            resolver=CloudResolver(self.store, cloud.host, cloud.port, list(cloud.dns_servers)),
            dead_letters=self.dead_letters,
        )
        self.uplink.on_online = self._on_online
        self.hub.uplink = self.uplink
        self._uplink_task = asyncio.create_task(self.uplink.run(), name="uplink")

    async def _stop_uplink(self) -> None:
        if self.uplink is not None:
            await self.uplink.stop()
        if self._uplink_task is not None:
            self._uplink_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._uplink_task
        self.uplink = self.hub.uplink = None
        self._uplink_task = None

    def _reload(self) -> None:
        asyncio.get_running_loop().create_task(self.reload(), name="reload")

    async def reload(self) -> None:
        """SIGHUP: check the file whole, apply what can change live, name what cannot."""
        self._notifier.notify("RELOADING=1")
        try:
            new = load_config(self.config.source)
        except GatewayError as exc:
            event(Event.CONFIG_ERROR, f"reload refused, the running configuration stays: "
                                      f"{exc.message}", level=logging.ERROR)
            self._notifier.notify("READY=1")
            return
        live, restart = reload_rules.split_live(reload_rules.changed_keys(self.config, new))
        old, self.config = self.config, new
        log.set_level(new.log.level)
        if not self.settings.settings.ttl_secs:
            self.ingest.ttl_secs = new.storage.time_to_live_secs
        self.ingest.set_cadence(new.storage.commit_interval_ms, new.storage.commit_max_messages)
        if any(key.startswith("cloud.") for key in live):
            await self._stop_uplink()
            self._start_uplink(new.cloud)
        if restart:  # keep what is bound to the running process until a restart
            self.config = dataclasses.replace(
                new, gateway=old.gateway, listen=old.listen, control=old.control,
                storage=dataclasses.replace(old.storage, **{
                    k: getattr(new.storage, k) for k in reload_rules.LIVE_STORAGE_KEYS}))
        event(
            Event.CONFIG_RELOADED,
            f"reload: applied {', '.join(live) or 'nothing (no live change)'}"
            + (f"; needs a restart (systemctl restart gatewayd): {', '.join(restart)}"
               if restart else ""),
            level=logging.WARNING if restart else logging.INFO,
        )
        self._notifier.notify("READY=1\nSTATUS=" + self.status_line())

    async def _shutdown(self, tasks: list[asyncio.Task]) -> None:
        await self.server.close()
        await self.control.close()
        await self.metrics.close()
        await self._stop_uplink()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.ingest.aclose()

    def stop(self) -> None:
        self._stop.set()

    # -- Handler: what the child server asks -------------------------------------------------

    def authenticate(self, connect: Connect, cert_der: bytes | None) -> Verdict:
        online = self._cloud_online()
        stale = "" if online else self.trust.expired()
        if stale:
            self.audit.record(connect.client_id, False, stale, "cache", "")
            return Verdict(False, 5, stale)
        verdict = self._authenticate(connect, cert_der)
        if not online:
            self.audit.record(connect.client_id, verdict.ok, verdict.reason, "cache", "")
        return verdict

    def _authenticate(self, connect: Connect, cert_der: bytes | None) -> Verdict:
        result = auth.authenticate(
            self.registry.registry,
            self.config.gateway.hub_hostname,
            connect.client_id,
            connect.username,
            connect.password,
            cert_der,
            self.clock(),
        )
        return Verdict(result.ok, result.return_code, result.reason)

    def on_publish(self, conn: ChildConnection, publish: Publish) -> None:
        try:
            op = dialect.classify_publish(conn.device_id, publish.topic)
        except dialect.TopicRefused as exc:
            raise Refusal(str(exc)) from None
        if isinstance(op, dialect.Telemetry) and self.disk.refuses():
            self.disk.state.refused += 1
            raise Refusal(f"storage full ({self.disk.state.reason}): telemetry refused without "
                          f"PUBACK, the child keeps it (storage.full_policy = refuse-new)")
        release = conn.hold_puback(publish.packet_id) if publish.qos == 1 else None
        if isinstance(op, dialect.Telemetry):
            if not self.routes.routes:  # the common case: everything upstream, in order
                self.ingest.accept(conn.device_id, op.properties, publish.payload, release)
            else:
                self._route(conn.device_id, op.properties, publish.payload, release)
            return
        self.hub.child_operation(conn, op, publish.payload)  # answered and stored (synced)
        if release is not None:
            release()

    def on_subscribe(self, conn: ChildConnection, topic_filter: str, qos: int) -> int:
        try:
            dialect.check_subscription(conn.device_id, topic_filter)
        except dialect.TopicRefused as exc:
            raise Refusal(str(exc)) from None
        return min(qos, 1)

    def _route(
        self, device_id: str, properties: str, payload: bytes, release: Callable[[], None] | None
    ) -> None:
        """Each sink once: children's queues now (synced), the cloud through the outbox, whose
        safety releases the PUBACK; a message no route takes is dropped and counted."""
        view = MessageView(device_id, properties, payload)
        upstream = None
        for delivery in self.routes.deliveries(view, self.ingest.ttl_secs):
            if delivery.sink.upstream:
                upstream = delivery
            elif delivery.sink.device in self.registry.registry.children:
                bag = [*view.props().items(), ("$.cdid", device_id)]
                self.hub.enqueue_devicebound(delivery.sink.device, payload, bag, delivery.ttl_secs)
            else:
                self.unrouted += 1
        if upstream is not None:
            self.ingest.accept(
                device_id, properties, payload, release, upstream.priority, upstream.ttl_secs
            )
        elif release is not None:
            release()

    def on_subscribed(self, conn: ChildConnection) -> None:
        self.hub.child_subscribed(conn)

    def on_closed(self, conn: ChildConnection) -> None:
        self.hub.child_closed(conn)

    # -- cloud -------------------------------------------------------------------------------

    def _cloud_online(self) -> bool:
        return self.uplink is not None and self.uplink.stats.state == "online"

    def _wake_uplink(self) -> None:
        if self.uplink is not None:
            self.uplink.wake()

    def _cloud_subscriptions(self) -> set[str]:
        prefix, gw = self.config.cloud.prefix, self.config.gateway.id
        own = {
            contract.registry_topic(prefix, gw),
            contract.gateway_twin_topic(prefix, gw, "desired"),
        }
        return own | self.hub.subscriptions(list(self.registry.registry.children))

    def _on_cloud_message(self, msg: CloudMessage) -> None:
        prefix, gw = self.config.cloud.prefix, self.config.gateway.id
        if msg.topic == contract.registry_topic(prefix, gw):
            self._registry_synced_at = time.time()
            self.trust.synced()
            change = self.registry.apply(msg.payload)
            for device in change.revoked:
                self.server.disconnect(device, "removed or disabled in the registry")
            if change.applied:
                if self.uplink is not None:
                    self.uplink.set_subscriptions(self._cloud_subscriptions())
                self._publish_reported_twin()
        elif msg.topic == contract.gateway_twin_topic(prefix, gw, "desired"):
            self._apply_settings(msg.payload)
        else:
            self.hub.cloud_message(msg)

    def _apply_settings(self, payload: bytes) -> None:
        applied, reason = self.settings.apply(payload)
        settings = self.settings.settings
        if applied:
            self.ingest.ttl_secs = settings.ttl_secs or self.config.storage.time_to_live_secs
            self.routes = parse_routes(settings.routes)
            event(
                Event.SETTINGS_APPLIED,
                f"settings: desired version {settings.version} applied: time to live "
                f"{self.ingest.ttl_secs} s for messages stored from now on; "
                f"{len(self.routes.routes)} routes",
            )
        elif reason != "unchanged":
            event(
                Event.SETTINGS_REFUSED,
                f"settings: desired document refused, version {settings.version} stays in "
                f"force: {reason}; fix it and publish it again (retained)",
                level=logging.WARNING,
            )
        if reason != "unchanged":
            self._publish_reported_twin()

    def _on_online(self) -> None:
        self.hub.on_online()
        self._publish_reported_twin()

    def dead_letter_command(self, action: str = "list", which: str = "all") -> dict:
        """`gatewayctl dlq list|resend|drop [SEQ|all]`."""
        return self.dead_letters.command(action, which, self.ingest.accept)

    def reported_twin(self) -> dict:
        """The gateway's reported properties: what is in force and how the site is doing."""
        settings = self.settings.settings
        stats = self.outbox.stats
        oldest = self.outbox.oldest_enqueued_ms()
        uplink = self.uplink.stats if self.uplink is not None else None
        return {
            "schemaVersion": "1.0",
            "lastDesiredVersion": settings.version,
            "lastDesiredRefusal": self.settings.last_refusal or None,
            "storeAndForwardConfiguration": {"timeToLiveSecs": self.ingest.ttl_secs},
            "routes": settings.routes,
            "registry": {
                "version": self.registry.registry.version,
                "children": len(self.registry.registry.children),
                "lastSync": _iso(self._registry_synced_at),
                "lastRefusal": self.registry.last_refusal or None,
            },
            "uplink": {
                "state": uplink.state if uplink else "disabled",
                "since": _iso(uplink.since) if uplink else None,
            },
            "backlog": {
                "messages": stats.count,
                "bytes": stats.bytes,
                "oldestAgeSecs": round(time.time() - oldest / 1000, 1) if oldest else None,
            },
            "childrenConnected": len(self.server.sessions),
            "lastChildRefusal": self.server.last_refusal,
        }

    def _publish_reported_twin(self) -> None:
        if self.uplink is None:
            return
        topic = contract.gateway_twin_topic(self.config.cloud.prefix, self.config.gateway.id,
                                            "reported")
        self.uplink.publish(topic, json.dumps(self.reported_twin()).encode(), retain=True)

    # -- housekeeping and status -------------------------------------------------------------

    async def _housekeeping(self) -> None:
        watchdog = _watchdog_interval()
        last_sweep = last_summary = last_watchdog = last_reported = time.monotonic()
        while True:
            await asyncio.sleep(HOUSEKEEPING_SECS if watchdog is None else min(watchdog, 1.0))
            now = time.monotonic()
            if watchdog is not None and now - last_watchdog >= watchdog:
                self._notifier.notify("WATCHDOG=1")
                last_watchdog = now
            if now - last_sweep >= EXPIRY_SWEEP_SECS:
                last_sweep = now
                self._sweep_expired()
                self.hub.sweep()
            if now - last_reported >= REPORTED_TWIN_SECS:
                last_reported = now
                self._publish_reported_twin()
            if now - last_summary >= SUMMARY_SECS:
                last_summary = now
                event(Event.SUMMARY, "summary: " + self.status_line())
            self._sample_rates()
            self._guard_disk()
            self.trust.refresh(self._cloud_online())
            self._publish_audit()
            self._notifier.notify("STATUS=" + self.status_line())

    def _publish_audit(self) -> None:
        """Offline authentications go to the cloud once it is back, a batch at a time."""
        if self._audit_inflight or not self.audit.count or not self._cloud_online():
            return
        keys, entries = self.audit.pending()
        if not keys:
            return

        def done(ok: bool) -> None:
            self._audit_inflight = False
            if ok:
                self.audit.published(keys)

        topic = contract.audit_topic(self.config.cloud.prefix, self.config.gateway.id)
        self._audit_inflight = self.uplink.publish(topic, json.dumps(entries).encode(),
                                                   on_done=done)

    def _guard_disk(self) -> None:
        """Every second, and after every group commit (a fast ingest fills a small disk
        between two ticks): check the limits and apply the policy."""
        self.disk.check(self.outbox.stats.bytes)
        if self.disk.drops():
            dropped, _ = self.outbox.drop_oldest(self.disk.drop_budget(self.outbox.stats.count))
            self.disk.state.dropped += dropped
            self.outbox.flush_deletes()
            now = time.monotonic()
            if dropped and self.disk.state.free_percent < self.disk.min_free_percent \
                    and now - self._reclaimed_at >= RECLAIM_SECS:
                self._reclaimed_at = now
                self.store.reclaim_outbox()  # deleted messages free nothing until compacted
            self.disk.check(self.outbox.stats.bytes)

    def _sample_rates(self) -> None:
        self.rates.add(Sample(time.monotonic(), self.ingest.accepted, self.ingest.accepted_bytes,
                              self.outbox.stats.delivered))

    def _sweep_expired(self) -> None:
        self.outbox.expire(int(self.clock() * 1000))
        self.outbox.flush_deletes()
        expired = self.outbox.stats.expired
        now = time.monotonic()
        if expired != self._expired_logged and now - self._expired_logged_at >= EXPIRY_LOG_SECS:
            self._expired_logged_at = now
            event(
                Event.MESSAGES_EXPIRED,
                f"outbox: {expired - self._expired_logged} messages expired unsent "
                f"(time_to_live_secs={self.ingest.ttl_secs}; {expired} since start)",
                level=logging.WARNING,
            )
            self._expired_logged = expired

    def status_line(self) -> str:
        uplink = self.uplink.stats.state if self.uplink is not None else "disabled"
        oldest = self.outbox.oldest_enqueued_ms()
        age = f", oldest {time.time() - oldest / 1000:.0f} s" if oldest else ""
        free = psutil.disk_usage(str(self.config.storage.path)).free
        return (
            f"uplink {uplink}; {len(self.server.sessions)} children; "
            f"backlog {self.outbox.stats.count} msgs{age}; disk free {free // 2**20} MiB"
        )

    def status(self) -> dict:
        stats = self.outbox.stats
        oldest = self.outbox.oldest_enqueued_ms()
        disk = psutil.disk_usage(str(self.config.storage.path))
        uplink = self.uplink.stats if self.uplink is not None else None
        rates = self.rates.per_second()
        return {
            "gateway_id": self.config.gateway.id,
            "pid": os.getpid(),
            "uptime_secs": round(time.time() - self.started, 1),
            "listeners": [f"{h}:{p}" for h, p in self.bound],
            "metrics": "{}:{}".format(*self.metrics.bound) if self.metrics.bound else None,
            "uplink": vars(uplink) if uplink is not None else {"state": "disabled"},
            "children": sorted(self.server.sessions),
            "children_refused": self.server.refused,
            "registry_version": self.registry.registry.version,
            "registry_children": len(self.registry.registry.children),
            "registry_last_refusal": self.registry.last_refusal,
            "settings_version": self.settings.settings.version,
            "settings_last_refusal": self.settings.last_refusal,
            "time_to_live_secs": self.ingest.ttl_secs,
            "last_child_refusal": self.server.last_refusal,
            "audit_pending": self.audit.count,
            "offline_trust": {
                "trust_secs": self.trust.trust_secs,
                "fresh_at": self.trust.fresh_at,
                "expired": self.trust.expired(),
            },
            "hub": self.hub.status(),
            "routes": self.routes.describe(),
            "unrouted": self.unrouted,
            "dead_letters": self.dead_letters.count,
            "backlog": {
                "messages": stats.count,
                "bytes": stats.bytes,
                "oldest_age_secs": round(time.time() - oldest / 1000, 1) if oldest else None,
                "by_priority": {str(p): n for p, n in self.outbox.backlog_by_priority().items()},
            },
            "rates": rates,
            "projections": projections(stats.count, disk.free, rates),
            "store_bytes": _tree_bytes(self.config.storage.path),
            "outbox": vars(stats),
            "next_seq": self.outbox.next_seq,
            "store_error": self.ingest.store_error,
            "salvage": None if self.salvage is None else {
                "quarantine": str(self.salvage.quarantine),
                "messages": self.salvage.messages,
                "unreadable": self.salvage.unreadable,
                "other_records": self.salvage.other_records,
                "error": self.salvage.error,
            },
            "disk": {
                "free_bytes": disk.free,
                "total_bytes": disk.total,
                "free_percent": self.disk.state.free_percent,
                "min_free_percent": self.disk.min_free_percent,
                "max_bytes": self.disk.max_bytes,
                "policy": self.disk.policy,
                "full": self.disk.state.full,
                "full_reason": self.disk.state.reason,
                "dropped": self.disk.state.dropped,
                "refused": self.disk.state.refused,
            },
            "process_write_bytes": _write_bytes(self._process) - self._io_at_start,
        }


def _tree_bytes(path) -> int:
    total = 0
    with contextlib.suppress(OSError):
        for entry in os.scandir(path):
            with contextlib.suppress(OSError):
                if entry.is_file(follow_symlinks=False):
                    total += entry.stat().st_size
    return total


def _iso(stamp: float | None) -> str | None:
    if stamp is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))


def _write_bytes(process: psutil.Process) -> int:
    try:
        return process.io_counters().write_bytes
    except (psutil.Error, AttributeError):
        return 0


def _watchdog_interval() -> float | None:
    """Half of WatchdogSec when systemd asked for keep-alives (WATCHDOG_USEC), else None."""
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec or os.environ.get("WATCHDOG_PID", str(os.getpid())) != str(os.getpid()):
        return None
    return int(usec) / 2_000_000


def _server_tls(listen) -> ssl.SSLContext | None:
    if not listen.port:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(listen.tls_cert), str(listen.tls_key))
    if listen.client_ca_file:
        ctx.load_verify_locations(cafile=str(listen.client_ca_file))
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx
