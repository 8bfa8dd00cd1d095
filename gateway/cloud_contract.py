"""The cloud-side contract: topic names and the user properties of forwarded telemetry.

Kept in one place because it is public (docs/cloud-contract.md describes the same names) and the
uplink, the sync code, gatewayctl and the tests must all agree on it.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from gateway.message import Message


def telemetry_topic(prefix: str, device_id: str) -> str:
    return f"{prefix}devices/{device_id}/messages/events"


def registry_topic(prefix: str, gateway_id: str) -> str:
    return f"{prefix}gateways/{gateway_id}/registry"


def status_topic(prefix: str, gateway_id: str) -> str:
    return f"{prefix}gateways/{gateway_id}/status"


def telemetry_user_properties(
    gateway_id: str, seq: int, msg: Message
) -> list[tuple[str, str]]:
    """The child's property bag followed by gw, seq and enq (what lets the cloud count losses).

    The property bag is url-decoded: it is the application's data, not a transport encoding.
    System properties (`$.ct`, `$.ce`, `$.mid`...) are passed on under their own names.
    """
    props = parse_qsl(msg.properties, keep_blank_values=True)
    props += [("gw", gateway_id), ("seq", str(seq)), ("enq", str(msg.enqueued_ms))]
    return props


def expiry_left_secs(msg: Message, now_ms: int) -> int:
    """Seconds of TTL left, rounded up, at least 1 (MQTT 5 message expiry interval)."""
    return max(1, -(-(msg.expires_ms - now_ms) // 1000))
