"""The drain scheduler against a real outbox on real RocksDB files, without a broker: the PUBLISHes
it answers are parsed back with the gateway's MQTT 5 reader, and acks are fed in by packet id."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from gateway.config import CloudSettings
from gateway.mqtt import mqtt5
from gateway.storage.store import Store
from gateway.upstream import drain, token_bucket
from gateway.upstream.cloud_contract import TelemetryEncoder
from gateway.upstream.dead_letters import DeadLetters
from gateway.upstream.drain import Drain
from gateway.upstream.message import Message
from gateway.upstream.outbox import Outbox
from tests.support.imports import IO_MODULES, top_level_imports

NOW_MS = 1_700_000_000_000
REFUSED = 0x87  # Not authorized


@dataclass
class Counters:
    sent: int = 0
    acked: int = 0
    refused: int = 0
    inflight: int = 0


def cloud(**keys) -> CloudSettings:
    settings = dict(url="mqtt://cloud.example:1883", prefix="", client_id="", ca_file=None,
                    cert_file=None, key_file=None, username="", password="",
                    inflight_window=100, keepalive_secs=30, reconnect_min_secs=1.0,
                    reconnect_max_secs=10.0, host="cloud.example", port=1883)
    settings.update(keys)
    return CloudSettings(**settings)


class Site:
    """An outbox on a store in tmp_path, a drain over it, and the connection's packet ids."""

    def __init__(self, path, **cloud_keys) -> None:
        self.store = Store(path)
        self.outbox = Outbox(self.store)
        self.counters = Counters()
        self.now_ms = NOW_MS  # the wall clock, in ms
        self.monotonic = 0.0
        self.dead_letters = DeadLetters(self.store, self.outbox)
        self.drain = Drain(cloud(**cloud_keys), self.outbox, self.dead_letters,
                           TelemetryEncoder("", "edge-1"),
                           self.counters, clock=lambda: self.now_ms / 1000,
                           monotonic=lambda: self.monotonic)
        self._next_id = 0
        self.others = 0  # the Uplink's own publishes in flight

    def append(self, n: int, priority: int = 9, commit: bool = True) -> list[int]:
        seqs = [self.outbox.append(Message(f"d{priority}", NOW_MS, NOW_MS + 3_600_000, "",
                                           b"x" * 20, priority)) for _ in range(n)]
        if commit:
            self.outbox.commit_now()
        return seqs

    def packet_id(self) -> int:
        self._next_id = self._next_id % 65535 + 1
        return self._next_id

    def fill(self) -> list[tuple[int, int]]:
        """(packet id, seq) of every PUBLISH one fill answers, in the order they are written."""
        done = self.drain.fill(self.others, self.packet_id)
        if done is None:
            return []
        packets = mqtt5.Reader().feed(b"".join(done.packets))
        assert all(isinstance(p, mqtt5.Publish) and p.qos == 1 for p in packets)
        return [(p.packet_id, int(dict(p.props.user)["seq"])) for p in packets]

    def ack(self, sent: list[tuple[int, int]], code: int = 0) -> None:
        for packet_id, _ in sent:
            self.drain.acked(packet_id, code)
        self.drain.acks_done()


def seqs(sent: list[tuple[int, int]]) -> list[int]:
    return [seq for _, seq in sent]


@pytest.fixture
def site(tmp_path):
    made: list[Site] = []

    def make(**cloud_keys) -> Site:
        made.append(Site(tmp_path / f"store{len(made)}", **cloud_keys))
        return made[-1]

    yield make
    for s in made:
        s.outbox.close()
        s.store.close()


def test_a_fill_takes_the_window_and_no_more(site):
    s = site(inflight_window=10)
    stored = s.append(25)
    s.drain.connected()
    first = s.fill()
    assert seqs(first) == stored[:10]
    assert s.counters.sent == 10 and s.counters.inflight == 10
    assert s.drain.fill(0, s.packet_id) is None, "a full window writes nothing"
    s.ack(first[:3])
    s.others = 1  # a status publish in flight counts against the window too
    assert seqs(s.fill()) == stored[10:12]


def test_the_broker_receive_maximum_lowers_the_window(site):
    s = site(inflight_window=100)
    stored = s.append(20)
    s.drain.connected(receive_max=4)
    assert s.drain.window == 4
    assert seqs(s.fill()) == stored[:4]
    s.drain.lost(stopping=True)
    s.drain.connected(receive_max=65535)
    assert s.drain.window == 100, "the next connection's broker may allow more"


def test_highest_priority_first_and_stored_order_within_one(site):
    s = site(inflight_window=100)
    low = s.append(3, priority=9)
    high = s.append(2, priority=0)
    middle = s.append(2, priority=5, commit=False)  # still in memory: the same order applies
    low += s.append(2, priority=9)
    s.drain.connected()
    assert seqs(s.fill()) == high + middle + low


