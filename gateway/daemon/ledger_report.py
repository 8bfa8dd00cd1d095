"""The loss ledger's settlements, published to the cloud at a cadence (upstream/ledger.py).

QoS 1 and not retained: each settlement is an increment ("from here to there, this is how every
seq ended"), so a retained copy would keep only the last increment, which alone proves nothing to
whoever connects later; a verifier needs every increment from the moment it listens, which a
QoS 1 subscription gives it. What is unacknowledged is rebuilt from the ledger's state (in the
store) and sent again, so an outage or a restart loses none.

A settlement goes out every `cloud.ledger_interval_secs` while something changed (the settled
point moved, or numbers were handed out), and at least every HEARTBEAT_INTERVALS intervals
otherwise, so that a verifier that starts on an idle gateway learns where to judge from.
"""

from __future__ import annotations

from gateway.daemon.uplink_slot import UplinkSlot
from gateway.upstream import cloud_contract as contract
from gateway.upstream.ledger import encode_settlement
from gateway.upstream.outbox import Outbox

HEARTBEAT_INTERVALS = 6


class LedgerReport:
    def __init__(self, gateway_id: str, outbox: Outbox, uplink: UplinkSlot,
                 interval_secs: float = 10.0) -> None:
        self._gateway_id = gateway_id
        self._outbox = outbox
        self._uplink = uplink
        self.interval_secs = interval_secs  # the cloud section's; set again on reload
        self._last_at = float("-inf")
        self._last_said: tuple[int, int, int] | None = None
        self._connects = -1
        self.published = 0
        self.published_bytes = 0
        self.acknowledged = 0

    def tick(self, now: float) -> None:
        """Called by the housekeeping every second; publishes when the cadence says so."""
        stats = self._uplink.stats()
        if stats is None or not self._uplink.online() or now - self._last_at < self.interval_secs:
            return
        if stats.connects != self._connects:  # a new connection: what was in flight is lost
            self._connects, self._last_said = stats.connects, None
        ledger = self._outbox.ledger
        doc = ledger.settlement(self._gateway_id, self._outbox.settled_below(),
                                self._outbox.next_seq)
        said = (doc["from"], doc["to"], doc["issued"])
        if said == self._last_said and now - self._last_at < HEARTBEAT_INTERVALS * \
                self.interval_secs:
            return
        payload = encode_settlement(doc)
        to = doc["to"]

        def done(ok: bool) -> None:
            if ok:
                self.acknowledged += 1
                ledger.acknowledged(to)

        topic = contract.ledger_topic(self._uplink.prefix, self._gateway_id)
        if self._uplink.publish(topic, payload, on_done=done):
            self._last_at, self._last_said = now, said
            self.published += 1
            self.published_bytes += len(payload)

    def persist(self) -> None:
        """The settled point, once a minute while online, beside the offline trust's write:
        after a kill -9 the span the gateway cannot tell delivered from never issued then
        starts at most a minute before the kill, not at the start of the run (a healthy
        gateway writes no batch that would carry it)."""
        self._outbox.ledger.write_now()

    def status(self) -> dict:
        ledger = self._outbox.ledger
        return {"settled_below": ledger.settled, "unsettled": ledger.pending(),
                "published": self.published, "published_bytes": self.published_bytes,
                "acknowledged": self.acknowledged, "state_writes": ledger.state_writes,
                "state_bytes": ledger.state_bytes}
