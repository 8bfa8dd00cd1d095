"""The set-up most offline tests share: a gateway with its children registered and synced, then
cut off from its cloud."""

from __future__ import annotations

from tests.support.clients import CloudVerifier
from tests.support.synced import synced_gateway


def cut_off_gateway(broker, gateways, keys: dict[str, str], **overrides):
    """(gateway, verifier): the registry holds `keys` and is synced, then `broker` (the cloud)
    is stopped; `overrides` are configuration sections for the gateway.

    The verifier's session is opened and left before the gateway starts, so the broker keeps for
    it everything the gateway sends once the cloud is back; `verifier.connect()` reads it.
    """
    verifier = CloudVerifier(broker.port)
    verifier.connect()
    verifier.disconnect()
    gw = synced_gateway(broker, gateways, keys, **overrides)
    broker.stop()
    gw.wait_status(lambda s: s["uplink"]["state"] != "online", what="uplink down")
    return gw, verifier
