"""Offline trust and the audit log on a real store, with a clock the test moves."""

from __future__ import annotations

import pytest

from gateway.child.offline_trust import (
    BATCH,
    FRESH_PERSIST_SECS,
    MAX_ENTRIES,
    AuditLog,
    OfflineTrust,
)

T0 = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()



def test_no_limit_trusts_the_cache_for_ever(reopen, clock):
    trust = OfflineTrust(reopen(), 0, clock)
    assert trust.expired() == "", "never synced, and still trusted: the IoT Edge default"
    trust.synced()
    clock.now += 10 * 365 * 86400
    assert trust.expired() == ""


def test_with_a_limit_a_never_synced_registry_is_not_trusted(reopen, clock):
    trust = OfflineTrust(reopen(), 3600, clock)
    assert trust.expired() == "the registry was never synced"


def test_trust_lasts_the_limit_after_the_last_sync(reopen, clock):
    trust = OfflineTrust(reopen(), 3600, clock)
    trust.synced()
    clock.now += 3600
    assert trust.expired() == "", "the limit itself is still trusted"
    clock.now += 1
    why = trust.expired()
    assert "3601 s old" in why and "auth.offline_trust_secs (3600 s)" in why


def test_being_online_keeps_the_registry_fresh_and_offline_does_not(reopen, clock):
    trust = OfflineTrust(reopen(), 100, clock)
    trust.synced()
    clock.now += 90
    trust.refresh(online=True)
    clock.now += 90
    assert trust.expired() == "", "fresh as of the last online second"
    trust.refresh(online=False)
    clock.now += 20
    assert trust.expired() != ""


def test_freshness_survives_a_restart(reopen, clock):
    trust = OfflineTrust(reopen(), 3600, clock)
    trust.synced()
    again = OfflineTrust(reopen(), 3600, clock)
    assert again.fresh_at == pytest.approx(T0, abs=0.001)
    clock.now += 3601
    assert again.expired() != ""


def test_a_restart_loses_at_most_a_minute_of_freshness(reopen, clock):
    """Online seconds are written at most once a minute: one small write, not sixty."""
    trust = OfflineTrust(reopen(), 3600, clock)
    trust.synced()
    clock.now += FRESH_PERSIST_SECS / 2
    trust.refresh(online=True)
    assert OfflineTrust(reopen(), 3600, clock).fresh_at == pytest.approx(T0, abs=0.001)
    trust = OfflineTrust(reopen(), 3600, clock)
    trust.refresh(online=True)  # the first refresh after a start is written
    clock.now += FRESH_PERSIST_SECS
    trust.refresh(online=True)
    restarted = OfflineTrust(reopen(), 3600, clock)
    assert restarted.fresh_at == pytest.approx(clock.now, abs=0.001)


# -- the audit log -------------------------------------------------------------------------------


def test_offline_decisions_are_kept_in_order_until_published(reopen, clock):
    audit = AuditLog(reopen(), clock)
    audit.record("s1", True, "", "SAS", "10.0.0.7:50000")
    clock.now += 1.5
    audit.record("s2", False, "bad signature", "SAS", "10.0.0.8:50001")
    assert audit.count == 2
    keys, entries = audit.pending()
    assert entries == [
        {"at": T0, "deviceId": "s1", "accepted": True, "reason": "", "method": "SAS",
         "peer": "10.0.0.7:50000"},
        {"at": T0 + 1.5, "deviceId": "s2", "accepted": False, "reason": "bad signature",
         "method": "SAS", "peer": "10.0.0.8:50001"},
    ]
    audit.published(keys[:1])
    assert audit.count == 1
    assert [e["deviceId"] for e in audit.pending()[1]] == ["s2"]
    audit.published(audit.pending()[0])
    assert audit.count == 0 and audit.pending() == ([], [])


def test_the_audit_log_survives_a_restart_and_continues_after_it(reopen, clock):
    audit = AuditLog(reopen(), clock)
    audit.record("before", True, "", "X509", "p")
    audit = AuditLog(reopen(), clock)
    assert audit.count == 1
    audit.record("after", True, "", "X509", "p")
    assert [e["deviceId"] for e in audit.pending()[1]] == ["before", "after"]


def test_pending_hands_out_batches(reopen, clock):
    audit = AuditLog(reopen(), clock)
    for i in range(BATCH + 3):
        audit.record(f"d{i}", True, "", "SAS", "p")
    keys, entries = audit.pending()
    assert len(keys) == len(entries) == BATCH
    audit.published(keys)
    assert [e["deviceId"] for e in audit.pending()[1]] == [f"d{BATCH + i}" for i in range(3)]


def test_the_audit_log_is_bounded_and_the_oldest_go_first(reopen, clock):
    audit = AuditLog(reopen(), clock)
    for i in range(MAX_ENTRIES + 5):
        audit.record(f"d{i}", True, "", "SAS", "p")
    assert audit.count == MAX_ENTRIES
    assert audit.pending(limit=1)[1][0]["deviceId"] == "d5"
    assert AuditLog(reopen(), clock).count == MAX_ENTRIES
