"""What the fault tests check at the cloud, and the children's steady senders.

Order, precisely: the gateway keeps the order in which it receives. A child that re-sends after
the gateway died may re-send out of order (paho re-sends its in-flight window, which can come
after newer ones were queued), so across kills the checked rule is the one the gateway controls:
a message PUBACKed before another was published is stored (gets its `seq`) before it.
"""

from __future__ import annotations

import threading
import time

from tests.support.clients import Child, CloudVerifier


class Timeline:
    """When each message of one child was published and PUBACKed (monotonic seconds)."""

    def __init__(self, child: Child) -> None:
        self.published: dict[int, float] = {}  # i -> time
        self.acked: dict[int, float] = {}  # mid -> first PUBACK time
        self.mid_of: dict[int, int] = {}  # i -> mid
        original = child.client.on_publish

        def on_publish(client, userdata, mid, reason_code, properties) -> None:
            self.acked.setdefault(mid, time.monotonic())
            original(client, userdata, mid, reason_code, properties)

        child.client.on_publish = on_publish


def connect_children(keys: dict[str, str], port: int):
    """(children, infos, timelines): every child connected, with an empty list of its publish
    infos and a Timeline of its publishes and PUBACKs, both keyed by device id."""
    children = [Child(d, k, port) for d, k in keys.items()]
    for child in children:
        assert child.connect() == 0
    infos: dict[str, list] = {c.device_id: [] for c in children}
    timelines = {c.device_id: Timeline(c) for c in children}
    return children, infos, timelines


def sender(child: Child, start: int, end: int, infos: list, stop: threading.Event,
           timeline: Timeline | None = None) -> threading.Thread:
    """Messages start..end-1 from `child`, a steady stream in a thread."""
    def run() -> None:
        for i in range(start, end):
            if stop.is_set():
                return
            if timeline is not None:
                timeline.published[i] = time.monotonic()
            info = child.send(i)
            infos.append(info)
            if timeline is not None:
                timeline.mid_of[i] = info.mid
            if i % 50 == 49:
                time.sleep(0.01)  # a steady stream rather than one burst
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def finish(senders: list[threading.Thread], children: list[Child], infos: dict[str, list],
           timeout: float = 120.0) -> None:
    """Let the senders end, then wait for the gateway's PUBACK of everything each child sent
    (paho re-sends across the gateway's restarts)."""
    for t in senders:
        t.join(timeout)
    for child in children:
        child.wait_acked([info.mid for info in infos[child.device_id]], timeout=timeout)


def _check_acked_before_published(device: str, msgs: list, timeline: Timeline) -> None:
    first_seq: dict[int, int] = {}
    for m in msgs:
        if m.device == device:
            first_seq.setdefault(m.i, m.seq)
    acks = sorted((timeline.acked[timeline.mid_of[i]], i) for i in first_seq)
    published = sorted((t, i) for i, t in timeline.published.items())
    highest, k = -1, 0
    for t_pub, b in published:
        while k < len(acks) and acks[k][0] < t_pub:
            highest = max(highest, first_seq[acks[k][1]])
            k += 1
        assert first_seq[b] > highest, (
            f"{device}: message {b} stored before one PUBACKed ahead of its publish")


def check_delivery(verifier: CloudVerifier, sent: dict[str, int],
                   timelines: dict[str, Timeline] | None = None) -> dict[str, int]:
    """Every PUBACKed message arrived; seq order kept; per child either strict order (no
    timelines: the gateway never died) or the acked-before-published rule: the figures."""
    expected = {(d, i) for d, n in sent.items() for i in range(n)}
    verifier.wait_for(lambda msgs: {(m.device, m.i) for m in msgs} >= expected,
                      timeout=120, what=f"all {len(expected)} messages at the cloud")
    msgs = list(verifier.messages)
    assert {(m.device, m.i) for m in msgs} == expected
    first_seq: list[int] = []
    seen_seq: set[int] = set()
    for m in msgs:
        if m.seq not in seen_seq:
            seen_seq.add(m.seq)
            first_seq.append(m.seq)
    assert first_seq == sorted(first_seq), "seq order broken"
    for device in sent:
        if timelines is not None:
            _check_acked_before_published(device, msgs, timelines[device])
            continue
        firsts: list[int] = []
        seen: set[int] = set()
        for m in msgs:
            if m.device == device and m.i not in seen:
                seen.add(m.i)
                firsts.append(m.i)
        breaks = [(a, b) for a, b in zip(firsts, firsts[1:], strict=False) if b < a]
        assert not breaks, f"{device}: order broken at {breaks[:5]}"
    redelivered = len(msgs) - len(seen_seq)  # same seq twice: the uplink re-sent it
    stored_twice = len(seen_seq) - len(expected)  # a child re-sent what the daemon had stored
    return {"delivered": len(msgs), "distinct": len(expected), "redelivered": redelivered,
            "stored_twice": stored_twice}
