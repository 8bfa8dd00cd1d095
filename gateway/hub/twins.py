"""Device twins kept at the edge: desired and reported properties of each child.

A child reads and writes its twin whether or not the cloud is there, so the gateway is the
twin's home while it is offline. Each change goes to the one writer, and the answer waits for
its commit: a 204 to a reported patch means the patch survives a power cut. The twins in memory
are a write-through cache: a patch right behind another merges on the latest state even before
the first one's commit, and what is submitted is what the store will hold.

Versions only move forward. The gateway owns the reported `$version` (it is the only writer of
`{prefix}devices/{id}/twin/reported`); the operator owns the desired `$version`. A reported
document changed offline is marked dirty and published once, as the latest state, when the link
returns: fifty offline patches make one publish. Merge rules follow IoT Hub: a patch is merged
key by key into the document, objects recursively, and a null value deletes the key.
Reference: "Understand and use device twins in IoT Hub" (Azure IoT Hub documentation).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.errors import DataError
from gateway.storage import keyspace as ks
from gateway.storage.store import Store
from gateway.storage.writes import Submit, Writes, write_or_submit

MAX_TWIN_BYTES = 32 * 1024  # IoT Hub's limit for each of desired and reported
MAX_DEPTH = 10  # IoT Hub allows at most 10 levels of nesting in twin properties


class TwinError(DataError):
    """A patch or document the twin refuses; the message says why (status 400 to a child)."""


@dataclass
class Twin:
    desired: dict = field(default_factory=lambda: {"$version": 1})
    reported: dict = field(default_factory=lambda: {"$version": 1})
    dirty: bool = False  # reported changed here and the cloud has not acknowledged it yet
    desired_set: bool = False  # an operator's document arrived (else the empty version 1)

    def document(self) -> dict:
        """What `$iothub/twin/GET` answers with."""
        return {"desired": self.desired, "reported": self.reported}


def merge_patch(target: dict, patch: dict, depth: int = 1) -> None:
    """Apply an IoT Hub twin patch in place: null deletes, objects merge recursively."""
    if depth > MAX_DEPTH:
        raise TwinError(f"properties nest deeper than {MAX_DEPTH} levels")
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict):
            current = target.get(key)
            if not isinstance(current, dict):
                current = target[key] = {}
            merge_patch(current, value, depth + 1)
        else:
            target[key] = value


def merged(target: dict, patch: dict, depth: int = 1) -> dict:
    """`target` with `patch` applied, as a new document; the branches the patch does not touch
    are shared, not copied. Documents are never changed in place, so sharing is safe, and a
    patch costs what it carries rather than what the twin holds."""
    if depth > MAX_DEPTH:
        raise TwinError(f"properties nest deeper than {MAX_DEPTH} levels")
    out = dict(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict):
            current = out.get(key)
            out[key] = merged(current if isinstance(current, dict) else {}, value, depth + 1)
        else:
            out[key] = value
    return out


def desired_delta(old: dict, new: dict) -> dict:
    """The patch that takes a child from `old` to `new` desired properties (with $version)."""
    delta = {k: v for k, v in new.items() if k != "$version" and old.get(k) != v}
    delta.update({k: None for k in old if k != "$version" and k not in new})
    delta["$version"] = new["$version"]
    return delta


def parse_patch(payload: bytes) -> dict:
    """A reported patch from a child: a JSON object with no `$` keys, within the size limit."""
    if len(payload) > MAX_TWIN_BYTES:
        raise TwinError(f"patch of {len(payload)} bytes is over the {MAX_TWIN_BYTES}-byte limit")
    try:
        patch = json.loads(payload or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise TwinError(f"patch is not valid JSON: {exc}") from None
    if not isinstance(patch, dict):
        raise TwinError("patch must be a JSON object")
    patch.pop("$version", None)
    bad = [k for k in patch if k.startswith("$")]
    if bad:
        raise TwinError(f"property names starting with '$' are reserved: {', '.join(bad)}")
    return patch


def parse_document(payload: bytes, what: str) -> dict:
    """A full twin document from the cloud: a JSON object with an integer `$version`."""
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise TwinError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise TwinError(f"{what} must be a JSON object")
    version = doc.get("$version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise TwinError(f"{what} needs an integer \"$version\" of at least 1")
    return doc


class TwinStore:
    """The twins of all children, in the store's meta column family, cached in memory."""

    def __init__(self, store: Store, submit: Submit | None = None) -> None:
        self._store = store
        self._submit = submit
        self._cache: dict[str, Twin] = {}
        self._unwritten: set[str] = set()  # a submitted write of theirs is not encoded yet

    def get(self, device_id: str) -> Twin:
        twin = self._cache.get(device_id)
        if twin is None:
            raw = self._store.meta.get(ks.twin_key(device_id))
            twin = _decode(raw) if raw else Twin()
            self._cache[device_id] = twin
        return twin

    def _save(self, device_id: str, twin: Twin, then: Callable[[], None] | None = None) -> None:
        """Into the cache now, into the store with the writer's next commit, then `then`.

        The value is encoded when the commit takes it, from the cache: a child patching in a
        loop costs one encoding and one put per commit, not one per patch. A save behind one
        not yet encoded only adds its callback, which runs after that same commit."""
        self._cache[device_id] = twin
        if self._submit is not None and device_id in self._unwritten:
            self._submit(Writes(), then)
            return

        def value() -> bytes:
            self._unwritten.discard(device_id)
            return _encode(self._cache[device_id])

        if self._submit is not None:
            self._unwritten.add(device_id)
        writes = Writes().put(self._store.meta, ks.twin_key(device_id), value)
        write_or_submit(self._store, self._submit, writes, then)

    def patch_reported(
        self, device_id: str, patch: dict, then: Callable[[int], None] | None = None
    ) -> int:
        """Merge a child's patch; returns the new reported version, and `then(version)` runs
        once it is on disk (the moment for the 204)."""
        twin = self.get(device_id)
        reported = merged(twin.reported, patch)
        reported["$version"] = twin.reported["$version"] + 1
        if len(json.dumps(reported)) > MAX_TWIN_BYTES:
            raise TwinError(f"reported properties would exceed {MAX_TWIN_BYTES} bytes")
        version = reported["$version"]
        self._save(device_id, Twin(twin.desired, reported, True, twin.desired_set),
                   None if then is None else lambda: then(version))
        return version

    def apply_desired(
        self, device_id: str, doc: dict, then: Callable[[dict | None], None] | None = None
    ) -> dict | None:
        """Take the operator's desired document; the patch for the child, or None if not newer.
        `then(patch)` runs once the document is durable (at once with None if it was not
        newer): the moment to send the patch and acknowledge the cloud."""
        twin = self.get(device_id)
        current = twin.desired.get("$version", 0) if twin.desired_set else 0
        if doc["$version"] <= current:
            if then is not None:
                then(None)
            return None
        delta = desired_delta(twin.desired, doc)
        self._save(device_id, Twin(doc, twin.reported, twin.dirty, desired_set=True),
                   None if then is None else lambda: then(delta))
        return delta

    def cloud_reported(
        self, device_id: str, doc: dict, then: Callable[[], None] | None = None
    ) -> bool:
        """The cloud's retained reported copy arrived; True if ours must be published again.

        Normally it is our own last publish. If it carries a higher version (the store was
        replaced, say), versions must still move forward: adopt it when we have nothing newer,
        else keep our content under a version above the cloud's and publish that. `then` runs
        once what changed is durable (at once if nothing did).
        """
        then = then or (lambda: None)
        twin = self.get(device_id)
        ours = twin.reported["$version"]
        if doc["$version"] < ours or (doc["$version"] == ours and not twin.dirty):
            then()
            return twin.dirty
        if doc["$version"] == ours:  # our publish came back: it is acknowledged
            if doc == twin.reported:
                self.mark_published(device_id, ours)
                then()
                return False
            then()
            return True
        if not twin.dirty:
            self._save(device_id, Twin(twin.desired, doc, False, twin.desired_set), then)
            return False
        reported = dict(twin.reported, **{"$version": doc["$version"] + 1})
        self._save(device_id, Twin(twin.desired, reported, True, twin.desired_set), then)
        return True

    def mark_published(self, device_id: str, version: int) -> None:
        """The cloud acknowledged reported `version`; clean unless a newer patch came since."""
        twin = self.get(device_id)
        if twin.dirty and twin.reported["$version"] == version:
            # Nobody waits for it: if a power cut loses it the document is published once more.
            clean = Twin(twin.desired, twin.reported, False, twin.desired_set)
            self._save(device_id, clean)

    def dirty_devices(self) -> list[str]:
        """Children whose reported state the cloud has not seen yet (scans the store)."""
        out = []
        for key, raw in self._store.meta.scan(ks.TWIN_PREFIX):
            device_id = ks.twin_device(key)
            twin = self._cache.get(device_id) or _decode(raw)
            if twin.dirty:
                out.append(device_id)
        return out


def _encode(twin: Twin) -> bytes:
    return json.dumps(
        {
            "desired": twin.desired,
            "reported": twin.reported,
            "dirty": twin.dirty,
            "desired_set": twin.desired_set,
        },
        separators=(",", ":"),
    ).encode()


def _decode(raw: bytes) -> Twin:
    doc = json.loads(raw)
    return Twin(
        doc["desired"], doc["reported"], bool(doc.get("dirty")), bool(doc.get("desired_set"))
    )
