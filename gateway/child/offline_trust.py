"""Offline trust and its audit trail.

While the cloud is unreachable children are authenticated from the cached registry. How long
that cache may be trusted is the operator's call (`auth.offline_trust_secs`, default for ever,
as the IoT Edge hub does): past it, cached credentials are refused until a registry sync.
Every authentication decided offline — accepted or refused — is appended to a bounded audit log
in the store and published to `{prefix}gateways/{gw}/audit` when the link returns, so that the
cloud learns who used the site while nobody could ask it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from gateway.storage import keyspace as ks
from gateway.storage.store import Batch, Store

MAX_ENTRIES = 10_000  # the oldest go first beyond this
BATCH = 100  # entries per cloud message
FRESH_PERSIST_SECS = 60.0


class OfflineTrust:
    """When the registry was last known fresh: a sync, or any moment the uplink was online."""

    def __init__(self, store: Store, trust_secs: int, clock: Callable[[], float] = time.time):
        self._store = store
        self.trust_secs = trust_secs
        self._clock = clock
        raw = store.meta.get(ks.REGISTRY_FRESH_AT)
        self.fresh_at = ks.read_u64(raw) / 1000 if raw else None
        self._persisted_at = 0.0

    def refresh(self, online: bool) -> bool:
        """Called every second: online means the registry subscription is live. True when it
        wrote (others' small state may join that write: one page to the card, not two)."""
        if not online:
            return False
        now = self._clock()
        self.fresh_at = now
        if now - self._persisted_at >= FRESH_PERSIST_SECS:  # one small write a minute
            self._persisted_at = now
            self._store.put(self._store.meta, ks.REGISTRY_FRESH_AT, ks.u64(int(now * 1000)),
                            sync=False)
            return True
        return False

    def synced(self) -> None:
        self.fresh_at = None
        self._persisted_at = 0.0
        self.refresh(True)

    def expired(self) -> str:
        """Why cached credentials may no longer be used, or ""."""
        if not self.trust_secs:
            return ""
        if self.fresh_at is None:
            return "the registry was never synced"
        age = self._clock() - self.fresh_at
        if age <= self.trust_secs:
            return ""
        return (f"the cached registry is {age:.0f} s old, over auth.offline_trust_secs "
                f"({self.trust_secs} s); children are refused until the cloud is reachable")


class AuditLog:
    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock
        last = store.meta.last(ks.AUDIT_PREFIX)
        self._next = ks.audit_number(last[0]) + 1 if last else 1
        self.count = sum(1 for _ in store.meta.keys(ks.AUDIT_PREFIX))

    def record(self, device_id: str, ok: bool, reason: str, method: str, peer: str) -> None:
        """One offline decision; unsynced (an audit entry is not a promise to a child)."""
        entry = {"at": round(self._clock(), 3), "deviceId": device_id, "accepted": ok,
                 "reason": reason, "method": method, "peer": peer}
        meta = self._store.meta
        batch = Batch()
        batch.put(meta, ks.audit_key(self._next), json.dumps(entry).encode())
        self._next += 1
        self.count += 1
        if self.count > MAX_ENTRIES:
            oldest, _ = meta.first(ks.AUDIT_PREFIX)
            batch.delete(meta, oldest)
            self.count -= 1
        self._store.write(batch, sync=False)

    def pending(self, limit: int = BATCH) -> tuple[list[bytes], list[dict]]:
        keys, entries = [], []
        for key, value in self._store.meta.scan(ks.AUDIT_PREFIX):
            if len(keys) >= limit:
                break
            keys.append(key)
            entries.append(json.loads(value))
        return keys, entries

    def published(self, keys: list[bytes]) -> None:
        batch = Batch()
        for key in keys:
            batch.delete(self._store.meta, key)
        self._store.write(batch, sync=False)
        self.count = max(self.count - len(keys), 0)
