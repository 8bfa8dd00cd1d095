"""`gatewayctl dlq list|resend|drop [SEQ|all]`: the control socket's dead-letter command.

Dead letters are messages the cloud refused `cloud.max_refusals` times; they wait aside until an
operator looks. Resending puts a letter through the ingest again as a new message (new sequence
number, the time to live in force) and drops the letter only once the new copy is safe, so a
crash in between leaves it a dead letter rather than losing it.

One function over the two objects it needs, so that it follows the dead letters wherever they
are kept: `letters` is what holds them (today the outbox).
"""

from __future__ import annotations

from gateway.upstream.ingest import Ingest
from gateway.upstream.outbox import Outbox


def dead_letter_command(letters: Outbox, ingest: Ingest, action: str = "list",
                        which: str = "all") -> dict:
    """The answer for the control socket; ValueError (the operator's mistake) becomes its
    `error`."""
    found = letters.dead_letters()
    if which != "all":
        if not which.isdigit():
            raise ValueError(f"expected a sequence number or 'all', got {which!r}")
        found = [entry for entry in found if entry[0] == int(which)]
        if not found:
            raise ValueError(f"no dead letter with seq {which}")
    if action == "list":
        return {"dead_letters": [
            {"seq": seq, "device_id": msg.device_id, "reason_code": reason,
             "refused_at_ms": at, "enqueued_ms": msg.enqueued_ms, "bytes": len(msg.payload),
             "priority": msg.priority}
            for seq, reason, at, msg in found]}
    if action == "drop":
        for seq, *_ in found:
            letters.drop_dead_letter(seq)
        return {"dropped": len(found)}
    if action == "resend":
        for seq, _, _, msg in found:
            ingest.accept(
                msg.device_id, msg.properties, msg.payload,
                lambda seq=seq: letters.drop_dead_letter(seq), msg.priority,
            )
        return {"resent": len(found)}
    raise ValueError(f"unknown action {action!r}: use list, resend or drop")
