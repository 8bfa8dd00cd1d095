"""Every key the gateway stores, and how each is encoded: the store's one map.

The bytes here are the on-disk format. A gateway is upgraded with its backlog on the card, so a
name or an encoding here never changes; a new kind of record gets a new name, checked against
the others by tests/unit/test_keyspace.py (no fixed name may start with a scanned prefix, and
no scanned prefix may start another).

Numbers in keys are unsigned 64-bit big-endian, so that RocksDB's bytewise order is numeric
order. A prefix that names one device ends with a separator ("a\\0", never "a"), so that device
"a" never reads device "ab"'s records.

Families:
  outbox       priority byte + seq                      one upstream message (upstream/message.py)
  devicebound  device id + NUL + seq                    one cloud-to-device message
  meta         everything small, by the names below     (counters, caches, twins, audit, dlq)
"""

from __future__ import annotations

import struct

FAMILIES = ("outbox", "meta", "devicebound")

_U64 = struct.Struct(">Q")
_SEQ_KEY = struct.Struct(">BQ")  # the outbox's key: the priority byte, then the seq
U64_MAX = 2**64 - 1


def u64(value: int) -> bytes:
    """A counter's value, or the number in a key."""
    return _U64.pack(value)


def read_u64(data: bytes | None, default: int = 0) -> int:
    """A counter as stored, or `default` when it was never written."""
    return _U64.unpack(data)[0] if data else default


# -- outbox family: priority byte + seq ------------------------------------------------------


def seq_key(seq: int, priority: int) -> bytes:
    """RocksDB's order is the send order: higher priorities (lower bytes) first, then seq."""
    return _SEQ_KEY.pack(priority, seq)


def key_seq(key: bytes) -> int:
    return _U64.unpack_from(key, 1)[0]


def lane(priority: int) -> bytes:
    """The prefix of one priority's messages."""
    return bytes((priority,))


# -- meta family: the outbox's counters, in the batch of each commit -------------------------

SEQ_CEILING = b"seq_ceiling"  # sequence numbers below it may have been handed out
DISK_COUNT = b"disk_count"  # messages in the outbox family
DISK_BYTES = b"disk_bytes"  # their payload bytes
_LANE_COUNT = b"disk_count/"  # + priority byte: messages on disk per priority


def lane_count_key(priority: int) -> bytes:
    return _LANE_COUNT + bytes((priority,))


# -- meta family: dead letters, "dlq/" + seq -------------------------------------------------

DLQ_PREFIX = b"dlq/"  # value: reason byte, refused-at ms (u64), then the outbox record


def dlq_key(seq: int) -> bytes:
    return DLQ_PREFIX + _U64.pack(seq)


def dlq_seq(key: bytes) -> int:
    return _U64.unpack(key[len(DLQ_PREFIX):])[0]


# -- devicebound family: device id + NUL + seq -------------------------------------------------

DEVICEBOUND_SEQ = b"devicebound_seq"  # meta: the next cloud-to-device sequence number


def devicebound_prefix(device_id: str) -> bytes:
    """One device's messages, contiguous and in arrival order; NUL ends the id."""
    return device_id.encode() + b"\0"


def devicebound_key(device_id: str, seq: int) -> bytes:
    return devicebound_prefix(device_id) + _U64.pack(seq)


def devicebound_seq(key: bytes) -> int:
    return _U64.unpack(key[-_U64.size:])[0]


# -- meta family: twins, "twin/" + device id --------------------------------------------------

TWIN_PREFIX = b"twin/"


def twin_key(device_id: str) -> bytes:
    return TWIN_PREFIX + device_id.encode()


def twin_device(key: bytes) -> str:
    return key[len(TWIN_PREFIX):].decode()


# -- meta family: offline trust and its audit trail -------------------------------------------

REGISTRY_FRESH_AT = b"registry_fresh_at"  # ms when the registry was last known fresh
AUDIT_PREFIX = b"audit/"  # + entry number: one offline authentication decision (JSON)


def audit_key(number: int) -> bytes:
    return AUDIT_PREFIX + _U64.pack(number)


def audit_number(key: bytes) -> int:
    return _U64.unpack(key[len(AUDIT_PREFIX):])[0]


# -- meta family: caches of what the cloud sent -----------------------------------------------

REGISTRY = b"registry"  # the registry of children (child/auth.py's encoding)
SETTINGS = b"gateway_twin_desired"  # the gateway's accepted desired twin (JSON)
DEPLOYMENT = b"agent_desired"  # the deployment in force (modules/deployment.py's encoding)
MODULE_SECRET = b"module_secret"  # 32 random bytes: every module key is derived from it
DNS_PREFIX = b"dns/"  # + host name: the addresses that worked last (JSON list)

# -- meta family: the loss ledger's accounts not yet acknowledged (upstream/ledger.py, JSON) --

LEDGER = b"ledger"


def dns_key(host: str) -> bytes:
    return DNS_PREFIX + host.encode()


# what the tests check for collisions: names read alone, and prefixes that are scanned
FIXED_META_KEYS = (SEQ_CEILING, DISK_COUNT, DISK_BYTES, DEVICEBOUND_SEQ, REGISTRY_FRESH_AT,
                   REGISTRY, SETTINGS, DEPLOYMENT, MODULE_SECRET, LEDGER)
SCANNED_META_PREFIXES = (DLQ_PREFIX, TWIN_PREFIX, AUDIT_PREFIX)
OTHER_META_PREFIXES = (_LANE_COUNT, DNS_PREFIX)  # read key by key, never scanned
