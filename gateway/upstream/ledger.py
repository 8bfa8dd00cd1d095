"""The loss ledger: how every sequence number ended, for a cloud that wants to prove it.

`seq` has gaps by design (a block reserved after each restart, messages that expire, the disk
guard's drops, the cloud's refusals into dead letters), so a gap alone does not tell loss from
policy. The gateway therefore publishes *settlements*: "every seq in [from, to) has ended; these
ranges expired (with their TTL), were dropped by the disk guard, were dead-lettered, or were never
issued; every other one was acknowledged by the broker". `to` is the lowest seq still queued, so
a settlement never speaks of a message that may still go out.

What it costs the card: next to nothing. A policy outcome is recorded in memory where it
happens and written in the same batch as the delete of the message it accounts for (the outbox
puts the ledger's state with its counters), so a kill -9 loses the account only together with the
delete, and the message is then accounted again when it expires or drops after the restart.
Deliveries are not recorded at all: the broker has them. The settlement published is rebuilt
from that state until the broker's PUBACK for it arrives, and only then does `settled` move (in
memory; written by the next batch that is written anyway, or else once a minute in the same
write as the offline trust's), so an outage or a kill -9 only makes a settlement be published
again, which the cloud side takes as the same facts.

After a kill -9 the gateway cannot tell a number it handed out and the broker acknowledged from
one it never handed out (deliveries are not written down): from the last settlement the broker
acknowledged (as written, at most a minute old) to the first number of the new block is then
*skipped*, which the cloud side counts as delivered where it has the message and as never issued
where it has not. A clean stop writes the next unissued number, so that after it only the
block's remainder is skipped.
"""

from __future__ import annotations

import bisect
import json
import logging
from dataclasses import dataclass, field

from gateway.log import Event, event
from gateway.storage import keyspace as ks
from gateway.storage.store import Batch, Store

KINDS = ("expired", "dropped", "deadLettered", "skipped")


@dataclass
class Ranges:
    """Sorted, disjoint, inclusive [first, last] ranges of seqs, with a tag each (the TTL of an
    expired range; 0 for the others): neighbours merge only when their tags are equal."""

    items: list[list[int]] = field(default_factory=list)  # [first, last, tag]

    def add(self, first: int, last: int, tag: int = 0) -> None:
        items = self.items
        if items and items[-1][1] + 1 == first and items[-1][2] == tag:
            items[-1][1] = last  # the usual case: in order, one after the other
            return
        at = bisect.bisect_left(items, [first])
        items.insert(at, [first, last, tag])
        self._merge_around(at)

    def _merge_around(self, at: int) -> None:
        items = self.items
        for i in (at, at - 1):
            if 0 <= i < len(items) - 1:
                a, b = items[i], items[i + 1]
                if a[1] + 1 >= b[0] and a[2] == b[2]:
                    a[1] = max(a[1], b[1])
                    del items[i + 1]

    def below(self, end: int) -> list[list[int]]:
        """The parts of the ranges with seq < end."""
        return [[a, min(b, end - 1), t] for a, b, t in self.items if a < end]

    def drop_below(self, end: int) -> None:
        kept = []
        for a, b, t in self.items:
            if b >= end:
                kept.append([max(a, end), b, t])
        self.items = kept

    def count(self) -> int:
        return sum(b - a + 1 for a, b, _ in self.items)


