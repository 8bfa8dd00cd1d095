"""Who a connection is: a child device (`sensor-7`) or a module of this gateway (`edge-1/filter`).

IoT Hub names a module by its device and its module id, and so does the rest of gatewayd: one
string per identity, `{gatewayId}/{moduleId}` for a module, the device id for a child. IoT Hub
device ids never contain "/", so the two never collide, and every table keyed by identity (the
sessions, twins, queues, methods in flight, the outbox) serves modules with no second key.
Where the string becomes a path (topics, SAS resources) a module's is `{gw}/modules/{m}`; this
module is the one place that knows it.
"""

from __future__ import annotations

__all__ = ["device_of", "is_module", "module_identity", "module_of", "path", "from_path"]


def module_identity(gateway_id: str, module_id: str) -> str:
    return f"{gateway_id}/{module_id}"


def is_module(identity: str) -> bool:
    return "/" in identity


def device_of(identity: str) -> str:
    """The device a connection belongs to: the child itself, or the gateway of a module."""
    return identity.partition("/")[0]


def module_of(identity: str) -> str:
    """The module id, or "" for a child device."""
    return identity.partition("/")[2]


def path(identity: str) -> str:
    """`sensor-7` or `edge-1/modules/filter`: what follows `devices/` in a topic or resource."""
    device, _, module = identity.partition("/")
    return f"{device}/modules/{module}" if module else device


def from_path(parts: list[str]) -> tuple[str, list[str]]:
    """Split topic levels after `devices/` into (identity, the levels that follow it)."""
    if len(parts) >= 3 and parts[1] == "modules" and parts[0] and parts[2]:
        return module_identity(parts[0], parts[2]), parts[3:]
    return parts[0] if parts else "", parts[1:]
