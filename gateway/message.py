"""An upstream message as the outbox stores it, and its on-disk record format.

The record is a small fixed header followed by length-prefixed fields, not JSON or pickle: it is
written once per stored message on a Pi, so it must be cheap to build and parse, and it carries a
version byte so that a later release can read what an earlier one stored (a gateway may be upgraded
with a week of backlog on its card).

Version 3 may store the payload deflated (zlib, raw stream): every byte of a stored record is
written at least once to the WAL and usually again to an SST file, and telemetry (JSON, text)
shrinks by a quarter or more. Payloads that do not shrink by at least 1/8 are stored as they are.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

RECORD_VERSION = 3
# version, enqueued_ms, expires_ms, len(device), len(props), len(payload)
_HEADER = struct.Struct(">BQQHHI")
# version 2 appends the priority byte after the header (version 1 reads as DEFAULT_PRIORITY)
# version 3 appends a flags byte after the priority
_FLAG_DEFLATED = 0x01
COMPRESS_FROM_BYTES = 64  # smaller payloads gain too little to pay for the CPU
DEFAULT_PRIORITY = 9  # routes without a priority, and every message when no routes are set
PRIORITIES = range(10)  # 0 is the highest


class RecordError(ValueError):
    """A stored record cannot be decoded: the store holds bytes this release does not understand."""


@dataclass(frozen=True, slots=True)
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


def _deflate(payload: bytes) -> tuple[int, bytes]:
    if len(payload) < COMPRESS_FROM_BYTES:
        return 0, payload
    packer = zlib.compressobj(1, zlib.DEFLATED, -15)
    packed = packer.compress(payload) + packer.flush()
    if len(packed) > len(payload) - len(payload) // 8:
        return 0, payload
    return _FLAG_DEFLATED, packed


def encode_record(msg: Message) -> bytes:
    device = msg.device_id.encode()
    props = msg.properties.encode()
    flags, body = _deflate(msg.payload)
    header = _HEADER.pack(
        RECORD_VERSION, msg.enqueued_ms, msg.expires_ms, len(device), len(props), len(body)
    )
    return b"".join((header, bytes((msg.priority, flags)), device, props, body))


def decode_record(data: bytes) -> Message:
    if len(data) < _HEADER.size:
        raise RecordError(f"record of {len(data)} bytes is shorter than its header")
    version, enq, exp, dlen, plen, blen = _HEADER.unpack_from(data)
    if version not in (1, 2, 3):
        raise RecordError(f"record version {version} is not known to this release")
    pos = _HEADER.size
    priority, flags = DEFAULT_PRIORITY, 0
    if version >= 2:
        if len(data) < pos + version - 1:
            raise RecordError("record is shorter than its header")
        priority = data[pos]
        flags = data[pos + 1] if version >= 3 else 0
        pos += version - 1
    if pos + dlen + plen + blen != len(data):
        raise RecordError("record length does not match its header")
    device = data[pos : pos + dlen].decode()
    pos += dlen
    props = data[pos : pos + plen].decode()
    pos += plen
    body = bytes(data[pos : pos + blen])
    if flags & _FLAG_DEFLATED:
        try:
            body = zlib.decompress(body, -15)
        except zlib.error as exc:
            raise RecordError(f"deflated payload does not inflate: {exc}") from None
    return Message(device, enq, exp, props, body, priority)
