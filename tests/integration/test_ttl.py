"""Done-when 2: messages past their time to live are never delivered, and they are counted."""

from __future__ import annotations

from tests.support.clients import Child, new_key
from tests.support.offline import cut_off_gateway

EXPIRING = 20


def test_expired_messages_are_dropped_unsent_and_counted(cloud, gateways):
    key = new_key()
    gw, verifier = cut_off_gateway(cloud, gateways, {"s1": key},
                                   storage={"time_to_live_secs": 1})

    child = Child("s1", key, gw.plain_port)
    assert child.connect() == 0
    child.wait_acked([child.send(i).mid for i in range(EXPIRING)])
    status = gw.wait_status(lambda s: s["outbox"]["expired"] == EXPIRING,
                            what="all messages expired")
    assert status["backlog"]["messages"] == 0

    cloud.start()
    gw.wait_status(lambda s: s["uplink"]["state"] == "online", what="uplink back")
    verifier.connect()
    child.wait_acked([child.send(i).mid for i in range(EXPIRING, EXPIRING + 5)])
    verifier.wait_for(lambda msgs: len(msgs) >= 5, what="the fresh messages")
    child.close()
    assert sorted(m.i for m in verifier.messages) == list(range(EXPIRING, EXPIRING + 5))
    assert all(m.expiry is not None and m.expiry <= 1 for m in verifier.messages)
    assert gw.status()["outbox"]["expired"] == EXPIRING
    assert "expired unsent" in gw.log_text()
