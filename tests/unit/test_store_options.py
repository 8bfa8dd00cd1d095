"""The store's options reach RocksDB: a zstd-compressed WAL and zstd SSTs, and a store written
before (plain WAL, LZ4) opens and recovers unflushed writes under the new options."""

from __future__ import annotations

import re
from pathlib import Path

from rocksdict import Cache, DBCompressionType, Rdict, WriteBatch

from gateway.storage import store as store_module
from gateway.storage.store import COLUMN_FAMILIES, Batch, Store


def options_text(path) -> str:
    return max(path.glob("OPTIONS-*")).read_text()


def test_wal_and_tables_are_zstd_and_the_flash_settings_stay(tmp_path):
    Store(tmp_path / "s").close()
    text = options_text(tmp_path / "s")
    assert "wal_compression=kZSTD" in text
    assert "recycle_log_file_num=4" in text and "stats_dump_period_sec=0" in text
    assert "wal_recovery_mode=kPointInTimeRecovery" in text and "paranoid_checks=true" in text
    sections = re.split(r"\n\[", text)
    for family in ("default", *COLUMN_FAMILIES):
        (section,) = [s for s in sections if s.startswith(f'CFOptions "{family}"')]
        assert "compression=kZSTD" in section and "write_buffer_size=8388608" in section


def test_the_options_scratch_is_private_and_gone_after_the_open(tmp_path, monkeypatch):
    scratch_base = tmp_path / "tmp"
    scratch_base.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch_base))
    seen = []
    real_mkdir = store_module.os.mkdir

    def watched(path, mode=0o777):
        seen.append((path, mode))
        real_mkdir(path, mode)

    monkeypatch.setattr(store_module.os, "mkdir", watched)
    Store(tmp_path / "s").close()
    assert "wal_compression=kZSTD" in options_text(tmp_path / "s")
    made_there = [mode for path, mode in seen if Path(path).parent == scratch_base]
    assert made_there == [0o700]  # one directory in the shared place, the owner's alone
    assert list(scratch_base.iterdir()) == []  # the scratch database is removed


def test_every_family_shares_one_small_block_cache(tmp_path):
    """A drain reads each outbox block once: RocksDB's default 8 MiB cache only held memory."""
    store = Store(tmp_path / "s")
    try:
        for family in COLUMN_FAMILIES:
            view = store.family(family)._view
            assert view.property_int_value("rocksdb.block-cache-capacity") == 1024 * 1024
        key = b"\x01" + bytes(8)
        batch = Batch()
        batch.put(store.outbox, key, b"x" * 200_000)
        store.write(batch, sync=False)
        store._db.flush()
        assert store.outbox.get(key)  # read through the cache, from the flushed table
        usage = store.meta._view.property_int_value("rocksdb.block-cache-usage")
        assert 0 < usage <= 1024 * 1024 + 64 * 1024  # the meta family sees the outbox's block
    finally:
        store.close()


def test_a_store_from_before_opens_and_recovers_its_wal(tmp_path):
    path = tmp_path / "old"
    cache = Cache(store_module.BLOCK_CACHE_BYTES)
    old_family = store_module._family_options(cache)
    old_family.set_compression_type(DBCompressionType.lz4())
    old_db = store_module._db_options(path, cache)
    old_db.set_compression_type(DBCompressionType.lz4())
    db = Rdict(str(path), options=old_db,
               column_families={name: old_family for name in COLUMN_FAMILIES})
    batch = WriteBatch(raw_mode=True)
    batch.put(b"k", b"written with a plain WAL", db.get_column_family_handle("meta"))
    db.write(batch)
    db.close()  # closes without flushing the memtable: the value is only in the plain WAL
    assert "wal_compression=kNoCompression" in options_text(path)

    store = Store(path)
    try:
        assert store.meta.get(b"k") == b"written with a plain WAL"
    finally:
        store.close()
    assert "wal_compression=kZSTD" in options_text(path)
