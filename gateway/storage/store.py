"""The RocksDB database behind the gateway: one directory, one column family per store.

Column families keep the outbox (a sequential queue with heavy deletes) apart from the small
key-value data (registry cache, sequence reservations) so that compaction of one does not rewrite
the other, and so that one synced batch can still update both atomically.

This module is the only one that imports rocksdict (salvage aside, which reads a damaged copy):
callers see `Family` (get, prefix scan, first, last), `Batch` (puts and deletes across
families) and `Store.write(batch, sync=)`, the shape of the IoT Edge hub's key-value and
sequential stores. The keys themselves are in gateway/storage/keyspace.py.

Options are chosen for an SD card: WAL files are recycled instead of created and deleted,
RocksDB's own LOG is size-capped, point-in-time WAL recovery keeps everything up to the first
damaged record after a power cut, and paranoid checks refuse to run on a store that is silently
inconsistent. Both copies of a stored message are compressed with zstd: the SST blocks, and the
WAL as one stream per log file, which catches what consecutive telemetry messages share (an
outage stored with both wrote 0.9 device bytes per payload byte, against 2.0 with LZ4 SSTs and
a plain WAL; docs/performance.md).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from rocksdict import (
    BlockBasedOptions,
    Cache,
    DBCompressionType,
    DBRecoveryMode,
    Options,
    Rdict,
    ReadOptions,
    WriteBatch,
    WriteOptions,
)

from gateway.errors import StoreError
from gateway.log import Event, event
from gateway.storage.disk_guard import disk_usage
from gateway.storage.keyspace import FAMILIES

COLUMN_FAMILIES = FAMILIES
_MiB = 1024 * 1024
# One block cache for every family. The outbox is read once, in order, so caching its blocks
# buys nothing: the 8 MiB cache that RocksDB's OPTIONS loader made of its own filled up during
# every drain and held a small Pi's memory for it. 1 MiB keeps the meta family's blocks
# (registry, twins, counters) cached.
BLOCK_CACHE_BYTES = 1 * _MiB


def _family_options(cache: Cache) -> Options:
    opts = Options(raw_mode=True)
    opts.set_write_buffer_size(8 * _MiB)
    opts.set_max_write_buffer_number(2)
    opts.set_compression_type(DBCompressionType.zstd())
    table = BlockBasedOptions()
    table.set_block_cache(cache)
    opts.set_block_based_table_factory(table)
    return opts


def _wal_cap(path: Path) -> int:
    """All column families share the log; a family that rarely writes keeps old log files
    alive until the total passes this cap. On a small disk the cap must be small too."""
    try:
        total = disk_usage(path).total
    except OSError:
        return 32 * _MiB
    return max(1 * _MiB, min(32 * _MiB, total // 20))


def _db_options(path: Path, cache: Cache) -> Options:
    opts = _family_options(cache)
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


def _with_wal_compression(db_opts: Options, families: dict[str, Options], cache: Cache):
    """The same options with `wal_compression=kZSTD` (RocksDB >= 7.2), or None if that fails.

    rocksdict has no setter for it, so the options are written the way RocksDB itself persists
    them (an OPTIONS file, made by opening a scratch database with these options), the one line
    is changed, and the file is loaded back with RocksDB's own loader.
    """
    try:
        with _scratch_dir() as scratch:
            Rdict(f"{scratch}/db", options=db_opts, column_families=families).close()
            source = max(Path(scratch, "db").glob("OPTIONS-*"))
            text = source.read_text()
            if "wal_compression=kNoCompression" not in text:
                return None
            template = Path(scratch, "template")
            template.mkdir()
            (template / source.name).write_text(
                text.replace("wal_compression=kNoCompression", "wal_compression=kZSTD"))
            # the OPTIONS file holds no cache: the loader is given the one to use
            loaded, loaded_families = Options.load_latest(str(template), cache=cache)
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


@contextlib.contextmanager
def _scratch_dir() -> Iterator[str]:
    """A private directory for the scratch database, removed afterwards.

    What tempfile.TemporaryDirectory does, with os alone: tempfile imports shutil, and with
    it zlib, bz2, lzma and random, about 1 MiB of the daemon's resident set for its whole life
    (issue 18). mkdir(2) with mode 0700 fails on a name that exists, so nothing planted in a
    shared temporary directory is ever used.
    """
    base = os.environ.get("TMPDIR") or "/tmp"
    while True:
        scratch = os.path.join(base, f"gatewayd-options-{os.getpid()}-{time.monotonic_ns()}")
        try:
            os.mkdir(scratch, 0o700)
            break
        except FileExistsError:
            continue
    try:
        yield scratch
    finally:
        _remove_tree(scratch)


def _remove_tree(top: str) -> None:
    """Remove a directory and what it holds. It holds a scratch database's few files: one that
    cannot be removed is left behind, not a reason to give up the WAL compression."""
    for root, dirs, files in os.walk(top, topdown=False):
        for name in files:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(root, name))
        for name in dirs:
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(root, name))
    with contextlib.suppress(OSError):
        os.rmdir(top)


def _successor(prefix: bytes) -> bytes | None:
    """The smallest key above every key that starts with `prefix` (None: there is none)."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return None
    return trimmed[:-1] + bytes((trimmed[-1] + 1,))


