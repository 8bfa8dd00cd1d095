"""The gateway as the children's IoT Hub: twins, cloud-to-device messages and direct methods.

Children cannot tell whether the cloud is there: twin reads and writes are answered from the
store, cloud-to-device messages wait in the store until the child is subscribed, and a direct
method reaches a connected child whoever calls it. This module joins the child side (the MQTT
server) and the cloud side (the uplink) for those three features; the state itself lives in
twins.py and devicebound.py, and the calls in flight in methods.py.

Reconcile on reconnect: every reported twin changed offline is published once as its latest
state; desired documents changed in the cloud meanwhile arrive as retained messages when the
gateway subscribes again, and reach the children as patches or on their next GET.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from gateway.child import dialect
from gateway.child.auth import Child
from gateway.child.server import ChildConnection, ChildServer
from gateway.hub.devicebound import DeviceboundQueue, inbox_topic
from gateway.hub.methods import DEFAULT_TIMEOUT_SECS, MethodRouter, error_payload
from gateway.hub.twins import TwinError, TwinStore, parse_document, parse_patch
from gateway.log import Event, event
from gateway.storage.writes import Submit
from gateway.upstream import cloud_contract as contract
from gateway.upstream.uplink import CloudMessage, Uplink

C2D_WINDOW = 16  # unacknowledged cloud-to-device messages per child, like IoT Hub's limit of 50
C2D_DEFAULT_TTL_SECS = 3600  # IoT Hub's default time to live of a cloud-to-device message


@dataclass
class _Delivery:
    """Cloud-to-device messages in flight on one connection of one child."""

    conn: ChildConnection
    cursor: int = 0
    inflight: set[int] = field(default_factory=set)


class LocalHub:
    """Answers children's twin and method traffic and moves cloud messages to them."""

    def __init__(
        self,
        store,
        server: ChildServer,
        prefix: str,
        children: Callable[[], Mapping[str, Child]],
        *,
        clock: Callable[[], float],
        uplink: Callable[[], Uplink | None],
        route_allows_call: Callable[[str, str], bool] = lambda caller, target: False,
        submit: Submit | None = None,
    ) -> None:
        # `clock` is the daemon's SteadyClock, and has no default: a C2D message's time to live
        # measured on the wall clock would expire (or revive) it whenever NTP jumps the clock.
        # `uplink` answers the uplink in force at the moment of use: a reload replaces it.
        self._server = server
        self._prefix = prefix
        self._children = children
        self._route_allows_call = route_allows_call
        self._clock = clock
        self._uplink = uplink
        self.twins = TwinStore(store, submit)
        self.devicebound = DeviceboundQueue(store, submit)
        self.methods = MethodRouter(server)
        self._deliveries: dict[str, _Delivery] = {}
        self._reporting: dict[str, bool] = {}  # reported publish in flight -> another wanted
        self.dropped_unknown = 0

    @property
    def uplink(self) -> Uplink | None:
        return self._uplink()

    def identities(self) -> Mapping[str, Child]:
        """The children and modules in force: who may be called."""
        return self._children()

    # -- from children -----------------------------------------------------------------------

    def child_operation(
        self,
        conn: ChildConnection,
        op: object,
        payload: bytes,
        answer: Callable[..., None] | None = None,
    ) -> None:
        """A twin or method PUBLISH from a child (telemetry goes to the ingest, not here).

        `answer(*replies)` releases the request's place in the connection's answer order with
        its (topic, payload) replies: a GET behind an uncommitted patch is answered after the
        patch's 204. Without one (a caller that keeps no order) the replies are sent as they
        come."""
        if answer is None:
            def answer(*replies: tuple[str, bytes]) -> None:
                for topic, body in replies:
                    conn.deliver(topic, body)

        if isinstance(op, dialect.TwinGet):
            doc = json.dumps(self.twins.get(conn.device_id).document()).encode()
            answer((f"$iothub/twin/res/200/?$rid={op.rid}", doc))
        elif isinstance(op, dialect.TwinReportedPatch):
            self._reported_patch(conn, op.rid, payload, answer)
        elif isinstance(op, dialect.MethodResponse):
            self.methods.answer(conn.device_id, op.rid, op.status, payload)
            answer()
        elif isinstance(op, dialect.MethodInvoke):
            self._child_invoke(conn, op, payload)
            answer()  # the PUBACK now; the method's reply comes when the target answers
        else:
            answer()

    def _child_invoke(
        self, conn: ChildConnection, op: dialect.MethodInvoke, payload: bytes
    ) -> None:
        """A child calls a method on another child of this gateway, with or without a cloud."""

        def reply(status: int, body: bytes) -> None:
            if conn.is_open:
                conn.deliver(f"{dialect.INVOKE_PREFIX}res/{status}/?$rid={op.rid}", body)

        target = self._children().get(op.target)
        if target is None or not target.enabled:
            reply(404, error_payload(f"device {op.target} is not a child of this gateway"))
            return
        if not self._may_call(conn.device_id, target):
            reply(
                403,
                error_payload(
                    f"device {conn.device_id} may not call methods of {op.target}: add it to "
                    f"{op.target}'s methodCallers in the registry, or allow it by a route"
                ),
            )
            return
        timeout = op.timeout_secs if op.timeout_secs is not None else DEFAULT_TIMEOUT_SECS
        self.methods.invoke(op.target, op.method, payload, timeout, reply)

    def _may_call(self, caller: str, target: Child) -> bool:
        if caller in target.method_callers or "*" in target.method_callers:
            return True
        return self._route_allows_call(caller, target.device_id)

    def _reported_patch(
        self, conn: ChildConnection, rid: str, payload: bytes, answer: Callable[..., None]
    ) -> None:
        device_id = conn.device_id

        def durable(version: int) -> None:
            answer((f"$iothub/twin/res/204/?$rid={rid}&$version={version}", b""))
            self._publish_reported(device_id)

        try:
            self.twins.patch_reported(device_id, parse_patch(payload), durable)
        except TwinError as exc:
            body = json.dumps({"message": str(exc)}).encode()
            answer((f"$iothub/twin/res/400/?$rid={rid}", body))

    def child_subscribed(self, conn: ChildConnection) -> None:
        self.deliver_devicebound(conn.device_id)

    def child_closed(self, conn: ChildConnection) -> None:
        self.methods.device_gone(conn.device_id)
        delivery = self._deliveries.get(conn.device_id)
        if delivery is not None and delivery.conn is conn:
            del self._deliveries[conn.device_id]

    # -- cloud-to-device ---------------------------------------------------------------------

    def enqueue_devicebound(
        self,
        device_id: str,
        payload: bytes,
        properties: list[tuple[str, str]],
        ttl_secs: int,
        then: Callable[[], None] | None = None,
        input: str = "",
    ) -> None:
        """Store a message for a child (from the cloud or a route) or a module's `input` (from
        a route); once it is durable, `then` (the sender's PUBACK) and delivery to the child
        or module if it is there."""
        expires_ms = int((self._clock() + ttl_secs) * 1000)

        def durable() -> None:
            if then is not None:
                then()
            self.deliver_devicebound(device_id)

        self.devicebound.enqueue(device_id, payload, properties, expires_ms, durable, input)

    def deliver_devicebound(self, device_id: str) -> None:
        """Send the child's (or module's) next waiting messages, in order, up to the window."""
        conn = self._server.sessions.get(device_id)
        probe = dialect.inbox_filter(device_id)[: -len("#")] + "x"
        if conn is None or not conn.is_open or not conn.subscribed(probe):
            return
        delivery = self._deliveries.get(device_id)
        if delivery is None or delivery.conn is not conn:
            delivery = self._deliveries[device_id] = _Delivery(conn)
        room = C2D_WINDOW - len(delivery.inflight)
        if room <= 0:
            return
        now_ms = int(self._clock() * 1000)
        for msg in self.devicebound.pending(device_id, now_ms, delivery.cursor, room):
            delivery.inflight.add(msg.seq)
            delivery.cursor = msg.seq
            conn.deliver(
                inbox_topic(device_id, msg),
                msg.payload,
                qos=1,
                on_acked=lambda seq=msg.seq: self._devicebound_acked(device_id, delivery, seq),
            )

    def _devicebound_acked(self, device_id: str, delivery: _Delivery, seq: int) -> None:
        delivery.inflight.discard(seq)
        self.devicebound.remove(device_id, seq)
        self.deliver_devicebound(device_id)

    # -- from the cloud ----------------------------------------------------------------------

    def subscriptions(self, children: list[str]) -> set[str]:
        topics: set[str] = set()
        for device_id in children:
            topics |= contract.child_subscriptions(self._prefix, device_id)
        return topics

    def cloud_message(self, msg: CloudMessage) -> bool:
        """Handle a per-device cloud message; False if the topic is not one of ours."""
        parsed = contract.parse_device_topic(self._prefix, msg.topic)
        if parsed is None:
            return False
        device_id, kind, detail = parsed
        if device_id not in self._children():
            self.dropped_unknown += 1
            return True
        try:
            if kind == "desired":
                doc = parse_document(msg.payload, "desired twin")
                self._desired(device_id, doc, msg.hold_ack())
            elif kind == "reported":
                doc = parse_document(msg.payload, "reported twin")
                self._cloud_reported(device_id, doc, msg.hold_ack())
            elif kind == "devicebound":
                ttl = msg.expiry_secs or C2D_DEFAULT_TTL_SECS
                self.enqueue_devicebound(device_id, msg.payload, list(msg.user_properties), ttl,
                                         msg.hold_ack())
            elif kind == "method":
                self._cloud_method(device_id, detail, msg)
        except TwinError as exc:
            self._server.log_limited(
                Event.CLOUD_DOCUMENT_REFUSED,
                f"cloud: {msg.topic}: refused: {exc}; publish a corrected document (retained)",
                device_id=device_id,
                cause=kind,
            )
        return True

    def _desired(self, device_id: str, doc: dict, ack: Callable[[], None]) -> None:
        """Durable first: then the cloud's PUBACK, and the patch to the child if it listens."""

        def durable(delta: dict | None) -> None:
            ack()
            if delta is None:
                return
            conn = self._server.sessions.get(device_id)
            topic = f"$iothub/twin/PATCH/properties/desired/?$version={doc['$version']}"
            if conn is not None and conn.is_open and conn.subscribed(topic):
                conn.deliver(topic, json.dumps(delta).encode())

        self.twins.apply_desired(device_id, doc, durable)

    def _cloud_reported(self, device_id: str, doc: dict, ack: Callable[[], None]) -> None:
        if self.twins.cloud_reported(device_id, doc, ack):
            self._publish_reported(device_id)

    def _cloud_method(self, device_id: str, method: str, msg: CloudMessage) -> None:
        uplink = self.uplink
        if not msg.response_topic or uplink is None:
            self._server.log_limited(
                Event.CLOUD_DOCUMENT_REFUSED,
                f"cloud: method call {msg.topic} has no response topic; the caller must set "
                f"one (MQTT 5 request/response)",
                device_id=device_id,
                cause="method",
            )
            return
        try:
            timeout = float(msg.user_property("timeout", str(DEFAULT_TIMEOUT_SECS)))
        except ValueError:
            timeout = DEFAULT_TIMEOUT_SECS

        def reply(status: int, payload: bytes) -> None:
            uplink.publish(
                msg.response_topic,
                payload,
                user_properties=[("status", str(status))],
                correlation=msg.correlation,
            )

        self.methods.invoke(device_id, method, msg.payload, timeout, reply)

    # -- reconcile ---------------------------------------------------------------------------

    def _publish_reported(self, device_id: str) -> None:
        """The latest reported state to the cloud, one publish in flight per child: patches that
        come meanwhile make one more publish of the then latest state, not one each."""
        uplink = self.uplink
        if uplink is None or uplink.stats.state != "online":
            return  # on_online publishes every twin changed meanwhile
        if device_id in self._reporting:
            self._reporting[device_id] = True
            return
        reported = self.twins.get(device_id).reported
        version = reported["$version"]

        def done(ok: bool) -> None:
            again = self._reporting.pop(device_id, False)
            if ok:
                self.twins.mark_published(device_id, version)
            if again:
                self._publish_reported(device_id)

        if uplink.publish(
            contract.device_twin_topic(self._prefix, device_id, "reported"),
            json.dumps(reported).encode(),
            retain=True,
            on_done=done,
        ):
            self._reporting[device_id] = False

    def on_online(self) -> None:
        """The link is back: publish every reported twin changed while it was away, once."""
        self._reporting.clear()  # what was in flight on the old connection never completes
        dirty = self.twins.dirty_devices()
        for device_id in dirty:
            self._publish_reported(device_id)
        if dirty:
            event(
                Event.TWINS_RECONCILED,
                f"twins: published the latest reported state of {len(dirty)} children "
                f"changed while offline",
                level=logging.INFO,
            )

    def sweep(self) -> int:
        return self.devicebound.expire(int(self._clock() * 1000))

    def status(self) -> dict:
        return {
            "devicebound_waiting": self.devicebound.count(),
            "devicebound_delivered": self.devicebound.delivered,
            "devicebound_expired": self.devicebound.expired,
            "methods_invoked": self.methods.invoked,
            "methods_timed_out": self.methods.timed_out,
            "dropped_unknown_device": self.dropped_unknown,
        }
