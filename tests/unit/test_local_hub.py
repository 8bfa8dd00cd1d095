"""LocalHub on a real store: twins answered locally, cloud-to-device order, window and time to
live on the hub's own clock, child-to-child method permissions, and cloud documents."""

from __future__ import annotations

import asyncio
import json

from gateway.child import dialect
from gateway.child.auth import Child
from gateway.hub.local_hub import C2D_WINDOW, LocalHub
from gateway.storage.store import Store
from gateway.upstream.uplink import CloudMessage
from tests.support.recording_child import RecordingChild, child_server, connect

# Years before the wall clock of any machine running this: a hub that read time.time() anywhere
# instead of its clock would find every message of these tests long expired.
START = 1_500_000_000.0
C2D = "devices/a/messages/devicebound/"


class Clock:
    """Stands where the daemon's SteadyClock stands; the test moves it."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def child(device_id: str, *callers: str) -> Child:
    return Child(device_id, True, "SAS", (b"k",), (), tuple(callers))


def make_hub(store, server, children, clock=None, routes=frozenset()) -> LocalHub:
    return LocalHub(store, server, "", lambda: children, clock=clock or Clock(),
                    uplink=lambda: None, route_allows_call=lambda c, t: (c, t) in routes)


def op(device_id: str, topic: str):
    return dialect.classify_publish(device_id, topic)


def test_twin_reads_and_reported_patches_are_answered_from_the_store(tmp_path):
    store = Store(tmp_path)
    server = child_server()
    hub = make_hub(store, server, {"a": child("a")})
    a = connect(server, RecordingChild("a"))
    hub.child_operation(a, op("a", "$iothub/twin/PATCH/properties/reported/?$rid=1"),
                        b'{"temp": 20}')
    hub.child_operation(a, op("a", "$iothub/twin/PATCH/properties/reported/?$rid=2"),
                        b'{"$bad": 1}')
    hub.child_operation(a, op("a", "$iothub/twin/GET/?$rid=3"), b"")
    (t1, _, _), (t2, body2, _), (t3, body3, _) = a.delivered
    assert t1 == "$iothub/twin/res/204/?$rid=1&$version=2"
    assert t2 == "$iothub/twin/res/400/?$rid=2" and "message" in json.loads(body2)
    assert t3 == "$iothub/twin/res/200/?$rid=3"
    assert json.loads(body3)["reported"] == {"$version": 2, "temp": 20}
    assert hub.twins.dirty_devices() == ["a"], "no uplink: kept to reconcile when it is back"
    store.close()

    store = Store(tmp_path)
    hub = make_hub(store, child_server(), {"a": child("a")})
    assert hub.twins.get("a").reported == {"$version": 2, "temp": 20}
    assert hub.twins.dirty_devices() == ["a"]
    store.close()


def test_cloud_to_device_waits_for_the_subscription_then_goes_in_order_within_the_window(
        tmp_path):
    store = Store(tmp_path)
    server = child_server()
    hub = make_hub(store, server, {"a": child("a")})
    total = C2D_WINDOW + 3
    hub.enqueue_devicebound("a", b"m0", [("colour", "blue")], 60)  # nobody connected yet
    a = connect(server, RecordingChild("a", subscriptions=()))
    for i in range(1, total):
        hub.enqueue_devicebound("a", f"m{i}".encode(), [], 60)
    assert a.delivered == [], "nothing before the child subscribes"
    a.subscriptions.append("devices/a/messages/devicebound/#")
    hub.child_subscribed(a)
    assert a.payloads(C2D) == [f"m{i}".encode() for i in range(C2D_WINDOW)]
    assert {qos for _, _, qos in a.delivered} == {1}
    assert "colour=blue" in a.delivered[0][0]
    a.puback(2)
    assert a.payloads(C2D)[-2:] == [f"m{C2D_WINDOW}".encode(), f"m{C2D_WINDOW + 1}".encode()]
    assert hub.devicebound.count("a") == total - 2, "a PUBACK removes the message"
    store.close()

    store = Store(tmp_path)  # what was not acknowledged survives, and comes again in order
    server = child_server()
    hub = make_hub(store, server, {"a": child("a")})
    again = connect(server, RecordingChild("a"))
    hub.child_subscribed(again)
    assert again.payloads(C2D)[0] == b"m2"
    store.close()


def test_a_child_not_subscribed_to_devicebound_gets_nothing(tmp_path):
    store = Store(tmp_path)
    server = child_server()
    hub = make_hub(store, server, {"a": child("a")})
    a = connect(server, RecordingChild("a", subscriptions=("$iothub/#",)))
    hub.enqueue_devicebound("a", b"waits", [], 60)
    hub.child_subscribed(a)
    assert a.delivered == [] and hub.devicebound.count("a") == 1
    store.close()


def test_cloud_to_device_time_to_live_is_measured_on_the_hubs_clock(tmp_path):
    store = Store(tmp_path)
    server = child_server()
    clock = Clock()
    hub = make_hub(store, server, {"a": child("a")}, clock)
    hub.enqueue_devicebound("a", b"short", [], 10)
    hub.cloud_message(CloudMessage("devices/a/messages/devicebound", b"cloud", expiry_secs=30))
    hub.enqueue_devicebound("a", b"long", [], 3600)
    clock.now += 11
    a = connect(server, RecordingChild("a"))
    hub.child_subscribed(a)
    assert a.payloads(C2D) == [b"cloud", b"long"], "expired is never delivered"
    clock.now += 20
    # the short one went when delivery passed over it; the cloud's goes now, in flight or not
    assert hub.sweep() == 1
    assert hub.status()["devicebound_expired"] == 2
    assert hub.devicebound.count("a") == 1, "the long one waits for its PUBACK"
    store.close()


def test_child_to_child_calls_need_the_registry_or_a_route(tmp_path):
    async def scenario() -> None:
        store = Store(tmp_path)
        server = child_server()
        children = {"a": child("a"), "b": child("b", "a"), "c": child("c")}
        routes = {("a", "c")}
        hub = make_hub(store, server, children, routes=routes)
        a, b, c = (connect(server, RecordingChild(d)) for d in "abc")

        def invoke(target: str, rid: str) -> None:
            topic = f"$iothub/methods/invoke/{target}/reboot/?$rid={rid}"
            hub.child_operation(a, op("a", topic), b'{"delay": 1}')

        def answer(to: str) -> str:
            return next(t for t, _, _ in a.delivered if t.endswith(f"?$rid={to}"))

        invoke("nobody", "r1")
        assert answer("r1").startswith("$iothub/methods/invoke/res/404/")
        routes.clear()
        invoke("c", "r2")
        assert answer("r2").startswith("$iothub/methods/invoke/res/403/")
        routes.add(("a", "c"))
        invoke("c", "r3")
        assert c.delivered[0][0].startswith("$iothub/methods/POST/reboot/?$rid=")

        invoke("b", "r4")
        request, payload, _ = b.delivered[0]
        assert payload == b'{"delay": 1}'
        rid = request.split("$rid=")[1]
        hub.child_operation(b, op("b", f"$iothub/methods/res/200/?$rid={rid}"), b'{"ok": 1}')
        assert answer("r4").startswith("$iothub/methods/invoke/res/200/")
        assert next(p for t, p, _ in a.delivered if t.endswith("r4")) == b'{"ok": 1}'

        hub.child_closed(c)  # the call to c can no longer be answered
        assert answer("r3").startswith("$iothub/methods/invoke/res/504/")
        assert hub.status()["methods_invoked"] == 2
        store.close()

    asyncio.run(scenario())


def test_cloud_documents_reach_known_children_only(tmp_path):
    store = Store(tmp_path)
    server = child_server()
    hub = make_hub(store, server, {"a": child("a")})
    a = connect(server, RecordingChild("a"))
    assert hub.cloud_message(CloudMessage("elsewhere/x", b"")) is False
    assert hub.cloud_message(CloudMessage("devices/zz/twin/desired", b'{"$version": 1}'))
    assert hub.status()["dropped_unknown_device"] == 1

    hub.cloud_message(CloudMessage("devices/a/twin/desired", b'{"$version": 2, "mode": "eco"}'))
    topic, patch, _ = a.delivered[-1]
    assert topic == "$iothub/twin/PATCH/properties/desired/?$version=2"
    assert json.loads(patch)["mode"] == "eco"

    seen = len(a.delivered)
    hub.cloud_message(CloudMessage("devices/a/twin/desired", b"not json"))
    hub.cloud_message(CloudMessage("devices/a/methods/reboot", b"{}"))  # no response topic
    assert len(a.delivered) == seen, "a refused document and a call nobody can answer"
    assert hub.twins.get("a").desired["$version"] == 2
    assert hub.status()["methods_invoked"] == 0
    assert hub.subscriptions(["a"]) == {"devices/a/twin/desired", "devices/a/twin/reported",
                                        "devices/a/messages/devicebound", "devices/a/methods/+"}
    store.close()