class Family:
    """One column family, read directly; written only through a `Batch` and `Store.write`.

    Keys are bytes in RocksDB's bytewise order; every scan is bounded by a prefix, so a caller
    never writes the loop that stops where the prefix ends (gateway/storage/keyspace.py says
    which prefixes exist)."""

    def __init__(self, name: str, view: Rdict, handle) -> None:
        self.name = name
        self._view = view
        self._handle = handle
        self._bounded: dict[bytes, ReadOptions] = {}  # prefix -> reads that stop at its end

    def get(self, key: bytes) -> bytes | None:
        return self._view.get(key)

    def scan(
        self, prefix: bytes = b"", start: bytes | None = None
    ) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) of every key under `prefix`, ascending, from `start` (inclusive) on."""
        for key, value in self._view.items(
                from_key=prefix if start is None or start < prefix else start):
            if not key.startswith(prefix):
                return
            yield key, value

    def page(self, prefix: bytes, start: bytes, limit: int) -> list[tuple[bytes, bytes]]:
        """Up to `limit` (key, value) of `scan(prefix, start)`, as a list: RocksDB stops at
        the prefix's end itself (an iterate upper bound), so a drain's read of a fill costs
        one call, not a generator step and a prefix test per message (0.6 against 0.9 us)."""
        options = self._bounded.get(prefix)
        if options is None:
            options = self._bounded[prefix] = ReadOptions()
            upper = _successor(prefix)
            if upper is not None:
                options.set_iterate_upper_bound(upper)
        items = self._view.items(from_key=max(start, prefix), read_opt=options)
        return list(itertools.islice(items, limit))

    def keys(self, prefix: bytes = b"", start: bytes | None = None) -> Iterator[bytes]:
        """The keys of `scan`, without copying the values out."""
        for key in self._view.keys(from_key=prefix if start is None or start < prefix else start):
            if not key.startswith(prefix):
                return
            yield key

    def first(self, prefix: bytes = b"") -> tuple[bytes, bytes] | None:
        """The lowest (key, value) under `prefix`, or None when there is none."""
        return next(self.scan(prefix), None)

    def last(self, prefix: bytes = b"") -> tuple[bytes, bytes] | None:
        """The highest (key, value) under `prefix`, or None when there is none."""
        it = self._view.iter()
        upper = _successor(prefix)
        if upper is None:
            it.seek_to_last()
        else:
            it.seek_for_prev(upper)
            if it.valid() and it.key() == upper:
                it.prev()
        if it.valid() and it.key().startswith(prefix):
            return it.key(), it.value()
        return None

    def _close(self) -> None:
        self._view.close()
        self._handle = None


class Batch:
    """Puts and deletes across families, applied all or nothing by `Store.write`: a commit
    writes the records and the counters that count them together."""

    __slots__ = ("_batch",)

    def __init__(self) -> None:
        self._batch = WriteBatch(raw_mode=True)

    def put(self, family: Family, key: bytes, value: bytes) -> None:
        self._batch.put(key, value, family._handle)

    def delete(self, family: Family, key: bytes) -> None:
        self._batch.delete(key, family._handle)

    def put_many(self, family: Family, items: Iterable[tuple[bytes, bytes]]) -> None:
        """Many puts into one family: a group commit's records, one Python call in all."""
        put, handle = self._batch.put, family._handle
        for key, value in items:
            put(key, value, handle)

    def delete_many(self, family: Family, keys: Iterable[bytes]) -> None:
        delete, handle = self._batch.delete, family._handle
        for key in keys:
            delete(key, handle)

    def __len__(self) -> int:
        return self._batch.len()


