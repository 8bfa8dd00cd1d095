"""The gateway's own desired twin: hub settings the operator sets from the cloud.

Shaped like the IoT Edge hub's desired properties (`schemaVersion`, `routes`,
`storeAndForwardConfiguration.timeToLiveSecs`) so that an IoT Edge operator recognises them.
A document is checked whole before anything changes: a bad value refuses the whole document and
the settings in force stay, with the reason kept for the reported twin. The accepted document is
in force at once and cached through the one writer (the cloud's PUBACK follows that commit), so
a gateway restarted offline keeps the operator's settings.
Reference: "Properties of the IoT Edge hub module twin" (Azure IoT Edge documentation).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.errors import DataError
from gateway.storage import keyspace as ks
from gateway.storage.store import Store
from gateway.storage.writes import Submit, Writes, write_or_submit

MAX_TTL_SECS = 2_147_483_647
SCHEMA_VERSIONS = ("1.0", "1.1")


class SettingsError(DataError):
    """The document is refused; the message names the field."""


@dataclass(frozen=True)
class HubSettings:
    version: int = 0  # the desired $version these came from; 0 = none received yet
    ttl_secs: int | None = None  # None: the config file's storage.time_to_live_secs
    routes: dict = field(default_factory=dict)
    raw: dict = field(default_factory=dict)


def parse_settings(
    payload: bytes, check_routes: Callable[[dict], None] | None = None
) -> HubSettings:
    """Validate a desired document; SettingsError names the first field that is wrong."""
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SettingsError(f"not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise SettingsError("the document must be a JSON object")
    version = doc.get("$version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise SettingsError('"$version" must be an integer of at least 1')
    schema = doc.get("schemaVersion", "1.0")
    if schema not in SCHEMA_VERSIONS:
        raise SettingsError(f"schemaVersion {schema!r} is not one of {', '.join(SCHEMA_VERSIONS)}")
    ttl = _ttl(doc.get("storeAndForwardConfiguration", {}))
    routes = doc.get("routes", {})
    if not isinstance(routes, dict):
        raise SettingsError("routes must be an object of route name to route")
    if check_routes is not None:
        try:
            check_routes(routes)
        except (DataError, ValueError) as exc:  # check_routes raises RouteError, a DataError
            raise SettingsError(f"routes: {exc}") from None
    return HubSettings(version, ttl, routes, doc)


def _ttl(section: object) -> int | None:
    if not isinstance(section, dict):
        raise SettingsError("storeAndForwardConfiguration must be an object")
    if "timeToLiveSecs" not in section:
        return None
    ttl = section["timeToLiveSecs"]
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= MAX_TTL_SECS:
        raise SettingsError(
            f"storeAndForwardConfiguration.timeToLiveSecs must be an integer from 1 to "
            f"{MAX_TTL_SECS}, not {ttl!r}"
        )
    return ttl


class SettingsSync:
    """The settings in force, loaded from the store and replaced by newer valid documents."""

    def __init__(
        self,
        store: Store,
        check_routes: Callable[[dict], None] | None = None,
        submit: Submit | None = None,
    ) -> None:
        self._store = store
        self.submit = submit
        self._check_routes = check_routes
        self.last_refusal = ""
        raw = store.meta.get(ks.SETTINGS)
        self.settings = HubSettings()
        if raw:
            try:
                self.settings = parse_settings(raw, check_routes)
            except SettingsError as exc:
                self.last_refusal = f"cached settings unreadable: {exc}"

    def apply(
        self, payload: bytes, then: Callable[[], None] | None = None
    ) -> tuple[bool, str]:
        """(applied, reason). An older or identical version is ignored, not refused. `then`
        runs once an applied document is cached durably (at once otherwise)."""
        try:
            new = parse_settings(payload, self._check_routes)
        except SettingsError as exc:
            self.last_refusal = str(exc)
            return _done(then, False, str(exc))
        if new.version <= self.settings.version:
            return _done(then, False, "unchanged")
        writes = Writes().put(self._store.meta, ks.SETTINGS, json.dumps(new.raw).encode())
        write_or_submit(self._store, self.submit, writes, then)
        self.settings = new
        self.last_refusal = ""
        return True, "applied"


def _done(then: Callable[[], None] | None, applied: bool, reason: str) -> tuple[bool, str]:
    if then is not None:
        then()
    return applied, reason
