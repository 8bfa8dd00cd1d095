"""Messages the cloud keeps refusing, set aside so that they stop blocking the queue.

After `cloud.max_refusals` refusals the uplink moves a message here: the copy goes through the
one writer, and the message leaves the outbox once that commit is done, so it is in one place or
the other (or, after a power cut between the two, in both: at least once, never lost).
`gatewayctl dlq list|resend|drop` reads and empties them; a resent message goes back through
ingest and leaves the dead letters once it is safe again.

Status and every Prometheus scrape read `count`, so it is kept, not recomputed: the keys are
counted once when the store opens (keys only, nothing decoded) and the count follows each move
and drop. Records live in the meta family under `dlq/` + seq (gateway/storage/keyspace.py).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from gateway.storage import keyspace as ks
from gateway.storage.store import Store
from gateway.storage.writes import Submit, Writes, write_or_submit
from gateway.upstream.message import Message, RecordError, decode_record, encode_record
from gateway.upstream.outbox import Outbox

_HEAD = struct.Struct(">BQ")  # reason code, refused at (ms); then the outbox record
LIST_LIMIT = 1000

# ingest's accept(device_id, properties, payload, on_safe, priority)
Accept = Callable[[str, str, bytes, Callable[[], None], int], object]


@dataclass(frozen=True)
class DeadLetter:
    seq: int
    reason: int  # the MQTT 5 reason code of the last refusal
    refused_at_ms: int
    message: Message


class DeadLetters:
    """The dead letters in the store, and how many there are."""

    def __init__(self, store: Store, outbox: Outbox, submit: Submit | None = None) -> None:
        self._store = store
        self._outbox = outbox
        self._submit = submit
        self.count = sum(1 for _ in store.meta.keys(ks.DLQ_PREFIX))

    def move(self, seq: int, priority: int, reason: int, now_ms: int) -> bool:
        """Take a message out of the outbox into the dead letters; False if it is gone."""
        msg = self._outbox.get(seq, priority)
        if msg is None:
            return False
        key = ks.dlq_key(seq)
        already = self._store.meta.get(key) is not None  # set aside before a power cut
        self.count += not already
        value = _HEAD.pack(reason, now_ms) + encode_record(msg)
        writes = Writes().put(self._store.meta, key, value)
        write_or_submit(self._store, self._submit, writes,
                        lambda: self._outbox.moved_out(seq, priority, msg))
        return True

    def list(self, limit: int = LIST_LIMIT) -> list[DeadLetter]:
        """Oldest first; a record that cannot be decoded is skipped."""
        out = []
        for key, value in self._store.meta.scan(ks.DLQ_PREFIX):
            if len(out) >= limit:
                break
            letter = _decode(key, value)
            if letter is not None:
                out.append(letter)
        return out

    def get(self, seq: int) -> DeadLetter | None:
        value = self._store.meta.get(ks.dlq_key(seq))
        return _decode(ks.dlq_key(seq), value) if value is not None else None

    def drop(self, seqs: list[int]) -> int:
        """Delete these dead letters in one commit; returns how many there were."""
        meta = self._store.meta
        present = [seq for seq in seqs if meta.get(ks.dlq_key(seq)) is not None]
        if not present:
            return 0
        writes = Writes()
        for seq in present:
            writes.delete(meta, ks.dlq_key(seq))
        write_or_submit(self._store, self._submit, writes)
        self.count -= len(present)
        return len(present)

    def command(self, action: str, which: str, accept: Accept) -> dict:
        """`gatewayctl dlq list|resend|drop [SEQ|all]`; ValueError says what was wrong."""
        letters = self._select(which)
        if action == "list":
            return {"dead_letters": [
                {"seq": d.seq, "device_id": d.message.device_id, "reason_code": d.reason,
                 "refused_at_ms": d.refused_at_ms, "enqueued_ms": d.message.enqueued_ms,
                 "bytes": len(d.message.payload), "priority": d.message.priority}
                for d in letters]}
        if action == "drop":
            self.drop([d.seq for d in letters])
            return {"dropped": len(letters)}
        if action == "resend":
            for d in letters:
                msg = d.message
                accept(msg.device_id, msg.properties, msg.payload,
                       lambda seq=d.seq: self.drop([seq]), msg.priority)
            return {"resent": len(letters)}
        raise ValueError(f"unknown action {action!r}: use list, resend or drop")

    def _select(self, which: str) -> list[DeadLetter]:
        if which == "all":
            return self.list()
        if not which.isdigit():
            raise ValueError(f"expected a sequence number or 'all', got {which!r}")
        letter = self.get(int(which))
        if letter is None:
            raise ValueError(f"no dead letter with seq {which}")
        return [letter]


def _decode(key: bytes, value: bytes) -> DeadLetter | None:
    try:
        reason, at = _HEAD.unpack_from(value)
        msg = decode_record(value[_HEAD.size:])
    except (RecordError, struct.error):
        return None
    return DeadLetter(ks.dlq_seq(key), reason, at, msg)
