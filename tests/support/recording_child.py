"""A stand-in for one child's connection in unit tests of the hub: it records what the gateway
delivers and PUBACKs when the test says so. The child server itself is the real one (not
started), so its table of sessions and its rate-limited journal lines are the real ones."""

from __future__ import annotations

from collections.abc import Callable

from gateway.child.server import ChildServer, Handler
from gateway.config import ListenSettings
from gateway.mqtt import topics


class RecordingChild:
    def __init__(self, device_id: str, subscriptions: tuple[str, ...] = ("#", "$iothub/#")):
        self.device_id = device_id
        self.subscriptions = list(subscriptions)
        self.is_open = True
        self.delivered: list[tuple[str, bytes, int]] = []
        self._unacked: list[Callable[[], None]] = []

    def subscribed(self, topic: str) -> bool:
        return any(topics.matches(f, topic) for f in self.subscriptions)

    def deliver(self, topic: str, payload: bytes, qos: int = 0,
                on_acked: Callable[[], None] | None = None, dup: bool = False) -> None:
        self.delivered.append((topic, payload, qos))
        if on_acked is not None:
            self._unacked.append(on_acked)

    def puback(self, count: int = 1) -> None:
        """The child acknowledges its oldest `count` QoS 1 deliveries, in order."""
        for _ in range(count):
            self._unacked.pop(0)()

    def payloads(self, prefix: str) -> list[bytes]:
        return [p for t, p, _ in self.delivered if t.startswith(prefix)]


def child_server() -> ChildServer:
    listen = ListenSettings(host="127.0.0.1", port=0, tls_cert=None, tls_key=None,
                            client_ca_file=None, plain_port=0, max_message_bytes=262144,
                            max_connections=10)
    return ChildServer(listen, Handler())


def connect(server: ChildServer, child: RecordingChild) -> RecordingChild:
    server.sessions[child.device_id] = child  # as the server does once a CONNECT is accepted
    return child
