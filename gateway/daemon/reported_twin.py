"""The gateway's own reported twin: what is in force and how the site is doing, for the cloud.

Published retained under the gateway's twin topic, so that an operator's tool reads the latest
state whenever it connects: after a change of the registry or of the settings (so the operator
sees an applied or refused document at once), when the link comes back, and once a minute
(the housekeeping's cadence) for the numbers that move by themselves: backlog, uplink state.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from gateway.child.registry_sync import RegistrySync
from gateway.child.server import ChildServer
from gateway.daemon.uplink_slot import UplinkSlot
from gateway.hub.settings import SettingsSync
from gateway.upstream import cloud_contract as contract
from gateway.upstream.ingest import Ingest
from gateway.upstream.outbox import Outbox


class ReportedTwin:
    """Builds the document from the objects that hold its facts, and publishes it."""

    def __init__(
        self,
        *,
        gateway_id: str,
        settings: SettingsSync,
        registry: RegistrySync,
        ingest: Ingest,
        outbox: Outbox,
        server: ChildServer,
        uplink: UplinkSlot,
        site: Callable[[], dict] = dict,
    ) -> None:
        self._gateway_id = gateway_id
        self._settings = settings
        self._registry = registry
        self._ingest = ingest
        self._outbox = outbox
        self._server = server
        self._uplink = uplink
        self._site = site  # disk, dead letters, version: Status.site, for the fleet view

    def document(self) -> dict:
        settings = self._settings.settings
        stats = self._outbox.stats
        oldest = self._outbox.oldest_enqueued_ms()
        uplink = self._uplink.stats()
        registry = self._registry.registry
        return {
            "schemaVersion": "1.0",
            "lastDesiredVersion": settings.version,
            "lastDesiredRefusal": self._settings.last_refusal or None,
            "storeAndForwardConfiguration": {"timeToLiveSecs": self._ingest.ttl_secs},
            "routes": settings.routes,
            "registry": {
                "version": registry.version,
                "children": len(registry.children),
                "lastSync": iso(self._registry.received_at),
                "lastRefusal": self._registry.last_refusal or None,
            },
            "uplink": {
                "state": uplink.state if uplink else "disabled",
                "since": iso(uplink.since) if uplink else None,
            },
            "backlog": {
                "messages": stats.count,
                "bytes": stats.bytes,
                "oldestAgeSecs": round(time.time() - oldest / 1000, 1) if oldest else None,
            },
            "childrenConnected": len(self._server.sessions),
            "lastChildRefusal": self._server.last_refusal,
            **self._site(),
            "reportedAt": iso(time.time()),
        }

    def publish(self) -> None:
        """Retained; nothing when there is no uplink (the next connection publishes it)."""
        if self._uplink.current is None:
            return
        topic = contract.gateway_twin_topic(self._uplink.prefix, self._gateway_id, "reported")
        self._uplink.publish(topic, json.dumps(self.document()).encode(), retain=True)


def iso(stamp: float | None) -> str | None:
    if stamp is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))
