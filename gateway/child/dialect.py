"""The Azure IoT Hub device MQTT dialect: which topics a child may use, and what they mean.

A child only ever speaks under its own device id and its own `$iothub` topics; a module of the
gateway (identity `edge-1/filter`, gateway/identity.py) under `devices/edge-1/modules/filter/`,
with inputs where a child has its cloud-to-device queue. Anything else is
refused with a reason, because in IoT Hub it would be refused too, and a device that writes
elsewhere is misconfigured or hostile. Pure functions: no I/O, easy to test by strings.
Reference: "Communicate with an IoT hub using the MQTT protocol" (Azure IoT Hub documentation).
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway import identity
from gateway.errors import PeerError


class TopicRefused(PeerError):
    """The topic is outside what this device may use; the message says which rule."""


@dataclass(frozen=True, slots=True)
class Telemetry:
    """`devices/{id}/messages/events/{property-bag}`."""

    properties: str


@dataclass(frozen=True, slots=True)
class TwinGet:
    rid: str


@dataclass(frozen=True, slots=True)
class TwinReportedPatch:
    rid: str


@dataclass(frozen=True, slots=True)
class MethodResponse:
    status: int
    rid: str


@dataclass(frozen=True, slots=True)
class MethodInvoke:
    """gatewayd's extension: `$iothub/methods/invoke/{target}/{method}/?$rid=&timeout=`."""

    target: str
    method: str
    rid: str
    timeout_secs: float | None


Operation = Telemetry | TwinGet | TwinReportedPatch | MethodResponse | MethodInvoke
INVOKE_PREFIX = "$iothub/methods/invoke/"


def _query_value(query: str, name: str) -> str:
    for part in query.split("&"):
        key, _, value = part.partition("=")
        if key == name:
            return value
    return ""


def _rid(rest: str, topic: str) -> str:
    if not rest.startswith("?"):
        raise TopicRefused(f"topic {topic!r} has no '?$rid=' query")
    rid = _query_value(rest[1:], "$rid")
    if not rid:
        raise TopicRefused(f"topic {topic!r} has no $rid")
    return rid


def classify_publish(device_id: str, topic: str) -> Operation:
    """What a PUBLISH from `device_id` (a child or a module) on `topic` asks for, or
    TopicRefused. A module's output name travels in its property bag as `$.on`."""
    events = f"devices/{identity.path(device_id)}/messages/events"
    if topic == events or topic == events + "/":
        return Telemetry("")
    if topic.startswith(events + "/"):
        return Telemetry(topic[len(events) + 1 :])
    if topic.startswith("$iothub/twin/GET/"):
        return TwinGet(_rid(topic[len("$iothub/twin/GET/") :], topic))
    reported = "$iothub/twin/PATCH/properties/reported/"
    if topic.startswith(reported):
        return TwinReportedPatch(_rid(topic[len(reported) :], topic))
    if topic.startswith(INVOKE_PREFIX) and not topic.startswith(INVOKE_PREFIX + "res/"):
        return _invoke(topic)
    if topic.startswith("$iothub/methods/res/"):
        status, _, rest = topic[len("$iothub/methods/res/") :].partition("/")
        if not status.isdigit():
            raise TopicRefused(f"method response topic {topic!r} has no numeric status")
        return MethodResponse(int(status), _rid(rest, topic))
    if topic.startswith("devices/"):
        raise TopicRefused(
            f"{_who(device_id)} may only publish under {events}/"
        )
    raise TopicRefused(f"topic {topic!r} is not part of the IoT Hub device API")


def _invoke(topic: str) -> MethodInvoke:
    path, _, query = topic[len(INVOKE_PREFIX) :].partition("?")
    parts = path.split("/")
    if len(parts) != 3 or not parts[0] or not parts[1] or parts[2]:
        raise TopicRefused(
            f"method call topic {topic!r} must be {INVOKE_PREFIX}{{target}}/{{method}}/?$rid="
        )
    rid = _rid("?" + query, topic)
    timeout = _query_value(query, "timeout")
    try:
        timeout_secs = float(timeout) if timeout else None
    except ValueError:
        raise TopicRefused(f"method call topic {topic!r}: timeout is not a number") from None
    return MethodInvoke(parts[0], parts[1], rid, timeout_secs)


def _who(device_id: str) -> str:
    return f"module {device_id!r}" if identity.is_module(device_id) else f"device {device_id!r}"


def inbox_filter(device_id: str) -> str:
    """Where a child's cloud-to-device messages, or a module's inputs, are delivered."""
    if identity.is_module(device_id):
        return f"devices/{identity.path(device_id)}/inputs/#"
    return f"devices/{device_id}/messages/devicebound/#"


def allowed_filters(device_id: str) -> tuple[str, ...]:
    """The subscriptions IoT Hub grants a device or module (each may be subscribed narrower)."""
    return (
        inbox_filter(device_id),
        "$iothub/twin/res/#",
        "$iothub/twin/PATCH/properties/desired/#",
        "$iothub/methods/POST/#",
        INVOKE_PREFIX + "res/#",  # gatewayd's extension: answers to child-to-child calls
    )


def check_subscription(device_id: str, topic_filter: str) -> None:
    """Raise TopicRefused unless the filter lies within what the device may receive."""
    for allowed in allowed_filters(device_id):
        root = allowed[: -len("#")]
        if topic_filter == allowed or topic_filter.startswith(root) or topic_filter == root[:-1]:
            return
    raise TopicRefused(
        f"{_who(device_id)} may not subscribe to {topic_filter!r}; allowed: "
        + ", ".join(allowed_filters(device_id))
    )
