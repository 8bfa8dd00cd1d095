"""The RocksDB database behind the gateway: one directory, one column family per store.

Column families keep the outbox (a sequential queue with heavy deletes) apart from the small
key-value data (registry cache, sequence reservations) so that compaction of one does not rewrite
the other, and so that one synced WriteBatch can still update both atomically.

Options are chosen for an SD card: WAL files are recycled instead of created and deleted,
RocksDB's own LOG is size-capped, point-in-time WAL recovery keeps everything up to the first
damaged record after a power cut, and paranoid checks refuse to run on a store that is silently
inconsistent. Both copies of a stored message are compressed with zstd: the SST blocks, and the
WAL as one stream per log file, which catches what consecutive telemetry messages share (an
outage stored with both wrote 0.9 device bytes per payload byte, against 2.0 with LZ4 SSTs and
a plain WAL; docs/performance.md).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from pathlib import Path

from rocksdict import (
    DBCompressionType,
    DBRecoveryMode,
    Options,
    Rdict,
    WriteBatch,
    WriteOptions,
)

from gateway.errors import StoreError, SyncOnLoopError
from gateway.log import Event, event

COLUMN_FAMILIES = ("outbox", "meta", "devicebound")
_MiB = 1024 * 1024



def _family_options() -> Options:
    opts = Options(raw_mode=True)
    opts.set_write_buffer_size(8 * _MiB)
    opts.set_max_write_buffer_number(2)
    opts.set_compression_type(DBCompressionType.zstd())
    return opts


def _wal_cap(path: Path) -> int:
    """All column families share the log; a family that rarely writes keeps old log files
    alive until the total passes this cap. On a small disk the cap must be small too."""
    try:
        total = shutil.disk_usage(path).total
    except OSError:
        return 32 * _MiB
    return max(1 * _MiB, min(32 * _MiB, total // 20))


def _db_options(path: Path) -> Options:
    opts = _family_options()
    opts.create_if_missing(True)
    opts.create_missing_column_families(True)
    opts.set_paranoid_checks(True)
    opts.set_wal_recovery_mode(DBRecoveryMode.point_in_time())
    opts.set_recycle_log_file_num(4)
    opts.set_max_total_wal_size(_wal_cap(path))
    opts.set_max_log_file_size(1 * _MiB)
    opts.set_keep_log_file_num(2)
    # RocksDB dumps ~10 KiB of statistics into its LOG every 10 min by default: on a gateway
    # with a healthy uplink that was the only write to the card (see docs/performance.md)
    opts.set_stats_dump_period_sec(0)
    opts.set_stats_persist_period_sec(0)
    return opts


def _with_wal_compression(db_opts: Options, families: dict[str, Options]):
    """The same options with `wal_compression=kZSTD` (RocksDB >= 7.2), or None if that fails.

    rocksdict has no setter for it, so the options are written the way RocksDB itself persists
    them (an OPTIONS file, made by opening a scratch database with these options), the one line
    is changed, and the file is loaded back with RocksDB's own loader.
    """
    try:
        with tempfile.TemporaryDirectory(prefix="gatewayd-options-") as scratch:
            Rdict(f"{scratch}/db", options=db_opts, column_families=families).close()
            source = max(Path(scratch, "db").glob("OPTIONS-*"))
            text = source.read_text()
            if "wal_compression=kNoCompression" not in text:
                return None
            template = Path(scratch, "template")
            template.mkdir()
            (template / source.name).write_text(
                text.replace("wal_compression=kNoCompression", "wal_compression=kZSTD"))
            loaded, loaded_families = Options.load_latest(str(template))
    except Exception as exc:  # rocksdict raises plain Exception with RocksDB's text
        event(Event.STORE_ERROR, f"store: WAL compression not available ({exc}); the WAL is "
              f"written plain, which wears the card about twice as fast during an outage",
              level=logging.WARNING)
        return None
    loaded.create_if_missing(True)
    loaded.create_missing_column_families(True)
    # the default family (unused) keeps its own section; the DB-wide part carries RocksDB's
    # defaults for it otherwise
    return loaded, {name: loaded_families[name] for name in ("default", *families)}


class Store:
    """An open database: the column families and the two ways of writing to them."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            options = _db_options(self.path)
            families = {name: _family_options() for name in COLUMN_FAMILIES}
            options, families = _with_wal_compression(options, families) or (options, families)
            self._db = Rdict(str(self.path), options=options, column_families=families)
        except Exception as exc:  # rocksdict raises plain Exception with RocksDB's text
            raise StoreError(
                f"cannot open the store at {self.path}: {exc}; check that the directory is "
                f"writable by the service user and that the disk is not full"
            ) from exc
        self.outbox = self._db.get_column_family("outbox")
        self.meta = self._db.get_column_family("meta")
        self.outbox_handle = self._db.get_column_family_handle("outbox")
        self.meta_handle = self._db.get_column_family_handle("meta")
        self.devicebound = self._db.get_column_family("devicebound")
        self.devicebound_handle = self._db.get_column_family_handle("devicebound")
        self._synced = WriteOptions()
        self._synced.sync = True
        self._unsynced = WriteOptions()
        self.closed = False
        self.synced_writes = 0  # one per fsync'd write: what the group commit saves
        self._no_sync_thread: int | None = None
        self.sync_refused = 0  # synced writes refused on the loop's thread: bugs, must stay 0

    def forbid_sync_on(self, thread: threading.Thread | None) -> None:
        """From now on a synced write (or a WAL sync) from `thread` raises SyncOnLoopError: the
        daemon names its event loop's thread, which must never wait for the disk."""
        self._no_sync_thread = thread.ident if thread is not None else None

    @property
    def sync_guarded(self) -> bool:
        return self._no_sync_thread is not None

    def _check_sync_allowed(self, what: str) -> None:
        if self._no_sync_thread is None or threading.get_ident() != self._no_sync_thread:
            return
        self.sync_refused += 1
        error = SyncOnLoopError(
            f"store: {what} asked for on the event loop's thread, where it would stall every "
            f"child for a flush; refused (a bug: it must go through the writer)")
        if self.sync_refused == 1:
            event(Event.STORE_ERROR, error.message, level=logging.CRITICAL)
        raise error

    def write(self, batch: WriteBatch, *, sync: bool) -> None:
        """Apply a batch atomically; with sync it is on the medium when this returns."""
        if sync:
            self._check_sync_allowed("a synced write")
            self.synced_writes += 1
        self._db.write(batch, write_opt=self._synced if sync else self._unsynced)

    def write_durable(self, batch: WriteBatch) -> None:
        """Apply a batch atomically and sync the WAL: on the medium when this returns, like a
        synced write, but without holding the GIL for the flush.

        rocksdict holds the GIL through a synced `write` (measured: every 20 ms flush stalled
        the event loop for 20 ms although the write ran on the writer's thread), while its
        `flush_wal(sync=True)` releases it. RocksDB's SyncWAL syncs every live log file not yet
        synced (and the WAL directory when a log was created), so the batch written just before
        on this thread is as durable as with sync=True."""
        self._check_sync_allowed("a synced write")
        self.synced_writes += 1
        self._db.write(batch, write_opt=self._unsynced)
        self._db.flush_wal(True)

    def put_meta(self, key: bytes, value: bytes, *, sync: bool = True) -> None:
        batch = WriteBatch(raw_mode=True)
        batch.put(key, value, self.meta_handle)
        self.write(batch, sync=sync)

    def get_meta(self, key: bytes) -> bytes | None:
        return self.meta.get(key)

    def reclaim_outbox(self) -> None:
        """Flush and compact the outbox so that dropped messages give their space back; the
        disk guard calls it only past the free-space floor, at most every few seconds.
        A memtable flush syncs the files it writes: run it on the writer's thread."""
        self._check_sync_allowed("a memtable flush")
        self._db.flush()
        self.outbox.compact_range(None, None)

    def close(self) -> None:
        """Flush the WAL and close, so that the next start needs no recovery."""
        if self.closed:
            return
        self._check_sync_allowed("a WAL sync (close)")
        self.closed = True
        self._db.flush_wal(True)
        # Column-family views and iterators hold the database open: close every view.
        self.outbox.close()
        self.meta.close()
        self.devicebound.close()
        self.outbox_handle = self.meta_handle = self.devicebound_handle = None
        self._db.close()
