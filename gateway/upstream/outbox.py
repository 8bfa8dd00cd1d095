"""The durable ordered queue of upstream messages, in RocksDB.

Why it is shaped like this (see docs/architecture.md):

* A message is first held in memory and only written by the next group commit. If the cloud
  acknowledges it before that commit, it is never written at all: with a healthy uplink most
  messages never touch the SD card. Whichever comes first, the cloud's PUBACK or the synced commit,
  makes the message *safe*, and `on_safe` is told so that the child's PUBACK can be released.
* Keys are a priority byte (0 highest) and the per-gateway sequence number, 8 bytes big-endian:
  RocksDB's order is the send order, higher priorities first, stored order within a priority.
  Sequence numbers are reserved in blocks with a synced write, so that a number handed out (and
  perhaps already delivered to the cloud) is never handed out again after a crash.
* Every record on disk is either a committed message or nothing: counters travel in the same batch
  as the records they count, and all writes are serialised, so a power cut can only lose a suffix.

Nothing here knows about asyncio: the writer (storage/writer.py) decides when to commit and runs
the synced write where it does not block the event loop (`commit_begin` / `commit_end`). Once
the writer is attached (`submit`), the next block of sequence numbers goes through it too, as a
job of its next commit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.storage import keyspace as ks
from gateway.storage.store import Batch, Store
from gateway.storage.writes import Submit, Writes
from gateway.upstream.ledger import Ledger
from gateway.upstream.message import (
    DEFAULT_PRIORITY,
    PRIORITIES,
    Message,
    RecordError,
    decode_record,
    encode_record,
    stored_head,
)

SEQ_BLOCK = 65536
_key_seq = ks.key_seq


def seq_key(seq: int, priority: int = DEFAULT_PRIORITY) -> bytes:
    return ks.seq_key(seq, priority)


Cursor = dict[int, int]  # priority -> last sequence number read
# What Outbox.pending gives for one message: the Message (in memory, or an older record), or the
# version 2 record as stored, checked and not expired (a drain encodes it without a Message).
Pending = Message | bytes


@dataclass
class OutboxStats:
    """Counters an operator plans with; `expired` and `corrupt` only ever grow."""

    count: int = 0
    bytes: int = 0
    expired: int = 0
    corrupt: int = 0
    committed_batches: int = 0
    committed_messages: int = 0
    acked_before_commit: int = 0
    dead_lettered: int = 0
    delivered: int = 0  # acknowledged by the cloud, since start
    dropped_full: int = 0  # dropped by the disk guard (storage.full_policy = drop-oldest)


@dataclass
class CommitBatch:
    """One group commit in flight: what it writes and which sequence numbers it covers."""

    batch: Batch
    seqs: list[int]
    sizes: list[int]
    priorities: list[int] = field(default_factory=list)
    seq_set: set[int] = field(init=False)

    def __post_init__(self) -> None:
        self.seq_set = set(self.seqs)


class Outbox:
    """Ordered, durable, TTL-bound queue of `Message`s keyed by sequence number."""

    def __init__(self, store: Store, on_safe: Callable[[list[int]], None] | None = None) -> None:
        self._store = store
        self.on_safe = on_safe or (lambda seqs: None)
        self._mem: dict[int, Message] = {}
        # no message in memory expires before this (a lower bound: read() checks it per fill)
        self._mem_expiry_floor = 1 << 63
        # commits so far, and per priority the (commits, first key) of a scan that found the
        # lane empty from that key on: until the next commit, no scan from there finds anything
        self._commits = 0
        self._lane_empty: dict[int, tuple[int, int]] = {}
        self._committing: CommitBatch | None = None
        self._acked_while_committing: dict[int, int] = {}  # seq -> priority
        self._deletes: dict[int, tuple[int, int]] = {}  # seq -> (priority, size) to delete
        self.stats = OutboxStats()
        # the writer's submit(writes, on_durable); until it is attached (start-up, tools,
        # tests) the next block of sequence numbers is reserved with a synced write here
        self.submit: Submit | None = None
        self._reserving = False
        meta = store.meta
        self._disk_count = ks.read_u64(meta.get(ks.DISK_COUNT))
        self._disk_bytes = ks.read_u64(meta.get(ks.DISK_BYTES))
        self._lane_disk = [ks.read_u64(meta.get(ks.lane_count_key(p))) for p in PRIORITIES]
        firsts = {p: self._store.outbox.first(ks.lane(p)) for p in PRIORITIES}
        self._floor = {p: _key_seq(first[0]) if first else 0 for p, first in firsts.items()}
        # priorities that hold or held messages: reads skip the others (usually one is used)
        self._lanes = sorted(p for p, first in firsts.items() if first is not None)
        self._next = max(ks.read_u64(meta.get(ks.SEQ_CEILING), 1), self._last_disk_seq() + 1)
        self._ceiling = self._next
        # how every seq ended, for the cloud (upstream/ledger.py); its state rides on our writes
        self.ledger = Ledger(store)
        stored = [_key_seq(first[0]) for first in firsts.values() if first is not None]
        self.ledger.opened(self._next, min(stored) if stored else None)
        self.ledger.write_now()  # made durable by the synced reservation that follows
        self._reserve()
        self._refresh_totals()

    # -- sequence numbers -------------------------------------------------------------------

    def _last_disk_seq(self) -> int:
        last = 0
        for priority in PRIORITIES:
            found = self._store.outbox.last(ks.lane(priority))
            if found is not None:
                last = max(last, _key_seq(found[0]))
        return last

    def _reserve(self) -> None:
        self._ceiling = self._next + SEQ_BLOCK
        self._store.put(self._store.meta, ks.SEQ_CEILING, ks.u64(self._ceiling), sync=True)

    def _reserve_ahead(self) -> None:
        """Half way through a block, reserve the next one through the writer: it is durable
        (one commit later) long before the numbers run out, so appends never wait for it.
        Only handing out the remaining half block (32,768 numbers) within one commit would
        outrun it; then the numbers are still handed out and the reservation follows in the
        next commit: at risk is only a message the cloud acknowledged before that commit, at a
        rate far above what the gateway has been measured to sustain (docs/architecture.md)."""
        ceiling = max(self._ceiling, self._next) + SEQ_BLOCK
        self._reserving = True

        def reserved() -> None:
            self._reserving = False
            self._ceiling = max(self._ceiling, ceiling)
            if self._next >= self._ceiling - SEQ_BLOCK // 2:
                self._reserve_ahead()

        assert self.submit is not None
        self.submit(Writes().put(self._store.meta, ks.SEQ_CEILING, ks.u64(ceiling)), reserved)

    @property
    def next_seq(self) -> int:
        return self._next

    def settled_below(self) -> int:
        """The lowest seq still queued (in memory or stored), else the next to be handed out:
        every seq below it has ended, delivered or otherwise (what a settlement may cover)."""
        low = self._next
        if self._mem:
            low = min(low, next(iter(self._mem)))
        for priority in self._lanes:
            for key, _ in self._lane_from_floor(priority):
                seq = _key_seq(key)
                if seq not in self._deletes:
                    low = min(low, seq)
                    break
        return low

    def stopped(self) -> None:
        """A clean stop, once everything is committed: the ledger learns where issuing ended."""
        self.ledger.stopped(self._next)
        self.ledger.write_now()

    # -- ingest -----------------------------------------------------------------------------

    def append(self, msg: Message) -> int:
        """Queue a message in memory; it becomes durable at the next commit."""
        if self.submit is None:
            if self._next >= self._ceiling:
                self._reserve()
        elif not self._reserving and self._next >= self._ceiling - SEQ_BLOCK // 2:
            self._reserve_ahead()
        seq = self._next
        self._next += 1
        self._mem[seq] = msg
        if msg.expires_ms < self._mem_expiry_floor:
            self._mem_expiry_floor = msg.expires_ms
        if msg.priority not in self._lanes:
            self._lanes = sorted({*self._lanes, msg.priority})
        self.stats.count += 1
        self.stats.bytes += msg.size()
        return seq

    def uncommitted(self) -> int:
        """Messages held only in memory and not yet part of a commit."""
        n = len(self._mem)
        return n - len(self._committing.seqs) if self._committing else n

    # -- group commit ------------------------------------------------------------------------

    def oldest_uncommitted_ms(self) -> int | None:
        """Enqueue time of the oldest message that no commit has taken yet."""
        taken = self._committing.seq_set if self._committing else ()
        for seq, msg in self._mem.items():
            if seq not in taken:
                return msg.enqueued_ms
        return None

    def commit_begin(self, enqueued_until_ms: int | None = None) -> CommitBatch | None:
        """Build the next synced batch, or None when there is nothing to write.

        With `enqueued_until_ms`, only messages enqueued by then are taken (a prefix of the
        queue, so the on-disk order stays the send order); the younger ones get more time for
        the cloud's PUBACK to arrive first.
        """
        if self._committing is not None:
            return None
        seqs = []
        for seq, msg in self._mem.items():
            if enqueued_until_ms is not None and msg.enqueued_ms > enqueued_until_ms:
                break
            seqs.append(seq)
        if not seqs and not self._deletes:
            return None
        batch = Batch()
        sizes, priorities, records = [], [], []
        for seq in seqs:
            msg = self._mem[seq]
            records.append((ks.seq_key(seq, msg.priority), encode_record(msg)))
            sizes.append(msg.size())
            priorities.append(msg.priority)
            self._lane_disk[msg.priority] += 1
        batch.put_many(self._store.outbox, records)
        self._disk_count += len(seqs)
        self._disk_bytes += sum(sizes)
        self._add_deletes(batch)
        self._add_counters(batch)
        self._committing = CommitBatch(batch, seqs, sizes, priorities)
        return self._committing

    def write(self, commit: CommitBatch) -> None:
        """The blocking part of a commit; safe to run in a worker thread (RocksDB drops the GIL)."""
        self._store.write(commit.batch, sync=True)

    def commit_end(self, commit: CommitBatch) -> list[int]:
        """Account for a finished commit; returns the sequence numbers it made safe."""
        self._committing = None
        safe = []
        for seq, size in zip(commit.seqs, commit.sizes, strict=True):
            if seq in self._acked_while_committing:
                # the cloud took it while we wrote it: delete the copy
                self._deletes[seq] = (self._acked_while_committing[seq], size)
            elif self._mem.pop(seq, None) is not None:
                safe.append(seq)
        self._acked_while_committing.clear()
        self._commits += 1
        self.stats.committed_batches += 1
        self.stats.committed_messages += len(commit.seqs)
        if safe:
            self.on_safe(safe)
        return safe

    def commit_failed(self, commit: CommitBatch) -> None:
        """Undo the accounting of a commit whose write raised; the messages stay in memory."""
        self._committing = None
        self._disk_count -= len(commit.seqs)
        self._disk_bytes -= sum(commit.sizes)
        for priority in commit.priorities:
            self._lane_disk[priority] -= 1
        self._acked_while_committing.clear()

    def commit_now(self) -> list[int]:
        """Commit synchronously (shutdown, tests)."""
        commit = self.commit_begin()
        if commit is None:
            return []
        try:
            self.write(commit)
        except Exception:
            self.commit_failed(commit)
            raise
        return self.commit_end(commit)

    def flush_deletes(self) -> None:
        """Write pending deletes without sync: losing them in a power cut only re-sends messages."""
        if self._committing is not None or not self._deletes:
            return
        batch = Batch()
        self._add_deletes(batch)
        self._add_counters(batch)
        self._store.write(batch, sync=False)

    def _add_deletes(self, batch: Batch) -> None:
        # the totals are counted once per lane: a drain deletes ~50 per read, nearly all of
        # one priority
        key, lanes = ks.seq_key, self._lane_disk
        keys = []
        lane = count = gone_bytes = 0
        for seq, (priority, size) in self._deletes.items():
            keys.append(key(seq, priority))
            gone_bytes += size
            if priority != lane:
                if count:
                    lanes[lane] = max(lanes[lane] - count, 0)
                lane, count = priority, 0
            count += 1
        if count:
            lanes[lane] = max(lanes[lane] - count, 0)
        batch.delete_many(self._store.outbox, keys)
        self._disk_count = max(self._disk_count - len(keys), 0)
        self._disk_bytes = max(self._disk_bytes - gone_bytes, 0)
        self._deletes.clear()

    def _add_counters(self, batch: Batch) -> None:
        meta = self._store.meta
        batch.put(meta, ks.DISK_COUNT, ks.u64(self._disk_count))
        batch.put(meta, ks.DISK_BYTES, ks.u64(self._disk_bytes))
        for priority in self._lanes:
            batch.put(meta, ks.lane_count_key(priority), ks.u64(self._lane_disk[priority]))
        self.ledger.put_state(batch)  # the accounts of the deletes in this very batch

    def backlog_by_priority(self) -> dict[int, int]:
        """Messages waiting per priority (the operator's table; counters, no scan)."""
        counts = {p: self._lane_disk[p] for p in self._lanes}
        for priority, _ in self._deletes.values():
            counts[priority] = counts.get(priority, 0) - 1
        for msg in self._mem.values():
            counts[msg.priority] = counts.get(msg.priority, 0) + 1
        if self._committing is not None:
            for priority in self._committing.priorities:
                counts[priority] -= 1  # counted on disk already, still in memory
        return {p: max(n, 0) for p, n in sorted(counts.items()) if n > 0}

    # -- delivery ----------------------------------------------------------------------------

    def ack(
        self, seq: int, size: int, priority: int = DEFAULT_PRIORITY, delivered: bool = True
    ) -> None:
        """The cloud acknowledged `seq` (or it ended otherwise, `delivered` False): forget it,
        and release its child if it was not yet safe."""
        self.ack_all([(seq, size, priority, False)], delivered)

    def ack_all(self, acks: list[tuple[int, int, int, bool]], delivered: bool = True) -> None:
        """`ack` of each (seq, size, priority, _), as the drain keeps a message in flight, with
        the lookups made and the totals counted once, and the children of those not yet safe
        released by one on_safe call: a drain acknowledges ~50 per read, and the relay nearly
        every message before its commit."""
        mem, deletes, floor = self._mem, self._deletes, self._floor
        in_commit = self._committing.seq_set if self._committing is not None else ()
        safe: list[int] = []
        gone = gone_bytes = 0
        for seq, size, priority, _ in acks:
            msg = mem.pop(seq, None)
            if msg is not None:
                priority = msg.priority
                if seq in in_commit:
                    self._acked_while_committing[seq] = priority
                safe.append(seq)
            elif seq not in deletes:
                deletes[seq] = (priority, size)
            else:
                continue
            gone += 1
            gone_bytes += size
            if seq == floor[priority]:
                floor[priority] = seq + 1
        stats = self.stats
        if delivered:
            stats.delivered += len(acks)
        stats.acked_before_commit += len(safe)
        stats.count = max(stats.count - gone, 0)
        stats.bytes = max(stats.bytes - gone_bytes, 0)
        if safe:
            self.on_safe(safe)

    def read(
        self,
        after: int | Cursor,
        limit: int,
        now_ms: int,
        below: int | None = None,
    ) -> list[tuple[int, Message]]:
        """`pending` with every message as a Message."""
        return [(seq, item if item.__class__ is not bytes else decode_record(item))
                for seq, item in self.pending(after, limit, now_ms, below)]

    def pending(
        self,
        after: int | Cursor,
        limit: int,
        now_ms: int,
        below: int | None = None,
    ) -> list[tuple[int, Pending]]:
        """Up to `limit` live messages after the cursor (one seq for all priorities, or one per
        priority), highest priority first and in stored order within one; optionally only
        those with seq < `below`. Expired ones met on the way are dropped and counted."""
        cursor = after if isinstance(after, dict) else dict.fromkeys(PRIORITIES, after)
        out: list[tuple[int, Pending]] = []
        mem_start = next(iter(self._mem), None)
        stop = mem_start if below is None or mem_start is None else min(mem_start, below)
        if stop is None:
            stop = below
        self._expire_mem(now_ms)
        for priority in self._lanes:
            if len(out) >= limit:
                break
            start = max(cursor.get(priority, 0) + 1, self._floor[priority])
            self._read_disk(priority, start, stop, limit, now_ms, out)
            if len(out) < limit:
                self._read_mem(priority, cursor.get(priority, 0), below, limit, out)
        return out

    def _read_disk(
        self, priority: int, start: int, stop: int | None, limit: int, now_ms: int, out: list
    ) -> None:
        """The lane's stored messages from `start` on. A lane found empty is not scanned
        again until the next commit: with a healthy uplink nothing is stored, and an iterator
        per fill was a RocksDB seek for nothing, several times per message."""
        if len(out) >= limit:
            return
        empty = self._lane_empty.get(priority)
        if empty is not None and empty[0] == self._commits and empty[1] <= start:
            return
        family, lane, deletes = self._store.outbox, ks.lane(priority), self._deletes
        found = False
        while len(out) < limit:
            want = limit - len(out)
            page = family.page(lane, ks.seq_key(start, priority), want)
            if not page:
                break
            found = True
            for key, value in page:
                seq = _key_seq(key)
                if stop is not None and seq >= stop:
                    return
                if seq in deletes:
                    continue
                head = stored_head(value)
                if head is not None and head[2] > now_ms:  # expires_ms
                    out.append((seq, value))
                    continue
                msg = self._decode(seq, priority, value)  # older, corrupt or expired
                if msg is None:
                    continue
                if msg.expires_ms <= now_ms:
                    self._expire_disk(seq, msg, now_ms)
                    continue
                out.append((seq, msg))
            if len(page) < want:
                break  # the lane's end
            start = _key_seq(page[-1][0]) + 1  # some were skipped: the next page
        if not found:
            self._lane_empty[priority] = (self._commits, start)

    def _read_mem(
        self, priority: int, after: int, below: int | None, limit: int, out: list
    ) -> None:
        """Messages in memory after `after`. Sequence numbers are consecutive, so the ones
        after the cursor are looked up by number instead of walking every message in memory
        (those in flight are behind the cursor): a fill costs what it takes, not the window."""
        mem = self._mem
        if not mem or len(out) >= limit:
            return
        start = max(after + 1, next(iter(mem)))
        end = self._next if below is None else min(below, self._next)
        if end - start > 2 * len(mem) + limit:  # sparse (acked ones between): walk the dict
            for seq, msg in mem.items():
                if len(out) >= limit or seq >= end:
                    break
                if seq >= start and msg.priority == priority:
                    out.append((seq, msg))
            return
        get = mem.get
        for seq in range(start, end):
            msg = get(seq)
            if msg is not None and msg.priority == priority:
                out.append((seq, msg))
                if len(out) >= limit:
                    break

    def get(self, seq: int, priority: int) -> Message | None:
        """One message by its sequence number (memory or disk), or None if it is gone."""
        msg = self._mem.get(seq)
        if msg is not None:
            return msg
        if seq in self._deletes:
            return None
        data = self._store.outbox.get(ks.seq_key(seq, priority))
        return decode_record(data) if data is not None else None

    def _decode(self, seq: int, priority: int, data: bytes) -> Message | None:
        try:
            return decode_record(data)
        except RecordError:
            self._corrupt(seq, priority, data)
            return None

    def _corrupt(self, seq: int, priority: int, data: bytes) -> None:
        """A record this release cannot read: counted, and deleted with the next acks."""
        self.stats.corrupt += 1
        self._deletes[seq] = (priority, len(data))

    def _expire_disk(self, seq: int, msg: Message, now_ms: int) -> bool:
        if msg.expires_ms > now_ms:
            return False
        self._deletes[seq] = (msg.priority, msg.size())
        self.stats.expired += 1
        self.ledger.record("expired", seq, _ttl_secs(msg))
        self.stats.count = max(self.stats.count - 1, 0)
        self.stats.bytes = max(self.stats.bytes - msg.size(), 0)
        if seq == self._floor[msg.priority]:
            self._floor[msg.priority] = seq + 1
        return True

    def _expire_mem(self, now_ms: int) -> None:
        """Drop the messages in memory whose TTL has passed; walks them only when the
        earliest expiry is due (read() asks on every fill)."""
        if now_ms < self._mem_expiry_floor:
            return
        self._mem_expiry_floor = min((m.expires_ms for m in self._mem.values()
                                      if m.expires_ms > now_ms), default=1 << 63)
        for seq in [s for s, m in self._mem.items() if m.expires_ms <= now_ms]:
            msg = self._mem[seq]
            self.ack(seq, msg.size(), msg.priority, delivered=False)
            self.stats.acked_before_commit -= 1
            self.stats.expired += 1
            self.ledger.record("expired", seq, _ttl_secs(msg))

    def expire(self, now_ms: int, max_scan: int = 10000) -> int:
        """Drop expired messages from the head of each priority; returns how many went."""
        before = self.stats.expired
        for priority in self._lanes:
            for scanned, (key, value) in enumerate(self._lane_from_floor(priority)):
                if scanned >= max_scan:
                    break
                seq = _key_seq(key)
                if seq not in self._deletes:
                    msg = self._decode(seq, priority, value)
                    if msg is not None and not self._expire_disk(seq, msg, now_ms):
                        break
        self._expire_mem(now_ms)
        return self.stats.expired - before

    def oldest_enqueued_ms(self) -> int | None:
        """Enqueue time of the oldest message still queued (for the operator's 'oldest age')."""
        oldest = None
        for priority in self._lanes:
            first = self._first_live(priority)
            if first is not None and (oldest is None or first < oldest):
                oldest = first
        return oldest

    def _lane_from_floor(self, priority: int):
        """One lane's stored (key, value)s from its first live seq on."""
        return self._store.outbox.scan(ks.lane(priority), ks.seq_key(self._floor[priority],
                                                                      priority))

    def _first_live(self, priority: int) -> int | None:
        for key, value in self._lane_from_floor(priority):
            if _key_seq(key) not in self._deletes:
                try:
                    return decode_record(value).enqueued_ms
                except RecordError:
                    pass
        for msg in self._mem.values():
            if msg.priority == priority:
                return msg.enqueued_ms
        return None

    def drop_oldest(self, budget: int) -> tuple[int, int]:
        """Drop up to `budget` stored messages, lowest priority first, oldest first within it:
        the disk is full and the policy says so. Only committed ones: a message still in memory
        has not had its PUBACK, and its child keeps it. Returns (messages, bytes)."""
        dropped = dropped_bytes = 0
        for priority in reversed(self._lanes):
            for key, value in self._lane_from_floor(priority):
                if dropped >= budget:
                    break
                seq = _key_seq(key)
                if seq not in self._deletes and seq not in self._mem:
                    msg = self._decode(seq, priority, value)
                    if msg is not None:
                        size = msg.size()
                        self.ack(seq, size, priority, delivered=False)
                        self.ledger.record("dropped", seq)
                        dropped += 1
                        dropped_bytes += size
            if dropped >= budget:
                break
        self.stats.dropped_full += dropped
        return dropped, dropped_bytes

    def moved_out(self, seq: int, priority: int, msg: Message) -> None:
        """The message is now kept elsewhere (the dead letters): forget it, undelivered."""
        in_memory = seq in self._mem
        self.ack(seq, msg.size(), priority, delivered=False)
        if in_memory:
            self.stats.acked_before_commit -= 1
        self.stats.dead_lettered += 1
        self.ledger.record("deadLettered", seq)

    # -- bookkeeping -------------------------------------------------------------------------

    def _refresh_totals(self) -> None:
        self.stats.count = self._disk_count + len(self._mem)
        self.stats.bytes = self._disk_bytes + sum(m.size() for m in self._mem.values())

    def close(self) -> None:
        """Commit what is in memory and write pending deletes; the store is closed by its owner."""
        self.commit_now()
        self.flush_deletes()



def _ttl_secs(msg: Message) -> int:
    """The time to live the message was given (what the ledger says applied)."""
    return max(0, round((msg.expires_ms - msg.enqueued_ms) / 1000))
