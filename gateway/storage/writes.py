"""Writes to make durable together: what a job of the one writer carries.

Recorded as a list rather than built as a `Batch`, because the writer joins many jobs and the
outbox's messages into one batch (one synced write), and because a commit that failed is
replayed into the next one: a RocksDB WriteBatch can be neither merged nor copied.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.storage.store import Batch, Family, Store

Value = bytes | Callable[[], bytes]


@dataclass
class Writes:
    """Puts and deletes to make durable together, recorded so that a failed commit can be
    replayed into the next one (a RocksDB WriteBatch cannot be merged into another)."""

    ops: list[tuple[Family, bytes, Value | None]] = field(default_factory=list)

    def put(self, family: Family, key: bytes, value: Value) -> Writes:
        """`value` may be a function, called when the commit takes the write: state that
        changes faster than commits happen is then encoded once per commit."""
        self.ops.append((family, key, value))
        return self

    def delete(self, family: Family, key: bytes) -> Writes:
        self.ops.append((family, key, None))
        return self

    def apply(self, batch: Batch) -> None:
        for family, key, value in self.ops:
            if value is None:
                batch.delete(family, key)
            else:
                batch.put(family, key, value() if callable(value) else value)

    def __len__(self) -> int:
        return len(self.ops)


Submit = Callable[[Writes, "Callable[[], None] | None"], None]  # the writer's submit


def write_or_submit(store: Store, submit: Submit | None, writes: Writes,
                    then: Callable[[], None] | None = None) -> None:
    """Through the writer when the daemon attached one; else (start-up, tools, unit tests of one
    module) as one synced write here and now."""
    if submit is not None:
        submit(writes, then)
        return
    batch = Batch()
    writes.apply(batch)
    store.write(batch, sync=True)
    if then is not None:
        then()
