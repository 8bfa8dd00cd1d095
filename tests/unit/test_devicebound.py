"""The cloud-to-device queue on real RocksDB files: order per device, TTL, removal, reopen."""

from __future__ import annotations

from gateway.hub.devicebound import DeviceboundQueue, inbox_topic, property_bag
from gateway.storage.store import Store

NOW = 1_700_000_000_000


def test_order_per_device_ack_and_reopen(tmp_path):
    store = Store(tmp_path)
    q = DeviceboundQueue(store)
    seqs = [q.enqueue("a", f"a{i}".encode(), [], NOW + 60_000) for i in range(3)]
    q.enqueue("ab", b"other device with a longer id", [], NOW + 60_000)
    assert [m.payload for m in q.pending("a", NOW)] == [b"a0", b"a1", b"a2"]
    assert [m.payload for m in q.pending("a", NOW, after=seqs[0])] == [b"a1", b"a2"]
    q.remove("a", seqs[0])
    assert (q.count("a"), q.count("ab"), q.count()) == (2, 1, 3)
    store.close()

    store = Store(tmp_path)
    q = DeviceboundQueue(store)
    assert [m.payload for m in q.pending("a", NOW)] == [b"a1", b"a2"]
    assert q.enqueue("a", b"a3", [], NOW + 1) > seqs[-1], "sequence numbers never repeat"
    store.close()


def test_expired_messages_are_never_delivered(tmp_path):
    store = Store(tmp_path)
    q = DeviceboundQueue(store)
    q.enqueue("a", b"old", [], NOW + 1_000)
    q.enqueue("a", b"fresh", [], NOW + 60_000)
    assert [m.payload for m in q.pending("a", NOW + 2_000)] == [b"fresh"]
    assert q.expired == 1
    q.enqueue("b", b"old", [], NOW + 1_000)
    assert q.expire(NOW + 2_000) == 1 and q.count() == 1
    store.close()


def test_property_bag_and_topic_follow_the_device_dialect():
    assert property_bag([("a b", "c/d"), ("$.mid", "7")]) == "a%20b=c%2Fd&$.mid=7"
    store_msg = type("M", (), {"properties": "k=v"})()
    assert inbox_topic("dev", store_msg) == (
        "devices/dev/messages/devicebound/k=v&$.to=%2Fdevices%2Fdev%2Fmessages%2Fdevicebound")


def test_a_module_input_is_queued_under_the_module_and_topic_names_the_input(tmp_path):
    store = Store(tmp_path)
    q = DeviceboundQueue(store)
    q.enqueue("edge-1/consumer", b"m1", [("$.cdid", "edge-1"), ("$.cmid", "producer")],
              NOW + 60_000, input="in1")
    q.enqueue("edge-1/consumer", b"m2", [], NOW + 60_000, input="in 2")
    first, second = q.pending("edge-1/consumer", NOW)
    assert inbox_topic("edge-1/consumer", first) == (
        "devices/edge-1/modules/consumer/inputs/in1/$.cdid=edge-1&$.cmid=producer")
    assert inbox_topic("edge-1/consumer", second) == (
        "devices/edge-1/modules/consumer/inputs/in%202/")
    assert q.count("edge-1/consumer") == 2 and q.count("edge-1") == 0
    store.close()
