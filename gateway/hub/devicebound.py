"""Cloud-to-device messages waiting for their child, and routed messages waiting for a module's
input: a durable queue per identity, with a TTL.

A message enters through the one writer, and the cloud broker gets its PUBACK (or a routing
child its PUBACK) only after that commit, so a message handed over survives a power cut; it is
delivered to its child only once it is durable, so the child never sees a message a crash
could take back. It leaves only when the child PUBACKs it, or when its time to live runs out.
Keys are `device_id NUL seq` so that one device's messages are contiguous and in arrival order.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from gateway import identity
from gateway.storage import keyspace as ks
from gateway.storage.store import Batch, Store
from gateway.storage.writes import Submit, Writes, write_or_submit

_HEAD = struct.Struct(">QI")  # expires_ms, length of the property bag


@dataclass(frozen=True, slots=True)
class DeviceboundMessage:
    seq: int
    expires_ms: int
    properties: str  # url-encoded property bag as it goes into the topic (a module's: input/bag)
    payload: bytes


def property_bag(properties: list[tuple[str, str]]) -> str:
    """Url-encode properties the way the IoT Hub device dialect carries them in a topic."""
    return urlencode(properties, quote_via=quote, safe="$.")


def inbox_topic(device_id: str, message: DeviceboundMessage) -> str:
    """A child's `devices/{d}/messages/devicebound/{bag}`, a module's
    `devices/{gw}/modules/{m}/inputs/{input}/{bag}` (the IoT Edge hub's input topic)."""
    if identity.is_module(device_id):
        return f"devices/{identity.path(device_id)}/inputs/{message.properties}"
    bag = message.properties
    to = f"$.to=%2Fdevices%2F{quote(device_id, safe='')}%2Fmessages%2Fdevicebound"
    return f"devices/{device_id}/messages/devicebound/{bag + '&' if bag else ''}{to}"


class DeviceboundQueue:
    """All children's waiting messages, in the store's `devicebound` column family."""

    def __init__(self, store: Store, submit: Submit | None = None) -> None:
        self._store = store
        self._submit = submit
        self._next_seq = ks.read_u64(store.meta.get(ks.DEVICEBOUND_SEQ), 1)
        self.expired = 0
        self.delivered = 0

    def enqueue(
        self,
        device_id: str,
        payload: bytes,
        properties: list[tuple[str, str]],
        expires_ms: int,
        then: Callable[[], None] | None = None,
        input: str = "",
    ) -> int:
        """Store one message durably; returns its sequence number, `then` runs once it is on
        disk (and visible to `pending`). The next number is kept here, so messages submitted
        in one commit interval still get distinct, ordered numbers."""
        seq = self._next_seq
        self._next_seq = seq + 1
        bag = property_bag(properties).encode()
        if input:
            bag = quote(input, safe="").encode() + b"/" + bag
        writes = Writes()
        writes.put(self._store.devicebound, ks.devicebound_key(device_id, seq),
                   _HEAD.pack(expires_ms, len(bag)) + bag + payload)
        writes.put(self._store.meta, ks.DEVICEBOUND_SEQ, ks.u64(seq + 1))
        write_or_submit(self._store, self._submit, writes, then)
        return seq

    def pending(
        self, device_id: str, now_ms: int, after: int = 0, limit: int = 16
    ) -> list[DeviceboundMessage]:
        """The next messages for a device in order, after `after`; expired ones are dropped."""
        out: list[DeviceboundMessage] = []
        expired: list[bytes] = []
        for key, value in self._store.devicebound.scan(ks.devicebound_prefix(device_id),
                                                        ks.devicebound_key(device_id, after + 1)):
            if len(out) >= limit:
                break
            msg = _decode(ks.devicebound_seq(key), value)
            if msg.expires_ms <= now_ms:
                expired.append(key)
            else:
                out.append(msg)
        self._delete(expired)
        self.expired += len(expired)
        return out

    def remove(self, device_id: str, seq: int) -> None:
        """The child acknowledged it. Unsynced: after a power cut it is delivered again."""
        self._delete([ks.devicebound_key(device_id, seq)], sync=False)
        self.delivered += 1

    def expire(self, now_ms: int) -> int:
        """Sweep every device's queue for messages whose TTL ran out; returns how many."""
        expired = [
            key
            for key, value in self._store.devicebound.scan()
            if _HEAD.unpack_from(value)[0] <= now_ms
        ]
        self._delete(expired)
        self.expired += len(expired)
        return len(expired)

    def count(self, device_id: str | None = None) -> int:
        prefix = b"" if device_id is None else ks.devicebound_prefix(device_id)
        return sum(1 for _ in self._store.devicebound.keys(prefix))

    def drop_device(self, device_id: str) -> int:
        """A child left the registry: its waiting messages go with it."""
        keys = list(self._store.devicebound.keys(ks.devicebound_prefix(device_id)))
        self._delete(keys)
        return len(keys)

    def _delete(self, keys: list[bytes], sync: bool = False) -> None:
        if not keys:
            return
        batch = Batch()
        for key in keys:
            batch.delete(self._store.devicebound, key)
        self._store.write(batch, sync=sync)


def _decode(seq: int, value: bytes) -> DeviceboundMessage:
    expires_ms, bag_len = _HEAD.unpack_from(value)
    start = _HEAD.size
    bag = value[start : start + bag_len].decode()
    return DeviceboundMessage(seq, expires_ms, bag, value[start + bag_len :])
