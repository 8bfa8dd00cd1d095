"""gatewayd with RocksDB's default options: the baseline that the store's tuning must beat.

Same code, same records, same commit cadence; only gateway/storage/store.py's option choices (WAL
recycling and zstd compression, write buffer, zstd SSTs, size caps, no statistics dumps...) are
replaced by what RocksDB does when given none. The wear scenario runs it as
`python -m bench.rocksdb_defaults --config F`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from rocksdict import Options

from gateway.cli import gatewayd
from gateway.storage import store


def _defaults(cache=None) -> Options:
    return Options(raw_mode=True)


def _db_defaults(path: Path, cache=None) -> Options:
    opts = _defaults()
    opts.create_if_missing(True)
    opts.create_missing_column_families(True)
    return opts


if __name__ == "__main__":
    store._family_options = _defaults
    store._db_options = _db_defaults
    store._with_wal_compression = lambda options, families, cache: None
    sys.exit(gatewayd.main())
