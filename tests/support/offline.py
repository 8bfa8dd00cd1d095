"""The set-up most offline tests share: a gateway with its children registered and synced, then
cut off from its cloud."""

from __future__ import annotations

from gateway.upstream.cloud_contract import registry_topic
from tests.support.clients import CloudVerifier, publish_retained, registry_doc


def cut_off_gateway(broker, gateways, keys: dict[str, str], **overrides):
    """(gateway, verifier): the registry holds `keys` and is synced, then `broker` (the cloud)
    is stopped; `overrides` are configuration sections for the gateway.

    The verifier's session is opened and left before the gateway starts, so the broker keeps for
    it everything the gateway sends once the cloud is back; `verifier.connect()` reads it.
    """
    publish_retained(broker.port, registry_topic("", "edge-1"), registry_doc(1, keys))
    verifier = CloudVerifier(broker.port)
    verifier.connect()
    verifier.disconnect()
    gw = gateways(cloud_url=broker.url, **overrides)
    gw.start()
    gw.wait_status(lambda s: s["registry_version"] == 1, what="registry synced")
    broker.stop()
    gw.wait_status(lambda s: s["uplink"]["state"] != "online", what="uplink down")
    return gw, verifier
