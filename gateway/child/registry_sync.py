"""The registry of children, as synced from the cloud and cached in the store.

The registry is what lets children authenticate with no cloud at all, so it is in force the moment
a valid document arrives and cached durably by the one writer's next commit (the cloud's PUBACK
follows it, so a crash before it only means the broker sends the document again); it is loaded
from the cache at start-up. A bad
document is refused whole: a half-applied registry could lock out every child of a site.
Versions only move forward, so a stale retained copy cannot undo a newer one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.child.auth import Registry, parse_registry, registry_to_bytes
from gateway.errors import RegistryError
from gateway.log import Event, event
from gateway.storage import keyspace as ks
from gateway.storage.store import Store
from gateway.storage.writes import Submit, Writes, write_or_submit


@dataclass(frozen=True)
class RegistryChange:
    """What applying a document did: the devices whose connections must now be closed."""

    applied: bool
    reason: str
    revoked: tuple[str, ...] = ()


class RegistrySync:
    """Holds the registry in force; applies new documents from the cloud."""

    def __init__(self, store: Store, submit: Submit | None = None) -> None:
        self._store = store
        self.submit = submit
        self.registry = self._load()
        self.last_refusal = ""
        self.received_at: float | None = None  # wall time of the cloud's last document, if any

    def _load(self) -> Registry:
        cached = self._store.meta.get(ks.REGISTRY)
        if cached is None:
            return Registry.empty()
        try:
            return parse_registry(cached)
        except RegistryError as exc:
            event(
                Event.REGISTRY_REFUSED,
                f"registry: the cached copy is unreadable ({exc.message}); children cannot "
                f"authenticate until the cloud sends the registry again",
                level=logging.ERROR,
            )
            return Registry.empty()

    def apply(self, data: bytes, then: Callable[[], None] | None = None) -> RegistryChange:
        """Apply a document from the cloud; `then` runs once an applied one is cached durably
        (at once for one refused or unchanged)."""
        self.received_at = time.time()  # applied or not: the cloud was heard from
        then = then or (lambda: None)
        try:
            new = parse_registry(data)
        except RegistryError as exc:
            then()
            return self._refuse(f"{exc.message}")
        old = self.registry
        if new.version < old.version:
            then()
            return self._refuse(
                f"version {new.version} is older than version {old.version} in force"
            )
        if new == old:
            then()
            return RegistryChange(False, "unchanged")
        writes = Writes().put(self._store.meta, ks.REGISTRY, registry_to_bytes(new))
        write_or_submit(self._store, self.submit, writes, then)
        self.registry = new
        revoked = tuple(
            device
            for device, child in old.children.items()
            if child.enabled and not (device in new.children and new.children[device].enabled)
        )
        event(
            Event.REGISTRY_APPLIED,
            f"registry: version {new.version} applied: {len(new.children)} children"
            + (f", revoked: {', '.join(revoked)}" if revoked else ""),
        )
        return RegistryChange(True, "applied", revoked)

    def _refuse(self, reason: str) -> RegistryChange:
        self.last_refusal = reason
        event(
            Event.REGISTRY_REFUSED,
            f"registry: document refused, version {self.registry.version} stays in force: "
            f"{reason}; fix the document and publish it again (retained)",
            level=logging.WARNING,
        )
        return RegistryChange(False, reason)
