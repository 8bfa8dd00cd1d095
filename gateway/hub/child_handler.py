"""What the child server asks of the gateway: who may connect, and where each PUBLISH goes.

Authentication is the registry's and the deployment's (child/auth.py), with two rules on top
while the cloud is away: past `auth.offline_trust_secs` without a fresh registry every child
(not a module: its key is the gateway's own) is refused, and every decision taken offline goes
to the audit log, so that the cloud learns later who used the site.
A telemetry PUBLISH is refused without a PUBACK while the disk is full and the policy is
refuse-new (the child keeps the message); otherwise it goes upstream through the ingest, or
through the routes when there are any. Twin and method traffic is the local hub's. Every
answer waits for the writer's commit that makes its request safe, in the connection's order;
twin patches and routed copies are charged to the child's rate (`[limits]`). An HTTPS request
on the 443 head is a module's direct-method call (hub/method_endpoint.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from gateway import identity
from gateway.child import auth, dialect, http_messages, limits
from gateway.child.offline_trust import AuditLog, OfflineTrust
from gateway.child.registry_sync import RegistrySync
from gateway.child.server import ChildConnection, Handler, Refusal, Verdict
from gateway.hub.local_hub import LocalHub
from gateway.hub.method_endpoint import MethodEndpoint
from gateway.hub.router import Router
from gateway.mqtt.codec import Connect, Publish
from gateway.storage.disk_guard import DiskGuard
from gateway.upstream.ingest import Ingest

TELEMETRY_TOPICS_CACHED = 4096


class ChildHandler(Handler):
    """The Handler the child server calls; the local hub is bound once, right after both exist
    (the server takes its handler at construction and the hub needs the server)."""

    def __init__(
        self,
        *,
        registry: RegistrySync,
        hub_hostname: str,
        clock: Callable[[], float],
        trust: OfflineTrust,
        audit: AuditLog,
        cloud_online: Callable[[], bool],
        disk: DiskGuard,
        ingest: Ingest,
        router: Router,
        gateway_id: str = "",
        gateway_hostnames: tuple[str, ...] = (),
        modules: Callable[[], Mapping[str, auth.Child]] = dict,
    ) -> None:
        # `modules` answers the deployment's module identities in force at each CONNECT
        self._registry = registry
        self._hub_hostname = hub_hostname
        self._gateway_id = gateway_id
        self._gateway_hostnames = gateway_hostnames
        self._modules = modules
        self._clock = clock
        self._trust = trust
        self._audit = audit
        self._cloud_online = cloud_online
        self._disk = disk
        self._ingest = ingest
        self._router = router
        self._hub: LocalHub | None = None
        self._endpoint: MethodEndpoint | None = None
        # (device id, topic) -> its Telemetry: a child sends on the same few topics, and
        # classifying one again per message was 2 µs; bounded, as children choose topics
        self._telemetry_topics: dict[tuple[str, str], dialect.Telemetry] = {}

    def bind_hub(self, hub: LocalHub) -> None:
        """Once, by the daemon's wiring, before the listeners start."""
        if self._hub is not None:
            raise RuntimeError("the local hub is bound once")
        self._hub = hub
        self._endpoint = MethodEndpoint(hub.methods, self._gateway_id, hub.identities,
                                        self.check_token)

    @property
    def hub_hostname(self) -> str:
        """The hub this gateway serves: the AMQP head names an X.509 child's identity with it
        (no token or username of the child's carries it)."""
        return self._hub_hostname

    @property
    def hub(self) -> LocalHub:
        if self._hub is None:
            raise RuntimeError("no local hub bound: the listeners started before the wiring")
        return self._hub

    # -- CONNECT -----------------------------------------------------------------------------

    def authenticate(self, connect: Connect, cert_der: bytes | None) -> Verdict:
        online = self._cloud_online()
        # a module's credentials are the gateway's own (modules/keys.py), not a cloud copy that
        # can go stale: the site's programs keep working however long the cloud is away
        module = identity.is_module(connect.client_id)
        stale = "" if online or module else self._trust.expired()
        if stale:
            self._audit.record(connect.client_id, False, stale, "cache", "")
            return Verdict(False, 5, stale)
        audience = auth.Audience(self._hub_hostname, self._gateway_id, self._gateway_hostnames,
                                 self._modules())
        result = auth.authenticate(
            self._registry.registry,
            audience,
            connect.client_id,
            connect.username,
            connect.password,
            cert_der,
            self._clock(),
        )
        if not online:
            self._audit.record(connect.client_id, result.ok, result.reason, "cache", "")
        return Verdict(result.ok, result.return_code, result.reason)

    def check_token(self, who: str, token: str) -> auth.AuthResult:
        """A SAS token outside a CONNECT (an HTTPS call's Authorization) for `who`; a module's
        credentials are the gateway's own, so no offline-trust limit applies to them."""
        if not identity.is_module(who):
            stale = "" if self._cloud_online() else self._trust.expired()
            if stale:
                return auth.AuthResult(False, 5, stale, "none")
        audience = auth.Audience(self._hub_hostname, self._gateway_id, self._gateway_hostnames,
                                 self._modules())
        return auth.authenticate_token(self._registry.registry, audience, who, token,
                                       self._clock())

    async def on_https_request(self, request: http_messages.HttpRequest
                               ) -> http_messages.HttpAnswer:
        if self._endpoint is None:
            raise RuntimeError("no local hub bound: the listeners started before the wiring")
        return await self._endpoint.serve(request)

    # -- PUBLISH and SUBSCRIBE ---------------------------------------------------------------

    def on_publish(self, conn: ChildConnection, publish: Publish) -> None:
        op = self._telemetry_topics.get((conn.device_id, publish.topic))
        if op is None:
            op = self._classify(conn.device_id, publish.topic)
        telemetry = isinstance(op, dialect.Telemetry)
        if telemetry and self._disk.refuses():
            self._disk.state.refused += 1
            raise Refusal(f"storage full ({self._disk.state.reason}): telemetry refused without "
                          f"PUBACK, the child keeps it (storage.full_policy = refuse-new)")
        if telemetry:
            # QoS 1: its PUBACK in order; QoS 0: still counted until it is safe
            release = conn.hold_puback(publish.packet_id) if publish.qos == 1 else conn.hold_work()
            self._telemetry(conn, op.properties, publish.payload, release)
            return
        if isinstance(op, dialect.TwinReportedPatch):
            conn.slow_down(limits.TWIN)
        answer = conn.hold_puback(publish.packet_id if publish.qos == 1 else None)
        self.hub.child_operation(conn, op, publish.payload, answer)  # answered once durable

    def _classify(self, device_id: str, topic: str) -> dialect.Operation:
        try:
            op = dialect.classify_publish(device_id, topic)
        except dialect.TopicRefused as exc:
            raise Refusal(str(exc)) from None
        if isinstance(op, dialect.Telemetry):
            if len(self._telemetry_topics) >= TELEMETRY_TOPICS_CACHED:
                self._telemetry_topics.clear()
            self._telemetry_topics[(device_id, topic)] = op
        return op

    def _telemetry(self, conn: ChildConnection, properties: str, payload: bytes,
                   release: Callable[[], None]) -> None:
        """Children's queues through the writer, the cloud through the ingest; the PUBACK waits
        until every copy is safe, and a message that goes nowhere is released at once."""
        device_id = conn.device_id
        if self._router.empty:  # the common case: everything upstream, in order
            self._ingest.accept(device_id, properties, payload, release)
            return
        plan = self._router.plan(device_id, properties, payload, self._ingest.ttl_secs)
        waiting = 1 + len(plan.children) + (plan.upstream is not None)

        def one_safe() -> None:
            nonlocal waiting
            waiting -= 1
            if waiting == 0:
                release()

        for copy in plan.children:
            conn.slow_down(limits.ROUTED)
            self.hub.enqueue_devicebound(copy.device_id, payload, copy.properties,
                                         copy.ttl_secs, one_safe, copy.input)
        if plan.upstream is not None:
            self._ingest.accept(device_id, properties, payload, one_safe,
                                plan.upstream.priority, plan.upstream.ttl_secs)
        one_safe()  # every copy is handed over

    def on_subscribe(self, conn: ChildConnection, topic_filter: str, qos: int) -> int:
        try:
            dialect.check_subscription(conn.device_id, topic_filter)
        except dialect.TopicRefused as exc:
            raise Refusal(str(exc)) from None
        return min(qos, 1)

    def on_subscribed(self, conn: ChildConnection) -> None:
        self.hub.child_subscribed(conn)

    def on_closed(self, conn: ChildConnection) -> None:
        self.hub.child_closed(conn)
