"""Start-up on a damaged store: move it aside, salvage what can be read, start on a fresh one.

A gateway on a pole cannot wait for a person to fix its database (Mosquitto refuses to start on
a corrupt persistence file; others silently delete theirs). When RocksDB will not open the store,
gatewayd moves its files into `quarantine-<time>/` inside the storage directory (the only place
a hardened service may write), runs RocksDB's repair on a copy, and copies every record it can
still read — queued messages, the registry, twins, settings, cloud-to-device messages and dead
letters — into a fresh store under the same path. It says so in one loud journal line with the
counts, and keeps the quarantined copy for inspection. If nothing can be read it still starts,
empty, rather than refuse for ever.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from rocksdict import DBRecoveryMode, Options, Rdict

from gateway.errors import StoreError
from gateway.log import Event, event
from gateway.storage import keyspace as ks
from gateway.storage.store import COLUMN_FAMILIES, Batch, Store
from gateway.upstream.message import PRIORITIES, RecordError, decode_record

QUARANTINE_PREFIX = "quarantine-"
KEEP = ("control.sock", "modules")  # not part of the database (modules/: the units' specs)


@dataclass
class SalvageReport:
    quarantine: Path
    messages: int = 0
    unreadable: int = 0
    other_records: int = 0
    error: str = ""


def open_or_salvage(path: Path) -> tuple[Store, SalvageReport | None]:
    """Open the store; if RocksDB refuses it as damaged, salvage it and open the fresh one."""
    try:
        return Store(path), None
    except StoreError as exc:
        if not _looks_damaged(str(exc.__cause__ or exc)):
            raise
        cause = str(exc.__cause__ or exc)
    report = salvage(Path(path), cause)
    return Store(path), report


def _looks_damaged(text: str) -> bool:
    """Damage, as opposed to permissions or a full disk (which salvage would not fix)."""
    lowered = text.lower()
    if any(word in lowered for word in ("permission denied", "no space left", "lock")):
        return False  # a lock held by another process means a healthy store in use
    return any(word in lowered for word in ("corruption", "no such file", "io error",
                                             "invalid argument", "not an sst", "bad magic",
                                             "checksum", "truncated", "manifest", "current"))


def salvage(path: Path, cause: str) -> SalvageReport:
    quarantine = path / f"{QUARANTINE_PREFIX}{time.strftime('%Y%m%dT%H%M%S')}"
    quarantine.mkdir()
    for entry in list(path.iterdir()):
        if entry.name in KEEP or entry.name.startswith(QUARANTINE_PREFIX):
            continue
        entry.rename(quarantine / entry.name)
    report = SalvageReport(quarantine)
    import shutil  # here, not at the top: shutil brings bz2 and lzma, and a salvage is rare

    work = path / f"{quarantine.name}.work"
    try:
        shutil.copytree(quarantine, work)
        _copy_readable(work, path, report)
    except Exception as exc:  # the salvage is best effort; starting empty is the floor
        report.error = str(exc)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _announce(path, cause, report)
    return report


def _copy_readable(damaged: Path, target: Path, report: SalvageReport) -> None:
    opts = Options(raw_mode=True)
    opts.set_paranoid_checks(False)
    opts.set_wal_recovery_mode(DBRecoveryMode.skip_any_corrupted_record())
    Rdict.repair(str(damaged), opts)
    families = Rdict.list_cf(str(damaged), opts)
    old = Rdict(str(damaged), options=opts,
                column_families={name: Options(raw_mode=True) for name in families
                                 if name != "default"})
    fresh = Store(target)
    try:
        counts = _Counts()
        for name in ("meta", "devicebound", "outbox"):  # outbox last: its counters win
            if name in families and name in COLUMN_FAMILIES:
                _copy_family(old.get_column_family(name), fresh, name, report, counts)
        counts.write(fresh)
        fresh.close()
    finally:
        old.close()
        if not fresh.closed:
            fresh.close()


class _Counts:
    """The outbox's counters, recomputed from what was salvaged (the old ones counted more)."""

    def __init__(self) -> None:
        self.count = self.bytes = 0
        self.lanes: dict[int, int] = {}

    def add(self, priority: int, size: int) -> None:
        self.count += 1
        self.bytes += size
        self.lanes[priority] = self.lanes.get(priority, 0) + 1

    def write(self, fresh: Store) -> None:
        batch = Batch()
        batch.put(fresh.meta, ks.DISK_COUNT, ks.u64(self.count))
        batch.put(fresh.meta, ks.DISK_BYTES, ks.u64(self.bytes))
        for priority in PRIORITIES:
            batch.put(fresh.meta, ks.lane_count_key(priority), ks.u64(self.lanes.get(priority, 0)))
        fresh.write(batch, sync=True)


def _copy_family(source, fresh: Store, name: str, report: SalvageReport, counts: _Counts) -> None:
    family = fresh.family(name)
    batch = Batch()
    pending = 0
    for key, value in source.items():
        if name == "outbox":
            try:
                msg = decode_record(value)
            except RecordError:
                report.unreadable += 1
                continue
            report.messages += 1
            counts.add(msg.priority, msg.size())
        else:
            report.other_records += 1
        batch.put(family, key, value)
        pending += 1
        if pending >= 10_000:
            fresh.write(batch, sync=False)
            batch, pending = Batch(), 0
    fresh.write(batch, sync=True)


def _announce(path: Path, cause: str, report: SalvageReport) -> None:
    outcome = (f"salvaged {report.messages} queued messages and {report.other_records} other "
               f"records ({report.unreadable} unreadable messages left behind)")
    if report.error:
        outcome = f"salvage failed ({report.error}); starting with an empty store"
    event(
        Event.STORE_SALVAGED,
        f"store: {path} was damaged and could not be opened ({cause.splitlines()[0][:200]}); "
        f"moved it to {report.quarantine} and {outcome}; the damaged copy is kept there for "
        f"inspection: delete it when done",
        level=logging.ERROR,
    )
