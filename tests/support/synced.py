"""The start most tests share: the cloud holds registry version 1, a gateway starts on that cloud,
and the test goes on only once the gateway has synced it.

Waiting for `registry_version == 1` is what makes the children's CONNECTs deterministic: before
the sync the gateway refuses every child, so a test that connected earlier would pass or fail
by which process ran first.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.upstream.cloud_contract import registry_topic

from .broker import Mosquitto
from .clients import publish_retained, registry_doc
from .gatewayd import Gatewayd


def synced_gateway(cloud: Mosquitto, make: Callable[..., Gatewayd],
                   keys: dict[str, str] | None = None, /, *, registry: bytes | None = None,
                   online: bool = False, until: Callable[[dict], bool] | None = None,
                   env: dict | None = None, cloud_url: str | None = None,
                   **overrides) -> Gatewayd:
    """A started gateway that has synced registry version 1 from `cloud`.

    The registry is `registry_doc(1, keys)`, or the raw document `registry`; it is published
    retained before the gateway starts. `make(cloud_url=..., **overrides)` builds the gateway
    (the `gateways` fixture); `cloud_url` defaults to the broker itself (a proxy in front of it
    is the other case). `online` also waits for the uplink, and `until` for any further status
    condition that belongs to the same start. The first three are positional only, so that
    `cloud={...}` is the gateway's [cloud] section, not the broker.
    """
    doc = registry if registry is not None else registry_doc(1, keys or {})
    publish_retained(cloud.port, registry_topic("", "edge-1"), doc)
    gw = make(cloud_url=cloud_url or cloud.url, **overrides)
    gw.start(env=env)

    def synced(status: dict) -> bool:
        return (status["registry_version"] == 1
                and (not online or status["uplink"]["state"] == "online")
                and (until is None or until(status)))

    gw.wait_status(synced, what="registry version 1 synced" + (", uplink online" if online
                                                                 else ""))
    return gw
