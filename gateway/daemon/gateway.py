"""The daemon: the wiring of the modules and the lifecycle around them.

Start-up order is the promise order: the store opens (or the daemon exits with one line saying
why), the registry cache loads, the listeners bind, and only then READY=1 goes to systemd. Stop
order is the reverse: listeners close, the commit under way finishes, the rest is committed and
RocksDB is closed cleanly, all inside TimeoutStopSec.

Every object is built in `Gateway.__init__` with what it needs passed to its constructor, in
the order of the data flow. Two cycles cannot be closed by constructors, and are closed there
and nowhere else: the uplink (made once everything it calls back into exists, absent without a
cloud, replaced on reload) lives in an `UplinkSlot` that the others are given instead; and the
child server takes its handler at construction while the local hub needs the server, so the
handler is given the hub (`bind_hub`) right after both exist, before anything is started.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import ssl
import threading

import sdnotify

from gateway import log
from gateway.child.offline_trust import AuditLog, OfflineTrust
from gateway.child.registry_sync import RegistrySync
from gateway.child.server import ChildServer
from gateway.clock import SteadyClock
from gateway.config import load_config
from gateway.daemon import reload as reload_rules
from gateway.daemon.agent import Agent, Identities
from gateway.daemon.cloud_inbox import CloudInbox, ttl_in_force
from gateway.daemon.control import ControlServer
from gateway.daemon.housekeeping import DiskPolicy, Housekeeping
from gateway.daemon.ledger_report import LedgerReport
from gateway.daemon.metrics import MetricsServer
from gateway.daemon.rates import Rates
from gateway.daemon.reported_twin import ReportedTwin
from gateway.daemon.status import Endpoints, Status
from gateway.daemon.uplink_slot import UplinkSlot
from gateway.errors import EX_TEMPFAIL, GatewayError
from gateway.hub.child_handler import ChildHandler
from gateway.hub.local_hub import LocalHub
from gateway.hub.router import Router
from gateway.hub.routes import check_routes
from gateway.hub.settings import SettingsSync
from gateway.log import Event, event
from gateway.modules.workload import WorkloadApi
from gateway.storage import ballast
from gateway.storage.disk_guard import DiskGuard
from gateway.storage.salvage import SalvageReport, open_or_salvage
from gateway.storage.store import Store
from gateway.storage.writer import Writer
from gateway.upstream.dead_letters import DeadLetters
from gateway.upstream.ingest import Ingest
from gateway.upstream.outbox import Outbox
from gateway.upstream.resolver import CloudResolver
from gateway.upstream.uplink import Uplink


async def run(config) -> int:
    """Returns the exit status: 0, or EX_TEMPFAIL after a full disk (systemd restarts)."""
    store, salvage = open_or_salvage(config.storage.path)
    problem = ballast.ensure(config.storage.path, config.storage.reserve_bytes)
    if problem:
        event(Event.DISK_FULL, f"storage: {problem}", level=logging.WARNING)
    try:
        gateway = Gateway(config, store, salvage)
        await gateway.serve()
    finally:
        try:  # its WAL sync must not run on the loop's thread either
            await asyncio.get_running_loop().run_in_executor(None, store.close)
        except Exception as exc:  # after ENOSPC RocksDB cannot even close; the log is safe
            event(Event.STORE_ERROR, f"store: close failed ({exc}); its log holds every "
                                     f"acknowledged message", level=logging.ERROR)
    event(Event.STOPPED, "gatewayd stopped; every accepted message is on disk or delivered")
    return gateway.exit_code


class Gateway:
    """One running gateway: its long-lived objects, wired, and the lifecycle that runs them."""

    def __init__(self, config, store: Store, salvage: SalvageReport | None) -> None:
        cfg, st = config, config.storage
        self.config = config
        self.exit_code = 0
        self._stop = asyncio.Event()
        self._notifier = sdnotify.SystemdNotifier()
        self._store = store
        self._clock = clock = SteadyClock()  # TTL, SAS and trust expiry: immune to clock jumps
        self.uplink = UplinkSlot()  # filled by _start_uplink, emptied by its stop
        self.outbox = outbox = Outbox(store)
        self.writer = writer = Writer(
            store, outbox, commit_interval_ms=st.commit_interval_ms,
            commit_max=st.commit_max_messages, cloud_online=self.uplink.online, clock=clock,
        )
        self._registry = registry = RegistrySync(store, writer.submit)

        self.agent = agent = Agent(cfg, store, writer.submit, self.uplink)

        def children():
            return registry.registry.children

        everyone = Identities(children, agent.identities)  # children and modules
        trust = OfflineTrust(store, cfg.auth.offline_trust_secs, clock)
        audit = AuditLog(store)
        settings = SettingsSync(store, check_routes, writer.submit)
        router = Router(settings.settings.routes, children, cfg.gateway.id)
        self.dead_letters = dead_letters = DeadLetters(store, outbox, writer.submit)
        disk = DiskGuard(st.path, st.max_bytes, st.min_free_percent, st.full_policy)
        disk_policy = DiskPolicy(disk, outbox, store, writer)
        writer.on_disk_full = self._disk_full
        writer.after_commit = disk_policy.check
        self.ingest = ingest = Ingest(
            outbox, writer, clock=clock, ttl_secs=ttl_in_force(settings, st.time_to_live_secs),
            on_new=self.uplink.wake,
        )
        handler = ChildHandler(
            registry=registry, hub_hostname=cfg.gateway.hub_hostname, clock=clock, trust=trust,
            audit=audit, cloud_online=self.uplink.online, disk=disk, ingest=ingest, router=router,
            gateway_id=cfg.gateway.id, gateway_hostnames=(agent.hostname,),
            modules=agent.identities,
        )
        self.server = server = ChildServer(cfg.listen, handler, cfg.limits)
        hub = LocalHub(store, server, cfg.cloud.prefix, everyone, clock=clock,
                       uplink=self.uplink.get, route_allows_call=router.allows_call,
                       submit=writer.submit)
        handler.bind_hub(hub)
        self._bundle: str | None = None
        self._trust_bundle()
        self.workload = WorkloadApi(
            cfg.modules.workload_socket, trust_bundle=self._trust_bundle, sign=agent.sign,
            owner_of=agent.runner.owner_of,
        ) if agent.enabled else None
        rates = Rates()
        self.ledger = LedgerReport(cfg.gateway.id, outbox, self.uplink,
                                   cfg.cloud.ledger_interval_secs)
        self.endpoints = Endpoints()
        self.status = Status(
            gateway_id=cfg.gateway.id, storage_path=st.path, endpoints=self.endpoints,
            server=server, registry=registry, settings=settings, router=router, ingest=ingest,
            outbox=outbox, dead_letters=dead_letters, salvage=salvage, disk=disk, trust=trust,
            audit=audit, hub=hub, uplink=self.uplink, rates=rates, writer=writer, store=store,
            modules=self._modules_status, ledger=self.ledger.status,
        )
        reported = ReportedTwin(gateway_id=cfg.gateway.id, settings=settings, registry=registry,
                                ingest=ingest, outbox=outbox, server=server, uplink=self.uplink,
                                site=self.status.site)
        self.inbox = CloudInbox(
            gateway_id=cfg.gateway.id, file_ttl_secs=st.time_to_live_secs, registry=registry,
            trust=trust, settings=settings, router=router, ingest=ingest, hub=hub, server=server,
            uplink=self.uplink, reported=reported, agent=agent,
        )
        self.housekeeping = Housekeeping(
            gateway_id=cfg.gateway.id, clock=clock, notify=self._notifier.notify,
            status_line=self.status.line, outbox=outbox, ingest=ingest, hub=hub,
            disk=disk_policy, rates=rates, trust=trust, audit=audit, reported=reported,
            uplink=self.uplink, ledger=self.ledger,
        )
        def dlq(action: str = "list", which: str = "all") -> dict:
            return dead_letters.command(action, which, ingest.accept)

        self.control = ControlServer(cfg.control.socket, {"status": self.status.report, "dlq": dlq})
        self.metrics = MetricsServer(cfg.metrics.host, cfg.metrics.port, self.status.report)

    # -- start and stop ----------------------------------------------------------------------

    async def serve(self) -> None:
        cfg = self.config
        # From here on the loop serves: nothing on its thread may wait for an fsync
        self._store.forbid_sync_on(threading.get_ident())
        self.endpoints.listeners = await self.server.start(_server_tls(cfg.listen))
        await self.control.start()
        await self.metrics.start()
        self.endpoints.metrics = self.metrics.bound
        self.writer.start()
        tasks = [asyncio.create_task(self.housekeeping.run(), name="housekeeping")]
        self._start_uplink(cfg.cloud)
        if self.workload is not None:
            await self.workload.start()
        self.agent.start()
        self._install_signals()
        self._started_event()
        self._notifier.notify("READY=1\nSTATUS=" + self.status.line())
        await self._stop.wait()
        self._notifier.notify("STOPPING=1")
        await self.server.close()
        if self.workload is not None:
            await self.workload.close()
        await self.agent.runner.stop_all()
        await self.control.close()
        await self.metrics.close()
        await self.uplink.detach()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.writer.aclose()
        if not ballast.is_disk_full(self.writer.store_error):  # else RocksDB refuses writes
            self.outbox.flush_deletes()
            if not self.writer.store_error:  # all committed: the ledger may say so
                self.outbox.stopped()

    def _modules_status(self) -> dict:
        """The agent's account, and the workload API's counters when it serves."""
        report = self.agent.status()
        if self.workload is not None:
            report["workload"] = dataclasses.asdict(self.workload.stats)
        return report

    def _trust_bundle(self) -> str:
        """The CA modules check the gateway's certificate with, read once at start (a small
        file, before the loop serves)."""
        if self._bundle is None:
            bundle = self.config.modules.trust_bundle
            self._bundle = bundle.read_text() if bundle is not None else ""
        return self._bundle

    def _disk_full(self, reason: str) -> None:
        if self.exit_code == EX_TEMPFAIL:
            return  # already on the way out
        released = ballast.release(self.config.storage.path)
        event(Event.DISK_FULL,
              f"storage: the disk is full ({reason.splitlines()[0][:160]}); RocksDB accepts no "
              f"more writes until it is reopened: "
              + ("released the reserve and " if released else "no reserve to release; ")
              + "restarting to reopen the store (nothing PUBACKed is lost)",
              level=logging.CRITICAL)
        self.exit_code = EX_TEMPFAIL
        self._stop.set()

    def _started_event(self) -> None:
        listeners = ", ".join(f"{h}:{p}" for h, p in self.endpoints.listeners) or "none"
        registry = self._registry.registry
        event(
            Event.STARTED,
            f"gatewayd {self.config.gateway.id} ready: listening on {listeners}; store "
            f"{self.config.storage.path} holds {self.outbox.stats.count} messages; registry "
            f"version {registry.version} with {len(registry.children)} children; cloud "
            f"{self.config.cloud.url or 'not configured (offline)'}; event loop "
            f"{_loop_name()}",
        )

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload)

    def _start_uplink(self, cloud) -> None:
        """The one place an uplink is made and put in force (start-up, and each reload)."""
        if not cloud.enabled:
            return
        self.ledger.interval_secs = cloud.ledger_interval_secs
        uplink = Uplink(
            cloud,
            self.config.gateway.id,
            self.outbox,
            on_cloud_message=self.inbox.on_cloud_message,
            subscriptions=sorted(self.inbox.subscriptions(cloud.prefix)),
            clock=self._clock,
            resolver=CloudResolver(self._store, cloud.host, cloud.port, list(cloud.dns_servers)),
            dead_letters=self.dead_letters,
        )
        uplink.on_online = self.inbox.on_online  # Uplink takes it only as an attribute
        self.uplink.attach(uplink, cloud.prefix)

    # -- reload ------------------------------------------------------------------------------

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
        self.config = reload_rules.running_config(self.config, new)
        log.set_level(new.log.level)
        self.inbox.set_file_ttl(new.storage.time_to_live_secs)
        self.writer.set_cadence(new.storage.commit_interval_ms, new.storage.commit_max_messages)
        if any(key.startswith("cloud.") for key in live):
            await self.uplink.detach()
            self._start_uplink(new.cloud)
        event(
            Event.CONFIG_RELOADED,
            f"reload: applied {', '.join(live) or 'nothing (no live change)'}"
            + (f"; needs a restart (systemctl restart gatewayd): {', '.join(restart)}"
               if restart else ""),
            level=logging.WARNING if restart else logging.INFO,
        )
        self._notifier.notify("READY=1\nSTATUS=" + self.status.line())


def _server_tls(listen) -> ssl.SSLContext | None:
    """One context for the TLS heads (8883, 443, 5671): the same certificate and client CA."""
    if not listen.port and not listen.https_port and not listen.amqp_port:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(listen.tls_cert), str(listen.tls_key))
    if listen.client_ca_file:
        ctx.load_verify_locations(cafile=str(listen.client_ca_file))
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def _loop_name() -> str:
    """Which event loop gatewayd.py chose, uvloop or asyncio (GATEWAYD_EVENT_LOOP)."""
    return type(asyncio.get_running_loop()).__module__.split(".")[0]
