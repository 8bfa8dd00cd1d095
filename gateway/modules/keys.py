"""Module keys: made by gatewayd, held by gatewayd, never handed out.

In IoT Edge the cloud creates a module identity and the security daemon keeps its key; a module
gets SAS tokens signed for it through the workload API and never sees the key. gatewayd does
both jobs offline: every module key is derived from one random secret kept in the store
(HMAC-SHA256 of the secret, the gateway id, the module name and its generation id), so a module
named in a deployment has a key at once, the same one after every restart, with nothing to sync
and nothing per module to store. The generation id is derived the same way; it names this
identity of the module as IoT Edge's `IOTEDGE_MODULEGENERATIONID` does.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from gateway.storage import keyspace as ks
from gateway.storage.store import Store
from gateway.storage.writes import Writes, write_or_submit

SECRET_BYTES = 32


class ModuleKeys:
    """The gateway's module secret, and each module's key and generation id derived from it."""

    def __init__(self, store: Store, gateway_id: str) -> None:
        """At start-up, before the loop serves: a new secret is written synced, here."""
        secret = store.meta.get(ks.MODULE_SECRET)
        if secret is None or len(secret) != SECRET_BYTES:
            secret = os.urandom(SECRET_BYTES)  # what secrets.token_bytes returns
            write_or_submit(store, None, Writes().put(store.meta, ks.MODULE_SECRET, secret))
        self._secret = secret
        self._gateway_id = gateway_id

    def _derive(self, *parts: str) -> bytes:
        message = "\0".join((self._gateway_id, *parts)).encode()
        return hmac.new(self._secret, message, hashlib.sha256).digest()

    def generation_id(self, module: str) -> str:
        return self._derive("generation", module).hex()[:32]

    def key(self, module: str) -> bytes:
        return self._derive("key", module, self.generation_id(module))

    def sign(self, module: str, generation_id: str, data: bytes) -> bytes | None:
        """HMAC-SHA256 of `data` with the module's key; None for a generation id that is not
        this module's (a stale environment, or a guess)."""
        if not hmac.compare_digest(generation_id, self.generation_id(module)):
            return None
        return hmac.new(self.key(module), data, hashlib.sha256).digest()
