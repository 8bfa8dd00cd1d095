"""A module's credentials are the gateway's own: past auth.offline_trust_secs a child is refused,
a module of the deployment still connects (and the audit log records both decisions)."""

from __future__ import annotations

import base64
import time

from gateway.child.auth import SAS, Child, make_sas_token
from gateway.child.offline_trust import AuditLog, OfflineTrust
from gateway.child.registry_sync import RegistrySync
from gateway.hub.child_handler import ChildHandler
from gateway.mqtt.codec import Connect
from gateway.storage.store import Store

HUB = "hub.example.net"
KEY = base64.b64encode(b"k" * 32).decode()


def test_a_module_connects_after_the_offline_trust_ran_out(tmp_path):
    store = Store(tmp_path)
    now = [time.time()]
    trust = OfflineTrust(store, 60, clock=lambda: now[0])
    audit = AuditLog(store)
    module = Child("edge-1/filter", True, SAS, (base64.b64decode(KEY),), ())
    handler = ChildHandler(
        registry=RegistrySync(store), hub_hostname=HUB, clock=lambda: now[0], trust=trust,
        audit=audit, cloud_online=lambda: False, disk=None, ingest=None, router=None,
        gateway_id="edge-1", modules=lambda: {"edge-1/filter": module})
    trust.synced()
    now[0] += 3600  # an hour offline, past the 60 s of trust
    expiry = int(now[0]) + 600
    child = handler.authenticate(Connect("s1", f"{HUB}/s1/?api-version=1",
                                         make_sas_token(HUB, "s1", KEY, expiry).encode()), None)
    assert not child.ok and "offline_trust_secs" in child.reason
    token = make_sas_token(HUB, "edge-1/filter", KEY, expiry).encode()
    verdict = handler.authenticate(
        Connect("edge-1/filter", f"{HUB}/edge-1/filter/?api-version=1", token), None)
    assert verdict.ok, verdict.reason
    assert audit.count == 2
    store.close()