def test_acks_release_the_window_and_leave_the_outbox(site):
    s = site(inflight_window=5)
    stored = s.append(12)
    s.drain.connected()
    first = s.fill()
    s.ack(first)
    assert s.counters.acked == 5
    second = s.fill()
    assert seqs(second) == stored[5:10]
    assert [seq for seq, _ in s.outbox.read(0, 100, NOW_MS)] == stored[5:]
    s.drain.acked(first[0][0], 0)  # a PUBACK for a packet id no longer in flight
    assert s.counters.acked == 5
    s.ack(second)
    s.ack(s.fill())
    assert s.outbox.stats.count == 0 and s.outbox.stats.bytes == 0, "each acked its own size"
    s.outbox.close()
    s.outbox = Outbox(s.store)
    assert s.outbox.backlog_by_priority() == {} and s.outbox.stats.bytes == 0, "and on disk"


def test_a_refused_message_is_retried_first_then_dead_lettered(site):
    s = site(inflight_window=3, max_refusals=3)
    stored = s.append(6)
    s.drain.connected()
    sent = s.fill()
    assert seqs(sent) == stored[:3]
    s.ack(sent[1:])
    s.ack(sent[:1], code=REFUSED)
    again = s.fill()
    assert seqs(again) == [stored[0], *stored[3:5]], "the refused one goes again, first"
    s.ack(again[:1], code=REFUSED)
    third = s.fill()
    assert seqs(third) == [stored[0]]
    s.ack(third, code=REFUSED)
    assert s.counters.refused == 3
    assert [letter.seq for letter in s.dead_letters.list()] == [stored[0]]
    assert seqs(s.fill()) == [stored[5]], "the dead letter is not sent again"


def test_an_ack_clears_the_refusals_of_that_message(site):
    s = site(inflight_window=1, max_refusals=2)
    stored = s.append(2)
    s.drain.connected()
    s.ack(s.fill(), code=REFUSED)
    retry = s.fill()
    assert seqs(retry) == stored[:1]
    s.ack(retry)
    assert s.dead_letters.list() == []
    assert seqs(s.fill()) == stored[1:]


def test_the_first_message_of_connections_the_broker_kills_is_poison(site):
    s = site(inflight_window=4, max_refusals=3)
    stored = s.append(6)
    for _ in range(3):
        s.drain.connected()
        assert seqs(s.fill()) == stored[:4]
        s.drain.lost(stopping=False)  # closed before any PUBACK
    assert [letter.seq for letter in s.dead_letters.list()] == [stored[0]]
    s.drain.connected()
    assert seqs(s.fill()) == stored[1:5]


def test_a_connection_that_acked_something_or_is_stopped_strikes_nothing(site):
    s = site(inflight_window=4, max_refusals=1)
    stored = s.append(6)
    s.drain.connected()
    s.ack(s.fill()[-1:])  # one ack on this connection: the broker is not killing it for seq 1
    s.drain.lost(stopping=False)
    s.drain.connected()
    s.fill()
    s.drain.lost(stopping=True)  # our own stop is not the broker's verdict
    assert s.dead_letters.list() == []
    s.drain.connected()
    assert seqs(s.fill()) == stored[:3] + stored[4:5]


def test_a_lost_connection_sends_again_from_the_outbox_in_order(site):
    s = site(inflight_window=4)
    stored = s.append(10)
    s.drain.connected()
    first = s.fill()
    s.ack(first[:2])
    s.drain.acked(first[2][0], 0)  # acked, but its delete not yet flushed: lost() flushes it
    s.drain.lost(stopping=False)
    assert s.counters.inflight == 0
    assert [seq for seq, _ in s.outbox.read(0, 100, NOW_MS)] == stored[3:]
    s.drain.connected()
    assert seqs(s.fill()) == stored[3:7], "the unacked one first, then on in order"


def test_live_first_keeps_a_share_for_messages_since_the_link_came_back(site):
    s = site(inflight_window=10, live_share=0.3)
    backlog = s.append(30)
    s.drain.connected()
    live = s.append(5)
    first = s.fill()
    assert seqs(first) == live[:3] + backlog[:7], "3 of 10 for the live, the rest backlog"
    s.ack([p for p in first if p[1] in backlog[:7]])
    assert seqs(s.fill()) == backlog[7:14], "the live share is still in flight"
    s.ack([p for p in first if p[1] in live[:1]])
    assert seqs(s.fill()) == live[3:4]


def test_live_first_takes_the_whole_window_once_the_backlog_is_drained(site):
    s = site(inflight_window=10, live_share=0.2)
    backlog = s.append(3)
    s.drain.connected()
    live = s.append(12)
    assert seqs(s.fill()) == live[:2] + backlog + live[2:7]


