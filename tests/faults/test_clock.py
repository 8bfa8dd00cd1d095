"""Wall-clock jumps under a running gatewayd (libfaketime, its offset changed through a file the
daemon re-reads; the monotonic clock left real): TTL and SAS expiry follow real elapsed time.

A jump forward must not expire the whole backlog (nor the cloud-to-device messages waiting for a
child) at once; a jump back must not keep expired messages, nor accept expired tokens, for as
long as the jump.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.faults.hostile import connect_packet, dial, read_packets
from tests.support.clients import Child, CloudVerifier, new_key
from tests.support.hub_child import HubChild, Operator
from tests.support.synced import synced_gateway
from tests.support.wait import wait_until

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
MESSAGES = 20


@pytest.fixture
def faketime(tmp_path):
    """(env for the daemon, set(offset)): offsets like '+2d' or '-1d', applied at once."""
    if not LIBFAKETIME.exists():
        pytest.fail("libfaketime is not installed: run ./dev.sh test, which installs faketime")
    control = tmp_path / "faketime"
    control.write_text("+0\n")
    env = {"LD_PRELOAD": str(LIBFAKETIME), "FAKETIME_TIMESTAMP_FILE": str(control),
           "FAKETIME_NO_CACHE": "1", "DONT_FAKE_MONOTONIC": "1"}

    def set_offset(offset: str) -> None:
        control.write_text(offset + "\n")

    return env, set_offset


def _offline_gateway(cloud, gateways, env, keys, ttl: int):
    gw = synced_gateway(cloud, gateways, keys, env=env, storage={"time_to_live_secs": ttl})
    cloud.stop()
    gw.wait_status(lambda s: s["uplink"]["state"] != "online", what="uplink down")
    return gw


def _store(gw, device: str, key: str, first: int) -> None:
    child = Child(device, key, gw.plain_port)
    assert child.connect() == 0
    child.wait_acked([child.send(i).mid for i in range(first, first + MESSAGES)])
    child.close()


def test_jump_forward_does_not_expire_the_backlog(cloud, gateways, faketime):
    env, set_offset = faketime
    key = new_key()
    verifier = CloudVerifier(cloud.port)
    verifier.connect()
    verifier.disconnect()
    gw = _offline_gateway(cloud, gateways, env, {"c1": key}, ttl=3600)
    _store(gw, "c1", key, 0)
    set_offset("+2d")  # NTP finally answers: the Pi was two days behind
    start = time.monotonic()
    # the expiry sweep runs every few seconds: wait through several sweeps at the new time
    gw.wait_status(lambda s: time.monotonic() - start > 12, timeout=30, what="sweeps")
    assert gw.status()["outbox"]["expired"] == 0
    cloud.start()
    verifier.connect()
    verifier.wait_for(lambda msgs: len({m.i for m in msgs}) == MESSAGES, what="the backlog")
    assert gw.status()["outbox"]["expired"] == 0
    assert all(m.expiry and m.expiry > 3000 for m in verifier.messages), "TTL left shrank"


def test_jump_back_still_expires_on_time(cloud, gateways, faketime):
    env, set_offset = faketime
    key = new_key()
    gw = _offline_gateway(cloud, gateways, env, {"c1": key}, ttl=2)
    _store(gw, "c1", key, 0)
    set_offset("-1d")
    status = gw.wait_status(lambda s: s["outbox"]["expired"] == MESSAGES, timeout=20,
                            what="the 2 s TTL to pass despite the clock going back a day")
    assert status["backlog"]["messages"] == 0


def test_jump_back_does_not_revive_an_expired_sas_token(cloud, gateways, faketime):
    env, set_offset = faketime
    key = new_key()
    gw = _offline_gateway(cloud, gateways, env, {"c1": key}, ttl=3600)
    expiry = int(time.time()) + 3
    with dial(gw.plain_port) as sock:  # valid now
        sock.sendall(connect_packet("c1", key, expiry=expiry))
        assert read_packets(sock, 1)[0].return_code == 0
    set_offset("-1d")

    def connack_code() -> int:
        with dial(gw.plain_port) as sock:
            sock.sendall(connect_packet("c1", key, expiry=expiry))
            return read_packets(sock, 1)[0].return_code

    # poll the condition: the token's expiry is real time passing
    code = wait_until(connack_code, lambda c: c != 0, timeout=20, interval=0.2,
                      what="the expired token refused after a clock jump back")
    assert time.time() >= expiry
    assert code in (4, 5), code
    gw.wait_log("SAS token expired", timeout=10)  # the journal line follows the CONNACK


def _c2d_gateway(cloud, gateways, env, key: str):
    """Online (C2D comes from the cloud), the child not connected: the message waits stored."""
    return synced_gateway(cloud, gateways, {"c1": key}, online=True, env=env)


def test_jump_forward_does_not_expire_waiting_cloud_to_device_messages(cloud, gateways,
                                                                       faketime):
    env, set_offset = faketime
    key = new_key()
    gw = _c2d_gateway(cloud, gateways, env, key)
    operator = Operator(cloud.port)
    operator.send("c1", b"waits", ttl=3600)
    gw.wait_status(lambda s: s["hub"]["devicebound_waiting"] == 1, what="the C2D message stored")
    set_offset("+2d")  # two days: far past the message's hour, measured by the wall clock
    child = HubChild("c1", key, gw.plain_port)
    assert child.connect() == 0
    child.subscribe_all()  # delivery looks the message up at the time of the subscription
    child.wait(lambda: child.messages("devices/c1/messages/devicebound/"), what="the C2D message")
    assert [p for _, p in child.messages("devices/c1/messages/devicebound/")] == [b"waits"]
    assert gw.status()["hub"]["devicebound_expired"] == 0
    child.close()
    operator.close()


def test_jump_back_still_expires_cloud_to_device_messages_on_time(cloud, gateways, faketime):
    env, set_offset = faketime
    gw = _c2d_gateway(cloud, gateways, env, new_key())
    operator = Operator(cloud.port)
    operator.send("c1", b"short-lived", ttl=2)
    gw.wait_status(lambda s: s["hub"]["devicebound_waiting"] + s["hub"]["devicebound_expired"]
                   == 1, what="the C2D message stored")
    set_offset("-1d")
    status = gw.wait_status(lambda s: s["hub"]["devicebound_expired"] == 1, timeout=20,
                            what="the 2 s C2D time to live to pass despite the clock going back")
    assert status["hub"]["devicebound_waiting"] == 0
    operator.close()
