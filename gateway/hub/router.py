"""The routes in force and what they make of one telemetry message: its plan of sinks.

Why the routing lives here, in hub/, and not in the child handler: which sinks a message goes
to is a rule of the hub's routes (docs/routes.md), the same whoever delivers the message, and it
is pure given the route table and the registry, so it is tested without a store, a socket or an
event loop. Why the router decides and does not deliver: the sinks are the ingest (upstream,
whose safety releases the PUBACK) and the local hub (children's queues), and the local hub in
turn asks the routes whether one child may call another's methods. A router that held the hub
would close a cycle; a plan handed back to the caller keeps data flowing one way: the child
handler asks the router, then hands the plan to the ingest and the hub (three lines).

The table is replaced whole when the gateway's desired twin brings new routes (`use`); the
settings have already refused a table that does not parse, so `use` cannot fail on one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from gateway import identity
from gateway.hub.routes import Delivery, MessageView, RouteTable, parse_routes


@dataclass(frozen=True)
class ChildCopy:
    """One copy of the message for a child's devicebound queue, or a module's input."""

    device_id: str  # the receiver's identity
    properties: list[tuple[str, str]]  # the sender's bag, `$.cdid` (and `$.cmid`) = the sender
    ttl_secs: int
    input: str = ""  # for a module: the input it arrives on


@dataclass(frozen=True)
class Plan:
    """Where one message goes: upstream (or not) and to which children's queues."""

    upstream: Delivery | None
    children: tuple[ChildCopy, ...] = ()


class Router:
    """Holds the route table in force; plans each telemetry message and counts the unrouted."""

    def __init__(self, routes: object, children: Callable[[], Mapping[str, object]],
                 gateway_id: str = "") -> None:
        self._table: RouteTable = parse_routes(routes)
        self._children = children
        self._gateway_id = gateway_id
        self.unrouted = 0  # copies for a sink no child of the registry answers to

    def use(self, routes: object) -> None:
        """New routes from the desired twin, already checked whole by the settings."""
        self._table = parse_routes(routes)

    @property
    def empty(self) -> bool:
        """No routes: everything goes upstream in order, the common case and the fast path."""
        return not self._table.routes

    def __len__(self) -> int:
        return len(self._table.routes)

    def plan(self, device_id: str, properties: str, payload: bytes, default_ttl: int) -> Plan:
        """Each sink once; a copy for a device that is not a child is dropped and counted. A
        copy for a module's input waits for it, deployed yet or not: a deployment that brings
        the module later finds its messages (their time to live still runs)."""
        view = MessageView(device_id, properties, payload)
        upstream = None
        copies = []
        sender = [("$.cdid", identity.device_of(device_id))]
        if identity.is_module(device_id):
            sender.append(("$.cmid", identity.module_of(device_id)))
        for delivery in self._table.deliveries(view, default_ttl):
            sink = delivery.sink
            bag = [*view.props().items(), *sender]
            if sink.upstream:
                upstream = delivery
            elif sink.module:
                receiver = identity.module_identity(self._gateway_id, sink.module)
                copies.append(ChildCopy(receiver, bag, delivery.ttl_secs, sink.input))
            elif sink.device in self._children():
                copies.append(ChildCopy(sink.device, bag, delivery.ttl_secs))
            else:
                self.unrouted += 1
        return Plan(upstream, tuple(copies))

    def allows_call(self, caller: str, target: str) -> bool:
        """For the local hub: a route into `target`'s queue also lets its sender call it."""
        return self._table.allows_call(caller, target)

    def describe(self) -> dict[str, str]:
        return self._table.describe()
