"""An upstream message as the outbox stores it, and its on-disk record format.

The record is a small fixed header followed by length-prefixed fields, not JSON or pickle: it is
written once per stored message on a Pi, so it must be cheap to build and parse, and it carries a
version byte so that a later release can read what an earlier one stored (a gateway may be upgraded
with a week of backlog on its card).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from gateway.errors import DataError

RECORD_VERSION = 2
# version, enqueued_ms, expires_ms, len(device), len(props), len(payload)
_HEADER = struct.Struct(">BQQHHI")
# version 2 appends the priority after the header (version 1 records read as DEFAULT_PRIORITY)
_PRIORITY = struct.Struct(">B")
_V2_HEAD = struct.Struct(">BQQHHIB")  # the header and the priority of a version 2 record
DEFAULT_PRIORITY = 9  # routes without a priority, and every message when no routes are set
PRIORITIES = range(10)  # 0 is the highest


# A drain sends most messages straight from their version 2 records (Outbox.pending,
# TelemetryEncoder.publish_record) without making a Message: 1.95 against 2.48 µs from record
# to PUBLISH (timeit). What those readers need of the layout is here.
STORED_HEAD = _V2_HEAD
STORED_PRIORITY_AT = _HEADER.size  # the index of the priority byte
STORED_EXTRA = _V2_HEAD.size - _HEADER.size  # a record is this much longer than its size()


def stored_head(data: bytes) -> tuple[int, int, int, int, int, int, int] | None:
    """The header of a version 2 record whose lengths add up, else None (an older version, or
    bytes that decode_record refuses). The check that lets a reader skip decode_record."""
    if data.__class__ is bytes and len(data) >= _V2_HEAD.size and data[0] == 2:
        head = _V2_HEAD.unpack_from(data)
        if _V2_HEAD.size + head[3] + head[4] + head[5] == len(data):
            return head
    return None


class RecordError(DataError):
    """A stored record cannot be decoded: the store holds bytes this release does not understand."""


# Not frozen: one is made per message on the hot path, and a frozen __init__ sets each field
# through object.__setattr__ (2.1 against 0.5 µs for six fields). Nothing changes one.
@dataclass(slots=True)
class Message:
    """One child message bound for the cloud.

    `properties` is the IoT Hub property bag exactly as the child sent it (url-encoded
    `k=v&k2=v2`), kept verbatim so that what the cloud receives is what the child meant.
    """

    device_id: str
    enqueued_ms: int
    expires_ms: int
    properties: str
    payload: bytes
    priority: int = DEFAULT_PRIORITY

    def size(self) -> int:
        """Bytes this message costs in the backlog (what quotas and statistics count)."""
        return _HEADER.size + len(self.device_id) + len(self.properties) + len(self.payload)


def encode_record(msg: Message) -> bytes:
    device = msg.device_id.encode()
    props = msg.properties.encode()
    header = _HEADER.pack(
        RECORD_VERSION, msg.enqueued_ms, msg.expires_ms, len(device), len(props), len(msg.payload)
    )
    return b"".join((header, _PRIORITY.pack(msg.priority), device, props, msg.payload))


def decode_record(data: bytes) -> Message:
    head = stored_head(data)  # what this release writes, as RocksDB gives it: one unpack
    if head is not None:
        _, enq, exp, dlen, plen, _, priority = head
        dend = _V2_HEAD.size + dlen
        pend = dend + plen
        return Message(data[_V2_HEAD.size:dend].decode(), enq, exp, data[dend:pend].decode(),
                       data[pend:], priority)
    if len(data) < _HEADER.size:
        raise RecordError(f"record of {len(data)} bytes is shorter than its header")
    version, enq, exp, dlen, plen, blen = _HEADER.unpack_from(data)
    if version not in (1, 2):
        raise RecordError(f"record version {version} is not known to this release")
    pos = _HEADER.size
    priority = DEFAULT_PRIORITY
    if version >= 2:
        if len(data) < pos + 1:
            raise RecordError("record is shorter than its header")
        priority = data[pos]
        pos += 1
    if pos + dlen + plen + blen != len(data):
        raise RecordError("record length does not match its header")
    device = data[pos : pos + dlen].decode()
    pos += dlen
    props = data[pos : pos + plen].decode()
    pos += plen
    return Message(device, enq, exp, props, bytes(data[pos : pos + blen]), priority)