class SyncForbidden(StoreError):
    """A synced write was attempted on a thread that must never wait on the disk (our bug)."""


class Store:
    """An open database: its column families, and `write` as the one way of changing them."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            cache = Cache(BLOCK_CACHE_BYTES)
            options = _db_options(self.path, cache)
            families = {name: _family_options(cache) for name in COLUMN_FAMILIES}
            options, families = (_with_wal_compression(options, families, cache)
                                 or (options, families))
            self._db = Rdict(str(self.path), options=options, column_families=families)
        except Exception as exc:  # rocksdict raises plain Exception with RocksDB's text
            raise StoreError(
                f"cannot open the store at {self.path}: {exc}; check that the directory is "
                f"writable by the service user and that the disk is not full"
            ) from exc
        self._families = {
            name: Family(name, self._db.get_column_family(name),
                         self._db.get_column_family_handle(name))
            for name in COLUMN_FAMILIES
        }
        self.outbox = self._families["outbox"]
        self.meta = self._families["meta"]
        self.devicebound = self._families["devicebound"]
        self._synced = WriteOptions()
        self._synced.sync = True
        self._unsynced = WriteOptions()
        self._no_sync_threads: frozenset[int] = frozenset()
        self.synced_writes = 0  # one per fsync'd write: what the group commit saves
        self.sync_refused = 0  # synced writes refused on a forbidden thread: bugs, stays 0
        self.closed = False

    def family(self, name: str) -> Family:
        return self._families[name]

    def write(self, batch: Batch, *, sync: bool) -> None:
        """Apply a batch atomically; with sync it is on the medium when this returns."""
        if sync:
            self._check_sync_allowed("a synced write")
            self.synced_writes += 1
        self._db.write(batch._batch, write_opt=self._synced if sync else self._unsynced)

    def write_durable(self, batch: Batch) -> None:
        """Apply a batch atomically and sync the WAL: on the medium when this returns, like
        `write(sync=True)`, but without holding the GIL for the flush.

        rocksdict holds the GIL through a synced `write` (measured with a 20 ms fsync shim:
        every commit stalled the event loop for the whole flush although it ran on the writer's
        thread), while its `flush_wal(sync=True)` releases it. RocksDB's SyncWAL syncs every
        live log file not yet synced (and the WAL directory when a log was created), so the
        batch written just before on this thread is as durable as with sync=True."""
        self._check_sync_allowed("a synced write")
        self.synced_writes += 1
        self._db.write(batch._batch, write_opt=self._unsynced)
        self._db.flush_wal(True)

    def _check_sync_allowed(self, what: str) -> None:
        if not self._no_sync_threads or threading.get_ident() not in self._no_sync_threads:
            return
        self.sync_refused += 1
        error = SyncForbidden(
            f"store: {what} on thread {threading.current_thread().name}, which must never "
            f"wait on the disk (it would stall every child for a flush); refused, a bug: hand "
            f"the write to the writer thread")
        if self.sync_refused == 1:
            event(Event.STORE_ERROR, error.message, level=logging.CRITICAL)
        raise error

    @property
    def sync_guarded(self) -> bool:
        return bool(self._no_sync_threads)

    def put(self, family: Family, key: bytes, value: bytes, *, sync: bool) -> None:
        """One record, as a batch of one."""
        batch = Batch()
        batch.put(family, key, value)
        self.write(batch, sync=sync)

    def forbid_sync_on(self, thread_id: int) -> None:
        """From now on a synced `write` from this thread raises `SyncForbidden` (the event
        loop's thread, once every durable write goes through the writer thread)."""
        self._no_sync_threads = self._no_sync_threads | {thread_id}

    def allow_sync_on(self, thread_id: int) -> None:
        self._no_sync_threads = self._no_sync_threads - {thread_id}

    def reclaim_outbox(self) -> None:
        """Flush and compact the outbox so that dropped messages give their space back; the
        disk guard calls it only past the free-space floor, at most every few seconds. A
        memtable flush syncs the files it writes: the daemon runs it on the writer's thread."""
        self._check_sync_allowed("a memtable flush")
        self._db.flush()
        self.outbox._view.compact_range(None, None)

    def close(self) -> None:
        """Flush the WAL and close, so that the next start needs no recovery."""
        if self.closed:
            return
        self._check_sync_allowed("a WAL sync (close)")
        self.closed = True
        self._db.flush_wal(True)
        # Column-family views and iterators hold the database open: close every view.
        for family in self._families.values():
            family._close()
        self._db.close()
