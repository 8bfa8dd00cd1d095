"""What the fault tests check at the cloud, and the children's steady senders."""

from __future__ import annotations

import threading
import time

from tests.support.clients import Child, CloudVerifier


def sender(child: Child, start: int, end: int, infos: list,
            stop: threading.Event) -> threading.Thread:
    """Messages start..end-1 from `child`, a steady stream in a thread."""
    def run() -> None:
        for i in range(start, end):
            if stop.is_set():
                return
            infos.append(child.send(i))
            if i % 50 == 49:
                time.sleep(0.01)  # a steady stream rather than one burst
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def check_delivery(verifier: CloudVerifier, sent: dict[str, int]) -> dict[str, int]:
    """Every PUBACKed message arrived; order per child and of seq kept: the figures."""
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
        firsts: list[int] = []
        seen: set[int] = set()
        for m in msgs:
            if m.device == device and m.i not in seen:
                seen.add(m.i)
                firsts.append(m.i)
        breaks = [(a, b) for a, b in zip(firsts, firsts[1:], strict=False) if b < a]
        assert not breaks, f"{device}: order broken at {breaks[:5]}: " + str(
            [(m.i, m.seq) for m in msgs if m.device == device and m.i >= breaks[0][1] - 3][:60])
    redelivered = len(msgs) - len(seen_seq)  # same seq twice: the uplink re-sent it
    stored_twice = len(seen_seq) - len(expected)  # a child re-sent what the daemon had stored
    return {"delivered": len(msgs), "distinct": len(expected), "redelivered": redelivered,
            "stored_twice": stored_twice}
