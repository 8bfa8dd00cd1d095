"""Direct methods: a request delivered to a connected child, its answer sent back to the caller.

Methods are synchronous by nature (IoT Hub answers 404 when the device is not connected and 504
when it does not answer in time), so nothing here is stored: a call lives in memory from the
request to the answer or the timeout. The caller is abstract (`reply`), so the same path serves
calls from the cloud and calls from another child.
Reference: "Understand and invoke direct methods from IoT Hub" (Azure IoT Hub documentation).
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass

from gateway.child.server import ChildServer

DEFAULT_TIMEOUT_SECS = 30.0
MAX_TIMEOUT_SECS = 300.0
STATUS_NOT_CONNECTED = 404
STATUS_TIMEOUT = 504
STATUS_BAD_REQUEST = 400

Reply = Callable[[int, bytes], None]


def error_payload(message: str) -> bytes:
    return json.dumps({"message": message}).encode()


def request_topic(method: str, rid: str) -> str:
    return f"$iothub/methods/POST/{method}/?$rid={rid}"


@dataclass
class _Call:
    device_id: str
    method: str
    reply: Reply
    timer: asyncio.TimerHandle
    failed: Reply  # the router's own answers (404, 504): reply, unless the caller tells them apart


class MethodRouter:
    """Calls in flight, keyed by the request id given to the child."""

    def __init__(self, server: ChildServer) -> None:
        self._server = server
        self._calls: dict[str, _Call] = {}
        self._ids = itertools.count(1)
        self.invoked = 0
        self.timed_out = 0

    def invoke(
        self, device_id: str, method: str, payload: bytes, timeout_secs: float, reply: Reply,
        failed: Reply | None = None,
    ) -> None:
        """Deliver a call to `device_id`; `reply(status, payload)` runs exactly once, with the
        target's answer, or with the router's 404 (not connected) or 504 (no answer in time),
        which go to `failed` instead when it is given: an HTTPS caller answers those with the
        HTTP status, the target's own with 200 (a target may answer 404 itself)."""
        failed = failed or reply
        conn = self._server.sessions.get(device_id)
        rid = format(next(self._ids), "x")
        topic = request_topic(method, rid)
        if conn is None or not conn.is_open or not conn.subscribed(topic):
            failed(
                STATUS_NOT_CONNECTED,
                error_payload(f"device {device_id} is not connected to this gateway or has "
                              f"not subscribed to direct methods"),
            )
            return
        timeout = min(max(timeout_secs, 0.1), MAX_TIMEOUT_SECS)
        timer = asyncio.get_running_loop().call_later(timeout, self._expire, rid)
        self._calls[rid] = _Call(device_id, method, reply, timer, failed)
        self.invoked += 1
        conn.deliver(topic, payload)

    def answer(self, device_id: str, rid: str, status: int, payload: bytes) -> bool:
        """A child's `$iothub/methods/res/{status}/?$rid=`; False if no call waits for it."""
        call = self._calls.get(rid)
        if call is None or call.device_id != device_id:
            return False
        del self._calls[rid]
        call.timer.cancel()
        call.reply(status, payload)
        return True

    def _expire(self, rid: str) -> None:
        call = self._calls.pop(rid, None)
        if call is not None:
            self.timed_out += 1
            call.failed(
                STATUS_TIMEOUT,
                error_payload(f"device {call.device_id} did not answer {call.method} in time"),
            )

    def device_gone(self, device_id: str) -> None:
        """The child disconnected: its calls cannot be answered any more (504, as IoT Hub)."""
        for rid in [rid for rid, call in self._calls.items() if call.device_id == device_id]:
            self._calls[rid].timer.cancel()
            self._expire(rid)

    def close(self) -> None:
        for call in self._calls.values():
            call.timer.cancel()
        self._calls.clear()
