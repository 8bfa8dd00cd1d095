"""Writes to make durable together: what a job of the one writer carries.

Recorded as a list rather than built as a RocksDB WriteBatch, because the writer joins many jobs
and the outbox's messages into one batch (one synced write), and because a commit that failed
is replayed into the next one: a WriteBatch can be neither merged nor copied.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from rocksdict import WriteBatch


@dataclass
class Writes:
    """Puts and deletes to make durable together, recorded so that a failed commit can be
    replayed into the next one (a RocksDB WriteBatch cannot be merged into another)."""

    ops: list[tuple[object, bytes, bytes | None]] = field(default_factory=list)

    def put(self, handle: object, key: bytes, value: bytes) -> Writes:
        self.ops.append((handle, key, value))
        return self

    def delete(self, handle: object, key: bytes) -> Writes:
        self.ops.append((handle, key, None))
        return self

    def apply(self, batch: WriteBatch) -> None:
        for handle, key, value in self.ops:
            if value is None:
                batch.delete(key, handle)
            else:
                batch.put(key, value, handle)

    def __len__(self) -> int:
        return len(self.ops)


Submit = Callable[[Writes, "Callable[[], None] | None"], None]  # the writer's submit


def write_or_submit(store, submit: Submit | None, writes: Writes,
                    then: Callable[[], None] | None = None) -> None:
    """Through the writer when the daemon attached one; else (start-up, tools, unit tests of one
    module) as one synced write here and now."""
    if submit is not None:
        submit(writes, then)
        return
    batch = WriteBatch(raw_mode=True)
    writes.apply(batch)
    store.write(batch, sync=True)
    if then is not None:
        then()
