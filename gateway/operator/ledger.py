"""The cloud side of the loss ledger: from telemetry and settlements, how every seq ended.

Feed it every forwarded message's (gw, seq) and every settlement a gateway publishes on
`{prefix}gateways/{gw}/ledger` (docs/cloud-contract.md); ask it for the accounts. A settlement
says that every seq below its `to` has ended, and lists those that expired, were dropped by the
disk guard, dead-lettered or never issued; so a seq below the highest `to` that was neither
received nor listed is **unaccounted**: lost, by the gateway or by the brokers in between.

Judging starts at `since` (a seq), or else at the `issued` of the first settlement received:
every number handed out after that settlement left the gateway after the verifier was
listening, so its absence means something. A message received counts as delivered even where a
settlement lists it (the broker had it before its PUBACK was lost, say); a listed seq that is
also marked never issued counts as its policy outcome.

Plain Python, no I/O: `gatewayctl verify` and any cloud-side consumer drive it.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

# what a settlement lists, strongest first: a seq listed under two kinds counts as the first
POLICY_KINDS = ("expired", "dropped", "deadLettered", "skipped")

Interval = tuple[int, int]  # [first, end): end excluded


@dataclass(frozen=True)
class Accounts:
    """One gateway's accounts over the judged seqs (from `start`)."""

    gateway: str
    start: int | None  # None: no settlement yet, nothing judged
    settled_below: int  # every seq below has ended (the highest `to` received)
    issued: int
    delivered: int
    duplicates: int
    expired: int
    dropped: int
    dead_lettered: int
    reordered: int
    unaccounted: int
    pending: int  # issued, not yet ended or not yet settled
    never_issued: int  # reserved and skipped, and not received
    unaccounted_seqs: tuple[Interval, ...] = ()

    def to_json(self) -> dict:
        return {
            "gateway": self.gateway, "start": self.start, "settledBelow": self.settled_below,
            "issued": self.issued, "delivered": self.delivered, "duplicates": self.duplicates,
            "expired": self.expired, "dropped": self.dropped, "deadLettered": self.dead_lettered,
            "reordered": self.reordered, "unaccounted": self.unaccounted,
            "pending": self.pending, "neverIssued": self.never_issued,
            "unaccountedSeqs": [[a, b - 1] for a, b in self.unaccounted_seqs],
        }


@dataclass
class _Gateway:
    start: int | None
    received: set[int] = field(default_factory=set)
    duplicates: list[int] = field(default_factory=list)  # seqs received again
    reordered: list[int] = field(default_factory=list)  # seqs first received after a higher one
    highest: int = -1
    settled_below: int = 0
    issued_below: int = 0
    listed: dict[str, list[Interval]] = field(
        default_factory=lambda: {kind: [] for kind in POLICY_KINDS})


class LossAccounts:
    """Every gateway's accounts; `since` (a seq) starts the judging for all of them."""

    def __init__(self, since: int | None = None) -> None:
        self._since = since
        self._gateways: dict[str, _Gateway] = {}

    def _gateway(self, gw: str) -> _Gateway:
        state = self._gateways.get(gw)
        if state is None:
            state = self._gateways[gw] = _Gateway(self._since)
        return state

    def gateways(self) -> list[str]:
        return sorted(self._gateways)

    def telemetry(self, gw: str, seq: int) -> None:
        """One forwarded message as received."""
        state = self._gateway(gw)
        if seq in state.received:
            state.duplicates.append(seq)
            return
        state.received.add(seq)
        if seq < state.highest:
            state.reordered.append(seq)
        state.highest = max(state.highest, seq)

    def settlement(self, doc: dict) -> None:
        """One ledger document; ValueError when it is not one (say so, keep counting)."""
        try:
            gw, first, to, issued = doc["gw"], int(doc["from"]), int(doc["to"]), \
                int(doc["issued"])
            lists = {kind: [(int(r[0]), int(r[1]) + 1) for r in doc.get(kind, [])]
                     for kind in POLICY_KINDS}
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ValueError(f"not a ledger settlement ({exc!r})") from None
        if not isinstance(gw, str) or first > to:
            raise ValueError("not a ledger settlement (gw or from/to)")
        state = self._gateway(gw)
        if state.start is None:
            state.start = issued
        state.settled_below = max(state.settled_below, to)
        state.issued_below = max(state.issued_below, issued)
        for kind, ranges in lists.items():
            if ranges:
                state.listed[kind] = _union(state.listed[kind] + ranges)

    def accounts(self, gw: str) -> Accounts:
        state = self._gateway(gw)
        if state.start is None:
            return Accounts(gw, None, state.settled_below, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        start = state.start
        received = sorted(s for s in state.received if s >= start)
        top = max(state.issued_below, (received[-1] + 1) if received else 0, start)
        counts: dict[str, int] = {}
        taken: list[Interval] = []  # what a stronger kind has claimed
        for kind in POLICY_KINDS:
            own = _minus(_clip(state.listed[kind], start, top), taken)
            counts[kind] = _length(own) - _points_in(received, own)
            taken = _union(taken + own)
        judged = _minus([(start, max(start, state.settled_below))], taken)
        lost = _minus_points(judged, received)
        delivered = len(received)
        issued = (top - start) - counts["skipped"]
        unaccounted = _length(lost)
        return Accounts(
            gateway=gw, start=start, settled_below=state.settled_below, issued=issued,
            delivered=delivered,
            duplicates=sum(1 for s in state.duplicates if s >= start),
            expired=counts["expired"], dropped=counts["dropped"],
            dead_lettered=counts["deadLettered"],
            reordered=sum(1 for s in state.reordered if s >= start),
            unaccounted=unaccounted,
            pending=issued - delivered - counts["expired"] - counts["dropped"]
            - counts["deadLettered"] - unaccounted,
            never_issued=counts["skipped"], unaccounted_seqs=tuple(lost),
        )


def _union(intervals: list[Interval]) -> list[Interval]:
    out: list[Interval] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        elif a < b:
            out.append((a, b))
    return out


def _clip(intervals: list[Interval], low: int, high: int) -> list[Interval]:
    return [(max(a, low), min(b, high)) for a, b in intervals if b > low and a < high]


def _minus(intervals: list[Interval], taken: list[Interval]) -> list[Interval]:
    """Both sorted and disjoint; the parts of `intervals` outside `taken`."""
    out: list[Interval] = []
    for a, b in intervals:
        at = bisect.bisect_right(taken, (a, float("inf"))) - 1
        at = max(at, 0)
        cur = a
        while at < len(taken) and taken[at][0] < b:
            ta, tb = taken[at]
            if tb > cur:
                if ta > cur:
                    out.append((cur, ta))
                cur = max(cur, tb)
            at += 1
        if cur < b:
            out.append((cur, b))
    return out


def _minus_points(intervals: list[Interval], points: list[int]) -> list[Interval]:
    """The intervals with every point (sorted seqs) cut out."""
    out: list[Interval] = []
    for a, b in intervals:
        lo, hi = bisect.bisect_left(points, a), bisect.bisect_left(points, b)
        cur = a
        for p in points[lo:hi]:
            if p > cur:
                out.append((cur, p))
            cur = p + 1
        if cur < b:
            out.append((cur, b))
    return out


def _points_in(points: list[int], intervals: list[Interval]) -> int:
    return sum(bisect.bisect_left(points, b) - bisect.bisect_left(points, a)
               for a, b in intervals)


def _length(intervals: list[Interval]) -> int:
    return sum(b - a for a, b in intervals)
