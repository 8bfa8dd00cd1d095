"""What arrives from the cloud, and what the gateway does when the link comes back.

Four kinds of cloud messages reach the gateway: its registry of children (which also proves
the cached credentials fresh, see child/offline_trust.py), its own desired twin (time to live and
routes), its deployment of modules (the agent's), and per-device and per-module documents and
calls, which are the local hub's. A change of the
registry or of the settings is answered with a new reported twin, so the operator sees at once
whether a document was applied or refused and why.

The time to live in force is the desired twin's if it sets one, else the configuration file's;
this class holds that rule, for a new desired twin and for a reload of the file alike.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from gateway.child.offline_trust import OfflineTrust
from gateway.child.registry_sync import RegistrySync
from gateway.child.server import ChildServer
from gateway.daemon.agent import Agent
from gateway.daemon.reported_twin import ReportedTwin
from gateway.daemon.uplink_slot import UplinkSlot
from gateway.hub.local_hub import LocalHub
from gateway.hub.router import Router
from gateway.hub.settings import SettingsSync
from gateway.log import Event, event
from gateway.upstream import cloud_contract as contract
from gateway.upstream.ingest import Ingest
from gateway.upstream.uplink import CloudMessage


class CloudInbox:
    """Dispatches the uplink's messages; the uplink calls `on_cloud_message` and `on_online`."""

    def __init__(
        self,
        *,
        gateway_id: str,
        file_ttl_secs: int,
        registry: RegistrySync,
        trust: OfflineTrust,
        settings: SettingsSync,
        router: Router,
        ingest: Ingest,
        hub: LocalHub,
        server: ChildServer,
        uplink: UplinkSlot,
        reported: ReportedTwin,
        agent: Agent,
    ) -> None:
        self._gateway_id = gateway_id
        self._file_ttl = file_ttl_secs
        self._registry = registry
        self._trust = trust
        self._settings = settings
        self._router = router
        self._ingest = ingest
        self._hub = hub
        self._server = server
        self._uplink = uplink
        self._reported = reported
        self._agent = agent

    def set_file_ttl(self, ttl_secs: int) -> None:
        """A reload changed storage.time_to_live_secs: it applies unless the twin sets one."""
        self._file_ttl = ttl_secs
        self._apply_ttl()

    def _apply_ttl(self) -> None:
        self._ingest.ttl_secs = ttl_in_force(self._settings, self._file_ttl)

    def subscriptions(self, prefix: str) -> set[str]:
        """The gateway's own three documents and every child's and module's topics."""
        gw = self._gateway_id
        own = {
            contract.registry_topic(prefix, gw),
            contract.gateway_twin_topic(prefix, gw, "desired"),
            contract.agent_topic(prefix, gw, "desired"),
        }
        every = [*self._registry.registry.children, *self._agent.identities()]
        return own | self._hub.subscriptions(every)

    def on_cloud_message(self, msg: CloudMessage) -> None:
        prefix, gw = self._uplink.prefix, self._gateway_id
        if msg.topic == contract.registry_topic(prefix, gw):
            self._registry_document(msg.payload, msg.hold_ack())
        elif msg.topic == contract.gateway_twin_topic(prefix, gw, "desired"):
            self._settings_document(msg.payload, msg.hold_ack())
        elif msg.topic == contract.agent_topic(prefix, gw, "desired"):
            self._deployment_document(msg.payload, msg.hold_ack())
        else:
            self._hub.cloud_message(msg)

    def on_online(self) -> None:
        """The link is back: reconcile the children's twins, then report the gateway's own."""
        self._hub.on_online()
        self._reported.publish()
        self._agent.on_online()

    def _deployment_document(self, payload: bytes, ack: Callable[[], None]) -> None:
        """Like the registry: in force at once, the broker's PUBACK once cached durably."""
        before = set(self._agent.identities())
        for module in self._agent.apply(payload, ack):
            self._server.disconnect(module, "removed or stopped in the deployment")
        if set(self._agent.identities()) != before:
            self._uplink.set_subscriptions(self.subscriptions(self._uplink.prefix))

    def _registry_document(self, payload: bytes, ack: Callable[[], None]) -> None:
        """In force at once; the broker's PUBACK once it is cached durably."""
        self._trust.synced()
        change = self._registry.apply(payload, ack)
        for device in change.revoked:
            self._server.disconnect(device, "removed or disabled in the registry")
        if change.applied:
            self._uplink.set_subscriptions(self.subscriptions(self._uplink.prefix))
            self._reported.publish()

    def _settings_document(self, payload: bytes, ack: Callable[[], None]) -> None:
        applied, reason = self._settings.apply(payload, ack)
        settings = self._settings.settings
        if applied:
            self._apply_ttl()
            self._router.use(settings.routes)
            event(
                Event.SETTINGS_APPLIED,
                f"settings: desired version {settings.version} applied: time to live "
                f"{self._ingest.ttl_secs} s for messages stored from now on; "
                f"{len(self._router)} routes",
            )
        elif reason != "unchanged":
            event(
                Event.SETTINGS_REFUSED,
                f"settings: desired document refused, version {settings.version} stays in "
                f"force: {reason}; fix it and publish it again (retained)",
                level=logging.WARNING,
            )
        if reason != "unchanged":
            self._reported.publish()


def ttl_in_force(settings: SettingsSync, file_ttl_secs: int) -> int:
    """The desired twin's time to live if it sets one, else the configuration file's."""
    return settings.settings.ttl_secs or file_ttl_secs
