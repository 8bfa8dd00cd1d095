"""The store's options reach RocksDB: a zstd-compressed WAL and zstd SSTs, and a store written
before (plain WAL, LZ4) opens and recovers unflushed writes under the new options."""

from __future__ import annotations

import re

from rocksdict import DBCompressionType, Rdict, WriteBatch

from gateway.storage import store as store_module
from gateway.storage.store import COLUMN_FAMILIES, Store


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


def test_a_store_from_before_opens_and_recovers_its_wal(tmp_path):
    path = tmp_path / "old"
    old_family = store_module._family_options()
    old_family.set_compression_type(DBCompressionType.lz4())
    old_db = store_module._db_options(path)
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