class Ledger:
    """The accounts not yet acknowledged by the broker, and where the acknowledged ones end."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.open = {kind: Ranges() for kind in KINDS}
        self.settled = 0  # every seq below it is in a settlement the broker acknowledged
        self.dirty = False
        self.state_writes = 0  # what the ledger costs the card: its puts and their bytes
        self.state_bytes = 0
        self._issued_below: int | None = None  # written by a clean stop
        self._load(store.meta.get(ks.LEDGER))

    # -- what happens to messages ------------------------------------------------------------

    def record(self, kind: str, seq: int, ttl_secs: int = 0) -> None:
        self.open[kind].add(seq, seq, ttl_secs)
        self.dirty = True

    def opened(self, first_seq: int, lowest_stored: int | None) -> None:
        """The outbox opened and hands out numbers from `first_seq`: account for the gap.

        First start (no state): nothing before the lowest stored message or `first_seq` is ours
        to speak of. After a clean stop: [issued_below, first_seq) was never issued. After a
        kill -9: [settled, first_seq) is skipped (see the module's docstring); stored messages in
        it are still live and are settled when they end.
        """
        if self.settled == 0:
            start = min(first_seq, lowest_stored) if lowest_stored is not None else first_seq
            self.settled = start
        else:
            start = self._issued_below if self._issued_below is not None else self.settled
        if start < first_seq:
            self.open["skipped"].add(start, first_seq - 1)
        self._issued_below = None
        self.dirty = True

    def stopped(self, next_seq: int) -> None:
        """A clean stop: nothing at or above `next_seq` was handed out."""
        self._issued_below = next_seq
        self.dirty = True

    # -- settlements -------------------------------------------------------------------------

    def settlement(self, gateway_id: str, settled_below: int, issued_below: int) -> dict:
        """The document for [settled, settled_below): what ended how, and the next unissued seq
        (the cloud side judges from there when it starts listening)."""
        doc: dict = {"gw": gateway_id, "from": self.settled,
                     "to": max(self.settled, settled_below), "issued": issued_below}
        for kind in KINDS:
            parts = self.open[kind].below(doc["to"])
            if kind == "expired":
                doc[kind] = [[a, b, t] for a, b, t in parts]
            else:
                doc[kind] = [[a, b] for a, b, _ in parts]
        return doc

    def acknowledged(self, to: int) -> None:
        """The broker has the settlement up to `to`: forget the accounts below it."""
        if to <= self.settled:
            return
        self.settled = to
        for ranges in self.open.values():
            ranges.drop_below(to)
        self.dirty = True

    def pending(self) -> dict[str, int]:
        """Accounts not yet settled, per kind (the operator's status)."""
        return {kind: ranges.count() for kind, ranges in self.open.items()}

    # -- the stored state --------------------------------------------------------------------

    def put_state(self, batch: Batch) -> None:
        """Into a batch being written anyway: the outbox's commits and deletes carry it."""
        if self.dirty:
            value = self.encode()
            batch.put(self._store.meta, ks.LEDGER, value)
            self.dirty = False
            self.state_writes += 1
            self.state_bytes += len(ks.LEDGER) + len(value)

    def write_now(self) -> None:
        """An unsynced write of its own, when dirty: at start-up and stop, and once a minute
        beside another small write (daemon/ledger_report.py); never a sync."""
        batch = Batch()
        self.put_state(batch)
        if len(batch):
            self._store.write(batch, sync=False)

    def encode(self) -> bytes:
        state: dict = {"settled": self.settled,
                       "open": {k: r.items for k, r in self.open.items() if r.items}}
        if self._issued_below is not None:
            state["issuedBelow"] = self._issued_below
        return json.dumps(state, separators=(",", ":")).encode()

    def _load(self, raw: bytes | None) -> None:
        """A state this release cannot read starts the ledger afresh, as on a first start: the
        cloud side then finds the accounts it lacks unaccounted, which is the truth."""
        if raw is None:
            return
        try:
            state = json.loads(raw)
            settled = int(state["settled"])
            issued_below = state.get("issuedBelow")
            open_ = {kind: [[int(a), int(b), int(t)] for a, b, t in items]
                     for kind, items in state.get("open", {}).items() if kind in self.open}
        except (ValueError, KeyError, TypeError) as exc:
            event(Event.LEDGER_RESET,
                  f"ledger: the stored accounts cannot be read ({exc!r}); starting afresh, so "
                  f"the cloud side finds the accounts not yet acknowledged unaccounted; nothing "
                  f"else is affected", level=logging.WARNING)
            return
        self.settled = settled
        self._issued_below = int(issued_below) if issued_below is not None else None
        for kind, items in open_.items():
            self.open[kind].items = items


def encode_settlement(doc: dict) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()