def test_the_publish_rate_holds_back_and_says_when_to_fill_again(site):
    s = site(inflight_window=100, max_publish_rate=10)
    stored = s.append(30)
    s.drain.connected()
    done = s.drain.fill(0, s.packet_id)
    assert len(done.packets) == 10, "a one-second burst"
    assert done.again_in is not None
    empty = s.drain.fill(0, s.packet_id)
    assert empty.packets == [] and empty.again_in == pytest.approx(0.1), "one more in 1/rate s"
    s.monotonic = 0.5
    assert seqs(s.fill()) == stored[10:15]
    s.monotonic = 10.0
    full = s.drain.fill(0, s.packet_id)
    assert len(full.packets) == 10 and full.again_in is not None


def test_unlimited_rate_never_asks_for_a_timer(site):
    s = site(inflight_window=100)
    s.append(150)
    s.drain.connected()
    done = s.drain.fill(0, s.packet_id)
    assert len(done.packets) == 100 and done.again_in is None


def test_an_expired_refused_message_is_not_retried(site):
    s = site(inflight_window=2, max_refusals=5)
    doomed = s.outbox.append(Message("d", NOW_MS - 10, NOW_MS + 1, "", b"x", 9))
    keep = s.append(3)
    s.drain.connected()
    sent = s.fill()
    assert seqs(sent) == [doomed, keep[0]]
    s.now_ms = NOW_MS + 5  # the wall clock moves past its expiry
    s.ack(sent[:1], code=REFUSED)
    assert seqs(s.fill()) == [keep[1]]


@pytest.mark.parametrize("module", [drain, token_bucket])
def test_the_scheduler_does_no_io(module):
    """Sans-I/O: the drain and its bucket import neither a loop nor a socket."""
    assert not top_level_imports(module.__file__) & IO_MODULES


def test_a_read_of_plain_pubacks_acks_as_each_one_would(site):
    """acked_all (the hot path: one list per read) leaves the drain where acked(pid, 0) for
    each would, and passes over a packet id that is not the drain's (the Uplink's own)."""
    one, many = site(inflight_window=20, live_share=0.25), site(inflight_window=20,
                                                                live_share=0.25)
    for s in (one, many):
        s.append(30)
        s.drain.connected()
        s.append(5)  # live: arrived since the link came back
    sent_one, sent_many = one.fill(), many.fill()
    assert sent_one == sent_many and len(sent_one) == 20
    acked = sent_one[:7] + sent_one[-3:]
    for packet_id, _ in acked:
        one.drain.acked(packet_id, 0)
    one.drain.acks_done()
    many.drain.acked_all([pid for pid, _ in acked[:5]] + [60000] + [pid for pid, _ in acked[5:]])
    many.drain.acks_done()
    for s in (one, many):
        assert (s.counters.acked, s.drain.inflight, s.outbox.stats.count) == (10, 10, 25)
    assert one.fill() == many.fill()


def test_a_long_backlog_is_sent_once_and_in_order_in_fills_of_any_size(site):
    """Fills of 37 over 1,000 stored messages, acknowledged half a window at a time: every
    message goes once, in order, and the outbox is left empty."""
    s = site(inflight_window=37)
    stored = s.append(1_000)
    s.drain.connected()
    sent: list[int] = []
    while batch := s.fill():
        sent += seqs(batch)
        s.ack(batch[: len(batch) // 2 + 1])  # part of a window at a time, as PUBACKs come
        s.ack(batch[len(batch) // 2 + 1:])
    assert sent == stored and s.outbox.stats.count == 0


def test_messages_dropped_ahead_of_the_drain_are_not_sent(site):
    """A full disk drops the oldest stored messages, some of them in flight and more not yet
    sent: the drain goes on from the first one kept, and sends no dropped one."""
    s = site(inflight_window=50)
    stored = s.append(600)
    s.drain.connected()
    first = s.fill()
    assert seqs(first) == stored[:50]
    assert s.outbox.drop_oldest(200) == (200, 200 * s.outbox.read(0, 1, NOW_MS)[0][1].size())
    s.ack(first)  # their PUBACKs come after all
    rest: list[int] = []
    while batch := s.fill():
        rest += seqs(batch)
        s.ack(batch)
    assert rest == stored[200:]


def test_messages_expired_ahead_of_the_drain_are_not_sent_or_counted_twice(site):
    """The housekeeping's expiry takes messages in flight and ahead of them."""
    s = site(inflight_window=20)
    short = [s.outbox.append(Message("d", NOW_MS, NOW_MS + 1_000, "", b"x", 9))
             for _ in range(300)]
    keep = s.append(10)
    s.drain.connected()
    first = s.fill()
    assert seqs(first) == short[:20]
    s.now_ms = NOW_MS + 2_000
    assert s.outbox.expire(s.now_ms) == 300
    s.ack(first)
    assert seqs(s.fill()) == keep
    assert s.outbox.stats.expired == 300
