"""The keyspace is the on-disk format: its bytes are pinned, its names cannot collide, and it
is reached through gateway/storage only (no module outside that package imports rocksdict)."""

from __future__ import annotations

import ast
from pathlib import Path

import gateway
from gateway.storage import keyspace as ks


def test_the_bytes_of_every_key_are_those_stored_before():
    """A gateway is upgraded with its backlog on the card: these never change."""
    assert ks.seq_key(1, 9) == b"\x09\x00\x00\x00\x00\x00\x00\x00\x01"
    assert ks.key_seq(b"\x00\x00\x00\x00\x00\x00\x00\x01\x00") == 256
    assert ks.lane(0) == b"\x00"
    assert ks.SEQ_CEILING == b"seq_ceiling"
    assert (ks.DISK_COUNT, ks.DISK_BYTES) == (b"disk_count", b"disk_bytes")
    assert ks.lane_count_key(3) == b"disk_count/\x03"
    assert ks.dlq_key(2) == b"dlq/\x00\x00\x00\x00\x00\x00\x00\x02"
    assert ks.dlq_seq(ks.dlq_key(2**40)) == 2**40
    assert ks.DEVICEBOUND_SEQ == b"devicebound_seq"
    assert ks.devicebound_key("dev-ü", 7) == "dev-ü".encode() + b"\x00" + (7).to_bytes(8, "big")
    assert ks.devicebound_seq(ks.devicebound_key("a", 7)) == 7
    assert ks.twin_key("dev-1") == b"twin/dev-1" and ks.twin_device(b"twin/dev-1") == "dev-1"
    assert ks.REGISTRY_FRESH_AT == b"registry_fresh_at"
    assert ks.audit_key(5) == b"audit/\x00\x00\x00\x00\x00\x00\x00\x05"
    assert ks.audit_number(ks.audit_key(5)) == 5
    assert ks.REGISTRY == b"registry" and ks.SETTINGS == b"gateway_twin_desired"
    assert ks.DEPLOYMENT == b"agent_desired" and ks.MODULE_SECRET == b"module_secret"
    assert ks.dns_key("hub.example.net") == b"dns/hub.example.net"
    assert ks.u64(1) == b"\x00" * 7 + b"\x01" and ks.read_u64(None, 5) == 5


def test_no_meta_name_falls_under_a_scanned_prefix():
    """A scan of twin/, audit/ or dlq/ must read only its own records."""
    names = [*ks.FIXED_META_KEYS, *ks.OTHER_META_PREFIXES]
    prefixes = list(ks.SCANNED_META_PREFIXES)
    for prefix in prefixes:
        assert not [n for n in names if n.startswith(prefix)], prefix
        assert not [p for p in prefixes if p != prefix and p.startswith(prefix)], prefix
    assert len(set(ks.FIXED_META_KEYS)) == len(ks.FIXED_META_KEYS)


def test_a_device_prefix_never_covers_another_device():
    assert not ks.devicebound_key("ab", 1).startswith(ks.devicebound_prefix("a"))
    assert ks.devicebound_key("a", 1).startswith(ks.devicebound_prefix("a"))


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found


def test_only_the_storage_package_imports_rocksdict():
    root = Path(gateway.__file__).parent
    storage = root / "storage"
    offenders = [str(p.relative_to(root)) for p in sorted(root.rglob("*.py"))
                 if storage not in p.parents and "rocksdict" in _imports(p)]
    assert offenders == []
    assert "rocksdict" in _imports(storage / "store.py")  # the walk does find imports
